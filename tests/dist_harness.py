"""Run functions on several local processes with torch.distributed (gloo on
127.0.0.1, a free port), with a timeout on every collective and on the whole
run, and no process left behind.

    ranks = run_on_ranks(scenarios, world_size=2)   # {name: [(status, result) per rank]}
    results(ranks, scenario)                         # [result per rank], or fails

Each scenario is a top-level function `fn(rank, world_size) -> picklable`,
called on every rank in the same order; one that raises reports its
traceback as the result, and the others go on.
"""
import contextlib
import datetime
import multiprocessing
import os
import queue
import socket
import traceback

COLLECTIVE_TIMEOUT_S = int(os.environ.get("PRUNEEXT_TEST_COLLECTIVE_TIMEOUT", 60))  # a collective that waits this long fails (no hang)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, scenarios, out):
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["OMP_NUM_THREADS"] = "1"  # ranks share two cores
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        for fn in scenarios:
            try:
                result = ("ok", fn(rank, world_size))
            except Exception:  # noqa: BLE001  (reported to the test)
                result = ("error", traceback.format_exc())
            out.put((fn.__name__, rank, result))
            dist.barrier()  # the next scenario starts together
    finally:
        dist.destroy_process_group()


def run_on_ranks(scenarios, world_size, timeout_s=600):
    """{scenario name: [(status, result) per rank]}; raises if a process
    hangs past timeout_s or dies. Every process is ended before it returns."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, scenarios, out)) for r in range(world_size)]
    for p in procs:
        p.start()
    results = {fn.__name__: [None] * world_size for fn in scenarios}
    expected = len(scenarios) * world_size
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    try:
        got = 0
        while got < expected:
            left = (deadline - datetime.datetime.now()).total_seconds()
            if left <= 0:
                raise TimeoutError(f"distributed run hung: {got} of {expected} results after {timeout_s} s")
            try:
                name, rank, result = out.get(timeout=min(left, 5))
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(f"a rank died (exit codes {[p.exitcode for p in procs]})")
                continue
            results[name][rank] = result
            got += 1
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return results


def results(ranks, scenario):
    """The scenario's result on every rank of a run_on_ranks outcome; fails
    with a rank's traceback."""
    out = ranks[scenario.__name__]
    for rank, (status, value) in enumerate(out):
        assert status == "ok", f"rank {rank}:\n{value}"
    return [value for _, value in out]


@contextlib.contextmanager
def cpu_load(processes=2):
    """`processes` busy loops on the machine's cores for the body's length
    (the condition under which the torchrun examples once aborted at exit);
    every one is ended afterwards."""
    import subprocess
    import sys

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()


def run_torchrun_under_load(script, expected, repeats=3, timeout_s=600):
    """`run_torchrun(script)` `repeats` times with the cores kept busy; each
    run must exit 0 and print `expected`. Returns the runs."""
    runs = []
    with cpu_load():
        for i in range(repeats):
            done = run_torchrun(script, timeout_s=timeout_s)
            assert done.returncode == 0, f"run {i + 1} of {repeats}: exit {done.returncode}\n" + done.stdout[-3000:] + done.stderr[-3000:]
            assert expected in done.stdout, done.stdout[-3000:]
            runs.append(done)
    return runs


def run_torchrun(script, nproc=2, timeout_s=600):
    """`torchrun --standalone --nproc-per-node N script` from the repository
    root, as a README says to run it (without the interpreter mode of the
    Triton tests); the finished process, its output captured."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s,
    )
