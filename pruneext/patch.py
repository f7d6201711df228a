"""`pruneext.patch_torch()`: torch.nn.utils.prune's L1 entry points on
pruneext's kernels, for code that never imports pruneext.

Libraries that prune through `torch.nn.utils.prune` themselves (Lightning's
`ModelPruning`, training scripts, test suites) look its names up on the
module: `pytorch_prune.global_unstructured(params,
pruning_method=pytorch_prune.L1Unstructured, amount=...)`. So, as
Liger-Kernel's `apply_liger_kernel_to_llama()` swaps classes in a
transformers module, `patch_torch()` swaps three attributes of torch's
module for pruneext's:

    L1Unstructured       pruneext.L1Unstructured (a subclass of torch's: the
                         hooks it makes pass isinstance against either class)
    l1_unstructured      pruneext.l1_unstructured
    global_unstructured  pruneext's no-concatenation path when pruning_method
                         is L1Unstructured (pruneext's class or torch's own),
                         torch's own function for every other method

Nothing else in the module changes. In particular `PruningContainer` stays
torch's: an L1 step on a pruned parameter goes through L1Unstructured.apply,
which is pruneext's and builds pruneext's container (the kernel skips the
pruned entries itself); replacing torch's container class would also change
the containers torch's other methods (RandomUnstructured, LnStructured, ...)
build when they re-prune, which must stay torch's.

What a patch cannot reach: an object copied out of the module before the
patch keeps what it was. `from torch.nn.utils.prune import L1Unstructured`
run earlier keeps torch's class (its `apply` and `compute_mask` are
torch's), an earlier `from ... import global_unstructured` keeps torch's
concatenating function. Two such copies route anyway, because what they
call is looked up at call time: torch's own `l1_unstructured` (it calls the
module's `L1Unstructured.apply`, now pruneext's), and torch's original
`L1Unstructured` class passed to the patched `global_unstructured` (what
Lightning does: it captures the class in a dict when it is imported).
"""
import threading

from torch.nn.utils import prune as _torch_prune

from . import functional, methods

# torch's own objects, as pruneext found them at import (pruneext subclasses
# this L1Unstructured, so it is torch's class even if the module is patched
# later): the patched global_unstructured routes this class too and calls
# this function for every other method.
_TORCH_L1_UNSTRUCTURED = _torch_prune.L1Unstructured
_TORCH_GLOBAL_UNSTRUCTURED = _torch_prune.global_unstructured
assert issubclass(methods.L1Unstructured, _TORCH_L1_UNSTRUCTURED)

# The L1 classes whose global pruning pruneext's kernel computes. Only these
# two, by identity: a subclass may have its own rule and goes to torch.
_ROUTED_METHODS = (methods.L1Unstructured, _TORCH_L1_UNSTRUCTURED)


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs):
    """torch.nn.utils.prune.global_unstructured under pruneext.patch_torch():
    with pruning_method L1Unstructured (pruneext's or torch's class), the
    parameters are ranked by pruneext's global kernel, without
    concatenating them (pruneext.global_unstructured); with any other
    method, torch's own global_unstructured runs, unchanged."""
    if any(pruning_method is routed for routed in _ROUTED_METHODS):
        return functional.global_unstructured(
            parameters, pruning_method, importance_scores=importance_scores, **kwargs
        )
    return _TORCH_GLOBAL_UNSTRUCTURED(parameters, pruning_method, importance_scores=importance_scores, **kwargs)


# name in torch.nn.utils.prune -> what patch_torch() puts there
_REPLACEMENTS = {
    "L1Unstructured": methods.L1Unstructured,
    "l1_unstructured": functional.l1_unstructured,
    "global_unstructured": global_unstructured,
}

_lock = threading.Lock()
# name -> the object torch's module held when patch_torch() replaced it,
# which unpatch_torch() puts back (the very object, not an equal one)
_saved = {}


def is_torch_patched():
    """Whether torch.nn.utils.prune holds pruneext's objects (all three)."""
    return all(getattr(_torch_prune, name, None) is ours for name, ours in _REPLACEMENTS.items())


def _patch_locked():
    for name, ours in _REPLACEMENTS.items():
        current = getattr(_torch_prune, name)
        if current is not ours:  # so patching twice never saves ours as the original
            _saved[name] = current
            setattr(_torch_prune, name, ours)


def unpatch_torch():
    """Put back in torch.nn.utils.prune the objects patch_torch() replaced
    (the same objects: `torch.nn.utils.prune.L1Unstructured is` torch's
    class again). Harmless when not patched. An attribute someone else has
    replaced since the patch is left as they set it. Pruning hooks made
    while patched stay pruneext's objects and keep working."""
    with _lock:
        for name, ours in _REPLACEMENTS.items():
            original = _saved.pop(name, None)
            if original is not None and getattr(_torch_prune, name) is ours:
                setattr(_torch_prune, name, original)


class TorchPatch:
    """What patch_torch() returns: the patch is already in force; used as a
    context manager, it puts back on exit (also when the block raises) the
    state found on entry, so a block inside a patched program leaves it
    patched."""

    def __init__(self, was_patched):
        self._was_patched = was_patched

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if not self._was_patched:
            unpatch_torch()
        return False  # an exception of the block propagates

    def __repr__(self):
        return f"<pruneext.TorchPatch, torch.nn.utils.prune patched: {is_torch_patched()}>"


def patch_torch():
    """Make torch.nn.utils.prune's L1Unstructured, l1_unstructured and
    global_unstructured(..., pruning_method=L1Unstructured) run pruneext's
    kernels, for every caller, including code that never imports pruneext.

        pruneext.patch_torch()              # for the process, until unpatch_torch()
        with pruneext.patch_torch():        # for a block
            ...

    Idempotent: patching twice changes nothing more, and one unpatch_torch()
    restores torch's objects. Everything else in torch.nn.utils.prune is
    torch's. Errors are torch's (types and messages) except those pruneext
    documents as different on purpose (README, "Errors")."""
    with _lock:
        was_patched = is_torch_patched()
        _patch_locked()
    return TorchPatch(was_patched)
