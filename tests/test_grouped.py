"""The grouped select (ops.l1_mask_grouped: the row and N:M scopes) on every
backend, against torch.topk per row / per group of M on tie-free data and a
numpy oracle (lexsort in each group) on tied data, with NaN, prior masks,
per-group budgets, and the errors."""
import numpy as np
import pytest
import torch

import pruneext
from pruneext import ops

from conftest import distinct_magnitudes
from group_oracle import oracle

NATIVE = [b for b in ("cpu",) if b in pruneext.available_backends()]


def as_numpy(t):
    return t.detach().cpu().to(torch.float64).numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_rows_match_topk_per_row(backend_device, dtype):
    _, device = backend_device
    x = distinct_magnitudes(6, 50, dtype=dtype, device=device)
    mask = ops.l1_mask_grouped(x, 50, 17)
    want = torch.ones(6, 50)
    want.scatter_(1, x.abs().float().cpu().topk(17, dim=1, largest=False).indices, 0)
    assert torch.equal(mask.cpu().float(), want)
    assert mask.dtype == dtype


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_n_m_matches_topk_per_group(backend_device, n, m):
    _, device = backend_device
    x = distinct_magnitudes(16, 32, device=device)
    mask = ops.l1_mask_grouped(x, m, n)
    want = torch.ones(16 * 32 // m, m)
    want.scatter_(1, x.abs().cpu().reshape(-1, m).topk(n, dim=1, largest=False).indices, 0)
    assert torch.equal(mask.cpu(), want.reshape(16, 32))
    assert torch.equal((mask.reshape(-1, m) == 0).sum(1), torch.full((16 * 32 // m,), n, device=device))


@pytest.mark.parametrize("group_size", [1, 2, 3, 4, 8, 16, 32, 33, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
def test_tied_data_with_nan_and_prior_masks(backend_device, group_size, dtype):
    _, device = backend_device
    g = torch.Generator().manual_seed(group_size)
    x = torch.randint(-2, 3, (2, 2 * group_size), generator=g).to(dtype)
    x.view(-1)[::7] = float("nan")
    x.view(-1)[1::5] = -0.0
    mask = (torch.rand(x.shape, generator=g) > 0.3).to(dtype)
    x, mask = x.to(device), mask.to(device)
    k = min(2, group_size)
    group_k = torch.randint(0, group_size + 1, (x.numel() // group_size,), generator=g)
    for among_alive in (False, True):
        for budgets in (None, group_k):
            gk = None if budgets is None else budgets.to(device)
            got = ops.l1_mask_grouped(x, group_size, k, mask, among_alive, gk)
            assert got.dtype == dtype and got.device == x.device
            np.testing.assert_array_equal(as_numpy(got), oracle(x, group_size, k, mask, among_alive, budgets))
    got = ops.l1_mask_grouped(x, group_size, k)
    np.testing.assert_array_equal(as_numpy(got), oracle(x, group_size, k))
    # exactly k pruned in every group without a mask, ties included
    assert torch.equal((got.reshape(-1, group_size) == 0).sum(1).cpu(), torch.full((x.numel() // group_size,), k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rows_across_chunks(monkeypatch, dtype):
    """The row kernel's steps of ROW_BLOCK entries, shrunk so a row spans
    several: the ties taken carry from one step to the next."""
    if "triton" not in pruneext.available_backends():
        pytest.skip("the triton backend is not available here")
    from pruneext.backends.triton import groups

    monkeypatch.setattr(groups, "ROW_BLOCK", 16)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (3, 50), generator=g).to(dtype)
    mask = (torch.rand(x.shape, generator=g) > 0.3).to(dtype)
    group_k = torch.tensor([0, 31, 50])
    with pruneext.use_backend("triton"):
        for budgets in (None, group_k):
            got = ops.l1_mask_grouped(x, 50, 20, mask, True, budgets)
            np.testing.assert_array_equal(as_numpy(got), oracle(x, 50, 20, mask, True, budgets))


def test_n_m_on_a_pruned_mask_tops_up_each_group(backend_device):
    """2:4 after an unstructured pruning: groups with two or more zeros stay
    as they were, the others get exactly two."""
    _, device = backend_device
    x = distinct_magnitudes(8, 16, device=device)
    prior = (torch.rand(8, 16, generator=torch.Generator().manual_seed(1)) > 0.4).float().to(device)
    got = ops.l1_mask_grouped(x, 4, 2, prior, among_alive=True)
    zeros = (got.reshape(-1, 4) == 0).sum(1)
    prior_zeros = (prior.reshape(-1, 4) == 0).sum(1)
    assert torch.equal(zeros, torch.maximum(prior_zeros, torch.full_like(prior_zeros, 2)))
    assert bool(((prior == 0) <= (got == 0)).all())  # never revives an entry
    np.testing.assert_array_equal(as_numpy(got), oracle(x, 4, 2, prior, True))


@pytest.mark.parametrize(
    "mask_dtype", [torch.bool, torch.uint8, torch.int64, torch.float16, torch.float64, torch.float8_e4m3fn]
)
def test_mask_dtypes_are_kept(backend_device, mask_dtype):
    _, device = backend_device
    x = distinct_magnitudes(4, 12, device=device)
    mask = (torch.arange(48).reshape(4, 12) % 5 != 0).to(mask_dtype).to(device)
    got = ops.l1_mask_grouped(x, 4, 2, mask, among_alive=True)
    assert got.dtype == mask_dtype
    want = oracle(x, 4, 2, mask.float(), True)
    np.testing.assert_array_equal(as_numpy(got.float()), want)


def test_integer_scores(backend_device):
    _, device = backend_device
    x = torch.tensor([[3, -1, 2, 5, 0, 7, -7, 1]], dtype=torch.int32, device=device)
    got = ops.l1_mask_grouped(x, 4, 2)
    assert got.dtype == torch.int32
    assert got.cpu().tolist() == [[1, 0, 0, 1, 0, 1, 1, 0]]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: ops.l1_mask_grouped(x, 5, 2), ValueError, "do not split into groups of 5"),
        (lambda x: ops.l1_mask_grouped(x, 0, 0), ValueError, "group_size must be positive"),
        (lambda x: ops.l1_mask_grouped(x, 4, 5), ValueError, r"k=5 must be in \[0, group_size=4\]"),
        (lambda x: ops.l1_mask_grouped(x, 4, -1), ValueError, r"k=-1 must be in"),
        (lambda x: ops.l1_mask_grouped(x, 4, 2, group_k=torch.zeros(6, dtype=torch.int32, device=x.device)),
         TypeError, "group_k must be int64"),
        (lambda x: ops.l1_mask_grouped(x, 4, 2, group_k=torch.zeros(5, dtype=torch.int64, device=x.device)),
         ValueError, r"expected \[6\]"),
        (lambda x: ops.l1_mask_grouped(x, 4, 2, group_k=torch.full((6,), 5, dtype=torch.int64, device=x.device)),
         ValueError, r"outside \[0, 4\]"),
        (lambda x: ops.l1_mask_grouped(x, 4, 2, torch.ones(3, 4, device=x.device)), RuntimeError,
         "does not match scores"),
    ],
)
def test_errors_are_the_same_on_every_backend(backend_device, call, error, message):
    _, device = backend_device
    x = distinct_magnitudes(2, 12, device=device)
    with pytest.raises(error, match=message):
        call(x)


def test_empty_and_zero_k(backend_device):
    _, device = backend_device
    assert ops.l1_mask_grouped(torch.empty(0, 4, device=device), 4, 2).shape == (0, 4)
    x = distinct_magnitudes(3, 8, device=device)
    mask = (torch.arange(24).reshape(3, 8) % 3 != 0).float().to(device)
    assert torch.equal(ops.l1_mask_grouped(x, 8, 0, mask), mask)
    assert torch.equal(ops.l1_mask_grouped(x, 8, 8), torch.zeros_like(x))


@pytest.mark.parametrize("backend", NATIVE)
def test_native_op_passes_opcheck(backend):
    x = distinct_magnitudes(4, 40)
    mask = (torch.arange(160).reshape(4, 40) % 3 != 0).float()
    for args in [(x, 4, 2, None, False, None), (x, 40, 7, mask, True, torch.arange(4, dtype=torch.int64))]:
        torch.library.opcheck(torch.ops.pruneext.l1_mask_grouped.default, args)


def test_triton_op_passes_opcheck():
    if "triton" not in pruneext.available_backends():
        pytest.skip("the triton backend is not available here")
    x = distinct_magnitudes(4, 40)
    mask = (torch.arange(160).reshape(4, 40) % 3 != 0).float()
    for args in [(x, 4, 2, None, False, None), (x, 40, 7, mask, True, torch.arange(4, dtype=torch.int64))]:
        torch.library.opcheck(torch.ops.pruneext.l1_mask_grouped_triton.default, args)


def test_compiles_with_the_fake():
    if not NATIVE:
        pytest.skip("pruneext._C is not built here")
    x = distinct_magnitudes(8, 16)

    def f(t):  # the op itself: torch 2.11's dynamo cannot trace the backend choice's ContextVar
        return torch.ops.pruneext.l1_mask_grouped(t, 4, 2) * t

    got = torch.compile(f, backend="eager", fullgraph=True)(x)
    assert torch.equal(got, f(x))
