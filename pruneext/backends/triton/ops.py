"""The Triton kernels as torch ops, and the `triton` backend's functions.

On a GPU the ops are torch.library.triton_op: torch.compile (through
AOTDispatcher) sees the wrap_triton kernel launches of select.py rather than
an opaque call, and eager calls launch the kernels directly. Interpreted
kernels (TRITON_INTERPRET=1) cannot be traced, so there the same functions
are registered as plain custom ops, opaque to torch.compile.
"""
from typing import List, Optional

import torch

from ..contract import mask_outputs
from . import groups
from .select import INTERPRET, l1_masks, l1_threshold


def _register(name, mutates_args=()):
    """Register `fn` as the op `name`; fn itself is the fake implementation
    (on fake tensors select.py allocates the outputs and launches nothing
    that runs)."""

    def wrap(fn):
        if not INTERPRET:
            return torch.library.triton_op(name, fn, mutates_args=mutates_args)
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op

    return wrap


@_register("pruneext::l1_mask_triton")
def l1_mask_triton(
    scores: torch.Tensor, k: int, default_mask: Optional[torch.Tensor] = None, among_alive: bool = False
) -> torch.Tensor:
    """pruneext.ops.l1_mask on the Triton kernels."""
    return l1_masks([scores], k, [default_mask], among_alive, "l1_mask")[0]


# The same with values_out (the native ops' values / values_out, csrc/ops.cpp)
# written in place. A separate op with both required rather than optional
# arguments of the first: torch 2.11's custom_op bumps the version of a
# mutated argument by its position, which an omitted default lacks.
@_register("pruneext::l1_mask_into_triton", mutates_args=("values_out",))
def l1_mask_into_triton(
    scores: torch.Tensor,
    k: int,
    default_mask: Optional[torch.Tensor],
    among_alive: bool,
    values: torch.Tensor,
    values_out: torch.Tensor,
) -> torch.Tensor:
    """l1_mask_triton, and mask * values written into values_out."""
    return l1_masks([scores], k, [default_mask], among_alive, "l1_mask", [values], [values_out])[0]


@_register("pruneext::l1_mask_global_triton")
def l1_mask_global_triton(
    scores: List[torch.Tensor], k: int, default_masks: List[Optional[torch.Tensor]], among_alive: bool = False
) -> List[torch.Tensor]:
    """pruneext.ops.l1_mask_global on the Triton kernels (no concatenation)."""
    return l1_masks(list(scores), k, list(default_masks), among_alive, "l1_mask_global")


# l1_mask_global.into's counterpart (csrc/ops.cpp says why it returns nothing).
@_register("pruneext::l1_mask_global_into_triton", mutates_args=("masks", "values_out"))
def l1_mask_global_into_triton(
    scores: List[torch.Tensor],
    k: int,
    default_masks: List[Optional[torch.Tensor]],
    among_alive: bool,
    masks: List[torch.Tensor],
    values: List[torch.Tensor],
    values_out: List[torch.Tensor],
) -> None:
    """l1_mask_global_triton writing into `masks`, and mask * values into
    values_out (values empty: the scores)."""
    l1_masks(
        list(scores), k, list(default_masks), among_alive, "l1_mask_global.into",
        list(values) or None, list(values_out), masks_out=list(masks),
    )


# The fused select's threshold without its write (a phase op, see
# csrc/ops.cpp): what select_loop runs in one process instead of the
# histogram passes.
@_register("pruneext::l1_select_threshold_triton")
def l1_select_threshold_triton(
    scores: List[torch.Tensor], default_masks: List[Optional[torch.Tensor]], among_alive: bool, k: int
) -> torch.Tensor:
    """[T, below, equal, equal per tensor] on the Triton kernels."""
    return l1_threshold(list(scores), list(default_masks), among_alive, k)


# The select within groups (the row and N:M scopes, csrc/ops.cpp).
@_register("pruneext::l1_mask_grouped_triton")
def l1_mask_grouped_triton(
    scores: torch.Tensor,
    group_size: int,
    k: int,
    default_mask: Optional[torch.Tensor],
    among_alive: bool,
    group_k: Optional[torch.Tensor],
) -> torch.Tensor:
    """pruneext.ops.l1_mask_grouped on the Triton kernels (groups.py)."""
    return groups.l1_mask_grouped(scores, group_size, k, default_mask, among_alive, group_k, interpret=INTERPRET)


# The backend's functions (pruneext.backends.Backend).
def l1_mask(scores, k, default_mask=None, among_alive=False, values=None, values_out=None):
    if values_out is None:
        return torch.ops.pruneext.l1_mask_triton(scores, k, default_mask, among_alive)
    values = scores if values is None else values
    return torch.ops.pruneext.l1_mask_into_triton(scores, k, default_mask, among_alive, values, values_out)


def l1_mask_global(scores, k, default_masks, among_alive=False, values=None, values_out=None):
    if values_out is None:
        return torch.ops.pruneext.l1_mask_global_triton(list(scores), k, list(default_masks or []), among_alive)
    masks = mask_outputs(scores, default_masks)
    torch.ops.pruneext.l1_mask_global_into_triton(
        list(scores), k, list(default_masks or []), among_alive, masks, list(values or []), list(values_out)
    )
    return masks


def l1_mask_grouped(scores, group_size, k, default_mask=None, among_alive=False, group_k=None):
    return torch.ops.pruneext.l1_mask_grouped_triton(scores, group_size, k, default_mask, among_alive, group_k)


def select_threshold(scores, default_masks, among_alive, k):
    return torch.ops.pruneext.l1_select_threshold_triton(list(scores), list(default_masks), among_alive, k)
