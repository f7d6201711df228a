#!/usr/bin/env bash
# The GPU checks, in the two commands a lent GPU machine runs (issue 11; the
# device tool runs one command of at most 10 minutes, with 15 minutes of
# device time in all, the machine's start and idle time included, and hands
# the machine back after 30 s idle). Send the second at once after the first.
#
#   bash scripts/gpu_check.sh first     # ~6-7 min, never past GPU_CHECK_BUDGET (530 s)
#   bash scripts/gpu_check.sh second    # ~4 min, never past GPU_CHECK_BUDGET (280 s)
#   bash scripts/gpu_check.sh first --dry; bash scripts/gpu_check.sh second --dry
#                                       # (or GPU_CHECK_DRY=1) the rehearsal on a CPU machine
#
# first:  imports   torch / triton / pytest / hypothesis / xdist / pytest-timeout versions
#                   (a missing one is reported; only a missing torch stops the run)
#         build     pip install --no-build-isolation --no-deps -e . for this GPU's arch
#                   (TORCH_CUDA_ARCH_LIST from the device, MAX_JOBS=16, PRUNEEXT_REQUIRE_CUDA=1);
#                   skipped when pruneext._C imports with its CUDA kernels and a hash of
#                   csrc/, setup.py and pyproject.toml (and the torch version and arch) is
#                   the one of the last build here
#         crash     scripts/gpu_crash_probe.py: the calls whose errors killed the process on the
#                   first H200 run, one process each; a call that still dies is rerun under
#                   cuda-gdb for its backtrace (issue 21, part B)
#         slow      pytest -m slow -k "cuda or triton": exact k past 2^31 entries on the GPU
#         tests     pytest -k "cuda or triton" over tests/ (the whole GPU suite, in this one
#                   call), --continue-on-collection-errors, no -x, 16 xdist workers and a
#                   120 s per-test timeout where those plugins are installed, at most 360 s
#                   (what the budget has left, if less), JUnit report
#         Both pytest stages run with -v: each test's outcome is a line of their log as it
#         ends, so a stage cut short by its timeout (no JUnit report, no pytest summary)
#         still names what failed; the summary's test lines are read from those logs.
# second: build     the same stage: quick when the machine is still the first one's
#                   (a fresh machine, if the first was given back, builds again)
#         ops       python -m benchmarks.run --ops --probe (single 2^28 fp32 at 0.5 and 0.9,
#                   bf16 2^28, iterative 2^28 fp32: op-topk, op-cuda, op-triton), CUDA events,
#                   the copy_ baseline of each case, a torch.profiler table per call
#         ops-global the same for the LLaMA-7B-shaped bf16 list (op-cuda, op-triton)
#         module    l1_unstructured at 2^28 fp32: torch.nn.utils.prune timed 3 times, the
#                   pruneext cuda and triton backends beside it
#         memcheck  compute-sanitizer --tool memcheck over scripts/gpu_sanitize.py (small
#                   cases, every path, both GPU backends), PYTORCH_NO_CUDA_MEMORY_CACHING=1
#         racecheck compute-sanitizer --tool racecheck on one case (cuda backend)
#         torch-llama torch's own global_unstructured on the LLaMA-7B-shaped list: its
#                   time and peak memory, or the error (OOM) it raised; pruneext's beside it
#         lean      python -m benchmarks.training --parts update,added (issue 13 on the GPU):
#                   the pruner's global update over 16 x Linear(2048) fp32 against clone,
#                   copy_ and torch's global_unstructured, the re-mask against an in-place
#                   pass, and what the pruner and torch's hooks each add to a training step
#         scopes    python -m benchmarks.scopes --matmul (issue 24): row and 2:4 masks against
#                   torch at LLaMA-7B shapes, a bf16 Linear dense against 2:4 semi-structured
#
# Every stage runs under `timeout`, for its own cap or what is left of the
# command's budget (GPU_CHECK_BUDGET seconds, counted from the start), so a
# hang costs one stage, not the session; a stage left no time is reported
# NOT RUN. compute-sanitizer is looked for on PATH, then in /usr/local/cuda/bin;
# when it is missing the summary says so in capitals.
#
# Output, under ${OUT:-gpu-check}/ (at most 8 files, the device tool's limit):
#   first:  summary.txt build.log slow.log slow.xml tests.log tests.xml
#   second: summary.txt build.log probe.log probe.json (every benchmark run)
#           profile.txt (the torch.profiler tables) sanitizer.log lean.json
# and a compact summary at the end of stdout (the device tool returns the
# last 12,000 characters): each stage's verdict and time, versions, test
# counts and every failing test by name (gpu_check_report.py outcomes, from
# the -v logs, whether or not pytest finished), one line per benchmark row (with the profiled
# kernel count and device time), the sanitizers' error summaries.
#
# Dry mode (--dry or GPU_CHECK_DRY=1), on a machine without a GPU: the same
# stages on CPU tensors, with tiny sizes (2^16 entries, tiny-llama),
# TRITON_INTERPRET=1, a C++-only build (PRUNEEXT_NO_CUDA=1), the test stage
# on a few files, the contenders op-cpu / pruneext-cpu for the CUDA ones, and
# `compute-sanitizer --version` (or the loud MISSING line) with the sanitizer
# cases run on CPU, so no device minute is lost to a typo.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

which="" DRY=${GPU_CHECK_DRY:-0}
for arg in "$@"; do
  case $arg in
    first | 1) which=first ;;
    second | 2) which=second ;;
    _build) which=_build ;;  # the build stage, run under timeout by run_stage
    --dry) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg'"; usage; exit 2 ;;
  esac
done
[ -n "$which" ] || { usage; exit 2; }

PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
export PY OUT GPU_CHECK_DRY=$DRY PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5
mkdir -p "$OUT"

# ---------------------------------------------------------------------------
# The build, idempotent: skipped when _C imports (with CUDA kernels on a GPU
# machine) and the sources hash to the stamp of the last build here.
if [ "$which" = _build ]; then
  stamp=build/gpu_check.stamp
  torch_version=$("$PY" -c "import torch; print(torch.__version__)") || exit 1
  want=$({ find csrc setup.py pyproject.toml -type f -print0 | sort -z | xargs -0 sha256sum
           echo "$torch_version ${TORCH_CUDA_ARCH_LIST:-} ${PRUNEEXT_NO_CUDA:-0}"; } | sha256sum | cut -c1-16)
  loads='import sys, torch, pruneext._C
sys.exit(0 if sys.argv[1] == "1" or torch._C._dispatch_has_kernel_for_dispatch_key("pruneext::l1_mask", "CUDA") else 3)'
  so=$(ls pruneext/_C*.so 2>/dev/null | head -n 1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "$loads" "$DRY" 2>/dev/null; then
    echo "build: skipped (pruneext._C loads; sources, torch and arch unchanged since the last build here: $want)"
  elif [ ! -f "$stamp" ] && [ -n "$so" ] && [ -z "$(find csrc setup.py pyproject.toml -newer "$so" -type f)" ] \
      && "$PY" -c "$loads" "$DRY" 2>/dev/null; then
    echo "build: skipped ($so loads and is newer than every source; stamp written: $want)"
    mkdir -p build && echo "$want" > "$stamp"
  else
    echo "build: pip install --no-build-isolation --no-deps -e . (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}," \
         "MAX_JOBS=$MAX_JOBS, PRUNEEXT_NO_CUDA=${PRUNEEXT_NO_CUDA:-0})"
    rm -f "$stamp"
    t0=$(date +%s)
    "$PY" -m pip install --no-build-isolation --no-deps -e . || { echo "build: FAILED"; exit 1; }
    "$PY" -c "$loads" "$DRY" || { echo "build: pruneext._C does not load, or has no CUDA kernels"; exit 1; }
    mkdir -p build && echo "$want" > "$stamp"
    echo "build: done in $(( $(date +%s) - t0 )) s"
  fi
  "$PY" -c "import json, pruneext; i = pruneext.build_info(); print('build_info:', json.dumps(i))"
  exit 0
fi

# ---------------------------------------------------------------------------
START=$(date +%s)
if [ "$which" = first ]; then BUDGET=${GPU_CHECK_BUDGET:-530}; else BUDGET=${GPU_CHECK_BUDGET:-280}; fi
SUMMARY=$OUT/summary.txt
# this command's files start empty (the device tool empties $OUT; a rehearsal may not)
rm -rf "$OUT/json"
for f in summary.txt build.log tests.log tests.xml slow.log slow.xml probe.log probe.json profile.txt sanitizer.log \
    lean.json; do
  rm -f "$OUT/$f"
done
: > "$SUMMARY"
FAILED=0
note() { echo "$*" | tee -a "$SUMMARY"; }  # a verdict: live, and in the summary printed at the end

# run_stage NAME CAP LOG CMD...: CMD under `timeout`, for CAP seconds or what
# is left of the budget, output appended to LOG; one verdict line in the summary.
run_stage() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then
    note "$name: NOT RUN (the ${BUDGET} s budget is spent)"
    FAILED=1
    return 124
  fi
  echo "== $name (at most $limit s): $*" >> "$log"
  echo "-- $name (at most $limit s) ..."
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    note "$name: ok (${took} s)"
  elif (( rc == 124 || rc == 137 )); then
    note "$name: TIMEOUT after $limit s (exit $rc); see $(basename "$log")"
    FAILED=1
  else
    note "$name: FAILED, exit $rc (${took} s); see $(basename "$log")"
    FAILED=1
  fi
  return $rc
}

stage_imports_and_build() {
  if run_stage imports 60 "$OUT/build.log" "$PY" scripts/gpu_check_report.py imports; then :; else
    note "!!! torch does not import: nothing else can run"; tail -5 "$OUT/build.log"; exit 1
  fi
  grep -h "^imports:" "$OUT/build.log" | tail -n 1 >> "$SUMMARY"
  grep -h "MISSING" "$OUT/build.log" | grep -v "^imports:" | sed 's/^/!!! /' >> "$SUMMARY"
  if [ "$DRY" = 1 ]; then
    export PRUNEEXT_NO_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} TRITON_INTERPRET=1
    note "dry run: CPU tensors, tiny sizes, TRITON_INTERPRET=1, C++-only build (PRUNEEXT_NO_CUDA=1)"
  else
    local arch
    arch=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}.{p.minor}')" 2>/dev/null) \
      || { note "!!! no CUDA device visible to torch: building for 9.0, the GPU stages will skip or fail"; arch=9.0; }
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16} PRUNEEXT_REQUIRE_CUDA=1
  fi
  if ! run_stage build 240 "$OUT/build.log" bash "$0" _build; then
    tail -30 "$OUT/build.log"
    note "!!! the build failed: the remaining stages are not run"
    exit 1
  fi
  grep -h "^build: " "$OUT/build.log" | tail -n 1 >> "$SUMMARY"
  grep -h "^build_info:" "$OUT/build.log" | tail -n 1 | cut -c1-400 >> "$SUMMARY"
}

has() { "$PY" -c "import $1" 2>/dev/null; }

if [ "$which" = first ]; then
  note "gpu_check first$([ "$DRY" = 1 ] && echo " (DRY)"): $(date -u +%FT%TZ), budget $BUDGET s"
  stage_imports_and_build
  # -v: a line per test as it ends ("[gw3] [ 12%] FAILED tests/...::test"), so a stage
  # cut short still names what failed (the H200's first run was cut at 60 %, in dots)
  pytest_args=(-p no:cacheprovider -v -rfE --continue-on-collection-errors -k "cuda or triton")
  slow_timeout=() test_timeout=() workers=() paths=(tests)
  if has pytest_timeout; then
    slow_timeout=(--timeout 240 --timeout-method thread) test_timeout=(--timeout 120 --timeout-method thread)
  fi
  has xdist && workers=(-n 16)
  if [ "$DRY" = 1 ]; then
    has xdist && workers=(-n 2)
    paths=(tests/test_cuda.py tests/test_backends.py tests/test_benchmarks.py
           tests/test_triton.py::test_k_zero_and_k_n_keep_the_default_mask)
  fi
  # the crash probe first (the first run's open question), the slow tests
  # (few, and the only check past 2^31 entries), then the suite, which gets
  # whatever is left of the budget
  crash=("$PY" scripts/gpu_crash_probe.py)
  [ "$DRY" = 1 ] && crash+=(--device cpu --no-gdb)
  run_stage crash 90 "$OUT/slow.log" "${crash[@]}"
  grep -h "^crash-probe: " "$OUT/slow.log" | grep -v "^crash-probe: raises" | head -n 50 >> "$SUMMARY"
  run_stage slow 180 "$OUT/slow.log" "$PY" -m pytest "${pytest_args[@]}" "${slow_timeout[@]}" -m slow \
    --junitxml="$OUT/slow.xml" tests
  # (COLUMNS: the -rfE lines keep more of each message than 80 columns would)
  COLUMNS=200 run_stage tests 360 "$OUT/tests.log" "$PY" -m pytest "${pytest_args[@]}" "${workers[@]}" \
    "${test_timeout[@]}" --junitxml="$OUT/tests.xml" "${paths[@]}"
  "$PY" scripts/gpu_check_report.py outcomes "$OUT/slow.log" "$OUT/tests.log" >> "$SUMMARY"
  note "first: $(( $(date +%s) - START )) s; now send: bash scripts/gpu_check.sh second"
fi

if [ "$which" = second ]; then
  note "gpu_check second$([ "$DRY" = 1 ] && echo " (DRY)"): $(date -u +%FT%TZ), budget $BUDGET s"
  stage_imports_and_build
  mkdir -p "$OUT/json"
  : > "$OUT/profile.txt"
  bench=("$PY" -m benchmarks.run --no-plots)
  ops=op-topk,op-cuda,op-triton gops=op-cuda,op-triton mods=torch,cuda,triton
  if [ "$DRY" = 1 ]; then
    bench+=(--device cpu --budget 0.02 --min-reps 1 --max-reps 3)
    ops=op-topk,op-cpu,op-triton gops=op-cpu,op-triton mods=torch,cpu
    small=(--sizes 2^16) model=(--models tiny-llama)
  else
    small=() model=()
  fi
  run_stage ops 100 "$OUT/probe.log" "${bench[@]}" --ops --probe "${small[@]}" --modes single,iterative \
    --contenders "$ops" --profile "$OUT/profile.txt" --out "$OUT/json/1-ops.json"
  run_stage ops-global 60 "$OUT/probe.log" "${bench[@]}" --ops --probe "${model[@]}" --modes global \
    --contenders "$gops" --profile "$OUT/profile.txt" --out "$OUT/json/2-ops-global.json"
  run_stage module 50 "$OUT/probe.log" "${bench[@]}" --modes single --sizes "$([ "$DRY" = 1 ] && echo 2^16 || echo 2^28)" \
    --dtypes f32 --amounts 0.5 --contenders "$mods" --reps 3 --out "$OUT/json/3-module.json"

  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  san_cases=("$PY" scripts/gpu_sanitize.py)
  [ "$DRY" = 1 ] && san_cases+=(--device cpu --small --backends cpu,triton)
  if [ -z "$sanitizer" ]; then
    note "!!! COMPUTE-SANITIZER IS MISSING (not on PATH, not in /usr/local/cuda/bin): memcheck and racecheck NOT RUN"
    if [ "$DRY" = 1 ]; then note "    (dry run: expected without the CUDA tools; on the GPU machine this fails the command)"
    else FAILED=1; fi
    [ "$DRY" = 1 ] && run_stage "sanitizer cases, without the sanitizer" 60 "$OUT/sanitizer.log" "${san_cases[@]}"
  elif [ "$DRY" = 1 ]; then
    run_stage "compute-sanitizer --version" 20 "$OUT/sanitizer.log" "$sanitizer" --version
    run_stage "sanitizer cases, without the sanitizer" 60 "$OUT/sanitizer.log" "${san_cases[@]}"
  else
    run_stage memcheck 75 "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$sanitizer" --tool memcheck --error-exitcode 9 --print-limit 30 "${san_cases[@]}" --set memcheck
    run_stage racecheck 45 "$OUT/sanitizer.log" \
      "$sanitizer" --tool racecheck --error-exitcode 9 --print-limit 30 "${san_cases[@]}" --set racecheck --backends cuda
  fi
  [ -f "$OUT/sanitizer.log" ] && grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|calls matched|MISMATCH|ERROR " \
    "$OUT/sanitizer.log" | head -n 12 >> "$SUMMARY"

  run_stage torch-llama 90 "$OUT/probe.log" "${bench[@]}" --probe "${model[@]}" --modes global \
    --contenders "$mods" --reps 1 --out "$OUT/json/4-module-llama.json"

  lean=("$PY" -m benchmarks.training --parts update,added --reps 5 --json "$OUT/lean.json")
  if [ "$DRY" = 1 ]; then lean+=(--device cpu --quick --reps 1); else lean+=(--device cuda); fi
  run_stage lean 45 "$OUT/probe.log" "${lean[@]}"
  grep -hE "^\| (pruner update|re-mask)|^- (torch's hooks|the pruner) " "$OUT/probe.log" | tail -n 4 >> "$SUMMARY"

  # issue 24: the row and 2:4 masks against torch, and what 2:4 buys a LLaMA-7B-shaped Linear
  scopes=("$PY" -m benchmarks.scopes --reps 5)
  if [ "$DRY" = 1 ]; then scopes+=(--device cpu --backend cpu --shapes 64x128 --reps 1); else scopes+=(--device cuda --backend cuda --matmul); fi
  run_stage scopes 40 "$OUT/probe.log" "${scopes[@]}"
  grep -hE "^ +[0-9]+x[0-9]+ .*x |^Linear " "$OUT/probe.log" | tail -n 14 >> "$SUMMARY"

  "$PY" scripts/gpu_check_report.py probe "$OUT/probe.json" "$OUT"/json/*.json >> "$SUMMARY" || FAILED=1
  rm -rf "$OUT/json"
  note "second: $(( $(date +%s) - START )) s"
fi

echo
echo "================ SUMMARY ($OUT/summary.txt) ================"
cat "$SUMMARY"
exit $FAILED
