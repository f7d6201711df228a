"""pruneext.patch_torch(): code that calls torch.nn.utils.prune itself (and
never imports pruneext) runs pruneext's kernels for L1 pruning, and nothing
else in torch's module changes. The oracle is torch itself, run unpatched."""
import contextlib
import importlib.util
import inspect
import io
import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.nn.utils.prune as torch_prune

import pruneext
from conftest import distinct_magnitudes
from pruneext import patch as patch_module
from test_parity import assert_same_forward_backward, assert_same_state, twin_models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torch's module as it is before any test patches it (pruneext is imported,
# not patched, when this file is collected)
ORIGINAL = dict(vars(torch_prune))
PATCHED_NAMES = {"L1Unstructured", "l1_unstructured", "global_unstructured"}
TORCH_L1 = ORIGINAL["L1Unstructured"]  # what `from torch.nn.utils.prune import L1Unstructured` gives


@pytest.fixture(autouse=True)
def torch_left_unpatched():
    """Every test leaves torch's module as it found it (other test files use
    it as their oracle); a test that leaks the patch fails here."""
    assert not pruneext.patch.is_torch_patched()
    yield
    leaked = pruneext.patch.is_torch_patched()
    pruneext.unpatch_torch()
    assert not leaked, "the test left torch.nn.utils.prune patched"
    assert all(getattr(torch_prune, name) is obj for name, obj in ORIGINAL.items())


class Spies:
    """Counts the calls into pruneext's mask ops and into torch's
    concatenation (torch's global_unstructured flattens the scores and the
    masks through torch.nn.utils.parameters_to_vector: two calls a time)."""

    def __enter__(self):
        self._patches = [
            mock.patch.object(pruneext.ops, "l1_mask", wraps=pruneext.ops.l1_mask),
            mock.patch.object(pruneext.ops, "l1_mask_global", wraps=pruneext.ops.l1_mask_global),
            mock.patch.object(torch.nn.utils, "parameters_to_vector", wraps=torch.nn.utils.parameters_to_vector),
        ]
        self.l1_mask, self.l1_mask_global, self.concatenations = (p.__enter__() for p in self._patches)
        return self

    def __exit__(self, *exc):
        for p in reversed(self._patches):
            p.__exit__(*exc)
        return False


def weights(model):
    return [(m, "weight") for m in model if hasattr(m, "weight")]


def hook_of(module):
    (hook,) = module._forward_pre_hooks.values()
    return hook


# ------------------------------------------------------- what is patched


def test_patch_swaps_three_names_and_unpatch_restores_every_object():
    with pruneext.patch_torch():
        now = dict(vars(torch_prune))
        assert set(now) == set(ORIGINAL)
        changed = {name for name in ORIGINAL if now[name] is not ORIGINAL[name]}
        assert changed == PATCHED_NAMES  # everything else is torch's very object
        assert torch_prune.L1Unstructured is pruneext.L1Unstructured
        assert torch_prune.l1_unstructured is pruneext.l1_unstructured
        assert torch_prune.global_unstructured is patch_module.global_unstructured
        assert torch_prune.PruningContainer is ORIGINAL["PruningContainer"]
    after = dict(vars(torch_prune))
    assert set(after) == set(ORIGINAL)
    assert all(after[name] is ORIGINAL[name] for name in ORIGINAL)


def test_patched_names_keep_torchs_signatures():
    def parameters(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    for name in ("l1_unstructured", "global_unstructured"):
        assert parameters(patch_module._REPLACEMENTS[name]) == parameters(ORIGINAL[name]), name
    for attr in ("__init__", "apply", "compute_mask", "prune"):
        assert parameters(getattr(pruneext.L1Unstructured, attr)) == parameters(getattr(TORCH_L1, attr)), attr


def test_the_readme_example_runs_as_written():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Code that calls `torch.nn.utils.prune` itself", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    expected = code.rsplit("# ", 1)[1].split(":", 1)[0]  # the count its last comment states
    assert out.getvalue().strip() == expected


def test_patching_twice_is_harmless_and_one_unpatch_restores():
    pruneext.patch_torch()
    pruneext.patch_torch()  # must not save pruneext's objects as "the originals"
    assert pruneext.patch.is_torch_patched()
    pruneext.unpatch_torch()
    assert all(getattr(torch_prune, name) is ORIGINAL[name] for name in PATCHED_NAMES)
    pruneext.unpatch_torch()  # unpatching what is not patched: nothing happens
    assert all(getattr(torch_prune, name) is ORIGINAL[name] for name in PATCHED_NAMES)


def test_context_manager_restores_when_the_block_raises():
    with pytest.raises(KeyError, match="from the block"):
        with pruneext.patch_torch() as handle:
            assert pruneext.patch.is_torch_patched()
            assert "patched: True" in repr(handle)
            raise KeyError("from the block")
    assert all(getattr(torch_prune, name) is ORIGINAL[name] for name in PATCHED_NAMES)


def test_a_block_inside_a_patched_program_leaves_it_patched():
    pruneext.patch_torch()
    try:
        with pruneext.patch_torch():
            pass
        assert pruneext.patch.is_torch_patched()
    finally:
        pruneext.unpatch_torch()


def test_unpatch_leaves_an_attribute_someone_else_replaced_since():
    theirs = object()
    pruneext.patch_torch()
    try:
        torch_prune.global_unstructured = theirs  # another library patched on top of ours
        pruneext.unpatch_torch()
        assert torch_prune.global_unstructured is theirs
        assert torch_prune.L1Unstructured is TORCH_L1
    finally:
        torch_prune.global_unstructured = ORIGINAL["global_unstructured"]


# ----------------------------------------- the same masks as torch, on the kernels


def prune_per_layer(model):
    torch_prune.l1_unstructured(model[0], "weight", 0.4)
    torch_prune.l1_unstructured(model[0], "weight", amount=7)  # a container's L1 step
    torch_prune.L1Unstructured.apply(model[3], "weight", 0.5)
    torch_prune.l1_unstructured(model[3], "bias", 2, importance_scores=model[3].bias.detach().flip(0))


def test_l1_unstructured_matches_torch_and_runs_the_kernel():
    ours, theirs = twin_models()
    prune_per_layer(theirs)  # the oracle: torch, unpatched
    with pruneext.patch_torch(), Spies() as spies:
        prune_per_layer(ours)
    assert spies.l1_mask.call_count == 4
    assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)
    assert isinstance(hook_of(ours[0]), pruneext.PruningContainer)  # among alive, no gathered copy


def test_torchs_own_l1_unstructured_captured_before_the_patch_routes_too():
    # torch's function looks L1Unstructured up in its module when called
    torch_l1_unstructured = ORIGINAL["l1_unstructured"]
    ours, theirs = twin_models()
    torch_l1_unstructured(theirs[3], "weight", 0.3)
    with pruneext.patch_torch(), Spies() as spies:
        torch_l1_unstructured(ours[3], "weight", 0.3)
    assert spies.l1_mask.call_count == 1
    assert_same_state(ours, theirs)


def test_method_objects_and_a_users_own_container_run_the_kernel():
    t = distinct_magnitudes(6, 7, seed=3)
    default = (distinct_magnitudes(6, 7, seed=4).abs() > 10).float()

    def compute(lib):
        method = lib.L1Unstructured(amount=0.5)
        first = lib.L1Unstructured(0.2)
        first._tensor_name = "w"
        container = lib.PruningContainer(first)  # torch's container class, patched or not
        second = lib.L1Unstructured(amount=5)
        second._tensor_name = "w"
        container.add_pruning_method(second)
        return [method.compute_mask(t, default), method.prune(t), container.compute_mask(t, default.clone())]

    expected = compute(torch_prune)
    with pruneext.patch_torch(), Spies() as spies:
        got = compute(torch_prune)
    assert spies.l1_mask.call_count == 3
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("captured", [False, True], ids=["L1-looked-up", "L1-captured-before-patch"])
def test_global_unstructured_matches_torch_without_concatenating(captured):
    ours, theirs = twin_models()

    def prune_globally(model, method):
        torch_prune.global_unstructured(weights(model), pruning_method=method, amount=0.3)
        params = [(model[0], "weight"), (model[3], "weight"), (model[3], "bias")]
        torch_prune.global_unstructured(params, pruning_method=method, amount=9)  # iterative

    prune_globally(theirs, torch_prune.L1Unstructured)
    with pruneext.patch_torch(), Spies() as spies:
        prune_globally(ours, TORCH_L1 if captured else torch_prune.L1Unstructured)
    assert spies.l1_mask_global.call_count == 2
    assert spies.concatenations.call_count == 0  # torch's path concatenates twice per call
    assert_same_state(ours, theirs)
    assert_same_forward_backward(ours, theirs)


def test_exactly_k_pruned_on_tied_data_lowest_index_first():
    def tied():
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4))
        with torch.no_grad():
            for p in model.parameters():  # every magnitude equal, signs mixed
                p.copy_(torch.where(torch.arange(p.numel()).reshape(p.shape) % 3 == 0, -0.5, 0.5))
        return model

    a, b = tied(), tied()
    with pruneext.patch_torch():
        torch_prune.l1_unstructured(a[0], "weight", 0.4)
        torch_prune.global_unstructured(weights(a), pruning_method=TORCH_L1, amount=17)
    assert int((a[0].weight_mask == 0).sum()) + int((a[1].weight_mask == 0).sum()) == 12 + 17
    # pruneext's own tie rule (lowest flat index; global: parameter order first)
    pruneext.l1_unstructured(b[0], "weight", 0.4)
    pruneext.global_unstructured(weights(b), pruning_method=pruneext.L1Unstructured, amount=17)
    assert_same_state(a, b)
    assert torch.equal(a[0].weight_mask.flatten()[:12], torch.zeros(12))


# --------------------------------------------- everything else stays torch's


def test_other_methods_take_torchs_own_global_unstructured():
    class MyL1(TORCH_L1):  # a subclass may have its own rule: torch's path
        pass

    for method in (torch_prune.RandomUnstructured, MyL1):
        ours, theirs = twin_models()
        torch.manual_seed(5)
        torch_prune.global_unstructured(weights(theirs), pruning_method=method, amount=0.4)
        with pruneext.patch_torch(), Spies() as spies, mock.patch.object(
            patch_module, "_TORCH_GLOBAL_UNSTRUCTURED", wraps=ORIGINAL["global_unstructured"]
        ) as torchs:
            torch.manual_seed(5)
            torch_prune.global_unstructured(weights(ours), pruning_method=method, amount=0.4)
        assert torchs.call_count == 1, method
        assert spies.l1_mask_global.call_count == 0
        assert spies.concatenations.call_count == 2  # torch's own algorithm ran
        assert_same_state(ours, theirs)
        assert type(hook_of(ours[0])) is ORIGINAL["CustomFromMask"]  # torch's own hooks


def test_code_holding_torchs_class_from_before_the_patch_keeps_it():
    module = torch.nn.Linear(5, 4)
    with pruneext.patch_torch(), Spies() as spies:
        TORCH_L1.apply(module, "weight", 3)  # `from torch.nn.utils.prune import L1Unstructured`, earlier
    assert type(hook_of(module)) is TORCH_L1
    assert spies.l1_mask.call_count == 0


def test_isinstance_of_hooks_made_before_and_after_the_patch():
    before, after = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    torch_prune.l1_unstructured(before, "weight", 2)
    with pruneext.patch_torch():
        torch_prune.l1_unstructured(after, "weight", 2)
        old, new = hook_of(before), hook_of(after)
        assert isinstance(new, torch_prune.L1Unstructured) and isinstance(new, TORCH_L1)
        assert isinstance(old, TORCH_L1) and isinstance(old, torch_prune.BasePruningMethod)
        # the limit the README states: a hook made before the patch is torch's
        # class, not pruneext's subclass now named torch_prune.L1Unstructured
        assert not isinstance(old, torch_prune.L1Unstructured)
        torch_prune.remove(before, "weight")  # torch's remove serves both
        torch_prune.remove(after, "weight")
    assert isinstance(new, torch_prune.L1Unstructured)  # pruneext's class subclasses torch's


@pytest.mark.parametrize("source", ["patched", "torch"])
def test_state_dict_moves_between_patched_and_unpatched(source):
    def prune_all(model):
        prune_per_layer(model)
        torch_prune.global_unstructured(weights(model), pruning_method=torch_prune.L1Unstructured, amount=0.2)

    patched, plain = twin_models()
    with pruneext.patch_torch():
        prune_all(patched)
    prune_all(plain)
    assert_same_state(patched, plain)
    src, dst = (patched, plain) if source == "patched" else (plain, patched)
    x = distinct_magnitudes(2, 3, 6, 6, seed=9) / 100
    fresh, _ = twin_models(seed=1)  # the layout of dst, other values
    if dst is patched:
        with pruneext.patch_torch():
            prune_all(fresh)
    else:
        prune_all(fresh)
    fresh.load_state_dict(src.state_dict())
    assert torch.equal(fresh(x), src(x))


# ------------------------------------------------------------ torch's errors


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def _global(m, method="looked-up", **kwargs):
    cls = TORCH_L1 if method == "captured" else torch_prune.L1Unstructured
    return torch_prune.global_unstructured([(m[0], "weight"), (m[1], "weight")], pruning_method=cls, **kwargs)


BAD_CALLS = {
    **{
        f"{form} amount={amount!r}": (lambda m, f=fn, a=amount: f(m, a))
        for amount in (-1, 1.5, -0.5, "0.5", None, True, 10**20, 13, float("nan"))
        for form, fn in {
            "l1_unstructured": lambda m, a: torch_prune.l1_unstructured(m[0], "weight", a),
            "L1Unstructured.compute_mask": lambda m, a: torch_prune.L1Unstructured(a).compute_mask(m[0].weight, torch.ones(3, 4)),
            "global": lambda m, a: _global(m, amount=a),
            "global captured L1": lambda m, a: _global(m, "captured", amount=a),
            "re-prune": lambda m, a: (torch_prune.l1_unstructured(m[0], "weight", 10), torch_prune.l1_unstructured(m[0], "weight", a)),
        }.items()
    },
    "l1 unknown name": lambda m: torch_prune.l1_unstructured(m[0], "foo", 0.5),
    "l1 scores not a tensor": lambda m: torch_prune.l1_unstructured(m[0], "weight", 0.5, importance_scores=[1.0]),
    "l1 buffer": lambda m: (m[0].register_buffer("buf", torch.ones(3)), torch_prune.l1_unstructured(m[0], "buf", 1)),
    "global not iterable": lambda m: torch_prune.global_unstructured(5, pruning_method=torch_prune.L1Unstructured, amount=1),
    "global scores not a dict": lambda m: _global(m, importance_scores=[1], amount=1),
    "global unknown name": lambda m: torch_prune.global_unstructured([(m[0], "foo")], pruning_method=torch_prune.L1Unstructured, amount=1),
    "global no amount": lambda m: _global(m),
    "global unknown keyword": lambda m: _global(m, amount=1, foo=2),
    "global not pairs": lambda m: torch_prune.global_unstructured([m[0]], pruning_method=torch_prune.L1Unstructured, amount=1),
    "global twice, too many": lambda m: (_global(m, amount=15), _global(m, amount=4)),
}


def outcome(call):
    try:
        call(_model())
    except Exception as e:  # noqa: BLE001  (the exception is the result)
        return type(e), str(e)
    return "no error"


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_errors_are_torchs(case):
    expected = outcome(BAD_CALLS[case])
    with pruneext.patch_torch():
        got = outcome(BAD_CALLS[case])
    assert got == expected


# README, "Errors": where pruneext raises earlier or clearer than torch on purpose
DOCUMENTED_DIFFERENCES = {
    "global empty list": (lambda m: torch_prune.global_unstructured([], pruning_method=torch_prune.L1Unstructured, amount=1),
                          ValueError, ValueError),
    "l1 of a None parameter": (lambda m: (setattr(m[0], "bias", None), torch_prune.l1_unstructured(m[0], "bias", 1)),
                               TypeError, TypeError),
    "global wrong-shape score": (lambda m: _global(m, importance_scores={(m[0], "weight"): torch.ones(2)}, amount=1),
                                 IndexError, AssertionError),
}


@pytest.mark.parametrize("case", sorted(DOCUMENTED_DIFFERENCES))
def test_errors_that_differ_are_the_documented_ones(case):
    call, torchs_type, patched_type = DOCUMENTED_DIFFERENCES[case]
    expected = outcome(call)
    with pruneext.patch_torch():
        got = outcome(call)
    assert expected[0] is torchs_type and got[0] is patched_type
    assert got != expected  # else it belongs in BAD_CALLS


# ------------------------------------------- memory, as third-party code sees it


def probe(mode, caller):
    """Peak extra memory of one global_unstructured call over 8 x
    Linear(1024, 1024) in a fresh interpreter (tests/patch_torch_probe.py)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "patch_torch_probe.py"), mode, caller],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["reset"]:
        pytest.skip("the RSS high-water mark cannot be reset here (/proc/self/clear_refs)")
    assert result["pruned"] == result["entries"] // 2
    return result


def assert_memory_drop(caller):
    torchs, patched = probe("torch", caller), probe("patched", caller)
    assert torchs["hook"] == "torch.nn.utils.prune" and patched["hook"] == "pruneext.methods"
    ratio_torch = torchs["peak_extra_bytes"] / torchs["param_bytes"]
    ratio_patched = patched["peak_extra_bytes"] / patched["param_bytes"]
    figures = f"peak extra memory: torch {ratio_torch:.2f}x, patched {ratio_patched:.2f}x the parameter bytes"
    # pruneext keeps the masks and the masked weights (2x) and ranks in place;
    # at least the masks must show, or the measurement saw nothing
    assert 1.0 <= ratio_patched <= 4.0, figures
    assert ratio_patched < 0.5 * ratio_torch, figures  # torch concatenates (about 12x here)


def test_patched_global_unstructured_does_not_concatenate_the_model():
    assert_memory_drop("direct")


# ------------------------------------------------------------------ Lightning


def _lightning():
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            if importlib.util.find_spec(name) is not None:
                return importlib.import_module(name)
        except ImportError:
            continue
    return None


L = _lightning()
needs_lightning = pytest.mark.skipif(L is None, reason="neither lightning nor pytorch_lightning is installed")


def lightning_run(use_global, patched):
    """Two epochs of a small LightningModule under ModelPruning('l1_unstructured',
    amount=0.5); returns the final state_dict and the spies' counts."""

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    model = Net()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 4)), batch_size=16)
    callback = L.callbacks.ModelPruning("l1_unstructured", amount=0.5, use_global_unstructured=use_global, verbose=0)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    with (pruneext.patch_torch() if patched else contextlib.nullcontext()), Spies() as spies:
        trainer.fit(model, data)
    counts = (spies.l1_mask.call_count, spies.l1_mask_global.call_count, spies.concatenations.call_count)
    return {k: v.clone() for k, v in model.state_dict().items()}, counts


@needs_lightning
@pytest.mark.parametrize("use_global", [True, False], ids=["global", "per-layer"])
def test_lightning_model_pruning_runs_the_kernels(use_global):
    expected, (_, _, concatenations) = lightning_run(use_global, patched=False)
    got, (l1_calls, global_calls, patched_concatenations) = lightning_run(use_global, patched=True)
    if use_global:
        assert concatenations == 4 and (global_calls, patched_concatenations) == (2, 0)
    else:
        assert l1_calls == 2 * 4  # two epochs, two weights and two biases
    assert list(got) == list(expected)  # make_pruning_permanent: plain weight / bias keys
    for key in got:
        assert torch.equal(got[key], expected[key]), key
    total = sum(t.numel() for t in got.values())
    zeros = sum(int((t == 0).sum()) for t in got.values())
    if use_global:
        assert zeros == round(0.5 * (total - round(0.5 * total))) + round(0.5 * total)  # 75 %, exactly


@needs_lightning
def test_lightning_global_pruning_memory_drop():
    assert_memory_drop("lightning")
