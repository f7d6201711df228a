"""Peak extra memory of one pruning call: how far above what the inputs and a
fresh module already hold the call pushes memory. The outputs the call
leaves behind (the `weight_mask` buffers and the recomputed `weight`) count:
they are part of what pruning costs.

* CUDA, in process: torch.cuda.max_memory_allocated() during the call minus
  torch.cuda.memory_allocated() before it (after reset_peak_memory_stats).
* CPU, in a fresh subprocess per (case, contender), because a process's peak
  RSS only ever grows:

      python -m benchmarks.memory --case '<Case as JSON>' --contender NAME

  The subprocess warms the contender up on a tiny case, builds the inputs and
  a fresh module, hands freed heap pages back to the OS (malloc_trim), resets the kernel's RSS high-water mark when Linux allows it
  (`echo 5 > /proc/self/clear_refs`, so building the inputs does not hide the
  call's peak), reads resource.getrusage(RUSAGE_SELF).ru_maxrss and VmHWM
  (/proc/self/status), runs the call once, and reads both again. It prints
  one JSON line; the growth is after - before. It is taken from VmHWM when
  the reset worked: Linux carries the high-water mark of the process image
  that exec'd into ru_maxrss (signal->maxrss), so a child of a big parent
  starts with the parent's peak there and the reset cannot lower it. Without
  the reset (not Linux, or /proc read-only) it falls back to ru_maxrss. The runner starts the
  subprocesses of one case side by side (after timing that case), which
  leaves each one's figure unchanged.

Both report bytes and the ratio to the bytes of the parameters pruned.
"""
import argparse
import concurrent.futures
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys

import torch

_PREFIX = "BENCHMARK-MEMORY "
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_peak_extra(call, state):
    """Bytes the CUDA caching allocator held at its peak during call(state),
    above what it held just before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call(state)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _vm_hwm_bytes():
    """This process's own RSS high-water mark (VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _return_free_heap():
    """Give freed heap pages back to the OS (glibc), so the call's own
    allocations show in the RSS instead of reusing the warm-up's pages."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_peak_extra_parallel(case, contender_names, seed=0, jobs=None):
    """{name: result} for each contender, one fresh subprocess each, up to
    `jobs` at a time (a process's RSS is its own, so running them side by
    side does not change the figures; jobs is lowered when memory is short:
    each process is assumed to need 16x the parameter bytes plus 1 GB)."""
    jobs = jobs or min(4, os.cpu_count() or 1)
    available = _available_bytes()
    if available is not None:
        jobs = max(1, min(jobs, int(available // (16 * case.param_bytes + 2**30))))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(cpu_peak_extra_subprocess, case, name, seed) for name in contender_names}
        return {name: f.result() for name, f in futures.items()}


def cpu_peak_extra_subprocess(case, contender_name, seed=0, timeout_s=1800):
    """Run this module in a fresh interpreter; returns its result dict (with
    'error' set when the subprocess failed)."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--case", json.dumps(case.to_dict()),
           "--contender", contender_name, "--seed", str(seed)]
    try:
        proc = subprocess.run(cmd, cwd=_REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"memory subprocess timed out after {timeout_s} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_PREFIX):
            return json.loads(line[len(_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"memory subprocess exited {proc.returncode}: {tail[0]}"}


def _measure_here(case, contender_name, seed):
    from .cases import Case, make_params
    from .contenders import Inputs, make_premask, select

    case = Case.from_dict(case) if isinstance(case, dict) else case
    (contender,) = select(contender_name)
    reason = contender.refusal(case)
    if reason is not None:
        return {"error": f"skipped: {reason}"}

    def inputs_for(c):
        params = make_params(c, seed)
        premask = make_premask(params[0]) if c.mode == "iterative" else None
        return Inputs(params, premask)

    small = inputs_for(case.small())  # warm-up: lazy initialisation, thread pools
    contender.call(contender.setup(case.small(), small))
    del small
    inputs = inputs_for(case)
    state = contender.setup(case, inputs)
    gc.collect()
    _return_free_heap()
    reset = _reset_high_water_mark()
    before, hwm_before = _maxrss_bytes(), _vm_hwm_bytes()
    contender.call(state)
    after, hwm_after = _maxrss_bytes(), _vm_hwm_bytes()
    use_hwm = reset and hwm_before is not None and hwm_after is not None
    return {
        "peak_extra_bytes": (hwm_after - hwm_before) if use_hwm else (after - before),
        "source": "VmHWM" if use_hwm else "ru_maxrss",
        "maxrss_before_bytes": before,
        "maxrss_after_bytes": after,
        "vm_hwm_before_bytes": hwm_before,
        "vm_hwm_after_bytes": hwm_after,
        "high_water_mark_reset": reset,
        "param_bytes": case.param_bytes,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Peak RSS growth of one pruning call (run by benchmarks.run).")
    parser.add_argument("--case", required=True, help="the Case as JSON")
    parser.add_argument("--contender", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = _measure_here(json.loads(args.case), args.contender, args.seed)
    except Exception as e:  # reported to the parent, which records it in the row
        result = {"error": f"{type(e).__name__}: {e}"}
    print(_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
