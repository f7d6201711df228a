"""Host driver of the Triton radix select: checks the arguments, allocates,
and launches the kernels of kernels.py.

For a list of tensors (the single-tensor op is a list of one), with
P = len(KeyPlan.digits) radix passes (fp32: 3, fp16/bf16: 1, fp64: 6), and
the tensors in groups of one kind (table.py: one launch per group covers all
its tensors; a list usually is one group):

    with WINDOW_MIN entries or more (window.py):
      window.bounds                  (sample_kernel per group, a sort)
      window_kernel per group        (counts below the window, candidates)
      window.decide                  (torch ops: state[HIT])
      the P passes over the candidates        (run on a hit)
      the P passes over every group           (run on a miss)
    else: the P passes over every group, where each pass is
      histogram_kernel per group (one shared histogram),
      then select_bucket_kernel (one program)
    count_ties_kernel per group    (keys == T per block, one shared buffer;
                                    reads nothing unless the cut splits them)
    torch.cumsum                   (exclusive scan of those counts, int64)
    write_mask_kernel per group    (the mask, ties in flat / list order, and
                                    the masked values where asked for)

A LLaMA-7B-shaped list of 226 bf16 tensors: 8 launches (per tensor before
the tables: 1,133). A traced graph launches per tensor (table.py says why).

k == 0 skips straight to the write. The scores are never concatenated:
the temporaries are the histograms (HIST_REPLICAS copies of a few thousand
int64), the candidate buffer (1/32 of the keys), a 7-entry state and a few
int64 per block. There is no host sync, except to refuse
k > the alive count when that count lives on the device (among_alive with a
default mask): then one `.item()` after everything is launched, and only in
eager mode (a traced graph cannot raise; see select_bucket_kernel).
"""
import contextlib
import functools

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from ..contract import KEY_PLANS, MASK_BITS, check_mask_outputs, check_values
from . import kernels, table, window
from .keys import VALUE_TYPES

# TRITON_INTERPRET=1 (read by @triton.jit when kernels.py was imported) makes
# the kernels InterpretedFunctions: they run on CPU tensors, and cannot be traced.
INTERPRET = not isinstance(kernels.histogram_kernel, triton.runtime.JITFunction)
# Elements per program: HIST_BLOCK for the histogram passes, WINDOW_BLOCK for
# the window pass (one candidate reservation per block), MASK_BLOCK for the
# tie counts and the mask (one tie count per MASK_BLOCK). The interpreter
# runs programs one after another, so it gets large blocks (numpy-vectorised);
# a GPU gets many small ones. (Tests shrink them to cross block boundaries.)
HIST_BLOCK = 1 << 16 if INTERPRET else 4096
MASK_BLOCK = 1 << 16 if INTERPRET else 2048
WINDOW_BLOCK = 1 << 16 if INTERPRET else 4096
# Lists of fewer entries go straight to the radix passes: a handful of
# launches costs less there than the sample's sort and the window pass.
WINDOW_MIN = 1 << 20
NUM_WARPS = 8
# Programs of the passes that may be skipped on the device (the histograms
# of the path not taken, the tie counts): they stride over their blocks, so
# a skipped pass launches this many programs, not one per block.
MAX_PROGRAMS = 1 << 14
# Copies of the histogram that the blocks' atomics spread over (see
# histogram_kernel); the interpreter has no contention, and two copies test
# the sums.
HIST_REPLICAS = 2 if INTERPRET else 8
SELECT_CHUNK = 1024  # bins per step of select_bucket_kernel


def _launch(kernel, grid, *args, tracing=False, **meta):
    """Launch through wrap_triton (traceable by torch.compile / make_fx).
    Interpreted kernels cannot be traced: under fake tensors (fake
    propagation of the op) they are skipped, as only shapes matter there."""
    if INTERPRET:
        # torch <= 2.11's wrap_triton refuses InterpretedFunctions; they are
        # never traced anyway, so launch them directly.
        if not tracing:
            kernel[grid](*args, num_warps=NUM_WARPS, **meta)
        return
    wrap_triton(kernel)[grid](*args, num_warps=NUM_WARPS, **meta)


def _device_guard(device, tracing):
    """Triton launches on the current CUDA device and its current stream,
    not the tensors': make their device the current one. (A traced graph
    gets Inductor's own guards, and fake tensors have no device to enter.)"""
    if device.type != "cuda" or tracing:
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _key_consts(plan, one, filter):
    """The constexprs of every kernel's key and alive test."""
    return dict(ABS_MASK=plan.abs_mask, INF_BITS=plan.inf_bits, WIDE=plan.wide, ONE=one, FILTER=filter)


class _Job:
    """One tensor of the list: integer views of its scores and default mask,
    its output, and where its blocks' tie counts go (in list order)."""

    def __init__(self, scores, prev, among_alive, count_base, values=None, values_out=None, out=None, allocate=True):
        self.n = scores.numel()
        self.bits = scores.contiguous().view(KEY_PLANS[scores.dtype].bits_dtype)
        self.prev = None if prev is None else prev.contiguous().view(MASK_BITS[prev.dtype][0])
        self.filter = among_alive and prev is not None
        # bits of 1 in the default mask, when it filters (1 otherwise, unused:
        # one value keeps the number of compiled specialisations down)
        self.prev_one = MASK_BITS[prev.dtype][1] if self.filter else 1
        self.out_dtype = scores.dtype if prev is None else prev.dtype
        out_bits_dtype, self.out_one = MASK_BITS[self.out_dtype]
        # the caller's mask output (checked by check_mask_outputs), else a new one
        # (none for a call that writes no mask: the kernels it runs never
        # touch the output)
        shape = scores.shape if allocate else (0,)
        self.out = torch.empty(shape, dtype=out_bits_dtype, device=scores.device) if out is None else out.view(out_bits_dtype)
        self.blocks = triton.cdiv(self.n, MASK_BLOCK)  # of the mask passes
        self.count_base = count_base
        # the default mask as the kernels take it: without one, never read
        self.key_prev = self.bits if self.prev is None else self.prev
        # the masked values (checked by check_values), as integer views like
        # the scores: written beside the mask
        self.value_type = None if values_out is None else VALUE_TYPES[values_out.dtype]
        value_bits = None if values_out is None else KEY_PLANS[values_out.dtype].bits_dtype
        self.values = None if values_out is None else values.contiguous().view(value_bits)
        self.values_out = None if values_out is None else values_out.view(value_bits)
        # what a table launch must share (table.Group): the kernels' constexprs
        value_kind = None if values_out is None else values_out.dtype  # (the value type)
        self.kind = (
            self.key_prev.dtype, self.filter, self.prev_one, self.prev is not None, self.out.dtype, self.out_one,
            value_kind,
        )

    def key_consts(self, plan):
        return _key_consts(plan, self.prev_one, self.filter)

    def result(self):
        return self.out.view(self.out_dtype)


def _check(scores, masks, k, op):
    if k < 0:
        raise RuntimeError(f"{op}: k must be non-negative, got {k}")
    if masks and len(masks) != len(scores):
        raise RuntimeError(
            f"{op}: expected one default mask per score tensor (or none), got {len(masks)} masks "
            f"for {len(scores)} tensors"
        )
    if not scores:
        if k != 0:
            raise RuntimeError(f"{op}: k={k} but there is nothing to prune")
        return
    dtype, device = scores[0].dtype, scores[0].device
    if dtype not in KEY_PLANS:
        raise TypeError(f"{op}: scores must be float32, float64, float16 or bfloat16, got {dtype}")
    for s, m in zip(scores, masks or [None] * len(scores)):
        if s.dtype != dtype:
            raise TypeError(f"{op}: all score tensors must share one dtype, got {dtype} and {s.dtype}")
        if s.device != device:
            raise RuntimeError(f"{op}: all tensors must be on one device, got {device} and {s.device}")
        if m is None:
            continue
        if m.shape != s.shape:
            raise RuntimeError(
                f"{op}: default mask of shape {tuple(m.shape)} does not match scores of shape {tuple(s.shape)}"
            )
        if m.device != device:
            raise RuntimeError(f"{op}: default mask on {m.device} but scores on {device}")
        if m.dtype not in MASK_BITS:
            raise TypeError(f"{op}: unsupported default mask dtype {m.dtype}")


class _Candidates:
    """The candidate buffer of the window pass, as a source of the radix
    passes: keys (their own key, so no filter), state[CAND] of them."""

    counted = True

    def __init__(self, plan, capacity, device):
        self.n = capacity
        self.bits = torch.empty(capacity, dtype=plan.bits_dtype, device=device)

    def args(self):  # as table.Group's, handed directly
        return self.bits, self.bits, self.n, self.bits, 1, 0

    def key_consts(self, plan):
        return dict(_key_consts(plan, 1, False), TABLE=False)

    def block_count(self, col, size):
        return triton.cdiv(self.n, size)


def _window_pass(groups, plan, k, entries, cands, state, tracing):
    """window.bounds, window_kernel over every group, window.decide."""
    bounds = window.bounds(groups, plan, k, entries, functools.partial(_launch, tracing=tracing))
    blocks = [g.block_count(table.WINDOW, WINDOW_BLOCK) for g in groups]
    below = torch.zeros(sum(blocks), dtype=torch.int64, device=cands.bits.device)
    alive = torch.zeros_like(below)
    base = 0
    for g, count in zip(groups, blocks):
        _launch(
            kernels.window_kernel, (count,),
            *g.args(), bounds, cands.bits, cands.n, state, below, alive, base,
            BLOCK=WINDOW_BLOCK, tracing=tracing, **g.key_consts(plan),
        )
        base += count
    window.decide(state, below.sum(), alive.sum(), k, cands.n)


def _hist_block(plan):
    # 64-bit keys take half the block: Triton 3.6 spills the full one.
    return HIST_BLOCK // 2 if plan.wide else HIST_BLOCK


def _radix_passes(sources, plan, k, state, tracing, gate, from_k=True):
    """The radix passes over `sources` (groups of the list's tensors, or
    the candidates), each a histogram then a bucket select, narrowing state
    to the threshold T; every kernel launched with `gate`."""
    bases, nbins = [], 0
    for _, bits in plan.digits:
        bases.append(nbins)
        nbins += 1 << bits
    hist = torch.zeros(HIST_REPLICAS * nbins, dtype=torch.int64, device=state.device)
    block = _hist_block(plan)
    for p, (shift, bits) in enumerate(plan.digits):
        for src in sources:
            _launch(
                kernels.histogram_kernel, (max(1, min(src.block_count(table.HIST, block), MAX_PROGRAMS)),),
                *src.args(), hist, bases[p], nbins, state,
                SHIFT=shift, DIGIT_BITS=bits, FIRST=p == 0, BLOCK=block, REPLICAS=HIST_REPLICAS,
                GATE=gate, COUNTED=src.counted, tracing=tracing, **src.key_consts(plan),
            )
        _launch(
            kernels.select_bucket_kernel, (1,), hist, bases[p], nbins, state, k,
            DIGIT_BITS=bits, FROM_K=from_k and p == 0, CHUNK=min(SELECT_CHUNK, 1 << bits),
            REPLICAS=HIST_REPLICAS, GATE=gate, tracing=tracing,
        )


def l1_masks(scores, k, masks, among_alive, op="l1_mask", values=None, values_out=None, masks_out=None):
    """The masks of the k smallest-|scores| entries of the list, ranked
    together (see pruneext.ops for the semantics), written into masks_out
    where given; with values_out, each also gets mask * values written
    beside its mask."""
    _check(scores, masks, k, op)
    if masks_out is not None:
        check_mask_outputs(scores, masks, masks_out, op)
    values = check_values(scores, masks, values, values_out, op)
    if not scores:
        return []
    masks = list(masks) if masks else [None] * len(scores)
    values = values or [None] * len(scores)
    values_out = list(values_out) if values_out is not None else [None] * len(scores)
    masks_out = masks_out or [None] * len(scores)
    plan = KEY_PLANS[scores[0].dtype]
    device = scores[0].device
    tracing = any(is_fake(t) for t in scores)  # fake propagation / torch.compile tracing

    jobs, blocks, live, filters = _jobs(
        scores, k, op,
        lambda i, base: _Job(scores[i], masks[i], among_alive, base, values[i], values_out[i], masks_out[i]),
    )
    with _device_guard(device, tracing):
        groups, state, counts = _select(live, blocks, plan, k, device, tracing)
        ties_before = torch.cumsum(counts, 0) - counts if k > 0 and live else counts
        for g in groups:
            has_values = g.values_out is not None
            _launch(
                kernels.write_mask_kernel, (g.block_count(table.MASK, MASK_BLOCK),),
                *g.args(), g.out, state, ties_before, g.count_base,
                g.values if has_values else g.bits, g.values_out if has_values else g.out,
                HAS_PREV=g.has_prev, OUT_ONE=g.out_one, VALUES=has_values,
                VALUE_TYPE=g.jobs[0].value_type if has_values else tl.float32,
                BLOCK=MASK_BLOCK, tracing=tracing, **g.key_consts(plan),
            )
    _check_total(state, k, filters, tracing, op)
    return [job.result() for job in jobs]


def _jobs(scores, k, op, make):
    """The list's jobs (make(i, count_base): the _Job of scores[i]), the
    mask blocks they span, the non-empty ones, and whether a default mask
    filters; an impossible k is refused here where no mask filters."""
    jobs, blocks = [], 0
    for i in range(len(scores)):
        jobs.append(make(i, blocks))
        blocks += jobs[-1].blocks
    live = [j for j in jobs if j.n > 0]
    filters = any(j.filter for j in jobs)
    if not filters:  # every entry is eligible: refuse an impossible k now
        total = sum(j.n for j in jobs)
        if k > total:
            raise RuntimeError(f"{op}: k={k} exceeds the {total} entries that can be pruned")
    return jobs, blocks, live, filters


def _select(live, blocks, plan, k, device, tracing):
    """The selection over the non-empty jobs: (their groups, the state with
    T = state[PREFIX], and the keys == T of every mask block, counted only
    where k splits them)."""
    blocks_of = {table.HIST: _hist_block(plan), table.WINDOW: WINDOW_BLOCK, table.MASK: MASK_BLOCK}
    groups = table.groups(live, blocks_of, device, tracing)
    state = torch.zeros(kernels.STATE_SIZE, dtype=torch.int64, device=device)
    counts = torch.zeros(max(blocks, 1), dtype=torch.int64, device=device)
    if k > 0 and live:
        entries = sum(j.n for j in live)
        if entries >= WINDOW_MIN:
            cands = _Candidates(plan, window.capacity(entries), device)
            _window_pass(groups, plan, k, entries, cands, state, tracing)
            _radix_passes([cands], plan, k, state, tracing, kernels.ON_HIT, from_k=False)
            _radix_passes(groups, plan, k, state, tracing, kernels.ON_MISS)
        else:
            _radix_passes(groups, plan, k, state, tracing, kernels.ALWAYS)
        for g in groups:
            _launch(
                kernels.count_ties_kernel, (min(g.block_count(table.MASK, MASK_BLOCK), MAX_PROGRAMS),),
                *g.args(), state, counts, g.count_base,
                BLOCK=MASK_BLOCK, tracing=tracing, **g.key_consts(plan),
            )
    return groups, state, counts


def _check_total(state, k, filters, tracing, op):
    """Refuse k > the alive count where only the device knows that count
    (a default mask filters): the one host sync, after every launch, and
    only in eager mode (a traced graph cannot raise)."""
    if filters and k > 0 and not tracing:
        total = int(state[kernels.TOTAL])
        if k > total:
            raise RuntimeError(f"{op}: k={k} exceeds the {total} entries that can be pruned")


def l1_threshold(scores, masks, among_alive, k, op="l1_select_threshold"):
    """The selection without its write (csrc/ops.cpp, l1_select_threshold):
    int64 [T, below, equal, equal per tensor], the last counted only where k
    splits the keys == T (count_ties_kernel reads nothing otherwise)."""
    _check(scores, masks, k, op)
    device = scores[0].device if scores else torch.device("cpu")
    if not scores or k == 0:
        return torch.zeros(3 + len(scores), dtype=torch.int64, device=device)
    masks = list(masks) if masks else [None] * len(scores)
    plan = KEY_PLANS[scores[0].dtype]
    tracing = any(is_fake(t) for t in scores)
    # (no outputs: a job's mask output is never written, so it is not allocated)
    jobs, blocks, live, filters = _jobs(
        scores, k, op, lambda i, base: _Job(scores[i], masks[i], among_alive, base, allocate=False)
    )
    with _device_guard(device, tracing):
        _, state, counts = _select(live, blocks, plan, k, device, tracing)
        # each job's blocks are consecutive from its count_base: sums by a
        # cumulative sum read at the jobs' ends
        ends = torch.tensor([j.count_base + j.blocks for j in jobs], dtype=torch.int64, device=device)
        starts = torch.tensor([j.count_base for j in jobs], dtype=torch.int64, device=device)
        cum = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        found = torch.cat([state[[kernels.PREFIX, kernels.BELOW, kernels.IN_BIN]], cum[ends] - cum[starts]])
    _check_total(state, k, filters, tracing, op)
    return found
