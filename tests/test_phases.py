"""The phase ops (l1_key_histogram, l1_count_equal, l1_mask_write) on every
backend that has them, against the torch backend's phases (pruneext.backends.reference,
the oracle: bit for bit), and the driver loop over them (select_loop.select)
against the fused l1_mask_global."""
import pytest
import torch

import pruneext
from conftest import DEVICES, distinct_magnitudes
from pruneext.backends import reference as ref
from pruneext import backends, ops, select_loop

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# masks the kernels read as raw bits of 1, 2, 4 and 8 bytes
MASK_DTYPES = [torch.float32, torch.bool, torch.uint8, torch.float16, torch.int64, torch.complex64, torch.float8_e4m3fn]
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

PHASE_PAIRS = [
    (name, device)
    for device in DEVICES
    for name in backends.available_backends()
    if name != "torch"
    and device in backends._registry[name].devices
    and backends._registry[name].phases is not None
]


@pytest.fixture(params=PHASE_PAIRS, ids=[f"{b}-{d}" for b, d in PHASE_PAIRS])
def phase_backend(request):
    """(phases, device) of a backend with phase ops, in force."""
    name, device = request.param
    with pruneext.use_backend(name):
        yield backends._registry[name].phases, device


def interpreted(device):
    """Triton on CPU tensors: its interpreter, seconds for each select, so the
    driver tests try fewer k there (on a GPU, every k)."""
    return backends.get_backend() == "triton" and torch.device(device).type == "cpu"


def test_native_backends_have_phases():
    for name in ("cpu", "cuda"):
        if name in backends.available_backends():
            assert backends._registry[name].phases is not None, name


# ------------------------------------------------------------------ data


def quantized(n, levels, dtype, seed=0, device="cpu"):
    """Heavily tied values: 2 * levels + 1 of them, ±0 included."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-levels, levels + 1, (n,), generator=g).float() / 4
    return v.to(device=device, dtype=dtype)


def with_specials(x, seed=0):
    """x with NaNs (both signs), infinities and -0.0 sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = x.clone()
    n = x.numel()
    specials = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    at = torch.randint(0, n, (max(1, n // 50),), generator=g)
    x.view(-1)[at.to(x.device)] = specials[at % len(specials)].to(x.device, x.dtype)
    return x


def random_mask(shape, dtype, seed, device):
    """0/1 mask with some entries that are neither (never alive, kept as
    they are), where the dtype has such values."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(shape, generator=g)
    m = (r > 0.35).float()
    if dtype not in (torch.bool,):
        m[r < 0.05] = 2.0 if dtype != torch.float8_e4m3fn else 0.5
    return m.to(dtype).to(device)


def bits(t):
    """The raw bits of a tensor, for bit-for-bit comparisons (NaN, -0.0)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view(_INT_OF_WIDTH[t.element_size()])


def assert_same_masks(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert g.is_contiguous()
        gb, wb = bits(g), bits(w)
        if not torch.equal(gb, wb):
            bad = (gb != wb).nonzero()
            raise AssertionError(f"{bad.shape[0]} entries differ, first at {bad[:5].tolist()}")


def kth_key(xs, k, masks=None, among_alive=False):
    """The k-th smallest alive key of the list (1-based k; the largest past
    the alive count)."""
    keys, alive = [], []
    for s, m in zip(xs, masks or [None] * len(xs)):
        keys.append(ref.magnitude_key(s.cpu()))
        a = ref._alive(None if m is None else m.cpu(), among_alive)
        alive.append(torch.ones(s.numel(), dtype=torch.bool) if a is None else a)
    key = torch.cat(keys)[torch.cat(alive)]
    return int(key.sort().values[min(k, key.numel()) - 1])


def lists(device):
    """(name, scores, masks, among_alive) inputs of every kind, float32. A
    fifth of the size under Triton's interpreter (still tens of its
    1024-entry blocks, each tensor ending in a partial one): each pass costs
    seconds there."""
    small = interpreted(device)
    n_free, n_tied, n_short = (14_003, 30_001, 1_001) if small else (70_003, 150_001, 5000)
    tie_free = [distinct_magnitudes(n_free, device=device, seed=1), distinct_magnitudes(33, 7, device=device, seed=2)]
    tied = [quantized(n_tied, 5, torch.float32, seed=3, device=device), quantized(n_short, 2, torch.float32, seed=4, device=device)]
    empty = [torch.empty(0, device=device), tied[1], torch.empty(3, 0, device=device), tie_free[1]]
    masks = [random_mask(t.shape, torch.float32, 10 + i, device) for i, t in enumerate(tied)]
    return [
        ("tie_free", tie_free, [None, None], False),
        ("tied", tied, [None, None], False),
        ("nan", [with_specials(t, i) for i, t in enumerate(tied)], [None, None], False),
        ("empty", empty, [None] * 4, False),
        ("alive", tied, masks, True),
        ("alive_some", tied, [masks[0], None], True),
        ("mask_unfiltered", tied, masks, False),
    ]


# ------------------------------------------------------------------ histograms


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_histograms_of_every_digit(phase_backend, dtype):
    phases, device = phase_backend
    n = 30_001 if interpreted(device) else 90_001  # (as lists(): each pass costs seconds there)
    xs = [
        with_specials(torch.randn(n, generator=torch.Generator().manual_seed(5)), 1).to(device, dtype),
        quantized(3001, 40, dtype, seed=6, device=device),
        torch.empty(0, dtype=dtype, device=device),
    ]
    masks = [None, None, None]
    digits = select_loop.radix_digits(ops.KEY_BITS[dtype])
    total = sum(x.numel() for x in xs)
    for k in (1, total // 3, total):
        T = kth_key(xs, k)
        for shift, bits_ in digits:
            prefix = T >> (shift + bits_)  # the prefix a real selection reaches
            got = phases.key_histogram(xs, masks, False, shift, bits_, prefix)
            want = ref.key_histogram(xs, masks, False, shift, bits_, prefix)
            assert got.dtype == torch.int64 and got.device.type == device
            assert torch.equal(got.cpu(), want.cpu()), (k, shift, bits_)
    # the first digit sees everything
    shift, bits_ = digits[0]
    assert int(phases.key_histogram(xs, masks, False, shift, bits_, 0).sum()) == total


@pytest.mark.parametrize("bits_", [1, 5, 11, 16])
def test_histogram_any_digit_and_unreachable_prefix(phase_backend, bits_):
    phases, device = phase_backend
    x = [with_specials(torch.randn(20_000, generator=torch.Generator().manual_seed(7)), 2).to(device)]
    for shift in (0, 3, 31 - bits_):
        high = shift + bits_
        for prefix in (0, 1, (1 << (31 - high)) - 1, 1 << (31 - high), -1, 2**62):
            got = phases.key_histogram(x, [], False, shift, bits_, prefix)
            want = ref.key_histogram(x, [], False, shift, bits_, prefix)
            assert torch.equal(got.cpu(), want.cpu()), (shift, prefix)


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=str)
def test_histogram_among_alive(phase_backend, mask_dtype):
    phases, device = phase_backend
    xs = [quantized(40_000, 30, torch.float32, seed=8, device=device), distinct_magnitudes(99, device=device, seed=9)]
    masks = [random_mask(x.shape, mask_dtype, 20 + i, device) for i, x in enumerate(xs)]
    masks[1] = None  # a tensor of the list without a default mask: all alive
    T = kth_key(xs, 15_000, masks, True)
    for among_alive in (False, True):
        for shift, bits_ in select_loop.radix_digits(31):
            prefix = T >> (shift + bits_)
            got = phases.key_histogram(xs, masks, among_alive, shift, bits_, prefix)
            want = ref.key_histogram(xs, masks, among_alive, shift, bits_, prefix)
            assert torch.equal(got.cpu(), want.cpu()), (among_alive, shift)


# ------------------------------------------------------------------ count_equal


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_count_equal(phase_backend, dtype):
    phases, device = phase_backend
    xs = [with_specials(quantized(100_000, 3, dtype, seed=11, device=device)), torch.empty(0, dtype=dtype, device=device),
          quantized(777, 3, dtype, seed=12, device=device)]
    masks = [random_mask(xs[0].shape, torch.uint8, 13, device), None, random_mask((777,), torch.uint8, 14, device)]
    nan_key = (1 << ops.KEY_BITS[dtype]) - 1
    above = min(nan_key + 1, 2**63 - 1)  # past every key, where int64 has room
    thresholds = {0, kth_key(xs, 50_000), kth_key(xs, 100_777), nan_key, -1, above}
    for among_alive in (False, True):
        for T in thresholds:
            got = phases.count_equal(xs, masks, among_alive, T)
            want = ref.count_equal(xs, masks, among_alive, T)
            assert got.dtype == torch.int64 and got.shape == (3,)
            assert torch.equal(got.cpu(), want.cpu()), (among_alive, T)


# ------------------------------------------------------------------ mask_write


@pytest.mark.parametrize("case", range(7), ids=[c[0] for c in lists("cpu")])
def test_mask_write_budgets(phase_backend, case):
    phases, device = phase_backend
    _, xs, masks, among_alive = lists(device)[case]
    total = sum(x.numel() for x in xs)
    for k in (1, total // 2, total):
        T = kth_key(xs, k, masks, among_alive) if total else 0
        equal = ref.count_equal(xs, masks, among_alive, T).tolist()
        n = len(xs)
        plans = [
            [0] * n,
            [select_loop.ALL] * n,
            equal,  # every tie, as the driver gives them
            [e // 2 for e in equal],  # partial: the first half of each tensor's ties
            [e - 1 if e else 0 for e in equal],
            [select_loop.ALL if j % 2 else e // 3 for j, e in enumerate(equal)],
            [10**12] * n,
        ]
        for ties in plans:
            got = phases.mask_write(xs, masks, among_alive, T, ties)
            want = ref.mask_write(xs, masks, among_alive, T, ties)
            assert_same_masks(got, want)


@pytest.mark.parametrize("mask_dtype", [None] + MASK_DTYPES, ids=str)
@pytest.mark.parametrize("score_dtype", FLOAT_DTYPES, ids=str)
def test_mask_write_dtypes(phase_backend, score_dtype, mask_dtype):
    phases, device = phase_backend
    xs = [with_specials(quantized(30_000, 4, score_dtype, seed=15, device=device)), quantized(301, 4, score_dtype, seed=16, device=device)]
    masks = [None, None] if mask_dtype is None else [random_mask(x.shape, mask_dtype, 17 + i, device) for i, x in enumerate(xs)]
    nan_key = (1 << ops.KEY_BITS[score_dtype]) - 1
    above = min(nan_key + 1, 2**63 - 1)  # past every key, where int64 has room
    for among_alive in (False, True):
        T = kth_key(xs, 9000, masks, among_alive)
        e = ref.count_equal(xs, masks, among_alive, T).tolist()
        for threshold, ties in [(T, [e[0] // 2, e[1]]), (T, [select_loop.ALL, 0]), (T, [0, e[1] // 2]),
                                (-1, [5, 5]), (nan_key, [3, 0]), (above, [0, 0])]:
            got = phases.mask_write(xs, masks, among_alive, threshold, ties)
            want = ref.mask_write(xs, masks, among_alive, threshold, ties)
            assert_same_masks(got, want)


def test_mask_write_non_contiguous(phase_backend):
    phases, device = phase_backend
    base = quantized(6 * 7 * 8 * 9, 3, torch.float32, seed=18, device=device).reshape(6, 7, 8, 9)
    x = base.permute(0, 2, 3, 1)
    mask = random_mask((6, 7, 9, 8), torch.float32, 19, device).transpose(1, 3)
    assert not x.is_contiguous() and not mask.is_contiguous()
    T = kth_key([x], 500, [mask], True)
    e = ref.count_equal([x], [mask], True, T).tolist()
    got = phases.mask_write([x], [mask], True, T, [e[0] // 2])
    assert_same_masks(got, ref.mask_write([x], [mask], True, T, [e[0] // 2]))
    for shift, bits_ in select_loop.radix_digits(31):
        h = phases.key_histogram([x, x.transpose(0, 1)], [mask, None], True, shift, bits_, T >> (shift + bits_))
        assert torch.equal(h.cpu(), ref.key_histogram([x, x.transpose(0, 1)], [mask, None], True, shift, bits_, T >> (shift + bits_)).cpu())
    assert torch.equal(phases.count_equal([x], [mask], True, T).cpu(), torch.tensor(e))


# ------------------------------------------------------------------ the driver


@pytest.mark.parametrize("case", range(7), ids=[c[0] for c in lists("cpu")])
def test_select_equals_fused_global(phase_backend, case):
    phases, device = phase_backend
    _, xs, masks, among_alive = lists(device)[case]
    inp = ops.PhaseInput(xs, masks, among_alive)
    assert inp.phases is phases
    alive = sum(x.numel() for x in xs) if not among_alive else sum(
        x.numel() if m is None else int((m == 1).sum()) for x, m in zip(xs, masks)
    )
    ks = {1, alive // 2, alive - 1} if interpreted(device) else {0, 1, alive // 7, alive // 2, alive - 1, alive}
    for k in sorted(ks - {-1}):
        got = select_loop.select(inp, lambda n, k=k: k)
        fused = ops.l1_mask_global(xs, k, masks, among_alive)
        assert_same_masks(got, fused)
        assert_same_masks(got, ref.l1_mask_global([x.cpu() for x in xs], k, [None if m is None else m.cpu() for m in masks], among_alive))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_select_every_dtype_heavy_ties(phase_backend, dtype):
    _, device = phase_backend
    xs = [quantized(65_537, 2, dtype, seed=21, device=device), torch.zeros(1000, dtype=dtype, device=device),
          with_specials(quantized(4097, 1, dtype, seed=22, device=device))]
    masks = [random_mask((65_537,), torch.bool, 23, device), None, None]
    inp = ops.PhaseInput(xs, masks, True)
    alive = int(masks[0].sum()) + 1000 + 4097
    for k in (1, 40_000, alive - 3) if interpreted(device) else (0, 1, 20_000, 40_000, alive - 3, alive):
        assert_same_masks(select_loop.select(inp, lambda n, k=k: k), ops.l1_mask_global(xs, k, masks, True))


def test_select_k_too_large_raises_as_fused(phase_backend):
    _, device = phase_backend
    x = [torch.randn(10, device=device)]

    def k_of(alive):
        if 11 > alive:
            raise ValueError(f"k exceeds {alive}")
        return 11

    with pytest.raises(ValueError, match="exceeds 10"):
        select_loop.select(ops.PhaseInput(x), k_of)


# ------------------------------------------------------------------ errors


def test_argument_errors(phase_backend):
    phases, device = phase_backend
    x = torch.randn(10, device=device)
    h = torch.randn(10, dtype=torch.float16, device=device)
    with pytest.raises(RuntimeError, match=r"bits must be in \[1, 16\]"):
        phases.key_histogram([x], [], False, 0, 0, 0)
    with pytest.raises(RuntimeError, match=r"bits must be in \[1, 16\]"):
        phases.key_histogram([x], [], False, 0, 17, 0)
    with pytest.raises(RuntimeError, match="shift must be non-negative"):
        phases.key_histogram([x], [], False, -1, 4, 0)
    with pytest.raises(RuntimeError, match="exceeds the 31 bits"):
        phases.key_histogram([x], [], False, 20, 12, 0)
    with pytest.raises(RuntimeError, match="exceeds the 15 bits"):
        phases.key_histogram([h], [], False, 1, 15, 0)
    with pytest.raises(RuntimeError, match="expected 2 tie budgets, got 1"):
        phases.mask_write([x, x], [], False, 0, [1])
    with pytest.raises(RuntimeError, match="tie budget -1 of tensor 1 is negative"):
        phases.mask_write([x, x], [], False, 0, [0, -1])
    with pytest.raises(RuntimeError, match="does not match"):
        phases.mask_write([x], [torch.ones(11, device=device)], False, 0, [0])
    with pytest.raises(RuntimeError, match="one default mask per score tensor"):
        phases.count_equal([x, x], [None], False, 0)
    with pytest.raises(TypeError, match="share one dtype"):
        phases.count_equal([x, h], [], False, 0)
    with pytest.raises(TypeError, match="all default masks must share one dtype"):
        phases.key_histogram([x, x], [torch.ones(10, device=device), torch.ones(10, dtype=torch.bool, device=device)], True, 0, 16, 0)
    with pytest.raises(TypeError, match="scores must be float32"):
        phases.count_equal([torch.ones(10, dtype=torch.int32, device=device)], [], False, 0)
    with pytest.raises(TypeError, match="unsupported default mask dtype"):
        phases.mask_write([x], [torch.ones(10, dtype=torch.complex128, device=device)], False, 0, [0])
    if device != "cpu":
        with pytest.raises(RuntimeError, match="one device"):
            phases.key_histogram([x, x.cpu()], [], False, 0, 16, 0)


# ------------------------------------------------------------------ opcheck


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_opcheck(phase_backend, dtype):
    _, device = phase_backend
    x = quantized(33 * 17, 5, dtype, seed=24, device=device).reshape(33, 17)
    mask = (torch.rand(33, 17, generator=torch.Generator().manual_seed(25)) > 0.3).to(dtype).to(device)
    W = ops.KEY_BITS[dtype]
    T = kth_key([x], 200)
    shift, bits_ = select_loop.radix_digits(W)[-1]
    samples = [
        (torch.ops.pruneext.l1_key_histogram.default, ([x, x[:3]], [mask, None], True, shift, bits_, T >> (shift + bits_))),
        (torch.ops.pruneext.l1_key_histogram.default, ([x.t()], [], False, W - 8, 8, 0)),
        (torch.ops.pruneext.l1_count_equal.default, ([x, x[:3]], [mask, None], True, T)),
        (torch.ops.pruneext.l1_mask_write.default, ([x, x[:3]], [mask, None], True, T, [3, 1])),
        (torch.ops.pruneext.l1_mask_write.default, ([x.t()], [mask.t()], False, T, [select_loop.ALL])),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)
