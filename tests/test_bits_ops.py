"""The bit-mask ops (l1_bits_prune, l1_bits_apply; csrc/ops.cpp) on every
backend that has them: the torch reference against a numpy oracle, and every
kernel backend against the reference, bit for bit (weights and masks)."""
import numpy as np
import pytest
import torch

import pruneext
from conftest import DEVICES
from pruneext.backends import reference as ref
from pruneext import backends, select_loop
from test_phases import quantized, with_specials

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ALL = select_loop.ALL

BIT_PAIRS = [
    (name, device)
    for device in DEVICES
    for name in backends.available_backends()
    # (triton: tests/test_triton.py, with the small blocks the interpreter needs to be quick)
    if name not in ("torch", "triton") and device in backends._registry[name].devices and backends._registry[name].bits is not None
]


@pytest.fixture(params=BIT_PAIRS, ids=[f"{b}-{d}" for b, d in BIT_PAIRS])
def bit_backend(request):
    """(bit ops, device) of a kernel backend that has them, in force."""
    name, device = request.param
    with pruneext.use_backend(name):
        yield backends._registry[name].bits, device


def test_native_backends_have_bit_ops():
    for name in ("cpu", "cuda"):
        if name in backends.available_backends():
            assert backends._registry[name].bits is not None, name


# ------------------------------------------------------------------ data


def random_bits(numel, alive_fraction, seed, device="cpu"):
    """A uint8 bit mask of `numel` entries with random pad bits set too (the
    ops must leave them as they are)."""
    g = torch.Generator().manual_seed(seed)
    nbytes = (numel + 7) // 8
    alive = torch.rand(nbytes * 8, generator=g) < alive_fraction
    return torch.from_numpy(np.packbits(alive.numpy(), bitorder="little")).to(device)


def np_key(x):
    """(|x| as float64, where x is NaN): numpy's view of the magnitude key."""
    a = np.abs(x.double().numpy())
    return a, np.isnan(a)


def oracle_prune(w, bits, threshold_value, budget):
    """numpy: which entries l1_bits_prune prunes for a threshold given as a
    magnitude (NaN: the NaN key)."""
    n = w.numel()
    alive = np.unpackbits(bits.numpy(), bitorder="little")[:n].astype(bool)
    mag, nan = np_key(w.reshape(-1))
    if np.isnan(threshold_value):
        below, eq = alive & ~nan, alive & nan
    else:
        below = alive & ~nan & (mag < threshold_value)
        eq = alive & ~nan & (mag == threshold_value)
    take = np.cumsum(eq) <= budget
    return below | (eq & take)


# --------------------------------------------------------- reference vs numpy


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("budget", [0, 3, ALL])
def test_reference_prune_matches_numpy(dtype, budget):
    w = with_specials(quantized(1003, 6, dtype, seed=1), seed=2)
    bits = random_bits(w.numel(), 0.7, seed=3)
    value = 0.75
    threshold = int(ref.magnitude_key(torch.tensor([value], dtype=dtype))[0])
    want = oracle_prune(w, bits, value, budget)
    w2, b2 = w.clone(), bits.clone()
    counts = ref.bits_prune([w2], [b2], threshold, [budget])
    alive_before = np.unpackbits(bits.numpy(), bitorder="little")
    alive_after = np.unpackbits(b2.numpy(), bitorder="little")
    n = w.numel()
    assert int(counts[0]) == int(want.sum())
    np.testing.assert_array_equal(alive_after[:n], alive_before[:n] & ~want)
    np.testing.assert_array_equal(alive_after[n:], alive_before[n:])  # pad bits kept
    flat, old = w2.reshape(-1), w.reshape(-1)
    assert (flat[torch.from_numpy(want)] == 0).all()
    assert not torch.signbit(flat[torch.from_numpy(want)]).any()  # +0
    keep = torch.from_numpy(~want)
    torch.testing.assert_close(flat[keep], old[keep], equal_nan=True, rtol=0, atol=0)


def test_reference_prune_nan_threshold():
    w = torch.tensor([float("nan"), 1.0, float("nan"), 2.0, float("nan")])
    bits = torch.tensor([0b11111], dtype=torch.uint8)
    nan_key = int(ref.magnitude_key(torch.tensor([float("nan")]))[0])
    counts = ref.bits_prune([w], [bits], nan_key, [1])
    assert int(counts[0]) == 3  # both finite entries and the first NaN
    assert torch.equal(ref.unpack_bits(bits, 5), torch.tensor([False, False, True, False, True]))
    assert w[2].isnan() and w[4].isnan() and (w[[0, 1, 3]] == 0).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_reference_apply_matches_numpy(dtype):
    w = with_specials(quantized(517, 9, dtype, seed=4), seed=5)
    bits = random_bits(w.numel(), 0.5, seed=6)
    alive = np.unpackbits(bits.numpy(), bitorder="little")[: w.numel()].astype(bool)
    w2 = w.clone()
    ref.bits_apply([w2], [bits])
    assert (w2.reshape(-1)[torch.from_numpy(~alive)] == 0).all()
    keep = torch.from_numpy(alive)
    torch.testing.assert_close(w2.reshape(-1)[keep], w.reshape(-1)[keep], equal_nan=True, rtol=0, atol=0)


def test_pack_unpack_round_trip():
    for n in (1, 7, 8, 9, 1000):
        alive = torch.rand(n) < 0.5
        packed = ref.pack_bits(alive)
        assert packed.numel() == (n + 7) // 8
        np.testing.assert_array_equal(packed.numpy(), np.packbits(alive.numpy(), bitorder="little"))
        assert torch.equal(ref.unpack_bits(packed, n), alive)


# -------------------------------------------------------- kernels vs reference


def _list(dtype, device, seed, sizes=(1, 9, 1000, 4099, 0, 70000)):
    ws = [with_specials(quantized(n, 5, dtype, seed=seed + i), seed=seed + i) if n else torch.empty(0, dtype=dtype)
          for i, n in enumerate(sizes)]
    bits = [random_bits(w.numel(), 0.8, seed=seed + 100 + i) for i, w in enumerate(ws)]
    return [w.to(device) for w in ws], [b.to(device) for b in bits]


def _thresholds(dtype):
    keys = ref.magnitude_key(torch.tensor([0.0, 0.25, 0.75, 1.25, float("inf"), float("nan")], dtype=dtype))
    return [int(k) for k in keys]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_prune_matches_reference(bit_backend, dtype):
    ops, device = bit_backend
    for threshold in _thresholds(dtype):
        for budgets in ([0] * 6, [ALL] * 6, [1, 0, 5, 17, 0, 333], [ALL, 2, 0, ALL, 3, 10**6]):
            ws, bits = _list(dtype, device, seed=threshold % 97)
            want_w = [w.cpu().clone() for w in ws]
            want_b = [b.cpu().clone() for b in bits]
            want_counts = ref.bits_prune(want_w, want_b, threshold, budgets)
            counts = ops.prune(ws, bits, threshold, budgets)
            assert counts.device.type == torch.device(device).type
            assert counts.cpu().tolist() == want_counts.tolist(), (threshold, budgets)
            for got, want in zip(bits, want_b):
                assert torch.equal(got.cpu(), want)
            for got, want in zip(ws, want_w):
                assert torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8))  # bit for bit


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_apply_matches_reference(bit_backend, dtype):
    ops, device = bit_backend
    ws, bits = _list(dtype, device, seed=7)
    want = [w.cpu().clone() for w in ws]
    ref.bits_apply(want, [b.cpu() for b in bits])
    ops.apply(ws, bits)
    for got, w in zip(ws, want):
        assert torch.equal(got.cpu().view(torch.uint8), w.view(torch.uint8))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("tie", [0.5, float("nan")])
def test_prune_large_single_tensor(bit_backend, dtype, tie):
    """A tensor of several blocks per thread or program, with partial
    budgets deep inside it: tie ranks cross block boundaries (the C++
    kernel's items are 2^18 entries, each counts its own ties first; a
    budget of 80,000 of the ties at 0.5, about 67,000 in the first item,
    runs out in the second). Ties at NaN's key too (every 7th entry)."""
    ops, device = bit_backend
    w = quantized(300_001, 3, dtype, seed=11)
    if tie != tie:
        w[::7] = float("nan")
    bits = random_bits(w.numel(), 0.9, seed=12)
    threshold = int(ref.magnitude_key(torch.tensor([tie], dtype=dtype))[0])
    for budget in (20_000, 80_000) if tie == tie else (10_000, 40_000):
        want_w, want_b = w.clone(), bits.clone()
        want = ref.bits_prune([want_w], [want_b], threshold, [budget])
        got_w, got_b = w.clone().to(device), bits.clone().to(device)  # (w itself stays unpruned)
        got = ops.prune([got_w], [got_b], threshold, [budget])
        assert got.cpu().tolist() == want.tolist(), budget
        assert torch.equal(got_b.cpu(), want_b) and torch.equal(got_w.cpu().view(torch.uint8), want_w.view(torch.uint8))


def test_errors(bit_backend):
    ops, device = bit_backend
    w = torch.randn(10, device=device)
    with pytest.raises(RuntimeError, match="bytes"):
        ops.prune([w], [torch.zeros(1, dtype=torch.uint8, device=device)], 0, [0])
    with pytest.raises(TypeError, match="uint8"):
        ops.apply([w], [torch.zeros(2, dtype=torch.int32, device=device)])
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.apply([torch.randn(4, 4, device=device).t()], [torch.zeros(2, dtype=torch.uint8, device=device)])
    with pytest.raises(RuntimeError, match="negative"):
        ops.prune([w], [torch.zeros(2, dtype=torch.uint8, device=device)], 0, [-1])
    with pytest.raises(RuntimeError, match="tie budgets"):
        ops.prune([w], [torch.zeros(2, dtype=torch.uint8, device=device)], 0, [0, 0])
    with pytest.raises(TypeError):
        ops.apply([torch.zeros(8, dtype=torch.int32, device=device)], [torch.zeros(1, dtype=torch.uint8, device=device)])


def test_native_opcheck():
    if "cpu" not in backends.available_backends():
        pytest.skip("the C++ backend was not built")
    w = [torch.randn(37), torch.randn(5, 3)]
    bits = [random_bits(37, 0.8, 1), random_bits(15, 0.8, 2)]
    torch.library.opcheck(torch.ops.pruneext.l1_bits_prune.default, (w, bits, 1 << 29, [1, ALL]))
    torch.library.opcheck(torch.ops.pruneext.l1_bits_apply.default, (w, bits))


# ------------------------------------------------ the fused select's threshold

SELECT_PAIRS = [
    (name, device)
    for device in DEVICES
    for name in backends.available_backends()
    # (triton: tests/test_triton.py, with the small blocks the interpreter needs to be quick)
    if name not in ("torch", "triton") and device in backends._registry[name].devices
    and backends._registry[name].phases is not None and backends._registry[name].phases.select_threshold is not None
]


@pytest.mark.parametrize("name, device", SELECT_PAIRS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("among_alive", [False, True])
def test_select_threshold_matches_reference(name, device, dtype, among_alive):
    """[T, below, equal, equal per tensor] against the reference, on tied
    data with NaNs, sizes past the sampled window's minimum, and k from 1 to
    every alive entry."""
    g = torch.Generator().manual_seed(5)
    scores = [with_specials(quantized(n, 40, dtype, seed=n), seed=n) for n in (3, 70_000, 200_001)]
    scores.insert(2, torch.empty(0, dtype=dtype))
    masks = [(torch.rand(s.shape, generator=g) < 0.7).to(dtype) for s in scores]
    alive = sum(int((m == 1).sum()) for m in masks) if among_alive else sum(s.numel() for s in scores)
    phases = backends._registry[name].phases
    for k in (1, 2, alive // 3, alive // 2 + 1, alive - 1, alive):
        want = ref.select_threshold(scores, masks, among_alive, k)
        got = phases.select_threshold([s.to(device) for s in scores], [m.to(device) for m in masks], among_alive, k)
        assert got.cpu().tolist() == want.tolist(), k
    # and the reference against the fused mask: T is the k-th key, below + ties = k
    k = alive // 2
    t, below, equal = ref.select_threshold(scores, masks, among_alive, k).tolist()[:3]
    assert below < k <= below + equal
    # the per-tensor counts where k splits the keys == T (tied data: k = alive
    # // 2 does), and 0 where every tie is taken (k = alive)
    assert below + equal > k
    per = ref.select_threshold(scores, masks, among_alive, k).tolist()[3:]
    assert per == ref.count_equal(scores, masks, among_alive, t).tolist() and sum(per) == equal
    assert ref.select_threshold(scores, masks, among_alive, alive).tolist()[3:] == [0] * len(scores)


def test_cpu_portable_paths_match_reference():
    """The C++ portable loops (PRUNEEXT_NO_AVX512=1; on an AVX-512 CPU the
    vector compares and masked stores run otherwise), in a fresh process:
    prune and apply against the reference, and the select's window pass
    (tests/test_ops.py's edge case) against the oracle."""
    if "cpu" not in backends.available_backends():
        pytest.skip("the C++ backend was not built")
    import os
    import subprocess
    import sys

    code = (
        "import torch, pruneext\n"
        "from pruneext.backends import reference as ref\n"
        "from test_bits_ops import ALL, _list, _thresholds\n"
        "for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):\n"
        "    ws, bits = _list(dtype, 'cpu', seed=3)\n"
        "    want = [w.clone() for w in ws]\n"
        "    ref.bits_apply(want, bits)\n"
        "    torch.ops.pruneext.l1_bits_apply(ws, bits)\n"
        "    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(ws, want)), dtype\n"
        "    for threshold in _thresholds(dtype):\n"
        "        for budgets in ([0] * 6, [ALL] * 6, [1, 0, 5, 17, 0, 333]):\n"
        "            ws, bits = _list(dtype, 'cpu', seed=5)\n"
        "            want_w, want_b = [w.clone() for w in ws], [b.clone() for b in bits]\n"
        "            want = ref.bits_prune(want_w, want_b, threshold, budgets)\n"
        "            got = torch.ops.pruneext.l1_bits_prune(ws, bits, threshold, budgets)\n"
        "            assert torch.equal(got, want) and all(map(torch.equal, bits, want_b)), (dtype, threshold)\n"
        "            assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(ws, want_w))\n"
        "from test_ops import _window_edges, oracle\n"
        "for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):\n"
        "    x = _window_edges(dtype, 3 << 18, seed=12)\n"
        "    parts = [x[: 1 << 18], x[1 << 18 :]]\n"
        "    for k in (x.numel() // 7, x.numel() - x.numel() // 60):\n"
        "        got = torch.ops.pruneext.l1_mask_global(parts, k, [None, None], False)\n"
        "        assert all(map(torch.equal, got, oracle(parts, k))), (dtype, k)\n"
        "print('ok')\n"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PRUNEEXT_NO_AVX512="1", PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
