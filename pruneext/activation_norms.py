"""Activation-aware importance scores (Wanda: Sun et al., 2023).

    with pruneext.ActivationNorms(model) as norms:
        for batch in calibration:
            model(batch)
    pruneext.row_unstructured(layer, "weight", 0.5, importance_scores=norms.scores(layer))
    pruneext.MagnitudePruner(model, 0.5, scope="row", scores=norms)

Inside the block, a forward pre-hook on every nn.Linear adds the squares of
its input to a running sum per input feature (float32, in_features numbers
a layer; no activation is kept). `scores(module)` is |W| x ||X||: each
weight times the L2 norm of its input feature over everything seen.
"""
import torch
from torch import nn

from ._dtensor import DTensor, is_dtensor, local


class ActivationNorms:
    """The per-input-feature L2 norms of the inputs of `model`'s nn.Linear
    layers (or of `modules`), recorded while the `with` block runs."""

    def __init__(self, model, modules=None):
        found = modules if modules is not None else [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.modules = list(found)
        if not self.modules:
            raise ValueError("ActivationNorms: no nn.Linear to record (pass modules=[...])")
        for m in self.modules:
            if not isinstance(m, nn.Linear):
                raise TypeError(f"ActivationNorms records nn.Linear inputs, got {type(m).__name__}")
        self._sums = {}
        self._hooks = []

    def __enter__(self):
        if self._hooks:
            raise RuntimeError("ActivationNorms: already recording")
        self._hooks = [m.register_forward_pre_hook(self._record) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return False

    @torch.no_grad()
    def _record(self, module, args):
        x = args[0]
        features = x.shape[-1]
        squares = x.detach().reshape(-1, features).float().square().sum(0)
        total = self._sums.get(module)
        self._sums[module] = squares if total is None else total.add_(squares)

    def all_reduce(self, group=None):
        """Sum the recorded squares over the processes of `group` (data-parallel
        calibration: every process then scores with the same norms, so a
        sharded model is pruned as the unsharded one would be)."""
        import torch.distributed as dist

        for module in self.modules:
            dist.all_reduce(self._sum(module), group=group)

    def norm(self, module):
        """||X|| per input feature of `module` (float32, in_features)."""
        return self._sum(module).sqrt()

    def scores(self, module, name="weight"):
        """|W| x ||X|| for module.<name> (a pruned one: its `_orig`), float32,
        the weight's shape; a DTensor weight gets a DTensor of its placements
        (its rows are scaled by the same per-column norms)."""
        weight = getattr(module, name + "_orig", None)
        weight = getattr(module, name) if weight is None else weight
        norm = self.norm(module).to(local(weight).device)
        part = local(weight).detach().abs().float() * norm
        if is_dtensor(weight):
            if any(p.is_shard() and p.dim != 0 for p in weight.placements):
                raise ValueError(f"ActivationNorms: weights sharded along their input features ({weight.placements}) are not supported")
            return DTensor.from_local(part, weight.device_mesh, weight.placements, shape=weight.shape, stride=weight.stride())
        return part

    def _sum(self, module):
        """The recorded sum of squares of module's input, per input feature."""
        if module not in self._sums:
            raise KeyError(f"ActivationNorms: no input recorded for {type(module).__name__} (run the model inside the with block)")
        return self._sums[module]
