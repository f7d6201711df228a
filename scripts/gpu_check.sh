#!/usr/bin/env bash
# The GPU checks, in one command for a GPU machine (see DESIGN.md §5: build
# there with its own torch, never carry a build). Writes logs and results to
# ${OUT:-gpu-check}/:
#   build.log       pip install --no-build-isolation -e . (CUDA kernels for this GPU's arch)
#   tests.log       the whole suite on the GPU (CUDA and Triton tests run, not skip)
#   slow.log        the long tests: exact k past 2^31 entries on the GPU
#   sanitizer.log   compute-sanitizer memcheck over the CUDA tests
#   bench.log, *.json, *.png   the benchmark, LLaMA-7B-shaped global case included
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
arch=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}.{p.minor}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16} PRUNEEXT_REQUIRE_CUDA=1
"$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
"$PY" -c "import json, pruneext; print(json.dumps(pruneext.build_info(), indent=1))" | tee -a "$OUT/build.log"
"$PY" -m pytest -q -rs tests > "$OUT/tests.log" 2>&1; echo "tests: $(tail -1 "$OUT/tests.log")"
"$PY" -m pytest -q -m slow tests > "$OUT/slow.log" 2>&1; echo "slow: $(tail -1 "$OUT/slow.log")"
if command -v compute-sanitizer > /dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -x tests/test_cuda.py \
    > "$OUT/sanitizer.log" 2>&1; echo "sanitizer: exit $? ($(grep -c 'ERROR SUMMARY' "$OUT/sanitizer.log") summaries)"
fi
"$PY" -m benchmarks.run --llama --out "$OUT/gpu-bench.json" > "$OUT/bench.log" 2>&1
echo "bench: exit $?"; tail -20 "$OUT/bench.log"
