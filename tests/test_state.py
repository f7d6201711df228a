"""State that travels: state_dict across libraries, torch.save / torch.load,
copy.deepcopy, remove, torch.compile, and pruning from several threads."""
import copy
import io
import threading

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext as prune
from test_parity import assert_same_state, twin_models

X = torch.linspace(-1, 1, 2 * 3 * 6 * 6).reshape(2, 3, 6, 6)


def prune_all(lib, model):
    lib.l1_unstructured(model[0], "weight", 0.4)
    lib.l1_unstructured(model[0], "weight", 0.4)
    lib.global_unstructured([(model[0], "bias"), (model[3], "weight")], lib.L1Unstructured, amount=0.5)


@pytest.mark.parametrize("source", ["torch", "pruneext"])
def test_state_dict_round_trip_between_libraries(source):
    ours, theirs = twin_models()
    prune_all(prune, ours)
    prune_all(torch_prune, theirs)
    assert_same_state(ours, theirs)
    src, dst = (theirs, ours) if source == "torch" else (ours, theirs)
    expected = src(X)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    # a fresh model of the other library, pruned to get the same layout
    fresh, _ = twin_models(seed=1)
    prune_all(prune if dst is ours else torch_prune, fresh)
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(X), expected)


def test_torch_save_load_whole_module():
    model, _ = twin_models()
    prune_all(prune, model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(X), model(X))
    assert prune.is_pruned(loaded)


def test_deepcopy_works_where_torch_fails():
    ours, theirs = twin_models()
    prune_all(prune, ours)
    prune_all(torch_prune, theirs)
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(theirs)
    clone = copy.deepcopy(ours)
    assert torch.equal(clone(X), ours(X))
    for (name, a), (_, b) in zip(clone.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    clone(X).sum().backward()
    assert clone[0].weight_orig.grad is not None and ours[0].weight_orig.grad is None
    # after a forward (the attribute is recomputed with autograd) it still copies
    ours(X).sum().backward()
    assert torch.equal(copy.deepcopy(ours)(X), ours(X))


def test_remove_keeps_pruned_values():
    model, _ = twin_models()
    prune_all(prune, model)
    pruned = ((0, "weight"), (0, "bias"), (3, "weight"))
    expected = {(i, n): getattr(model[i], n).detach().clone() for i, n in pruned}
    for i, name in pruned:
        prune.remove(model[i], name)
        assert isinstance(getattr(model[i], name), torch.nn.Parameter)
        assert torch.equal(getattr(model[i], name), expected[(i, name)])
    assert not prune.is_pruned(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())


def test_compiled_pruned_model_matches_eager():
    model, _ = twin_models()
    prune_all(prune, model)
    eager = model(X)
    compiled = torch.compile(model, backend="eager")
    assert torch.equal(compiled(X), eager)


def test_pruning_from_several_threads():
    models = [twin_models(seed=s)[0] for s in range(4)]
    references = [twin_models(seed=s)[1] for s in range(4)]
    errors = []

    def work(model):
        try:
            for _ in range(3):
                prune.l1_unstructured(model[3], "weight", 0.3)
                prune.global_unstructured([(model[0], "weight"), (model[0], "bias")], prune.L1Unstructured, amount=0.2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for model, ref in zip(models, references):
        for _ in range(3):
            torch_prune.l1_unstructured(ref[3], "weight", 0.3)
            torch_prune.global_unstructured([(ref[0], "weight"), (ref[0], "bias")], torch_prune.L1Unstructured, amount=0.2)
        assert_same_state(model, ref)
