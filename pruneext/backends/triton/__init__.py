"""The `triton` backend: the mask ops as Triton kernels (radix select).

Serves CUDA tensors; under the Triton interpreter (TRITON_INTERPRET=1, read
when this package is imported) it serves CPU tensors too, which is how CI
tests it without a GPU. Importing it registers the torch ops
pruneext::l1_mask_triton, l1_mask_into_triton, l1_mask_global_triton and
l1_mask_global_into_triton, l1_mask_grouped_triton (and those of
the phases and of the bit-mask ops, phases.py and bits.py). Without an
importable Triton the package raises ImportError, which pruneext swallows,
and the backend is listed as unavailable with the reason.
"""
import torch

from .. import BitOps, Backend, Phases, mark_unavailable, register

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as e:  # ImportError, or a Triton that does not match this torch
    mark_unavailable("triton", f"triton is not importable ({type(e).__name__}: {e})")
    raise ImportError(f"pruneext.backends.triton: triton is not importable: {e}") from e

from . import bits, ops, phases  # noqa: E402  (registers the torch ops)
from ..contract import KEY_PLANS, MASK_BITS  # noqa: E402
from .select import INTERPRET  # noqa: E402

DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)

if torch.cuda.is_available() or INTERPRET:
    register(
        Backend(
            name="triton",
            devices=DEVICES,
            l1_mask=ops.l1_mask,
            l1_mask_global=ops.l1_mask_global,
            score_dtypes=frozenset(KEY_PLANS),
            mask_dtypes=frozenset(MASK_BITS),
            phases=Phases(
                phases.key_histogram_op, phases.count_equal_op, phases.mask_write_op, ops.select_threshold
            ),
            bits=BitOps(bits.bits_prune, bits.bits_apply),
            l1_mask_grouped=ops.l1_mask_grouped,
        )
    )
else:
    mark_unavailable(
        "triton", "no CUDA device is visible (TRITON_INTERPRET=1 runs the Triton kernels on CPU tensors)"
    )
