"""How one call is timed, and how many times.

A measurement times `call(state)` where `state = setup()` is built before the
clock starts (a fresh module each repetition; building it is never timed).

* CPU: wall clock with time.perf_counter around the call.
* CUDA: CUDA events recorded on the current stream right before and after the
  call (after a torch.cuda.synchronize()), so the figure covers the Python
  work of the call and every kernel it launched.

Warm-up (never in the figures): the runner first runs each contender once on
a tiny case of the same mode and dtype (benchmarks.cases.Case.small), which
pays for lazy initialisation, Triton compilation and thread-pool start-up;
on CUDA it also makes one untimed full-size call (for the memory figure and
the correctness check) before timing. Then the first full-size call of the
measurement is discarded as a further warm-up when it is fast; when it takes
`slow_s` or more (torch's topk path on large tensors takes seconds on a CPU)
it counts as the first repetition, so a slow contender is not run an extra
time for nothing.

Repetitions: as many as fit in `budget_s` (at least `min_reps`, at most
`max_reps`) for fast calls; slow calls get as many as fit in `slow_budget_s`,
at most `slow_reps` and at least one. The median is reported with the count.
"""
import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Policy:
    budget_s: float = 0.25  # time target for the repetitions of one fast measurement
    min_reps: int = 3
    max_reps: int = 30
    slow_s: float = 0.5  # a first call this slow counts as a repetition
    slow_reps: int = 3
    slow_budget_s: float = 6.0  # slow calls: no more repetitions than fit here (at least 1)


@dataclass
class Timing:
    median_s: float
    times_s: list = field(default_factory=list)
    warmups: int = 0

    @property
    def reps(self):
        return len(self.times_s)


class Clock:
    """Times one call on a device type ("cpu" or "cuda")."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time_call(self, call, state):
        """Seconds taken by call(state); garbage collection is paused meanwhile
        and whatever the call returns is freed only after the clock stops."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                out = call(state)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                out = call(state)
                seconds = time.perf_counter() - t0
            del out
            return seconds
        finally:
            if gc_was_enabled:
                gc.enable()


def measure(clock, setup, call, policy, after_first=None):
    """Time call(setup()) repeatedly under `policy`.

    `after_first(state)`, when given, runs after the first full-size call
    (outside the clock) — the runner uses it for the memory figure and the
    correctness check, which need a pruned state. Each repetition's state is
    dropped before the next one is built.
    """
    state = setup()
    first = clock.time_call(call, state)
    if after_first is not None:
        after_first(state)
    del state

    times, warmups = [], 0
    if first >= policy.slow_s:
        times.append(first)
        reps = max(1, min(policy.slow_reps, int(policy.slow_budget_s // first)))
    else:
        warmups = 1
        reps = int(policy.budget_s // max(first, 1e-7))
        reps = max(policy.min_reps, min(policy.max_reps, reps))
    while len(times) < reps:
        state = setup()
        times.append(clock.time_call(call, state))
        del state
    return Timing(statistics.median(times), times, warmups)


def copy_figures(clock, tensors, policy):
    """Median seconds of `[t.clone() for t in tensors]` and of
    `dst.copy_(src)` into preallocated tensors: the copy bandwidth reference
    of the case (2 x bytes moved: read + write). Copies are cheap, so they
    get at least 7 repetitions: the yardstick should be the steadiest figure."""
    policy = dataclasses.replace(policy, min_reps=max(policy.min_reps, 7), max_reps=max(policy.max_reps, 7))
    clone = measure(clock, lambda: tensors, lambda ts: [t.clone() for t in ts], policy)
    dsts = [torch.empty_like(t) for t in tensors]
    pairs = list(zip(dsts, tensors))
    copy = measure(clock, lambda: pairs, lambda ps: [d.copy_(s) for d, s in ps], policy)
    del dsts, pairs
    return clone, copy
