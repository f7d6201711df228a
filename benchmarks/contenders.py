"""Who is measured. Every contender is set up outside the clock and timed on
one call only:

  torch.prune      torch.nn.utils.prune itself (l1_unstructured /
                   global_unstructured on a module): the torch.topk path and
                   the reference of every speedup.
  kthvalue         a threshold baseline, single mode only (no row elsewhere): mask = |x| > the
                   k-th smallest |x| (torch.kthvalue), cast to the dtype of x.
                   Only the mask, no module hook. It prunes every tie of the
                   threshold, so it can prune more than k entries.
  pruneext-<name>  pruneext's public API (pruneext.l1_unstructured /
                   global_unstructured) inside pruneext.use_backend(<name>),
                   one per backend in pruneext.available_backends()
                   (torch, cpu, cuda, triton). pruneext-torch is pruneext's
                   pure-PyTorch oracle backend.

Op level (`--ops`), the mask op alone, no module, no hook, no apply_mask:

  op-topk          torch's own mask path: what torch.nn.utils.prune computes
                   inside l1_unstructured / iterative pruning /
                   global_unstructured (L1Unstructured.compute_mask, through
                   a PruningContainer for iterative; global: the
                   parameters_to_vector concatenations, then the same), on
                   default masks of ones built outside the clock (as the
                   module path builds them before its compute_mask): the
                   reference of the op-level speedups.
  op-<name>        the backend's mask op itself, torch.ops.pruneext.l1_mask /
                   l1_mask_global for cpu and cuda (their Triton and torch
                   counterparts for the others), resolved once by
                   pruneext.use_backend(<name>) outside the clock: one call
                   with k, no default mask (iterative: the 50 % mask and
                   among_alive=True), which returns the new mask.

Each repetition prunes a fresh module ("holder") that shares the case's
Parameter: pruning never writes the parameter's values, so sharing it keeps
the inputs identical while making only the pruning call's own allocations.
For the iterative mode the setup first applies one shared 50 % L1 mask with
the contender's own custom_from_mask, so the timed call goes through the
library's PruningContainer path.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn.utils import prune as torch_prune

import pruneext
from pruneext import backends

from .cases import ITERATIVE_PRE_AMOUNT


class Holder(torch.nn.Module):
    """A module with one parameter, `weight`."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight


@dataclass
class Inputs:
    """What every contender of one case prunes."""

    params: list  # nn.Parameters (shared, never modified)
    premask: Optional[torch.Tensor] = None  # iterative mode: the 50 % mask applied in setup


def make_premask(param):
    """The iterative mode's first mask: torch's own L1 mask at 50 %."""
    method = torch_prune.L1Unstructured(amount=ITERATIVE_PRE_AMOUNT)
    return method.compute_mask(param.detach(), default_mask=torch.ones_like(param.detach()))


class _State:
    __slots__ = ("case", "holders", "k", "x", "mask", "fn", "default")

    def __init__(self, case, holders=None, k=None, x=None, fn=None, default=None):
        self.case, self.holders, self.k, self.x, self.mask = case, holders, k, x, None
        self.fn, self.default = fn, default


class _BackendContender:
    """What a contender on a pruneext backend (or on none: torch) shares:
    which cases it gets a row for, and which it refuses."""

    level = "module"
    reference = "torch.prune"  # whose median the speedups divide
    backend = None
    explicit = False

    @property
    def is_pruneext(self):
        return self.backend is not None

    def applies_to(self, case):
        """False for cases this contender is not meant for at all (a pruneext
        backend for another device): such cases get no row. A backend that
        is not available here still gets rows (skipped, with the reason)."""
        if not self.is_pruneext or self.backend not in pruneext.available_backends():
            return True
        try:
            with pruneext.use_backend(self.backend):
                pruneext.backends.resolve(case.device, torch.float32)
        except (RuntimeError, TypeError):
            return False
        return True

    def refusal(self, case):
        """None if this contender can run `case`, else why not."""
        if not self.is_pruneext:
            return None
        if self.backend not in pruneext.available_backends():
            return f"backend {self.backend!r} is not available"
        if (self.backend == "triton" and case.device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
                and not self.explicit):
            return "Triton runs interpreted on CPU (name it in --contenders to time it anyway)"
        try:
            with pruneext.use_backend(self.backend):
                pruneext.backends.resolve(case.device, case.torch_dtype, case.torch_dtype)
        except (RuntimeError, TypeError) as e:
            return str(e)
        return None


class ModuleContender(_BackendContender):
    """torch.nn.utils.prune or pruneext (with a backend) pruning modules."""

    def __init__(self, name, lib, backend=None, explicit=False):
        self.name, self.lib, self.backend, self.explicit = name, lib, backend, explicit

    def setup(self, case, inputs):
        holders = [Holder(p) for p in inputs.params]
        if case.mode == "iterative":
            self.lib.custom_from_mask(holders[0], "weight", mask=inputs.premask)
        return _State(case, holders)

    def call(self, state):
        case, lib = state.case, self.lib
        if self.is_pruneext:
            with pruneext.use_backend(self.backend):
                self._prune(lib, case, state.holders)
        else:
            self._prune(lib, case, state.holders)

    @staticmethod
    def _prune(lib, case, holders):
        if case.mode == "global":
            lib.global_unstructured(
                [(h, "weight") for h in holders], pruning_method=lib.L1Unstructured, amount=case.amount
            )
        else:
            lib.l1_unstructured(holders[0], "weight", amount=case.amount)

    def masks(self, state):
        return [h.weight_mask for h in state.holders]


class KthvalueContender:
    """mask = (|x| > kthvalue(|x|, k)).to(x.dtype), single mode only."""

    name = "kthvalue"
    is_pruneext = False
    level = "module"
    reference = "torch.prune"
    modes = ("single",)

    def applies_to(self, case):
        return case.mode in self.modes

    def refusal(self, case):
        return None if case.mode in self.modes else "single mode only"

    def setup(self, case, inputs):
        return _State(case, k=round(case.amount * case.size), x=inputs.params[0].detach())

    def call(self, state):
        x, k = state.x, state.k
        if k == 0:
            state.mask = torch.ones_like(x)
            return
        a = x.abs()
        threshold = a.reshape(-1).kthvalue(k).values
        state.mask = (a > threshold).to(x.dtype)

    def masks(self, state):
        return [state.mask]


class OpContender(_BackendContender):
    """A pruneext backend's mask op, called directly (op level)."""

    level = "op"
    reference = "op-topk"

    def __init__(self, name, backend, explicit=False):
        self.name, self.backend, self.explicit = name, backend, explicit

    def setup(self, case, inputs):
        xs = [p.detach() for p in inputs.params]
        default = inputs.premask
        with pruneext.use_backend(self.backend):
            chosen = backends.resolve(case.device, case.torch_dtype, None if default is None else default.dtype)
        if case.mode == "global":
            return _State(case, k=case.op_k(), x=xs, fn=chosen.l1_mask_global, default=[None] * len(xs))
        return _State(case, k=case.op_k(), x=xs[0], fn=chosen.l1_mask, default=default)

    def call(self, state):
        if state.case.mode == "global":
            state.mask = state.fn(state.x, state.k, state.default, False)
        else:
            state.mask = [state.fn(state.x, state.k, state.default, state.default is not None)]

    def masks(self, state):
        return state.mask


class TopkPathContender(_BackendContender):
    """torch.nn.utils.prune's own mask computation, without the module."""

    name = "op-topk"
    level = "op"
    reference = "op-topk"

    def setup(self, case, inputs):
        method = torch_prune.L1Unstructured(amount=case.amount)
        xs = [p.detach() for p in inputs.params]
        if case.mode == "global":
            # global_unstructured's container and its default masks (ones)
            method._tensor_name = "temp"
            container = torch_prune.PruningContainer(method)
            return _State(case, x=xs, fn=container.compute_mask, default=[torch.ones_like(x) for x in xs])
        if case.mode == "iterative":
            # the PruningContainer path; its compute_mask writes into the mask
            method._tensor_name = "weight"
            container = torch_prune.PruningContainer(method)
            return _State(case, x=xs[0], fn=container.compute_mask, default=inputs.premask.clone())
        return _State(case, x=xs[0], fn=method.compute_mask, default=torch.ones_like(xs[0]))

    def call(self, state):
        if state.case.mode != "global":
            state.mask = [state.fn(state.x, state.default)]
            return
        vector = torch.nn.utils.parameters_to_vector
        flat = state.fn(vector(state.x), vector(state.default))
        masks, start = [], 0
        for x in state.x:
            masks.append(flat[start:start + x.numel()].view_as(x))
            start += x.numel()
        state.mask = masks

    def masks(self, state):
        return state.mask


PRUNEEXT_ORDER = ("torch", "cpu", "cuda", "triton")  # the oracle first: the set check's reference


def all_names():
    return (["torch.prune", "kthvalue"] + [f"pruneext-{b}" for b in PRUNEEXT_ORDER]
            + ["op-topk"] + [f"op-{b}" for b in PRUNEEXT_ORDER])


# Short names, per level (full names of either level are accepted in both).
_ALIASES = {
    "module": {"torch": "torch.prune", "topk": "torch.prune", "kth": "kthvalue",
               **{b: f"pruneext-{b}" for b in ("cpu", "cuda", "triton")}},
    "op": {"torch": "op-topk", "topk": "op-topk", **{b: f"op-{b}" for b in ("cpu", "cuda", "triton")}},
}
_PREFIX = {"module": "pruneext-", "op": "op-"}


def select(spec=None, level="module"):
    """Contenders named by `spec` (a comma list; None: all available of
    `level`, "module" or "op"). 'pruneext' names every available pruneext
    backend of the level; 'cpu', 'cuda', 'triton' are short for
    pruneext-<name> (op level: op-<name>); 'torch' is torch.nn.utils.prune
    (op level: op-topk; pruneext's torch backend is 'pruneext-torch' /
    'op-torch')."""
    available = set(pruneext.available_backends())
    mine = [f"{_PREFIX[level]}{b}" for b in PRUNEEXT_ORDER if b in available]
    if spec is None:
        names = (["torch.prune", "kthvalue"] if level == "module" else ["op-topk"]) + mine
        explicit = False
    else:
        names, explicit = [], True
        for raw in spec.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "pruneext":
                names += mine
                continue
            item = _ALIASES[level].get(item, item)
            if item not in all_names():
                raise ValueError(f"unknown contender {raw!r}; choose from {', '.join(all_names())}, pruneext")
            names.append(item)
        names = [n for n in all_names() if n in names]  # canonical order, no duplicates
    out = []
    for name in names:
        if name == "torch.prune":
            out.append(ModuleContender(name, torch_prune))
        elif name == "kthvalue":
            out.append(KthvalueContender())
        elif name == "op-topk":
            out.append(TopkPathContender())
        elif name.startswith("op-"):
            out.append(OpContender(name, backend=name.split("-", 1)[1], explicit=explicit))
        else:
            out.append(ModuleContender(name, pruneext, backend=name.split("-", 1)[1], explicit=explicit))
    return out
