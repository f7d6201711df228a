"""Scenarios of tests/test_pruner_distributed.py, run on every rank by
dist_harness.run_on_ranks: pruneext.MagnitudePruner on sharded parameters
(DTensor placements, FSDP2) against the same weights pruned in one process:
the numpy oracle of test_ops at the first step, the one-process pruner (which
tests/test_pruner.py checks against torch and the oracle) through training.
A failed comparison raises; a scenario returns what the test checks further."""
import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import pruneext
from pruneext import distributed
from conftest import distinct_magnitudes
from dist_scenarios import LAYOUT, _full, _fully_shard, _local_part, _mesh, _tied
from test_ops import oracle


class _Steps:
    """A schedule of given sparsities, the last one held."""

    def __init__(self, values):
        self.values = values

    def __call__(self, step):
        return self.values[min(step, len(self.values) - 1)]


# 0.05 then 0.1: below the zeros' share of the tied data (about 1/7), so
# threshold key 0 splits the zeros, the second time with pruned zeros among
# them; 0.1 again: a step without an update
SPARSITIES = [0.05, 0.1, 0.1, 0.35, 0.6, 0.8]


def _modules(fulls, mesh=None):
    """A module per tensor, holding it as a parameter: a DTensor of LAYOUT's
    placement on `mesh`, or the plain tensor."""
    out = []
    for full, (_, placement) in zip(fulls, LAYOUT):
        m = nn.Module()
        data = full.clone() if mesh is None else distribute_tensor(full.clone(), mesh, [placement])
        m.weight = nn.Parameter(data)
        out.append(m)
    return out


def _drift(full, step, seed):
    """What an optimizer step might move: tied steps of 0.5, everywhere
    (pruned entries too: the pruner must re-zero them)."""
    g = torch.Generator().manual_seed(seed * 100 + step)
    return torch.randint(-1, 2, full.shape, generator=g).float() / 2


def _assert_same(sharded, plain, what):
    """This rank's shards of the sharded pruner's masks and weights equal
    the one-process pruner's."""
    for ms, mp in zip(sharded.targets, plain.targets):
        mask = sharded.mask(*ms)
        assert isinstance(mask, DTensor) and mask.placements == ms[0].weight.placements, what
        expected = _local_part(plain.mask(*mp), mask)
        assert torch.equal(mask.to_local(), expected), f"{what}: masks differ\n{mask.to_local()}\n{expected}"
        weight, reference = ms[0].weight.to_local(), _local_part(mp[0].weight.detach(), ms[0].weight)
        torch.testing.assert_close(weight, reference, rtol=0, atol=0, equal_nan=True, msg=f"{what}: weights differ")


def dtensor_layouts_match_one_process(rank, world_size):
    """Every placement of LAYOUT (uneven and empty shards, column shards, a
    replica), heavily tied data with NaN: the first masks are the oracle's,
    each later update (after a drift of every weight) the one-process
    pruner's, in both formats and scopes. Returns the bytes the sharded
    selection sent (the last update's)."""
    mesh = _mesh(world_size)
    sent = 0
    for scope in ("global", "layer"):
        for mask_format in ("bits", "bool"):
            what = f"{scope}/{mask_format}"
            fulls = [_tied(shape, seed=300 + i, nan=(i == 2)) for i, (shape, _) in enumerate(LAYOUT)]
            sharded, plain = _modules(fulls, mesh), _modules(fulls)
            pruners = [
                pruneext.MagnitudePruner([(m, "weight") for m in ms], _Steps(SPARSITIES), scope=scope, mask_format=mask_format)
                for ms in (sharded, plain)
            ]
            if scope == "global":
                expected = oracle(fulls, round(SPARSITIES[0] * sum(f.numel() for f in fulls)))
            else:
                expected = [oracle([f], round(SPARSITIES[0] * f.numel()))[0] for f in fulls]
            for m, e in zip(sharded, expected):
                local = pruners[0].mask(m, "weight").to_local()
                assert torch.equal(local, _local_part(e.bool(), m.weight)), f"{what}: step 0 differs from the oracle"
            for step in range(1, len(SPARSITIES)):
                with torch.no_grad():
                    for i, (ms, mp) in enumerate(zip(sharded, plain)):
                        drift = _drift(fulls[i], step, seed=i)
                        mp.weight.add_(drift)
                        ms.weight.to_local().add_(_local_part(drift, ms.weight))
                for p in pruners:
                    p.step()
                _assert_same(pruners[0], pruners[1], f"{what} step {step}")
            sent = distributed.last_call_bytes
            pruned = sum(int((~_full(pruners[0].mask(m, "weight"))).sum()) for m in sharded)
            if scope == "global":
                assert pruned == round(SPARSITIES[-1] * sum(f.numel() for f in fulls)), f"{what}: {pruned} pruned"
    return sent


def _twin_models(seed):
    """Two identical MLPs with tie-free weights; the last layer has 2 rows,
    so a 3-rank shard of it is empty."""
    def build():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 2))
        weights = [model[0].weight, model[2].weight, model[4].weight]
        total = sum(w.numel() for w in weights)
        flat = distinct_magnitudes(total, seed=seed) / total
        with torch.no_grad():
            for w, part in zip(weights, flat.split([w.numel() for w in weights])):
                w.copy_(part.reshape(w.shape))
        return model

    return build(), build()


def fsdp2_trains_like_one_process(rank, world_size):
    """FSDP2 with AdamW and a cubic schedule: after every step the masks
    equal the one-process pruner's, the weights agree to float32 rounding of
    FSDP2's gradient mean, gradients and AdamW's moments are zero where the
    masks prune, and the pruner's state loads into a fresh sharded twin."""
    mesh = _mesh(world_size)
    sharded, plain = _twin_models(seed=60)
    _fully_shard(sharded, mesh)
    schedule = pruneext.schedules.cubic(0.7, initial=0.2, begin=0, end=4, every=2)
    pruners = [pruneext.MagnitudePruner(m, schedule) for m in (sharded, plain)]
    opts = [torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1) for m in (sharded, plain)]
    # pruned before any gradient: AdamW's moments must stay 0 there
    first = {id(p): ~pruners[0].mask(m, n).to_local() for (m, n), p in zip(pruners[0].targets, pruners[0].params)}
    g = torch.Generator().manual_seed(8)
    for step in range(5):
        x = torch.randn(6, 8, generator=g)  # the same batch on every rank: FSDP2's mean is the batch's gradient
        for model, opt in zip((sharded, plain), opts):
            opt.zero_grad()
            model(x).square().sum().backward()
        for (m, n), p in zip(pruners[0].targets, pruners[0].params):
            dead = ~pruners[0].mask(m, n).to_local()
            assert torch.all(p.grad.to_local()[dead] == 0), f"step {step}: a pruned gradient is not zero"
        for opt, pruner in zip(opts, pruners):
            opt.step()
            pruner.step()
        for (ms, n), (mp, _) in zip(pruners[0].targets, pruners[1].targets):
            mask = pruners[0].mask(ms, n)
            assert torch.equal(_full(mask), pruners[1].mask(mp, n)), f"step {step}: masks differ"
            torch.testing.assert_close(_full(ms.weight), mp.weight.detach(), rtol=1e-5, atol=1e-6)
            dead = ~mask.to_local()
            assert torch.all(ms.weight.to_local()[dead] == 0)
            moments = opts[0].state[ms.weight]
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.all(moments[key].to_local()[first[id(ms.weight)]] == 0), f"AdamW's {key} saw a pruned gradient"
    assert pruners[0].sparsity == 0.7
    # the pruner's state (this rank's shards) into a fresh sharded twin
    other, _ = _twin_models(seed=61)
    _fully_shard(other, mesh)
    fresh = pruneext.MagnitudePruner(other, 0.0)
    fresh.load_state_dict(pruners[0].state_dict())
    for (ms, n), (mo, _) in zip(pruners[0].targets, fresh.targets):
        assert torch.equal(pruners[0].mask(ms, n).to_local(), fresh.mask(mo, n).to_local())
        assert torch.all(mo.weight.to_local()[~fresh.mask(mo, n).to_local()] == 0)
    return sorted(sharded.state_dict())


def bad_sparsity_on_one_rank(rank, world_size):
    """A bad argument on one rank only raises on every rank (no rank goes
    on alone into the selection's collectives)."""
    full = _tied((6, 4), seed=400)
    m = nn.Module()
    m.weight = nn.Parameter(distribute_tensor(full.clone(), _mesh(world_size), [Shard(0)]))
    try:
        pruneext.MagnitudePruner([(m, "weight")], 1.5 if rank == 1 else 0.5)
    except ValueError as e:
        untouched = torch.equal(m.weight.to_local(), _local_part(full, m.weight))
        return type(e).__name__, "rank 1" in str(e) or rank == 1, untouched
    return "no error", False, False


def replicated_only(rank, world_size):
    """A replicated parameter: every rank holds it all, only one counts it,
    and every rank prunes the same entries as one process."""
    full = _tied((5, 4), seed=410, nan=True)
    m = nn.Module()
    m.weight = nn.Parameter(distribute_tensor(full.clone(), _mesh(world_size), [Replicate()]))
    pruner = pruneext.MagnitudePruner([(m, "weight")], 0.45)
    (expected,) = oracle([full], round(0.45 * full.numel()))
    return torch.equal(pruner.mask(m, "weight").to_local(), expected.bool())


def _grouped_twins(seed):
    """Two identical MLPs whose weights' last dimensions are multiples of 4
    (2:4 groups), tie-free; the last layer has 2 rows (an empty 3-rank shard)."""
    def build():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        with torch.no_grad():
            for i, layer in enumerate((model[0], model[2], model[4])):
                layer.weight.copy_(distinct_magnitudes(*layer.weight.shape, seed=seed + i) / 64)
        return model

    return build(), build()


def fsdp2_grouped_scopes_match_one_process(rank, world_size):
    """The row and 2:4 scopes on FSDP2 (Shard(0): every shard holds whole
    rows): the pruner's masks through SGD steps, and the drop-in methods'
    masks, equal those of the same model in one process; a column-sharded
    weight is refused on every rank before anything changes."""
    mesh = _mesh(world_size)
    for scope, schedule in (("2:4", _Steps([0.5, 1.0])), ("row", _Steps([0.25, 0.5]))):
        sharded, plain = _grouped_twins(seed=70)
        _fully_shard(sharded, mesh)
        pruners = [pruneext.MagnitudePruner(m, schedule, scope=scope) for m in (sharded, plain)]
        opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (sharded, plain)]
        g = torch.Generator().manual_seed(9)
        for step in range(3):
            x = torch.randn(6, 8, generator=g)
            for model, opt in zip((sharded, plain), opts):
                opt.zero_grad()
                model(x).square().sum().backward()
                opt.step()
            for pruner in pruners:
                pruner.step()
            for (ms, n), (mp, _) in zip(pruners[0].targets, pruners[1].targets):
                assert torch.equal(_full(pruners[0].mask(ms, n)), pruners[1].mask(mp, n)), f"{scope} step {step}"
                torch.testing.assert_close(_full(ms.weight), mp.weight.detach(), rtol=1e-5, atol=1e-6)
        dead = (~_full(pruners[0].mask(sharded[0], "weight"))).reshape(-1, 4).sum(1)
        assert scope != "2:4" or bool((dead == 2).all()), "not 2:4"
    for prune in (lambda m: pruneext.nm_structured(m, "weight"), lambda m: pruneext.row_unstructured(m, "weight", 0.5)):
        sharded, plain = _grouped_twins(seed=80)
        _fully_shard(sharded, mesh)
        for layer_s, layer_p in zip((sharded[0], sharded[2], sharded[4]), (plain[0], plain[2], plain[4])):
            prune(layer_s)
            prune(layer_p)
            assert torch.equal(_full(layer_s.weight_mask), layer_p.weight_mask)
    m = nn.Module()
    full = _tied((4, 8), seed=420)
    m.weight = nn.Parameter(distribute_tensor(full.clone(), mesh, [Shard(1)]))
    try:
        pruneext.MagnitudePruner([(m, "weight")], 1.0, scope="2:4")
    except ValueError as e:
        refused = "Shard(0)" in str(e) and torch.equal(m.weight.to_local(), _local_part(full, m.weight))
    else:
        refused = False
    return refused
