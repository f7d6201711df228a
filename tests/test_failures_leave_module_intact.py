"""A call that raises leaves the module exactly as it was: parameters,
buffers, hooks and state_dict (torch loses the old hook on a failed re-prune)."""
import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext as prune


def snapshot(module):
    return {
        "params": {n: (id(p), p.detach().clone()) for n, p in module.named_parameters()},
        "buffers": {n: b.clone() for n, b in module.named_buffers()},
        "hooks": [(k, id(h)) for m in module.modules() for k, h in m._forward_pre_hooks.items()],
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "attrs": sorted(k for m in module.modules() for k in m.__dict__ if k in ("weight", "bias")),
    }


def assert_unchanged(before, after):
    assert before["hooks"] == after["hooks"]
    assert before["attrs"] == after["attrs"]
    assert before["params"].keys() == after["params"].keys()
    for name, (pid, value) in before["params"].items():
        assert after["params"][name][0] == pid
        assert torch.equal(after["params"][name][1], value)
    assert before["buffers"].keys() == after["buffers"].keys()
    for name, value in before["buffers"].items():
        assert torch.equal(after["buffers"][name], value)
    assert before["state"].keys() == after["state"].keys()


def pruned_once():
    model = torch.nn.Linear(5, 4)
    prune.l1_unstructured(model, "weight", 0.5)
    return model


BAD_CALLS = {
    "bad_amount_type": lambda m: prune.l1_unstructured(m, "weight", "half"),
    "bad_amount_range": lambda m: prune.l1_unstructured(m, "weight", 1.5),
    "too_large_int": lambda m: prune.l1_unstructured(m, "weight", 1000),
    "bad_scores_shape": lambda m: prune.l1_unstructured(m, "weight", 0.5, importance_scores=torch.ones(2)),
    "unknown_name": lambda m: prune.l1_unstructured(m, "nope", 0.5),
    "bad_backend": lambda m: prune.use_backend("nope").__enter__(),
    "structured_bad_dim": lambda m: prune.ln_structured(m, "weight", 0.5, n=2, dim=4),
    "global_too_large": lambda m: prune.global_unstructured([(m, "weight"), (m, "bias")], prune.L1Unstructured, amount=999),
    "non_tensor_scores": lambda m: prune.l1_unstructured(m, "weight", 0.5, importance_scores=[[1.0] * 5] * 4),
    "bool_scores": lambda m: prune.l1_unstructured(m, "weight", 0.5, importance_scores=torch.ones(4, 5, dtype=torch.bool)),
    "explicit_backend_wrong_device": lambda m: _with_backend("cuda", lambda: prune.l1_unstructured(m, "weight", 0.5)),
    "global_mixed_devices": lambda m: prune.global_unstructured(
        [(m, "weight"), (torch.nn.Linear(2, 2, device="meta"), "weight")], prune.L1Unstructured, amount=0.5
    ),
}


def _with_backend(name, fn):
    with prune.use_backend(name):
        fn()


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "already_pruned"])
@pytest.mark.parametrize("call", list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_failed_call_changes_nothing(call, fresh):
    model = torch.nn.Linear(5, 4) if fresh else pruned_once()
    before = snapshot(model)
    with pytest.raises(Exception):
        call(model)
    assert_unchanged(before, snapshot(model))


def test_torch_loses_the_hook_where_we_do_not():
    theirs = torch.nn.Linear(5, 4)
    torch_prune.l1_unstructured(theirs, "weight", 0.5)
    with pytest.raises(ValueError):
        torch_prune.l1_unstructured(theirs, "weight", 1000)
    assert len(theirs._forward_pre_hooks) == 0  # torch's known weakness
    ours = pruned_once()
    with pytest.raises(ValueError):
        prune.l1_unstructured(ours, "weight", 1000)
    assert len(ours._forward_pre_hooks) == 1 and prune.is_pruned(ours)


def test_pruning_a_non_parameter_is_refused_before_any_change():
    model = torch.nn.BatchNorm1d(4)
    before = snapshot(model)
    with pytest.raises(TypeError):
        prune.l1_unstructured(model, "running_mean", 0.5)
    assert_unchanged(before, snapshot(model))


def test_pruning_a_missing_bias_is_refused():
    model = torch.nn.Linear(4, 3, bias=False)
    before = snapshot(model)
    with pytest.raises(TypeError, match="None"):
        prune.l1_unstructured(model, "bias", 0.5)
    assert_unchanged(before, snapshot(model))


class _WrongShapeMask(prune.BasePruningMethod):
    PRUNING_TYPE = "global"

    def compute_mask(self, t, default_mask):
        return torch.ones(3)  # fails when applied to the weight


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "already_pruned"])
def test_failure_while_installing_keeps_order_and_state(fresh):
    model = torch.nn.Linear(5, 4) if fresh else pruned_once()
    if not fresh:
        prune.l1_unstructured(model, "bias", 0.5)
    before = snapshot(model)
    order = (list(model._parameters), list(model._buffers))
    with pytest.raises(RuntimeError):
        _WrongShapeMask.apply(model, "weight")
    assert_unchanged(before, snapshot(model))
    assert (list(model._parameters), list(model._buffers)) == order


def test_global_with_a_non_parameter_changes_no_module():
    a, bn = torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)
    before_a, before_bn = snapshot(a), snapshot(bn)
    with pytest.raises(TypeError):
        prune.global_unstructured([(a, "weight"), (bn, "running_mean")], prune.L1Unstructured, amount=0.5)
    assert_unchanged(before_a, snapshot(a))
    assert_unchanged(before_bn, snapshot(bn))
