"""PNG plots of a run: per (mode, dtype), median time against size (with
tensor.clone() for scale) and speedup over torch.prune against size. One
colour per contender, one line style per amount. Uses matplotlib's Agg
backend (no display needed); without matplotlib, plots are skipped with a
message.
"""
import math
import os
import statistics
from collections import defaultdict

_STYLES = ["-", "--", ":", "-."]
# one colour per contender in every plot
_COLOURS = {"torch.prune": "C0", "kthvalue": "C1", "pruneext-torch": "C2", "pruneext-cpu": "C3",
            "pruneext-cuda": "C4", "pruneext-triton": "C5"}


def _minor_speedup_label(v, _pos):
    """Label the 2x and 5x minor ticks of a log axis (0.2x, 2x, 50x, ...)."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v))
    return f"{v:g}x" if round(mantissa, 6) in (2.0, 5.0) else ""


def write_plots(rows, out_dir, stem):
    """Write one PNG per (mode, dtype) into out_dir; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, NullLocator
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []

    groups = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            groups[(r["mode"], r["dtype"])].append(r)
    paths = []
    os.makedirs(out_dir, exist_ok=True)
    for (mode, dtype), group in sorted(groups.items()):
        contenders = list(dict.fromkeys(r["contender"] for r in group))
        amounts = sorted({r["amount"] for r in group})
        colours = {c: _COLOURS.get(c, "C7") for c in contenders}
        fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
        for contender in contenders:
            for j, amount in enumerate(amounts):
                pts = sorted((r["size"], r["median_s"], r["speedup"]) for r in group
                             if r["contender"] == contender and r["amount"] == amount)
                if not pts:
                    continue
                style = dict(color=colours[contender], linestyle=_STYLES[j % len(_STYLES)], marker="o", markersize=3)
                ax_t.plot([p[0] for p in pts], [p[1] for p in pts], **style)
                sp = [(p[0], p[2]) for p in pts if p[2] is not None]
                if sp and contender != "torch.prune":  # its speedup is 1 by definition
                    ax_s.plot([p[0] for p in sp], [p[1] for p in sp], **style)
        clone_by_size = defaultdict(list)
        for r in group:
            if r.get("clone_s"):
                clone_by_size[r["size"]].append(r["clone_s"])
        clone = sorted((size, statistics.median(v)) for size, v in clone_by_size.items())
        if clone:
            ax_t.plot([c[0] for c in clone], [c[1] for c in clone], color="black", linestyle="--",
                      linewidth=1, marker="x", markersize=4)
        # one legend entry per contender (colour) and per amount (line style)
        handles = [Line2D([], [], color=colours[c], marker="o", markersize=3, label=c) for c in contenders]
        if clone:
            handles.append(Line2D([], [], color="black", linestyle="--", marker="x", label="tensor.clone()"))
        if len(amounts) > 1:
            handles += [Line2D([], [], color="grey", linestyle=_STYLES[j % len(_STYLES)], label=f"amount {a:g}")
                        for j, a in enumerate(amounts)]
        device = group[0]["device"]
        ax_t.set(xscale="log", yscale="log", xlabel="elements pruned", ylabel="median seconds",
                 title=f"{mode}, {dtype}, {device}: time")
        ax_s.set(xscale="log", yscale="log", xlabel="elements pruned", ylabel="speedup over torch.prune",
                 title=f"{mode}, {dtype}, {device}: speedup")
        ax_s.axhline(1.0, color="grey", linewidth=0.8)
        ax_s.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax_s.yaxis.set_minor_formatter(FuncFormatter(_minor_speedup_label))
        ticks = sorted({(r["size"], r["size_label"]) for r in group})
        for ax in (ax_t, ax_s):
            ax.set_xscale("log", base=2)
            ax.set_xticks([t[0] for t in ticks])
            ax.set_xticklabels([t[1] for t in ticks], rotation=30 if mode == "global" else 0, fontsize=8)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            shown = handles if ax is ax_t else [h for h in handles if h.get_label() not in ("torch.prune", "tensor.clone()")]
            ax.legend(handles=shown, fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}-{mode}-{dtype}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
