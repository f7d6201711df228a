"""The mask ops on every backend: exact k, ties by lowest flat index, NaN as
the largest magnitude, -0.0 tying +0.0, every dtype and stride, the iterative
and global forms; checked against an independent numpy oracle."""
import numpy as np
import pytest
import torch

import pruneext
from pruneext import backends, ops

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def oracle(tensors, k, masks=None, among_alive=False):
    """Masks by numpy lexsort: (not alive, isnan, |x|, position) ascending."""
    masks = masks or [None] * len(tensors)
    mags, nans, dead, outs = [], [], [], []
    for t, m in zip(tensors, masks):
        a = t.detach().cpu().double().reshape(-1).abs().numpy()
        nans.append(np.isnan(a))
        mags.append(np.where(np.isnan(a), 0.0, a))
        alive = np.ones(a.shape, bool) if (m is None or not among_alive) else (m.cpu().reshape(-1) == 1).numpy()
        dead.append(~alive)
        base = torch.ones(t.shape, dtype=t.dtype) if m is None else m.cpu().clone()
        outs.append(base.contiguous())
    mag, nan, dd = (np.concatenate(x) for x in (mags, nans, dead))
    order = np.lexsort((np.arange(mag.size), mag, nan, dd))[:k]
    assert not dd[order].any(), "k exceeds the alive entries"
    flat = torch.cat([o.reshape(-1) for o in outs])
    flat[torch.from_numpy(order.copy())] = 0
    return [f.reshape(o.shape) for f, o in zip(flat.split([o.numel() for o in outs]), outs)]


def quantized(n, levels, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-levels, levels + 1, (n,), generator=g).float() / 4
    return v.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n,k", [(1, 0), (1, 1), (100, 37), (70_000, 1), (70_000, 35_000), (200_003, 200_003)])
def test_exact_k_ties(backend_device, dtype, n, k):
    _, device = backend_device
    x = quantized(n, 6, dtype, seed=n + k, device=device)
    got = ops.l1_mask(x, k)
    assert got.dtype == dtype and got.device.type == device and got.is_contiguous()
    assert int((got == 0).sum()) == k
    assert torch.equal(got.cpu(), oracle([x], k)[0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_random_values(backend_device, dtype):
    _, device = backend_device
    x = torch.randn(123_457, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    for k in (0, 5, 61_728, 123_456):
        assert torch.equal(ops.l1_mask(x, k).cpu(), oracle([x], k)[0])


def test_all_equal_and_zeros(backend_device):
    _, device = backend_device
    for x in (torch.zeros(300_000, device=device), torch.full((70_001,), -2.5, device=device)):
        k = x.numel() // 3
        got = ops.l1_mask(x, k)
        expected = torch.ones(x.numel())
        expected[:k] = 0  # all tie: the lowest flat indices go first
        assert torch.equal(got.cpu(), expected)


def test_nan_inf_signed_zero(backend_device):
    _, device = backend_device
    x = torch.tensor([float("nan"), 0.0, -0.0, float("inf"), -float("inf"), 1.0, -float("nan"), -1.0, 3.0], device=device)
    for k in range(x.numel() + 1):
        got = ops.l1_mask(x, k).cpu()
        assert torch.equal(got, oracle([x], k)[0]), k
    # 0.0 and -0.0 tie: index 1 goes before index 2
    assert ops.l1_mask(x, 1).cpu().tolist()[1:3] == [0.0, 1.0]
    # NaNs are pruned last, after the infinities
    assert ops.l1_mask(x, 7).cpu()[[0, 6]].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("mask_dtype", sorted(backends.KERNEL_MASK_DTYPES, key=str), ids=str)
@pytest.mark.parametrize("among_alive", [False, True])
def test_default_mask(backend_device, mask_dtype, among_alive):
    _, device = backend_device
    x = quantized(50_000, 40, torch.float32, seed=3, device=device)
    g = torch.Generator().manual_seed(4)
    mask = (torch.rand(50_000, generator=g) > 0.4).to(mask_dtype).to(device)
    k = int((mask == 1).sum()) // 2 if among_alive else 20_000
    got = ops.l1_mask(x, k, default_mask=mask, among_alive=among_alive)
    assert got.dtype == mask_dtype
    assert torch.equal(got.cpu(), oracle([x], k, [mask], among_alive)[0])


def test_non_contiguous_inputs(backend_device):
    _, device = backend_device
    base = quantized(6 * 7 * 8 * 9, 30, torch.float32, seed=5, device=device).reshape(6, 7, 8, 9)
    x = base.permute(0, 2, 3, 1)  # channels_last-like strides
    mask = (torch.arange(base.numel(), device=device) % 5 != 0).float().reshape(6, 8, 9, 7)
    mask_nc = mask.transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous() and not mask_nc.is_contiguous()
    got = ops.l1_mask(x, 500, default_mask=mask_nc, among_alive=True)
    assert got.is_contiguous() and got.shape == x.shape
    assert torch.equal(got.cpu(), oracle([x.contiguous()], 500, [mask], True)[0])


def test_channels_last_weight_module(backend_device):
    _, device = backend_device
    conv = torch.nn.Conv2d(4, 6, 3).to(device=device, memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    pruneext.l1_unstructured(conv, "weight", 0.5)
    expected = oracle([conv.weight_orig.contiguous()], round(0.5 * conv.weight.numel()))[0]
    assert torch.equal(conv.weight_mask.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global(backend_device, dtype):
    _, device = backend_device
    sizes = [(3, 5), (0,), (70_000,), (1,), (40, 40)]
    xs = [quantized(int(np.prod(s)), 9, dtype, seed=i, device=device).reshape(s) for i, s in enumerate(sizes)]
    masks = [None, None, (torch.arange(70_000) % 3 != 0).to(dtype).to(device), None, torch.ones(40, 40, dtype=dtype, device=device)]
    for among_alive in (False, True):
        total = sum(x.numel() for x in xs) if not among_alive else 15 + 70_000 - 23_334 + 1 + 1600
        for k in (0, 1, total // 2, total):
            got = ops.l1_mask_global(xs, k, masks, among_alive=among_alive)
            expected = oracle(xs, k, masks, among_alive)
            assert len(got) == len(xs)
            for g, e in zip(got, expected):
                assert g.shape == e.shape and g.dtype == e.dtype
                assert torch.equal(g.cpu(), e)


def test_global_ties_go_to_earlier_tensors(backend_device):
    _, device = backend_device
    xs = [torch.ones(10, device=device), torch.ones(10, device=device)]
    a, b = ops.l1_mask_global(xs, 15)
    assert int((a == 0).sum()) == 10 and b.cpu().tolist() == [0.0] * 5 + [1.0] * 5


def test_k_too_large_raises(backend_device):
    _, device = backend_device
    x = torch.randn(10, device=device)
    with pytest.raises(RuntimeError, match="exceeds"):
        ops.l1_mask(x, 11)
    mask = torch.tensor([1.0, 0.0] * 5, device=device)
    with pytest.raises(RuntimeError, match="exceeds"):
        ops.l1_mask(x, 6, default_mask=mask, among_alive=True)
    with pytest.raises(RuntimeError, match="exceeds"):
        ops.l1_mask_global([x, x], 21)


def test_shape_mismatch_raises(backend_device):
    _, device = backend_device
    with pytest.raises(RuntimeError, match="does not match"):
        ops.l1_mask(torch.randn(4, 3, device=device), 2, default_mask=torch.ones(3, 5, device=device))


def test_same_numel_mask_of_another_shape_is_torchs_view(backend_device):
    # torch ranks t.view(-1) and zeroes entries of a clone of the mask
    _, device = backend_device
    x = torch.arange(12.0, device=device).reshape(4, 3) - 5.5
    got = ops.l1_mask(x, 4, default_mask=torch.ones(3, 4, device=device))
    assert got.shape == (3, 4)
    assert torch.equal(got.cpu().reshape(-1), oracle([x.reshape(-1)], 4)[0])


LARGE_BACKENDS = [b for b in ("cpu", "cuda") if b in pruneext.available_backends()]


@pytest.mark.parametrize("backend", LARGE_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("among_alive", [False, True])
def test_large_tensors_sampled_window(backend, dtype, among_alive):
    # Past 2^18 entries the CPU kernel guesses a window of keys from a
    # sample and keeps its candidates during the first pass (16-bit keys
    # too, though their one digit needs no later pass).
    device = "cuda" if backend == "cuda" else "cpu"
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(8), dtype=dtype).to(device)
    mask = (torch.arange(1 << 20, device=device) % 3 != 0).to(dtype) if among_alive else None
    alive = int((mask == 1).sum()) if among_alive else x.numel()
    with pruneext.use_backend(backend):
        for k in (1, alive // 10, alive // 2, alive - 1):
            got = ops.l1_mask(x, k, default_mask=mask, among_alive=among_alive)
            expected = oracle([x], k, None if mask is None else [mask], among_alive)[0]
            assert torch.equal(got.cpu(), expected), k


@pytest.mark.parametrize("backend", LARGE_BACKENDS)
def test_large_tensor_where_the_sample_misleads(backend):
    # Every 4096th entry (where an evenly spaced sample looks) is 1.0, the
    # rest spread widely: the guessed window misses and the kernel must fall
    # back to a second pass.
    device = "cuda" if backend == "cuda" else "cpu"
    n = 1 << 20
    x = torch.rand(n, generator=torch.Generator().manual_seed(9)) * 1e6
    x[::4096] = 1.0
    x[1::4096] = 1.0
    with pruneext.use_backend(backend):
        for k in (n // 3, n - 5):
            got = ops.l1_mask(x.to(device), k)
            assert torch.equal(got.cpu(), oracle([x], k)[0]), k


# Per float dtype: the integer of its width, the low bits below the C++
# select's first digit (16-bit keys have one digit: a few low mantissa bits,
# so that many keys sit on the sampled window's edges), and the NaN payload
# bits.
KEY_BITS = {
    torch.float32: (torch.int32, 19, 20),
    torch.float64: (torch.int64, 51, 20),
    torch.float16: (torch.int16, 4, 9),
    torch.bfloat16: (torch.int16, 3, 6),
}


def _window_edges(dtype, n, seed):
    """randn whose keys often sit exactly on a first-digit edge (the low bits
    of a quarter cleared, of an eighth set: a digit's first and last keys),
    with NaNs of random payloads, infinities and zeros of both signs."""
    g = torch.Generator().manual_seed(seed)
    ints, low_bits, payload_bits = KEY_BITS[dtype]
    bits = torch.randn(n, generator=g, dtype=torch.float64).to(dtype).view(ints)
    low = (1 << low_bits) - 1
    pick = torch.randint(0, 8, (n,), generator=g)
    bits = torch.where(pick < 2, bits & ~low, torch.where(pick == 2, bits | low, bits))
    x = bits.view(dtype).clone()
    specials = torch.randint(0, n, (n // 50,), generator=g)
    payload = torch.randint(1, 1 << payload_bits, (specials.numel(),), generator=g).to(ints)
    payload[::2] |= torch.iinfo(ints).min  # the sign bit of half of them
    nan_bits = torch.tensor(float("nan"), dtype=dtype).view(ints) | payload
    x.view(ints)[specials[: specials.numel() // 2]] = nan_bits[: specials.numel() // 2]
    x[specials[specials.numel() // 2 :: 3]] = float("inf")
    x[specials[specials.numel() // 2 + 1 :: 3]] = -float("inf")
    x[specials[specials.numel() // 2 + 2 :: 3]] = -0.0
    return x


@pytest.mark.skipif("cpu" not in pruneext.available_backends(), reason="the C++ backend was not built")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cpu_window_pass_on_digit_edges(dtype):
    """The C++ select's first pass where no default mask filters: it counts
    the keys below the sampled window and copies out those in it (vector
    compares on AVX-512). Keys on the window's edges, NaN payloads, and ks
    the window holds or misses: the masks of the oracle."""
    x = _window_edges(dtype, 3 << 18, seed=12)
    parts = [x[: 1 << 18], x[1 << 18 :]]
    n = x.numel()
    for k in (1, n // 7, n // 2, n - n // 60, n):  # (n - n/60: among the NaNs)
        got = torch.ops.pruneext.l1_mask_global(parts, k, [None, None], False)
        want = oracle(parts, k)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), k


def _keyed_threshold(tensors, k):
    """[T, below, equal] of the k-th smallest magnitude key by numpy: the
    bits of |x| (NaN as the largest key), sorted."""
    ints = KEY_BITS[tensors[0].dtype][0]
    top = torch.iinfo(ints).max  # the sign bit's complement: |x|'s bits, and NaN's key
    keys = torch.cat([t.reshape(-1).view(ints) for t in tensors]).numpy().astype(np.int64) & top
    keys[torch.cat([t.reshape(-1).isnan() for t in tensors]).numpy()] = top
    t = np.sort(keys)[k - 1]
    return [int(t), int((keys < t).sum()), int((keys == t).sum())]


def _window_cases(dtype, n, seed):
    """Data whose k-th key puts the CPU select's sampled key window in its
    corners: on a coarse grid (many keys equal to the window's edges), on a
    plateau of one value wider than the window (a window of one key), and
    across an exponent edge (the window's keys share few high bits)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    grid = (x * 64).round() / 64
    plateau = x.clone()
    plateau[torch.randperm(n, generator=g)[: n // 12]] = 0.75
    edge = x / x.abs().median()  # the middle key at exactly 1.0
    below_plateau = int((plateau.abs() < 0.75).sum())
    return [
        ("grid", grid.to(dtype), (n // 3, n // 2, n - n // 9)),
        ("plateau", plateau.to(dtype), (below_plateau + 1, below_plateau + n // 24, below_plateau + n // 12)),
        ("edge", edge.to(dtype), (n // 2 - 1, n // 2, n // 2 + 1, n // 2 + n // 100)),
    ]


@pytest.mark.skipif("cpu" not in pruneext.available_backends(), reason="the C++ backend was not built")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cpu_key_window_corners(dtype):
    """The C++ select's sampled window is a range of keys (two sampled keys)
    and its radix goes on below their common high bits: masks and
    l1_select_threshold against numpy where the window is a grid's keys, a
    single key, or straddles an exponent (two tensors, no default mask)."""
    n = 3 << 18
    for name, x, ks in _window_cases(dtype, n, seed=5):
        parts = [x[: 1 << 18], x[1 << 18 :]]
        for k in ks:
            got = torch.ops.pruneext.l1_mask_global(parts, k, [None, None], False)
            want = oracle(parts, k)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (name, k)
            found = torch.ops.pruneext.l1_select_threshold(parts, [None, None], False, k)
            assert found[:3].tolist() == _keyed_threshold(parts, k), (name, k)
