# Sourced by test.sh and bench.sh: makes a virtual environment with torch
# and the given requirements, and builds pruneext into it when the sources
# changed since the last build. Set PRUNEEXT_VENV to use another folder,
# PRUNEEXT_NO_CUDA=1 to skip the CUDA sources.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${PRUNEEXT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
echo "== installing requirements: $*"
"$PY" -m pip install -q "$@"

built=$(ls pruneext/_C*.so 2>/dev/null | head -n 1 || true)
if [ -z "$built" ] || [ -n "$(find csrc setup.py -newer "$built" -type f | head -n 1)" ] \
    || ! "$PY" -c "import pruneext._C" 2>/dev/null; then
  echo "== building pruneext (C++ always; CUDA where torch has CUDA and nvcc is found)"
  start=$(date +%s)
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --no-build-isolation --no-deps -e . \
    || { echo "== build FAILED"; exit 1; }
  echo "== built in $(( $(date +%s) - start )) s"
fi
"$PY" -c "import json, pruneext; print(json.dumps(pruneext.build_info(), indent=1))"
