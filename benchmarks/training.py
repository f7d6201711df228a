"""The lean training mode (pruneext.MagnitudePruner) against dense training
and torch.nn.utils.prune's hook reparametrization.

    python -m benchmarks.training [--device cpu] [--reps 5] [--json out.json] [--quick]
                                  [--parts update,memory,training,added]

Four parts, each a median over `reps` runs in this process (the memory
figures in a fresh subprocess each):

1. One mask update over 16 x Linear(2048, 2048) fp32 (67.1 M entries), a
   global 50 % update of a pruner at 0 %, against `clone()` of every weight
   (fresh memory, as a copy costs), `copy_()` into existing tensors (no page
   faults) and torch's `global_unstructured` at 50 %;
   re-masking (`pruner.apply()`, the pass after each optimizer step) against
   one in-place pass over the weights (`mul_(1)`).
2. Memory: the pruner's persistent state (its masks) and the peak extra
   memory of one update (VmHWM growth of a subprocess, benchmarks.memory's
   method), against the parameter bytes; torch's reparametrization keeps a
   `weight_mask` and a recomputed `weight` per weight (counted from the
   module).
3. One training step (forward, backward, optimizer step, zero_grad) of a
   LLaMA-shaped decoder of about 20 M parameters on 1,024 tokens (4 x 256),
   fp32, with SGD (momentum), AdamW (default) and fused AdamW: dense; torch's hooks
   (global_unstructured at 50 % first); the pruner at 50 % with no update in
   the step (pruner.step() re-masks only); the pruner updating every step (a
   schedule that rises each step).
4. What each method adds to that step, timed alone (at least 15 runs): torch's
   hooks recomputing every weight and masking its gradient, against the
   pruner masking the gradients in place and re-zeroing the weights.
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import pruneext

from . import machine
from .memory import _reset_high_water_mark, _return_free_heap, _vm_hwm_bytes

_PREFIX = "BENCHMARK-TRAINING-MEMORY "


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(call, reps, device, setup=None):
    """Median seconds of call(state) over reps runs after one warm-up;
    setup() (untimed) builds each run's state."""
    times = []
    for i in range(reps + 1):
        state = setup() if setup else None
        _sync(device)
        t0 = time.perf_counter()
        call(state)
        _sync(device)
        if i:  # the first run warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------ 1. the update


def linears(device, seed=0, n=16, width=2048):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(n)]).to(device)


def update_figures(device, reps, width):
    model = linears(device, width=width)
    weights = [m.weight for m in model]
    originals = [w.detach().clone() for w in weights]
    rising = lambda step: 0.0 if step == 0 else 0.5  # noqa: E731

    def fresh_pruner(_=None):
        with torch.no_grad():
            for w, o in zip(weights, originals):
                w.copy_(o)
        return pruneext.MagnitudePruner(model, rising)

    def torch_setup():
        m = copy.deepcopy(model)
        return [(lin, "weight") for lin in m]

    pruner = fresh_pruner()
    pruner.step()
    copies = [torch.empty_like(w) for w in weights]
    out = {
        "entries": sum(w.numel() for w in weights),
        "clone_s": median_time(lambda _: [w.detach().clone() for w in weights], reps, device),
        "copy_s": median_time(lambda _: [c.copy_(w.detach()) for c, w in zip(copies, weights)], reps, device),
        "inplace_pass_s": median_time(lambda _: [w.detach().mul_(1) for w in weights], reps, device),
        "update_s": median_time(lambda p: p.step(), reps, device, setup=fresh_pruner),
        "remask_s": median_time(lambda _: pruner.apply(), reps, device),
        "torch_global_s": median_time(
            lambda params: torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=0.5),
            max(1, reps // 2), device, setup=torch_setup,
        ),
    }
    out["update_over_clone"] = out["update_s"] / out["clone_s"]
    out["update_over_copy"] = out["update_s"] / out["copy_s"]
    out["remask_over_pass"] = out["remask_s"] / out["inplace_pass_s"]
    out["torch_over_update"] = out["torch_global_s"] / out["update_s"]
    return out


# ------------------------------------------------------------- 2. memory


def _measure_update_peak(width):
    """(In the subprocess.) Peak extra RSS of one global 50 % update."""
    model = linears("cpu", width=width)
    pruner = pruneext.MagnitudePruner(model, lambda s: 0.0 if s == 0 else 0.5)
    warm = pruneext.MagnitudePruner(linears("cpu", n=2, width=64), lambda s: 0.0 if s == 0 else 0.5)
    warm.step()  # loads and warms the ops
    _return_free_heap()
    reset = _reset_high_water_mark()
    before = _vm_hwm_bytes()
    pruner.step()
    after = _vm_hwm_bytes()
    param_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model)
    mask_bytes = sum(t.numel() * t.element_size() for t in pruner.state_dict()["masks"])
    return {"update_peak_extra": after - before, "hwm_reset": reset, "param_bytes": param_bytes, "mask_bytes": mask_bytes}


def memory_figures(width):
    cmd = [sys.executable, "-m", "benchmarks.training", "--measure-memory", "--width", str(width)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
    line = next(l for l in done.stdout.splitlines() if l.startswith(_PREFIX))
    out = json.loads(line[len(_PREFIX):])
    out["mask_over_params"] = out["mask_bytes"] / out["param_bytes"]
    out["update_peak_over_params"] = out["update_peak_extra"] / out["param_bytes"]
    return out


def torch_reparam_bytes(model_pairs):
    """Bytes torch's reparametrization adds per pruned weight: the mask
    buffer and the recomputed `weight` (weight_orig is the parameter)."""
    extra = 0
    for mod, name in model_pairs:
        for t in (getattr(mod, name + "_mask"), getattr(mod, name)):
            extra += t.numel() * t.element_size()
    return extra


# -------------------------------------------------------- 3. training step


class Block(nn.Module):
    """A LLaMA-style decoder block: RMSNorm, causal attention (q, k, v, o),
    RMSNorm, SwiGLU MLP (gate, up, down)."""

    def __init__(self, dim, ffn, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down = nn.Linear(ffn, dim, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self, vocab=4096, dim=512, ffn=1376, blocks=5, heads=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, ffn, heads) for _ in range(blocks))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def _decoder(device, quick):
    """The decoder parts 3 and 4 time, seeded (a small one when quick)."""
    torch.manual_seed(0)
    return Decoder(**(dict(vocab=512, dim=128, ffn=344, blocks=2) if quick else {})).to(device)


def _linear_pairs(model):
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]


OPTIMIZERS = {
    # SGD with momentum: what the pruner itself costs a step
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
    # AdamW as constructed by default (on CPU the single-tensor loop): torch's
    # CPU sqrt is several times slower on exact zeros (8M zeros 33 ms against
    # 4 ms for random values, numpy 4 ms on both), and masked gradients leave
    # exp_avg_sq exactly 0 where pruned, under torch's hooks as under the pruner
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-4),
    # fused AdamW (on CPU since torch 2.4): its own vectorised sqrt has no such
    # slow path, and it is 6x faster than the default on this CPU
    "adamw fused": lambda params: torch.optim.AdamW(params, lr=1e-4, fused=True),
}


def training_figures(device, reps, quick, optimizer):
    base = _decoder(device, quick)
    tokens = torch.randint(0, base.embed.num_embeddings, (4, 64 if quick else 256), device=device)
    targets = torch.roll(tokens, -1, 1)

    def contender(kind):
        model = copy.deepcopy(base)
        after = lambda: None  # noqa: E731
        if kind == "torch hooks":
            torch_prune.global_unstructured(_linear_pairs(model), torch_prune.L1Unstructured, amount=0.5)
        elif kind == "pruner":
            after = pruneext.MagnitudePruner(_linear_pairs(model), 0.5).step
        elif kind == "pruner, updating":
            # a rise at every step: each step() prunes globally among the alive
            after = pruneext.MagnitudePruner(_linear_pairs(model), lambda s: min(0.9, 0.3 + 0.01 * s)).step
        opt = OPTIMIZERS[optimizer](model.parameters())

        def step(_):
            logits = model(tokens)
            nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            after()

        step(None)  # the optimizer's state exists before timing
        return model, step

    out = {"params": sum(p.numel() for p in base.parameters()),
           "pruned_params": sum(m.weight.numel() for m, _ in _linear_pairs(base)),
           "tokens": tokens.numel()}
    kinds = ("dense", "torch hooks", "pruner", "pruner, updating")
    steps = {k: contender(k) for k in kinds}
    # interleaved rounds, so drift (other load, turbo) hits every contender alike
    times = {k: [] for k in kinds}
    for _ in range(reps):
        for k in kinds:
            times[k].append(median_time(steps[k][1], 1, device))
    for k in kinds:
        out[f"{k} step_s"] = statistics.median(times[k])
    # ratios paired within a round (the median of the rounds' ratios): drift
    # between rounds, which on a shared VM moves the step by several per
    # cent, cancels out of them
    paired = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    for k in kinds[1:]:
        out[f"{k} over dense"] = paired(k, "dense")
    out["pruner over torch hooks"] = paired("pruner", "torch hooks")
    hooked = steps["torch hooks"][0]
    out["torch hooks extra_bytes"] = torch_reparam_bytes(_linear_pairs(hooked))
    out["param_bytes"] = sum(m.weight.numel() * m.weight.element_size() for m, _ in _linear_pairs(base))
    return out


# ------------------------------------- 4. what each method adds, alone


def added_work_figures(device, reps, quick):
    """What each method adds to a training step of the decoder (50 %
    pruned), timed alone: in a whole step it sits among matmuls whose
    run-to-run spread on a shared CPU is larger than it.

    torch's hooks: the forward pre-hook recomputing every `weight` as
    `weight_orig * weight_mask`, and the backward of that product (the
    gradient times the mask, into `weight_orig.grad`). The pruner: its hooks
    masking every accumulated gradient in place, and `pruner.step()`
    re-zeroing the pruned weights (no update)."""
    base = _decoder(device, quick)
    grads = [torch.randn_like(m.weight) for m, _ in _linear_pairs(base)]

    hooked = copy.deepcopy(base)
    pairs = _linear_pairs(hooked)
    torch_prune.global_unstructured(pairs, torch_prune.L1Unstructured, amount=0.5)
    methods = [
        next(h for h in m._forward_pre_hooks.values() if isinstance(h, torch_prune.BasePruningMethod)) for m, _ in pairs
    ]

    def torch_hooks(_):
        for (m, name), method, g in zip(pairs, methods, grads):
            method(m, ())  # weight = weight_orig * weight_mask, as before each forward
            getattr(m, name + "_orig").grad = None  # (zero_grad(set_to_none=True))
            getattr(m, name).backward(g)  # weight_orig.grad = g * weight_mask

    lean = copy.deepcopy(base)
    pruner = pruneext.MagnitudePruner(_linear_pairs(lean), 0.5)
    grad_hooks = [pruner._grad_hook(j) for j in range(len(pruner.params))]  # what it registered

    def pruner_work(fresh):
        for p, g, hook in zip(pruner.params, fresh, grad_hooks):
            p.grad = g  # what autograd accumulates: the matmul's gradient, as is
            hook(p)
        pruner.step()

    out = {
        "torch hooks added_s": median_time(torch_hooks, reps, device),
        # (the fresh gradients made untimed: the matmuls make them under either method)
        "pruner added_s": median_time(pruner_work, reps, device, setup=lambda: [g.clone() for g in grads]),
    }
    out["pruner over torch hooks"] = out["pruner added_s"] / out["torch hooks added_s"]
    return out


# ------------------------------------------------------------------ report


def _ms(s):
    return f"{s * 1e3:.1f} ms"


def _update_report(r):
    u = r["update"]
    return [
        f"## 1. Update over 16 x Linear({r['width']}, {r['width']}) fp32 ({u['entries'] / 1e6:.1f} M entries)",
        "| | median | ratio |",
        "|---|---|---|",
        f"| clone() of every weight (fresh memory) | {_ms(u['clone_s'])} | 1.00x |",
        f"| copy_() into existing tensors | {_ms(u['copy_s'])} | 1.00x |",
        f"| pruner update 0 -> 50 % (global) | {_ms(u['update_s'])} | {u['update_over_clone']:.2f}x clone,"
        f" {u['update_over_copy']:.2f}x copy_ |",
        f"| torch global_unstructured 50 % | {_ms(u['torch_global_s'])} | {u['torch_over_update']:.1f}x the update |",
        f"| in-place pass (mul_(1)) | {_ms(u['inplace_pass_s'])} | 1.00x |",
        f"| re-mask (pruner.apply()) | {_ms(u['remask_s'])} | {u['remask_over_pass']:.2f}x the pass |",
    ]


def _memory_report(r):
    m = r["memory"]
    lines = [
        "## 2. Memory (fp32)",
        f"- pruner's persistent state: {m['mask_bytes'] / 1e6:.2f} MB of masks = {m['mask_over_params']:.4f}x the parameter bytes",
        f"- peak extra memory of one update: {m['update_peak_extra'] / 1e6:.2f} MB = {m['update_peak_over_params']:.3f}x"
        f" the parameter bytes (VmHWM reset: {m['hwm_reset']})",
    ]
    if "training" in r:
        t = r["training"]["adamw"]
        lines.append(
            f"- torch's reparametrization on the decoder: {t['torch hooks extra_bytes'] / t['param_bytes']:.2f}x the pruned"
            " parameter bytes, kept for the whole training"
        )
    return lines


def _training_report(r):
    t = r["training"]["adamw"]
    lines = [
        f"## 3. Training step, decoder of {t['params'] / 1e6:.1f} M parameters, {t['tokens']} tokens",
        "| | " + " | ".join(f"{name} | over dense" for name in OPTIMIZERS) + " |",
        "|---|" + "---|---|" * len(OPTIMIZERS),
    ]
    for k in ("dense", "torch hooks", "pruner", "pruner, updating"):
        cells = []
        for name in OPTIMIZERS:
            t = r["training"][name]
            cells += [_ms(t[k + " step_s"]), "1.00x" if k == "dense" else f"{t[k + ' over dense']:.3f}x"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| pruner over torch hooks | " + " | ".join(
        f"| {r['training'][name]['pruner over torch hooks']:.3f}x" for name in OPTIMIZERS) + " |")
    lines += ["", "(over dense, over torch hooks: medians of the ratios within each round)"]
    return lines


def _added_report(r):
    a = r["added"]
    return [
        "## 4. What each method adds to a step, timed alone (the decoder, 50 % pruned)",
        f"- torch's hooks (weight recomputed, its gradient times the mask): {_ms(a['torch hooks added_s'])}",
        f"- the pruner (gradients masked in place, pruner.step() re-zeroing): {_ms(a['pruner added_s'])},"
        f" {a['pruner over torch hooks']:.2f}x the hooks'",
    ]


# name -> (what measures the part, its report), in the order they run
PARTS = {
    "update": (lambda a: update_figures(a.device, a.reps, a.width), _update_report),
    "memory": (lambda a: memory_figures(a.width), _memory_report),
    "training": (lambda a: {name: training_figures(a.device, a.reps, a.quick, name) for name in OPTIMIZERS},
                 _training_report),
    "added": (lambda a: added_work_figures(a.device, max(a.reps, 15), a.quick), _added_report),
}


def format_report(r):
    sections = [report(r) for name, (_, report) in PARTS.items() if name in r]
    return "\n\n".join("\n".join(lines) for lines in sections)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--width", type=int, default=2048, help="width of the 16 Linear layers of part 1")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the harness")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"which parts to run, comma-separated (default: all of {','.join(PARTS)}; "
                    "memory reads this process's VmHWM, CPU only)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure_memory:
        print(_PREFIX + json.dumps(_measure_update_peak(args.width)), flush=True)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        ap.error(f"--parts: unknown {unknown or parts}; choose from {','.join(PARTS)}")
    if "memory" in parts and torch.device(args.device).type != "cpu":
        ap.error("--parts memory measures CPU memory (VmHWM): run it with --device cpu")
    args.width = 256 if args.quick else args.width
    result = {"machine": machine.info(), "command": machine.command_line(), "width": args.width}
    for name in PARTS:
        if name in parts:
            result[name] = PARTS[name][0](args)
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
