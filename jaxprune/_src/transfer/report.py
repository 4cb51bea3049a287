"""Study-A outputs: the Markdown table and the accuracy-vs-compute plots (per task and averaged, log-x)."""

from __future__ import annotations

import json
import os

__all__ = ["write_outputs"]


def _markdown(results: dict) -> str:
    curves = results["curves"]
    budgets = sorted({p["budget"] for v in curves.values() for p in v["points"]})
    lines = [
        "# Study A: zero-shot structured pruning for compute-optimal transfer",
        "",
        f"{len(results['tasks'])} tasks: {', '.join(results['tasks'])}; backend {results['backend']}.",
        "Cell: mean test accuracy over tasks (compute summed over tasks, XLA GFLOPs = step FLOPs x steps run).",
        "",
        "| variant | params | fwd MFLOPs (XLA) | fwd MFLOPs (effective) | "
        + " | ".join(f"{b} steps" for b in budgets)
        + " |",
        "|---|---|---|---|" + "---|" * len(budgets),
    ]
    vinfo = {v["label"]: v for v in results["variants"]}
    for label, c in curves.items():
        v = vinfo[label]
        pts = {p["budget"]: p for p in c["points"]}
        cells = [f"{pts[b]['accuracy']:.3f} ({pts[b]['compute'] / 1e9:.3g})" if b in pts else "-" for b in budgets]
        lines.append(
            f"| {label} | {v['nonzero_params']:,} / {v['params']:,} | {v['forward_flops'] / 1e6:.3g} | "
            f"{v['effective_forward_flops'] / 1e6:.3g} | " + " | ".join(cells) + " |"
        )
    s = results.get("summary", {})
    lines.append("")
    if "smallest_budget" in s:
        sb = s["smallest_budget"]
        lines.append(
            f"- Smallest compute ({sb['compute'] / 1e9:.3g} GFLOPs, dense at its smallest budget): dense "
            f"{sb['dense_accuracy']:.3f}, best pruned {sb['best_pruned']} ({sb['best_pruned_budget']} steps) "
            f"{sb['best_pruned_accuracy']:.3f} ({sb['relative_gain']:+.1%} relative)."
        )
    if "crossing_compute" in s:
        cc = s["crossing_compute"]
        if s.get("pruned_only_below_compute"):
            lines.append(
                f"- Below {s['pruned_only_below_compute'] / 1e9:.3g} GFLOPs only pruned models have points "
                "(dense cannot run even its smallest budget there)."
            )
        if cc:
            lines.append(
                f"- Where both have points, pruned leads at low compute and the dense front catches up at "
                f"{cc / 1e9:.3g} GFLOPs."
            )
        elif s.get("pruned_ahead_at_max_compute"):
            lines.append("- Where both have points, pruned stays ahead up to the largest compute in the grid.")
        else:
            lines.append("- Where both have points, dense is never behind the best pruned front (no crossing).")
    lines.append(
        "- Kernel pruning masks k x k kernels: tensors keep their shape, so XLA FLOPs do not drop; the "
        "'effective' column estimates what a kernel-sparse implementation would need."
    )
    if results.get("skipped"):
        lines.append("- Skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()))
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: str, task: str | None = None) -> None:
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    colours = {"dense": "black", "filter": "tab:blue", "channel": "tab:orange", "kernel": "tab:green"}
    markers = ["o", "s", "^", "D", "v", "P"]
    ratios = sorted({v["ratio"] for v in results["variants"] if v["method"] != "dense"})
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for v in results["variants"]:
        if task is None:
            pts = results["curves"][v["label"]]["points"]
            xs, ys = [p["compute"] for p in pts], [p["accuracy"] for p in pts]
        else:
            rows = sorted(
                (r for r in results["runs"] if r["task"] == task and r["label"] == v["label"]),
                key=lambda r: r["budget"],
            )
            xs, ys = [r["compute"] for r in rows], [r["test_accuracy"] for r in rows]
        if not xs:
            continue
        mk = "o" if v["method"] == "dense" else markers[ratios.index(v["ratio"]) % len(markers)]
        ax.plot(
            xs,
            ys,
            marker=mk,
            color=colours.get(v["method"], None),
            label=v["label"],
            lw=2.5 if v["method"] == "dense" else 1.2,
            alpha=1.0 if v["method"] == "dense" else 0.8,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="compute: XLA FLOPs per train step x steps" + (" (summed over tasks)" if task is None else ""),
        ylabel="test accuracy" + (" (mean over tasks)" if task is None else ""),
        title=("study A: all tasks" if task is None else f"study A: {task}"),
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(results: dict, out_dir: str) -> dict[str, str]:
    """Writes ``results.json``, ``results.md``, ``accuracy_vs_compute.png`` (averaged) and one PNG per task."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, "results.json"),
        "md": os.path.join(out_dir, "results.md"),
        "plot": os.path.join(out_dir, "accuracy_vs_compute.png"),
    }
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(_markdown(results))
    _plot(results, paths["plot"])
    for i, task in enumerate(results["tasks"]):
        safe = "".join(ch if ch.isalnum() else "_" for ch in task)
        p = os.path.join(out_dir, f"task_{i:02d}_{safe}.png")
        _plot(results, p, task)
        paths[f"task:{task}"] = p
    return paths
