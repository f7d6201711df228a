"""Shared fixtures: the backends to test, and tensors without ties."""
import os

import pytest
import torch

# Without a GPU, run the Triton backend's kernels on CPU tensors under the
# Triton interpreter: @triton.jit reads this when pruneext is imported below.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pruneext  # noqa: E402
from pruneext import backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device_type):
    """Backends registered here that serve tensors on `device_type`."""
    return [name for name in backends.available_backends() if device_type in backends._registry[name].devices]


BACKEND_DEVICE_PAIRS = [(name, dev) for dev in DEVICES for name in backends_for(dev)]


@pytest.fixture(params=BACKEND_DEVICE_PAIRS, ids=[f"{b}-{d}" for b, d in BACKEND_DEVICE_PAIRS])
def backend_device(request):
    """(backend name, device) for every backend that can run here, in force."""
    name, device = request.param
    with pruneext.use_backend(name):
        yield name, device


def distinct_magnitudes(*shape, dtype=torch.float32, device="cpu", seed=0):
    """A tensor whose |values| are all different (a random permutation of
    1..n, signs random), so every correct L1 mask is the same mask."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    if dtype in (torch.float16, torch.bfloat16):
        # distinct representable magnitudes: spread over the exponent range
        limit = 5000 if dtype == torch.float16 else 1000
        assert n <= limit, "too many elements for distinct 16-bit magnitudes"
        pool = torch.arange(1, 30000, dtype=torch.float32).to(dtype).unique()
        vals = pool[torch.randperm(pool.numel(), generator=g)[:n]].float()
    else:
        vals = torch.randperm(n, generator=g).float() + 1.0
    signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    return (vals * signs).reshape(shape).to(device=device, dtype=dtype)
