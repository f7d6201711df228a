"""The Triton backend: bit-identical to the C++ `cpu` backend and the `torch`
backend, on CUDA tensors when there is a GPU and on CPU tensors under the
Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without one).

Sizes are small (the interpreter runs one program at a time), and the block
sizes are shrunk so that every test crosses block boundaries: ties are
shared between blocks through the 64-bit exclusive scan.
"""
import dataclasses
import math
import os
import re
import subprocess
import sys

import inspect

import pytest
import torch
import torch.nn.utils.prune as torch_prune
import triton
import triton.language as tl

import pruneext
from pruneext import backends
from pruneext.backends import reference as _reference
from conftest import distinct_magnitudes

if "triton" not in backends.available_backends():
    pytest.skip(
        f"triton backend unavailable: {backends.unavailable_backends().get('triton')}", allow_module_level=True
    )

from pruneext.backends.triton import kernels as triton_kernels  # noqa: E402
from pruneext.backends.triton import select as triton_select  # noqa: E402
from pruneext.backends.triton import window as triton_window  # noqa: E402

SERVED = backends._registry["triton"].devices
DEVICES = [d for d in ("cpu", "cuda") if d in SERVED and (d == "cpu" or torch.cuda.is_available())]
SCORE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MASK_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8]
HAVE_CPP = "cpu" in backends.available_backends()
INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of a few hundred entries, so small tensors span many blocks;
    lists of 256 entries or more take the sampled window (a sample of 256)."""
    monkeypatch.setattr(triton_select, "HIST_BLOCK", 512)
    monkeypatch.setattr(triton_select, "MASK_BLOCK", 256)
    monkeypatch.setattr(triton_select, "WINDOW_BLOCK", 256)
    monkeypatch.setattr(triton_select, "MAX_PROGRAMS", 3)  # programs stride over blocks
    monkeypatch.setattr(triton_select, "WINDOW_MIN", 256)
    monkeypatch.setattr(triton_window, "SAMPLE", 256)


@pytest.fixture
def window_outcomes(monkeypatch):
    """The device's verdict on each sampled window (1: hit), as a list."""
    outcomes, decide = [], triton_window.decide

    def recording(state, *args):
        decide(state, *args)
        outcomes.append(int(state[triton_kernels.HIT]))

    monkeypatch.setattr(triton_window, "decide", recording)
    return outcomes


# ---------------------------------------------------------------- helpers


def triton_mask(x, k, mask=None, among_alive=False):
    return torch.ops.pruneext.l1_mask_triton(x, k, mask, among_alive)


def triton_global(xs, k, masks, among_alive=False):
    return torch.ops.pruneext.l1_mask_global_triton(xs, k, masks, among_alive)


def reference_globals(xs, k, masks, among_alive):
    """The masks of the other backends: C++ on CPU copies (where built) and
    the torch backend on the tensors' device."""
    refs = [_reference.l1_mask_global(xs, k, masks, among_alive)]
    if HAVE_CPP:
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        refs.append(torch.ops.pruneext.l1_mask_global([cpu(x) for x in xs], k, [cpu(m) for m in masks], among_alive))
    return refs


def bits(t):
    """The raw bits of a tensor, on the CPU (NaN payloads and -0.0 count)."""
    t = t.detach().cpu().contiguous()
    return t.view(INT_VIEW[t.element_size()])


def assert_identical(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.is_contiguous()
    assert torch.equal(bits(got), bits(want))


def assert_matches_references(xs, k, masks, among_alive, single=False):
    got = triton_global(xs, k, masks, among_alive)
    assert all(g.device == x.device for g, x in zip(got, xs))
    for ref in reference_globals(xs, k, masks, among_alive):
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert_identical(g, r)
    if single:  # the single-tensor op gives the same mask
        assert_identical(triton_mask(xs[0], k, masks[0], among_alive), got[0])
    return got


def from_bits(patterns, dtype):
    """A tensor of `dtype` holding the given unsigned bit patterns."""
    width = torch.finfo(dtype).bits
    signed = [p - (1 << width) if p >= 1 << (width - 1) else p for p in patterns]
    return torch.tensor(signed, dtype=INT_VIEW[width // 8]).view(dtype)


# NaNs with other payloads and signs, signalling NaNs, the smallest denormal
SPECIAL_BITS = {
    torch.float32: [0x7FC00000, 0x7FC00123, 0xFFC00000, 0x7F800001, 0x00000001, 0x80000001],
    torch.float64: [0x7FF8000000000000, 0x7FF8000000000123, 0xFFF8000000000000, 0x7FF0000000000001, 1, (1 << 63) | 1],
    torch.float16: [0x7E00, 0x7E01, 0xFE00, 0x7C01, 0x0001, 0x8001],
    torch.bfloat16: [0x7FC0, 0x7FC1, 0xFFC0, 0x7F81, 0x0001, 0x8001],
}


def scores_with_ties(n, dtype, seed=0, device="cpu"):
    """Few distinct magnitudes (heavy ties), both zeros, both infinities,
    NaNs of every kind and denormals."""
    g = torch.Generator().manual_seed(seed)
    common = torch.tensor([0.0, -0.0, 0.25, -0.25, 1.0, -1.0, 3.5, float("inf"), -float("inf")], dtype=dtype)
    pool = torch.cat([common, from_bits(SPECIAL_BITS[dtype], dtype), torch.randn(6, generator=g).to(dtype)])
    weights = torch.ones(pool.numel())
    weights[:4] = 6.0  # many zeros and +-0.25
    return pool[torch.multinomial(weights, n, replacement=True, generator=g)].to(device)


def mask_values(n, dtype, seed=0, device="cpu"):
    """A default mask: mostly 0/1, plus (where the dtype has them) values
    that are neither, which must be copied through bit for bit."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return (torch.rand(n, generator=g) > 0.3).to(device)
    if dtype == torch.uint8:
        pool = torch.tensor([1, 1, 1, 0, 2, 255], dtype=torch.uint8)
    else:
        odd = torch.tensor([1.0, 1.0, 1.0, 0.0, -0.0, 0.5, 2.0], dtype=dtype)
        pool = torch.cat([odd, from_bits(SPECIAL_BITS[dtype][:1], dtype)])  # and a NaN
    return pool[torch.randint(0, pool.numel(), (n,), generator=g)].to(device)


def alive_count(masks, xs, among_alive):
    return sum(
        x.numel() if (m is None or not among_alive) else int((m == 1).sum()) for x, m in zip(xs, masks)
    )


# ---------------------------------------------------------------- the ops


# every score dtype with no mask, a bool mask and a mask of its own dtype;
# float32 scores with every mask dtype
DTYPE_PAIRS = [(d, m) for d in SCORE_DTYPES for m in (None, torch.bool, d)] + [
    (torch.float32, m) for m in MASK_DTYPES if m not in (torch.bool, torch.float32)
]


@pytest.mark.parametrize("dtype,mask_dtype", DTYPE_PAIRS, ids=str)
@pytest.mark.parametrize("among_alive", [False, True])
def test_bit_identical_to_other_backends(device, dtype, mask_dtype, among_alive):
    n = 1000
    x = scores_with_ties(n, dtype, seed=n, device=device).reshape(25, 40)
    mask = None if mask_dtype is None else mask_values(n, mask_dtype, seed=1, device=device).reshape(25, 40)
    alive = alive_count([mask], [x], among_alive)
    for k in (1, alive // 3, alive):
        got = assert_matches_references([x], k, [mask], among_alive, single=k == 1)[0]
        assert got.dtype == (dtype if mask is None else mask_dtype)


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_nan_inf_signed_zero_every_k(device, dtype):
    x = torch.tensor([float("nan"), 0.0, -0.0, float("inf"), -float("inf"), 1.0, -float("nan"), -1.0, 3.0], dtype=dtype)
    x = torch.cat([x, from_bits(SPECIAL_BITS[dtype], dtype)]).to(device)
    for k in range(x.numel() + 1):
        assert_matches_references([x], k, [None], False)
    assert triton_mask(x, 1).cpu().tolist()[1:3] == [0.0, 1.0]  # -0.0 ties +0.0: lowest index first
    # NaNs go last: after every number and both infinities
    nan_positions = torch.isnan(x.cpu()).nonzero().flatten()
    kept = triton_mask(x, x.numel() - len(nan_positions)).cpu()
    assert bool((kept[nan_positions] == 1).all()) and int((kept == 0).sum()) == x.numel() - len(nan_positions)


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_heavy_ties_across_blocks_go_by_flat_index(device, dtype):
    n = 1000  # 4 mask blocks, 2 histogram blocks
    for values in ([0.0], [-2.5], [1.0, 2.0]):
        x = torch.tensor(values * (n // len(values)), dtype=dtype, device=device)
        for k in (1, 256, 257, n // 2 + 3, n - 1):
            got = assert_matches_references([x], k, [None], False)[0].cpu()
            key = bits(x).long() & ((1 << (8 * x.element_size() - 1)) - 1)
            order = torch.argsort(key, stable=True)
            expected = torch.ones(n, dtype=dtype)
            expected[order[:k]] = 0
            assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", SCORE_DTYPES, ids=str)
def test_window_hits_on_spread_data(device, dtype, window_outcomes):
    # One tensor, a list, and among_alive: the k-th key is among the
    # candidates, so only the candidates' radix passes run.
    x = distinct_magnitudes(1000, dtype=dtype, seed=3).to(device)
    mask = mask_values(1000, torch.bool, seed=4, device=device)
    alive = int(mask.sum())
    for k in (1, 300, 500, 999):
        assert_matches_references([x], k, [None], False, single=True)
        assert_matches_references([x[:400], x[400:]], k, [None, None], False)
    for k in (1, alive // 2, alive):
        assert_matches_references([x], k, [mask], True)
    assert window_outcomes and all(window_outcomes), window_outcomes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_window_hits_randn_at_high_amounts(device, dtype, monkeypatch, window_outcomes):
    # The sample and the buffer of a large tensor (no slack): the margin of
    # a sample rank r of S must shrink as r nears S (binomial, sqrt(r (1 -
    # r/S))), else the window tends to 2 * 4 / sqrt(S) of the entries, the
    # whole buffer, and bf16's ties at its ends overflow it.
    monkeypatch.setattr(triton_window, "SAMPLE", 1 << 16)
    monkeypatch.setattr(triton_window, "CAPACITY_SLACK", 0)
    for name in ("HIST_BLOCK", "MASK_BLOCK", "WINDOW_BLOCK"):  # few interpreted programs
        monkeypatch.setattr(triton_select, name, 1 << 16)
    n = 1 << 21
    for seed in range(3):
        x = torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
        for amount in (0.8, 0.9, 0.95):
            got = triton_mask(x, round(amount * n))
            if seed == 0 and HAVE_CPP:
                assert_identical(got, torch.ops.pruneext.l1_mask(x.cpu(), round(amount * n)))
    assert window_outcomes == [1] * 9


def test_window_misses_fall_back(device, monkeypatch, window_outcomes):
    x = distinct_magnitudes(3000, seed=5).to(device)
    # a window below every key (no candidates), above every key (all below
    # it), and the whole range in a buffer too small for it
    for lo, hi in ((0, 0), (0x7FFFFFFF, 0x7FFFFFFF), (0, 0x7FFFFFFF)):
        bounds = torch.tensor([lo, hi], device=device)
        with monkeypatch.context() as m:
            m.setattr(triton_window, "bounds", lambda *args, b=bounds: b)
            m.setattr(triton_window, "CAPACITY_SLACK", 0)
            for k in (1, 1500, 3000):
                assert_matches_references([x], k, [None], False)
    assert window_outcomes == [0] * 9


@pytest.mark.parametrize("dtype", SCORE_DTYPES, ids=str)
@pytest.mark.parametrize("among_alive", [False, True])
def test_select_threshold_matches_reference(device, dtype, among_alive, monkeypatch, window_outcomes):
    """l1_select_threshold (the select without its write) against the
    reference, on the sampled window's hits (spread data) and misses (a
    window forced below every key), and on heavy ties split across blocks
    and tensors (the per-tensor counts)."""
    from pruneext.backends.triton import ops as triton_ops

    spread = distinct_magnitudes(1000, dtype=dtype, seed=3)
    tied = scores_with_ties(1500, dtype, seed=6)
    for xs in ([spread[:400], torch.empty(0, dtype=dtype), spread[400:]], [tied[:700], tied[700:]]):
        masks = [mask_values(x.numel(), torch.bool, seed=x.numel()) for x in xs]
        alive = alive_count(masks, xs, among_alive)
        for k in (0, 1, alive // 2, alive):
            want = _reference.select_threshold(xs, masks, among_alive, k)
            got = triton_ops.select_threshold([x.to(device) for x in xs], [m.to(device) for m in masks], among_alive, k)
            assert got.cpu().tolist() == want.tolist(), (k, got, want)
    assert 1 in window_outcomes
    with monkeypatch.context() as m:
        m.setattr(triton_window, "bounds", lambda *args: torch.tensor([0, 0], device=device))
        k = alive // 2
        got = triton_ops.select_threshold([x.to(device) for x in xs], [m.to(device) for m in masks], among_alive, k)
        assert got.cpu().tolist() == _reference.select_threshold(xs, masks, among_alive, k).tolist()
    assert window_outcomes[-1] == 0
    with pytest.raises(RuntimeError, match="exceeds"):
        triton_ops.select_threshold([x.to(device) for x in xs], [m.to(device) for m in masks], among_alive, alive + 1)


def test_window_with_k_past_the_entries(device):
    # among_alive defers the check of k to the device count: the window must
    # survive a k beyond every entry, and the op raise as the others do.
    x = distinct_magnitudes(1000, seed=8).to(device)
    mask = torch.ones(1000, device=device)
    for k in (1001, 5000):
        with pytest.raises(RuntimeError, match=f"k={k} exceeds the 1000 entries"):
            triton_mask(x, k, mask, True)


def test_window_overflow_of_equal_keys(device, monkeypatch, window_outcomes):
    # Half the entries share the k-th key: the window is that one key, and
    # its candidates overflow a buffer of 1/32 of the entries.
    monkeypatch.setattr(triton_window, "CAPACITY_SLACK", 0)
    x = torch.cat([torch.zeros(1500), distinct_magnitudes(1500, seed=6)]).to(device)
    for k in (700, 1500):
        assert_matches_references([x], k, [None], False)
    assert window_outcomes == [0, 0]


def test_default_block_sizes(device, monkeypatch):
    monkeypatch.undo()  # the real blocks: a tensor of three and a bit of them
    n = 3 * max(triton_select.HIST_BLOCK, triton_select.MASK_BLOCK) + 5
    for dtype in (torch.float32, torch.bfloat16):
        x = scores_with_ties(n, dtype, seed=7, device=device)
        mask = mask_values(n, torch.bool, seed=8, device=device)
        assert_matches_references([x], n // 3, [mask], True)


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), ()])
def test_empty_and_scalar_tensors(device, shape):
    x = torch.full(shape, -1.5, device=device)
    n = x.numel()
    for k in range(n + 1):
        for m in (None, torch.ones(shape, dtype=torch.bool, device=device)):
            got = assert_matches_references([x], k, [m], True)[0]
            assert got.shape == x.shape
    with pytest.raises(RuntimeError, match="exceeds"):
        triton_mask(x, n + 1)


def test_k_zero_and_k_n_keep_the_default_mask(device):
    x = scores_with_ties(300, torch.float32, device=device)
    mask = mask_values(300, torch.float16, seed=3, device=device)
    assert_identical(triton_mask(x, 0, mask, True), mask)
    assert_identical(triton_mask(x, 0, mask, False), mask)
    assert torch.equal(triton_mask(x, 300).cpu(), torch.zeros(300))
    everything = triton_mask(x, 300, mask, False)
    assert int((everything == 0).sum()) == 300


def test_non_contiguous_inputs(device):
    base = scores_with_ties(6 * 7 * 8, torch.float32, seed=5, device=device).reshape(6, 7, 8)
    x = base.permute(2, 0, 1)
    mask = mask_values(x.numel(), torch.float32, seed=6, device=device).reshape(7, 6, 8).permute(2, 1, 0)
    assert not x.is_contiguous() and not mask.is_contiguous() and mask.shape == x.shape
    got = assert_matches_references([x], 100, [mask], True)[0]
    assert got.shape == x.shape and got.is_contiguous()
    assert_identical(got, triton_mask(x.contiguous(), 100, mask.contiguous(), True))


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
@pytest.mark.parametrize("among_alive", [False, True])
def test_global_mixed_sizes(device, dtype, among_alive):
    shapes = [(3, 5), (0,), (700,), (1,), (17, 13), ()]
    xs = [
        scores_with_ties(max(1, math.prod(s)), dtype, seed=i, device=device)[: math.prod(s)].reshape(s)
        for i, s in enumerate(shapes)
    ]
    masks = [
        None,
        None,
        mask_values(700, dtype, seed=11, device=device),
        None,
        mask_values(221, dtype, seed=12, device=device).reshape(17, 13),
        torch.ones((), dtype=dtype, device=device),
    ]
    total = alive_count(masks, xs, among_alive)
    for k in (0, 1, total // 2, total):
        got = assert_matches_references(xs, k, masks, among_alive)
        for g, x, m in zip(got, xs, masks):
            assert g.dtype == (x.dtype if m is None else m.dtype) and g.device == x.device
    with pytest.raises(RuntimeError, match="exceeds"):
        triton_global(xs, total + 1, masks, among_alive)


def test_global_ties_go_to_earlier_tensors_and_bool_masks(device):
    xs = [torch.ones(300, device=device), torch.ones(5, 7, device=device), torch.ones(10, device=device)]
    masks = [torch.ones(300, dtype=torch.bool, device=device), None, (torch.arange(10, device=device) % 2 == 0)]
    for k in (150, 300, 310, 314):
        got = assert_matches_references(xs, k, masks, True)
        zeros = [int((g == 0).sum()) for g in got]
        assert zeros[0] == min(k, 300) and zeros[1] == min(max(k - 300, 0), 35)
    assert triton_global([], 0, [], False) == []
    with pytest.raises(RuntimeError):
        triton_global([], 1, [], False)


def test_global_launches_per_pass_not_per_tensor(device, monkeypatch):
    # The tensors of one kind (default mask, output) are one table launch per
    # pass: a list of 12 launches what a list of 2 does. fp32 with the window:
    # sample, window, 3 x (histogram + select) over the candidates and over
    # the tensors, ties, mask.
    launched, real_launch = [], triton_select._launch

    def launch(kernel, grid, *args, **meta):
        launched.append(meta.get("TABLE"))
        real_launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(triton_select, "_launch", launch)
    per_length = []
    for length in (2, 12):
        xs = [scores_with_ties(150 + 13 * i, torch.float32, seed=i, device=device).reshape(-1, 1) for i in range(length)]
        masks = [None] * length
        if length == 12:  # and a second kind, launched beside the first
            masks[3] = mask_values(xs[3].numel(), torch.bool, seed=3, device=device).reshape(-1, 1)
            masks[7] = mask_values(xs[7].numel(), torch.bool, seed=7, device=device).reshape(-1, 1)
        launched.clear()
        assert_matches_references(xs, alive_count(masks, xs, True) // 2, masks, True)
        per_length.append(len(launched))
        assert True in launched  # the tensors went through a table
    assert per_length == [16, 16 + 7]  # the second kind: sample, window, 3 histograms, ties, mask


def test_global_does_not_concatenate(device, monkeypatch):
    xs = [scores_with_ties(n, torch.float32, seed=n, device=device) for n in (100, 200, 300)]
    expected = reference_globals(xs, 250, [None] * 3, False)[0]

    def no_cat(*args, **kwargs):
        raise AssertionError("the global op concatenated its inputs")

    monkeypatch.setattr(torch, "cat", no_cat)
    monkeypatch.setattr(torch, "concat", no_cat)
    for g, e in zip(triton_global(xs, 250, [None] * 3), expected):
        assert_identical(g, e)


@pytest.mark.parametrize("dtype", SCORE_DTYPES)
def test_matches_topk_on_tie_free_data(device, dtype):
    x = distinct_magnitudes(30, 40 if dtype not in (torch.float16, torch.bfloat16) else 30, dtype=dtype, device=device)
    for k in (1, 17, x.numel() // 2, x.numel() - 1):
        got = triton_mask(x, k)
        expected = torch.ones(x.numel(), dtype=dtype, device=device)
        expected[torch.topk(x.abs().flatten().float(), k, largest=False).indices] = 0
        assert torch.equal(got.flatten(), expected)


def test_errors(device):
    x = torch.randn(10, device=device)
    with pytest.raises(RuntimeError, match="exceeds"):
        triton_mask(x, 11)
    with pytest.raises(RuntimeError, match="exceeds"):
        triton_mask(x, 6, torch.tensor([1.0, 0.0] * 5, device=device), True)
    with pytest.raises(RuntimeError, match="exceeds"):
        triton_global([x, x], 21, [None, None])
    with pytest.raises(RuntimeError, match="non-negative"):
        triton_mask(x, -1)
    with pytest.raises(RuntimeError, match="does not match"):
        triton_mask(x, 2, torch.ones(5, 2, device=device))
    with pytest.raises(TypeError):
        triton_mask(torch.arange(10, device=device), 2)
    with pytest.raises(TypeError):
        triton_mask(x, 2, torch.ones(10, dtype=torch.complex128, device=device))
    with pytest.raises(TypeError):
        triton_global([x, x.double()], 2, [None, None])


@triton.jit
def _block_count_probe(out_ptr, n, BLOCK: tl.constexpr):
    tl.store(out_ptr, triton_kernels.block_count(n, BLOCK))


def test_block_counts_do_not_wrap_below_2_31(device):
    # A tensor of just under 2^31 entries hands the kernels an int32 n; its
    # block count must not wrap (in int32, cdiv(2^31 - 5, 4096) is negative
    # and the stride loops would skip every block). n = 1 reaches a GPU as
    # the constexpr 1, which has no .to() (tests/test_triton_aot.py).
    out = torch.zeros(1, dtype=torch.int64, device=device)
    for n in (2**31 - 5, 2**31 - 4096, 2**31 - 1, 2**31, 2**32 + 3, 5, 1):
        _block_count_probe[(1,)](out, n, BLOCK=4096)
        assert int(out) == -(-n // 4096), n
    # and every loop bound of the kernels goes through it
    source = inspect.getsource(triton_kernels)
    assert source.count("tl.cdiv(") == 1 and "tl.cdiv(tl.cast(count, tl.int64)" in source


@triton.jit
def _block_histogram_probe(digit_ptr, valid_ptr, hist_ptr, singles_ptr, BLOCK: tl.constexpr, DIGIT_BITS: tl.constexpr):
    lanes = tl.arange(0, BLOCK)
    valid = tl.load(valid_ptr + lanes) != 0
    singles = triton_kernels.add_block_histogram(hist_ptr, tl.load(digit_ptr + lanes), valid, BLOCK, DIGIT_BITS)
    tl.store(singles_ptr, singles)


@pytest.mark.parametrize("digit_bits", [11, 15])
def test_crowded_bins_take_one_atomic_per_block(device, digit_bits):
    # The histogram kernel's per-block aggregation: bins crowded by ties
    # (the candidates of a bf16 window span ~9 keys) are added with one
    # atomic each; only lanes of sparse bins are added one by one.
    block, g = 1024, torch.Generator().manual_seed(0)
    spread = torch.randperm(1 << digit_bits, generator=g)[:block]
    cases = {
        "nine keys": (torch.randint(0, 9, (block,), generator=g) * 37 + 5, 0),
        "zeros and a spread": (torch.where(torch.rand(block, generator=g) < 0.7, 0, spread), block // 3),
        "all distinct": (spread, block),
        "one key": (torch.full((block,), (1 << digit_bits) - 1), 0),
    }
    for name, (digits, most_singles) in cases.items():
        valid = torch.rand(block, generator=g) < 0.9
        hist = torch.zeros(1 << digit_bits, dtype=torch.int64, device=device)
        singles = torch.zeros(1, dtype=torch.int32, device=device)
        _block_histogram_probe[(1,)](
            digits.int().to(device), valid.int().to(device), hist, singles, BLOCK=block, DIGIT_BITS=digit_bits
        )
        want = torch.bincount(digits[valid], minlength=1 << digit_bits)
        assert torch.equal(hist.cpu(), want), name
        assert int(singles) <= most_singles, (name, int(singles))


def test_launches_run_under_a_guard_of_the_tensors_device(device, monkeypatch):
    # Triton launches on the current device: a tensor on cuda:1 while cuda:0
    # is current needs the guard around every launch.
    entered = []

    class Recorder:
        def __init__(self, where):
            self.where = where

        def __enter__(self):
            entered.append(self.where)

        def __exit__(self, *exc):
            entered.append(None)

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    with triton_select._device_guard(torch.device("cuda", 1), tracing=False):
        assert entered == [torch.device("cuda", 1)]
    assert entered[-1] is None
    with triton_select._device_guard(torch.device("cpu"), tracing=False):  # nothing to guard
        pass
    with triton_select._device_guard(torch.device("cuda", 1), tracing=True):  # fake tensors
        pass
    assert len(entered) == 2

    # and the op launches every kernel inside the guard of its tensors' device
    launches, real_launch = [], triton_select._launch
    monkeypatch.setattr(triton_select, "_device_guard", lambda where, tracing: Recorder(where))
    entered.clear()

    def launch(*args, **kwargs):
        launches.append(len(entered) % 2)  # 1: inside a guard
        real_launch(*args, **kwargs)

    monkeypatch.setattr(triton_select, "_launch", launch)
    x = scores_with_ties(1000, torch.float32, device=device)
    assert_matches_references([x, x[:300]], 400, [None, None], False)
    assert entered == [x.device, None] and launches and all(launches)


# ---------------------------------------------------------------- the backend


def test_backend_serves_its_devices():
    triton_backend = backends._registry["triton"]
    assert "cuda" in triton_backend.devices
    assert ("cpu" in triton_backend.devices) == triton_select.INTERPRET
    for dtype in SCORE_DTYPES:
        assert triton_backend.refusal("cuda", dtype, torch.bool) is None
    # "auto" on CPU keeps the C++ / torch backends: the interpreter is for tests.
    assert backends.resolve("cpu", torch.float32).name != "triton"


def spy_on_triton(monkeypatch):
    """Record the calls that reach the triton backend's two functions."""
    calls = []
    original = backends._registry["triton"]

    def spy(name):
        fn = getattr(original, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    spied = dataclasses.replace(original, l1_mask=spy("l1_mask"), l1_mask_global=spy("l1_mask_global"))
    monkeypatch.setitem(backends._registry, "triton", spied)
    return calls


def tie_free_linear(device, seed=0):
    layer = torch.nn.Linear(12, 9)
    with torch.no_grad():
        layer.weight.copy_(distinct_magnitudes(9, 12, seed=seed) / 100)
        layer.bias.copy_(distinct_magnitudes(9, seed=seed + 1) / 100 + 1)
    return layer.to(device)


def test_use_backend_routes_l1_unstructured(device, monkeypatch):
    calls = spy_on_triton(monkeypatch)
    ours, theirs = tie_free_linear(device), tie_free_linear(device)
    with pruneext.use_backend("triton"):
        pruneext.l1_unstructured(ours, "weight", amount=0.3)
        pruneext.l1_unstructured(ours, "weight", amount=0.5)  # iterative: among the alive
    torch_prune.l1_unstructured(theirs, "weight", amount=0.3)
    torch_prune.l1_unstructured(theirs, "weight", amount=0.5)
    assert calls == ["l1_mask", "l1_mask"]
    assert torch.equal(ours.weight_mask, theirs.weight_mask)
    assert torch.equal(ours.weight, theirs.weight)


def test_use_backend_routes_global_unstructured(device, monkeypatch):
    calls = spy_on_triton(monkeypatch)
    ours = [tie_free_linear(device, seed=s) for s in (0, 10)]
    theirs = [tie_free_linear(device, seed=s) for s in (0, 10)]
    # tie-free across the two layers too: shift the second one's magnitudes
    for layers in (ours, theirs):
        with torch.no_grad():
            layers[1].weight.mul_(1000)
    with pruneext.use_backend("triton"):
        pruneext.global_unstructured([(m, "weight") for m in ours], pruneext.L1Unstructured, amount=70)
    torch_prune.global_unstructured([(m, "weight") for m in theirs], torch_prune.L1Unstructured, amount=70)
    assert calls == ["l1_mask_global"]
    for a, b in zip(ours, theirs):
        assert torch.equal(a.weight_mask, b.weight_mask)


# ---------------------------------------------------------------- torch.library


def test_opcheck(device):
    x = scores_with_ties(33 * 17, torch.float32, device=device).reshape(33, 17)
    # 0/1 only: opcheck compares values, and NaN != NaN
    mask = mask_values(33 * 17, torch.bool, seed=2, device=device).reshape(33, 17).float()
    alive = int((mask == 1).sum())
    samples = [
        (torch.ops.pruneext.l1_mask_triton.default, (x, 100, None, False)),
        (torch.ops.pruneext.l1_mask_triton.default, (x.bfloat16(), alive // 2, mask.bool(), True)),
        (torch.ops.pruneext.l1_mask_triton.default, (x.t(), 5, mask.t(), False)),
        (torch.ops.pruneext.l1_mask_global_triton.default, ([x, x[:3]], 200, [mask, None], True)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, compiler):
    """On a GPU the triton_op decomposes into its kernels (Inductor compiles
    them as user kernels); under the interpreter it stays an opaque op."""
    if compiler == "inductor" and device != "cuda":
        pytest.skip("Inductor compiles user Triton kernels for GPUs only")
    x = scores_with_ties(500, torch.float32, device=device)
    mask = mask_values(500, torch.bool, seed=4, device=device)
    torch._dynamo.reset()

    @torch.compile(backend=compiler, fullgraph=True)
    def f(t, m):
        return torch.ops.pruneext.l1_mask_triton(t * 2, 100, m, True)

    assert_identical(f(x, mask), triton_mask(x * 2, 100, mask, True))


# Without a GPU the kernels above run interpreted: the Triton compiler never
# sees them, and the ops are plain custom ops. One fresh interpreter with
# TRITON_INTERPRET unset, as on a GPU machine, checks what can be checked
# without one: a stand-in driver names an sm_90 target (nothing is launched).
GPU_PATH_SCRIPT = """
import torch, triton
from triton.backends.compiler import GPUTarget

class TargetOnly:
    def get_current_target(self): return GPUTarget("cuda", 90, 32)
    def get_current_device(self): return 0
    def get_current_stream(self, device=None): return 0
    def get_device_interface(self): return torch.cuda
    def get_active_torch_device(self): return torch.device("cpu")
triton.runtime.driver.set_active(TargetOnly())

import pruneext.backends.triton.select as sel
assert not sel.INTERPRET

# 1. torch.compile's AOTDispatcher decomposes the triton_op into its launches.
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._functorch.aot_autograd import aot_function
graphs = []
def keep(gm, example_inputs):
    graphs.append(gm)
    return gm
def f(x, m):
    return torch.ops.pruneext.l1_mask_triton(x, 100, m, True)
with FakeTensorMode(allow_non_fake_inputs=True):
    x = torch.empty(1000, device="cuda")
    m = torch.empty(1000, device="cuda", dtype=torch.bool)
    out = aot_function(f, fw_compiler=keep)(x, m)
assert out.dtype == torch.bool and out.shape == (1000,)
print(graphs[0].code)

# 2. Every kernel variant of the cases below compiles down to a cubin.
compiled = set()
def compile_only(kernel, grid, *args, tracing=False, **meta):
    k = kernel.warmup(*args, grid=grid, num_warps=sel.NUM_WARPS, **meta)
    assert len(k.asm["cubin"]) > 0
    compiled.add((kernel.fn.__name__, tuple(sorted(meta.items()))))
sel._launch = compile_only
# each score dtype (its radix passes), filtering or not, each kind of mask
for dtype, mask_dtype in [(torch.float32, torch.bool), (torch.float16, torch.float16),
                          (torch.bfloat16, None), (torch.float64, torch.uint8)]:
    x = torch.randn(300).to(dtype)
    mask = None if mask_dtype is None else torch.ones(300, dtype=mask_dtype)
    try:
        sel.l1_masks([x, x[:100]], 7, [mask, None], True)
    except RuntimeError as e:  # nothing ran, so the alive count reads 0
        assert "exceeds" in str(e) and mask is not None
print("COMPILED", len(compiled))
"""


@pytest.fixture(scope="module")
def gpu_path_report():
    if torch.cuda.is_available():
        pytest.skip("the GPU runs the real thing in every test above")
    try:
        import triton.backends.nvidia  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        pytest.skip(f"this Triton cannot target CUDA: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", GPU_PATH_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_triton_op_traces_into_kernel_launches(gpu_path_report):
    launches = gpu_path_report.count("triton_kernel_wrapper_functional(")
    assert launches == 3 * 2 + 2  # fp32: 3 radix passes (histogram + select), ties, mask
    assert "aten.cumsum" in gpu_path_report and "l1_mask_triton" not in gpu_path_report
    # torch's mutation analysis (on the Triton IR) finds that only the
    # temporaries and the output are written: no input gets cloned
    cloned = set(re.findall(r"'(\w+)'", " ".join(re.findall(r"tensors_to_clone = \[[^]]*\]", gpu_path_report))))
    written = {"hist_ptr", "state_ptr", "counts_ptr", "out_ptr"}
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 8):
        assert cloned == written
    else:
        # Triton 3.6's IR keeps the table branch (stores through addresses
        # loaded from the table), so torch takes the inputs for written too
        # and clones them: a known cost there (README, Limits)
        assert written <= cloned <= written | {"bits_ptr", "prev_ptr", "table_ptr"}


def test_kernels_compile_for_sm90(gpu_path_report):
    assert int(gpu_path_report.split("COMPILED")[-1]) > 25
