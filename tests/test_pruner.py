"""pruneext.MagnitudePruner (lean training mode) against torch.nn.utils.prune
and the numpy oracle: the same masks, exact k, in place, through training,
state, removal and bad input; and pruneext.schedules."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import pruneext
from conftest import distinct_magnitudes
from pruneext import backends, schedules
from test_ops import oracle, quantized

FORMATS = ["bits", "bool"]
SCOPES = ["global", "layer"]
BIT_BACKENDS = [n for n in backends.available_backends() if "cpu" in backends._registry[n].devices and backends._registry[n].bits]


def model(seed=0, dtype=torch.float32, distinct=True):
    """Linear layers (and a conv) whose weights have distinct magnitudes
    across the whole model (tie-free), or heavily tied ones."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 7), nn.Conv1d(1, 3, 5))
    weights = [m[0].weight, m[2].weight, m[3].weight]
    total = sum(w.numel() for w in weights)
    flat = distinct_magnitudes(total, seed=seed) / total if distinct else quantized(total, 3, torch.float32, seed=seed)
    with torch.no_grad():
        for w, part in zip(weights, flat.split([w.numel() for w in weights])):
            w.copy_(part.reshape(w.shape))
    return m.to(dtype)


def pairs(m):
    return [(m[0], "weight"), (m[2], "weight"), (m[3], "weight")]


def torch_masks(m, amounts, scope):
    """torch.nn.utils.prune's masks after pruning `amounts` one after the
    other (ints: entries, among those still alive)."""
    r = copy.deepcopy(m)
    for amount in amounts:
        if scope == "global":
            torch_prune.global_unstructured(pairs(r), torch_prune.L1Unstructured, amount=amount)
        else:
            for mod, name in pairs(r):
                torch_prune.l1_unstructured(mod, name, amount=amount)
    return [mod.weight_mask.bool() for mod, _ in pairs(r)]


@pytest.fixture(params=BIT_BACKENDS)
def backend(request):
    with pruneext.use_backend(request.param):
        yield request.param


# ---------------------------------------------------------------- the masks


@pytest.mark.parametrize("mask_format", FORMATS)
@pytest.mark.parametrize("scope", SCOPES)
def test_masks_equal_torch_and_grow(backend, scope, mask_format):
    m = model()
    sizes = [w.numel() for w in (m[0].weight, m[2].weight, m[3].weight)]
    total = sum(sizes)
    steps = {0: 0.3, 1: 0.3, 2: 0.55, 3: 0.8}
    pruner = pruneext.MagnitudePruner(m, lambda s: steps.get(s, 0.8), scope=scope, mask_format=mask_format)
    original = model()
    originals = [mod.weight.detach() for mod, _ in pairs(original)]
    done, amounts = 0, []
    for step in range(4):
        if step:
            pruner.step()
        s = steps[step]
        if scope == "global":
            k = round(s * total)
            amounts.append(k - done)  # torch's iterative global pruning, by entries
            done = k
            want = torch_masks(original, [a for a in amounts if a > 0], scope)
        else:  # each layer to round(s * n) entries of its own: the oracle, per layer
            want = [oracle([w0], round(s * n))[0].bool() for w0, n in zip(originals, sizes)]
        for (mod, name), w in zip(pairs(m), want):
            got = pruner.mask(mod, name)
            assert torch.equal(got, w), (step, mod)
            assert torch.equal(mod.weight == 0, ~w)  # zero exactly where pruned (no zero weights otherwise)
        assert pruner.sparsity == s


@pytest.mark.parametrize("mask_format", FORMATS)
def test_tied_exact_k_among_alive(backend, mask_format):
    """Tied weights, zeros among them (the threshold key 0 too): each update
    prunes exactly round(s * n) - pruned more, the oracle's among the alive."""
    m = model(distinct=False)
    weights = [mod.weight for mod, _ in pairs(m)]
    total = sum(w.numel() for w in weights)
    schedule = {0: 0.05, 1: 0.2, 2: 0.6, 3: 0.9, 4: 1.0}
    pruner = pruneext.MagnitudePruner(m, lambda s: schedule[min(s, 4)], mask_format=mask_format)
    masks = [torch.ones_like(w) for w in weights]
    originals = [mod.weight.detach() for mod, _ in pairs(model(distinct=False))]
    done = 0
    for step in range(5):
        if step:
            pruner.step()
        k = round(schedule[step] * total)
        masks = oracle(originals, k - done, masks, among_alive=True)
        done = k
        got = [pruner.mask(mod, name) for mod, name in pairs(m)]
        assert sum(int((~g).sum()) for g in got) == k
        for g, want in zip(got, masks):
            assert torch.equal(g, want.bool()), step


def test_backends_agree():
    results = []
    for name in BIT_BACKENDS:
        with pruneext.use_backend(name):
            m = model(distinct=False)
            pruner = pruneext.MagnitudePruner(m, 0.37)
            results.append([pruner.mask(mod, n) for mod, n in pairs(m)])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    m = model(dtype=dtype, distinct=False)
    pruner = pruneext.MagnitudePruner(m, 0.5)
    total = sum(mod.weight.numel() for mod, _ in pairs(m))
    assert sum(int((~pruner.mask(mod, n)).sum()) for mod, n in pairs(m)) == round(0.5 * total)


# ------------------------------------------------------------ in training


@pytest.mark.parametrize("mask_format", FORMATS)
def test_in_place_and_standard_state(mask_format):
    m = model()
    before = [mod.weight for mod, _ in pairs(m)]
    keys = list(m.state_dict())
    pruner = pruneext.MagnitudePruner(pairs(m), 0.5, mask_format=mask_format)
    assert [mod.weight for mod, _ in pairs(m)] == before  # same Parameter objects
    assert all(isinstance(mod.weight, nn.Parameter) for mod, _ in pairs(m))
    assert list(m.state_dict()) == keys  # no *_orig / *_mask entries
    assert all(not mod._forward_pre_hooks for mod in m.modules())
    fresh = model()
    fresh.load_state_dict(m.state_dict())  # a reloaded model is the sparse model
    for (mod, name), (f, _) in zip(pairs(m), pairs(fresh)):
        assert torch.equal(f.weight == 0, ~pruner.mask(mod, name))


@pytest.mark.parametrize("mask_format", FORMATS)
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_training_keeps_pruned_entries_zero(mask_format, opt):
    m = model()
    pruner = pruneext.MagnitudePruner(m, schedules.cubic(0.7, initial=0.2, end=4), mask_format=mask_format)
    if opt == "sgd":
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    else:
        optimizer = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
    first = [~pruner.mask(mod, name) for mod, name in pairs(m)]
    x = torch.randn(8, 12)
    for _ in range(6):
        out = m[2](m[1](m[0](x)))
        conv = m[3](out.reshape(8, 1, 7))
        loss = out.square().mean() + conv.square().mean()
        loss.backward()
        for mod, name in pairs(m):
            pruned = ~pruner.mask(mod, name)
            assert (mod.weight.grad[pruned] == 0).all()  # masked as accumulated
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
        for (mod, name), pruned_first in zip(pairs(m), first):
            pruned = ~pruner.mask(mod, name)
            assert (mod.weight[pruned] == 0).all()
            assert (pruned | ~pruned_first).all()  # masks only grow
            state = optimizer.state[mod.weight]
            moment = state["momentum_buffer"] if opt == "sgd" else state["exp_avg"]
            # entries pruned from the start never had a gradient (nor, at
            # weight 0, a weight-decay term)
            assert (moment[pruned_first] == 0).all()
    total = sum(mod.weight.numel() for mod, _ in pairs(m))
    assert sum(int((~pruner.mask(mod, n)).sum()) for mod, n in pairs(m)) == round(0.7 * total)


def test_adam_moments_never_see_pruned_entries():
    m = model()
    pruner = pruneext.MagnitudePruner(m, 0.5)
    optimizer = torch.optim.Adam(m.parameters(), lr=0.01)
    x = torch.randn(8, 12)
    for _ in range(3):
        m[2](m[1](m[0](x))).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    for mod, name in pairs(m)[:2]:
        pruned = ~pruner.mask(mod, name)
        assert (optimizer.state[mod.weight]["exp_avg"][pruned] == 0).all()
        assert (optimizer.state[mod.weight]["exp_avg_sq"][pruned] == 0).all()


def test_compiled_model_trains_without_graph_breaks():
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    pruner = pruneext.MagnitudePruner(m, schedules.cubic(0.6, end=3))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    optimizer = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    for _ in range(4):
        loss = (compiled(x) - y).square().mean()
        loss.backward()
        for mod in (m[0], m[2]):
            assert (mod.weight.grad[~pruner.mask(mod)] == 0).all()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    for mod in (m[0], m[2]):
        assert torch.equal(mod.weight == 0, ~pruner.mask(mod))
    assert torch.allclose(compiled(x), m(x))


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("mask_format", FORMATS)
def test_state_dict_round_trip(mask_format):
    m = model()
    pruner = pruneext.MagnitudePruner(m, schedules.cubic(0.6, end=3), mask_format=mask_format)
    pruner.step()
    pruner.step()
    state = pruner.state_dict()
    assert state["step"] == 2
    fresh = model()
    other = pruneext.MagnitudePruner(fresh, schedules.cubic(0.6, end=3), mask_format=mask_format)
    other.load_state_dict(state)
    assert other.step_count == 2 and other.sparsity == pruner.sparsity
    for (a, n), (b, _) in zip(pairs(m), pairs(fresh)):
        assert torch.equal(pruner.mask(a, n), other.mask(b, n))
        assert torch.equal(b.weight == 0, ~other.mask(b, n))  # loaded masks zero the weights
    pruner.step()
    other.step()
    for (a, n), (b, _) in zip(pairs(m), pairs(fresh)):
        assert torch.equal(pruner.mask(a, n), other.mask(b, n))


def test_bits_are_packed():
    m = model()
    pruner = pruneext.MagnitudePruner(m, 0.5)
    masks = pruner.state_dict()["masks"]
    assert [t.dtype for t in masks] == [torch.uint8] * 3
    assert [t.numel() for t in masks] == [(mod.weight.numel() + 7) // 8 for mod, _ in pairs(m)]


def test_bad_state_changes_nothing():
    m = model()
    pruner = pruneext.MagnitudePruner(m, 0.3)
    state = pruner.state_dict()
    before = [pruner.mask(mod, n) for mod, n in pairs(m)]
    bad = dict(state, masks=state["masks"][:2])
    with pytest.raises(ValueError, match="masks for"):
        pruner.load_state_dict(bad)
    bad = dict(state, masks=state["masks"][:2] + [torch.zeros(3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="expected uint8"):
        pruner.load_state_dict(bad)
    with pytest.raises(ValueError, match="are 'bits'"):
        pruneext.MagnitudePruner(model(), 0.3, mask_format="bool").load_state_dict(state)
    assert all(torch.equal(pruner.mask(mod, n), b) for (mod, n), b in zip(pairs(m), before))


def test_remove():
    m = model()
    pruner = pruneext.MagnitudePruner(m, 0.5)
    pruned = ~pruner.mask(m[0])
    pruner.remove()
    m[0](torch.randn(3, 12)).sum().backward()
    assert (m[0].weight.grad[pruned] != 0).any()  # gradients no longer masked
    assert (m[0].weight[pruned] == 0).all()  # the zeros stay
    with pytest.raises(RuntimeError, match="remove"):
        pruner.step()


def test_a_replaced_parameter_is_refused():
    """A pruner built before the parameters changed (fully_shard after the
    pruner, load_state_dict(assign=True)) would prune tensors the model no
    longer uses: it says so instead."""
    m = model()
    pruner = pruneext.MagnitudePruner(m, 0.5)
    m[2].weight = nn.Parameter(m[2].weight.detach().clone())
    with pytest.raises(RuntimeError, match=r"no longer the parameter.*after fully_shard"):
        pruner.step()
    with pytest.raises(RuntimeError, match="no longer the parameter"):
        pruner.apply()


# -------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sparsity=1.5), ValueError, r"\[0, 1\]"),
        (dict(sparsity=-0.1), ValueError, r"\[0, 1\]"),
        (dict(sparsity="0.5"), TypeError, "number"),
        (dict(sparsity=True), TypeError, "number"),
        (dict(sparsity=lambda s: 2.0), ValueError, "step 0"),
        (dict(sparsity=0.5, scope="rows"), ValueError, "scope"),
        (dict(sparsity=0.5, mask_format="int8"), ValueError, "mask_format"),
    ],
)
def test_bad_arguments_change_nothing(kwargs, error, match):
    m = model()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(error, match=match):
        pruneext.MagnitudePruner(m, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(not p._post_accumulate_grad_hooks for p in m.parameters() if hasattr(p, "_post_accumulate_grad_hooks"))


def test_bad_parameters():
    m = model()
    with pytest.raises(ValueError, match="twice"):
        pruneext.MagnitudePruner([(m[0], "weight"), (m[0], "weight")], 0.5)
    emb = nn.Embedding(4, 3)
    emb.weight = nn.Parameter(torch.zeros(4, 3, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match="floating"):
        pruneext.MagnitudePruner([(emb, "weight")], 0.5)
    with pytest.raises(ValueError, match="not an nn.Parameter"):
        pruneext.MagnitudePruner([(m[0], "nothing")], 0.5)
    with pytest.raises(TypeError, match="pairs"):
        pruneext.MagnitudePruner([m[0]], 0.5)
    torch_prune.l1_unstructured(m[2], "weight", amount=0.2)
    with pytest.raises(ValueError, match="prune.remove"):
        pruneext.MagnitudePruner([(m[2], "weight")], 0.5)
    mixed = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3).double())
    with pytest.raises(ValueError, match="scope='layer'"):
        pruneext.MagnitudePruner(mixed, 0.5)
    pruneext.MagnitudePruner(mixed, 0.5, scope="layer")  # per layer, dtypes may differ
    with pytest.raises(ValueError, match="no nn.Linear"):
        pruneext.MagnitudePruner(nn.ReLU(), 0.5)


def test_bad_schedule_value_at_a_step_changes_nothing():
    m = model()
    pruner = pruneext.MagnitudePruner(m, lambda s: 0.2 if s == 0 else float("nan"))
    before = [pruner.mask(mod, n) for mod, n in pairs(m)]
    with pytest.raises(ValueError, match="step 1"):
        pruner.step()
    assert pruner.step_count == 0
    assert all(torch.equal(pruner.mask(mod, n), b) for (mod, n), b in zip(pairs(m), before))


# -------------------------------------------------------------- schedules


def test_cubic_schedule_values():
    s = schedules.cubic(0.8, initial=0.2, begin=10, end=20, every=4)
    # hand-computed: 0.8 + (0.2 - 0.8) * (1 - (t - 10) / 10)^3 at t = 10, 14, 18
    assert s(0) == s(9) == 0.2
    assert s(10) == s(13) == pytest.approx(0.2)
    assert s(14) == s(17) == pytest.approx(0.8 - 0.6 * 0.6**3)
    assert s(18) == s(19) == pytest.approx(0.8 - 0.6 * 0.2**3)
    assert s(20) == s(10_000) == 0.8
    values = [s(t) for t in range(30)]
    assert values == sorted(values)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(final=0.5), TypeError),  # no end
        (dict(final=1.2, end=5), ValueError),
        (dict(final=0.5, initial=0.6, end=5), ValueError),
        (dict(final=0.5, begin=5, end=5), ValueError),
        (dict(final=0.5, end=5, every=0), ValueError),
        (dict(final=0.5, end=5.5), TypeError),
    ],
)
def test_cubic_schedule_errors(kwargs, error):
    with pytest.raises(error):
        schedules.cubic(**kwargs)


def test_schedule_drives_the_pruner():
    m = model()
    total = sum(mod.weight.numel() for mod, _ in pairs(m))
    sched = schedules.cubic(0.9, end=6, every=2)
    pruner = pruneext.MagnitudePruner(m, sched)
    counts = []
    for step in range(8):
        if step:
            pruner.step()
        counts.append(sum(int((~pruner.mask(mod, n)).sum()) for mod, n in pairs(m)))
        assert counts[-1] == round(sched(step) * total)
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == round(0.9 * total)


def test_readme_example_runs():
    """README's training example, as written: examples/lean_training.py."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "examples/lean_training.py"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sparsity 0.80, zero weights 0.800" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("gpu_backend", ["cuda", "triton"])
@pytest.mark.parametrize("mask_format", FORMATS)
def test_pruner_on_cuda_matches_cpu(gpu_backend, mask_format):
    if gpu_backend not in backends.available_backends():
        pytest.skip(f"backend {gpu_backend} not available: {backends.unavailable_backends().get(gpu_backend)}")
    schedule = schedules.cubic(0.9, initial=0.1, end=4)
    cpu_model, gpu_model = model(distinct=False), model(distinct=False).cuda()
    cpu_pruner = pruneext.MagnitudePruner(cpu_model, schedule, mask_format=mask_format)
    with pruneext.use_backend(gpu_backend):
        gpu_pruner = pruneext.MagnitudePruner(gpu_model, schedule, mask_format=mask_format)
        for _ in range(5):
            cpu_pruner.step()
            gpu_pruner.step()
            for (a, n), (b, _) in zip(pairs(cpu_model), pairs(gpu_model)):
                assert torch.equal(cpu_pruner.mask(a, n), gpu_pruner.mask(b, n).cpu())
                assert torch.equal(a.weight, b.weight.cpu())
