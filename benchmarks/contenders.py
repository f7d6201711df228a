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
    __slots__ = ("case", "holders", "k", "x", "mask")

    def __init__(self, case, holders=None, k=None, x=None):
        self.case, self.holders, self.k, self.x, self.mask = case, holders, k, x, None


class ModuleContender:
    """torch.nn.utils.prune or pruneext (with a backend) pruning modules."""

    def __init__(self, name, lib, backend=None, explicit=False):
        self.name, self.lib, self.backend, self.explicit = name, lib, backend, explicit

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


PRUNEEXT_ORDER = ("torch", "cpu", "cuda", "triton")  # the oracle first: the set check's reference


def all_names():
    return ["torch.prune", "kthvalue"] + [f"pruneext-{b}" for b in PRUNEEXT_ORDER]


_ALIASES = {"torch": "torch.prune", "topk": "torch.prune", "kth": "kthvalue",
            **{b: f"pruneext-{b}" for b in ("cpu", "cuda", "triton")}}


def select(spec=None):
    """Contenders named by `spec` (a comma list; None: all available).
    'pruneext' names every available pruneext backend; 'cpu', 'cuda',
    'triton' are short for pruneext-<name>; 'torch' is torch.nn.utils.prune
    (pruneext's torch backend is 'pruneext-torch')."""
    available = set(pruneext.available_backends())
    if spec is None:
        names, explicit = ["torch.prune", "kthvalue"] + [f"pruneext-{b}" for b in PRUNEEXT_ORDER if b in available], False
    else:
        names, explicit = [], True
        for raw in spec.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "pruneext":
                names += [f"pruneext-{b}" for b in PRUNEEXT_ORDER if b in available]
                continue
            item = _ALIASES.get(item, item)
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
        else:
            out.append(ModuleContender(name, pruneext, backend=name.split("-", 1)[1], explicit=explicit))
    return out
