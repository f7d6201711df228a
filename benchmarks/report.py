"""The terminal table (one line per contender and case, printed as each
finishes), its legend and summary, and the JSON file.

Figures of a row (all also in the JSON, in SI units):

  median     median seconds of the pruning call (`reps` timed repetitions,
             warm-up excluded)
  speedup    the reference's median / this median, same case, same run (the
             reference: torch.prune at module level, op-topk at op level)
  GB/s       floor_bytes / median. floor_bytes depends on the level of the
             contender; e = bytes per element of the dtype (4 for float32,
             2 for 16-bit types), N = entries.
             Module level (l1_unstructured / global_unstructured): the floor
             of the mask computation as the module call does it (DESIGN.md
             section 3):
               single, global  3 N e  (read the scores for the histogram,
                                       read them again, write the mask)
               iterative       5 N e  (the same, plus reading the previous
                                       mask in both passes)
             The call also does what torch's does around the mask (the
             `weight = weight_orig * mask` product, hook bookkeeping), so
             100 % of copy bandwidth is not reachable; the floor is the
             yardstick, not a promise.
             Op level (--ops: the mask op alone, see op_floor_bytes): read
             the scores once, write the mask once (in the scores' dtype):
               single, global  2 N e  (fp32 8 N, bf16 4 N: one clone())
               iterative       3 N e  (the previous mask is read once too)
  %copy      GB/s / copy GB/s, where copy GB/s = 2 x parameter bytes /
             median time of dst.copy_(src) over the same tensors, measured
             in the same run
  xfloor     median / (floor_bytes / copy bandwidth): how many times the
             floor time at the copy bandwidth of the same run (1 / %copy)
  clone      median time of tensor.clone() of the same tensor(s)
  xclone     median / clone (the CPU target: within 3x of tensor.clone())
  peak-extra peak memory above the inputs during the call, and its ratio to
             the parameter bytes (see benchmarks/memory.py); '-' when not
             measured
  check      see benchmarks/checks.py: ok / ties +d (kthvalue) / MISMATCH
"""
import json
import math
import os
from collections import defaultdict

from .cases import SHORT_DTYPE

FLOOR_FACTOR = {"single": 3, "iterative": 5, "global": 3}  # module level, x parameter bytes
LEVELS = ("module", "op")

# What each figure of a row means; written into the JSON file.
DEFINITIONS = {
    "median_s": "median seconds of the timed pruning calls (setup and warm-up excluded); min_s: the fastest",
    "floor_bytes": "memory floor. Module level (level 'module'): of the mask computation, 3*N*e bytes "
                   "(single, global), 5*N*e (iterative: the previous mask is read in both passes). Op level "
                   "(level 'op'): what the op moves, N*e (read the scores once) + N*m (write the mask) + "
                   "N*m (iterative: read the previous mask); e, m = bytes per element of scores and mask",
    "x_floor": "median_s / (floor_bytes / (copy_gbps * 1e9)): times the floor time at the copy bandwidth",
    "level": "module: l1_unstructured / global_unstructured on a module; op: the mask op alone",
    "gbps": "floor_bytes / median_s / 1e9",
    "copy_gbps": "2 * param_bytes / (median seconds of dst.copy_(src)) / 1e9, same tensors, same run",
    "frac_copy": "gbps / copy_gbps",
    "clone_s": "median seconds of tensor.clone() of the same tensor(s)",
    "x_clone": "median_s / clone_s",
    "speedup": "reference median_s / this median_s (same case, same run); the reference is torch.prune "
               "at module level, op-topk (torch's topk mask path) at op level",
    "peak_extra_bytes": "CUDA: max_memory_allocated during the call minus memory_allocated before; "
                        "CPU: growth of the RSS high-water mark (VmHWM after a reset; ru_maxrss where the "
                        "reset is impossible) over the call, in a fresh subprocess",
    "peak_extra_ratio": "peak_extra_bytes / param_bytes",
    "check": "ok; 'ties +d' (kthvalue pruned d tied entries more); MISMATCH (wrong count, or a pruneext "
             "backend selected other entries than the reference pruneext backend)",
    "digest": "global mode: per tensor [zeros, sum of the zeros' flat indices]",
}


def floor_bytes(case, level="module"):
    """The bytes a contender of `level` must move at least on `case`."""
    if level == "op":
        return op_floor_bytes(case)
    return FLOOR_FACTOR[case.mode] * case.param_bytes


def op_floor_bytes(case, mask_itemsize=None):
    """What the mask op itself must move: read the scores once and write the
    mask once; the iterative op also reads the previous mask once. The mask
    has the scores' dtype unless `mask_itemsize` says otherwise (the op's
    default; the iterative mode's previous mask has the parameter's dtype).
    float32: 8 N bytes (iterative 12 N); 16-bit types: 4 N (iterative 6 N)."""
    score = case.torch_dtype.itemsize
    mask = mask_itemsize or score
    mask_reads = 1 if case.mode == "iterative" else 0
    return case.size * (score + mask * (1 + mask_reads))


def fmt_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f}s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f}ms"
    return f"{s * 1e6:.1f}us"


def fmt_bytes(b):
    if b is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.3g}{unit}"
    return f"{b:.0f}B"


def _num(x, fmt, suffix=""):
    return "-" if x is None else f"{x:{fmt}}{suffix}"


COLUMNS = (
    ("mode", 9, "<"), ("size", 13, "<"), ("dtype", 5, "<"), ("amt", 4, "<"), ("contender", 15, "<"),
    ("median", 9, ">"), ("reps", 4, ">"), ("speedup", 8, ">"), ("GB/s", 7, ">"), ("%copy", 6, ">"),
    ("xfloor", 6, ">"),
    ("clone", 9, ">"), ("xclone", 7, ">"), ("peak-extra", 15, ">"), ("check", 0, "<"),
)


def _line(values):
    cells = []
    for (name, width, align), value in zip(COLUMNS, values):
        cells.append(f"{value:{align}{width}}" if width else str(value))
    return " ".join(cells).rstrip()


def header():
    return _line([name for name, _, _ in COLUMNS])


def format_row(row):
    lead = [row["mode"], row["size_label"], SHORT_DTYPE.get(row["dtype"], row["dtype"]), f"{row['amount']:g}",
            row["contender"]]
    if row["status"] != "ok":
        word = "skipped" if row["status"] == "skipped" else "ERROR"
        return _line(lead) + f" {word}: {row['note']}"
    mem = "-"
    if row.get("peak_extra_bytes") is not None:
        mem = f"{fmt_bytes(row['peak_extra_bytes'])} {row['peak_extra_ratio']:.2f}x"
    elif row.get("memory_note"):
        mem = "n/a"
    check = row["check"] if row["check_ok"] else f"{row['check']}  <<<<<<<<<<"
    return _line(lead + [
        fmt_time(row["median_s"]), str(row["reps"]), _num(row["speedup"], ".2f", "x"), _num(row["gbps"], ".2f"),
        _num(None if row["frac_copy"] is None else 100 * row["frac_copy"], ".1f", "%"),
        _num(row.get("x_floor"), ".2f", "x"), fmt_time(row["clone_s"]),
        _num(row["x_clone"], ".1f", "x"), mem, check,
    ])


def legend(level="module"):
    if level == "op":
        floor = ("floor = what the op moves: read the scores once + write the mask once = 2*N*e "
                 "(fp32 8*N, bf16 4*N), iterative 3*N*e (the previous mask is read too)")
        reference = "op-topk (torch's topk mask path)"
    else:
        floor = "floor = 3*N*e (single, global) or 5*N*e (iterative)"
        reference = "torch.prune"
    return (
        f"median: of `reps` timed calls (warm-up excluded). speedup: {reference} / this. "
        f"GB/s: floor bytes / median, {floor}, e = bytes per element. "
        "%copy: GB/s over copy_ GB/s (2*bytes / dst.copy_(src) time, same run); xfloor = 1 / %copy: "
        "median over the floor time at that bandwidth. "
        "clone: tensor.clone() time; xclone: median / clone. peak-extra: memory above the inputs "
        "during the call and its ratio to the parameter bytes."
    )


def summary(rows):
    """Lines: geometric-mean speedup per contender and mode, and every mismatch."""
    lines = []
    speedups, floors = defaultdict(list), defaultdict(list)
    for r in rows:
        reference = r.get("reference", "torch.prune")
        if r["status"] == "ok" and r["speedup"] and r["contender"] != reference:
            speedups[(reference, r["contender"], r["mode"])].append(r["speedup"])
        if r["status"] == "ok" and r.get("level") == "op" and r.get("x_floor"):
            floors[(r["contender"], r["mode"])].append(r["x_floor"])
    for reference in sorted({key[0] for key in speedups}):
        lines.append(f"geometric-mean speedup over {reference}:")
        for (ref, contender, mode), values in sorted(speedups.items()):
            if ref == reference:
                lines.append(f"  {contender:<16} {mode:<10} {_geomean(values):7.2f}x  over {len(values)} cases "
                             f"(min {min(values):.2f}x, max {max(values):.2f}x)")
    if floors:
        lines.append("op level, times the floor at the copy bandwidth (geometric mean; 1.00x = the floor):")
        for (contender, mode), values in sorted(floors.items()):
            lines.append(f"  {contender:<16} {mode:<10} {_geomean(values):7.2f}x  over {len(values)} cases "
                         f"(min {min(values):.2f}x, max {max(values):.2f}x)")
    bad = [r for r in rows if r["status"] == "ok" and not r["check_ok"]]
    errors = [r for r in rows if r["status"] == "error"]
    if bad:
        lines.append(f"!!! {len(bad)} MISMATCH(ES): a contender pruned a different number (or set) of entries:")
        for r in bad:
            lines.append(f"!!!   {r['case_label']}  {r['contender']}: {r['check']} "
                         f"(pruned {r['pruned']}, expected {r['expected']})")
    else:
        lines.append("check: every contender pruned exactly the expected number of entries "
                     "(pruneext backends: the same entries)" + ("; kthvalue prunes ties too" if any(
                         r["check"].startswith("ties") for r in rows if r["status"] == "ok") else ""))
    if errors:
        lines.append(f"{len(errors)} contender run(s) failed (see the rows marked ERROR)")
    memory_failed = [r for r in rows if r.get("memory_note")]
    for r in memory_failed:
        lines.append(f"memory figure missing: {r['case_label']}  {r['contender']}: {r['memory_note']}")
    return lines


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)
