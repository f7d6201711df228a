"""The CUDA phase ops (l1_key_histogram, l1_count_equal, l1_mask_write)
against the torch reference of the phases (pruneext.backends.reference) on the CPU
copies, bit for bit, and the driver loop over them against the fused
l1_mask_global. Sizes put ties across tile boundaries (4096 entries a tile
for 32/64-bit keys, 16384 for 16-bit ones), the cut of a budget inside a tile
of each tensor, and lists longer than the tie kernel's grid. Skipped without
a CUDA device or when pruneext._C was built without the CUDA phases."""
import pytest
import torch

import pruneext
from pruneext.backends import reference as ref
from pruneext import ops, select_loop
from pruneext.backends.native import has_kernel

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
    pytest.mark.skipif(not has_kernel("l1_key_histogram", "CUDA"), reason="pruneext._C was built without the CUDA phase ops"),
]

SCORE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MASK_DTYPES = [None, torch.float32, torch.float64, torch.float16, torch.bool, torch.uint8, torch.int64, torch.complex64]
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

histogram = torch.ops.pruneext.l1_key_histogram
count_equal = torch.ops.pruneext.l1_count_equal
mask_write = torch.ops.pruneext.l1_mask_write


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _bits(t):
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t.view(_INT_OF_WIDTH[t.element_size()])


def _cuda(ts):
    return [None if t is None else t.cuda() for t in ts]


def _cpu(ts):
    return [None if t is None else t.cpu() for t in ts]


def quantized(n, levels, dtype, seed):
    v = torch.randint(-levels, levels + 1, (n,), generator=_gen(seed)).double() / 4
    return v.to(dtype)


def with_nans(x, seed):
    x = x.clone()
    at = torch.randint(0, x.numel(), (max(1, x.numel() // 40),), generator=_gen(seed))
    vals = torch.tensor([float("nan"), -float("nan"), float("inf"), -0.0], dtype=torch.float64)
    x.view(-1)[at] = vals[at % 4].to(x.dtype)
    return x


def make_mask(shape, dtype, seed):
    if dtype is None:
        return None
    r = torch.rand(shape, generator=_gen(seed))
    if dtype == torch.bool:
        return r > 0.3
    m = (r > 0.3).double()
    m[r < 0.05] = 2.0  # neither 0 nor 1: never alive, kept as it is
    return m.to(dtype)


def kth_key(xs, masks, among_alive, k):
    keys = torch.cat([ref.magnitude_key(x) for x in xs])
    alive = [ref._alive(m, among_alive) for m in masks]
    alive = torch.cat([torch.ones(x.numel(), dtype=torch.bool) if a is None else a for x, a in zip(xs, alive)])
    key = keys[alive].sort().values
    return int(key[min(k, key.numel()) - 1])


def check_all_phases(xs, masks, among_alive, ks, score_dtype):
    """Every phase on CUDA == the reference on CPU, at the prefixes and
    thresholds of real selections of each k, with budgets 0 / half / all /
    ALL per tensor."""
    gx, gm = _cuda(xs), _cuda(masks)
    W = ops.KEY_BITS[score_dtype]
    for k in ks:
        T = kth_key(xs, masks, among_alive, k)
        for shift, bits in select_loop.radix_digits(W):
            prefix = T >> (shift + bits)
            got = histogram(gx, gm, among_alive, shift, bits, prefix)
            want = ref.key_histogram(xs, masks, among_alive, shift, bits, prefix)
            assert got.is_cuda and torch.equal(got.cpu(), want), (k, shift)
        eq = ref.count_equal(xs, masks, among_alive, T)
        assert torch.equal(count_equal(gx, gm, among_alive, T).cpu(), eq), k
        n = len(xs)
        e = eq.tolist()
        for ties in ([0] * n, [select_loop.ALL] * n, e, [c // 2 for c in e], [max(c - 1, 0) for c in e],
                     [select_loop.ALL if j % 2 else c // 3 for j, c in enumerate(e)]):
            got = mask_write(gx, gm, among_alive, T, ties)
            want = ref.mask_write(xs, masks, among_alive, T, ties)
            for g, w in zip(got, want):
                assert g.is_cuda and g.dtype == w.dtype and g.shape == w.shape and g.is_contiguous()
                assert torch.equal(_bits(g), _bits(w)), (k, ties)


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=str)
@pytest.mark.parametrize("among_alive", [False, True])
def test_phases_match_reference(score_dtype, mask_dtype, among_alive):
    xs = [with_nans(quantized(300_001, 6, score_dtype, 1), 2), quantized(5, 1, score_dtype, 3),
          torch.empty(0, dtype=score_dtype), torch.randn(40_000, generator=_gen(4)).to(score_dtype)]
    masks = [make_mask(x.shape, mask_dtype, 10 + i) for i, x in enumerate(xs)]
    masks[1] = None
    total = sum(x.numel() for x in xs)
    check_all_phases(xs, masks, among_alive, (1, total // 5, total // 2, total), score_dtype)


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
def test_tie_free(score_dtype):
    n = {torch.float16: 2048, torch.bfloat16: 256}.get(score_dtype, 300_000)
    g = _gen(5)
    mags = torch.randperm(n, generator=g).double() + 1
    x = [(mags * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)).to(score_dtype)]
    check_all_phases(x, [None], False, (1, n // 3, n), score_dtype)


def test_all_tied_long_tensor_cut_in_every_tensor():
    # every key equal: the budget of each tensor runs out inside one of its
    # tiles, a different one per tensor
    xs = [torch.full((n,), -1.5) for n in (4096 * 7 + 5, 4095, 4096, 100_000)]
    gx = _cuda(xs)
    T = int(ref.magnitude_key(xs[0][:1]))
    for ties in ([4096 * 3 + 17, 1, 4095, 99_999], [5, 0, 4096, 50_000], [0, 4094, 1, 1]):
        got = mask_write(gx, [], False, T, ties)
        want = ref.mask_write(xs, [], False, T, ties)
        for g, w in zip(got, want):
            assert torch.equal(g.cpu(), w), ties
    assert count_equal(gx, [], False, T).cpu().tolist() == [x.numel() for x in xs]


def test_long_list():
    # more tensors than tensor_ties_kernel's grid (1024 blocks), several empty
    xs = [quantized(int(n), 2, torch.float32, i) for i, n in enumerate(torch.randint(0, 300, (2500,), generator=_gen(6)))]
    masks = [make_mask(x.shape, torch.float16, 3000 + i) if i % 3 == 0 else None for i, x in enumerate(xs)]
    total = sum(x.numel() for x in xs)
    check_all_phases(xs, masks, True, (total // 3,), torch.float32)


@pytest.mark.parametrize("bits", [1, 8, 13, 14, 15, 16])
def test_histogram_widths(bits):
    # 14-16 bits need more than 48 KB of bins: opted in, or global atomics
    x = [with_nans(torch.randn(1 << 20, generator=_gen(7)), 8)]
    for shift in (0, 31 - bits):
        got = histogram(_cuda(x), [], False, shift, bits, 0)
        assert torch.equal(got.cpu(), ref.key_histogram(x, [], False, shift, bits, 0)), shift


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
def test_select_equals_fused_iterative(score_dtype):
    xs = [quantized(1_000_003, 20, score_dtype, 9), with_nans(torch.randn(70_000, generator=_gen(10)).to(score_dtype), 11)]
    masks = [make_mask(x.shape, torch.float32, 12 + i) for i, x in enumerate(xs)]
    gx, gm = _cuda(xs), _cuda(masks)
    with pruneext.use_backend("cuda"):
        inp = ops.PhaseInput(gx, gm, True)
        alive = sum(int((m == 1).sum()) for m in masks)
        for k in (0, 1, alive // 4, alive // 2, alive):
            got = select_loop.select(inp, lambda n, k=k: k)
            fused = torch.ops.pruneext.l1_mask_global(gx, k, gm, True)
            for g, f in zip(got, fused):
                assert torch.equal(_bits(g), _bits(f)), k


def test_no_host_sync():
    xs = _cuda([quantized(200_000, 3, torch.float32, 13), quantized(9000, 3, torch.float32, 14)])
    masks = _cuda([make_mask((200_000,), torch.float32, 15), None])
    T = kth_key(_cpu(xs), _cpu(masks), True, 50_000)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        histogram(xs, masks, True, 8, 11, T >> 19)
        count_equal(xs, masks, True, T)
        mask_write(xs, masks, True, T, [1000, 7])
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_errors_on_cuda():
    x = torch.randn(10, device="cuda")
    with pytest.raises(RuntimeError, match="one device"):
        histogram([x, x.cpu()], [], False, 0, 16, 0)
    with pytest.raises(RuntimeError, match="tie budget -2 of tensor 0 is negative"):
        mask_write([x], [], False, 0, [-2])
    with pytest.raises(RuntimeError, match="exceeds the 31 bits"):
        histogram([x], [], False, 16, 16, 0)


def test_list_capture_refused():
    xs = [torch.randn(100, device="cuda"), torch.randn(50, device="cuda")]
    mask_write(xs, [], False, 0, [0, 0])  # warm-up
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture"):
        with torch.cuda.graph(g):
            mask_write(xs, [], False, 0, [0, 0])
    assert torch.equal(mask_write(xs, [], False, 0, [0, 0])[0].cpu(), torch.ones(100))


def test_graph_capture_single_tensor_replays():
    # One tensor: budgets and descriptor in the kernel arguments, no copy
    # from the host, so a captured call replays on new data.
    x = torch.randn(1_000_003, device="cuda")
    T = int(ref.magnitude_key(torch.tensor([0.5])))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch asks
        histogram([x], [], False, 8, 11, T >> 19)
        mask_write([x], [], False, T, [1])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h = histogram([x], [], False, 8, 11, T >> 19)
        (m,) = mask_write([x], [], False, T, [1])
    new = quantized(1_000_003, 4, torch.float32, 24)  # 0.5 is tied many times
    x.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(h.cpu(), ref.key_histogram([new], [], False, 8, 11, T >> 19))
    assert torch.equal(m.cpu(), ref.mask_write([new], [], False, T, [1])[0])
