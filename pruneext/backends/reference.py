"""The `torch` backend: the mask ops in plain PyTorch, on torch.topk.

Always available, any device, any real dtype. It is the oracle the kernels
are tested against, so it is written for clarity: it builds an int64 key
tensor and, for the global op, concatenates the list (the kernels must not).
It keeps the same rules as the kernels: the magnitude key of
csrc/magnitude_key.h (NaN largest, all NaNs tie, -0.0 ties +0.0) and ties
broken by the lowest flat index.
"""
import torch
from torch._subclasses.fake_tensor import is_fake

from . import BitOps, Backend, Phases, register

# dtype -> (integer view of the same width, bit pattern of +inf)
_FLOAT_BITS = {
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
    torch.float16: (torch.int16, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7F80),
}
_INT64_MAX = torch.iinfo(torch.int64).max
_INT64_MIN = torch.iinfo(torch.int64).min
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def magnitude_key(scores):
    """int64 keys, flat in row-major order, that order like |scores|."""
    flat = scores.reshape(-1)
    if scores.dtype in _FLOAT_BITS:
        int_dtype, inf_bits = _FLOAT_BITS[scores.dtype]
        width = torch.iinfo(int_dtype).bits
        abs_mask = (1 << (width - 1)) - 1
        key = flat.contiguous().view(int_dtype).to(torch.int64) & abs_mask
        return torch.where(key > inf_bits, torch.full_like(key, abs_mask), key)
    if scores.dtype.is_floating_point or scores.dtype.is_complex or scores.dtype == torch.bool:
        raise TypeError(f"L1 pruning needs real float or integer scores, got {scores.dtype}")
    if scores.dtype == torch.int64:
        # |x| as unsigned bits (abs of the most negative value wraps onto 2^63's
        # bits), top bit flipped so that signed order is the unsigned order
        return flat.abs() ^ _INT64_MIN
    return flat.to(torch.int64).abs()


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


def _check_mask(scores, default_mask):
    if default_mask is not None and default_mask.shape != scores.shape:
        raise RuntimeError(
            f"l1_mask: default mask of shape {tuple(default_mask.shape)} does not match "
            f"scores of shape {tuple(scores.shape)}"
        )


def _meta_result(scores, default_mask):
    # meta tensors have no values: only the result's shape and dtype exist
    dtype = scores.dtype if default_mask is None else default_mask.dtype
    return torch.empty(scores.shape, dtype=dtype, device="meta")


VALUE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _byte_range(t):
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _overlaps(a, b):
    """Whether two tensors may share memory (their byte ranges meet; meta
    and fake tensors have no memory to compare)."""
    if any(t.is_meta or is_fake(t) or t.numel() == 0 for t in (a, b)):
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
    return a0 < b1 and b0 < a1


def check_values(scores, masks, values, values_out, op):
    """The checks of the optional masked-values outputs (csrc/l1_mask_common.h's
    attach_values, with its errors), for the Python backends: `values` (None:
    the scores) and `values_out` one per score tensor, or values_out None.
    Returns the values list (None where the call has no values_out)."""
    if values_out is None:
        if values is not None:
            raise RuntimeError(f"{op}: values given without values_out (where would they go?)")
        return None
    if len(values_out) != len(scores):
        raise RuntimeError(f"{op}: expected one values_out per score tensor, got {len(values_out)} for {len(scores)} tensors")
    values = list(values) if values is not None else [None] * len(scores)
    if len(values) != len(scores):
        raise RuntimeError(
            f"{op}: expected one values tensor per score tensor (or none: the scores), got {len(values)} "
            f"for {len(scores)} tensors"
        )
    values = [s if v is None else v for s, v in zip(scores, values)]
    masks = masks or [None] * len(scores)
    for s, v, o, m in zip(scores, values, values_out, masks):
        if o is None:
            raise RuntimeError(f"{op}: values_out is None")
        if v.shape != s.shape:
            raise RuntimeError(f"{op}: values of shape {list(v.shape)} do not match scores of shape {list(s.shape)}")
        if v.device != s.device:
            raise RuntimeError(f"{op}: values on {v.device} but scores on {s.device}")
        if v.dtype not in VALUE_DTYPES:
            raise TypeError(f"{op}: values must be float32, float64, float16 or bfloat16, got {v.dtype}")
        if v.dtype != values[0].dtype:
            raise TypeError(f"{op}: all values must share one dtype, got {values[0].dtype} and {v.dtype}")
        if o.shape != v.shape:
            raise RuntimeError(f"{op}: values_out of shape {list(o.shape)} does not match values of shape {list(v.shape)}")
        if o.dtype != v.dtype:
            raise TypeError(f"{op}: values_out of dtype {o.dtype} does not match values of dtype {v.dtype}")
        if o.device != v.device:
            raise RuntimeError(f"{op}: values_out on {o.device} but values on {v.device}")
        if not o.is_contiguous():
            raise RuntimeError(f"{op}: values_out must be contiguous (it is written in place)")
        if any(t is not None and _overlaps(o, t) for t in (s, v, m)):
            raise RuntimeError(f"{op}: values_out shares memory with an input (scores, values or default mask)")
    given = [m for m in masks if m is not None]
    if given and given[0].dtype != values[0].dtype:
        raise TypeError(
            f"{op}: with values_out, the default masks must have values' dtype ({values[0].dtype}), got {given[0].dtype}"
        )
    return values


def _write_values(masks, values, values_out):
    """values_out = torch's apply_mask product, mask.to(values.dtype) * values."""
    for m, v, o in zip(masks, values, values_out):
        o.copy_(m.to(v.dtype) * v)


def l1_mask(scores, k, default_mask=None, among_alive=False, values=None, values_out=None):
    _check_mask(scores, default_mask)
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
        _check_mask(s, m)
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
        _check_mask(s, m)
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
# them): bit (e & 7) of byte (e >> 3) is entry e's.

_BIT_SHIFTS = {}


def unpack_bits(bits, numel):
    """The first `numel` bits of a uint8 bit mask, as a flat bool tensor."""
    shifts = _BIT_SHIFTS.get(bits.device)
    if shifts is None:
        shifts = _BIT_SHIFTS[bits.device] = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return ((bits.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:numel].bool()


def pack_bits(alive):
    """A flat bool tensor as a uint8 bit mask (pad bits 0)."""
    flat = alive.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8)).reshape(-1, 8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.int32, device=flat.device)
    return (flat.to(torch.int32) * weights).sum(1).to(torch.uint8)


def check_bit_masks(tensors, bits, op, what, dtypes=None):
    """The bit-mask ops' argument checks (csrc/l1_bits_common.h's, with the
    same errors), for the Python backends; `dtypes`: the floating dtypes
    served (None: any)."""
    if len(tensors) != len(bits):
        raise RuntimeError(f"{op}: expected one bit mask per tensor, got {len(bits)} masks for {len(tensors)} {what}")
    found = {t.dtype for t in tensors}
    if len(found) > 1 or any(not d.is_floating_point or (dtypes is not None and d not in dtypes) for d in found):
        served = "" if dtypes is None else f" ({', '.join(sorted(str(d).replace('torch.', '') for d in dtypes))})"
        raise TypeError(f"{op}: {what} must share one floating dtype{served}, got {sorted(map(str, found))}")
    for j, (t, b) in enumerate(zip(tensors, bits)):
        if b.dtype != torch.uint8:
            raise TypeError(f"{op}: bit masks must be uint8, got {b.dtype}")
        if t.device != tensors[0].device or b.device != t.device:
            raise RuntimeError(f"{op}: all tensors must be on one device")
        if not t.is_contiguous() or not b.is_contiguous():
            raise RuntimeError(f"{op}: {what}[{j}] and its bit mask must be contiguous (written in place)")
        if b.numel() != (t.numel() + 7) // 8:
            raise RuntimeError(f"{op}: bit mask {j} has {b.numel()} bytes, expected ceil({t.numel()} / 8)")


def check_tie_budgets(weights, ties, op):
    if len(ties) != len(weights):
        raise RuntimeError(f"{op}: expected {len(weights)} tie budgets, got {len(ties)}")
    for budget in ties:
        if budget < 0:
            raise RuntimeError(f"{op}: tie budget {budget} is negative")


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
        score_dtypes=None,
        mask_dtypes=None,
        phases=Phases(key_histogram, count_equal, mask_write, select_threshold),
        bits=BitOps(bits_prune, bits_apply),
    )
)
