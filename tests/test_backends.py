"""Choosing a backend: names, the context manager, the environment variable,
errors for impossible choices, and opcheck on every native op."""
import os
import subprocess
import sys

import pytest
import torch

import pruneext
from pruneext import backends, ops


def test_torch_backend_always_available():
    assert "torch" in pruneext.available_backends()
    assert pruneext.get_backend() in ("auto",) + backends.KNOWN


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="choose one of: auto, torch, cpu, cuda, triton"):
        pruneext.set_backend("tpu")
    with pytest.raises(ValueError):
        with pruneext.use_backend("fast"):
            pass


def test_context_manager_restores():
    before = pruneext.get_backend()
    with pruneext.use_backend("torch"):
        assert pruneext.get_backend() == "torch"
    assert pruneext.get_backend() == before


def test_set_backend_then_auto():
    try:
        pruneext.set_backend("torch")
        assert pruneext.get_backend() == "torch"
        assert backends.resolve("cpu", torch.float32).name == "torch"
    finally:
        pruneext.set_backend(None)
    assert pruneext.get_backend() == "auto"


def test_auto_picks_kernel_for_cpu_floats():
    expected = "cpu" if "cpu" in pruneext.available_backends() else "torch"
    assert backends.resolve("cpu", torch.float32).name == expected


def test_auto_ranks_integer_scores_on_the_kernels():
    expected = "cpu" if "cpu" in pruneext.available_backends() else "torch"
    assert backends.resolve("cpu", torch.int32).name == expected
    x = torch.tensor([[5, -1, 3], [-2, 0, 4]], dtype=torch.int32)
    model = torch.nn.Linear(3, 2)
    pruneext.l1_unstructured(model, "weight", 3, importance_scores=x)
    assert model.weight_mask.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]


@pytest.mark.skipif("cpu" not in pruneext.available_backends(), reason="C++ kernels not built")
def test_explicit_backend_refuses_what_it_cannot_serve():
    with pruneext.use_backend("cpu"):
        with pytest.raises(TypeError, match="does not support scores of dtype torch.uint16"):
            ops.l1_mask(torch.ones(3, dtype=torch.uint16), 1)
        with pytest.raises(TypeError, match="does not support masks of dtype torch.complex128"):
            ops.l1_mask(torch.ones(3), 1, torch.ones(3, dtype=torch.complex128))
        with pytest.raises(RuntimeError, match="cannot serve tensors on device 'meta'"):
            ops.l1_mask(torch.ones(3, device="meta"), 1)


def test_unavailable_backend_says_why():
    missing = [name for name in backends.KNOWN if name not in pruneext.available_backends()]
    if not missing:
        pytest.skip("every backend is available here")
    with pruneext.use_backend(missing[0]):
        with pytest.raises(RuntimeError, match="is not available: .+"):
            ops.l1_mask(torch.ones(3), 1)


def test_bool_scores_are_refused_clearly():
    with pytest.raises(TypeError, match="torch.bool"):
        ops.l1_mask(torch.ones(3, dtype=torch.bool), 1)


def test_environment_variable():
    code = "import pruneext; print(pruneext.get_backend())"
    env = dict(os.environ, PRUNEEXT_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"
    env["PRUNEEXT_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown pruneext backend 'bogus'" in bad.stderr


def test_build_info():
    info = pruneext.build_info()
    assert info["running_torch"] == torch.__version__
    assert set(info["backends"]) == set(pruneext.available_backends())
    for name, reason in info["unavailable_backends"].items():
        assert name not in info["backends"] and reason


NATIVE = [d for d in ("cpu", "cuda") if d in pruneext.available_backends()]


@pytest.mark.parametrize("device", NATIVE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_opcheck(device, dtype):
    x = torch.randn(33, 17, dtype=dtype, device=device)
    mask = (torch.rand(33, 17, device=device) > 0.3).to(dtype)
    alive = int((mask == 1).sum())
    samples = [
        (torch.ops.pruneext.l1_mask.default, (x, 100, None, False)),
        (torch.ops.pruneext.l1_mask.default, (x, alive // 2, mask, True)),
        (torch.ops.pruneext.l1_mask.default, (x.t(), 5, mask.t(), False)),
        (torch.ops.pruneext.l1_mask_global.default, ([x, x[:3]], 200, [mask, None], True)),
        # the outputs as parameters: the masked values, and the global .into
        (torch.ops.pruneext.l1_mask.default, (x, alive // 2, mask, True, None, torch.empty_like(x))),
        (torch.ops.pruneext.l1_mask.default, (x, 50, None, False, x.flip(0), torch.empty_like(x))),
        (
            torch.ops.pruneext.l1_mask_global.into,
            ([x, x[:3]], 200, [mask, None], True, [torch.empty_like(mask), torch.empty_like(x[:3])]),
        ),
        (
            torch.ops.pruneext.l1_mask_global.into,
            ([x, x[:3]], 200, [mask, None], True, [torch.empty_like(mask), torch.empty_like(x[:3])], None,
             [torch.empty_like(x), torch.empty_like(x[:3])]),
        ),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("op", ["l1_mask", "l1_mask_global"])
def test_ops_are_tagged_cudagraph_unsafe(op):
    # torch.compile(mode="reduce-overhead") keeps them out of CUDA graphs: the
    # CUDA kernels refuse a capture of a list or of an alive count.
    assert torch.Tag.cudagraph_unsafe in getattr(torch.ops.pruneext, op).default.tags


@pytest.mark.parametrize("device", NATIVE)
def test_ops_trace_under_compile(device):
    x = torch.randn(64, 8, device=device)

    @torch.compile(backend="eager", fullgraph=True)
    def f(t):
        return torch.ops.pruneext.l1_mask(t * 2, 100, None, False)

    assert torch.equal(f(x), torch.ops.pruneext.l1_mask(x * 2, 100, None, False))
