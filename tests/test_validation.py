"""Every validation error: same exception type and message as torch."""
import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext as prune


def raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def assert_same_error(call, kind):
    """call(lib) must raise `kind` with the same message for both libraries."""
    ours, theirs = raised(lambda: call(prune)), raised(lambda: call(torch_prune))
    assert ours == theirs
    assert ours[0] is kind


@pytest.mark.parametrize("amount", ["0.5", None, [0.2], 1 + 2j])
@pytest.mark.parametrize("cls", ["L1Unstructured", "RandomUnstructured"])
def test_amount_type(cls, amount):
    ours = raised(lambda: getattr(prune, cls)(amount))
    theirs = raised(lambda: getattr(torch_prune, cls)(amount))
    assert ours == theirs
    assert ours[0] is TypeError


@pytest.mark.parametrize("amount", [-1, -0.1, 1.5, float("inf")])
@pytest.mark.parametrize("cls", ["L1Unstructured", "RandomUnstructured"])
def test_amount_range(cls, amount):
    ours = raised(lambda: getattr(prune, cls)(amount))
    theirs = raised(lambda: getattr(torch_prune, cls)(amount))
    assert ours == theirs
    assert ours[0] is ValueError


@pytest.mark.parametrize("amount", [float("nan")])
def test_nan_amount_matches_torch(amount):
    # torch accepts nan at construction (no comparison is true) and fails at
    # mask time; we must fail (or not) exactly where it does.
    ours = raised(lambda: prune.l1_unstructured(torch.nn.Linear(3, 2), "weight", amount))
    theirs = raised(lambda: torch_prune.l1_unstructured(torch.nn.Linear(3, 2), "weight", amount))
    assert ours[0] is theirs[0]


def test_int_amount_too_large_single():
    assert_same_error(lambda lib: lib.l1_unstructured(torch.nn.Linear(3, 2), "weight", 7), ValueError)


def test_int_amount_too_large_iterative():
    def run(lib):
        m = torch.nn.Linear(4, 2)
        with torch.no_grad():
            m.weight.copy_(torch.arange(1.0, 9.0).reshape(2, 4))
        lib.l1_unstructured(m, "weight", 5)
        lib.l1_unstructured(m, "weight", 4)  # only 3 entries are left

    assert_same_error(run, ValueError)


def test_int_amount_too_large_global():
    def run(lib):
        a, b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)
        lib.global_unstructured([(a, "weight"), (b, "weight")], lib.L1Unstructured, amount=11)

    assert_same_error(run, ValueError)


def test_importance_scores_shape():
    def run(lib):
        m = torch.nn.Linear(3, 2)
        lib.l1_unstructured(m, "weight", 0.5, importance_scores=torch.ones(3, 2))

    ours, theirs = raised(lambda: run(prune)), raised(lambda: run(torch_prune))
    assert ours[0] is theirs[0] is AssertionError
    assert ours[1].split(" of ")[0] == theirs[1].split(" of ")[0]
    assert ours[1].endswith(theirs[1].split(", got ")[1])


def test_unknown_parameter_name():
    assert_same_error(lambda lib: lib.l1_unstructured(torch.nn.Linear(3, 2), "nope", 0.5), AttributeError)


def test_global_not_iterable_and_bad_scores():
    for call in (
        lambda lib: lib.global_unstructured(3, lib.L1Unstructured, amount=0.5),
        lambda lib: lib.global_unstructured(
            [(torch.nn.Linear(2, 2), "weight")], lib.L1Unstructured, importance_scores=[1], amount=0.5
        ),
    ):
        assert_same_error(call, TypeError)


def test_global_structured_method_refused():
    def run(lib):
        m = torch.nn.Linear(3, 2)
        lib.global_unstructured([(m, "weight")], lib.LnStructured, amount=0.5, n=2, dim=0)

    ours, theirs = raised(lambda: run(prune)), raised(lambda: run(torch_prune))
    assert ours[0] is theirs[0] is TypeError
    assert "Only \"unstructured\" PRUNING_TYPE supported" in ours[1]


def test_global_mixed_devices_refused():
    # torch checks devices only for CUDA tensors (a CPU/meta mix fails later
    # inside torch.cat); pruneext refuses any mix, with torch's message.
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2).to("meta")
    kind, message = raised(
        lambda: prune.global_unstructured([(a, "weight"), (b, "weight")], prune.L1Unstructured, amount=0.5)
    )
    assert kind is TypeError
    assert message.startswith("Found two parameters on different devices, this is currently not supported.")
    assert "cpu" in message and "meta" in message
    assert not prune.is_pruned(a) and not prune.is_pruned(b)


def test_structured_errors_match():
    for call in (
        lambda lib: lib.ln_structured(torch.nn.Linear(3, 2), "bias", 0.5, n=2, dim=0),
        lambda lib: lib.ln_structured(torch.nn.Linear(3, 2), "weight", 0.5, n=2, dim=5),
        lambda lib: lib.random_structured(torch.nn.Linear(3, 2), "weight", 3, dim=0),
    ):
        ours, theirs = raised(lambda: call(prune)), raised(lambda: call(torch_prune))
        assert ours == theirs
