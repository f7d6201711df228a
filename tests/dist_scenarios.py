"""Scenarios of tests/test_distributed.py, run on every rank by
dist_harness.run_on_ranks. Each builds the same model on every rank (seeded),
shards it, prunes it with pruneext, and compares this rank's masks with the
same model pruned in one process: torch.nn.utils.prune itself on tie-free
data, the numpy oracle of test_ops (ties: lowest index) on tied data. A
failed comparison raises; a scenario returns what the test checks further."""
import torch
import torch.distributed as dist
import torch.nn.utils.prune as torch_prune
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import pruneext as prune
from pruneext import distributed
from conftest import distinct_magnitudes
from test_ops import oracle

# (shape, placement): uneven shards, an empty shard on 3 ranks (2 rows),
# column shards (tensor parallel) and a replicated parameter
LAYOUT = [((7, 5), Shard(0)), ((2, 6), Shard(0)), ((4, 9), Shard(1)), ((3, 4), Replicate()), ((5,), Shard(0))]


def _mesh(world_size):
    return init_device_mesh("cpu", (world_size,))


def _local_part(full, dt):
    """The part of the unsharded `full` that this rank's DTensor `dt` holds."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
    return full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]


def _sharded_module(full, mesh, placement):
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, [placement]))
    return m


def _plain_module(full):
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(full.clone())
    return m


def _assert_mask(sharded, reference, what):
    mask = sharded.weight_mask
    assert isinstance(mask, DTensor), f"{what}: the mask is not a DTensor"
    assert mask.placements == sharded.weight_orig.placements, f"{what}: placements differ"
    local, expected = mask.to_local(), _local_part(reference, mask)
    assert local.dtype == expected.dtype and torch.equal(local, expected), f"{what}: masks differ\n{local}\n{expected}"
    weight = sharded.weight.to_local()
    torch.testing.assert_close(weight, sharded.weight_orig.to_local() * local, rtol=0, atol=0, equal_nan=True,
                               msg=f"{what}: weight is not orig * mask")


def _tie_free(shape, seed):
    return distinct_magnitudes(*shape, seed=seed) / 100


def _tied(shape, seed, nan=False):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randint(-3, 4, shape, generator=g).float() / 2)
    if nan:
        t.view(-1)[0] = float("nan")
    return t


def l1_unstructured_tie_free(rank, world_size):
    mesh = _mesh(world_size)
    for i, (shape, placement) in enumerate(LAYOUT):
        full = _tie_free(shape, seed=i)
        ours, theirs = _sharded_module(full, mesh, placement), _plain_module(full)
        for amount in (0.3, 0.5, 1):  # the second and third prune among what is left
            prune.l1_unstructured(ours, "weight", amount)
            torch_prune.l1_unstructured(theirs, "weight", amount)
            _assert_mask(ours, theirs.weight_mask, f"{shape} {placement} amount {amount}")
    return True


def l1_unstructured_tied(rank, world_size):
    """Heavy ties and a NaN: exact k, ties to the lowest global flat index."""
    mesh = _mesh(world_size)
    for i, (shape, placement) in enumerate(LAYOUT):
        full = _tied(shape, seed=10 + i, nan=True)
        ours = _sharded_module(full, mesh, placement)
        k = round(0.6 * full.numel())
        prune.l1_unstructured(ours, "weight", 0.6)
        (expected,) = oracle([full], k)
        _assert_mask(ours, expected, f"tied {shape} {placement}")
        alive = expected
        prune.l1_unstructured(ours, "weight", 0.5)
        k2 = round(0.5 * int((alive == 1).sum()))
        (expected,) = oracle([full], k2, [alive], among_alive=True)
        _assert_mask(ours, expected, f"tied iterative {shape} {placement}")
    return True


def global_tied(rank, world_size):
    """global_unstructured over parameters of every placement, tied data."""
    mesh = _mesh(world_size)
    fulls = [_tied(shape, seed=20 + i, nan=(i == 2)) for i, (shape, _) in enumerate(LAYOUT)]
    mods = [_sharded_module(f, mesh, p) for f, (_, p) in zip(fulls, LAYOUT)]
    params = [(m, "weight") for m in mods]
    total = sum(f.numel() for f in fulls)
    prune.global_unstructured(params, prune.L1Unstructured, amount=0.45)
    expected = oracle(fulls, round(0.45 * total))
    for m, e, (shape, p) in zip(mods, expected, LAYOUT):
        _assert_mask(m, e, f"global {shape} {p}")
    alive = sum(int((e == 1).sum()) for e in expected)
    prune.global_unstructured(params, prune.L1Unstructured, amount=0.3)
    expected = oracle(fulls, round(0.3 * alive), expected, among_alive=True)
    for m, e, (shape, p) in zip(mods, expected, LAYOUT):
        _assert_mask(m, e, f"global iterative {shape} {p}")
    return distributed.last_call_bytes


def global_tie_free_matches_torch(rank, world_size):
    mesh = _mesh(world_size)
    flat = _tie_free((sum(torch.Size(s).numel() for s, _ in LAYOUT),), seed=5)
    fulls = [f.reshape(s) for f, (s, _) in zip(flat.split([torch.Size(s).numel() for s, _ in LAYOUT]), LAYOUT)]
    ours = [_sharded_module(f, mesh, p) for f, (_, p) in zip(fulls, LAYOUT)]
    theirs = [_plain_module(f) for f in fulls]
    prune.global_unstructured([(m, "weight") for m in ours], prune.L1Unstructured, amount=0.4)
    torch_prune.global_unstructured([(m, "weight") for m in theirs], torch_prune.L1Unstructured, amount=0.4)
    for a, b, (shape, p) in zip(ours, theirs, LAYOUT):
        _assert_mask(a, b.weight_mask, f"tie-free global {shape} {p}")
    return True


def wire_bytes_do_not_grow(rank, world_size):
    """The bytes a rank sends are the same for a model 64x larger."""
    mesh = _mesh(world_size)
    sent = []
    for rows in (12, 768):
        fulls = [_tied((rows, 16), seed=30 + i) for i in range(3)]
        mods = [_sharded_module(f, mesh, Shard(0)) for f in fulls]
        prune.global_unstructured([(m, "weight") for m in mods], prune.L1Unstructured, amount=0.5)
        expected = oracle(fulls, round(0.5 * sum(f.numel() for f in fulls)))
        for m, e in zip(mods, expected):
            _assert_mask(m, e, f"bytes case {rows}")
        sent.append(distributed.last_call_bytes)
    return sent


def process_group_lists(rank, world_size):
    """Each rank holds other parameters; the union is ranked as one list in
    rank order, ties included."""
    def rank_params(r):
        return [_tied((3 + r, 4 + i), seed=100 * r + i, nan=(r == 1 and i == 0)) for i in range(2 + r % 2)]

    mine = [_plain_module(t) for t in rank_params(rank)]
    everyone = [t for r in range(world_size) for t in rank_params(r)]
    total = sum(t.numel() for t in everyone)
    prune.global_unstructured(
        [(m, "weight") for m in mine], prune.L1Unstructured, amount=0.55, process_group=dist.group.WORLD
    )
    expected = oracle(everyone, round(0.55 * total))
    offset = sum(len(rank_params(r)) for r in range(rank))
    for m, e in zip(mine, expected[offset:]):
        assert torch.equal(m.weight_mask, e), f"rank {rank}: masks differ"
    # an integer amount larger than the union is refused on every rank
    try:
        prune.global_unstructured(
            [(m, "weight") for m in mine], prune.L1Unstructured, amount=total + 1, process_group=dist.group.WORLD
        )
    except ValueError as e:
        return str(e)
    raise AssertionError("amount past the union was not refused")


def fault_on_one_rank(rank, world_size):
    """A bad input on rank 1 only: every rank raises, no module changes."""
    mesh = _mesh(world_size)
    full = _tie_free((6, 4), seed=3)
    outcomes = []
    good_scores = distribute_tensor(full.abs(), mesh, [Shard(0)])  # (a collective: every rank builds it)
    for fault in ("scores", "amount", "global scores"):
        m = _sharded_module(full, mesh, Shard(0))
        before = dict(m._parameters)
        try:
            if fault == "scores":
                scores = good_scores if rank != 1 else torch.ones(3, 3)
                prune.l1_unstructured(m, "weight", 0.5, importance_scores=scores)
            elif fault == "amount":
                prune.l1_unstructured(m, "weight", 0.5 if rank != 1 else 1.5)
            else:
                scores = {(m, "weight"): torch.ones(2, 2)} if rank == 1 else None
                prune.global_unstructured([(m, "weight")], prune.L1Unstructured, importance_scores=scores, amount=0.5)
            outcomes.append((fault, "no error"))
        except Exception as e:  # noqa: BLE001
            outcomes.append((fault, type(e).__name__))
        assert dict(m._parameters) == before and not hasattr(m, "weight_mask"), f"{fault}: the module changed"
    return outcomes


def _twin_mlps(seed):
    """Two identical MLPs with heavily tied weights (one to shard)."""
    def build():
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(8, 7), torch.nn.ReLU(), torch.nn.Linear(7, 5))
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(_tied(tuple(p.shape), seed=seed + i))
        return model

    return build(), build()


def _fully_shard(model, mesh):
    from torch.distributed.fsdp import fully_shard

    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def fsdp2_prune_and_train(rank, world_size):
    """FSDP2: global pruning equals the one-process masks; forward,
    backward and SGD steps then match the unsharded model, and the effective
    weights stay zero where the masks are."""
    mesh = _mesh(world_size)
    sharded, plain = _twin_mlps(seed=40)
    _fully_shard(sharded, mesh)
    for model in (sharded, plain):
        params = [(model[0], "weight"), (model[2], "weight"), (model[2], "bias")]
        prune.global_unstructured(params, prune.L1Unstructured, amount=0.5)
        prune.l1_unstructured(model[0], "bias", 3)
    for a, b in ((sharded[0], plain[0]), (sharded[2], plain[2])):
        for name in ("weight_mask", "bias_mask"):
            if hasattr(b, name):
                assert isinstance(getattr(a, name), DTensor), name
                assert torch.equal(_full(getattr(a, name)), getattr(b, name)), name
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01) for m in (sharded, plain)]
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        x = torch.randn(6, 8, generator=g)  # the same batch on every rank: FSDP2's mean is the batch's gradient
        for model, opt in zip((sharded, plain), opts):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in ((sharded[0], plain[0]), (sharded[2], plain[2])):
        for name in ("weight", "bias"):
            orig, mask = _full(getattr(a, name + "_orig")), _full(getattr(a, name + "_mask"))
            # (FSDP2 averages gradients as sum(g / world): with 3 ranks that
            # is not exact in float32, and the weights grow to about 5e4 here,
            # so the default rtol of 1.3e-6 is at the rounding's own edge)
            torch.testing.assert_close(
                orig * mask, getattr(b, name + "_orig") * getattr(b, name + "_mask"), rtol=1e-5, atol=1e-5
            )
            assert torch.all((orig * mask)[mask == 0] == 0)
    keys = sorted(sharded.state_dict())
    assert "0.weight_orig" in keys and "0.weight_mask" in keys and "0.weight" not in keys, keys
    # remove makes the pruning permanent; FSDP2 trains the parameter again
    for model in (sharded, plain):
        prune.remove(model[0], "weight")
    assert isinstance(sharded[0].weight, DTensor) and "weight_orig" not in dict(sharded[0].named_parameters())
    torch.testing.assert_close(_full(sharded[0].weight), plain[0].weight, rtol=1e-5, atol=1e-5)
    for model, opt in zip((sharded, plain), opts):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(_full(sharded[0].weight), plain[0].weight, rtol=1e-5, atol=1e-5)
    return keys


def fsdp2_checkpoint_round_trip(rank, world_size):
    """torch.distributed.checkpoint saves and loads the sharded masks."""
    import os
    import shutil
    import tempfile

    import torch.distributed.checkpoint as dcp

    mesh = _mesh(world_size)
    path = os.path.join(tempfile.gettempdir(), f"pruneext-dcp-{os.getppid()}-{world_size}")
    source, _ = _twin_mlps(seed=50)
    _fully_shard(source, mesh)
    prune.global_unstructured([(source[0], "weight"), (source[2], "weight")], prune.L1Unstructured, amount=0.6)
    dcp.save(source.state_dict(), checkpoint_id=path)
    target, _ = _twin_mlps(seed=51)
    _fully_shard(target, mesh)
    for m in (target[0], target[2]):
        prune.identity(m, "weight")  # the same keys, all-ones masks
    state = target.state_dict()
    dcp.load(state, checkpoint_id=path)
    target.load_state_dict(state)
    for a, b in ((source[0], target[0]), (source[2], target[2])):
        assert torch.equal(_full(a.weight_mask), _full(b.weight_mask))
        assert torch.equal(_full(a.weight_orig), _full(b.weight_orig))
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(source(x), target(x))
    dist.barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
    return True


def parts_that_hold_nothing(rank, world_size):
    """A rank with an empty list (process_group) and a rank that owns no
    shard of a replicated parameter take part in the selection all the same."""
    def rank_params(r):
        return [] if r == 0 else [_tied((4, 3 + r), seed=200 + r)]

    mine = [_plain_module(t) for t in rank_params(rank)]
    everyone = [t for r in range(world_size) for t in rank_params(r)]
    prune.global_unstructured(
        [(m, "weight") for m in mine], prune.L1Unstructured, amount=0.5, process_group=dist.group.WORLD
    )
    expected = oracle(everyone, round(0.5 * sum(t.numel() for t in everyone)))
    for m, e in zip(mine, expected[len(rank_params(0)) + sum(len(rank_params(r)) for r in range(1, rank)):]):
        assert torch.equal(m.weight_mask, e), f"rank {rank}: masks differ"
    # only rank 0 owns (counts) a replicated parameter
    full = _tied((5, 4), seed=210, nan=True)
    m = _sharded_module(full, _mesh(world_size), Replicate())
    prune.l1_unstructured(m, "weight", 0.4)
    (expected,) = oracle([full], round(0.4 * full.numel()))
    _assert_mask(m, expected, "replicated")
    return True
