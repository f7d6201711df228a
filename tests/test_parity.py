"""pruneext against torch.nn.utils.prune itself, on tie-free tensors: the same
masks, the same module state, the same forward and backward."""
import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext as prune
from conftest import distinct_magnitudes


def twin_models(seed=0, dtype=torch.float32, device="cpu"):
    """Two identical small models whose weights have distinct magnitudes."""
    def build():
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5)
        )
        params = list(model.parameters())
        # distinct magnitudes across all parameters, so global pruning is tie-free too
        flat = distinct_magnitudes(sum(p.numel() for p in params), seed=seed) / 1000
        with torch.no_grad():
            for p, values in zip(params, flat.split([p.numel() for p in params])):
                p.copy_(values.reshape(p.shape))
        return model.to(device=device, dtype=dtype)

    return build(), build()


def assert_same_state(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].device == b[key].device, key
        assert torch.equal(a[key], b[key]), key
    for (na, ma), (nb, mb) in zip(ours.named_modules(), theirs.named_modules()):
        hooks_a = [type(h).__name__ for h in ma._forward_pre_hooks.values()]
        hooks_b = [type(h).__name__ for h in mb._forward_pre_hooks.values()]
        assert hooks_a == hooks_b, na


def assert_same_forward_backward(ours, theirs, shape=(2, 3, 6, 6)):
    x = distinct_magnitudes(*shape, seed=99) / 100
    x = x.to(next(ours.parameters()).dtype)
    ya, yb = ours(x), theirs(x)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (na, pa), (nb, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert na == nb
        assert torch.equal(pa.grad, pb.grad), na


@pytest.mark.parametrize("amount", [0, 1, 7, 0.0, 0.3, 0.5, 1.0])
def test_l1_unstructured(backend_device, amount):
    _, device = backend_device
    ours, theirs = twin_models(device=device)
    for (name, mod_a), (_, mod_b) in zip(ours.named_children(), theirs.named_children()):
        if hasattr(mod_a, "weight"):
            prune.l1_unstructured(mod_a, "weight", amount)
            torch_prune.l1_unstructured(mod_b, "weight", amount)
            assert mod_a.weight_orig is not None
    assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)


def test_orig_is_the_same_parameter_object():
    model = torch.nn.Linear(4, 3)
    weight = model.weight
    prune.l1_unstructured(model, "weight", 0.5)
    assert model.weight_orig is weight
    assert model.weight_mask.dtype == weight.dtype and model.weight_mask.device == weight.device
    assert "weight" not in model._parameters and "weight_mask" in model._buffers
    assert isinstance(model._forward_pre_hooks[next(iter(model._forward_pre_hooks))], prune.L1Unstructured)


@pytest.mark.parametrize("amounts", [(0.2, 0.2), (0.5, 3), (4, 0.5, 0.5), (0.9, 0.9)])
def test_iterative_l1(backend_device, amounts):
    _, device = backend_device
    ours, theirs = twin_models(device=device)
    for amount in amounts:
        prune.l1_unstructured(ours[3], "weight", amount)
        torch_prune.l1_unstructured(theirs[3], "weight", amount)
    assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)
    hook = next(iter(ours[3]._forward_pre_hooks.values()))
    assert isinstance(hook, prune.PruningContainer) and len(hook) == len(amounts)


def test_iterative_fraction_of_what_remains():
    model = torch.nn.Linear(10, 10)
    prune.l1_unstructured(model, "weight", 0.2)
    prune.l1_unstructured(model, "weight", 0.2)
    assert int((model.weight_mask == 0).sum()) == 36


def test_importance_scores(backend_device):
    _, device = backend_device
    ours, theirs = twin_models(device=device)
    scores = distinct_magnitudes(5, 64, seed=7, device=device)
    prune.l1_unstructured(ours[3], "weight", 0.4, importance_scores=scores)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.4, importance_scores=scores)
    assert_same_state(ours, theirs)


def test_importance_scores_non_contiguous_work():
    # torch's .view(-1) fails on these; the answer must be that of the
    # contiguous copy.
    model = torch.nn.Linear(6, 4)
    scores_t = distinct_magnitudes(6, 4, seed=3).t()  # shape (4, 6), transposed strides
    prune.l1_unstructured(model, "weight", 0.5, importance_scores=scores_t)
    reference = torch.nn.Linear(6, 4)
    torch_prune.l1_unstructured(reference, "weight", 0.5, importance_scores=scores_t.contiguous())
    assert torch.equal(model.weight_mask, reference.weight_mask)


@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 17, 1.0])
@pytest.mark.parametrize("with_scores", [False, True])
def test_global_unstructured(backend_device, amount, with_scores):
    _, device = backend_device
    ours, theirs = twin_models(device=device)
    pa = [(ours[0], "weight"), (ours[0], "bias"), (ours[3], "weight")]
    pb = [(theirs[0], "weight"), (theirs[0], "bias"), (theirs[3], "weight")]
    scores_a = scores_b = None
    if with_scores:
        shapes = [getattr(m, n).shape for m, n in pa]
        flat = distinct_magnitudes(sum(sh.numel() for sh in shapes), seed=50, device=device)
        s = [t.reshape(sh) for t, sh in zip(flat.split([sh.numel() for sh in shapes]), shapes)]
        scores_a = {key: t for key, t in zip(pa, s)}
        scores_b = {key: t for key, t in zip(pb, s)}
    prune.global_unstructured(pa, pruning_method=prune.L1Unstructured, importance_scores=scores_a, amount=amount)
    torch_prune.global_unstructured(
        pb, pruning_method=torch_prune.L1Unstructured, importance_scores=scores_b, amount=amount
    )
    assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)


def test_global_iterative(backend_device):
    _, device = backend_device
    ours, theirs = twin_models(device=device)
    pa = [(ours[0], "weight"), (ours[3], "weight")]
    pb = [(theirs[0], "weight"), (theirs[3], "weight")]
    prune.l1_unstructured(ours[3], "weight", 0.3)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.3)
    for amount in (0.4, 25):
        prune.global_unstructured(pa, pruning_method=prune.L1Unstructured, amount=amount)
        torch_prune.global_unstructured(pb, pruning_method=torch_prune.L1Unstructured, amount=amount)
        assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)


def test_global_accepts_torch_method_and_generator():
    ours, theirs = twin_models()
    prune.global_unstructured(((m, "weight") for m in (ours[0], ours[3])), torch_prune.L1Unstructured, amount=0.5)
    torch_prune.global_unstructured([(m, "weight") for m in (theirs[0], theirs[3])], torch_prune.L1Unstructured, amount=0.5)
    assert_same_state(ours, theirs)


def test_global_random_unstructured_same_as_torch():
    ours, theirs = twin_models()
    pa = [(ours[0], "weight"), (ours[3], "weight")]
    pb = [(theirs[0], "weight"), (theirs[3], "weight")]
    torch.manual_seed(5)
    prune.global_unstructured(pa, pruning_method=prune.RandomUnstructured, amount=0.3)
    torch.manual_seed(5)
    torch_prune.global_unstructured(pb, pruning_method=torch_prune.RandomUnstructured, amount=0.3)
    assert_same_state(ours, theirs)


@pytest.mark.parametrize(
    "call",
    [
        lambda lib, m: lib.identity(m, "weight"),
        lambda lib, m: lib.random_unstructured(m, "weight", 0.4),
        lambda lib, m: lib.random_structured(m, "weight", 0.5, dim=0),
        lambda lib, m: lib.ln_structured(m, "weight", 0.5, n=2, dim=0),
        lambda lib, m: lib.ln_structured(m, "weight", 2, n=1, dim=1, importance_scores=torch.rand(5, 64)),
        lambda lib, m: lib.custom_from_mask(m, "weight", (torch.arange(320).reshape(5, 64) % 3 > 0)),
    ],
    ids=["identity", "random_unstructured", "random_structured", "ln_structured", "ln_scores", "custom_from_mask"],
)
def test_other_methods_match_torch(call):
    ours, theirs = twin_models()
    for lib, model in ((prune, ours), (torch_prune, theirs)):
        torch.manual_seed(11)
        call(lib, model[3])
        # compose with an L1 step on top, in a container
        lib.l1_unstructured(model[3], "weight", 0.25)
    assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)


def test_class_apply_and_prune_methods():
    ours, theirs = twin_models()
    method_a = prune.L1Unstructured.apply(ours[3], "weight", amount=0.5)
    method_b = torch_prune.L1Unstructured.apply(theirs[3], "weight", amount=0.5)
    assert isinstance(method_a, torch_prune.L1Unstructured) and type(method_a).__name__ == type(method_b).__name__
    assert_same_state(ours, theirs)
    t = distinct_magnitudes(4, 5, seed=2)
    assert torch.equal(prune.L1Unstructured(0.5).prune(t), torch_prune.L1Unstructured(0.5).prune(t))
    mask = (torch.arange(20).reshape(4, 5) % 2).float()
    assert torch.equal(
        prune.L1Unstructured(3).compute_mask(t, mask), torch_prune.L1Unstructured(3).compute_mask(t, mask)
    )


@pytest.mark.parametrize("remover", ["pruneext", "torch"])
def test_remove(remover):
    ours, theirs = twin_models()
    prune.l1_unstructured(ours[3], "weight", 0.5)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.5)
    (prune if remover == "pruneext" else torch_prune).remove(ours[3], "weight")
    torch_prune.remove(theirs[3], "weight")
    assert_same_state(ours, theirs)
    assert isinstance(ours[3].weight, torch.nn.Parameter)
    assert not prune.is_pruned(ours)


def test_is_pruned_across_libraries():
    a, b = twin_models()
    assert not prune.is_pruned(a) and not torch_prune.is_pruned(a)
    prune.l1_unstructured(a[0], "weight", 0.5)
    torch_prune.l1_unstructured(b[0], "weight", 0.5)
    assert prune.is_pruned(a) and torch_prune.is_pruned(a)
    assert prune.is_pruned(b) and torch_prune.is_pruned(b)


@pytest.mark.parametrize("first", ["pruneext", "torch"])
def test_reprune_builds_pruneext_container(first):
    ours, theirs = twin_models()
    lib = prune if first == "pruneext" else torch_prune
    lib.l1_unstructured(ours[3], "weight", 0.3)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.3)
    prune.l1_unstructured(ours[3], "weight", 0.3)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.3)
    hook = next(iter(ours[3]._forward_pre_hooks.values()))
    assert type(hook) is prune.PruningContainer
    assert torch.equal(ours[3].weight_mask, theirs[3].weight_mask)


def test_torch_reprunes_a_pruneext_module():
    ours, theirs = twin_models()
    prune.l1_unstructured(ours[3], "weight", 0.3)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.3)
    torch_prune.l1_unstructured(ours[3], "weight", 0.3)
    torch_prune.l1_unstructured(theirs[3], "weight", 0.3)
    assert torch.equal(ours[3].weight_mask, theirs[3].weight_mask)


def test_state_dict_moves_between_libraries():
    ours, theirs = twin_models()
    prune.l1_unstructured(ours[3], "weight", 0.5)
    torch_prune.identity(theirs[3], "weight")
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(theirs[3].weight_mask, ours[3].weight_mask)
    assert torch.equal(theirs(torch.ones(1, 3, 6, 6)), ours(torch.ones(1, 3, 6, 6)))


def test_global_with_a_parameter_listed_twice_matches_torch():
    ours, theirs = twin_models()
    pa = [(ours[3], "weight"), (ours[3], "weight"), (ours[0], "weight")]
    pb = [(theirs[3], "weight"), (theirs[3], "weight"), (theirs[0], "weight")]
    prune.global_unstructured(pa, prune.L1Unstructured, amount=0.3)
    torch_prune.global_unstructured(pb, torch_prune.L1Unstructured, amount=0.3)
    assert_same_state(ours, theirs)


def test_subclass_overriding_compute_mask_is_obeyed_on_first_prune():
    class KeepAll(prune.L1Unstructured):
        def compute_mask(self, t, default_mask):
            return default_mask.clone()

    model = torch.nn.Linear(6, 5)
    KeepAll.apply(model, "weight", amount=0.5)
    assert int((model.weight_mask == 0).sum()) == 0


@pytest.mark.parametrize("amount", [True, False])
def test_bool_amounts_behave_as_torch(amount):
    outcomes = []
    for lib in (prune, torch_prune):
        model = torch.nn.Linear(6, 5)
        try:
            lib.l1_unstructured(model, "weight", amount)
            outcomes.append(int((model.weight_mask == 0).sum()))
        except Exception as e:
            outcomes.append((type(e), str(e)))
    assert outcomes[0] == outcomes[1]


def test_meta_modules_prune_like_torch():
    ours, theirs = torch.nn.Linear(6, 5, device="meta"), torch.nn.Linear(6, 5, device="meta")
    prune.l1_unstructured(ours, "weight", 0.3)
    torch_prune.l1_unstructured(theirs, "weight", 0.3)
    assert ours.weight_mask.shape == theirs.weight_mask.shape and ours.weight_mask.is_meta
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_global_of_nothing_raises_torchs_type():
    for lib in (prune, torch_prune):
        with pytest.raises(ValueError, match="non-empty"):
            lib.global_unstructured([], lib.L1Unstructured, amount=0.5)
