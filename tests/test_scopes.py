"""The row and N:M scopes in the API: the drop-in methods (nm_structured,
row_unstructured) against torch.topk and the numpy oracle, their module
state as torch.nn.utils.prune leaves it, activation-aware scores (Wanda),
MagnitudePruner's grouped scopes through training steps, and the export to
semi-structured sparse weights (its refusals here; the conversion where
CUDA is)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import pruneext
from conftest import distinct_magnitudes
from group_oracle import oracle


def linear(out_features=8, in_features=16, seed=0):
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(distinct_magnitudes(out_features, in_features, seed=seed))
    return layer


def topk_mask(scores, group_size, k):
    """1 everywhere but the k smallest |scores| of each group (torch.topk)."""
    flat = scores.detach().abs().float().reshape(-1, group_size)
    mask = torch.ones_like(flat)
    mask.scatter_(1, flat.topk(k, dim=1, largest=False).indices, 0)
    return mask.reshape(scores.shape)


def test_nm_structured_is_2_4_and_leaves_torch_state(backend_device):
    _, device = backend_device
    layer = linear().to(device)
    weight = layer.weight
    pruneext.nm_structured(layer, "weight")
    assert layer.weight_orig is weight and torch_prune.is_pruned(layer)
    assert torch.equal(layer.weight_mask.cpu(), topk_mask(weight.cpu(), 4, 2))
    assert torch.equal(layer.weight, weight * layer.weight_mask)
    assert isinstance(next(iter(layer._forward_pre_hooks.values())), pruneext.NMStructured)
    # torch's state round-trips into a layer pruned by torch's own method
    other = nn.Linear(16, 8).to(device)
    torch_prune.custom_from_mask(other, "weight", torch.ones(8, 16, device=device))
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(torch.ones(2, 16, device=device)), layer(torch.ones(2, 16, device=device)))
    torch_prune.remove(layer, "weight")
    assert torch.equal(((layer.weight.reshape(-1, 4) == 0).sum(1)).cpu(), torch.full((32,), 2))


def test_nm_after_unstructured_is_a_container_that_tops_up(backend_device):
    _, device = backend_device
    layer = linear().to(device)
    pruneext.l1_unstructured(layer, "weight", amount=0.3)
    before = layer.weight_mask.clone()
    pruneext.nm_structured(layer, "weight", n=2, m=4)
    assert isinstance(next(iter(layer._forward_pre_hooks.values())), pruneext.PruningContainer)
    np.testing.assert_array_equal(
        layer.weight_mask.cpu().numpy(), oracle(layer.weight_orig, 4, 2, before, among_alive=True)
    )
    assert bool(((layer.weight_mask.reshape(-1, 4) == 0).sum(1) >= 2).all())


@pytest.mark.parametrize("n, m", [(1, 4), (4, 8)])
def test_other_n_m(n, m):
    layer = linear()
    pruneext.nm_structured(layer, "weight", n=n, m=m)
    assert torch.equal(layer.weight_mask, topk_mask(layer.weight_orig, m, n))


def test_bad_n_m_raise_before_anything_changes():
    layer = nn.Linear(6, 4)  # last dimension 6: no groups of 4
    params = dict(layer.named_parameters())
    with pytest.raises(ValueError, match="multiple of 4"):
        pruneext.nm_structured(layer, "weight")
    assert dict(layer.named_parameters()) == params and not torch_prune.is_pruned(layer)
    for n, m, error in [(3, 2, ValueError), (2, 0, ValueError), (2.0, 4, TypeError), (-1, 4, ValueError)]:
        with pytest.raises(error):
            pruneext.nm_structured(linear(), "weight", n=n, m=m)


def test_row_unstructured_matches_topk_per_row(backend_device):
    _, device = backend_device
    layer = linear(6, 50).to(device)
    pruneext.row_unstructured(layer, "weight", amount=0.3)
    assert torch.equal(layer.weight_mask.cpu(), topk_mask(layer.weight_orig.cpu(), 50, 15))
    assert torch.equal(layer.weight_mask.sum(1).cpu(), torch.full((6,), 35.0))


def test_row_unstructured_in_a_container_prunes_a_fraction_of_each_rows_rest():
    layer = linear(6, 50)
    pruneext.l1_unstructured(layer, "weight", amount=0.4)  # rows keep different counts
    before = layer.weight_mask.clone()
    alive = (before == 1).sum(1)
    pruneext.row_unstructured(layer, "weight", amount=0.5)
    group_k = (50 - alive) + torch.tensor([round(0.5 * int(n)) for n in alive])
    np.testing.assert_array_equal(
        layer.weight_mask.numpy(), oracle(layer.weight_orig, 50, 0, before, among_alive=True, group_k=group_k)
    )
    with pytest.raises(ValueError, match="should be smaller than"):
        pruneext.row_unstructured(layer, "weight", amount=40)  # an int above a row's alive count


def test_wanda_scores_rank_weight_times_input_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    batches = [torch.randn(5, 3, 16) for _ in range(3)]
    with pruneext.ActivationNorms(model) as norms:
        for b in batches:
            model(b)
    model(torch.randn(2, 16))  # outside the block: not recorded
    x = torch.cat([b.reshape(-1, 16) for b in batches])
    want = model[0].weight.detach().abs() * x.pow(2).sum(0).sqrt()
    torch.testing.assert_close(norms.scores(model[0]), want)
    pruneext.row_unstructured(model[0], "weight", 0.5, importance_scores=norms.scores(model[0]))
    assert torch.equal(model[0].weight_mask, topk_mask(want, 16, 8))
    with pytest.raises(KeyError, match="no input recorded"):
        pruneext.ActivationNorms(model).norm(model[0])


def _train(model, pruner, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(steps):
        model(torch.randn(4, 16)).pow(2).sum().backward()
        for layer in (model[0], model[2]):  # gradients are masked as they accumulate
            assert bool((layer.weight.grad[~pruner.mask(layer)] == 0).all())
        opt.step()
        opt.zero_grad()
        pruner.step()


@pytest.mark.parametrize("mask_format", ["bits", "bool"])
def test_pruner_keeps_2_4_through_training(mask_format):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    want = [topk_mask(layer.weight, 4, 2) for layer in (model[0], model[2])]
    pruner = pruneext.MagnitudePruner(model, 1.0, scope="2:4", mask_format=mask_format)
    for layer, mask in zip((model[0], model[2]), want):
        assert torch.equal(pruner.mask(layer).float(), mask)
    _train(model, pruner)
    for layer in (model[0], model[2]):
        assert bool(((layer.weight.reshape(-1, 4) == 0).sum(1) >= 2).all())
        assert torch.equal(pruner.mask(layer).float(), want.pop(0))


def test_pruner_n_m_schedule_converts_layer_by_layer():
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    pruner = pruneext.MagnitudePruner(model, lambda step: min(1.0, 0.5 * step), scope="2:4")
    assert bool(pruner.mask(model[0]).all()) and bool(pruner.mask(model[2]).all())
    pruner.step()  # half of the weights: the first
    assert int((~pruner.mask(model[0])).sum()) == 12 * 16 // 2 and bool(pruner.mask(model[2]).all())
    pruner.step()
    assert int((~pruner.mask(model[2])).sum()) == 8 * 12 // 2


def test_pruner_row_scope_with_a_schedule_and_wanda_scores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8))
    with pruneext.ActivationNorms(model) as norms:
        model(torch.randn(32, 16))
    want = topk_mask(norms.scores(model[0]), 16, 4)
    pruner = pruneext.MagnitudePruner(model, lambda step: 0.25 * min(step + 1, 2), scope="row", scores=norms)
    assert torch.equal(pruner.mask(model[0]).float(), want)
    _train(model, pruner, steps=2)
    assert torch.equal((~pruner.mask(model[0])).sum(1), torch.full((12,), 8))
    assert bool((pruner.mask(model[0]) <= want.bool()).all())  # masks only grow
    assert bool((model[0].weight[~pruner.mask(model[0])] == 0).all())


def test_pruner_scope_errors():
    model = nn.Sequential(nn.Linear(6, 4))
    for scope, match in [("2:4", "divisible by 4"), ("5:4", "0 <= n <= m"), ("rows", "unknown scope"), ("2:x", "unknown")]:
        with pytest.raises(ValueError, match=match):
            pruneext.MagnitudePruner(model, 0.5, scope=scope)
    with pytest.raises(ValueError, match="scores="):
        pruneext.MagnitudePruner(model, 0.5, scope="global", scores=object())
    assert bool((model[0].weight != 0).all())


def test_to_semi_structured_refusals_leave_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 6), nn.Linear(6, 4).half(), nn.Linear(16, 16).half())
    pruneext.nm_structured(model[0], "weight")
    with torch.no_grad():
        model[3].weight.copy_(model[3].weight * topk_mask(model[3].weight, 4, 2).half())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = pruneext.to_semi_structured(model)
    assert report.converted == []
    assert "float16 or bfloat16" in report.skipped["0"] and "float16 or bfloat16" in report.skipped["1"]
    assert "multiple of 4" in report.skipped["2"]
    assert "CUDA" in report.skipped["3"]
    assert "left dense" in str(report)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="semi-structured sparse weights need a CUDA device of compute capability 8.0 or more",
)
def test_to_semi_structured_converts_2_4_linears_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 64)).half().cuda()
    pruneext.nm_structured(model[0], "weight")
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    dense = model(x)
    report = pruneext.to_semi_structured(model)
    assert report.converted == ["0"] and "not 2:4" in report.skipped["1"]
    assert isinstance(model[0].weight.data, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(model(x), dense, rtol=1e-2, atol=1e-2)
