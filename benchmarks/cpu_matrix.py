"""The CPU mask op's slow corners: every dtype x every variant, each cell as
a ratio to a torch pass over the same bytes timed in the same run (issue 26).

    python -m benchmarks.cpu_matrix [--sizes 20,24] [--reps 7] [--json out.json]
                                    [--dtypes float32,bfloat16,float16,float64]

Variants (the `cpu` backend, amount 0.5 unless said):
  mask      torch.ops.pruneext.l1_mask(x, k): a fresh mask
  values    the same with values_out, a fresh tensor per call: what
            l1_unstructured does (the mask and the masked weight)
  alive     a default mask of x's dtype with half the entries alive,
            among_alive, k a quarter of the entries (the iterative call)
  global    l1_mask_global over 8 tensors of n / 8 entries, no default mask
  bits      the lean pruner's update: MagnitudePruner over 8 weights of
            n / 8 entries from 0 to 50 % (threshold select + l1_bits_prune
            in place, no fresh output)

Each cell is the median over --reps runs (after one warm-up call) divided
by the median of its yardstick, a torch pass that writes the same bytes the
same way, timed pair by pair with it (each rep runs the cell, then the
yardstick): `clone()` of x for mask and alive (one fresh output of x's
size: the page faults it takes), two clones for values, the clones of the 8
parts for global (outputs of the same sizes: whether glibc maps a fresh
allocation or reuses its heap depends on the size), and for bits, which
writes in place, a `copy_()` of x into an existing tensor. (A copy_ alone
would flatter the fresh outputs: their page faults cost a 64 MB float32
tensor more than its copy, and a 32 MB 16-bit copy_ runs partly in a 32 MB
L3. Paired, the costs that drift within a process land on both alike.)
A row (one variant and size) is then compared across dtypes: its slowest
cell over its fastest is printed as "spread", the figure issue 26 bounds by
1.3; "f16/bf16" is the float16
time over the bfloat16 one (the same key width, the same passes: they
should take the same time). The machine's THP settings and PRUNEEXT_*
switches are recorded with it.
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn

import pruneext

from . import machine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
VARIANTS = ("mask", "values", "alive", "global", "bits")
GLOBAL_PARTS = 8
ops = torch.ops.pruneext


def paired_median_s(call, yardstick, reps, setup=lambda: None):
    """Median seconds of call(setup()) and of yardstick() over reps pairs,
    each pair run back to back after one warm-up of both: the page-fault
    and allocator costs that drift within a process land on both alike."""
    call(setup())
    yardstick()
    times, yard_times = [], []
    for _ in range(reps):
        state = setup()
        t0 = time.perf_counter()
        out = call(state)
        times.append(time.perf_counter() - t0)
        del out, state
        t0 = time.perf_counter()
        out = yardstick()
        yard_times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times), statistics.median(yard_times)


def thp_settings():
    """Linux's transparent huge page modes (enabled, defrag), or None."""
    found = {}
    for name in ("enabled", "defrag"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{name}") as f:
                found[name] = next((w.strip("[]") for w in f.read().split() if w.startswith("[")), None)
        except OSError:
            found[name] = None
    return found


def cell(variant, x):
    """(call, setup) of a variant on x: call(setup()) is what is timed."""
    n = x.numel()
    none = lambda: None  # noqa: E731
    if variant == "mask":
        return (lambda _: ops.l1_mask(x, n // 2)), none
    if variant == "values":
        return (lambda out: ops.l1_mask(x, n // 2, None, False, None, out)), (lambda: torch.empty_like(x))
    if variant == "alive":
        alive = (torch.arange(n) % 2).to(x.dtype)
        return (lambda _: ops.l1_mask(x, n // 4, alive, True)), none
    if variant == "global":
        parts = list(x.view(GLOBAL_PARTS, -1).unbind(0))
        return (lambda _: ops.l1_mask_global(parts, n // 2, [None] * GLOBAL_PARTS)), none
    if variant == "bits":
        layers = nn.ModuleList(nn.Linear(n // 8 // 64, 64, bias=False) for _ in range(8)).to(x.dtype)
        originals = [x.view(8, -1)[j].view_as(m.weight).clone() for j, m in enumerate(layers)]

        def fresh():
            with torch.no_grad():
                for m, o in zip(layers, originals):
                    m.weight.copy_(o)
            return pruneext.MagnitudePruner(layers, lambda step: 0.0 if step == 0 else 0.5)

        return (lambda p: p.step()), fresh
    raise ValueError(variant)


def yardstick(variant, x):
    """(name, call) of the torch pass that writes a variant's bytes the way
    it does: fresh tensors of its outputs' sizes, or in place."""
    if variant == "values":
        return "2 clones", lambda: (x.clone(), x.clone())
    if variant == "global":
        parts = x.view(GLOBAL_PARTS, -1).unbind(0)
        return f"{GLOBAL_PARTS} part clones", lambda: [p.clone() for p in parts]
    if variant == "bits":
        dst = torch.empty_like(x)
        return "copy_", lambda: dst.copy_(x)
    return "clone", x.clone


def run(sizes, dtypes, reps):
    pruneext.use_backend("cpu")
    rows = []
    for log2 in sizes:
        n = 1 << log2
        for name in dtypes:
            x = torch.randn(n, generator=torch.Generator().manual_seed(log2)).to(DTYPES[name])
            for variant in VARIANTS:
                call, setup = cell(variant, x)
                yard_name, yard = yardstick(variant, x)
                seconds, yard_s = paired_median_s(call, yard, reps, setup)
                rows.append(dict(log2=log2, dtype=name, variant=variant, seconds=seconds, yardstick=yard_name,
                                 yardstick_s=yard_s, ratio=seconds / yard_s))
    return rows


def spreads(rows):
    """Per (variant, size): the slowest dtype's ratio over the fastest's."""
    out = {}
    for r in rows:
        out.setdefault((r["variant"], r["log2"]), []).append(r)
    return {key: (max(c["ratio"] for c in cells) / min(c["ratio"] for c in cells),
                  max(cells, key=lambda c: c["ratio"])["dtype"], min(cells, key=lambda c: c["ratio"])["dtype"])
            for key, cells in out.items()}


def report(rows, dtypes):
    lines = []
    table = spreads(rows)
    for log2 in sorted({r["log2"] for r in rows}):
        lines.append(f"2^{log2} entries: cell = ms (x its yardstick, timed pair by pair with it)")
        lines.append("  " + "variant".ljust(8) + "".join(d.rjust(18) for d in dtypes)
                     + "   yardstick        spread   f16/bf16")
        for variant in VARIANTS:
            cells = {r["dtype"]: r for r in rows if r["log2"] == log2 and r["variant"] == variant}
            text = "".join(f"{cells[d]['seconds'] * 1e3:9.2f} ({cells[d]['ratio']:4.2f}x)".rjust(18) for d in dtypes)
            spread, slow, fast = table[(variant, log2)]
            pair = (f"{cells['float16']['seconds'] / cells['bfloat16']['seconds']:.2f}"
                    if "float16" in cells and "bfloat16" in cells else "-")
            yard = cells[dtypes[0]]["yardstick"]
            lines.append(f"  {variant.ljust(8)}{text}   {yard.ljust(14)}   {spread:.2f} ({slow} over {fast})   {pair}")
    worst = max(table.items(), key=lambda kv: kv[1][0])
    lines.append(f"worst spread: {worst[1][0]:.2f} ({worst[0][0]} at 2^{worst[0][1]}: {worst[1][1]} over {worst[1][2]})")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20,24", help="log2 of the entries, comma-separated")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", help="write the rows and the machine here")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    rows = run(sizes, dtypes, args.reps)
    info = dict(machine.info(), thp=thp_settings(), command=machine.command_line())
    print(f"# {info['cpu_model']}, {info['torch_threads']} threads, torch {info['torch']}, THP {info['thp']}, "
          f"env {info['env']}")
    print(report(rows, dtypes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "spreads": {f"{v}@2^{s}": t for (v, s), t in spreads(rows).items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
