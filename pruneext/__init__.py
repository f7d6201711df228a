"""pruneext: magnitude pruning on fast kernels, a drop-in for torch.nn.utils.prune.

    import pruneext as prune
    prune.l1_unstructured(model.fc, "weight", amount=0.5)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.2)

The masks come from radix-select kernels (C++ on CPU, CUDA, Triton) chosen
per device by pruneext.backends; see README.md for what differs from torch.
"""
from . import backends  # noqa: F401  (loads _C and registers the backends)
from . import ops
from .backends import available_backends, get_backend, set_backend, use_backend
from .functional import (
    custom_from_mask,
    global_unstructured,
    identity,
    is_pruned,
    l1_unstructured,
    ln_structured,
    nm_structured,
    random_structured,
    random_unstructured,
    remove,
    row_unstructured,
)
from .methods import (
    BasePruningMethod,
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    NMStructured,
    PruningContainer,
    RandomStructured,
    RandomUnstructured,
    RowUnstructured,
)
from ._info import build_info
from . import schedules
from .pruner import MagnitudePruner
from .activation_norms import ActivationNorms
from .semi_structured import to_semi_structured
from .patch import patch_torch, unpatch_torch

# torch.nn.utils.prune's module-level helpers, which code and test suites
# written against it call (prune._compute_nparams_toprune(...)): torch's own
# functions, so names, signatures and errors are torch's by construction.
from torch.nn.utils.prune import (  # noqa: E402,F401
    _compute_nparams_toprune,
    _compute_norm,
    _validate_pruning_amount,
    _validate_pruning_amount_init,
    _validate_pruning_dim,
    _validate_structured_pruning,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationNorms",
    "BasePruningMethod",
    "CustomFromMask",
    "Identity",
    "L1Unstructured",
    "MagnitudePruner",
    "LnStructured",
    "NMStructured",
    "PruningContainer",
    "RandomStructured",
    "RandomUnstructured",
    "RowUnstructured",
    "available_backends",
    "build_info",
    "custom_from_mask",
    "get_backend",
    "global_unstructured",
    "identity",
    "is_pruned",
    "l1_unstructured",
    "ln_structured",
    "nm_structured",
    "ops",
    "patch_torch",
    "random_structured",
    "random_unstructured",
    "remove",
    "row_unstructured",
    "schedules",
    "set_backend",
    "to_semi_structured",
    "unpatch_torch",
    "use_backend",
]
