"""The sampled window of the Triton radix select, as the CPU and CUDA kernels
have it: one pass over the entries instead of a histogram over all of them.

A strided sample of the keys brackets the k-th alive key between two of the
sample's order statistics, lo <= hi, MARGIN_SIGMAS standard deviations of a
sample rank either side of where it should fall (the count of sample keys
below the k-th key is binomial: S draws, each below with chance r / S). window_kernel then reads
every entry once: it counts the alive keys below lo and in all, and appends
those within [lo, hi] to a candidate buffer. If the k-th key is among them
(below < rank <= below + candidates, and they all fit), the radix passes run
over the candidates alone; else (a sample far off, or a crowd of equal keys
overflowing the buffer) over every entry, as without a window. The device
decides (state[HIT]) and each path's kernels return at once when it is the
other's turn, so the host never waits.

Beside sample_kernel, everything here is torch ops on a sample of SAMPLE
keys and on a few scalars: no host sync.
"""
import math

import torch
import triton

from . import kernels

SAMPLE = 1 << 16  # keys in the sample (all entries' keys when there are fewer)
SAMPLE_BLOCK = 1024
MARGIN_SIGMAS = 4.0  # a sample rank r of S errs by about sqrt(r (1 - r / S))
# The window holds about 2 * MARGIN_SIGMAS * sqrt(r (1 - r/S)) / S of the
# entries, at most 4 / sqrt(S) (1.6 % at SAMPLE = 2^16, at r = S / 2), plus
# the keys equal to its ends; the buffer takes 1/CAPACITY_DIV of them.
# (A margin of sqrt(r) tended to 8 / sqrt(S), 3.1 %, the whole buffer, as
# the amount neared 1, and bf16's ties overflowed it.)
CAPACITY_DIV = 32
CAPACITY_SLACK = 4096


def capacity(entries):
    return entries // CAPACITY_DIV + CAPACITY_SLACK


def bounds(groups, plan, k, entries, launch):
    """The window [lo, hi] of keys, as an int64 tensor of two, from a
    strided sample of every group of the list's tensors (table.Group; in
    proportion to its size; sample_kernel, launched through `launch`). Dead entries (mask not 1,
    with among_alive) take the largest key, with the NaNs: the alive keys
    keep their order below them, and the k-th alive key of all sits near
    sample rank k * samples / entries, whatever the share of alive entries."""
    counts = [min(g.n, (SAMPLE * g.n + entries - 1) // entries) for g in groups]  # ceil: at least 1
    sample = torch.empty(sum(counts), dtype=torch.int64, device=groups[0].bits.device)
    start = 0
    for g, count in zip(groups, counts):
        launch(
            kernels.sample_kernel, (triton.cdiv(count, SAMPLE_BLOCK),),
            *g.args(), count, sample, start, BLOCK=SAMPLE_BLOCK, **g.key_consts(plan),
        )
        start += count
    sample = torch.sort(sample).values
    size = sample.numel()
    rank = k * size / entries
    margin = MARGIN_SIGMAS * math.sqrt(rank * max(0.0, 1 - rank / size)) + 2
    last = size - 1  # (a k past the entries, which the host refuses later, ranks past it)
    lo_at, hi_at = min(math.floor(rank - margin), last), math.ceil(rank + margin)
    lo = sample[lo_at] if lo_at >= 0 else sample.new_zeros(())
    hi = sample[hi_at] if hi_at <= last else sample.new_full((), plan.abs_mask)
    return torch.stack([lo, hi])


def decide(state, below, alive, k, cap):
    """After window_kernel: state[HIT], and for the candidates' first pass
    the rank within them, the count below them and the alive total (the
    passes over all entries set those afresh if the window missed)."""
    rank = torch.clamp(alive, max=k)  # k past the alive total selects them all
    cands = state[kernels.CAND]
    hit = (below < rank) & (rank <= below + cands) & (cands <= cap)
    state[kernels.RANK] = rank - below
    state[kernels.BELOW] = below
    state[kernels.TOTAL] = alive
    state[kernels.HIT] = hit.to(torch.int64)
