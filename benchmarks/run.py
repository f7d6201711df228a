"""The benchmark: `python -m benchmarks.run [flags]` from the repository root.

Times every contender (benchmarks/contenders.py) on every case
(benchmarks/cases.py), prints one table line per contender and case as it
finishes, and writes a JSON file (after every case, so an interrupted run
keeps what it measured) and PNG plots beside it.

Presets (flags below refine them):
  default  CUDA when there is one, else CPU.
           CPU: sizes 2^16, 2^20, 2^24 (iterative: 2^16, 2^20, 2^22);
           float32, bfloat16, float16; amounts 0.1/0.5/0.9 up to 2^20 and
           0.5 above (iterative: 0.5); global over 'small-llama' (every
           dtype) and '16xlinear2048' (float32, amount 0.5). About two
           minutes on an idle 2-core CPU.
           CUDA: sizes 2^16 to 2^28 (iterative up to 2^28), amounts swept up
           to 2^24; global over 'small-llama' and '16xlinear2048' in every
           dtype; with --llama the LLaMA-7B-shaped bfloat16 list.
  --quick  tiny sizes, float32 and bfloat16, amount 0.5: a smoke run that
           exercises every contender and mode (< 30 s on a CPU)
  --full   sizes 2^16 to 2^26 on CPU (2^30 on CUDA) in steps of 4x, every
           dtype and amount, bigger models, more repetitions
  --probe  the GPU probe's cases (scripts/gpu_check.sh second): single 2^28
           float32 at 0.5 and 0.9, single 2^28 bfloat16 at 0.5, iterative
           2^28 float32 at 0.5, global llama-7b bfloat16 at 0.5 (on CPU:
           small-llama); --sizes (its first), --models (its first) and
           --modes refine it

Levels:
  default  the module calls torch.nn.utils.prune users make
           (l1_unstructured, global_unstructured: mask, buffers, the masked
           weight, the hook), against torch.prune
  --ops    the mask ops alone (op-<backend>: torch.ops.pruneext.l1_mask /
           l1_mask_global per backend), against op-topk (torch's topk mask
           path); the floor is what the op moves: read the scores and write
           the mask once (fp32 8 N bytes, bf16 4 N; iterative reads the old
           mask too), and xfloor says how far each op is from it at the copy
           bandwidth measured in the same run

Exit status: 0; 1 when a contender pruned a different number of entries (or
a pruneext backend a different set) than expected; 2 on bad arguments.
"""
import argparse
import gc
import os
import sys
import time
import traceback

import torch

from . import cases as cases_mod
from . import checks, contenders as contenders_mod, machine, memory, profiling, report, timing

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _csv(parse):
    def f(text):
        return [parse(x) for x in text.split(",") if x.strip()]

    return f


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="pruneext vs torch.nn.utils.prune: magnitude-pruning benchmark.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Presets"):],
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny smoke run (< 30 s on a CPU)")
    size.add_argument("--full", action="store_true", help="bigger sweep")
    size.add_argument("--probe", action="store_true", help="the GPU probe's cases (issue 11; see below)")
    p.add_argument("--ops", action="store_true",
                   help="op level: time the mask ops themselves (no module, no apply_mask), against op-topk")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when available (default)")
    p.add_argument("--sizes", type=_csv(cases_mod.parse_size),
                   help="elements per tensor, e.g. 2^16,2^20,16Mi (single and iterative modes)")
    p.add_argument("--dtypes", type=_csv(cases_mod.parse_dtype), help="float32,bfloat16,float16")
    p.add_argument("--amounts", type=_csv(float), help="e.g. 0.1,0.5,0.9")
    p.add_argument("--modes", type=_csv(str.strip), help="single,iterative,global")
    p.add_argument("--models", type=_csv(str.strip),
                   help=f"global-mode parameter lists: {', '.join(m for m in cases_mod.MODELS if m != 'warmup')}")
    p.add_argument("--contenders",
                   help="comma list: torch.prune (or torch), kthvalue, pruneext (all backends), "
                        "pruneext-torch, pruneext-cpu (or cpu), pruneext-cuda (cuda), pruneext-triton (triton); "
                        "with --ops: op-topk (or torch), pruneext (all backends), op-torch, op-cpu (or cpu), "
                        "op-cuda (cuda), op-triton (triton); default: all available")
    p.add_argument("--llama", action="store_true",
                   help="add the LLaMA-7B-shaped bfloat16 global case (CUDA only; 13.5 GB of parameters)")
    p.add_argument("--memory", choices=["auto", "all", "none"], default="auto",
                   help="peak-memory figure: auto = every case on CUDA, global cases on CPU "
                        "(one subprocess per contender); all = every case; none")
    p.add_argument("--memory-jobs", type=int,
                   help="CPU memory subprocesses run side by side (default: up to 4, fewer when RAM is short)")
    p.add_argument("--budget", type=float, help="seconds of repetitions per fast measurement")
    p.add_argument("--min-reps", type=int, help="repetitions of a fast call, at least")
    p.add_argument("--max-reps", type=int, help="repetitions of a fast call, at most")
    p.add_argument("--reps", type=int,
                   help="exactly this many timed repetitions of every call, fast or slow (warm-up apart)")
    p.add_argument("--profile", metavar="PATH",
                   help="after timing, profile one more call of each contender per case with "
                        "torch.profiler and append its kernel table to PATH (appended, never truncated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON path (default benchmarks/results/<device>-<date>.json); "
                                 "plots go beside it")
    p.add_argument("--no-plots", action="store_true", help="write no PNG")
    args = p.parse_args(argv)
    if args.modes:
        bad = [m for m in args.modes if m not in cases_mod.MODES]
        if bad:
            p.error(f"unknown mode(s) {bad}; choose from {', '.join(cases_mod.MODES)}")
    if args.models:
        bad = [m for m in args.models if m not in cases_mod.MODELS]
        if bad:
            p.error(f"unknown model(s) {bad}; choose from {', '.join(cases_mod.MODELS)}")
    if args.amounts and any(not 0 <= a <= 1 for a in args.amounts):
        p.error("amounts are fractions in [0, 1]")
    if args.reps is not None and args.reps < 1:
        p.error("--reps takes a positive count")
    if args.probe and (args.dtypes or args.amounts):
        p.error("--probe fixes the dtypes and amounts (refine it with --sizes, --models, --modes)")
    return p, args


def _probe_cases(args, device):
    cases = cases_mod.probe_cases(device, size=(args.sizes or [None])[0], model=(args.models or [None])[0])
    return [c for c in cases if not args.modes or c.mode in args.modes]


def _plan(args, device):
    preset = "quick" if args.quick else "full" if args.full else "probe" if args.probe else "default"
    plan = cases_mod.preset("default" if args.probe else preset, device)
    if args.sizes:
        plan.sizes, plan.iterative_sizes, plan.amount_sweep_max_size = args.sizes, None, None
    if args.dtypes:
        plan.dtypes, plan.models_all_dtypes = args.dtypes, None
    if args.amounts:
        plan.amounts, plan.iterative_amounts, plan.amount_sweep_max_size = args.amounts, None, None
    if args.modes:
        plan.modes = args.modes
    if args.models:
        plan.models, plan.models_all_dtypes = args.models, None
    policy = timing.Policy()
    if args.quick:
        policy = timing.Policy(budget_s=0.03, min_reps=3, max_reps=6, slow_s=0.5, slow_reps=3, slow_budget_s=2.0)
    elif args.full:
        policy = timing.Policy(budget_s=0.5, min_reps=5, max_reps=50, slow_s=1.0, slow_reps=5, slow_budget_s=20.0)
    if args.budget is not None:
        policy.budget_s = args.budget
    if args.min_reps is not None:
        policy.min_reps = args.min_reps
    if args.max_reps is not None:
        policy.max_reps = args.max_reps
    if args.reps is not None:
        policy.min_reps = policy.max_reps = policy.slow_reps = args.reps
        policy.slow_budget_s = 1e9  # no budget: the count is the count
    return preset, plan, policy


def _default_out(device):
    tag = "cpu"
    if device == "cuda":
        name = torch.cuda.get_device_name().lower()
        tag = "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
    return os.path.join(_BENCH_DIR, "results", f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json")


def _free(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


class Runner:
    """Runs the contenders on the cases, one case at a time."""

    def __init__(self, contenders, policy, memory_mode, device, seed, memory_jobs=None, profile=None):
        self.contenders, self.policy, self.memory_mode = contenders, policy, memory_mode
        self.profile = profile  # a path: one profiled call per contender and case, its table appended there
        self.memory_jobs = memory_jobs
        self.status = lambda text: None  # where "now timing X" goes (a TTY's status line)
        self.device, self.seed = device, seed
        self.clock = timing.Clock(device)
        self.warmed = set()
        self.small_inputs = {}

    def _inputs(self, case):
        params = cases_mod.make_params(case, self.seed)
        premask = contenders_mod.make_premask(params[0]) if case.mode == "iterative" else None
        return contenders_mod.Inputs(params, premask)

    def _warm_up(self, contender, case):
        key = (contender.name, case.mode, case.dtype)
        if key in self.warmed:
            return
        small = case.small()
        if (small.mode, small.dtype) not in self.small_inputs:
            self.small_inputs[(small.mode, small.dtype)] = self._inputs(small)
        contender.call(contender.setup(small, self.small_inputs[(small.mode, small.dtype)]))
        self.clock.sync()
        self.warmed.add(key)

    def _wants_memory(self, case):
        if self.memory_mode == "none":
            return False
        return self.memory_mode == "all" or self.device == "cuda" or case.mode == "global"

    def run_case(self, case):
        """Yield one row (dict) per contender: as each finishes, or, when the
        CPU memory figure is wanted, all at the end of the case (its
        subprocesses run side by side once every contender is timed)."""
        inputs = self._inputs(case)
        clone, copy = timing.copy_figures(self.clock, inputs.params, self.policy)
        _free(self.device)  # hand the copies' cached blocks back before the contenders run
        copy_gbps = 2 * case.param_bytes / copy.median_s / 1e9
        expected = case.expected_pruned()
        cpu_memory = self.device != "cuda" and self._wants_memory(case)
        medians, reference = {}, None  # medians: of the contenders that are a reference
        rows = []
        for contender in self.contenders:
            if not contender.applies_to(case):
                continue
            row = {
                "case_label": case.label, **case.to_dict(), "size_label": case.size_label,
                "param_bytes": case.param_bytes, "level": contender.level,
                "floor_bytes": report.floor_bytes(case, contender.level),
                "contender": contender.name, "reference": contender.reference, "status": "ok", "note": None,
                "clone_s": clone.median_s, "clone_min_s": min(clone.times_s), "copy_s": copy.median_s,
                "copy_min_s": min(copy.times_s), "copy_gbps": copy_gbps,
                "expected": expected,
            }
            rows.append(row)
            self.status(f"{case.label}: timing {contender.name}")
            reason = contender.refusal(case)
            if reason is not None:
                row.update(status="skipped", note=reason)
            else:
                try:
                    row.update(self._measure(contender, case, inputs))
                except Exception as e:  # OOM, a backend's refusal, a bug: recorded, the run goes on
                    first_line = str(e).splitlines()[0] if str(e) else ""
                    row.update(status="error", note=f"{type(e).__name__}: {first_line}",
                               traceback=traceback.format_exc(limit=4))
            if row["status"] == "ok":
                if contender.name == contender.reference:
                    medians[contender.name] = row["median_s"]
                if contender.is_pruneext and reference is None:
                    reference = row["digest"]
                ok, text = checks.verdict(contender, row["digest"], expected, reference)
                row.update(check_ok=ok, check=text, pruned=checks.pruned(row["digest"]))
                ref_median = medians.get(contender.reference)
                row["speedup"] = ref_median / row["median_s"] if ref_median else None
                row["gbps"] = row["floor_bytes"] / row["median_s"] / 1e9
                row["frac_copy"] = row["gbps"] / copy_gbps if copy_gbps else None
                row["x_floor"] = 1 / row["frac_copy"] if row["frac_copy"] else None
                row["x_clone"] = row["median_s"] / clone.median_s if clone.median_s else None
                if self.profile:
                    row["profile"] = self._profile(contender, case, inputs)
                if case.mode != "global":
                    row.pop("digest")  # one tensor: its count says it all
            _free(self.device)
            if not cpu_memory:
                yield row
        if cpu_memory:
            del inputs
            _free(self.device)
            names = [r["contender"] for r in rows if r["status"] == "ok"]
            self.status(f"{case.label}: peak memory of {', '.join(names)} (subprocesses)")
            results = memory.cpu_peak_extra_parallel(case, names, self.seed, self.memory_jobs)
            for row in rows:
                mem = results.get(row["contender"])
                if mem is None:
                    pass
                elif "error" in mem:
                    row["memory_note"] = mem["error"]
                else:
                    row.update(peak_extra_bytes=mem["peak_extra_bytes"],
                               peak_extra_ratio=mem["peak_extra_bytes"] / case.param_bytes, memory_detail=mem)
            yield from rows

    def _profile(self, contender, case, inputs):
        """One more call under torch.profiler; its kernel table goes to
        self.profile, the kernel count and device time into the row."""
        try:
            state = contender.setup(case, inputs)
            self.clock.sync()
            table, summary = profiling.profile_call(contender.call, state, self.device)
            del state
        except Exception as e:  # the profile is an extra: a failure is noted, the row stands
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        with open(self.profile, "a") as f:
            f.write(f"== {case.label}  {contender.name}: {profiling.describe(summary)}\n{table}\n\n")
        return summary

    def _measure(self, contender, case, inputs):
        out = {"peak_extra_bytes": None, "peak_extra_ratio": None, "memory_note": None}
        self._warm_up(contender, case)
        setup = lambda: contender.setup(case, inputs)  # noqa: E731
        found = {}
        if self.device == "cuda":
            # One untimed call: peak memory and the check (it warms up, too).
            state = setup()
            if self._wants_memory(case):
                peak = memory.cuda_peak_extra(contender.call, state)
                out.update(peak_extra_bytes=peak, peak_extra_ratio=peak / case.param_bytes)
            else:
                contender.call(state)
            found["digest"] = checks.digest(contender.masks(state))
            del state
            result = timing.measure(self.clock, setup, contender.call, self.policy)
        else:
            def record(state):
                found["digest"] = checks.digest(contender.masks(state))

            result = timing.measure(self.clock, setup, contender.call, self.policy, after_first=record)
        out.update(median_s=result.median_s, min_s=min(result.times_s), times_s=result.times_s, reps=result.reps,
                   warmups=result.warmups, digest=found["digest"])
        return out


def main(argv=None):
    started = time.time()
    parser, args = parse_args(argv)
    # torch's imports leave ~10^6 objects for the cyclic collector to walk
    # (hundreds of ms per gc.collect()); freeze them so collections between
    # measurements only look at what the harness made.
    gc.collect()
    gc.freeze()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    preset, plan, policy = _plan(args, device)
    level = "op" if args.ops else "module"
    try:
        contenders = contenders_mod.select(args.contenders, level)
    except ValueError as e:
        parser.error(str(e))
    if args.probe:
        try:
            cases = _probe_cases(args, device)
        except ValueError as e:
            parser.error(str(e))
    else:
        cases = cases_mod.build_cases(plan, device, llama=args.llama)
    if args.llama and device != "cuda":
        print("note: --llama needs a CUDA device; the LLaMA-7B case is left out on CPU")
    out = args.out or _default_out(device)

    info = machine.info()
    command = machine.command_line()
    print(f"pruneext benchmark: {preset} preset, {level} level, on {device} "
          f"({info['gpu']['name'] if device == 'cuda' else info['cpu_model']}, {info['cpu_count']} CPUs, "
          f"torch {info['torch']}, {info['torch_threads']} threads)")
    print(f"contenders: {', '.join(c.name for c in contenders)}; pruneext backends here: "
          f"{', '.join(info['pruneext_build_info']['backends'])}")
    print(f"{len(cases)} cases; timing: {'CUDA events' if device == 'cuda' else 'time.perf_counter'}, "
          f"median of repetitions (budget {policy.budget_s:g} s each, min {policy.min_reps}; "
          f"calls over {policy.slow_s:g} s: up to {policy.slow_reps} reps, no extra warm-up)")
    print(report.legend(level))
    print()
    prefix_width = len(f"[{len(cases)}/{len(cases)}] ")
    print(" " * prefix_width + report.header(), flush=True)

    payload = {
        "schema": 1, "command": command, "argv": sys.argv[1:], "preset": preset, "device": device,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": info,
        "settings": {"plan": None if args.probe else vars(plan), "policy": vars(policy), "memory": args.memory,
                     "seed": args.seed, "level": level, "contenders": [c.name for c in contenders],
                     "cases": [c.label for c in cases]},
        "definitions": report.DEFINITIONS,
        "rows": [],
    }
    if args.profile:
        os.makedirs(os.path.dirname(os.path.abspath(args.profile)), exist_ok=True)
    runner = Runner(contenders, policy, args.memory, device, args.seed, args.memory_jobs, args.profile)
    if sys.stderr.isatty():
        runner.status = lambda text: print(f"\r\033[K  ... {text}", end="", file=sys.stderr, flush=True)
    status = 0
    last_mode = None
    try:
        for i, case in enumerate(cases, 1):
            if last_mode is not None and case.mode != last_mode:
                print()
            last_mode = case.mode
            for row in runner.run_case(case):
                payload["rows"].append(row)
                if sys.stderr.isatty():  # clear the status line
                    print("\r\033[K", end="", file=sys.stderr, flush=True)
                print(f"[{i}/{len(cases)}] ".rjust(prefix_width) + report.format_row(row), flush=True)
            _free(device)
            payload["elapsed_s"] = time.time() - started
            report.write_json(out, payload)
    except KeyboardInterrupt:
        print("\ninterrupted: the JSON holds the cases finished so far")
        status = 130
    rows = payload["rows"]
    print()
    for line in report.summary(rows):
        print(line)
    if any(r["status"] == "ok" and not r["check_ok"] for r in rows) and status == 0:
        status = 1
    payload["elapsed_s"] = time.time() - started
    payload["exit_status"] = status
    report.write_json(out, payload)
    print(f"results: {out}")
    if not args.no_plots and rows:
        from .plots import write_plots

        stem = os.path.splitext(os.path.basename(out))[0]
        for path in write_plots(rows, os.path.dirname(os.path.abspath(out)), stem):
            print(f"plot: {path}")
    print(f"elapsed: {time.time() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
