"""The grouped select (l1_mask_grouped, csrc/ops.cpp: the row and N:M
scopes) as Triton kernels, one launch for all groups.

In group g, k_g - dead_g of its alive entries are pruned, those of smallest
key, ties to the lowest index (dead_g: the entries a filtering default mask
already pruned; they keep their mask value). Two kernels, by group size:

* small_groups_kernel (groups of at most SMALL_GROUP entries, N:M): a tile
  of BLOCK_G groups x BLOCK_M lanes; an entry's rank is the number of alive
  entries of its group before it (smaller key, or equal key at a lower
  index), and it is pruned when that rank is below the group's budget. No
  threshold, one read and one write.
* row_groups_kernel (larger groups, the rows of a weight): one program per
  group runs the radix select one key bit at a time over the group's keys
  (the group stays in cache), then writes the group with its ties counted
  in index order by a running cumsum.
"""
import contextlib

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from ..contract import KEY_PLANS, MASK_BITS, check_default_mask, check_groups
from .keys import magnitude_key

SMALL_GROUP = 32  # the most entries a group of small_groups_kernel has
SMALL_TILE = 4096  # BLOCK_G * BLOCK_M * BLOCK_M: the pairwise compare's tile
SMALL_BLOCK_G = 256  # at most this many groups a program (more spilled at 4 warps)
ROW_BLOCK = 1024  # entries per step of row_groups_kernel
NUM_WARPS = 4


@triton.jit
def _budget(k, gk_ptr, group, valid, size, HAS_GROUP_K: tl.constexpr):
    """k_g of each group (a tensor of them, or one), clamped to [0, size],
    int64 (csrc/ops.cpp)."""
    if HAS_GROUP_K:
        budget = tl.load(gk_ptr + group, mask=valid, other=0)
    else:
        budget = group * 0 + tl.cast(k, tl.int64)
    return tl.minimum(tl.maximum(budget, 0), size)


@triton.jit(do_not_specialize=["k"])
def small_groups_kernel(
    bits_ptr, prev_ptr, out_ptr, gk_ptr, groups, group_size, k,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr, ONE: tl.constexpr,
    FILTER: tl.constexpr, HAS_PREV: tl.constexpr, OUT_ONE: tl.constexpr, HAS_GROUP_K: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)
    lane = tl.arange(0, BLOCK_M)
    size = tl.cast(group_size, tl.int64)
    in_group = group < tl.cast(groups, tl.int64)
    valid = in_group[:, None] & (lane[None, :] < size)
    offset = group[:, None] * size + lane[None, :]
    key = magnitude_key(tl.load(bits_ptr + offset, mask=valid, other=0), ABS_MASK, INF_BITS, WIDE)
    if HAS_PREV:
        prev = tl.load(prev_ptr + offset, mask=valid, other=0)
    if FILTER:
        alive = valid & (prev == ONE)
    else:
        alive = valid
    budget = _budget(k, gk_ptr, group, in_group, size, HAS_GROUP_K)
    budget -= tl.sum((valid & ~alive).to(tl.int64), axis=1)
    ki = key[:, :, None]
    kj = key[:, None, :]
    before = alive[:, None, :] & ((kj < ki) | ((kj == ki) & (lane[None, None, :] < lane[None, :, None])))
    rank = tl.sum(before.to(tl.int64), axis=2)
    selected = alive & (rank < budget[:, None])
    if HAS_PREV:
        out = tl.where(selected, 0, prev)
    else:
        out = tl.where(selected, 0, OUT_ONE)
    tl.store(out_ptr + offset, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["k"])
def row_groups_kernel(
    bits_ptr, prev_ptr, out_ptr, gk_ptr, group_size, k,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr, ONE: tl.constexpr,
    FILTER: tl.constexpr, HAS_PREV: tl.constexpr, OUT_ONE: tl.constexpr, HAS_GROUP_K: tl.constexpr,
    KEY_BITS: tl.constexpr, BLOCK: tl.constexpr,
):
    group = tl.program_id(0).to(tl.int64)
    size = tl.cast(group_size, tl.int64)
    base = group * size
    lanes = tl.arange(0, BLOCK)
    zero = tl.sum(tl.zeros([BLOCK], tl.int64), axis=0)
    rank = _budget(k, gk_ptr, group, group >= 0, size, HAS_GROUP_K)
    if FILTER:
        for start in range(0, size, BLOCK):
            idx = start + lanes
            valid = idx < size
            prev = tl.load(prev_ptr + base + idx, mask=valid, other=0)
            rank -= tl.sum((valid & (prev != ONE)).to(tl.int64), axis=0)
    budget = rank
    # the radix select of the rank-th smallest alive key, one bit a pass
    prefix = zero
    for i in range(0, KEY_BITS):
        bit = KEY_BITS - 1 - i
        zeros = zero
        for start in range(0, size, BLOCK):
            idx = start + lanes
            valid = idx < size
            key = magnitude_key(tl.load(bits_ptr + base + idx, mask=valid, other=0), ABS_MASK, INF_BITS, WIDE)
            take = valid & ((key.to(tl.int64) >> (bit + 1)) == (prefix >> (bit + 1)))
            take &= ((key.to(tl.int64) >> bit) & 1) == 0
            if FILTER:
                prev = tl.load(prev_ptr + base + idx, mask=valid, other=0)
                take &= prev == ONE
            zeros += tl.sum(take.to(tl.int64), axis=0)
        up = rank > zeros
        rank = tl.where(up, rank - zeros, rank)
        prefix = tl.where(up, prefix | (tl.cast(1, tl.int64) << bit), prefix)
    # prefix: the threshold key T; rank: how many entries equal to T go
    ties = zero
    for start in range(0, size, BLOCK):
        idx = start + lanes
        valid = idx < size
        key = magnitude_key(tl.load(bits_ptr + base + idx, mask=valid, other=0), ABS_MASK, INF_BITS, WIDE)
        key = key.to(tl.int64)
        if HAS_PREV:
            prev = tl.load(prev_ptr + base + idx, mask=valid, other=0)
        if FILTER:
            alive = valid & (prev == ONE)
        else:
            alive = valid
        equal = alive & (key == prefix)
        taken = ties + tl.cumsum(equal.to(tl.int64), axis=0)
        selected = alive & ((key < prefix) | (equal & (taken <= rank))) & (budget > 0)
        ties += tl.sum(equal.to(tl.int64), axis=0)
        if HAS_PREV:
            out = tl.where(selected, 0, prev)
        else:
            out = tl.where(selected, 0, OUT_ONE)
        tl.store(out_ptr + base + idx, out.to(out_ptr.dtype.element_ty), mask=valid)


def _launch(kernel, grid, *args, tracing=False, interpret=False, **meta):
    if interpret:
        if not tracing:
            kernel[grid](*args, num_warps=NUM_WARPS, **meta)
        return
    wrap_triton(kernel)[grid](*args, num_warps=NUM_WARPS, **meta)


def l1_mask_grouped(scores, group_size, k, default_mask=None, among_alive=False, group_k=None, interpret=False):
    """The op's host side: checks (contract.py, the native messages),
    integer views, one launch."""
    if scores.dtype not in KEY_PLANS:
        raise TypeError(f"l1_mask_grouped: scores must be float32, float64, float16 or bfloat16, got {scores.dtype}")
    check_default_mask(scores, default_mask)
    if default_mask is not None and default_mask.dtype not in MASK_BITS:
        raise TypeError(f"l1_mask_grouped: unsupported default mask dtype {default_mask.dtype}")
    groups = check_groups(scores, group_size, k, group_k)
    out_dtype = scores.dtype if default_mask is None else default_mask.dtype
    out_bits, out_one = MASK_BITS[out_dtype]
    out = torch.empty(scores.shape, dtype=out_bits, device=scores.device)
    if groups == 0:
        return out.view(out_dtype)
    tracing = is_fake(scores)
    plan = KEY_PLANS[scores.dtype]
    bits = scores.contiguous().view(plan.bits_dtype)
    prev = None if default_mask is None else default_mask.contiguous().view(MASK_BITS[default_mask.dtype][0])
    filter = bool(among_alive) and prev is not None
    consts = dict(
        ABS_MASK=plan.abs_mask, INF_BITS=plan.inf_bits, WIDE=plan.wide,
        ONE=MASK_BITS[default_mask.dtype][1] if filter else 1, FILTER=filter, HAS_PREV=prev is not None,
        OUT_ONE=out_one, HAS_GROUP_K=group_k is not None,
    )
    # without a default mask or group_k, the scores stand in for pointers never read
    prev_arg = bits if prev is None else prev
    gk_arg = bits if group_k is None else group_k.contiguous()
    on_gpu = scores.device.type == "cuda" and not tracing
    with torch.cuda.device(scores.device) if on_gpu else contextlib.nullcontext():
        if group_size <= SMALL_GROUP:
            block_m = triton.next_power_of_2(group_size)
            block_g = max(1, min(SMALL_BLOCK_G, SMALL_TILE // (block_m * block_m)))
            grid = (triton.cdiv(groups, block_g),)
            _launch(small_groups_kernel, grid, bits, prev_arg, out, gk_arg, groups, group_size, int(k),
                    tracing=tracing, interpret=interpret, BLOCK_G=block_g, BLOCK_M=block_m, **consts)
        else:
            _launch(row_groups_kernel, (groups,), bits, prev_arg, out, gk_arg, group_size, int(k),
                    tracing=tracing, interpret=interpret, KEY_BITS=plan.key_bits, BLOCK=ROW_BLOCK, **consts)
    return out.view(out_dtype)
