"""The magnitude key on the device, as csrc/magnitude_key.h has it.

The host side (each score dtype's integer view and key constants, each mask
dtype's integer view and bits of 1) is the backends' contract
(pruneext/backends/contract.py: KEY_PLANS, MASK_BITS); here are only what
the kernels need beyond it: `magnitude_key`, inlined into every kernel, and
the kernels' float type of each values dtype.
"""
import torch
import triton
import triton.language as tl

# values dtype -> the kernels' float type (the mask ops' values_out)
VALUE_TYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


@triton.jit
def magnitude_key(bits, ABS_MASK: tl.constexpr, INF_BITS: tl.constexpr, WIDE: tl.constexpr):
    """Key of raw float bits: |x| as an ordered integer, every NaN above +inf."""
    if WIDE:
        key = bits.to(tl.int64) & ABS_MASK
    else:
        key = bits.to(tl.int32) & ABS_MASK  # int16 bits sign-extend, then masked
    return tl.where(key > INF_BITS, ABS_MASK, key)
