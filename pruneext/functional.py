"""The functions of torch.nn.utils.prune, on pruneext's methods.

`global_unstructured` with an L1Unstructured method ranks all parameters in
one kernel call (pruneext.ops.l1_mask_global) without concatenating them;
torch's builds flat copies of every parameter and mask (about 12x the
parameter bytes of extra memory), and the same pass writes each pruned
`module.<name>` (pruneext._fused). Other methods take torch's algorithm.
"""
from collections.abc import Iterable

import torch
from torch.nn.utils import prune as _torch_prune

from . import _fused, distributed, methods, selection
from ._amount import checked_k
from ._dtensor import any_dtensor

# torch's own, unchanged: they act on any BasePruningMethod hook, ours included.
remove = _torch_prune.remove
is_pruned = _torch_prune.is_pruned


def identity(module, name):
    methods.Identity.apply(module, name)
    return module


def random_unstructured(module, name, amount):
    methods.RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    methods.L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def row_unstructured(module, name, amount, importance_scores=None):
    """Zero `amount` of every row's entries (dim 0 = output features) of
    smallest |importance_scores| (default: the parameter): Wanda's scope."""
    methods.RowUnstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def nm_structured(module, name, n=2, m=4, importance_scores=None):
    """N:M sparsity (2:4 by default): in every group of m consecutive entries
    along the last dimension, zero the n of smallest |importance_scores|."""
    methods.NMStructured.apply(module, name, n=n, m=m, importance_scores=importance_scores)
    return module


def random_structured(module, name, amount, dim):
    methods.RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    methods.LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    methods.CustomFromMask.apply(module, name, mask)
    return module


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs):
    """Prune the `(module, name)` pairs of `parameters` together, as
    torch.nn.utils.prune.global_unstructured does.

    DTensor parameters (FSDP2, tensor parallel) are ranked across their
    mesh without gathering them. With `process_group=pg` (a keyword, with
    an L1 method), every rank of pg passes its own parameters and the union
    of the lists is ranked as one (order: rank, then list order)."""
    group = kwargs.pop("process_group", None)
    if isinstance(parameters, Iterable):
        parameters = list(parameters)  # torch reads a generator twice and sees it empty
    comm = distributed.GroupComm(group) if group is not None else None
    if comm is None and isinstance(parameters, list):
        comm = _dtensor_comm(parameters)
    with distributed.agreement(comm):
        plan = _GlobalPlan(parameters, pruning_method, importance_scores, kwargs, group)
    plan.run()


def _dtensor_comm(parameters):
    """The mesh's collectives when the list holds DTensor parameters (never
    raises: the checks report what is wrong)."""
    params = []
    for entry in parameters:
        try:
            module, name = entry
            params.append(module._parameters.get(name + "_orig", module._parameters.get(name)))
        except Exception:  # noqa: BLE001
            continue
    return distributed.comm_for_dtensors(params)


class _GlobalPlan:
    """global_unstructured in two steps: every check (in __init__), then
    the masks and the module changes (run)."""

    def __init__(self, parameters, pruning_method, importance_scores, kwargs, group):
        self.group = group
        self._check(parameters, pruning_method, importance_scores, kwargs)

    def _check(self, parameters, pruning_method, importance_scores, kwargs):
        if not isinstance(parameters, Iterable):
            raise TypeError("global_unstructured(): parameters is not an Iterable")
        parameters = list(parameters)  # torch reads a generator twice and sees it empty
        importance_scores = importance_scores if importance_scores is not None else {}
        if not isinstance(importance_scores, dict):
            raise TypeError("global_unstructured(): importance_scores must be of type dict")
        if not parameters and self.group is None:
            # torch's error (from torch.cat of nothing), with its type
            raise ValueError("global_unstructured(): parameters is empty (torch.cat(): expected a non-empty list of Tensors)")

        scores = [importance_scores.get((module, name), getattr(module, name)) for module, name in parameters]
        masks = [getattr(module, name + "_mask", None) for module, name in parameters]
        _check_one_device(scores + [m for m in masks if m is not None])

        method = pruning_method(**kwargs)
        method._tensor_name = "temp"
        if method.PRUNING_TYPE != "unstructured":
            raise TypeError(
                'Only "unstructured" PRUNING_TYPE supported for '
                f"the `pruning_method`. Found method {pruning_method} of type {method.PRUNING_TYPE}"
            )
        for (module, name), s in zip(parameters, scores):
            param = methods.check_prunable(module, name)
            if s.shape != param.shape:
                raise AssertionError(
                    f"importance_scores should have the same shape as parameter "
                    f"{name} of {module}, got {s.shape} vs {param.shape}"
                )
        self.sharded = any_dtensor(scores + masks)
        if (self.sharded or self.group is not None) and not methods._is_l1_unstructured(method):
            raise NotImplementedError("pruneext: across processes, global_unstructured prunes with L1Unstructured only")
        if self.sharded and self.group is not None:
            raise ValueError("pruneext: process_group is for lists of plain tensors; DTensor parameters use their mesh")
        self.parameters, self.method, self.scores, self.masks = parameters, method, scores, masks

    def run(self):
        parameters, method, scores, masks = self.parameters, self.method, self.scores, self.masks
        if not methods._is_l1_unstructured(method):
            return _global_by_concatenation(parameters, method, scores, masks)
        products = self._products()
        new_masks = self._masks(products)
        _install(parameters, new_masks, products)

    def _products(self):
        """The tensors the mask pass writes `mask * orig` into, one per
        parameter, or None: the list is fused only whole, in one call, with
        one parameter dtype, and not across processes."""
        if self.sharded or self.group is not None:
            return None
        origs = [_orig_of(module, name) for module, name in self.parameters]
        if len({o.dtype for o in origs}) > 1:
            return None
        products = [_fused.output_for(o, s, m) for o, s, m in zip(origs, self.scores, self.masks)]
        return None if any(p is None for p in products) else products

    def _masks(self, products=None):
        values = None if products is None else [_orig_of(module, name) for module, name in self.parameters]
        return selection.l1_masks(
            self.scores, lambda alive: checked_k(self.method.amount, alive), self.masks, among_alive=True,
            values=values, values_out=products, group=self.group,
        )


def _orig_of(module, name):
    """The tensor a pruning of `name` multiplies by its mask."""
    orig = module._parameters.get(name + "_orig")
    return orig if orig is not None else getattr(module, name)


def _install(parameters, new_masks, products=None):
    """Every check is done and every mask computed: now change the modules
    (`products`: mask * orig per parameter, where the mask pass wrote it)."""
    done = set()
    products = products or [None] * len(new_masks)
    for (module, name), mask, product in zip(parameters, new_masks, products):
        param = getattr(module, name)
        mask = mask.to(device=param.device, dtype=param.dtype)
        # The hook holds the very buffer, not a slice of a flat copy.
        method = methods.CustomFromMask(mask)
        method._tensor_name = name
        plan = methods._PrunePlan(module, name, method)
        if (id(module), name) in done:
            # listed again: combine with the mask this call already set, as torch does
            plan.compute()
            plan.commit()
        else:
            plan.commit(mask, product)
        done.add((id(module), name))


def _check_one_device(tensors):
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise TypeError(
            "Found two parameters on different devices, this is currently not supported. "
            f"Devices: {', '.join(sorted(map(str, devices)))}"
        )


def _global_by_concatenation(parameters, method, scores, masks):
    """torch's algorithm, for pruning methods no kernel implements."""
    flat_scores = torch.cat([s.reshape(-1) for s in scores])
    flat_mask = torch.cat(
        [(torch.ones_like(s) if m is None else m).reshape(-1) for s, m in zip(scores, masks)]
    )
    container = methods.PruningContainer()
    container._tensor_name = "temp"
    container.add_pruning_method(method)
    final_mask = container.compute_mask(flat_scores, flat_mask)
    pointer = 0
    for module, name in parameters:
        param = getattr(module, name)
        custom_from_mask(module, name, mask=final_mask[pointer : pointer + param.numel()].view_as(param))
        pointer += param.numel()
