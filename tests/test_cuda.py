"""The CUDA kernels of torch.ops.pruneext.l1_mask / l1_mask_global.

Reference: the same op on the CPU copy (masks must be bit-identical), and
torch.topk on tie-free data. Skipped without a CUDA device or when
pruneext._C was built without CUDA kernels.
"""
import pytest
import torch

import pruneext  # noqa: F401  (loads the extension and registers the ops)


def _has_cuda_kernel():
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("pruneext::l1_mask", "CUDA")
    except RuntimeError:  # the op itself is missing: pruneext._C did not load
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
    pytest.mark.skipif(not _has_cuda_kernel(), reason="pruneext._C was built without CUDA kernels"),
]

SCORE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MASK_DTYPES = [None, torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8]
_INT_OF = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.bool: torch.uint8,
    torch.uint8: torch.uint8,
}

l1_mask = torch.ops.pruneext.l1_mask
l1_mask_global = torch.ops.pruneext.l1_mask_global


def _bits(t):
    t = t.detach().cpu().contiguous()
    return t.view(_INT_OF[t.dtype])


def assert_bit_identical(got, want):
    assert got.device.type == "cuda"
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.is_contiguous()
    g, w = _bits(got), _bits(want)
    if not torch.equal(g, w):
        bad = (g != w).nonzero()
        raise AssertionError(f"{bad.shape[0]} entries differ, first at {bad[:5].tolist()}")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_mask(shape, dtype, seed, odd_values=True):
    """A default mask: mostly 1 and 0, plus (odd_values) entries that are
    neither (0.5 / 2), which are not alive and must be kept as they are."""
    g = _gen(seed)
    r = torch.rand(shape, generator=g)
    if dtype == torch.bool:
        return r > 0.3
    m = (r > 0.3).to(torch.float64)
    if odd_values:
        m[r < 0.05] = 2.0 if dtype == torch.uint8 else 0.5
    return m.to(dtype)


def alive_count(scores, mask, among_alive):
    if mask is None or not among_alive:
        return scores.numel()
    return int((mask.to(torch.float64) == 1).sum())


def check_vs_cpu(scores, k, mask=None, among_alive=False):
    """Runs the op on CUDA and on the CPU copies; returns the CUDA result."""
    dev = torch.device("cuda")
    got = l1_mask(scores.to(dev), k, None if mask is None else mask.to(dev), among_alive)
    want = l1_mask(scores.cpu(), k, None if mask is None else mask.cpu(), among_alive)
    torch.cuda.synchronize()
    assert_bit_identical(got, want)
    return got


def check_global_vs_cpu(scores, k, masks, among_alive=False):
    dev = torch.device("cuda")
    got = l1_mask_global(
        [s.to(dev) for s in scores], k, [None if m is None else m.to(dev) for m in masks], among_alive
    )
    want = l1_mask_global([s.cpu() for s in scores], k, [None if m is None else m.cpu() for m in masks], among_alive)
    torch.cuda.synchronize()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_bit_identical(g, w)
    return got


# ---------------------------------------------------------------------------
# Single tensor: every score dtype x every mask dtype


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=str)
@pytest.mark.parametrize("among_alive", [False, True])
@pytest.mark.parametrize("shape", [(37, 53), (1000, 1537)], ids=["small", "sampled"])
def test_matches_cpu(score_dtype, mask_dtype, among_alive, shape):
    # (1000, 1537) is over 256 tiles: fp32/fp64 take the sampling path.
    scores = torch.randn(shape, generator=_gen(1)).to(score_dtype)
    mask = None if mask_dtype is None else make_mask(shape, mask_dtype, 2)
    eligible = alive_count(scores, mask, among_alive)
    for frac in (0.3, 0.5):
        check_vs_cpu(scores, int(frac * eligible), mask, among_alive)


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
def test_matches_topk_tie_free(score_dtype):
    # Distinct magnitudes that every dtype represents exactly.
    n = {torch.float16: 2048, torch.bfloat16: 256}.get(score_dtype, 300_000)
    g = _gen(3)
    mags = torch.randperm(n, generator=g).to(torch.float64) + 1
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    scores = (mags * signs).to(score_dtype).cuda()
    for k in (0, 1, n // 3, n // 2, n - 1, n):
        got = l1_mask(scores, k)
        want = torch.ones(n, dtype=score_dtype, device="cuda")
        idx = torch.topk(scores.abs().to(torch.float64), k, largest=False).indices
        want[idx] = 0
        assert torch.equal(got, want), k
        assert int((got == 0).sum()) == k


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
def test_heavy_ties(score_dtype):
    g = _gen(4)
    n = 1_300_003  # many tiles; the tie split lands inside one
    quant = ((torch.randint(-3, 4, (n,), generator=g)) * 0.5).to(score_dtype)
    zeros = torch.zeros(n, dtype=score_dtype)
    signed_zeros = torch.where(torch.rand(n, generator=g) < 0.5, -0.0, 0.0).to(score_dtype)
    for scores in (quant, zeros, signed_zeros):
        for k in (1, 4097, n // 3, n // 2 + 1, n - 1, n):
            got = check_vs_cpu(scores, k)
            assert int((got == 0).sum()) == k
    mask = make_mask((n,), torch.bool, 5)
    alive = alive_count(quant, mask, True)
    for k in (1, alive // 2, alive):
        check_vs_cpu(quant, k, mask, among_alive=True)


def test_ties_go_to_lowest_flat_index():
    x = torch.ones(50_000, device="cuda")
    x[[7, 100, 20_000, 49_999]] = 0.25
    got = l1_mask(x, 3)
    assert (got == 0).nonzero().flatten().tolist() == [7, 100, 20_000]


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
def test_special_values(score_dtype):
    g = _gen(6)
    n = 70_001
    base = torch.randn(n, generator=g, dtype=torch.float64)
    pick = torch.randint(0, 10, (n,), generator=g)
    specials = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-300],
                            dtype=torch.float64)
    vals = torch.where(pick < len(specials), specials[pick.clamp(max=len(specials) - 1)], base)
    scores = vals.to(score_dtype)
    numbers = int((~torch.isnan(scores)).sum())
    for k in (1, n // 2, numbers - 1, numbers, n):
        got = check_vs_cpu(scores, k)
        if k <= numbers:  # NaN is the largest magnitude: never pruned before a number
            assert bool((got.cpu()[torch.isnan(scores)] == 1).all())


def test_minus_zero_ties_plus_zero():
    x = torch.tensor([0.0, -0.0, 0.0, -0.0, 1.0], device="cuda")
    assert l1_mask(x, 3).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
def test_empty_and_trivial_k(score_dtype):
    empty = torch.empty((0, 5), dtype=score_dtype, device="cuda")
    out = l1_mask(empty, 0)
    assert out.shape == (0, 5) and out.dtype == score_dtype and out.device.type == "cuda"
    with pytest.raises(RuntimeError, match="exceeds"):
        l1_mask(empty, 1)
    scores = torch.randn(3000, 7, dtype=torch.float32).to(score_dtype)
    mask = make_mask(scores.shape, torch.float32, 7)
    got = check_vs_cpu(scores, 0)
    assert bool((got == 1).all())
    got = check_vs_cpu(scores, 0, mask)
    assert torch.equal(got.cpu(), mask)
    got = check_vs_cpu(scores, scores.numel())
    assert bool((got == 0).all())
    check_vs_cpu(scores, scores.numel(), mask)
    check_vs_cpu(scores, alive_count(scores, mask, True), mask, among_alive=True)


def test_non_contiguous_inputs():
    g = _gen(8)
    scores = torch.randn(513, 1031, generator=g).t()  # transposed view
    mask = make_mask((1031, 513), torch.float32, 9)
    mask_nc = make_mask((513, 2062), torch.float16, 10)[:, ::2].t()
    for m in (None, mask, mask_nc):
        for among in (False, True):
            k = alive_count(scores, m, among) // 3
            got = check_vs_cpu(scores, k, m, among)
            assert got.is_contiguous()
    big = torch.randn(2, 800, 1400, generator=g)[:, :, ::2].permute(2, 0, 1)  # > 256 tiles
    check_vs_cpu(big, big.numel() // 2)


def test_repeatable():
    x = torch.randint(-2, 3, (2_000_000,), device="cuda").float()
    a = l1_mask(x, 999_999)
    b = l1_mask(x, 999_999)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# Paths of the selection: sampling, candidate compaction and their fallbacks


@pytest.mark.parametrize("score_dtype", [torch.float32, torch.float64], ids=str)
def test_sampling_misses_fall_back(score_dtype):
    # 2^23 elements = 2048 tiles of 4096: the sampling pass reads every 32nd
    # tile, and here those tiles hold much larger values than the rest.
    n = 1 << 23
    g = _gen(11)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    x.view(-1, 4096)[::32] *= 1000
    x = x.to(score_dtype)
    for frac in (0.1, 0.5, 0.97):
        got = check_vs_cpu(x, int(frac * n))
        assert int((got == 0).sum()) == int(frac * n)


@pytest.mark.parametrize("score_dtype", [torch.float32, torch.float64], ids=str)
def test_uniform_and_sorted_data(score_dtype):
    n = 3_000_000
    g = _gen(12)
    uni = torch.rand(n, generator=g, dtype=torch.float64).to(score_dtype)
    srt = torch.linspace(-5, 5, n, dtype=torch.float64).to(score_dtype)
    for x in (uni, srt):
        for k in (1, n // 5, n // 2, n - 3):
            check_vs_cpu(x, k)


@pytest.mark.parametrize("score_dtype", [torch.float32, torch.float64], ids=str)
def test_split_ties_counted_from_the_candidates(score_dtype):
    # 2^21 entries (512 tiles: sampled) on a grid of 1e-3, about 1,300
    # entries per value near the median: k splits the ties at T, and the candidates
    # the window copied out hold them, so the tie counts are read from the
    # candidates' runs per tile (eq_count_cands_kernel), not from the tensors
    g = _gen(21)
    x = ((torch.randn(1 << 21, generator=g, dtype=torch.float64) * 1000).round() / 1000).to(score_dtype)
    n = x.numel()
    mask = make_mask(x.shape, torch.uint8, 40)
    for k in (n // 2 + 17, n // 10 + 3):
        got = check_vs_cpu(x, k)
        assert int((got == 0).sum()) == k
        check_vs_cpu(x, k // 2, mask, among_alive=True)
    parts = [x[:700_000].clone(), x[700_000:700_001].clone(), x[700_001:].clone()]
    check_global_vs_cpu(parts, n // 2 + 5, [None] * 3)
    # the select alone: [T, below, equal, per-tensor ties where they split]
    select = torch.ops.pruneext.l1_select_threshold
    k = n // 2 + 5
    got = select([p.cuda() for p in parts], [None] * 3, False, k).cpu()
    want = select(parts, [None] * 3, False, k)
    assert torch.equal(got, want)
    assert 0 < k - int(got[1]) < int(got[2])  # the ties split (else no per-tensor counts)
    assert int(got[3:].sum()) == int(got[2])


@pytest.mark.parametrize("score_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset", [0, 1, 8], ids=lambda o: f"offset{o}")
def test_16bit_runs_aligned_or_not(score_dtype, offset):
    # 16-bit keys: the mask and tie-count kernels move a thread's 8 entries as
    # one 16-byte vector where every tensor is 16-byte aligned (offset 0 and
    # 8: 16 bytes), and take the scalar loop where one is not (offset 1);
    # 100,003 entries leave a partial run at the end; ties split (few values)
    g = _gen(22)
    n = 100_003
    base = (torch.randint(-200, 200, (offset + n,), generator=g).to(torch.float64) / 16).to(score_dtype)
    x = base.cuda()[offset:]
    masks = make_mask((offset + n,), score_dtype, 41, odd_values=False).cuda()[offset:]
    skewed = make_mask((n + 1,), score_dtype, 42, odd_values=False).cuda()[1:]  # never aligned
    for k in (1, n // 3, n // 2 + 1, n - 1):
        check_vs_cpu(x, k)
        check_vs_cpu(x, k // 2, masks, among_alive=True)
        check_vs_cpu(x, k // 2, skewed, among_alive=True)  # (offsets 0, 8: keys aligned, the mask not)
    # the masked values in the same pass, into an output of the same offset
    out = torch.full((offset + n,), 7.0, dtype=score_dtype, device="cuda")[offset:]
    got = l1_mask(x, n // 2 + 1, None, False, x, out)
    torch.cuda.synchronize()
    assert_bit_identical(got, l1_mask(x.cpu(), n // 2 + 1))
    assert torch.equal(_bits(out), _bits(got.to(score_dtype) * x))
    # values of another dtype than the keys (4- and 8-byte runs beside 2-byte keys)
    for value_dtype in (torch.float32, torch.float64):
        values = torch.randn(offset + n, generator=g, dtype=value_dtype).cuda()[offset:]
        values_out = torch.empty_like(values)
        got = l1_mask(x, n // 3, None, False, values, values_out)
        torch.cuda.synchronize()
        assert_bit_identical(got, l1_mask(x.cpu(), n // 3))
        assert torch.equal(_bits(values_out), _bits(got.to(value_dtype) * values))


# ---------------------------------------------------------------------------
# Global op


@pytest.mark.parametrize("score_dtype", SCORE_DTYPES, ids=str)
@pytest.mark.parametrize("mask_dtype", [None, torch.bool, torch.float32], ids=str)
@pytest.mark.parametrize("among_alive", [False, True])
def test_global_mixed_sizes(score_dtype, mask_dtype, among_alive):
    g = _gen(13)
    shapes = [(0,), (1,), (37,), (4096,), (4097,), (16385,), (300, 700), (0, 3), (2, 3, 5)]
    scores = [torch.randn(s, generator=g).to(score_dtype) for s in shapes]
    masks = [None if (mask_dtype is None or i % 3 == 1) else make_mask(s, mask_dtype, 20 + i)
             for i, s in enumerate(shapes)]
    eligible = sum(alive_count(s, m, among_alive) for s, m in zip(scores, masks))
    for k in (0, 1, eligible // 2, eligible):
        got = check_global_vs_cpu(scores, k, masks, among_alive)
        if mask_dtype is None:
            assert sum(int((r == 0).sum()) for r in got) == k


def test_global_many_tensors_and_single():
    g = _gen(14)
    scores = [torch.randint(-4, 5, (int(n),), generator=g).float() for n in torch.randint(0, 9000, (70,), generator=g)]
    total = sum(s.numel() for s in scores)
    for k in (1, total // 3, total):
        check_global_vs_cpu(scores, k, [None] * len(scores))
    big = torch.randn(3000, 500, generator=g)  # a list of one, over 256 tiles
    check_global_vs_cpu([big], big.numel() // 2, [None])


def test_global_equals_concatenation():
    # Ties go to the earlier tensor, then the lower flat index: exactly the
    # order of a concatenation.
    g = _gen(15)
    scores = [torch.randint(0, 3, s, generator=g).float().cuda() for s in [(50, 41), (7,), (1000, 300)]]
    flat = torch.cat([s.flatten() for s in scores])
    for k in (1, 100, flat.numel() // 2, flat.numel()):
        got = l1_mask_global(scores, k, [None] * 3)
        want = l1_mask(flat, k)
        assert torch.equal(torch.cat([r.flatten() for r in got]), want)


def test_global_large_sampled():
    g = _gen(16)
    scores = [torch.randn(s, generator=g) for s in [(1024, 1024), (3,), (700, 900), (5, 4095)]]
    masks = [make_mask(s.shape, torch.uint8, 30 + i) for i, s in enumerate(scores)]
    for among in (False, True):
        eligible = sum(alive_count(s, m, among) for s, m in zip(scores, masks))
        check_global_vs_cpu(scores, eligible // 2, masks, among)


# ---------------------------------------------------------------------------
# Errors, streams, devices


def test_k_too_large_raises():
    x = torch.randn(1000, device="cuda")
    with pytest.raises(RuntimeError, match=r"l1_mask: k=1001 exceeds the 1000 entries that can be pruned"):
        l1_mask(x, 1001)
    mask = (torch.arange(1000, device="cuda") % 2).float()  # 500 alive
    with pytest.raises(RuntimeError, match=r"k=501 exceeds the 500 entries"):
        l1_mask(x, 501, mask, True)
    l1_mask(x, 500, mask, True)  # the largest k that works
    l1_mask(x, 1000, mask, False)
    with pytest.raises(RuntimeError, match=r"k=1011 exceeds the 1010 entries"):
        l1_mask_global([x, x[:10]], 1011, [None, None])
    with pytest.raises(RuntimeError, match=r"k=511 exceeds the 510 entries"):
        l1_mask_global([x, x[:10]], 511, [mask, torch.ones(10, device="cuda")], True)
    l1_mask_global([x, x[:10]], 510, [mask, torch.ones(10, device="cuda")], True)
    with pytest.raises(RuntimeError):
        l1_mask(x, -1)


def test_messages_match_cpu():
    x = torch.randn(64)
    mask = (torch.arange(64) % 4 == 0).float()
    for args in ((65, None, False), (17, mask, True)):
        msgs = []
        for dev in ("cpu", "cuda"):
            with pytest.raises(RuntimeError) as e:
                l1_mask(x.to(dev), args[0], None if args[1] is None else args[1].to(dev), args[2])
            msgs.append(str(e.value).splitlines()[0])
        assert msgs[0] == msgs[1]


def test_non_default_stream():
    g = _gen(17)
    x_cpu = torch.randn(2_000_003, generator=g)
    m_cpu = make_mask(x_cpu.shape, torch.bool, 18)
    want = l1_mask(x_cpu, 600_000, m_cpu, True)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = x_cpu.to("cuda", non_blocking=False)
        m = m_cpu.to("cuda")
        got = l1_mask(x, 600_000, m, True)
        got_g = l1_mask_global([x, x[:5]], 600_000, [m, None], True)
    side.synchronize()
    assert_bit_identical(got, want)
    want_g = l1_mask_global([x_cpu, x_cpu[:5]], 600_000, [m_cpu, None], True)
    for a, b in zip(got_g, want_g):
        assert_bit_identical(a, b)


def test_busy_default_stream_ordering():
    # Results must follow earlier work queued on the same stream.
    x = torch.zeros(5_000_000, device="cuda")
    x.add_(torch.randn(5_000_000, device="cuda"))  # queued before the op
    got = l1_mask(x, 2_500_000)
    assert_bit_identical(got, l1_mask(x.cpu(), 2_500_000))


def test_graph_capture_single_tensor_replays():
    # One tensor without an alive count neither syncs nor copies from the
    # host: a captured call replays on new data.
    x = torch.randn(1_000_003, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        l1_mask(x, 400_000)  # warm-up outside the capture, as torch asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = l1_mask(x, 400_000)
    new = torch.randn(1_000_003, generator=_gen(23))
    x.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert_bit_identical(out, l1_mask(new, 400_000))


@pytest.mark.parametrize("call", ["list", "among_alive"])
def test_graph_capture_refused_where_unsafe(call):
    x = torch.randn(10_000, device="cuda")
    m = (torch.rand(10_000, device="cuda") > 0.5).float()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture"):
        with torch.cuda.graph(graph):
            if call == "list":
                l1_mask_global([x, x[:10]], 100, [None, None])
            else:
                l1_mask(x, 100, m, True)
    # the refusal left nothing behind: the op still runs outside a capture
    assert_bit_identical(l1_mask(x, 100, m, True), l1_mask(x.cpu(), 100, m.cpu(), True))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    x = torch.randn(100_000, device="cuda:1")
    got = l1_mask(x, 50_000)
    assert got.device == x.device
    assert_bit_identical(got, l1_mask(x.cpu(), 50_000))


def test_mixed_devices_rejected():
    x = torch.randn(10, device="cuda")
    with pytest.raises(RuntimeError):
        l1_mask(x, 1, torch.ones(10), False)


# ---------------------------------------------------------------------------
# Past 2^31 entries


@pytest.mark.slow
@pytest.mark.parametrize("score_dtype", [torch.float16, torch.float32], ids=str)
def test_exact_k_past_int32(score_dtype):
    n = 2**31 + 17
    itemsize = torch.tensor([], dtype=score_dtype).element_size()
    need = n * (4 * itemsize + 2) + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB of free GPU memory")
    # Ties across the 2^31 boundary: the lowest flat indices win.
    x = torch.full((n,), 2.0, dtype=score_dtype, device="cuda")
    pos = [5, 2**31 - 1, 2**31, 2**31 + 16]
    for i in pos:
        x[i] = 0.5
    got = l1_mask(x, 3)
    assert int((got == 0).sum()) == 3
    assert [float(got[i]) for i in pos] == [0.0, 0.0, 0.0, 1.0]
    del got

    torch.manual_seed(19)
    x.normal_()
    x[-1] = 0.0  # the very last entry is the smallest
    k = n // 2 + 1
    got = l1_mask(x, k)
    sel = got == 0
    del got
    assert int(sel.sum()) == k
    assert bool(sel[-1])
    mag = x.abs()
    zero = torch.zeros((), dtype=mag.dtype, device="cuda")
    inf = torch.full((), float("inf"), dtype=mag.dtype, device="cuda")
    top_selected = torch.where(sel, mag, zero).max()
    assert top_selected <= torch.where(sel, inf, mag).min()
    # The entries tied with the threshold: the selected ones come first in
    # flat order (chunked: nonzero is limited to INT_MAX elements).
    last_selected, first_kept = -1, n
    chunk = 1 << 28
    for start in range(0, n, chunk):
        eq = mag[start:start + chunk] == top_selected
        s = sel[start:start + chunk]
        picked = (eq & s).nonzero()
        kept = (eq & ~s).nonzero()
        if picked.numel():
            last_selected = start + int(picked[-1])
        if kept.numel() and first_kept == n:
            first_kept = start + int(kept[0])
    assert last_selected < first_kept
