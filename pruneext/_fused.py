"""The pruned attribute `module.<name>` written by the mask pass itself.

torch commits a pruning with `setattr(module, name, apply_mask(module))`:
`mask.to(orig.dtype) * orig`, a second pass over the parameter after the
mask. The L1 kernels can write that product in the pass that writes the
mask (the mask ops' `values_out`), so a first or iterative L1 pruning reads
the parameter about once. What the module gets must still be torch's
tensor: the same values (bit for bit), a non-leaf whose gradient reaches
`<name>_orig` as grad * mask, the parameter's dtype and device. MaskProduct
makes the precomputed product that. Forwards still recompute `module.<name>`
with apply_mask, as torch's hook does.

Only plain tensors are fused; a DTensor (FSDP2, tensor parallel) keeps the
two passes, as does every method that is not the plain L1 rule.
"""
import torch

from ._dtensor import any_dtensor
from .backends.contract import VALUE_DTYPES


class MaskProduct(torch.autograd.Function):
    """mask.to(orig.dtype) * orig, given as already computed: forward
    returns `product` (handed in a list, so autograd sees a fresh output,
    not a view of an input); backward is mul's, grad * mask to orig."""

    @staticmethod
    def forward(ctx, orig, mask, product):
        ctx.save_for_backward(mask)
        ctx.dtype = orig.dtype
        return product[0]

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(dtype=ctx.dtype), None, None


def pruned(orig, mask, product):
    """`module.<name>` from the product the mask pass wrote."""
    return MaskProduct.apply(orig, mask, [product])


def output_for(orig, scores, default_mask=None):
    """A fresh tensor for the mask pass to write `mask * orig` into, or None
    where the kernels cannot write torch's product: a DTensor, a dtype the
    kernels do not multiply in, a non-contiguous parameter (torch's product
    follows its layout), scores elsewhere than the parameter, or a default
    mask of another dtype (the kernels read its bits as orig's dtype)."""
    tensors = [orig, scores] + ([] if default_mask is None else [default_mask])
    if any_dtensor(tensors):
        return None
    if orig.dtype not in VALUE_DTYPES or not orig.is_contiguous() or scores.device != orig.device:
        return None
    if scores.shape != orig.shape:
        return None
    if default_mask is not None and (
        default_mask.dtype != orig.dtype or default_mask.shape != orig.shape or default_mask.device != orig.device
    ):
        return None
    return torch.empty_like(orig, memory_format=torch.contiguous_format, requires_grad=False)
