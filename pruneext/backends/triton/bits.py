"""The bit-mask ops of the lean training mode on Triton (semantics:
csrc/ops.cpp): l1_bits_prune and l1_bits_apply, in place, on masks packed to
one bit per entry (bit e & 7 of byte e >> 3 is entry e's).

MagnitudePruner re-masks every weight (and gradient) after each optimizer
step with apply, and prunes with prune when its schedule rises; both are
single passes over the weights, so a pass over the list is one launch, not
one per tensor: a list of more than one tensor is read through the device
table of table.py (one row per tensor: BITS the values' integer view, PREV
its mask bytes, OUT the values again, as they are written in place; MASK
the tensor's first block), a list of one is handed to the kernels directly.

A program owns BYTES whole mask bytes, 8 * BYTES entries seen as a
[BYTES, 8] tile (row: a byte, column: its bit), so no two programs write one
byte and the masks need no atomics. Per call:

    apply  apply_kernel: +0 into every entry whose bit is 0; the values are
           never read and alive entries never written (a byte of 8 alive
           entries costs only its own read).
    prune  [count_ties_kernel, then torch.cumsum: only when some tensor's
           budget is partial, 0 < budget < numel, the one case that needs
           the ties' ranks; the other tensors' tiles are not read there]
           prune_kernel: alive entries of key < T, and the ties ranked below
           the tensor's budget, get +0 and bit 0; one atomic per tile adds
           its count to its tensor's. Only changed bytes and pruned values
           are stored; the pad bits past numel are kept.

So apply is 1 launch, and prune 1 (no partial budget) or 2 plus a device
cumsum; lists of more than table.MAX_ROWS tensors take one launch per table
of that many. Ranks as in phases.py's write_kernel: per-tile tie counts, their
exclusive scan on the device (no host sync), a cumsum inside the tile. The
scan runs over the whole table; a tensor's own ranks are its tiles' scan less
that of its first tile. Offsets are int64. Nothing syncs with the host: the
table and the budgets travel in small non-blocking copies, the counts stay on
the device.
"""
from typing import List

import torch
import triton
import triton.language as tl

from ..contract import KEY_PLANS, check_bit_masks, check_tie_budgets
from . import table
from .kernels import _row_of
from .keys import magnitude_key
from .select import INTERPRET, _device_guard

# Mask bytes per program. The interpreter runs programs one after another
# (numpy-vectorised), so it gets large tiles; a GPU gets many small ones.
BYTES = 8192 if INTERPRET else 256
NUM_WARPS = 4


# ------------------------------------------------------------------ kernels


@triton.jit
def _tensor_of(values_ptr, mask_ptr, n, table_ptr, rows, steps, pid, count_base, TABLE: tl.constexpr):
    """Program pid's tensor: its values, mask bytes and entry count, the
    tile's place in it, the tensor's first tie-count slot and table row. A
    table's rows are table.py's (11 int64; MASK, column 7: the first block)."""
    if TABLE:
        row = _row_of(table_ptr, rows, steps, pid, 7)
        entry = table_ptr + row * 11
        values = tl.load(entry + 0).to(tl.pointer_type(values_ptr.dtype.element_ty))
        mask = tl.load(entry + 1).to(tl.pointer_type(mask_ptr.dtype.element_ty))
        return values, mask, tl.load(entry + 3), pid - tl.load(entry + 7), tl.load(entry + 8), row
    else:
        return values_ptr, mask_ptr, n, pid, count_base, 0


@triton.jit
def _tile(mask, local, n, BYTES: tl.constexpr):
    """The tile's bytes ([BYTES], int64), their mask bits (int32, 0 past
    the tensor), its entries ([BYTES, 8], int64) and which of them exist
    and are alive."""
    byte = local * BYTES + tl.arange(0, BYTES)
    bits = tl.load(mask + byte, mask=byte * 8 < n, other=0).to(tl.int32)
    entries = byte[:, None] * 8 + tl.arange(0, 8)[None, :]
    alive = (((bits[:, None] >> tl.arange(0, 8)[None, :]) & 1) != 0) & (entries < n)  # not the pad bits
    return byte, bits, entries, alive


@triton.jit
def _keys(values, entries, alive, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr):
    """int64 keys of the alive entries (dead ones are not read)."""
    raw = tl.load(values + entries, mask=alive, other=0)
    return magnitude_key(raw, ABS_MASK, INF_BITS, WIDE).to(tl.int64)


@triton.jit
def _tile_ranks(ties):
    """Each tie's rank among the tile's ties in flat order (byte, then bit):
    the exclusive cumsum of the bytes' counts, then within the byte."""
    t = ties.to(tl.int32)
    per_byte = tl.sum(t, axis=1)
    return (tl.cumsum(per_byte, axis=0) - per_byte)[:, None] + tl.cumsum(t, axis=1) - t


@triton.jit(do_not_specialize=["budget", "threshold"])  # data (see phases.py)
def count_ties_kernel(
    values_ptr, mask_ptr, n, table_ptr, rows, steps, budgets_ptr, budget, counts_ptr, count_base, threshold,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr, TABLE: tl.constexpr, BYTES: tl.constexpr,
):
    """counts[slot] = alive entries of the tile with key == threshold, for a
    tensor whose budget is partial; the other tensors' tiles read nothing
    (their slots stay 0, so they add nothing to the scan)."""
    pid = tl.program_id(0).to(tl.int64)
    values, mask, n, local, first_slot, row = _tensor_of(
        values_ptr, mask_ptr, n, table_ptr, rows, steps, pid, count_base, TABLE)
    if TABLE:
        budget = tl.load(budgets_ptr + row)
    if (budget > 0) & (budget < n):
        _, _, entries, alive = _tile(mask, local, n, BYTES)
        ties = alive & (_keys(values, entries, alive, ABS_MASK, INF_BITS, WIDE) == threshold)
        tl.store(counts_ptr + first_slot + local, tl.sum(tl.sum(ties.to(tl.int64), axis=1), axis=0))


@triton.jit(do_not_specialize=["budget", "threshold"])  # data (see phases.py)
def prune_kernel(
    values_ptr, mask_ptr, n, table_ptr, rows, steps, budgets_ptr, budget, ties_before_ptr, count_base,
    counts_ptr, threshold,
    ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr, TABLE: tl.constexpr, CUT: tl.constexpr,
    BYTES: tl.constexpr,
):
    """Prune the tile: alive entries of key < threshold, and the ties ranked
    below the tensor's budget (clamped to its size by the host), get +0 and
    bit 0; counts[row] += how many. Without CUT every budget is 0 or all
    of the tensor, so a tie goes iff its budget is not 0."""
    pid = tl.program_id(0).to(tl.int64)
    values, mask, n, local, first_slot, row = _tensor_of(
        values_ptr, mask_ptr, n, table_ptr, rows, steps, pid, count_base, TABLE)
    if TABLE:
        budget = tl.load(budgets_ptr + row)
    byte, bits, entries, alive = _tile(mask, local, n, BYTES)
    key = _keys(values, entries, alive, ABS_MASK, INF_BITS, WIDE)
    ties = alive & (key == threshold)
    if CUT:
        # the scan runs over the whole list: less its value at the tensor's
        # first tile, it counts the tensor's own ties before this tile
        before = tl.load(ties_before_ptr + first_slot + local) - tl.load(ties_before_ptr + first_slot)
        ties = ties & (before + _tile_ranks(ties) < budget)
    else:
        ties = ties & (budget > 0)
    gone = (alive & (key < threshold)) | ties
    tl.store(values + entries, tl.zeros([BYTES, 8], values_ptr.dtype.element_ty), mask=gone)
    gone_bits = tl.sum(gone.to(tl.int32) << tl.arange(0, 8)[None, :], axis=1)
    tl.store(mask + byte, (bits & ~gone_bits).to(tl.uint8), mask=gone_bits != 0)  # changed bytes only
    pruned = tl.sum(tl.sum(gone.to(tl.int64), axis=1), axis=0)
    tl.atomic_add(counts_ptr + row, pruned, mask=pruned > 0, sem="relaxed")


@triton.jit
def apply_kernel(values_ptr, mask_ptr, n, table_ptr, rows, steps, TABLE: tl.constexpr, BYTES: tl.constexpr):
    """+0 into every entry of the tile whose bit is 0; nothing is read but
    the mask bytes, and alive entries are not written."""
    pid = tl.program_id(0).to(tl.int64)
    values, mask, n, local, _, _ = _tensor_of(values_ptr, mask_ptr, n, table_ptr, rows, steps, pid, 0, TABLE)
    _, _, entries, alive = _tile(mask, local, n, BYTES)
    dead = (entries < n) & ~alive
    tl.store(values + entries, tl.zeros([BYTES, 8], values_ptr.dtype.element_ty), mask=dead)


# --------------------------------------------------------------------- host


def _launch(kernel, grid, *args, **meta):
    """kernel[grid](*args); scripts/triton_aot_check.py records these
    launches to compile each one for the GPU."""
    kernel[grid](*args, num_warps=NUM_WARPS, **meta)


def _check(tensors, bits, op, what):
    """The reference's checks and messages, for the dtypes the key serves."""
    check_bit_masks(tensors, bits, op, what, dtypes=KEY_PLANS)


class _Tensor:
    """One tensor and its mask as table.Group reads a tensor of the list:
    the values' integer view (read, and written in place: BITS and OUT),
    the mask bytes (PREV), and its first tie-count slot."""

    def __init__(self, values, bits, count_base):
        self.n = values.numel()
        self.plan = KEY_PLANS[values.dtype]
        self.bits = self.out = values.view(self.plan.bits_dtype).reshape(-1)
        self.prev = self.key_prev = bits
        self.out_one = 1  # (table.Group reads it; the bit ops have no mask value)
        self.count_base = count_base
        self.blocks = triton.cdiv(self.n, 8 * BYTES)

    def key_consts(self, plan):
        return dict(ABS_MASK=plan.abs_mask, INF_BITS=plan.inf_bits, WIDE=plan.wide)


def _groups(tensors, bits):
    """(first list position, table.Group) of each table of the list, in list
    order: every tensor is a row, empty ones too (they own no block, so no
    program finds them), and row r is list position first + r."""
    # table.Group fills every pass's column; these kernels read MASK's
    blocks = dict.fromkeys((table.HIST, table.WINDOW, table.MASK), 8 * BYTES)
    device = tensors[0].device
    out = []
    for first in range(0, len(tensors), table.MAX_ROWS):
        jobs, slots = [], 0
        for t, b in zip(tensors[first:first + table.MAX_ROWS], bits[first:first + table.MAX_ROWS]):
            jobs.append(_Tensor(t, b, slots))
            slots += jobs[-1].blocks
        out.append((first, table.Group(jobs, blocks, device, direct=False)))
    return out


def _budgets(group, ties, device):
    """(budgets tensor of a table's rows, budget of a direct tensor), each
    clamped to its tensor's size: ties[j] may be int64 max ("all")."""
    clamped = [min(t, job.n) for t, job in zip(ties, group.jobs)]
    if group.direct:
        return group.bits, clamped[0]  # (the tensor argument is not read)
    # From pageable memory a non-blocking copy is staged at once: no sync.
    return torch.tensor(clamped, dtype=torch.int64).to(device, non_blocking=True), 0


def _prune_group(group, threshold, ties, counts):
    """The prune of one table (or one tensor), with its tensors' `ties`:
    counts[row] += the row's pruned entries."""
    plan = group.jobs[0].plan
    meta = dict(group.key_consts(plan), BYTES=BYTES)
    grid = (group.block_count(table.MASK, 8 * BYTES),)
    device = counts.device
    budgets, budget = _budgets(group, ties, device)
    cut = any(0 < t < job.n for t, job in zip(ties, group.jobs))
    ties_before = counts  # (unread without CUT)
    if cut:
        per_tile = torch.zeros(grid[0], dtype=torch.int64, device=device)
        _launch(count_ties_kernel, grid, *group.args(), budgets, budget, per_tile, group.count_base, threshold,
                **meta)
        ties_before = torch.cumsum(per_tile, 0) - per_tile
    _launch(prune_kernel, grid, *group.args(), budgets, budget, ties_before, group.count_base, counts,
            threshold, CUT=cut, **meta)


def _prune(weights, bits, threshold, ties):
    op = "l1_bits_prune"
    _check(weights, bits, op, "weights")
    check_tie_budgets(weights, ties, op)
    if not weights:
        return torch.zeros(0, dtype=torch.int64)
    device = weights[0].device
    counts = torch.zeros(len(weights), dtype=torch.int64, device=device)
    with _device_guard(device, False):
        for first, group in _groups(weights, bits):
            if group.n:
                _prune_group(group, threshold, ties[first:first + len(group.jobs)], counts[first:])
    return counts


def _apply(tensors, bits):
    _check(tensors, bits, "l1_bits_apply", "tensors")
    if not tensors:
        return
    with _device_guard(tensors[0].device, False):
        for _, group in _groups(tensors, bits):
            if group.n:
                _launch(apply_kernel, (group.block_count(table.MASK, 8 * BYTES),), *group.args(),
                        TABLE=not group.direct, BYTES=BYTES)


# ------------------------------------------------------------- as torch ops
# Custom ops with fake implementations, as the native backends' are
# (csrc/ops.cpp; fakes in pruneext/backends/native.py), so a traced program sees
# what they write and return. Opaque to torch.compile: the pruner runs them
# eagerly, between optimizer steps. cudagraph_unsafe, as the native ops: a
# list's table (and budgets) is uploaded by each call, which a graph's
# replays would not redo.
_TAGS = (torch.Tag.cudagraph_unsafe,)


@torch.library.custom_op("pruneext::l1_bits_prune_triton", mutates_args=("weights", "bits"), tags=_TAGS)
def bits_prune(weights: List[torch.Tensor], bits: List[torch.Tensor], threshold: int, ties: List[int]) -> torch.Tensor:
    """pruneext's l1_bits_prune on the Triton kernels."""
    return _prune(list(weights), list(bits), threshold, list(ties))


@bits_prune.register_fake
def _(weights, bits, threshold, ties):
    _check(weights, bits, "l1_bits_prune", "weights")
    check_tie_budgets(weights, ties, "l1_bits_prune")
    if not weights:
        return torch.empty(0, dtype=torch.int64)
    return weights[0].new_empty(len(weights), dtype=torch.int64)


@torch.library.custom_op("pruneext::l1_bits_apply_triton", mutates_args=("tensors",), tags=_TAGS)
def bits_apply(tensors: List[torch.Tensor], bits: List[torch.Tensor]) -> None:
    """pruneext's l1_bits_apply on the Triton kernels."""
    _apply(list(tensors), list(bits))


@bits_apply.register_fake
def _(tensors, bits):
    _check(tensors, bits, "l1_bits_apply", "tensors")
