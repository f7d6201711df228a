"""Property tests (hypothesis) on every backend: random shapes (empty and
1-element included), dtypes, strides, amounts (0, 1, n, n+1, fractions),
heavy ties, NaN / +-inf / -0.0 and previous masks.

On tie-free data the mask must be torch.nn.utils.prune's; on any data the
count must be exactly k and the mask that of the numpy oracle (ties by
lowest flat index), identical across backends."""
import math

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.utils.prune as torch_prune
from hypothesis import HealthCheck, given, settings

import pruneext
from pruneext import backends
from test_ops import oracle

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SPECIALS = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1.0, -1.0, 0.5]


@pytest.fixture(autouse=True)
def triton_windows_from_64_entries(monkeypatch):
    """The Triton backend's sampled window (a sample of 32) from 64 entries:
    the smaller draws take its plain radix passes, the others the window."""
    if "triton" in backends.available_backends():
        from pruneext.backends.triton import select, window

        monkeypatch.setattr(select, "WINDOW_MIN", 64)
        monkeypatch.setattr(window, "SAMPLE", 32)


@st.composite
def tensors(draw, max_numel=600):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
    numel = math.prod(shape)
    if numel > max_numel:
        shape, numel = (numel % max_numel,), numel % max_numel
    dtype = draw(st.sampled_from(DTYPES))
    style = draw(st.sampled_from(["random", "quantized", "specials"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if style == "random":
        x = torch.randn(numel, generator=g, dtype=torch.float64)
    elif style == "quantized":
        x = torch.randint(-3, 4, (numel,), generator=g).double() / 2
    else:
        pick = torch.randint(0, len(SPECIALS), (numel,), generator=g)
        x = torch.tensor(SPECIALS, dtype=torch.float64)[pick]
    x = x.to(dtype).reshape(shape)
    if draw(st.booleans()) and x.dim() >= 2:
        x = x.transpose(0, -1)  # non-contiguous
    return x


def amounts(n):
    return st.one_of(
        st.sampled_from([0, 1, n, n + 1, 0.0, 1.0]),
        st.integers(0, n + 1),
        st.floats(0.0, 1.0, allow_nan=False),
    )


@SETTINGS
@given(data=st.data())
def test_l1_mask_matches_oracle_on_every_backend(data):
    x = data.draw(tensors())
    n = x.numel()
    k = data.draw(st.integers(0, n))
    use_mask = data.draw(st.booleans())
    mask = None
    among_alive = False
    if use_mask:
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
        mask = (torch.rand(x.shape, generator=g) > 0.3).to(x.dtype)
        among_alive = data.draw(st.booleans())
        if among_alive:
            k = min(k, int((mask == 1).sum()))
    expected = oracle([x], k, None if mask is None else [mask], among_alive)[0]
    for name in backends.available_backends():
        if "cpu" not in backends._registry[name].devices:
            continue
        with pruneext.use_backend(name):
            got = pruneext.ops.l1_mask(x, k, default_mask=mask, among_alive=among_alive)
        assert got.shape == x.shape and got.is_contiguous(), name
        assert torch.equal(got, expected), name


@SETTINGS
@given(data=st.data())
def test_l1_unstructured_is_torchs_on_tie_free_data(data):
    n = data.draw(st.integers(1, 300))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    values = (torch.randperm(n, generator=g).double() + 1) * (torch.randint(0, 2, (n,), generator=g) * 2 - 1)
    amount = data.draw(amounts(n))
    ours, theirs = torch.nn.Linear(n, 1).to(dtype), torch.nn.Linear(n, 1).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(values.reshape(1, n))
        theirs.weight.copy_(values.reshape(1, n))
    errors = []
    for lib, module in ((pruneext, ours), (torch_prune, theirs)):
        try:
            lib.l1_unstructured(module, "weight", amount)
            errors.append(None)
        except Exception as e:  # both must fail the same way
            errors.append((type(e), str(e)))
    assert errors[0] == errors[1]
    if errors[0] is None:
        assert torch.equal(ours.weight_mask, theirs.weight_mask)


@SETTINGS
@given(data=st.data())
def test_global_exact_count_and_cross_backend_identity(data):
    count = data.draw(st.integers(1, 4))
    xs = [data.draw(tensors(max_numel=200)) for _ in range(count)]
    dtype = xs[0].dtype
    xs = [x.to(dtype) for x in xs]
    total = sum(x.numel() for x in xs)
    k = data.draw(st.integers(0, total))
    expected = oracle(xs, k)
    for name in backends.available_backends():
        if "cpu" not in backends._registry[name].devices:
            continue
        with pruneext.use_backend(name):
            got = pruneext.ops.l1_mask_global(xs, k)
        assert sum(int((g == 0).sum()) for g in got) == k, name
        for g, e in zip(got, expected):
            assert torch.equal(g, e), name
