"""The compiled backends: load pruneext._C and register `cpu` and `cuda`.

Both are the same two operators, torch.ops.pruneext.l1_mask and
l1_mask_global; the PyTorch dispatcher runs the CPU or CUDA kernel by the
tensors' device. Importing never compiles: if _C cannot load, pruneext keeps
working on the torch backend and says why in a warning.
"""
import warnings

import torch

from . import BitOps, Backend, Phases, mark_unavailable, register
from .contract import mask_outputs

LOAD_ERROR = None
try:
    from .. import _C  # noqa: F401  (runs the TORCH_LIBRARY registrations)
except (ImportError, OSError) as e:
    LOAD_ERROR = f"{type(e).__name__}: {e}"
    warnings.warn(
        f"pruneext: compiled kernels not loaded ({LOAD_ERROR}); using the torch backend. "
        "Build them with `pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op, dispatch_key):
    """Whether torch.ops.pruneext.<op> has an implementation for the key."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pruneext::{op}", dispatch_key)


if LOAD_ERROR is None:

    # values_out (and the .into overload's masks) are written in place, as
    # their schemas say: the fakes only return what the op returns.
    @torch.library.register_fake("pruneext::l1_mask")
    def _l1_mask_fake(scores, k, default_mask=None, among_alive=False, values=None, values_out=None):
        dtype = default_mask.dtype if default_mask is not None else scores.dtype
        return scores.new_empty(scores.shape, dtype=dtype)

    @torch.library.register_fake("pruneext::l1_mask_global.into")
    def _l1_mask_global_into_fake(scores, k, default_masks, among_alive, masks, values=None, values_out=None):
        return None

    @torch.library.register_fake("pruneext::l1_mask_global")
    def _l1_mask_global_fake(scores, k, default_masks, among_alive=False):
        masks = default_masks or [None] * len(scores)
        return [
            s.new_empty(s.shape, dtype=m.dtype if m is not None else s.dtype)
            for s, m in zip(scores, masks)
        ]


    @torch.library.register_fake("pruneext::l1_mask_grouped")
    def _l1_mask_grouped_fake(scores, group_size, k, default_mask=None, among_alive=False, group_k=None):
        return _l1_mask_fake(scores, k, default_mask)

    @torch.library.register_fake("pruneext::l1_key_histogram")
    def _l1_key_histogram_fake(scores, default_masks, among_alive, shift, bits, prefix):
        device = scores[0].device if scores else "cpu"
        return torch.empty(1 << bits, dtype=torch.int64, device=device)

    @torch.library.register_fake("pruneext::l1_count_equal")
    def _l1_count_equal_fake(scores, default_masks, among_alive, threshold):
        device = scores[0].device if scores else "cpu"
        return torch.empty(len(scores), dtype=torch.int64, device=device)

    @torch.library.register_fake("pruneext::l1_mask_write")
    def _l1_mask_write_fake(scores, default_masks, among_alive, threshold, ties):
        return _l1_mask_global_fake(scores, 0, default_masks, among_alive)


    @torch.library.register_fake("pruneext::l1_select_threshold")
    def _l1_select_threshold_fake(scores, default_masks, among_alive, k):
        device = scores[0].device if scores else "cpu"
        return torch.empty(3 + len(scores), dtype=torch.int64, device=device)

    @torch.library.register_fake("pruneext::l1_bits_prune")
    def _l1_bits_prune_fake(weights, bits, threshold, ties):
        device = weights[0].device if weights else "cpu"
        return torch.empty(len(weights), dtype=torch.int64, device=device)

    @torch.library.register_fake("pruneext::l1_bits_apply")
    def _l1_bits_apply_fake(tensors, bits):
        return None


def _l1_mask(scores, k, default_mask=None, among_alive=False, values=None, values_out=None):
    return torch.ops.pruneext.l1_mask(scores, k, default_mask, among_alive, values, values_out)


def _l1_mask_global(scores, k, default_masks, among_alive=False, values=None, values_out=None):
    if values_out is None:
        return torch.ops.pruneext.l1_mask_global(scores, k, default_masks, among_alive)
    masks = mask_outputs(scores, default_masks)
    torch.ops.pruneext.l1_mask_global.into(scores, k, default_masks, among_alive, masks, values, values_out)
    return masks


def _l1_mask_grouped(scores, group_size, k, default_mask=None, among_alive=False, group_k=None):
    return torch.ops.pruneext.l1_mask_grouped(scores, group_size, k, default_mask, among_alive, group_k)


def _phases(dispatch_key):
    has_select = has_kernel("l1_select_threshold", dispatch_key)
    return Phases(
        key_histogram=lambda *a: torch.ops.pruneext.l1_key_histogram(*a),
        count_equal=lambda *a: torch.ops.pruneext.l1_count_equal(*a),
        mask_write=lambda *a: torch.ops.pruneext.l1_mask_write(*a),
        select_threshold=(lambda *a: torch.ops.pruneext.l1_select_threshold(*a)) if has_select else None,
    )



_BITS = BitOps(
    prune=lambda *a: torch.ops.pruneext.l1_bits_prune(*a),
    apply=lambda *a: torch.ops.pruneext.l1_bits_apply(*a),
)


def _register(name, dispatch_key, device_available, why_no_device):
    if LOAD_ERROR is not None:
        mark_unavailable(name, f"pruneext._C did not load ({LOAD_ERROR})")
    elif not has_kernel("l1_mask", dispatch_key):
        mark_unavailable(name, f"pruneext._C was built without {name.upper()} kernels")
    elif not device_available:
        mark_unavailable(name, why_no_device)
    else:
        phases = _phases(dispatch_key) if has_kernel("l1_key_histogram", dispatch_key) else None
        bits = _BITS if has_kernel("l1_bits_prune", dispatch_key) else None
        grouped = _l1_mask_grouped if has_kernel("l1_mask_grouped", dispatch_key) else None
        register(
            Backend(name, (name,), _l1_mask, _l1_mask_global, phases=phases, bits=bits, l1_mask_grouped=grouped)
        )


_register("cpu", "CPU", True, "")
_register("cuda", "CUDA", torch.cuda.is_available(), "built with CUDA kernels, but no CUDA device is visible")
