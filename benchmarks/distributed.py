"""Global L1 pruning of an FSDP2 model over several CPU processes (gloo):
pruneext's sharded selection against gathering the model to rank 0.

    python -m benchmarks.distributed [--ranks 2] [--params 50e6] [--reps 3] [--json out.json]

W processes (tests/dist_harness.py: gloo on 127.0.0.1, a free port, a
timeout on every collective and on the whole run, every process ended in a
`finally`) build the same model, `layers` x Linear(width, width, bias=False)
in float32 (50e6 parameters: 12 x Linear(2048, 2048) = 50.3M), seeded and
tie-free: the magnitudes are distinct float32 values across the whole model
(the bit patterns 0x3F800000 + a random permutation of 0..n-1, signs random),
so every correct mask is the same mask. FSDP2 shards it (`fully_shard` on
each Linear and on the root, a CPU device mesh: Shard(0), rows in
torch.chunk order). Each contender then prunes 50 % of all the weights
globally:

* `pruneext`: `pruneext.global_unstructured([(lin, "weight"), ...],
  pruneext.L1Unstructured, amount=0.5)` on the FSDP2 model: exact, with only
  histograms and counts on the wire.
* `gather-torch-scatter`: what a user can do without it. Every weight's
  local shard goes to rank 0 (`dist.gather`, one per weight, the shard padded
  to torch.chunk's row count where shards are uneven); rank 0 runs
  `torch.nn.utils.prune.global_unstructured` on plain modules holding the
  full weights; each mask goes back in row shards (`dist.scatter`, sent as
  uint8, a quarter of torch's float32 mask: the cheapest honest encoding);
  every rank installs its shard with `pruneext.custom_from_mask` as a DTensor
  mask of the parameter's placements, so the module ends as pruneext leaves
  it (the `weight_mask` buffer, `weight = weight_orig * mask`, the hook).

Per contender and rank:

* time: the median over `reps` repetitions, each on a freshly built and
  sharded model (a first pruning); only the pruning call is timed
  (benchmarks.timing.Clock), between a barrier before it and one after it.
  A rank's time includes its waits: in the baseline every rank waits for
  rank 0's torch call.
* bytes sent: the payload this rank hands to collectives for other ranks.
  pruneext: `pruneext.distributed.last_call_bytes` (each all-reduce's whole
  tensor, each all-gather's pickled object; the ring algorithm moves about
  2(W-1)/W of an all-reduce's tensor per rank). The baseline, counted the
  same way: a gather's shard from every rank but the root, a scatter's
  shards for the other ranks from the root. Neither counts pruneext's 8-byte
  agreement flag of each call's outer check (one per call for pruneext, one
  per installed mask for the baseline).
* peak extra memory: the growth of the process's RSS high-water mark
  (VmHWM, reset through /proc/self/clear_refs after gc and malloc_trim, as
  benchmarks/memory.py does) during the call, in MB and as a ratio of this
  rank's parameter-shard bytes and of the whole model's bytes. The outputs
  the call leaves (masks, masked weights) count. The median over the reps.

Both contenders must produce the same masks on every rank (checked every
rep, printed as `masks equal: yes/no` per rank; a `no` makes the exit
status 1). Warm-up: each contender prunes a tiny sharded model once first.
"""
import argparse
import datetime
import gc
import math
import os
import statistics
import sys
import time

import torch

from . import machine, report
from .contenders import Holder
from .memory import _return_free_heap, _reset_high_water_mark, _vm_hwm_bytes
from .timing import Clock

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDERS = ("pruneext", "gather-torch-scatter")
AMOUNT = 0.5
LAYERS = 12


def model_shape(params):
    """(layers, width): 12 square layers, width a multiple of 64, about
    `params` weights (50e6 -> 12 x 2048 x 2048)."""
    width = max(64, 64 * round(math.sqrt(params / LAYERS) / 64))
    return LAYERS, width


def distinct_weights(n, seed):
    """n float32 values with distinct magnitudes (consecutive float32 bit
    patterns from 1.0 up, permuted) and random signs."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randperm(n, generator=g, dtype=torch.int64).add_(0x3F800000).to(torch.int32)
    values = bits.view(torch.float32)
    signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.bool)
    values[signs] *= -1
    return values


def build_sharded(flat, layers, width, mesh):
    """A Sequential of `layers` Linear(width, width, bias=False) holding
    `flat`'s values, sharded by FSDP2 on `mesh`."""
    from torch.distributed.fsdp import fully_shard

    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False, device="meta") for _ in range(layers)])
    for i, lin in enumerate(model):
        lin.weight = torch.nn.Parameter(flat[i * width * width : (i + 1) * width * width].view(width, width).clone())
        fully_shard(lin, mesh=mesh)
    fully_shard(model, mesh=mesh)
    gc.collect()
    return model


# ------------------------------------------------------------- the contenders


def prune_pruneext(linears):
    """Returns the bytes this rank sent."""
    import pruneext

    pruneext.global_unstructured([(lin, "weight") for lin in linears], pruneext.L1Unstructured, amount=AMOUNT)
    return pruneext.distributed.last_call_bytes


def _row_counts(rows, world):
    """Rows of each rank's Shard(0) shard (torch.chunk: ceil(rows / world)
    each, the last ones shorter or empty)."""
    chunk = -(-rows // world)
    return [max(0, min(chunk, rows - r * chunk)) for r in range(world)]


def _pad_rows(t, rows):
    if t.shape[0] == rows:
        return t.contiguous()
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def prune_gather_torch_scatter(linears):
    """Gather to rank 0, torch.nn.utils.prune there, scatter the masks.
    Returns the bytes this rank sent."""
    import torch.distributed as dist
    import torch.nn.utils.prune as torch_prune
    from torch.distributed.tensor import DTensor, Shard

    import pruneext

    rank, world = dist.get_rank(), dist.get_world_size()
    sent = 0
    fulls = []
    for lin in linears:
        w = lin.weight
        assert tuple(w.placements) == (Shard(0),), w.placements
        counts = _row_counts(w.shape[0], world)
        part = _pad_rows(w.to_local(), max(counts))
        if rank == 0:
            parts = [torch.empty_like(part) for _ in range(world)]
            dist.gather(part, parts, dst=0)
            fulls.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
            del parts
        else:
            dist.gather(part, None, dst=0)
            sent += part.numel() * part.element_size()
    masks = [None] * len(linears)
    if rank == 0:
        plain = [Holder(torch.nn.Parameter(f)) for f in fulls]
        del fulls
        torch_prune.global_unstructured([(m, "weight") for m in plain], torch_prune.L1Unstructured, amount=AMOUNT)
        masks = [m.weight_mask for m in plain]
        del plain
    for i, lin in enumerate(linears):
        w = lin.weight
        counts = _row_counts(w.shape[0], world)
        recv = torch.empty((max(counts),) + tuple(w.shape[1:]), dtype=torch.uint8)
        if rank == 0:
            parts = [_pad_rows(p, max(counts)) for p in masks[i].to(torch.uint8).split(counts)]
            masks[i] = None
            dist.scatter(recv, parts, src=0)
            sent += sum(p.numel() * p.element_size() for p in parts[1:])
            del parts
        else:
            dist.scatter(recv, None, src=0)
        local = recv[: counts[rank]].to(w.dtype)
        mask = DTensor.from_local(local, w.device_mesh, w.placements, run_check=False, shape=w.shape, stride=w.stride())
        pruneext.custom_from_mask(lin, "weight", mask)
    return sent


PRUNERS = {"pruneext": prune_pruneext, "gather-torch-scatter": prune_gather_torch_scatter}


# ------------------------------------------------------------ one rank's run


def _measure(prune, linears, clock):
    """(seconds, bytes sent, peak extra bytes) of prune(linears), between
    barriers."""
    import torch.distributed as dist

    gc.collect()
    _return_free_heap()
    if not _reset_high_water_mark():
        raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs): no per-call peak on this machine")
    before = _vm_hwm_bytes()
    box = {}
    dist.barrier()
    seconds = clock.time_call(lambda _: box.setdefault("sent", prune(linears)), None)
    after = _vm_hwm_bytes()
    dist.barrier()
    return seconds, box["sent"], after - before


def _local_masks(model):
    return [lin.weight_mask.to_local() for lin in model]


class Scenario:
    """The benchmark on one rank (a picklable callable for
    dist_harness.run_on_ranks, which keys results by __name__)."""

    __name__ = "distributed_benchmark"

    def __init__(self, params, reps, seed=0):
        self.params, self.reps, self.seed = params, reps, seed

    def __call__(self, rank, world_size):
        from torch.distributed.device_mesh import init_device_mesh

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        mesh = init_device_mesh("cpu", (world_size,))
        clock = Clock("cpu")
        tiny = distinct_weights(2 * 64 * 64, self.seed)
        for prune in PRUNERS.values():  # warm-up: lazy initialisation, dispatch caches
            model = build_sharded(tiny, 2, 64, mesh)
            prune(list(model))
            del model
        layers, width = model_shape(self.params)
        flat = distinct_weights(layers * width * width, self.seed)
        out = {name: {"times_s": [], "bytes_sent": [], "peak_extra_bytes": []} for name in CONTENDERS}
        equal, shard_bytes = True, None
        for _ in range(self.reps):
            reference = None
            for name in CONTENDERS:
                model = build_sharded(flat, layers, width, mesh)
                seconds, sent, peak = _measure(PRUNERS[name], list(model), clock)
                for key, value in (("times_s", seconds), ("bytes_sent", sent), ("peak_extra_bytes", peak)):
                    out[name][key].append(value)
                masks = _local_masks(model)
                if reference is None:
                    reference = masks
                else:
                    equal = equal and all(torch.equal(a, b) for a, b in zip(reference, masks))
                shard_bytes = sum(lin.weight_orig.to_local().nbytes for lin in model)
                del model, masks
        return {
            "contenders": out,
            "shard_bytes": shard_bytes,
            "model_bytes": flat.numel() * flat.element_size(),
            "numel": flat.numel(),
            "layers": layers,
            "width": width,
            "masks_equal": equal,
            "torch_threads": torch.get_num_threads(),
        }


# ------------------------------------------------------------------ the parent


def run(world_size, params, reps, timeout_s, seed=0):
    """[per-rank result dict]; raises when a rank fails or the run hangs."""
    sys.path.insert(0, os.path.join(_REPO_ROOT, "tests"))
    from dist_harness import run_on_ranks

    scenario = Scenario(params, reps, seed)
    results = run_on_ranks([scenario], world_size, timeout_s=timeout_s)[scenario.__name__]
    failed = [(r, res) for r, (status, res) in enumerate(results) if status != "ok"]
    if failed:
        rank, trace = failed[0]
        raise RuntimeError(f"rank {rank} failed:\n{trace}")
    return [res for _, res in results]


def rows(ranks):
    """One summary row per (contender, rank)."""
    out = []
    for name in CONTENDERS:
        for rank, res in enumerate(ranks):
            c = res["contenders"][name]
            peak = statistics.median(c["peak_extra_bytes"])
            out.append({
                "contender": name,
                "rank": rank,
                "median_s": statistics.median(c["times_s"]),
                "reps": len(c["times_s"]),
                "bytes_sent": statistics.median(c["bytes_sent"]),
                "peak_extra_bytes": peak,
                "x_shard_bytes": peak / res["shard_bytes"],
                "x_model_bytes": peak / res["model_bytes"],
            })
    return out


def format_table(table):
    head = f"{'contender':<22} {'rank':>4} {'median':>9} {'reps':>4} {'bytes sent':>11} {'peak extra':>11} {'x shard':>8} {'x model':>8}"
    lines = [head]
    for r in table:
        lines.append(
            f"{r['contender']:<22} {r['rank']:>4} {report.fmt_time(r['median_s']):>9} {r['reps']:>4} "
            f"{report.fmt_bytes(r['bytes_sent']):>11} {r['peak_extra_bytes'] / 1e6:>9.1f}MB "
            f"{r['x_shard_bytes']:>7.2f}x {r['x_model_bytes']:>7.2f}x"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Sharded (FSDP2, gloo, CPU) global pruning: pruneext vs gather-torch-scatter.")
    p.add_argument("--ranks", type=int, default=2, help="processes (default 2)")
    p.add_argument("--params", type=float, default=50e6, help="model weights, about (default 50e6: 12 x Linear(2048, 2048))")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per contender (default 3)")
    p.add_argument("--json", default=None, help="write the machine, the command and every figure here")
    p.add_argument("--timeout", type=float, default=900, help="seconds for the whole run (default 900)")
    p.add_argument("--collective-timeout", type=int, default=300, help="seconds one collective may wait (default 300)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # read by dist_harness in each spawned process: torch's call on rank 0
    # keeps the other ranks waiting in one collective for many seconds
    os.environ["PRUNEEXT_TEST_COLLECTIVE_TIMEOUT"] = str(args.collective_timeout)
    layers, width = model_shape(args.params)
    print(f"{args.ranks} ranks (gloo, CPU), FSDP2 model {layers} x Linear({width}, {width}) float32 "
          f"= {layers * width * width / 1e6:.1f}M parameters, global L1 amount {AMOUNT}, {args.reps} reps", flush=True)
    started = time.perf_counter()
    ranks = run(args.ranks, args.params, args.reps, args.timeout, args.seed)
    wall = time.perf_counter() - started
    table = rows(ranks)
    print(format_table(table))
    for rank, res in enumerate(ranks):
        print(f"rank {rank}: masks equal: {'yes' if res['masks_equal'] else 'no'}; shard {report.fmt_bytes(res['shard_bytes'])}, "
              f"model {report.fmt_bytes(res['model_bytes'])}, {res['torch_threads']} torch thread(s)")
    print(f"whole run: {wall:.1f} s")
    if args.json:
        report.write_json(args.json, {
            "benchmark": "distributed",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": machine.command_line(),
            "machine": machine.info(),
            "settings": {"ranks": args.ranks, "params": args.params, "reps": args.reps, "amount": AMOUNT,
                         "layers": layers, "width": width, "seed": args.seed, "backend": "gloo"},
            "wall_s": wall,
            "rows": table,
            "ranks": ranks,
        })
        print(f"wrote {args.json}")
    return 0 if all(res["masks_equal"] for res in ranks) else 1


if __name__ == "__main__":
    sys.exit(main())
