#!/usr/bin/env bash
# The GPU machine's software without its GPU (DESIGN.md §5: torch 2.11 and
# Triton 3.6 there, newer ones here). Copies the tracked files of this tree to
# .compat/tree (the editable build writes _C*.so into the tree, so the two
# torch versions cannot share one), builds it in its own venv against the
# pinned torch, and runs the test suite and the Triton compile check there.
#
#   bash scripts/compat.sh [pytest arguments]
#
# COMPAT_PINS overrides the pins, e.g. COMPAT_PINS="torch==2.12.0 triton==3.7.0".
set -euo pipefail
cd "$(dirname "$0")/.."
# numpy < 2.4: Triton 3.6's interpreter turns a scalar (a 1-element array)
# into an int to bound a loop, which numpy 2.4 refuses (the GPU machine's
# numpy is newer, but it compiles the kernels rather than interpret them).
PINS=${COMPAT_PINS:-torch==2.11.0 triton==3.6.0 numpy<2.4}
ROOT="$PWD/.compat"
rm -rf "$ROOT/tree"
mkdir -p "$ROOT/tree"
git ls-files -z | xargs -0 cp --parents -t "$ROOT/tree"
if [ ! -x "$ROOT/venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$ROOT/venv"
fi
echo "== pinning $PINS"
# shellcheck disable=SC2086  # PINS is a list of requirements
"$ROOT/venv/bin/python" -m pip install -q $PINS
cd "$ROOT/tree"
export PRUNEEXT_VENV="$ROOT/venv"
bash scripts/test.sh "$@"
echo "== Triton kernels through Triton $("$ROOT/venv/bin/python" -c 'import triton; print(triton.__version__)')'s compiler, sm_90"
"$ROOT/venv/bin/python" scripts/triton_aot_check.py --quick > "$ROOT/triton-aot.log" || { cat "$ROOT/triton-aot.log"; exit 1; }
tail -n 1 "$ROOT/triton-aot.log"
