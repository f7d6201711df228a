"""The `torch` backend: the mask ops in plain PyTorch, on torch.topk.

Always available, any device, any real dtype. It is the oracle the kernels
are tested against, so it is written for clarity: it builds an int64 key
tensor and, for the global op, concatenates the list (the kernels must not).
It keeps the same rules as the kernels: the magnitude key of
csrc/magnitude_key.h (NaN largest, all NaNs tie, -0.0 ties +0.0) and ties
broken by the lowest flat index.
"""
import torch

from . import BitOps, Backend, Phases, register
from .contract import (
    check_bit_masks,
    check_default_mask,
    check_groups,
    check_tie_budgets,
    check_values,
    magnitude_key,
    pack_bits,
    unpack_bits,
)

_INT64_MAX = torch.iinfo(torch.int64).max
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _select(key, k, alive):
    """Bool tensor: the k alive entries of smallest key, ties lowest index."""
    if k == 0:
        return torch.zeros_like(key, dtype=torch.bool)
    ranked = key if alive is None else key.masked_fill(~alive, _INT64_MAX)
    n_alive = key.numel() if alive is None else int(alive.sum())
    if k > n_alive:
        raise RuntimeError(f"l1_mask: k={k} exceeds the {n_alive} entries that can be pruned")
    threshold = torch.topk(ranked, k, largest=False, sorted=False).values.max()
    below = ranked < threshold
    ties = ranked == threshold
    if alive is not None:
        ties &= alive
    remaining = k - below.sum()
    return below | (ties & (ties.cumsum(0) <= remaining))


def _alive(default_mask, among_alive):
    if among_alive and default_mask is not None:
        return default_mask.reshape(-1) == 1
    return None


def _apply(selected, scores, default_mask):
    if default_mask is None:
        out = torch.ones(scores.shape, dtype=scores.dtype, device=scores.device)
    else:
        out = default_mask.clone(memory_format=torch.contiguous_format)
    # 0 is all-zero bits in every mask dtype: fill an integer view of the
    # same width, which also serves dtypes masked_fill lacks (float8)
    bits = _INT_OF_WIDTH.get(out.element_size())
    target = out if bits is None or out.dtype == torch.bool else out.view(bits)
    target.masked_fill_(selected.view(out.shape), 0)
    return out


def _meta_result(scores, default_mask):
    # meta tensors have no values: only the result's shape and dtype exist
    dtype = scores.dtype if default_mask is None else default_mask.dtype
    return torch.empty(scores.shape, dtype=dtype, device="meta")


def _write_values(masks, values, values_out):
    """values_out = torch's apply_mask product, mask.to(values.dtype) * values."""
    for m, v, o in zip(masks, values, values_out):
        o.copy_(m.to(v.dtype) * v)


def l1_mask(scores, k, default_mask=None, among_alive=False, values=None, values_out=None):
    check_default_mask(scores, default_mask)
    values = check_values([scores], [default_mask], None if values is None else [values],
                          None if values_out is None else [values_out], "l1_mask")
    if scores.is_meta:
        return _meta_result(scores, default_mask)
    selected = _select(magnitude_key(scores), k, _alive(default_mask, among_alive))
    mask = _apply(selected, scores, default_mask)
    if values is not None:
        _write_values([mask], values, [values_out])
    return mask


def l1_mask_global(scores, k, default_masks, among_alive=False, values=None, values_out=None):
    if not default_masks:
        default_masks = [None] * len(scores)
    values = check_values(scores, default_masks, values, values_out, "l1_mask_global")
    if not scores:
        if k != 0:
            raise RuntimeError(f"l1_mask_global: k={k} but there is nothing to prune")
        return []
    for s, m in zip(scores, default_masks):
        check_default_mask(s, m)
    if scores[0].is_meta:
        return [_meta_result(s, m) for s, m in zip(scores, default_masks)]
    key = torch.cat([magnitude_key(s) for s in scores])
    alive = None
    if among_alive and any(m is not None for m in default_masks):
        alive = torch.cat(
            [
                torch.ones(s.numel(), dtype=torch.bool, device=s.device) if m is None else _alive(m, True)
                for s, m in zip(scores, default_masks)
            ]
        )
    selected = _select(key, k, alive).split([s.numel() for s in scores])
    masks = [_apply(sel, s, m) for sel, s, m in zip(selected, scores, default_masks)]
    if values is not None:
        _write_values(masks, values, values_out)
    return masks


def l1_mask_grouped(scores, group_size, k, default_mask=None, among_alive=False, group_k=None):
    """The select within groups of group_size consecutive entries (csrc/ops.cpp):
    in group g, the k_g - (entries already pruned) alive entries of smallest
    key, ties to the lowest index. Ranks by a stable sort of each group."""
    check_default_mask(scores, default_mask)
    groups = check_groups(scores, group_size, k, group_k)
    if scores.is_meta:
        return _meta_result(scores, default_mask)
    key = magnitude_key(scores).view(groups, group_size)
    alive = _alive(default_mask, among_alive)
    alive = torch.ones_like(key, dtype=torch.bool) if alive is None else alive.view(groups, group_size)
    budget = torch.full((groups,), k, dtype=torch.int64, device=key.device) if group_k is None else group_k
    budget = budget.clamp(0, group_size) - (~alive).sum(1)
    # each group's alive entries by key, then the dead: two stable sorts,
    # so ties go to the lowest index (any int64 key, integer scores too)
    order = torch.sort(key, dim=1, stable=True).indices
    order = order.gather(1, torch.sort((~alive).gather(1, order).to(torch.int8), dim=1, stable=True).indices)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(group_size, device=key.device).expand_as(order))
    selected = alive & (rank < budget[:, None])
    return _apply(selected.view(-1), scores, default_mask)


# ------------------------------------------------------------------ phases
# The selection's passes as separate ops (csrc/ops.cpp documents them), for
# the driver loop of pruneext/select_loop.py.


def _alive_keys(scores, default_masks, among_alive):
    """(key, alive or None) of each tensor of the list, flat."""
    masks = default_masks or [None] * len(scores)
    return [(magnitude_key(s), _alive(m, among_alive)) for s, m in zip(scores, masks)]


def _device_of(scores):
    return scores[0].device if scores else torch.device("cpu")


def key_histogram(scores, default_masks, among_alive, shift, bits, prefix):
    hist = torch.zeros(1 << bits, dtype=torch.int64, device=_device_of(scores))
    if scores and scores[0].is_meta:
        return hist
    for key, alive in _alive_keys(scores, default_masks, among_alive):
        take = (key >> (shift + bits)) == prefix
        if alive is not None:
            take &= alive
        hist += torch.bincount((key[take] >> shift) & ((1 << bits) - 1), minlength=1 << bits)
    return hist


def _equal(key, alive, threshold):
    eq = key == threshold
    return eq if alive is None else eq & alive


def count_equal(scores, default_masks, among_alive, threshold):
    if scores and scores[0].is_meta:
        return torch.zeros(len(scores), dtype=torch.int64, device="meta")
    counts = [int(_equal(key, alive, threshold).sum()) for key, alive in _alive_keys(scores, default_masks, among_alive)]
    return torch.tensor(counts, dtype=torch.int64, device=_device_of(scores))


def mask_write(scores, default_masks, among_alive, threshold, ties):
    masks = default_masks or [None] * len(scores)
    if len(ties) != len(scores):
        raise RuntimeError(f"l1_mask_write: expected {len(scores)} tie budgets, got {len(ties)}")
    for s, m in zip(scores, masks):
        check_default_mask(s, m)
    if scores and scores[0].is_meta:
        return [_meta_result(s, m) for s, m in zip(scores, masks)]
    out = []
    for (key, alive), s, m, budget in zip(_alive_keys(scores, masks, among_alive), scores, masks, ties):
        if budget < 0:
            raise RuntimeError(f"l1_mask_write: tie budget {budget} is negative")
        eq = _equal(key, alive, threshold)
        below = key < threshold
        if alive is not None:
            below &= alive
        out.append(_apply(below | (eq & (eq.cumsum(0) <= budget)), s, m))
    return out



# ---------------------------------------------------------------- bit masks
# The lean training ops on masks packed to bits (csrc/ops.cpp documents
# them; the packing and the checks are contract.py's).


def bits_prune(weights, bits, threshold, ties):
    check_bit_masks(weights, bits, "l1_bits_prune", "weights")
    check_tie_budgets(weights, ties, "l1_bits_prune")
    device = weights[0].device if weights else torch.device("cpu")
    if weights and weights[0].is_meta:
        return torch.empty(len(weights), dtype=torch.int64, device=device)
    counts = []
    for w, b, budget in zip(weights, bits, ties):
        every = unpack_bits(b, b.numel() * 8)  # the pad bits stay as they are
        alive = every[: w.numel()]
        key = magnitude_key(w)
        eq = alive & (key == threshold)
        pruned = (alive & (key < threshold)) | (eq & (eq.cumsum(0) <= budget))
        w.view(-1).masked_fill_(pruned, 0)
        every[: w.numel()] = alive & ~pruned
        b.copy_(pack_bits(every))
        counts.append(int(pruned.sum()))
    return torch.tensor(counts, dtype=torch.int64, device=device)


def bits_apply(tensors, bits):
    check_bit_masks(tensors, bits, "l1_bits_apply", "tensors")
    if tensors and tensors[0].is_meta:
        return
    for t, b in zip(tensors, bits):
        t.view(-1).masked_fill_(~unpack_bits(b, t.numel()), 0)


def select_threshold(scores, default_masks, among_alive, k):
    """[T, below, equal, equal per tensor...] of the k-th smallest alive key
    (csrc/ops.cpp)."""
    device = _device_of(scores)
    if scores and scores[0].is_meta:
        return torch.zeros(3 + len(scores), dtype=torch.int64, device="meta")
    if k < 0:
        raise RuntimeError(f"l1_select_threshold: k must be non-negative, got {k}")
    if k == 0:
        return torch.zeros(3 + len(scores), dtype=torch.int64, device=device)
    parts = [key if alive is None else key[alive] for key, alive in _alive_keys(scores, default_masks, among_alive)]
    keys = torch.cat(parts)
    if k > keys.numel():
        raise RuntimeError(f"l1_select_threshold: k={k} exceeds the {keys.numel()} entries that can be pruned")
    threshold = int(torch.kthvalue(keys, k).values)
    found = [threshold, int((keys < threshold).sum()), int((keys == threshold).sum())]
    split = 0 < k - found[1] < found[2]  # only then the per-tensor counts (csrc/ops.cpp)
    found += [int((part == threshold).sum()) if split else 0 for part in parts]
    return torch.tensor(found, dtype=torch.int64, device=device)


register(
    Backend(
        name="torch",
        devices=("cpu", "cuda", "mps", "xpu", "meta"),
        l1_mask=l1_mask,
        l1_mask_global=l1_mask_global,
        l1_mask_grouped=l1_mask_grouped,
        score_dtypes=None,
        mask_dtypes=None,
        phases=Phases(key_histogram, count_equal, mask_write, select_threshold),
        bits=BitOps(bits_prune, bits_apply),
    )
)
