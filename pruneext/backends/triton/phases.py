"""The selection's phase ops on Triton (semantics: csrc/ops.cpp), for
pruneext.select_loop: a digit histogram, per-tensor counts of keys equal to
a threshold, and the mask write with per-tensor tie budgets.

Eager functions, one launch per tensor and pass: the loop that calls them
(sharded pruning) waits on a collective after each pass anyway. Offsets are
int64. The mask write zeroes the first `budget` ties of a tensor in flat
order: per-block tie counts, their exclusive scan (a device cumsum, no host
sync) and a cumsum inside each block give every tie its rank.
"""
import contextlib
from typing import List, Optional

import torch
import triton
import triton.language as tl

from .kernels import add_block_histogram
from ..contract import KEY_PLANS, MASK_BITS
from .keys import magnitude_key

BLOCK = 1024
# The key values (prefix, threshold) and tie budgets are data, not sizes: a
# JIT specialisation on them (the constexpr 1, divisible by 16) buys nothing
# and would cost a compile per class of value in the middle of a run.


@triton.jit
def _keys(bits_ptr, prev_ptr, offs, n, ONE, FILTER: tl.constexpr, ABS_MASK: tl.constexpr,
          INF_BITS: tl.constexpr, WIDE: tl.constexpr):
    """Keys of the block and which of its entries are alive."""
    inside = offs < n
    key = magnitude_key(tl.load(bits_ptr + offs, mask=inside, other=0), ABS_MASK, INF_BITS, WIDE).to(tl.int64)
    live = inside
    if FILTER:
        live = live & (tl.load(prev_ptr + offs, mask=inside, other=0) == ONE)
    return key, live


@triton.jit(do_not_specialize=["prefix"])
def histogram_kernel(bits_ptr, prev_ptr, hist_ptr, n, prefix, ONE, SHIFT: tl.constexpr, BITS: tl.constexpr,
                     FILTER: tl.constexpr, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    key, live = _keys(bits_ptr, prev_ptr, offs, n, ONE, FILTER, ABS_MASK, INF_BITS, WIDE)
    take = live & ((key >> (SHIFT + BITS)) == prefix)
    digit = ((key >> SHIFT) & ((1 << BITS) - 1)).to(tl.int32)
    add_block_histogram(hist_ptr, digit, take, BLOCK, BITS)  # one atomic per crowded bin


@triton.jit(do_not_specialize=["threshold"])
def count_equal_kernel(bits_ptr, prev_ptr, out_ptr, n, threshold, ONE, FILTER: tl.constexpr,
                       ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """Per block: its alive keys equal to the threshold (one store a block)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    key, live = _keys(bits_ptr, prev_ptr, offs, n, ONE, FILTER, ABS_MASK, INF_BITS, WIDE)
    tl.store(out_ptr + pid, tl.sum((live & (key == threshold)).to(tl.int64), axis=0))


@triton.jit(do_not_specialize=["threshold", "budget"])
def write_kernel(bits_ptr, prev_ptr, out_ptr, before_ptr, n, threshold, budget, ONE, OUT_ONE,
                 FILTER: tl.constexpr, HAS_PREV: tl.constexpr, CUT: tl.constexpr, ABS_MASK: tl.constexpr,
                 INF_BITS: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """out = 0 for alive keys < T and for the ties ranked below `budget`,
    else the previous mask (or 1). Without CUT, every tie or none goes."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    key, live = _keys(bits_ptr, prev_ptr, offs, n, ONE, FILTER, ABS_MASK, INF_BITS, WIDE)
    tie = live & (key == threshold)
    if CUT:
        rank = tl.load(before_ptr + pid) + tl.cumsum(tie.to(tl.int64), axis=0) - tie.to(tl.int64)
        tie = tie & (rank < budget)
    else:
        tie = tie & (budget > 0)
    selected = (live & (key < threshold)) | tie
    inside = offs < n
    if HAS_PREV:
        keep = tl.load(prev_ptr + offs, mask=inside, other=0)
    else:
        keep = tl.full((BLOCK,), OUT_ONE, out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, tl.where(selected, tl.zeros_like(keep), keep).to(out_ptr.dtype.element_ty), mask=inside)


class _Tensor:
    """One tensor of the list as the kernels read it: integer views of its
    scores and default mask, and the key's constants."""

    def __init__(self, scores, prev, among_alive, op):
        if scores.dtype not in KEY_PLANS:
            raise TypeError(f"{op}: scores must be float32, float64, float16 or bfloat16, got {scores.dtype}")
        if prev is not None and prev.shape != scores.shape:
            raise RuntimeError(
                f"{op}: default mask of shape {tuple(prev.shape)} does not match scores of shape {tuple(scores.shape)}"
            )
        plan = KEY_PLANS[scores.dtype]
        self.shape, self.n = scores.shape, scores.numel()
        self.bits = scores.contiguous().view(plan.bits_dtype).reshape(-1)
        self.prev_dtype = None if prev is None else prev.dtype
        self.prev = None if prev is None else prev.contiguous().view(MASK_BITS[prev.dtype][0]).reshape(-1)
        self.filter = bool(among_alive) and prev is not None
        self.one = MASK_BITS[prev.dtype][1] if prev is not None else 1
        self.consts = dict(ABS_MASK=plan.abs_mask, INF_BITS=plan.inf_bits, WIDE=plan.wide)
        self.out_dtype = scores.dtype if prev is None else prev.dtype
        self.blocks = triton.cdiv(self.n, BLOCK)

    def mask_ptr(self):
        return self.prev if self.prev is not None else self.bits  # (unread without FILTER / HAS_PREV)


def _tensors(scores, default_masks, among_alive, op):
    """The checks of the native backends (csrc/l1_mask_common.h), with their
    messages, then each tensor as the kernels read it."""
    masks = list(default_masks) if default_masks else [None] * len(scores)
    if len(masks) != len(scores):
        raise RuntimeError(
            f"{op}: expected one default mask per score tensor (or none), got {len(masks)} masks for {len(scores)} tensors"
        )
    if len({s.dtype for s in scores}) > 1:
        raise TypeError(f"{op}: all score tensors must share one dtype, got {scores[0].dtype} and others")
    if len({t.device for t in scores} | {m.device for m in masks if m is not None}) > 1:
        raise RuntimeError(f"{op}: all tensors must be on one device")
    given = {m.dtype for m in masks if m is not None}
    for dtype in given:
        if dtype not in MASK_BITS:
            raise TypeError(f"{op}: unsupported default mask dtype {dtype}")
    if len(given) > 1:
        raise TypeError(f"{op}: all default masks must share one dtype, got {sorted(map(str, given))}")
    return [_Tensor(s, m, among_alive, op) for s, m in zip(scores, masks)]


def _device(scores):
    return scores[0].device if scores else torch.device("cpu")


NUM_WARPS = 4


def _launch(kernel, grid, *args, **meta):
    """kernel[grid](*args) on the device of its first tensor (Triton
    launches on the current device). scripts/triton_aot_check.py records
    these launches to compile each one for the GPU."""
    device = args[0].device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](*args, num_warps=NUM_WARPS, **meta)


def key_histogram(scores, default_masks, among_alive, shift, bits, prefix):
    op = "l1_key_histogram"
    if not 1 <= bits <= 16:
        raise RuntimeError(f"{op}: bits must be in [1, 16], got {bits}")
    if shift < 0:
        raise RuntimeError(f"{op}: shift must be non-negative, got {shift}")
    tensors = _tensors(scores, default_masks, among_alive, op)
    if scores:
        first_shift, first_bits = KEY_PLANS[scores[0].dtype].digits[0]
        if shift + bits > first_shift + first_bits:
            raise RuntimeError(
                f"{op}: shift + bits = {shift + bits} exceeds the {first_shift + first_bits} bits of the {scores[0].dtype} key"
            )
    hist = torch.zeros(1 << bits, dtype=torch.int64, device=_device(scores))
    for t in tensors:
        if t.n:
            _launch(histogram_kernel, (t.blocks,), t.bits, t.mask_ptr(), hist, t.n, prefix, t.one,
                    SHIFT=shift, BITS=bits, FILTER=t.filter, BLOCK=BLOCK, **t.consts)
    return hist


def count_equal(scores, default_masks, among_alive, threshold):
    tensors = _tensors(scores, default_masks, among_alive, "l1_count_equal")
    counts = []
    for t in tensors:
        per_block = torch.zeros(max(t.blocks, 1), dtype=torch.int64, device=_device(scores))
        if t.n:
            _launch(count_equal_kernel, (t.blocks,), t.bits, t.mask_ptr(), per_block, t.n, threshold, t.one,
                    FILTER=t.filter, BLOCK=BLOCK, **t.consts)
        counts.append(per_block.sum())
    return torch.stack(counts) if counts else torch.zeros(0, dtype=torch.int64, device=_device(scores))


def mask_write(scores, default_masks, among_alive, threshold, ties):
    op = "l1_mask_write"
    tensors = _tensors(scores, default_masks, among_alive, op)
    if len(ties) != len(tensors):
        raise RuntimeError(f"{op}: expected {len(tensors)} tie budgets, got {len(ties)}")
    for j, budget in enumerate(ties):
        if budget < 0:
            raise RuntimeError(f"{op}: tie budget {budget} of tensor {j} is negative")
    out = []
    for t, budget in zip(tensors, ties):
        bits_dtype, out_one = MASK_BITS[t.out_dtype]
        result = torch.empty(t.n, dtype=bits_dtype, device=t.bits.device)
        # a cut inside the tensor needs each tie's rank; 0 or all of them do not
        cut = 0 < budget < t.n
        before = result  # (unread without CUT)
        if cut and t.n:
            per_block = torch.zeros(t.blocks, dtype=torch.int64, device=t.bits.device)
            _launch(count_equal_kernel, (t.blocks,), t.bits, t.mask_ptr(), per_block, t.n, threshold, t.one,
                    FILTER=t.filter, BLOCK=BLOCK, **t.consts)
            before = torch.cumsum(per_block, 0) - per_block
        if t.n:
            _launch(write_kernel, (t.blocks,), t.bits, t.mask_ptr(), result, before, t.n, threshold,
                    min(budget, t.n), t.one, out_one, FILTER=t.filter, HAS_PREV=t.prev is not None, CUT=cut,
                    BLOCK=BLOCK, **t.consts)
        out.append(result.view(t.out_dtype).reshape(t.shape))
    return out


# ------------------------------------------------------------- as torch ops
# The phases as custom ops with fake implementations, as the native
# backends' are (csrc/ops.cpp; fakes in pruneext/backends/native.py), so a traced
# program sees their outputs' shapes and dtypes. Opaque to torch.compile:
# they launch per tensor and the loop that calls them waits on collectives.


@torch.library.custom_op("pruneext::l1_key_histogram_triton", mutates_args=())
def key_histogram_op(
    scores: List[torch.Tensor], default_masks: List[Optional[torch.Tensor]], among_alive: bool,
    shift: int, bits: int, prefix: int,
) -> torch.Tensor:
    return key_histogram(scores, default_masks, among_alive, shift, bits, prefix)


@key_histogram_op.register_fake
def _(scores, default_masks, among_alive, shift, bits, prefix):
    return scores[0].new_empty(1 << bits, dtype=torch.int64)


@torch.library.custom_op("pruneext::l1_count_equal_triton", mutates_args=())
def count_equal_op(
    scores: List[torch.Tensor], default_masks: List[Optional[torch.Tensor]], among_alive: bool, threshold: int
) -> torch.Tensor:
    return count_equal(scores, default_masks, among_alive, threshold)


@count_equal_op.register_fake
def _(scores, default_masks, among_alive, threshold):
    return scores[0].new_empty(len(scores), dtype=torch.int64)


@torch.library.custom_op("pruneext::l1_mask_write_triton", mutates_args=())
def mask_write_op(
    scores: List[torch.Tensor], default_masks: List[Optional[torch.Tensor]], among_alive: bool,
    threshold: int, ties: List[int],
) -> List[torch.Tensor]:
    return mask_write(scores, default_masks, among_alive, threshold, ties)


@mask_write_op.register_fake
def _(scores, default_masks, among_alive, threshold, ties):
    masks = default_masks or [None] * len(scores)
    return [s.new_empty(s.shape, dtype=s.dtype if m is None else m.dtype) for s, m in zip(scores, masks)]
