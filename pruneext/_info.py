"""build_info(): what this installation was built against and can run."""
import torch

from . import backends
from .backends import native


def build_info():
    """A dict: versions built against, CUDA archs, and the backends present
    (with the reason each missing one is missing)."""
    try:
        from . import _build_config as config
    except ImportError:
        config = None
    return {
        "pruneext_extension_loaded": native.LOAD_ERROR is None,
        "extension_error": native.LOAD_ERROR,
        "built_with_torch": getattr(config, "TORCH_VERSION", None),
        "built_with_cuda": getattr(config, "CUDA_VERSION", None),
        "cuda_archs": getattr(config, "CUDA_ARCHS", None),
        "running_torch": torch.__version__,
        "running_cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backends": backends.available_backends(),
        # the backends that also have the selection's phase ops (sharded pruning)
        "backends_with_phases": [n for n in backends.available_backends() if backends._registry[n].phases],
        "unavailable_backends": backends.unavailable_backends(),
        "backend_in_force": backends.get_backend(),
    }
