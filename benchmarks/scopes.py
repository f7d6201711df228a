"""The row and N:M scopes (issue 24) against torch at LLaMA-7B-shaped
Linear sizes, each as a ratio to a copy_ of the weight in the same run.

    python -m benchmarks.scopes [--shapes 4096x4096,11008x4096,4096x11008]
                                [--dtypes float32,bfloat16] [--reps 5] [--json out.json]
                                [--backend cpu] [--device cpu]

Rows, amount 0.5 of each row / 2:4 (fresh masks, no default mask):
  row    pruneext.ops.l1_mask_grouped(w, in_features, k)   vs  torch: a mask
         of ones with the k smallest |w| of each row scattered to 0 by
         w.abs().topk(k, dim=1, largest=False)
  2:4    pruneext.ops.l1_mask_grouped(w, 4, 2)             vs  torch: the same
         on w.abs().reshape(-1, 4) (the reshape reference)
Medians over --reps runs after one warm-up; each time is also given over
the median copy_ of w into an existing tensor (the memory floor's scale).
On a GPU (--device cuda) the timings synchronize around each call.

--matmul (CUDA, compute capability 8.0+): what 2:4 buys downstream, the
forward of a LLaMA-7B-shaped Linear (bf16, 4096 -> 11008 and 11008 -> 4096,
2048 tokens) with its dense weight against the same weight 2:4-pruned and
converted by pruneext.to_semi_structured.
"""
import argparse
import json
import statistics
import time

import torch

import pruneext
from pruneext import ops

from . import machine

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(call, reps, device):
    call()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_groups(w, group_size, k):
    """torch's way: topk of each group's magnitudes, scattered into ones."""
    flat = w.abs().reshape(-1, group_size)
    mask = torch.ones_like(flat)
    mask.scatter_(1, flat.topk(k, dim=1, largest=False).indices, 0)
    return mask.reshape(w.shape)


def check(mask, w, size, k):
    """A correct selection: k zeros in every group, none of them larger in
    magnitude than an entry kept (random 16-bit data is full of ties, where
    topk and pruneext may pick different equals)."""
    pruned = mask.reshape(-1, size) == 0
    magnitude = w.abs().float().reshape(-1, size)
    assert bool((pruned.sum(1) == k).all()), "a group without k zeros"
    if 0 < k < size:
        largest_pruned = magnitude.masked_fill(~pruned, float("-inf")).amax(1)
        smallest_kept = magnitude.masked_fill(pruned, float("inf")).amin(1)
        assert bool((largest_pruned <= smallest_kept).all()), "a pruned entry above a kept one"


def cases(shape):
    rows, cols = shape
    return [("row", cols, cols // 2), ("2:4", 4, 2)]


def run(shapes, dtypes, reps, backend, device):
    out = []
    for shape in shapes:
        for dtype in dtypes:
            w = torch.randn(shape, device=device).to(DTYPES[dtype])
            target = torch.empty_like(w)
            copy = median_s(lambda: target.copy_(w), reps, device)
            for scope, size, k in cases(shape):
                with pruneext.use_backend(backend):
                    ours = median_s(lambda: ops.l1_mask_grouped(w, size, k), reps, device)
                    check(ops.l1_mask_grouped(w, size, k), w, size, k)
                theirs = median_s(lambda: torch_groups(w, size, k), reps, device)
                out.append(dict(shape=list(shape), dtype=dtype, scope=scope, pruneext_s=ours, torch_s=theirs,
                                copy_s=copy))
    return out


def report(rows):
    lines = [f"{'shape':>12} {'dtype':>9} {'scope':>5} {'pruneext ms':>12} {'torch ms':>10} {'speed-up':>9} "
             f"{'/copy_':>7} {'torch/copy_':>12}"]
    for r in rows:
        lines.append(
            f"{'x'.join(map(str, r['shape'])):>12} {r['dtype']:>9} {r['scope']:>5} {r['pruneext_s'] * 1e3:12.1f} "
            f"{r['torch_s'] * 1e3:10.1f} {r['torch_s'] / r['pruneext_s']:8.1f}x {r['pruneext_s'] / r['copy_s']:7.1f} "
            f"{r['torch_s'] / r['copy_s']:12.1f}"
        )
    return "\n".join(lines)


def matmul_rows(reps, device, tokens=2048):
    """Dense against semi-structured forward of LLaMA-7B-shaped Linears."""
    out = []
    for features, hidden in ((4096, 11008), (11008, 4096)):
        layer = torch.nn.Linear(features, hidden, bias=False, device=device, dtype=torch.bfloat16)
        x = torch.randn(tokens, features, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            dense = median_s(lambda: layer(x), reps, device)
            pruneext.nm_structured(layer, "weight")
            report = pruneext.to_semi_structured(layer)
            if not report.converted:
                raise RuntimeError(f"not converted: {report}")
            sparse = median_s(lambda: layer(x), reps, device)
        out.append(dict(shape=[hidden, features], tokens=tokens, dense_s=dense, semi_structured_s=sparse))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    ap.add_argument("--matmul", action="store_true", help="also dense vs 2:4 semi-structured Linear forwards (CUDA)")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    device = torch.device(args.device)
    rows = run(shapes, args.dtypes.split(","), args.reps, args.backend, device)
    info = dict(machine.info(), command=machine.command_line(), backend=args.backend)
    print(f"# {info['cpu_model']}, {info['torch_threads']} threads, torch {info['torch']}, backend {args.backend} "
          f"on {device}")
    print(report(rows))
    matmuls = matmul_rows(args.reps, device) if args.matmul else []
    for r in matmuls:
        print(f"Linear {r['shape']} x {r['tokens']} tokens, bf16: dense {r['dense_s'] * 1e3:.3f} ms, "
              f"2:4 semi-structured {r['semi_structured_s'] * 1e3:.3f} ms ({r['dense_s'] / r['semi_structured_s']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows, "matmul": matmuls}, f, indent=1)


if __name__ == "__main__":
    main()
