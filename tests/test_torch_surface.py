"""Code written for torch.nn.utils.prune, run with `import pruneext as prune`:
every function, class and module helper of torch's module, each way user
code calls it (positional and keyword arguments, integer masks and scores,
mocked methods), on every backend, compared with torch itself."""
import inspect
from unittest import mock

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext as prune
from conftest import distinct_magnitudes

# What torch's module defines itself (not what it imports: ABC, numbers, ...).
TORCH_NAMES = sorted(
    name
    for name, obj in vars(torch_prune).items()
    if not name.startswith("__") and getattr(obj, "__module__", None) == torch_prune.__name__
)


def outcome(fn, *args, **kwargs):
    """The value fn returns, or the type and message of what it raises."""
    try:
        return ("value", fn(*args, **kwargs))
    except Exception as e:  # noqa: BLE001  (the exception is the result)
        return ("raised", type(e), str(e))


def same_outcome(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "raised":
        return a == b
    va, vb = a[1], b[1]
    return torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb


# ------------------------------------------------------------ the module surface


def test_torch_module_names_are_all_here():
    assert "_compute_nparams_toprune" in TORCH_NAMES  # the listing sees private helpers
    missing = [name for name in TORCH_NAMES if not hasattr(prune, name)]
    assert not missing, f"pruneext lacks torch.nn.utils.prune's {missing}"


def parameters(fn):
    """Names, kinds and defaults of fn's parameters (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", [n for n in TORCH_NAMES if callable(getattr(torch_prune, n))])
def test_signatures_are_torchs(name):
    ours, theirs = getattr(prune, name), getattr(torch_prune, name)
    if inspect.isclass(theirs):
        assert issubclass(ours, theirs)
        for attr in ("apply", "compute_mask", "__init__", "prune", "remove", "add_pruning_method"):
            if hasattr(theirs, attr):
                assert parameters(getattr(ours, attr)) == parameters(getattr(theirs, attr)), attr
    else:
        assert parameters(ours) == parameters(theirs)


AMOUNTS = [0, 3, 0.0, 0.25, 1.0, 1, -1, 1.5, -0.5, "0.5", None, True, 10**20]


@pytest.mark.parametrize("amount", AMOUNTS, ids=repr)
def test_amount_helpers_answer_as_torch(amount):
    for helper, args in [
        ("_validate_pruning_amount_init", (amount,)),
        ("_validate_pruning_amount", (amount, 8)),
        ("_compute_nparams_toprune", (amount, 8)),
    ]:
        a = outcome(getattr(prune, helper), *args)
        b = outcome(getattr(torch_prune, helper), *args)
        assert same_outcome(a, b), (helper, a, b)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("dim", [0, 1, -1, 2, 3])
def test_structured_helpers_answer_as_torch(shape, dim):
    t = distinct_magnitudes(*shape, seed=1)
    for helper, args in [
        ("_validate_structured_pruning", (t,)),
        ("_validate_pruning_dim", (t, dim)),
        ("_compute_norm", (t, 2, dim)),
        ("_compute_norm", (t, 1, dim)),
    ]:
        a = outcome(getattr(prune, helper), *args)
        b = outcome(getattr(torch_prune, helper), *args)
        assert same_outcome(a, b), (helper, a, b)


# ------------------------------------------------- every function, every form


def linear_pair(device, seed=0):
    """Two identical Linear(5, 4) whose weights have distinct magnitudes."""
    mods = []
    for _ in range(2):
        m = torch.nn.Linear(5, 4).to(device)
        with torch.no_grad():
            m.weight.copy_(distinct_magnitudes(4, 5, seed=seed, device=device) / 10)
            m.bias.copy_(distinct_magnitudes(4, seed=seed + 1, device=device) / 10)
        mods.append(m)
    return mods


def assert_same_module(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    assert [type(h).__name__ for h in a._forward_pre_hooks.values()] == [
        type(h).__name__ for h in b._forward_pre_hooks.values()
    ]
    assert torch.equal(a.weight, b.weight)


def seeded(fn):
    """fn under a fixed RNG seed (the random methods draw from torch's RNG)."""
    torch.manual_seed(1234)
    return fn()


def _call_forms(lib, device):
    """(label, call) for each function and signature form user code uses."""
    scores = distinct_magnitudes(4, 5, seed=7, device=device)
    mask = (distinct_magnitudes(4, 5, seed=8, device=device).abs() > 6).float()
    return [
        ("identity", lambda m: lib.identity(m, "weight")),
        ("random_unstructured", lambda m: lib.random_unstructured(m, "weight", 0.4)),
        ("random_unstructured kw", lambda m: lib.random_unstructured(m, name="weight", amount=3)),
        ("l1_unstructured", lambda m: lib.l1_unstructured(m, "weight", 0.4)),
        ("l1_unstructured kw", lambda m: lib.l1_unstructured(module=m, name="weight", amount=7)),
        ("l1_unstructured scores", lambda m: lib.l1_unstructured(m, "weight", 5, scores)),
        ("l1_unstructured scores kw", lambda m: lib.l1_unstructured(m, "weight", 0.5, importance_scores=scores)),
        ("l1_unstructured bias", lambda m: lib.l1_unstructured(m, "bias", 2)),
        ("random_structured", lambda m: lib.random_structured(m, "weight", 0.5, 0)),
        ("random_structured kw", lambda m: lib.random_structured(m, "weight", amount=2, dim=-1)),
        ("ln_structured", lambda m: lib.ln_structured(m, "weight", 0.5, 2, 0)),
        ("ln_structured kw", lambda m: lib.ln_structured(m, "weight", amount=2, n=1, dim=1, importance_scores=scores)),
        ("ln_structured inf", lambda m: lib.ln_structured(m, "weight", 1, float("inf"), -1)),
        ("custom_from_mask", lambda m: lib.custom_from_mask(m, "weight", mask)),
        ("custom_from_mask kw", lambda m: lib.custom_from_mask(m, name="weight", mask=mask)),
        ("L1Unstructured.apply", lambda m: lib.L1Unstructured.apply(m, "weight", 0.3)),
        ("L1Unstructured.apply kw", lambda m: lib.L1Unstructured.apply(m, "weight", amount=4, importance_scores=scores)),
        ("RandomUnstructured.apply", lambda m: lib.RandomUnstructured.apply(m, "weight", amount=0.5)),
        ("LnStructured.apply", lambda m: lib.LnStructured.apply(m, "weight", 1, 2, 0)),
        ("RandomStructured.apply", lambda m: lib.RandomStructured.apply(m, "weight", 0.5, dim=1)),
        ("CustomFromMask.apply", lambda m: lib.CustomFromMask.apply(m, "weight", mask)),
        ("Identity.apply", lambda m: lib.Identity.apply(m, "weight")),
        ("twice", lambda m: (lib.l1_unstructured(m, "weight", 0.3), lib.l1_unstructured(m, "weight", 0.5))),
        ("l1 then ln", lambda m: (lib.l1_unstructured(m, "weight", 3), lib.ln_structured(m, "weight", 1, 2, 0))),
        ("random then l1", lambda m: (lib.random_unstructured(m, "weight", 3), lib.l1_unstructured(m, "weight", 0.5))),
        ("mask then l1", lambda m: (lib.custom_from_mask(m, "weight", mask), lib.l1_unstructured(m, "weight", 0.5))),
        ("l1 then remove", lambda m: (lib.l1_unstructured(m, "weight", 6), lib.remove(m, "weight"))),
        ("remove kw", lambda m: (lib.l1_unstructured(m, "weight", 6), lib.remove(module=m, name="weight"))),
    ]


FORM_LABELS = [label for label, _ in _call_forms(torch_prune, "cpu")]


@pytest.mark.parametrize("form", FORM_LABELS)
def test_every_function_form_matches_torch(backend_device, form):
    _, device = backend_device
    ours, theirs = linear_pair(device)
    call_ours = dict(_call_forms(prune, device))[form]
    call_theirs = dict(_call_forms(torch_prune, device))[form]
    a = outcome(seeded, lambda: call_ours(ours))
    b = outcome(seeded, lambda: call_theirs(theirs))
    assert a[0] == b[0] == "value", (a, b)
    assert_same_module(ours, theirs)
    assert prune.is_pruned(ours) == torch_prune.is_pruned(theirs)


def test_global_unstructured_forms_match_torch(backend_device):
    _, device = backend_device
    (a1, b1), (a2, b2) = linear_pair(device, seed=0), linear_pair(device, seed=20)
    with torch.no_grad():
        a2.weight.mul_(1.001)
        b2.weight.mul_(1.001)  # no magnitude shared with the first pair
    scores_a = {(a1, "weight"): a1.weight.detach().abs() + 1}
    scores_b = {(b1, "weight"): b1.weight.detach().abs() + 1}
    for lib, m1, m2, scores in ((prune, a1, a2, scores_a), (torch_prune, b1, b2, scores_b)):
        lib.global_unstructured([(m1, "weight"), (m2, "weight")], lib.L1Unstructured, amount=0.3)
        lib.global_unstructured(
            parameters=((m1, "weight"), (m2, "bias")),
            pruning_method=lib.L1Unstructured,
            importance_scores=scores,
            amount=5,
        )
    assert_same_module(a1, b1)
    assert_same_module(a2, b2)


def test_method_objects_behave_as_torchs(backend_device):
    _, device = backend_device
    t = distinct_magnitudes(4, 5, seed=3, device=device)
    mask = (distinct_magnitudes(4, 5, seed=4, device=device).abs() > 5).float()
    for make in (
        lambda lib: lib.L1Unstructured(0.5),
        lambda lib: lib.L1Unstructured(amount=7),
        lambda lib: lib.LnStructured(0.5, n=2, dim=0),
        lambda lib: lib.Identity(),
        lambda lib: lib.CustomFromMask(mask),
    ):
        ours, theirs = make(prune), make(torch_prune)
        assert torch.equal(ours.compute_mask(t, mask), theirs.compute_mask(t, mask))
        assert torch.equal(ours.compute_mask(t, default_mask=mask), theirs.compute_mask(t, default_mask=mask))
        assert torch.equal(ours.prune(t), theirs.prune(t))
        assert torch.equal(ours.prune(t, default_mask=mask, importance_scores=t.flip(0)),
                           theirs.prune(t, default_mask=mask, importance_scores=t.flip(0)))


def test_container_api_as_torchs(backend_device):
    _, device = backend_device
    t = distinct_magnitudes(4, 5, seed=5, device=device)
    results = []
    for lib in (prune, torch_prune):
        first = lib.L1Unstructured(0.2)
        first._tensor_name = "weight"
        container = lib.PruningContainer(first)
        second = lib.L1Unstructured(amount=0.5)
        second._tensor_name = "weight"
        container.add_pruning_method(second)
        third = lib.LnStructured(1, n=1, dim=0)
        third._tensor_name = "weight"
        container.add_pruning_method(third)
        assert len(container) == 3 and container[1] is second and list(container)[2] is third
        results.append(container.compute_mask(t, default_mask=torch.ones_like(t)))
    assert torch.equal(results[0], results[1])


# ------------------------------------------- integer masks and scores, kernels


INT_MASK_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", INT_MASK_DTYPES, ids=str)
def test_integer_default_masks_as_torch(backend_device, dtype):
    _, device = backend_device
    t = distinct_magnitudes(3, 8, seed=6, device=device)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 1]] * 3, dtype=dtype, device=device)
    for amount in (0.5, 4):
        ours = prune.L1Unstructured(amount).compute_mask(t, mask)
        theirs = torch_prune.L1Unstructured(amount).compute_mask(t, mask)
        assert ours.dtype == theirs.dtype == dtype
        assert torch.equal(ours, theirs)
    # iterative: a container whose newest method prunes among the entries left
    results = []
    for lib in (prune, torch_prune):
        first = lib.CustomFromMask(mask)
        first._tensor_name = "w"
        container = lib.PruningContainer(first)
        second = lib.L1Unstructured(0.5)
        second._tensor_name = "w"
        container.add_pruning_method(second)
        results.append(container.compute_mask(t, mask))
    assert results[0].dtype == results[1].dtype and torch.equal(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
def test_integer_scores_as_torch(backend_device, dtype):
    _, device = backend_device
    # distinct magnitudes (torch's ties are topk's choice), signs mixed
    n = 24
    values = torch.randperm(n, generator=torch.Generator().manual_seed(9)) + 1
    signs = 1 if dtype == torch.uint8 else torch.where(torch.arange(n) % 3 == 0, -1, 1)
    scores = (values * signs).reshape(4, 6).to(dtype).to(device)
    ours, theirs = torch.nn.Linear(6, 4).to(device), torch.nn.Linear(6, 4).to(device)
    prune.l1_unstructured(ours, "weight", 0.5, importance_scores=scores)
    torch_prune.l1_unstructured(theirs, "weight", 0.5, importance_scores=scores)
    assert torch.equal(ours.weight_mask, theirs.weight_mask)
    prune.l1_unstructured(ours, "weight", 5, importance_scores=scores)
    torch_prune.l1_unstructured(theirs, "weight", 5, importance_scores=scores)
    assert torch.equal(ours.weight_mask, theirs.weight_mask)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64], ids=str)
def test_most_negative_integer_is_the_largest_magnitude(backend_device, dtype):
    _, device = backend_device
    info = torch.iinfo(dtype)
    low, high = (info.min, info.max) if dtype != torch.int64 else (-(2**53), 2**53 - 1)  # exact in float64
    scores = torch.tensor([low, high, low + 1, 0, -1, 1], dtype=dtype, device=device)
    # keep only the largest magnitude: the most negative value
    mask = prune.ops.l1_mask(scores, 5)
    assert mask.tolist() == [1, 0, 0, 0, 0, 0]
    assert mask.dtype == dtype  # no default mask: the scores' dtype


def test_int64_scores_beyond_float64_exact_range(backend_device):
    name, device = backend_device
    scores = torch.tensor([-(2**63), 2**62 + 1, 2**62, 3], device=device)
    if name == "torch":
        assert prune.ops.l1_mask(scores, 3).tolist() == [1, 0, 0, 0]
        return
    with pytest.raises(TypeError, match="above 2\\^53"):
        prune.ops.l1_mask(scores, 3)
    with prune.use_backend("auto"):  # auto ranks them on torch, and says so in the log
        with mock.patch.object(prune.backends.log, "debug") as debug:
            assert prune.ops.l1_mask(scores, 3).tolist() == [1, 0, 0, 0]
        assert any("2^53" in str(c) for c in debug.call_args_list)


def test_auto_uses_the_kernels_for_integer_dtypes():
    if "cpu" not in prune.available_backends():
        pytest.skip("C++ kernels not built")
    for score_dtype in (torch.int8, torch.int32, torch.int64):
        for mask_dtype in (torch.int64, torch.int8, torch.float8_e4m3fn, torch.complex64, None):
            assert prune.backends.resolve("cpu", score_dtype, mask_dtype).name == "cpu"


def test_auto_logs_what_stays_on_torch():
    if "cpu" not in prune.available_backends():
        pytest.skip("C++ kernels not built")
    with mock.patch.object(prune.backends.log, "isEnabledFor", return_value=True), \
            mock.patch.object(prune.backends.log, "debug") as debug:
        mask = prune.ops.l1_mask(torch.randn(6), 2, torch.ones(6, dtype=torch.complex128))
    assert mask.dtype == torch.complex128 and int((mask == 0).sum()) == 2
    assert "complex128" in str(debug.call_args)


# ------------------------------------------------------------ patched methods


def test_patched_l1_compute_mask_runs_on_first_prune(backend_device):
    _, device = backend_device
    model = torch.nn.Linear(5, 4).to(device)
    keep_all = lambda self, t, default_mask: default_mask.clone()  # noqa: E731
    with mock.patch.object(prune.L1Unstructured, "compute_mask", autospec=True, side_effect=keep_all) as patched:
        prune.l1_unstructured(model, "weight", 0.5)
        assert patched.call_count == 1
        assert int((model.weight_mask == 0).sum()) == 0
        prune.l1_unstructured(model, "weight", 0.5)  # a container of two patched methods
        assert int((model.weight_mask == 0).sum()) == 0
        prune.global_unstructured([(model, "bias")], prune.L1Unstructured, amount=2)
        assert int((model.bias_mask == 0).sum()) == 0
    prune.l1_unstructured(model, "weight", 0.5)  # unpatched again: the kernel prunes
    assert int((model.weight_mask == 0).sum()) == 10


def test_failing_mock_leaves_the_module_as_it_was(backend_device):
    _, device = backend_device
    model = torch.nn.Linear(5, 4).to(device)
    prune.l1_unstructured(model, "weight", 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = list(model._forward_pre_hooks.values())
    with mock.patch.object(prune.L1Unstructured, "compute_mask", side_effect=RuntimeError("boom")):
        with pytest.raises(RuntimeError, match="boom"):
            prune.l1_unstructured(model, "weight", 0.5)
    assert list(model._forward_pre_hooks.values()) == hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_instance_patch_is_what_runs(backend_device):
    _, device = backend_device
    t = distinct_magnitudes(4, 5, seed=2, device=device)
    method = prune.L1Unstructured(0.5)
    with mock.patch.object(method, "compute_mask", wraps=lambda t, default_mask: default_mask.clone()) as patched:
        assert int((method.first_mask(t, t) == 0).sum()) == 0
        assert patched.called


def test_patched_torch_method_inside_our_container(backend_device):
    _, device = backend_device
    model = torch.nn.Linear(5, 4).to(device)
    torch_prune.l1_unstructured(model, "weight", 0.2)
    spy = mock.patch.object(
        torch_prune.L1Unstructured, "compute_mask", autospec=True,
        side_effect=lambda self, t, default_mask: default_mask.clone(),
    )
    with spy as patched:
        # torch's method as the newest of a pruneext container: the patched rule runs
        container = prune.PruningContainer(_named(torch_prune.L1Unstructured(0.5), "weight"))
        mask = container.compute_mask(model.weight_orig.detach(), model.weight_mask)
        assert patched.called
        assert torch.equal(mask, model.weight_mask)
        # and so it does when re-pruning with torch's method through pruneext
        prune.PruningContainer.extending(_single_hook(model), _named(torch_prune.L1Unstructured(0.5), "weight"))
        before = model.weight_mask.clone()
        torch_prune.L1Unstructured.apply(model, "weight", 0.5)
        assert torch.equal(model.weight_mask, before)


def _single_hook(module):
    (hook,) = module._forward_pre_hooks.values()
    return hook


def _named(method, name):
    method._tensor_name = name
    return method
