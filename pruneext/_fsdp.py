"""Pruning hooks on FSDP2 (`fully_shard`) modules.

torch's reparametrization moves a parameter from `name` to `name + "_orig"`.
FSDP2 remembers each parameter by its module and name, and before every
forward sets `module.<name>` to the unsharded parameter (after, back to the
sharded one), which would re-register `name` and clash with the pruning hook.
So when pruneext reparametrizes a parameter that FSDP2 manages, it tells
FSDP2 the new name: FSDP2 then all-gathers into `name + "_orig"`, and the
hook, which runs after FSDP2's pre-forward, multiplies that unsharded
parameter by the mask all-gathered for the forward (see `full_mask`), so
gradients reach FSDP2's unsharded parameter and are reduce-scattered as
usual, zero where the mask is. The mask stays sharded between forwards.

This reads FSDP2's private state (the module-state registry and each
parameter's module info); a torch whose FSDP2 lacks them leaves the module
unpruned with an error, never half-pruned.
"""
from ._dtensor import is_dtensor


def _fsdp_params():
    """Every FSDPParam of every fully_shard state in this process."""
    try:
        from torch.distributed._composable_state import _module_state_mapping
    except ImportError:
        return
    for ref in list(_module_state_mapping.values()):
        state = ref()
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:
            group = getattr(state, "_fsdp_param_group", None)
            groups = [group] if group is not None else []
        for group in groups:
            yield from getattr(group, "fsdp_params", ())


def rename(module, old, new):
    """If FSDP2 manages module.<old>, make it swap module.<new> instead.
    Returns whether it did."""
    renamed = False
    for fsdp_param in _fsdp_params():
        info = fsdp_param._module_info
        if info.module is module and info.param_name == old:
            info.param_name = new
            renamed = True
        for i, (shared, name) in enumerate(zip(info.shared_modules, info.shared_param_names)):
            if shared is module and name == old:
                info.shared_param_names[i] = new
                renamed = True
    return renamed


def full_mask(mask, orig):
    """The mask to multiply `orig` by: the DTensor mask itself while the
    parameter is sharded, the whole mask (all-gathered) while FSDP2 has
    unsharded the parameter for a forward."""
    if is_dtensor(mask) and not is_dtensor(orig):
        return mask.full_tensor()
    return mask


def apply_mask(method, module):
    """torch's BasePruningMethod.apply_mask, with the mask FSDP2 needs."""
    name = method._tensor_name
    orig = getattr(module, name + "_orig")
    mask = full_mask(getattr(module, name + "_mask"), orig)
    return mask.to(dtype=orig.dtype) * orig

