"""What every backend agrees on: the Python twin of csrc's shared headers.

    magnitude_key.h   -> KeyPlan, KEY_PLANS, KEY_BITS, magnitude_key, radix_digits
    l1_mask_common.h  -> MASK_BITS, the dtype sets, check_default_mask,
                         check_values, check_mask_outputs, mask_outputs
    l1_group_common.h -> check_groups
    l1_bits_common.h  -> pack_bits, unpack_bits, check_bit_masks, check_tie_budgets

Each piece exists here once. The backends (reference, native, triton/) and
the selection driver take them from here and from nowhere else, so the
oracle (reference.py) stays only an oracle: a wrong check or key here is
wrong for every backend alike, and a wrong one in a backend is caught by the
oracle. This module imports no backend.
"""
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import is_fake

# ----------------------------------------------------------- magnitude key
# magnitude_key.h: clearing the sign bit of an IEEE float leaves bits that
# order like |x| (-0.0 ties +0.0); every NaN maps to the all-ones key, above
# +inf, so NaN is the largest magnitude and all NaNs tie.

FIRST_DIGIT_BITS = 12  # RadixPlan::kFirstDigitBits of keys wider than 16 bits
DIGIT_BITS = 11  # RadixPlan::kDigitBits: every later digit


def radix_digits(key_bits):
    """(shift, bits) of each radix pass, most significant first: 16-bit keys
    in one pass, wider keys in a 12-bit digit, then 11-bit digits (the
    RadixPlan of csrc/magnitude_key.h)."""
    first = key_bits if key_bits <= 16 else FIRST_DIGIT_BITS
    shift = key_bits - first
    digits = [(shift, first)]
    while shift > 0:
        bits = min(DIGIT_BITS, shift)
        shift -= bits
        digits.append((shift, bits))
    return digits


@dataclass(frozen=True)
class KeyPlan:
    """One score dtype's KeyTraits and RadixPlan (magnitude_key.h)."""

    bits_dtype: torch.dtype  # integer view of the scores, same width
    abs_mask: int  # clears the sign bit; also the key of every NaN
    inf_bits: int  # key of +inf; anything above is a NaN
    wide: bool  # 64-bit keys (float64); else the key fits an int32
    digits: tuple  # radix passes, most significant first: (shift, bits)

    @property
    def key_bits(self):
        """Significant bits of the key (kKeyBits): the width less the sign."""
        return torch.iinfo(self.bits_dtype).bits - 1


def _plan(bits_dtype, inf_bits):
    width = torch.iinfo(bits_dtype).bits
    return KeyPlan(bits_dtype, (1 << (width - 1)) - 1, inf_bits, width == 64, tuple(radix_digits(width - 1)))


# The score dtypes the kernels rank (Float32Key, Float64Key, Float16Key, BFloat16Key)
KEY_PLANS = {
    torch.float32: _plan(torch.int32, 0x7F800000),
    torch.float64: _plan(torch.int64, 0x7FF0000000000000),
    torch.float16: _plan(torch.int16, 0x7C00),
    torch.bfloat16: _plan(torch.int16, 0x7F80),
}

# bits of the magnitude key of each score dtype the phases rank
KEY_BITS = {dtype: plan.key_bits for dtype, plan in KEY_PLANS.items()}

_INT64_MIN = torch.iinfo(torch.int64).min


def magnitude_key(scores):
    """int64 keys, flat in row-major order, that order like |scores|: the
    float key above for float scores; |x| for integer scores."""
    flat = scores.reshape(-1)
    plan = KEY_PLANS.get(scores.dtype)
    if plan is not None:
        key = flat.contiguous().view(plan.bits_dtype).to(torch.int64) & plan.abs_mask
        return torch.where(key > plan.inf_bits, torch.full_like(key, plan.abs_mask), key)
    if scores.dtype.is_floating_point or scores.dtype.is_complex or scores.dtype == torch.bool:
        raise TypeError(f"L1 pruning needs real float or integer scores, got {scores.dtype}")
    if scores.dtype == torch.int64:
        # |x| as unsigned bits (abs of the most negative value wraps onto 2^63's
        # bits), top bit flipped so that signed order is the unsigned order
        return flat.abs() ^ _INT64_MIN
    return flat.to(torch.int64).abs()


# ------------------------------------------------------------------ dtypes

KERNEL_SCORE_DTYPES = frozenset(KEY_PLANS)

# Integer scores reach the kernels as the float dtype that holds every one
# of their magnitudes exactly, so ranks and ties are the integers' own (a
# temporary copy of the scores; see pruneext.ops). 64-bit integers are exact
# in float64 only up to 2^53 in magnitude: pruneext.ops checks the values.
INTEGER_SCORE_VIEWS = {
    torch.uint8: torch.float16,  # |x| <= 255 < 2^11
    torch.int8: torch.float16,
    torch.int16: torch.float32,  # |x| <= 2^15 < 2^24
    torch.int32: torch.float64,  # |x| <= 2^31 < 2^53
    torch.int64: torch.float64,  # exact while |x| <= 2^53
}

# mask dtype -> (integer view, bits of the value 1 in that view). The
# kernels read and write masks as raw integers of the mask's width and test
# "alive" as bits == the bits of 1 (l1_mask_common.h), so a mask value is
# never rounded or canonicalised, and every mask dtype of 1, 2, 4 or 8 bytes
# with a single encoding of 1 is served: the ones torch.nn.utils.prune
# accepts. (complex128, 16 bytes, is not.)
MASK_BITS = {
    torch.float32: (torch.int32, 0x3F800000),
    torch.float64: (torch.int64, 0x3FF0000000000000),
    torch.float16: (torch.int16, 0x3C00),
    torch.bfloat16: (torch.int16, 0x3F80),
    torch.bool: (torch.uint8, 1),
    torch.uint8: (torch.uint8, 1),
    torch.int8: (torch.uint8, 1),
    torch.int16: (torch.int16, 1),
    torch.int32: (torch.int32, 1),
    torch.int64: (torch.int64, 1),
    torch.float8_e4m3fn: (torch.uint8, 0x38),
    torch.float8_e5m2: (torch.uint8, 0x3C),
    torch.float8_e4m3fnuz: (torch.uint8, 0x40),
    torch.float8_e5m2fnuz: (torch.uint8, 0x40),
    torch.complex64: (torch.int64, 0x3F800000),  # (1.0, 0.0): real part low
}
KERNEL_MASK_DTYPES = frozenset(MASK_BITS)

# the dtypes of the optional masked-values outputs (values, values_out)
VALUE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------- mask op argument checks
# l1_mask_common.h's checks, with its messages, for the Python backends.


def check_default_mask(scores, default_mask):
    if default_mask is not None and default_mask.shape != scores.shape:
        raise RuntimeError(
            f"l1_mask: default mask of shape {tuple(default_mask.shape)} does not match "
            f"scores of shape {tuple(scores.shape)}"
        )


def check_groups(scores, group_size, k, group_k):
    """l1_group_common.h's prepare_groups, with its messages: the groups of
    l1_mask_grouped (the row and N:M scopes). Returns their number."""
    op = "l1_mask_grouped"
    if group_size < 1:
        raise ValueError(f"{op}: group_size must be positive, got {group_size}")
    n = scores.numel()
    if n % group_size:
        last = scores.shape[-1] if scores.dim() else 1
        raise ValueError(
            f"{op}: {n} entries do not split into groups of {group_size} "
            f"(the last dimension, {last}, must be a multiple of it)"
        )
    if not 0 <= k <= group_size:
        raise ValueError(f"{op}: k={k} must be in [0, group_size={group_size}]")
    groups = n // group_size
    if group_k is not None:
        if group_k.dtype != torch.int64:
            raise TypeError(f"{op}: group_k must be int64, got {group_k.dtype}")
        if group_k.dim() != 1 or group_k.shape[0] != groups:
            raise ValueError(f"{op}: group_k of shape {list(group_k.shape)}, expected [{groups}] (one per group)")
        if group_k.device != scores.device:
            raise RuntimeError(f"{op}: group_k on {group_k.device} but scores on {scores.device}")
    return groups


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
    """The checks of the optional masked-values outputs (attach_values, with
    its errors): `values` (None: the scores) and `values_out` one per score
    tensor, or values_out None. Returns the values list (None where the call
    has no values_out)."""
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


def mask_outputs(scores, default_masks):
    """Empty masks as l1_mask_global returns them (the default mask's dtype,
    else the scores'), for its .into overload."""
    masks = default_masks or [None] * len(scores)
    return [torch.empty(s.shape, dtype=s.dtype if m is None else m.dtype, device=s.device) for s, m in zip(scores, masks)]


def check_mask_outputs(scores, masks, masks_out, op):
    """l1_mask_global.into's mask outputs (attach_masks, with its errors)."""
    if len(masks_out) != len(scores):
        raise RuntimeError(f"{op}: expected one mask output per score tensor, got {len(masks_out)} for {len(scores)} tensors")
    for s, m, o in zip(scores, masks or [None] * len(scores), masks_out):
        dtype = s.dtype if m is None else m.dtype
        if o.shape != s.shape:
            raise RuntimeError(f"{op}: mask output of shape {list(o.shape)} does not match scores of shape {list(s.shape)}")
        if o.dtype != dtype:
            raise TypeError(f"{op}: mask output of dtype {o.dtype}, expected {dtype} (the default mask's, else the scores')")
        if o.device != s.device:
            raise RuntimeError(f"{op}: mask output on {o.device} but scores on {s.device}")
        if not o.is_contiguous():
            raise RuntimeError(f"{op}: mask outputs must be contiguous (they are written in place)")


# ---------------------------------------------------------------- bit masks
# l1_bits_common.h: bit (e & 7) of byte (e >> 3) is entry e's; a mask of n
# entries has ceil(n / 8) bytes.

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
    """The bit-mask ops' argument checks (with l1_bits_common.h's errors);
    `dtypes`: the floating dtypes served (None: any)."""
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
