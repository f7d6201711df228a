"""Issue 21, part B: do the CUDA ops' errors raise, or kill the process?

On the first H200 run every exception thrown by a CUDA op killed its process
(SIGSEGV). Each call below raised there in the CPU op and crashed in the
CUDA one. This runs each in a process of its own and reports how it ended:
`raised <type>: <message>` (what it must do), `ok` (no error: wrong), or the
signal that killed it. For a call that died, and where cuda-gdb is found,
it runs that call once more under `cuda-gdb -batch -ex run -ex bt` (host
frames too) and prints the backtrace, the evidence for the root cause.

    python scripts/gpu_crash_probe.py [--device cuda|cpu] [--no-gdb]

--device cpu (the rehearsal without a GPU) sends CPU tensors to the CUDA
kernels through the dispatcher (their host-side checks run all the same).
Exits 1 if any call did not raise.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = """
import torch, pruneext
ops = torch.ops.pruneext
dev = {device!r}
if dev == "cpu":  # the CUDA kernels, on CPU tensors
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    call = lambda op, *a: op.redispatch(keys, *a)
else:
    call = lambda op, *a: op(*a)
x = torch.randn(1000, device=dev)
"""

# name -> the statement that must raise (from the tests that crashed)
CALLS = {
    "k too large (test_k_too_large_raises)": "call(ops.l1_mask.default, x, 1001)",
    "k above the alive entries (device count)": "call(ops.l1_mask.default, x, 501, (torch.arange(1000, device=dev) % 2).float(), True)",
    "empty tensor, k = 1 (test_empty_and_trivial_k)": "call(ops.l1_mask.default, torch.empty(0, device=dev), 1)",
    "values_out of another dtype (test_bad_values_out_raises_before_writing)":
        "call(ops.l1_mask.default, x, 1, None, False, None, torch.empty(1000, dtype=torch.float64, device=dev))",
    "key_histogram bits = 17 (test_phases::test_argument_errors)":
        "call(ops.l1_key_histogram.default, [x], [], False, 0, 17, 0)",
    "bit mask of the wrong size (test_bits_ops::test_errors)":
        "call(ops.l1_bits_prune.default, [x], [torch.zeros(1, dtype=torch.uint8, device=dev)], 0, [0])",
}

RUNNER = """
try:
    {stmt}
    print("OUTCOME ok")
except Exception as e:
    print("OUTCOME raised " + type(e).__name__ + ": " + str(e).splitlines()[0][:160])
"""


def program(device, stmt):
    return PRELUDE.format(device=device) + RUNNER.format(stmt=stmt)


def run_one(device, stmt, timeout):
    proc = subprocess.run([sys.executable, "-c", program(device, stmt)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line[len("OUTCOME "):] for line in proc.stdout.splitlines() if line.startswith("OUTCOME ")]
    if proc.returncode < 0:
        return f"KILLED by {signal.Signals(-proc.returncode).name}", proc
    if not lines:
        return f"NO OUTCOME (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", proc
    return lines[-1], proc


def backtrace(device, stmt, gdb, timeout):
    args = [gdb, "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
            "--args", sys.executable, "-c", program(device, stmt)]
    try:
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "(cuda-gdb timed out)"
    frames = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    return "\n".join(frames) or proc.stdout[-3000:] + proc.stderr[-2000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--no-gdb", action="store_true", help="do not rerun a crash under cuda-gdb")
    ap.add_argument("--timeout", type=int, default=90)
    args = ap.parse_args()
    gdb = None if args.no_gdb else (shutil.which("cuda-gdb") or shutil.which("/usr/local/cuda/bin/cuda-gdb"))
    bad = 0
    traced = False
    for name, stmt in CALLS.items():
        outcome, _ = run_one(args.device, stmt, args.timeout)
        good = outcome.startswith("raised ")
        bad += not good
        print(f"crash-probe: {'raises' if good else 'FAILS '} {name}: {outcome}", flush=True)
        if outcome.startswith("KILLED") and gdb and not traced:
            traced = True  # one backtrace is the evidence; the others cost device time
            print(f"crash-probe: backtrace of '{name}' under {gdb}:\n{backtrace(args.device, stmt, gdb, args.timeout)}",
                  flush=True)
    if bad and not gdb and not args.no_gdb:
        print("crash-probe: cuda-gdb not found: no backtrace")
    print(f"crash-probe: {len(CALLS) - bad} of {len(CALLS)} calls raised")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
