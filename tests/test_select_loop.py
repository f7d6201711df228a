"""The selection loop over the phase ops (pruneext.select_loop), in one
process, on every backend that has phase ops: the same masks as the fused
l1_mask_global (itself checked against the numpy oracle), bit for bit."""
import pytest
import torch

import pruneext
from pruneext import backends, ops, select_loop
from test_ops import oracle

PHASE_BACKENDS = [n for n in backends.available_backends() if backends._registry[n].phases is not None]


def lists(dtype, tied, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = (100, 1, 3000, 0, 57)
    if tied:
        xs = [(torch.randint(-20, 20, (n,), generator=g) / 4).to(dtype) for n in sizes]
    else:
        xs = [torch.randn(n, generator=g).to(dtype) for n in sizes]
    if dtype.is_floating_point:
        xs[0][3] = float("nan")
    masks = [None if i % 2 else (torch.rand(x.shape, generator=g) > 0.3).to(torch.uint8) for i, x in enumerate(xs)]
    return xs, masks


@pytest.mark.parametrize("backend", PHASE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16, torch.int32], ids=str)
@pytest.mark.parametrize("tied", [False, True], ids=["tie-free", "tied"])
@pytest.mark.parametrize("among_alive", [False, True])
def test_loop_equals_the_fused_op(backend, dtype, tied, among_alive):
    xs, masks = lists(dtype, tied, seed=hash((str(dtype), tied)) % 1000)
    n_alive = sum(x.numel() if m is None or not among_alive else int((m == 1).sum()) for x, m in zip(xs, masks))
    for k in (0, 1, n_alive // 3, n_alive):
        expected = oracle(xs, k, masks, among_alive) if dtype != torch.int32 else ops.l1_mask_global(xs, k, masks, among_alive)
        with pruneext.use_backend(backend):
            got = select_loop.select(ops.PhaseInput(xs, masks, among_alive), lambda alive: k)
        for x, m, e, o in zip(xs, masks, expected, got):
            # (the oracle answers a mixed list in one promoted dtype)
            assert o.dtype == (x.dtype if m is None else m.dtype)
            assert torch.equal(e.to(o.dtype), o), (k, e, o)


@pytest.mark.parametrize("backend", PHASE_BACKENDS)
def test_loop_checks_k_against_the_alive_count(backend):
    xs, masks = lists(torch.float32, tied=True, seed=3)
    with pruneext.use_backend(backend):
        inputs = ops.PhaseInput(xs, masks, True)
        seen = []
        select_loop.select(inputs, lambda alive: seen.append(alive) or 0)
    assert seen == [sum(x.numel() if m is None else int((m == 1).sum()) for x, m in zip(xs, masks))]


def test_local_comm_counts_the_histogram_bytes():
    comm = select_loop.LocalComm()
    xs, _ = lists(torch.float32, tied=False, seed=4)
    select_loop.select(ops.PhaseInput(xs), lambda alive: alive // 2, comm)
    assert comm.bytes_sent == 8 * (2**12 + 2**11 + 2**8)  # three float32 digits, nothing else


def test_radix_digits_cover_the_key():
    for key_bits, first in ((31, 12), (63, 12), (15, 15)):
        digits = select_loop.radix_digits(key_bits)
        assert digits[0] == (key_bits - first, first) and digits[-1][0] == 0
        assert sum(bits for _, bits in digits) == key_bits


@pytest.mark.skipif("triton" not in PHASE_BACKENDS, reason="the triton backend is not available here")
def test_triton_phase_ops_opcheck():
    from pruneext.backends.triton import phases

    x = (torch.randint(-5, 6, (33, 17), generator=torch.Generator().manual_seed(2)) / 4).float()
    mask = (torch.rand(33, 17, generator=torch.Generator().manual_seed(3)) > 0.3).float()
    threshold = int(ops.PhaseInput([x]).scores[0].view(torch.int32).abs().median())
    for op, args in [
        (phases.key_histogram_op, ([x, x[:3]], [mask, None], True, 0, 8, threshold >> 8)),
        (phases.count_equal_op, ([x, x[:3]], [mask, None], True, threshold)),
        (phases.mask_write_op, ([x, x[:3]], [mask, None], True, threshold, [3, 1])),
        (phases.mask_write_op, ([x.t()], [None], False, threshold, [select_loop.ALL])),
    ]:
        torch.library.opcheck(op, args)
