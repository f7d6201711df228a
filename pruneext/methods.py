"""Pruning methods: torch.nn.utils.prune's classes, on pruneext's kernels.

Every class subclasses its torch.nn.utils.prune namesake, so isinstance
checks, torch's `remove` / `is_pruned`, and mixed containers all work. What
changes:

* L1Unstructured computes its mask with pruneext.selection (radix-select
  kernels) instead of torch.topk, and PruningContainer takes the same fast path
  when its newest method is an L1Unstructured (ours or torch's): the kernel
  skips pruned entries itself instead of gathering the live ones into a copy.
* `apply` is transactional: the method is built (and its amount checked) and
  the mask computed before the module is touched, so a failed call leaves the
  module exactly as it was. torch removes the old hook first and loses it when
  a re-prune fails.
* Re-pruning a parameter pruned by either library builds a pruneext
  PruningContainer (a new object; the old hook is left unchanged).
* An L1 pruning of a plain tensor commits `module.<name>` (torch's
  `orig * mask`) as written by the mask pass itself (pruneext._fused), not
  by a second pass over the parameter.
"""
import copy
import numbers
import weakref

import torch
from torch.nn.utils import prune as _torch_prune

from . import _fsdp, _fused, distributed, selection
from ._amount import checked_k, validate_amount_init
from ._dtensor import is_dtensor, local


def _single_pruning_hook(module, name):
    """(key, hook) of the pruning hook of `name`, or None; torch's error if
    there are several."""
    hooks = [
        (key, hook)
        for key, hook in module._forward_pre_hooks.items()
        if isinstance(hook, _torch_prune.BasePruningMethod) and hook._tensor_name == name
    ]
    if len(hooks) > 1:
        raise AssertionError(
            f"Avoid adding multiple pruning hooks to the "
            f"same tensor {name} of module {module}. Use a PruningContainer."
        )
    return hooks[0] if hooks else None


def check_prunable(module, name):
    """Raise what pruning `name` of `module` would raise before any mask is
    computed: an unknown name, several hooks, or (first pruning) no Parameter."""
    orig = getattr(module, name)
    if _single_pruning_hook(module, name) is None:
        if orig is None:
            raise TypeError(f"cannot prune {name!r} of {module}: it is None, not a Parameter")
        if not isinstance(orig, torch.nn.Parameter):
            # what register_parameter would raise, before any work
            raise TypeError(
                f"cannot assign '{torch.typename(orig)}' object to parameter "
                f"'{name}_orig' (torch.nn.Parameter or None required)"
            )
    return orig


class BasePruningMethod(_torch_prune.BasePruningMethod):
    """torch's BasePruningMethod with a transactional `apply`."""

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        # A sharded (DTensor) parameter: every process checks, then all
        # agree, before the selection's collectives (pruneext.distributed).
        with distributed.agreement(_comm_of(module, name)):
            _single_pruning_hook(module, name)  # torch checks this first
            method = cls(*args, **kwargs)
            method._tensor_name = name
            plan = _PrunePlan(module, name, method)
            importance_scores = plan.check(importance_scores)
        plan.compute(importance_scores)
        plan.commit()
        return plan.method

    def first_mask(self, t, like):
        """The mask of a parameter pruned for the first time (its default mask
        is all ones, with `like`'s dtype and device)."""
        return self.compute_mask(t, default_mask=torch.ones_like(like))

    def fused_mask(self, t, default_mask, orig, values_out):
        """The mask of compute_mask (first_mask where default_mask is None),
        with mask.to(orig.dtype) * orig written into values_out by the same
        pass; only the L1 methods have one (see _PrunePlan.compute)."""
        raise NotImplementedError(f"{type(self).__name__} computes no fused mask")

    # copy.deepcopy of a pruned module fails in torch (pytorch#37322): the
    # pruned attribute `name` is a non-leaf tensor, which refuses deepcopy.
    # The hook remembers (weakly) the tensor it last set; the module's hooks
    # are copied before that attribute, so the hook's __deepcopy__ puts a
    # detached copy of it into the memo, and deepcopy uses that. The copy's
    # own hook recomputes the attribute (with autograd) at its first forward.
    def apply_mask(self, module, product=None):
        """torch's apply_mask; `product`: that product already computed by
        the mask pass (pruneext._fused), which then becomes the result."""
        assert self._tensor_name is not None, f"Module {module} has to be pruned"  # torch's check
        if product is None:
            pruned = _fsdp.apply_mask(self, module)  # orig * mask, as torch's (an FSDP2 forward: the whole mask)
        else:
            name = self._tensor_name
            pruned = _fused.pruned(getattr(module, name + "_orig"), getattr(module, name + "_mask"), product)
        self._pruned_ref = weakref.ref(pruned)
        return pruned

    def remove(self, module):
        """torch's remove; a sharded (DTensor) parameter is masked in place,
        so FSDP2's storage stays the parameter's, and FSDP2 swaps it under
        its own name again."""
        name = self._tensor_name
        orig = module._parameters.get(f"{name}_orig") if name is not None else None
        if not is_dtensor(orig):
            return super().remove(module)
        weight = self.apply_mask(module)
        with torch.no_grad():
            orig.to_local().copy_(weight.to_local())
        module.__dict__.pop(name, None)
        del module._parameters[name + "_orig"]
        del module._buffers[name + "_mask"]
        module.register_parameter(name, orig)
        _fsdp.rename(module, name + "_orig", name)

    def __deepcopy__(self, memo):
        ref = self.__dict__.get("_pruned_ref")
        pruned = ref() if ref is not None else None
        if pruned is not None and id(pruned) not in memo and not pruned.is_leaf:
            memo[id(pruned)] = pruned.detach().clone()
            copy._keep_alive(pruned, memo)  # its id must not be reused meanwhile
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            if key != "_pruned_ref":
                setattr(clone, key, copy.deepcopy(value, memo))
        return clone

    def __getstate__(self):
        # weak references do not pickle (torch.save of a whole module)
        state = dict(self.__dict__)
        state.pop("_pruned_ref", None)
        return state


class _PrunePlan:
    """One `apply`: everything is checked and computed before `commit`
    changes the module, so a failure leaves the module untouched."""

    def __init__(self, module, name, method):
        hook = _single_pruning_hook(module, name)
        self.module, self.name = module, name
        self.old_key = hook[0] if hook else None
        if hook:
            method = PruningContainer.extending(hook[1], method)
        self.method = method
        self.mask = None
        self.product = None  # mask * orig, where the mask pass wrote it

    @property
    def first_time(self):
        return self.old_key is None

    def check(self, importance_scores=None):
        """The checks that need no mask; returns the scores to rank."""
        orig = check_prunable(self.module, self.name)
        if importance_scores is None:
            return orig
        if importance_scores.shape != orig.shape:
            raise AssertionError(
                f"importance_scores should have the same shape as parameter "
                f"{self.name} of {self.module}, got {importance_scores.shape} vs {orig.shape}"
            )
        return importance_scores

    def compute(self, importance_scores=None):
        importance_scores = self.check(importance_scores)
        orig = getattr(self.module, self.name) if self.first_time else getattr(self.module, self.name + "_orig")
        current = None if self.first_time else getattr(self.module, self.name + "_mask").detach()
        product = _fused.output_for(orig, importance_scores, current) if self._fusable(importance_scores, orig) else None
        if product is not None:
            self.mask = self.method.fused_mask(importance_scores, current, orig, product)
            self.product = product
        elif self.first_time:
            self.mask = self.method.first_mask(importance_scores, getattr(self.module, self.name))
        else:
            self.mask = self.method.compute_mask(importance_scores, default_mask=current)

    def _fusable(self, scores, orig):
        """Whether the mask pass can write torch's product: the plain L1
        rule (a container's newest method for a re-pruning) whose mask,
        committed, multiplies orig by exactly what the pass multiplied by."""
        if self.first_time:
            return _is_l1_unstructured(self.method)
        newest = self.method._pruning_methods[-1]
        # the container answers in the scores' dtype: the same as orig's, or
        # the committed mask could differ from what the pass multiplied by
        return _is_l1_unstructured(newest) and scores.dtype == orig.dtype

    def commit(self, mask=None, product=None):
        """Install the mask, the pruned attribute and the hook (the
        attribute: `product` where the mask pass wrote it, else torch's
        apply_mask). On failure, the module's parameter and buffer dicts
        (their order too) and the attribute are put back as they were."""
        module, name = self.module, self.name
        if mask is None:
            mask, product = self.mask, self.product
        saved_parameters = dict(module._parameters)
        saved_buffers = dict(module._buffers)
        saved_attribute = module.__dict__.get(name, _MISSING)
        renamed = False
        try:
            if self.first_time:
                orig = getattr(module, name)
                module.register_parameter(name + "_orig", orig)
                del module._parameters[name]
                # FSDP2 must swap the parameter under its new name
                renamed = is_dtensor(orig) and _fsdp.rename(module, name, name + "_orig")
            module.register_buffer(name + "_mask", mask)
            setattr(module, name, self.method.apply_mask(module, product))
        except Exception:
            if renamed:
                _fsdp.rename(module, name + "_orig", name)
            module._parameters.clear()
            module._parameters.update(saved_parameters)
            module._buffers.clear()
            module._buffers.update(saved_buffers)
            module.__dict__.pop(name, None)
            if saved_attribute is not _MISSING:
                module.__dict__[name] = saved_attribute
            raise
        if self.old_key is not None:
            del module._forward_pre_hooks[self.old_key]
        module.register_forward_pre_hook(self.method)


_MISSING = object()


def _listed(t):
    return None if t is None else [t]


def _comm_of(module, name):
    """The collectives of the parameter's mesh if it is a DTensor, else
    None. Never raises: the checks it precedes report what is wrong."""
    return distributed.comm_for_dtensors([module._parameters.get(name + "_orig", module._parameters.get(name))])


def _is_l1_unstructured(method):
    """L1 methods whose compute_mask is the plain L1 rule (ours or torch's,
    not a subclass that overrides it, nor one patched or mocked on the class
    or the instance): the kernels can stand in for them."""
    return "compute_mask" not in vars(method) and type(method).compute_mask in _PLAIN_L1_RULES


class PruningContainer(BasePruningMethod, _torch_prune.PruningContainer):
    """torch's PruningContainer; an L1Unstructured newest method takes the
    kernel path, and compute_mask never modifies `default_mask`."""

    def __init__(self, *args):
        # torch's __init__ cannot take several methods (it compares against a
        # _tensor_name it has not set yet); name the container after the
        # first, which (as in torch) must have one.
        self._pruning_methods = ()
        if args:
            self._tensor_name = args[0]._tensor_name
        for method in args:
            self.add_pruning_method(method)

    @classmethod
    def extending(cls, old, method):
        """A new container holding `old`'s methods (or `old`) then `method`."""
        previous = tuple(old) if isinstance(old, _torch_prune.PruningContainer) else (old,)
        container = cls(*previous)
        container._tensor_name = old._tensor_name
        container.add_pruning_method(method)
        return container

    def fused_mask(self, t, default_mask, orig, values_out):
        mask = self._l1_among_alive(t, default_mask, values=orig, values_out=values_out)
        return mask.to(dtype=t.dtype)

    def _l1_among_alive(self, t, default_mask, values=None, values_out=None):
        # The new method only sees the entries the mask left at 1, and a
        # float amount is a fraction of those.
        amount = self._pruning_methods[-1].amount
        (mask,) = selection.l1_masks(
            [t], lambda alive: checked_k(amount, alive), [default_mask], among_alive=True,
            values=_listed(values), values_out=_listed(values_out),
        )
        return mask

    def compute_mask(self, t, default_mask):
        if _is_l1_unstructured(self._pruning_methods[-1]):
            # torch's container answers in t's dtype
            return self._l1_among_alive(t, default_mask).to(dtype=t.dtype)
        return super().compute_mask(t, default_mask.clone(memory_format=torch.contiguous_format))


class L1Unstructured(BasePruningMethod, _torch_prune.L1Unstructured):
    """Zero the `amount` entries of smallest |t| (ties: lowest flat index)."""

    def compute_mask(self, t, default_mask):
        (mask,) = selection.l1_masks([t], self._k_of, [default_mask])
        return mask

    def fused_mask(self, t, default_mask, orig, values_out):
        assert default_mask is None, "a parameter pruned again is pruned by a PruningContainer"
        return self._first_l1_mask(t, orig, values=orig, values_out=values_out)

    def first_mask(self, t, like):
        if not _is_l1_unstructured(self):  # a subclass with its own rule
            return super().first_mask(t, like)
        return self._first_l1_mask(t, like)

    def _first_l1_mask(self, t, like, values=None, values_out=None):
        (mask,) = selection.l1_masks([t], self._k_of, values=_listed(values), values_out=_listed(values_out))
        return mask.to(device=like.device, dtype=like.dtype)

    def _k_of(self, n):
        return checked_k(self.amount, n)

    @classmethod
    def apply(cls, module, name, amount, importance_scores=None):
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


def _rows(t):
    """(rows, row length) of t's 2-D view: dim 0 is the output features
    (a 0-d or 1-D tensor is one row)."""
    rows = t.shape[0] if t.dim() >= 2 else 1
    return rows, (t.numel() // rows if rows else 0)


class RowUnstructured(BasePruningMethod):
    """Per row of the 2-D view (dim 0 = output features, Wanda's groups): in
    every row, zero `amount` of the entries it still has (an int: that many,
    a float: that fraction, rounded as torch rounds), those of smallest |t|,
    ties to the lowest index. In a container (a parameter pruned before) each
    row prunes among what it has left, so rows end with equal budgets only
    where they started with them."""

    PRUNING_TYPE = "global"  # a container hands it the whole tensor and mask

    def __init__(self, amount):
        validate_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t, default_mask):
        # counted on this process's rows: a DTensor's shard holds whole rows
        # (selection.grouped_mask refuses any other sharding)
        rows, length = _rows(local(t))
        alive = (local(default_mask) == 1).reshape(rows, length).sum(1)
        if isinstance(self.amount, numbers.Integral):
            checked_k(self.amount, int(alive.min()) if rows else 0)  # torch's error for too large an int
            k = torch.full_like(alive, int(self.amount))
        else:  # round(amount * n) in float64, half to even: Python's round, row by row
            k = torch.round(alive.double() * float(self.amount)).long()
        return selection.grouped_mask(t, max(length, 1), 0, default_mask, among_alive=True, group_k=length - alive + k)

    def first_mask(self, t, like):
        rows, length = _rows(local(t))
        mask = selection.grouped_mask(t, max(length, 1), checked_k(self.amount, length))
        return mask.to(device=like.device, dtype=like.dtype)

    @classmethod
    def apply(cls, module, name, amount, importance_scores=None):
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class NMStructured(BasePruningMethod):
    """N:M sparsity: in every group of M consecutive entries along the last
    dimension, zero the N of smallest |t| (ties to the lowest index; 2:4 is
    what Ampere / Hopper sparse tensor cores run). On a parameter pruned
    before, groups that have N zeros already keep them, the others are
    topped up to N, so the result is N:M whatever came before."""

    PRUNING_TYPE = "global"  # a container hands it the whole tensor and mask

    def __init__(self, n=2, m=4):
        check_n_m(n, m)
        self.n, self.m = int(n), int(m)

    def compute_mask(self, t, default_mask):
        if t.dim() == 0 or t.shape[-1] % self.m:
            last = t.shape[-1] if t.dim() else 1
            raise ValueError(
                f"{self.n}:{self.m} pruning needs the last dimension to be a multiple of {self.m}, "
                f"got shape {tuple(t.shape)} (last dimension {last})"
            )
        return selection.grouped_mask(t, self.m, self.n, default_mask, among_alive=True)

    def first_mask(self, t, like):
        return self.compute_mask(t, None).to(device=like.device, dtype=like.dtype)

    @classmethod
    def apply(cls, module, name, n=2, m=4, importance_scores=None):
        return super().apply(module, name, n=n, m=m, importance_scores=importance_scores)


def check_n_m(n, m):
    """N and M of an N:M scope: integers, 1 <= M, 0 <= N <= M."""
    for value, what in ((n, "n"), (m, "m")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"N:M pruning: {what} must be an int, got {value!r}")
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"N:M pruning needs 0 <= n <= m and m >= 1, got n={n}, m={m}")


class Identity(BasePruningMethod, _torch_prune.Identity):
    @classmethod
    def apply(cls, module, name):
        return super().apply(module, name)


class RandomUnstructured(BasePruningMethod, _torch_prune.RandomUnstructured):
    @classmethod
    def apply(cls, module, name, amount):
        return super().apply(module, name, amount=amount)


class RandomStructured(BasePruningMethod, _torch_prune.RandomStructured):
    @classmethod
    def apply(cls, module, name, amount, dim=-1):
        return super().apply(module, name, amount=amount, dim=dim)


class LnStructured(BasePruningMethod, _torch_prune.LnStructured):
    @classmethod
    def apply(cls, module, name, amount, n, dim, importance_scores=None):
        return super().apply(
            module, name, amount=amount, n=n, dim=dim, importance_scores=importance_scores
        )


class CustomFromMask(BasePruningMethod, _torch_prune.CustomFromMask):
    @classmethod
    def apply(cls, module, name, mask):
        return super().apply(module, name, mask=mask)


# The plain L1 rules as defined, captured once: a compute_mask patched onto
# either class later (unittest.mock.patch.object) is not among them, so the
# patched method is what runs.
_PLAIN_L1_RULES = (L1Unstructured.compute_mask, _torch_prune.L1Unstructured.compute_mask)
