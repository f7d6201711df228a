"""The magnitude key and the radix plan, as csrc/magnitude_key.h has them.

Host side: for each score dtype, the integer view the kernels read and the
constants of its key; for each mask dtype, the integer view and the bits of
1. The kernels compare and copy masks as raw integers, so a mask value is
never rounded or canonicalised (1.0 has one bit pattern in every format, so
`bits == ONE` is exactly `value == 1`).

Device side: `magnitude_key`, inlined into every kernel.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...select_loop import radix_digits



@dataclass(frozen=True)
class KeyPlan:
    bits_dtype: torch.dtype  # integer view of the scores, same width
    abs_mask: int  # clears the sign bit; also the key of every NaN
    inf_bits: int  # key of +inf; anything above is a NaN
    wide: bool  # 64-bit keys (float64); else the key fits an int32
    digits: tuple  # radix passes, most significant first: (shift, bits)


def _digits(key_bits):
    """RadixPlan of magnitude_key.h (the same plan the phase-op loop runs)."""
    return tuple(radix_digits(key_bits))


KEY_PLANS = {
    torch.float32: KeyPlan(torch.int32, 0x7FFFFFFF, 0x7F800000, False, _digits(31)),
    torch.float64: KeyPlan(torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, True, _digits(63)),
    torch.float16: KeyPlan(torch.int16, 0x7FFF, 0x7C00, False, _digits(15)),
    torch.bfloat16: KeyPlan(torch.int16, 0x7FFF, 0x7F80, False, _digits(15)),
}

# values dtype -> the kernels' float type (the mask ops' values_out)
VALUE_TYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}

# mask dtype -> (integer view, bits of the value 1 in that view)
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


@triton.jit
def magnitude_key(bits, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr):
    """Key of raw float bits: |x| as an ordered integer, every NaN above +inf."""
    if WIDE:
        key = bits.to(tl.int64) & ABS_MASK
    else:
        key = bits.to(tl.int32) & ABS_MASK  # int16 bits sign-extend, then masked
    return tl.where(key > INF_BITS, ABS_MASK, key)
