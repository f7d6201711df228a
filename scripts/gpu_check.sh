#!/usr/bin/env bash
# The GPU checks for a GPU machine (see DESIGN.md §5: build there with its own
# torch, never carry a build). Stages, all by default, or those named:
#
#   bash scripts/gpu_check.sh [build] [tests] [slow] [sanitizer] [aot] [bench]
#
# A machine of the device tool runs one command for 10 minutes at most, so a
# session there runs `build tests aot` in one call and `build slow sanitizer`,
# `build bench` in later ones (build is quick when nothing changed). Writes
# logs and results to ${OUT:-gpu-check}/ (8 files at most, the most the
# device tool brings back):
#   build.log       pip install --no-build-isolation -e . (CUDA kernels for this GPU's arch)
#   tests.log       the whole suite on the GPU (CUDA and Triton tests run, not skip)
#   slow.log        the long tests: exact k past 2^31 entries on the GPU
#   sanitizer.log   compute-sanitizer memcheck over the CUDA tests
#   triton-aot.log  every Triton kernel through Triton's compiler for this arch
#   bench.log, gpu-bench.json  the benchmark, LLaMA-7B-shaped global case included
#   plots.tar       its plots, in one file
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
stages=" ${*:-build tests slow sanitizer aot bench} "
want() { [[ $stages == *" $1 "* ]]; }
arch=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}.{p.minor}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16} PRUNEEXT_REQUIRE_CUDA=1

if want build; then
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  "$PY" -c "import json, pruneext; print(json.dumps(pruneext.build_info(), indent=1))" | tee -a "$OUT/build.log"
fi
if want tests; then
  "$PY" -m pytest -q -rs tests > "$OUT/tests.log" 2>&1; echo "tests: $(tail -1 "$OUT/tests.log")"
fi
if want slow; then
  "$PY" -m pytest -q -m slow tests > "$OUT/slow.log" 2>&1; echo "slow: $(tail -1 "$OUT/slow.log")"
fi
if want sanitizer && command -v compute-sanitizer > /dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" -m pytest -q -x tests/test_cuda.py \
    > "$OUT/sanitizer.log" 2>&1; echo "sanitizer: exit $? ($(grep -c 'ERROR SUMMARY' "$OUT/sanitizer.log") summaries)"
fi
if want aot; then
  "$PY" scripts/triton_aot_check.py --arch "${arch/./}" > "$OUT/triton-aot.log" 2>&1
  echo "triton aot: $(tail -1 "$OUT/triton-aot.log")"
fi
if want bench; then
  mkdir -p "$OUT/plots"
  "$PY" -m benchmarks.run --llama ${BENCH_ARGS:-} --out "$OUT/plots/gpu-bench.json" > "$OUT/bench.log" 2>&1
  echo "bench: exit $?"; tail -30 "$OUT/bench.log"
  mv "$OUT/plots/gpu-bench.json" "$OUT/" 2>/dev/null
  tar -C "$OUT" -cf "$OUT/plots.tar" plots && rm -r "$OUT/plots"
fi
