"""The masked weight written by the mask pass (values_out, pruneext._fused).

Reference: torch itself. At op level `values_out` must be torch's apply_mask
product `mask.to(values.dtype) * values` bit for bit (NaN * 0 = NaN, -x * 0 =
-0.0) on every backend here; at module level the state after
l1_unstructured / global_unstructured must be torch.nn.utils.prune's, values
and gradients. Bad outputs raise before anything is written.
"""
import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext
from pruneext import backends

from conftest import backends_for, distinct_magnitudes

_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}
DTYPES = list(_BITS)

# the Triton interpreter multiplies NaN and inf by 0 with numpy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")


def assert_same_bits(got, want):
    """Bit for bit; for bfloat16 NaN payloads excepted (torch's own vector
    and scalar conversions give 0xFFFF and 0x7FC0 for the same NaN)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == torch.bfloat16:
        assert torch.equal(got.isnan(), want.isnan())
        got, want = got.nan_to_num(0.0), want.nan_to_num(0.0)
    assert torch.equal(got.view(_BITS[got.dtype]), want.view(_BITS[want.dtype]))


def special(n, dtype, seed=0):
    """Random values with NaN, +-inf, -0.0 and negatives among them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g).to(dtype)
    x[0::37] = float("nan")
    x[1::41] = float("inf")
    x[2::43] = -float("inf")
    x[3::47] = -0.0
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_out_is_torchs_product(backend_device, dtype):
    _, device = backend_device
    x = special(3000, dtype).to(device)
    out = torch.full_like(x, 7.0)
    mask = pruneext.ops.l1_mask(x, 1700, values_out=out)
    assert_same_bits(out, mask.to(dtype) * x)
    # pruned NaN and inf stay NaN, pruned negatives are -0.0 (torch's NaN * 0)
    pruned = mask == 0
    assert (out[pruned & (x.isnan() | x.isinf())]).isnan().all()
    neg = pruned & (x < 0) & x.isfinite()
    assert torch.equal(torch.signbit(out[neg]), torch.ones(int(neg.sum()), dtype=torch.bool))


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_other_than_the_scores_with_a_default_mask(backend_device, dtype):
    _, device = backend_device
    scores = distinct_magnitudes(40, 25, dtype=dtype, device=device)
    values = special(1000, dtype, seed=1).reshape(40, 25).to(device)
    prev = (torch.rand(40, 25, generator=torch.Generator().manual_seed(2)) > 0.3).to(dtype).to(device)
    out = torch.empty_like(values)
    mask = pruneext.ops.l1_mask(scores, 200, default_mask=prev, among_alive=True, values=values, values_out=out)
    assert torch.equal(mask, pruneext.ops.l1_mask(scores, 200, default_mask=prev, among_alive=True))
    assert_same_bits(out, mask.to(dtype) * values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_out_with_any_mask_factor(backend_device, dtype):
    # A default mask's entries are the factors of torch's product; they are
    # 0 or 1 almost always (the 16-bit CPU write then picks bits instead of
    # multiplying), but any value must give torch's product.
    name, device = backend_device
    if name == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest even, as torch)")
    values = special(1000, dtype, seed=6).to(device)
    factors = torch.tensor([0.0, 1.0, 0.5, -2.0, 3.0, 1.0, 0.0, -0.0, float("inf"), 1e-3], dtype=dtype)
    prev = factors.repeat(100).to(device)
    out = torch.empty_like(values)
    mask = pruneext.ops.l1_mask(values, 300, default_mask=prev, values_out=out)
    assert_same_bits(out, mask.to(dtype) * values)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_values_out_keeps_nan_payloads_as_torch(backend_device, dtype):
    # 1 * NaN and 0 * NaN are that NaN, quieted, as torch's product on this
    # machine gives it (payload and sign kept), for NaNs of any payload.
    _, device = backend_device
    quiet, exp = (0x0200, 0x7C00) if dtype == torch.float16 else (0x0040, 0x7F80)
    payloads = torch.tensor([exp | 1, exp | quiet | 5, 0x8000 | exp | 3, 0x8000 | exp | quiet], dtype=torch.int32)
    payloads = payloads.to(torch.uint16).view(torch.int16)
    values = torch.randn(4000, generator=torch.Generator().manual_seed(7)).to(dtype)
    values.view(torch.int16)[::10] = payloads.repeat(100)
    values = values.to(device)
    out = torch.empty_like(values)
    mask = pruneext.ops.l1_mask(values, 2000, values_out=out)
    want = mask.to(dtype) * values
    if dtype == torch.float16:  # (bfloat16 NaN payloads differ within torch itself: assert_same_bits)
        assert torch.equal(out.view(torch.int16), want.view(torch.int16))
    assert_same_bits(out, want)


@pytest.mark.parametrize("k", [0, 1, 7, 400])
def test_global_values_out(backend_device, k):
    _, device = backend_device
    scores = [special(300, torch.float32, seed=3).reshape(20, 15).to(device), special(200, torch.float32, seed=4).to(device)]
    prev = [None, (torch.arange(200) % 3 != 0).float().to(device)]
    outs = [torch.empty_like(s) for s in scores]
    masks = pruneext.ops.l1_mask_global(scores, k, prev, among_alive=True, values_out=outs)
    for want, got in zip(pruneext.ops.l1_mask_global(scores, k, prev, among_alive=True), masks):
        assert torch.equal(want, got)
    for out, mask, s in zip(outs, masks, scores):
        assert_same_bits(out, mask.to(s.dtype) * s)


@pytest.mark.parametrize("n", [1 << 19, 3 * (1 << 18) + 5])
def test_cpu_first_pass_write_and_ties(n):
    # Above 2^18 entries the CPU select samples a window and its first pass
    # writes the outputs; heavy ties (few distinct magnitudes) and a cut
    # through them must still give exactly k, lowest index first.
    g = torch.Generator().manual_seed(5)
    for x in (torch.randn(n, generator=g), torch.randint(-40, 40, (n,), generator=g).float()):
        for k in (1, n // 3, n - 1):
            out = torch.empty_like(x)
            with pruneext.use_backend("cpu"):
                mask = pruneext.ops.l1_mask(x, k, values_out=out)
            with pruneext.use_backend("torch"):
                assert torch.equal(mask, pruneext.ops.l1_mask(x, k))
            assert_same_bits(out, mask * x)


def _sentinel(like, **kw):
    return torch.full(like.shape, 3.0, dtype=kw.get("dtype", like.dtype), device=kw.get("device", like.device))


BAD_OUTPUTS = {
    "shape": (lambda x: _sentinel(x[:-1]), RuntimeError, "shape"),
    "dtype": (lambda x: _sentinel(x, dtype=torch.float64), TypeError, "dtype"),
    "device": (lambda x: _sentinel(x, device="meta"), RuntimeError, "meta"),
    "non_contiguous": (lambda x: _sentinel(torch.empty(x.shape[1], x.shape[0])).t(), RuntimeError, "contiguous"),
    "overlaps_scores": (lambda x: x, RuntimeError, "memory|overlap"),
}


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS), ids=list(BAD_OUTPUTS))
def test_bad_values_out_raises_before_writing(backend_device, bad):
    _, device = backend_device
    make, error, match = BAD_OUTPUTS[bad]
    x = distinct_magnitudes(6, 5, device=device)
    before = x.clone()
    out = make(x)
    kept = out.clone() if not out.is_meta else None
    with pytest.raises(error, match=match):
        pruneext.ops.l1_mask(x, 3, values_out=out)
    assert torch.equal(x, before)
    if kept is not None:
        assert torch.equal(out, kept)


def test_other_bad_arguments(backend_device):
    _, device = backend_device
    x = distinct_magnitudes(6, 5, device=device)
    with pytest.raises(ValueError, match="without values_out"):
        pruneext.ops.l1_mask(x, 3, values=x)
    # a default mask must have values' dtype (its bits are the factor)
    out = torch.zeros_like(x)
    with pytest.raises(TypeError, match="default mask"):
        pruneext.ops.l1_mask(x, 3, default_mask=torch.ones(6, 5, dtype=torch.bool, device=device), values_out=out)
    assert not out.any()
    with pytest.raises(TypeError, match="values must be"):
        pruneext.ops.l1_mask(x, 3, values=x.to(torch.int32), values_out=out.to(torch.int32))
    with pytest.raises(ValueError, match="one values and one values_out"):
        pruneext.ops.l1_mask_global([x, x], 3, values_out=[out])


# ---------------------------------------------------------------- module level


def _pair(shape=(24, 17), dtype=torch.float32, seed=0, specials=False):
    """A Linear and its copy, with distinct magnitudes, across seeds too for
    float32 (and, with specials, a NaN, infs and -0.0 that torch ranks like
    pruneext)."""
    a = torch.nn.Linear(shape[1], shape[0]).to(dtype)
    with torch.no_grad():
        if dtype == torch.float32:
            a.weight.copy_(distinct_magnitudes(*shape, seed=seed) * 8 + seed)
        else:
            a.weight.copy_(distinct_magnitudes(*shape, dtype=dtype, seed=seed))
        if specials:
            a.weight[0, :3] = torch.tensor([-float("inf"), -0.0, float("nan")])
    return a, copy.deepcopy(a)


def assert_module_state(theirs, ours, name="weight"):
    assert torch.equal(getattr(theirs, name + "_mask"), getattr(ours, name + "_mask"))
    got, want = getattr(ours, name), getattr(theirs, name)
    assert got.dtype == want.dtype and got.device == want.device and not got.is_leaf
    assert_same_bits(got.detach(), want.detach())


def _backward(a, b, name="weight"):
    x = torch.randn(5, a.in_features, generator=torch.Generator().manual_seed(9)).to(a.weight_orig.dtype)
    # the committed attribute itself, as torch's, carries the gradient
    (getattr(a, name) * 3).sum().backward()
    (getattr(b, name) * 3).sum().backward()
    assert torch.equal(getattr(a, name + "_orig").grad, getattr(b, name + "_orig").grad)
    a(x).sum().backward()
    b(x).sum().backward()
    assert torch.equal(getattr(a, name + "_orig").grad, getattr(b, name + "_orig").grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l1_unstructured_then_again_is_torchs(dtype):
    a, b = _pair(dtype=dtype, specials=True)
    torch_prune.l1_unstructured(a, "weight", 0.5)
    pruneext.l1_unstructured(b, "weight", 0.5)
    assert type(b.weight.grad_fn).__name__ == "MaskProductBackward"  # the fused path
    assert_module_state(a, b)
    assert_same_bits(copy.deepcopy(b).weight, b.weight.detach())  # pytorch#37322 stays fixed
    _backward(a, b)
    torch_prune.l1_unstructured(a, "weight", 0.3)
    pruneext.l1_unstructured(b, "weight", 0.3)
    assert type(b.weight.grad_fn).__name__ == "MaskProductBackward"
    assert_module_state(a, b)
    _backward(a, b)
    # forwards recompute the attribute with apply_mask, as torch's hook does
    b(torch.randn(1, b.in_features).to(dtype))
    assert type(b.weight.grad_fn).__name__ == "MulBackward0"


def test_importance_scores_are_torchs():
    a, b = _pair()
    scores = distinct_magnitudes(24, 17, seed=3)
    for s in (scores, scores.double()):
        torch_prune.l1_unstructured(a, "weight", 0.25, importance_scores=s)
        pruneext.l1_unstructured(b, "weight", 0.25, importance_scores=s)
        assert_module_state(a, b)
    _backward(a, b)


def test_global_unstructured_is_torchs():
    pairs = [_pair(seed=s) for s in range(1, 4)]
    for amount in (0.4, 0.3):
        torch_prune.global_unstructured([(a, "weight") for a, _ in pairs], torch_prune.L1Unstructured, amount=amount)
        pruneext.global_unstructured([(b, "weight") for _, b in pairs], pruneext.L1Unstructured, amount=amount)
        for a, b in pairs:
            assert type(b.weight.grad_fn).__name__ == "MaskProductBackward"
            assert_module_state(a, b)
    for a, b in pairs:
        _backward(a, b)


def test_unfusable_cases_keep_torchs_product():
    # a non-contiguous parameter (torch's own l1_unstructured cannot take
    # one: .view(-1)), and a non-L1 method in the container
    a, b = _pair()
    b.weight = torch.nn.Parameter(b.weight.detach().t().contiguous().t())
    torch_prune.l1_unstructured(a, "weight", 0.5)
    pruneext.l1_unstructured(b, "weight", 0.5)
    assert type(b.weight.grad_fn).__name__ == "MulBackward0"
    assert_module_state(a, b)
    torch_prune.random_unstructured(a, "weight", 0.0)
    pruneext.random_unstructured(b, "weight", 0.0)
    assert_module_state(a, b)


def test_no_grad_and_frozen_parameters_as_torch():
    a, b = _pair()
    for m in (a, b):
        m.weight.requires_grad_(False)
    torch_prune.l1_unstructured(a, "weight", 0.5)
    pruneext.l1_unstructured(b, "weight", 0.5)
    assert b.weight.grad_fn is None and a.weight.grad_fn is None
    a, b = _pair()
    with torch.no_grad():
        torch_prune.l1_unstructured(a, "weight", 0.5)
        pruneext.l1_unstructured(b, "weight", 0.5)
    assert b.weight.grad_fn is None and a.weight.grad_fn is None
    assert_same_bits(b.weight, a.weight)


def test_failed_fused_commit_leaves_module_intact(monkeypatch):
    from pruneext import _fused

    _, b = _pair()
    before = {k: v.clone() for k, v in b.state_dict().items()}

    def boom(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(_fused, "pruned", boom)
    with pytest.raises(RuntimeError, match="boom"):
        pruneext.l1_unstructured(b, "weight", 0.5)
    assert set(b.state_dict()) == set(before) and "weight" in b._parameters
    assert not b._forward_pre_hooks


# ---------------------------------------------------------------- opcheck


TRITON = "triton" in backends.available_backends() and "cpu" in backends_for("cpu")


@pytest.mark.skipif(not TRITON, reason="triton backend not available here")
def test_triton_opcheck_with_values():
    x = distinct_magnitudes(9, 7)
    mask = (torch.rand(9, 7, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    torch.library.opcheck(torch.ops.pruneext.l1_mask_into_triton.default, (x, 10, mask, True, x, torch.empty_like(x)))
    torch.library.opcheck(
        torch.ops.pruneext.l1_mask_global_into_triton.default,
        ([x, x[:2]], 20, [mask, None], True, [torch.empty_like(x), torch.empty(2, 7)], [], [torch.empty_like(x), torch.empty(2, 7)]),
    )


# ---------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("name", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_values_out_is_torchs_product(name, dtype):
    if name not in backends.available_backends():
        pytest.skip(f"{name} backend not available: {backends.unavailable_backends().get(name)}")
    for n in (3000, 3 << 20):  # both sides of the sampled window
        x = special(n, dtype).cuda()
        prev = (torch.rand(n, generator=torch.Generator().manual_seed(3)) > 0.2).to(dtype).cuda()
        with pruneext.use_backend(name):
            out = torch.empty_like(x)
            mask = pruneext.ops.l1_mask(x, n // 2, values_out=out)
            assert_same_bits(out, mask.to(dtype) * x)
            out = torch.empty_like(x)
            mask = pruneext.ops.l1_mask(x, n // 4, default_mask=prev, among_alive=True, values_out=out)
            assert_same_bits(out, mask * x)
            outs = [torch.empty_like(x), torch.empty_like(x[:77])]
            masks = pruneext.ops.l1_mask_global([x, x[:77]], n // 3, values_out=outs)
            for o, m, s in zip(outs, masks, [x, x[:77]]):
                assert_same_bits(o, m * s)
        with pruneext.use_backend("cpu"):
            assert torch.equal(mask.cpu(), pruneext.ops.l1_mask(x.cpu(), n // 4, default_mask=prev.cpu(), among_alive=True))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_gpu_module_state_is_torchs():
    a, b = _pair()
    a, b = a.cuda(), b.cuda()
    torch_prune.l1_unstructured(a, "weight", 0.5)
    pruneext.l1_unstructured(b, "weight", 0.5)
    assert_module_state(a, b)
    (a.weight.sum() + b.weight.sum()).backward()
    assert torch.equal(a.weight_orig.grad, b.weight_orig.grad)
