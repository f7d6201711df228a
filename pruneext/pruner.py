"""MagnitudePruner: lean, in-place magnitude pruning for training.

    pruner = pruneext.MagnitudePruner(model, pruneext.schedules.cubic(0.8, end=1000, every=50))
    for batch in data:
        loss(model(batch)).backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()

torch.nn.utils.prune reparametrizes: it keeps `weight_orig`, a `weight_mask`
of the weight's dtype and recomputes `weight` in a forward pre-hook, two
extra parameter-sized tensors per weight. The pruner instead zeroes pruned
weights where they are and keeps one bit per entry:

  * the parameters stay the same nn.Parameter objects (the optimizer keeps
    them), the model gets no forward hooks and its state_dict keeps its
    standard keys: a saved model is a sparse model;
  * a hook masks each gradient as it is accumulated, so optimizer moments
    never see pruned entries; `step()` (after optimizer.step()) re-zeroes
    what weight decay or momentum moved;
  * the masks are those of pruneext's global_unstructured / l1_unstructured
    (exactly round(s * n) entries zero, ties to the lowest index, NaN
    largest), found by pruneext.select_loop on the phase ops, and they only
    grow: each update prunes among the entries still alive.

Sparsity is the fraction of the entries in scope that are zero: over all
weights together (scope="global", one threshold), per weight ("layer"), or
per row of each weight ("row": dim 0 = output features, Wanda's scope). An
N:M scope ("2:4", any "n:m") keeps n zeros in every m consecutive entries
along the last dimension; its schedule says which fraction of the weights
(in the order given) are N:M-pruned, so a constant 1.0 converts them all at
once and a schedule converts them layer by layer.
"""
import numbers
from typing import Callable, Iterable, Union

import torch
from torch import nn

from . import distributed, lean_masks, select_loop, selection
from .methods import _rows, check_n_m
from ._dtensor import DTensor, is_dtensor
from ._dtensor import local as _local  # what is pruned in place: a DTensor's shard (FSDP2 all-gathers from it)
from .backends.contract import KEY_BITS
from .schedules import Constant, _fraction

SCOPES = ("global", "layer", "row", "N:M")  # N:M: any "n:m", e.g. "2:4"


def _grouped_scope(scope):
    """None for "global" and "layer" (the selection over whole weights);
    "row", or (n, m) for an N:M scope; ValueError for anything else."""
    if scope in ("global", "layer"):
        return None
    if scope == "row":
        return "row"
    parts = scope.split(":") if isinstance(scope, str) else ()
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        n, m = int(parts[0]), int(parts[1])
        check_n_m(n, m)
        return n, m
    raise ValueError(f"MagnitudePruner: unknown scope {scope!r}; choose 'global', 'layer', 'row' or 'n:m' (e.g. '2:4')")


def _targets(parameters):
    """[(module, name, label)] of what to prune."""
    if isinstance(parameters, nn.Module):
        found = [
            (m, "weight", f"{path}.weight" if path else "weight")
            for path, m in parameters.named_modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(getattr(m, "weight", None), nn.Parameter)
        ]
        if not found:
            raise ValueError("MagnitudePruner: the module has no nn.Linear or nn.ConvNd weight to prune")
        return found
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise TypeError(
            "MagnitudePruner: parameters must be an nn.Module or an iterable of (module, name) pairs, "
            f"got {type(parameters).__name__}"
        )
    found = []
    for pair in parameters:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], nn.Module) and isinstance(pair[1], str)):
            raise TypeError(f"MagnitudePruner: expected (module, name) pairs, got {pair!r}")
        found.append((pair[0], pair[1], f"{type(pair[0]).__name__}.{pair[1]}"))
    if not found:
        raise ValueError("MagnitudePruner: no parameters to prune")
    return found


def _parameter(module, name, label):
    """The parameter module.name, checked; a DTensor's local shard is what
    is pruned in place."""
    p = getattr(module, name, None)
    if not isinstance(p, nn.Parameter):
        hint = " (pruned by torch.nn.utils.prune? call prune.remove first)" if hasattr(module, name + "_orig") else ""
        raise ValueError(f"MagnitudePruner: {label} is not an nn.Parameter{hint}")
    if not p.dtype.is_floating_point:
        raise TypeError(f"MagnitudePruner: {label} is {p.dtype}; only floating parameters are pruned")
    if p.dtype not in KEY_BITS:
        raise TypeError(f"MagnitudePruner: {label} is {p.dtype}; supported: {', '.join(map(str, KEY_BITS))}")
    if not _local(p).is_contiguous():
        what = "its local shard is" if is_dtensor(p) else "it is"
        raise ValueError(f"MagnitudePruner: {label} is not contiguous ({what} pruned in place in row-major order)")
    return p


class MagnitudePruner:
    """Prunes `parameters` in place to `sparsity` by magnitude (L1), keeping
    the masks through training.

    parameters: an nn.Module (the `weight` of every nn.Linear and nn.ConvNd
        in it) or an iterable of (module, name) pairs, as global_unstructured.
    sparsity: a float in [0, 1], or a schedule: a callable step -> float
        (pruneext.schedules). Step 0 is applied here; each step() advances.
    scope: "global" (one threshold over all the weights; they must share a
        dtype and device), "layer" (each weight to its own sparsity), "row"
        (each row of each weight), or "n:m" such as "2:4" (see above).
    mask_format: "bits" (1 bit per entry) or "bool" (1 byte per entry).
    scores: for "row" and N:M scopes, what ranks the entries instead of |W|:
        an object with scores(module, name) -> tensor of the weight's shape,
        such as pruneext.ActivationNorms (Wanda's |W| x ||X||).

    Sharded parameters (DTensors: FSDP2's fully_shard, tensor parallel) are
    pruned as the unsharded model would be, in every process that holds a
    shard: each process keeps the masks of its own shards, and the
    selection exchanges only histograms and counts (pruneext.distributed).
    Build the pruner after sharding, and call it on every process.
    """

    def __init__(
        self,
        parameters,
        sparsity: Union[float, Callable[[int], float]],
        scope: str = "global",
        mask_format: str = "bits",
        scores=None,
    ):
        targets = _targets(parameters)
        # sharded: every process checks, then all agree, before any collective
        with distributed.agreement(distributed.comm_for_dtensors([getattr(m, n, None) for m, n, _ in targets])):
            self._grouped = _grouped_scope(scope)
            if scores is not None and (self._grouped is None or not callable(getattr(scores, "scores", None))):
                raise ValueError(
                    "MagnitudePruner: scores= takes an object with scores(module, name) (pruneext.ActivationNorms) "
                    "and a 'row' or N:M scope"
                )
            if mask_format not in lean_masks.FORMATS:
                raise ValueError(
                    f"MagnitudePruner: unknown mask_format {mask_format!r}; choose one of {lean_masks.FORMATS}"
                )
            self.schedule = sparsity if callable(sparsity) else Constant(sparsity)
            params = self._checked(targets, scope)
            self._check_groups(params, [label for _, _, label in targets])
            first = self._sparsity_at(0)
        self.sharded = is_dtensor(params[0])
        self.scope, self.mask_format, self.scores = scope, mask_format, scores
        self.targets = [(m, n) for m, n, _ in targets]
        self.labels = [label for _, _, label in targets]
        self.params = params
        self._masks = lean_masks.new_masks(mask_format, [_local(p) for p in params])
        self.pruned = [0] * len(params)  # zero entries of each weight's mask (its local shard's)
        self.step_count = 0
        self.sparsity = 0.0  # the sparsity the masks were last pruned to
        self._index = {(id(m), n): j for j, (m, n) in enumerate(self.targets)}
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_hook(j)) for j, p in enumerate(params)]
        self._prune_to(first)

    # ------------------------------------------------------------ training

    def step(self):
        """After optimizer.step(): re-zero the pruned weights, advance the
        schedule by one step and, if its sparsity grew, prune to it."""
        self._check_live()
        target = self._sparsity_at(self.step_count + 1)
        self.step_count += 1
        if target > self.sparsity:
            self._prune_to(target)  # (re-zeroes first)
        else:
            self.apply()

    @torch.no_grad()
    def apply(self):
        """Zero every pruned weight in place (one pass per dtype and device)."""
        self._check_live()
        for index in self._groups():
            self._masks.apply([_local(self.params[j]).detach() for j in index], index)

    def mask(self, module, name="weight"):
        """The current mask of module.name: a bool tensor of its shape
        (True where kept)."""
        j = self._index.get((id(module), name))
        if j is None:
            raise KeyError(f"MagnitudePruner: {type(module).__name__}.{name} is not pruned by this pruner")
        p = self.params[j]
        local = self._masks.as_bool(j, _local(p).shape)
        if is_dtensor(p):  # this process's shard of the mask, as the parameter's
            return DTensor.from_local(
                local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
            )
        return local

    # --------------------------------------------------------------- state

    def state_dict(self):
        """The step, the sparsity reached and the masks (in the order the
        parameters were given); no parameter values. Sharded parameters: the
        masks of this process's shards (load them on the same sharding)."""
        return {
            "step": self.step_count,
            "sparsity": self.sparsity,
            "scope": self.scope,
            "mask_format": self.mask_format,
            "names": list(self.labels),
            "masks": [m.clone() for m in self._masks.masks],
        }

    @torch.no_grad()
    def load_state_dict(self, state):
        """Restore masks, step and sparsity, and zero the weights the masks
        prune. Checked in full before anything changes."""
        self._check_live()
        with distributed.agreement(self._comm()):  # no process loads alone
            self._check_state(state)
        for own, m in zip(self._masks.masks, state["masks"]):
            own.copy_(m.to(own.device))
        self.pruned = [self._masks.pruned_count(j, _local(p).numel()) for j, p in enumerate(self.params)]
        self.step_count, self.sparsity = int(state["step"]), _fraction(state["sparsity"], "sparsity")
        self.apply()

    def _check_state(self, state):
        for key in ("step", "sparsity", "mask_format", "masks"):
            if key not in state:
                raise KeyError(f"MagnitudePruner.load_state_dict: missing {key!r}")
        if state["mask_format"] != self.mask_format:
            raise ValueError(
                f"MagnitudePruner.load_state_dict: masks are {state['mask_format']!r}, this pruner keeps {self.mask_format!r}"
            )
        masks = list(state["masks"])
        if len(masks) != len(self.params):
            raise ValueError(f"MagnitudePruner.load_state_dict: {len(masks)} masks for {len(self.params)} parameters")
        for j, (m, p) in enumerate(zip(masks, self.params)):
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"MagnitudePruner.load_state_dict: mask {j} is not a tensor")
            self._masks.check_state(j, m, _local(p))
        _fraction(state["sparsity"], "sparsity")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"MagnitudePruner.load_state_dict: bad step {step!r}")

    def remove(self):
        """Stop pruning: remove the gradient hooks and drop the masks. The
        weights keep their zeros (they are the model's own values)."""
        for h in self._hooks:
            h.remove()
        self._hooks, self._masks = [], None

    # ------------------------------------------------------------ internal

    @staticmethod
    def _checked(targets, scope):
        params = [_parameter(m, n, label) for m, n, label in targets]
        seen = {}
        for p, (_, _, label) in zip(params, targets):
            if id(p) in seen:
                raise ValueError(f"MagnitudePruner: {label} is listed twice (as {seen[id(p)]})")
            seen[id(p)] = label
        if len({is_dtensor(p) for p in params}) > 1:
            raise ValueError("MagnitudePruner: the parameters mix DTensors and plain tensors; shard all of them or none")
        if scope == "global" and len({(p.dtype, p.device) for p in params}) > 1:
            raise ValueError(
                "MagnitudePruner: scope='global' ranks all weights in one dtype on one device; "
                "these have several (use scope='layer', or one pruner per dtype)"
            )
        return params

    def _check_live(self):
        if self._masks is None:
            raise RuntimeError("MagnitudePruner: remove() was called; this pruner no longer prunes")
        for (m, n), p, label in zip(self.targets, self.params, self.labels):
            if m._parameters.get(n) is not p:
                # (fully_shard after the pruner, load_state_dict(assign=True), ...)
                raise RuntimeError(
                    f"MagnitudePruner: {label} is no longer the parameter this pruner was built on; "
                    "build the pruner after the model's parameters are final (after fully_shard)"
                )

    def _check_groups(self, params, labels):
        """A grouped scope's shapes and shards, before anything is pruned."""
        if self._grouped is None:
            return
        for p, label in zip(params, labels):
            if self._grouped != "row" and (p.dim() == 0 or p.shape[-1] % self._grouped[1]):
                n, m = self._grouped
                raise ValueError(
                    f"MagnitudePruner: {label} of shape {tuple(p.shape)}: {n}:{m} needs a last dimension divisible by {m}"
                )
            if is_dtensor(p):
                selection.check_whole_groups(p)

    def _comm(self):
        return distributed.comm_for_dtensors(self.params) if self.sharded else None

    def _sparsity_at(self, step):
        return _fraction(self.schedule(step), f"sparsity at step {step}")

    def _groups(self):
        """Indices of the weights by (dtype, device), first-seen order."""
        groups = {}
        for j, p in enumerate(self.params):
            groups.setdefault((p.dtype, p.device), []).append(j)
        return list(groups.values())

    def _grad_hook(self, j):
        def hook(p):
            if p.grad is None or self._masks is None:
                return
            with torch.no_grad():
                g = _local(p.grad)  # (FSDP2 runs this hook on the sharded gradient)
                # the ops write in place in row-major order
                work = g if g.is_contiguous() else g.contiguous()
                self._masks.apply([work], [j])
                if work is not g:
                    g.copy_(work)

        return hook

    @torch.no_grad()
    def _prune_to(self, sparsity):
        """Prune among the alive entries until `sparsity` of the entries in
        scope are zero (round(s * n), as torch's amount)."""
        self.apply()  # the selection relies on pruned weights being +0
        n = len(self.params)
        if self._grouped is not None:
            self._prune_groups(sparsity)
            self.apply()
            self.sparsity = max(self.sparsity, sparsity)
            return
        for index in [list(range(n))] if self.scope == "global" else [[j] for j in range(n)]:
            total = sum(self.params[j].numel() for j in index)  # (a DTensor's: the unsharded count)
            self._prune_group(index, total - round(sparsity * total))
        self.sparsity = max(self.sparsity, sparsity)

    def _prune_groups(self, sparsity):
        """The grouped scopes: every row to round(sparsity * its length)
        zeros, or the first round(sparsity * len) weights to N:M; each
        weight's mask grows by the grouped select among its alive entries."""
        if self._grouped == "row":
            todo = range(len(self.params))
        else:
            todo = range(round(sparsity * len(self.params)))
        for j in todo:
            weight = _local(self.params[j]).detach()
            _, length = _rows(weight)
            length = max(length, 1)  # (an empty shard: groups of 1, none of them)
            if self._grouped == "row":
                size, k = length, round(sparsity * length)
            else:
                size, k = self._grouped[1], self._grouped[0]
            ranked = weight if self.scores is None else _local(self.scores.scores(*self.targets[j]))
            alive = self._masks.as_bool(j, weight.shape)
            keep = selection.grouped_mask(ranked, max(size, 1), k, alive, among_alive=True)
            self._masks.assign(j, keep)
            self.pruned[j] = weight.numel() - int(keep.sum())

    def _prune_group(self, index, keep):
        """Prune the alive entries of the weights at `index` down to `keep`
        (of the unsharded weights, when sharded)."""
        def k_of_alive(alive):
            return max(0, alive - keep)

        if self.sharded:
            params = [self.params[j] for j in index]
            counts = distributed.prune_weights_in_place(params, self._masks, index, self.pruned, k_of_alive)
        else:
            alive = sum(self.params[j].numel() - self.pruned[j] for j in index)
            if alive <= keep:
                return
            weights = [self.params[j].detach() for j in index]
            inputs = self._masks.selection_input(weights, index, self.pruned, weights[0].dtype)
            counts = select_loop.select(inputs, k_of_alive, alive=alive)
        for j, c in zip(index, counts.tolist()):
            self.pruned[j] += int(c)
