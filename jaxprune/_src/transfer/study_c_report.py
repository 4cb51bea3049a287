"""Study C's report: the results table, vote-vs-baseline summary, Markdown, plot and files.

:func:`~jaxprune._src.transfer.study_c.run_study_c` collects one record per
run (arch x target x seed x method x budget x finetuning steps); this module
turns them into the mean-accuracy ``table``, the per-arch ``summary`` (cells
where the mask vote beats every baseline, paired differences over target and
seed) and writes ``results.json``, ``results.md`` and ``accuracy_vs_steps.png``
(:func:`write_outputs`). Everything here is plain Python/numpy on the
JSON-able results dict, so a saved ``results.json`` can be re-reported.

Example:
  >>> runs = [dict(arch='cnn', task='t', seed=0, method=m, budget=0.5, steps=0, accuracy=a, cost_fraction=0.5)
  ...         for m, a in [('vote', 0.6), ('magnitude', 0.5)]]
  >>> res = {'table': results_table(runs), 'runs': runs}
  >>> summarize(res)['cnn']['vote_wins']
  1
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["METHODS", "summarize", "write_outputs"]

#: The one-shot pruning methods study C compares; ``'vote'`` first (the report compares it with the rest).
METHODS = ("vote", "magnitude", "random", "taylor")


def results_table(runs: list[dict]) -> list[dict]:
    keys = sorted(
        {(r["arch"], r["method"], r["budget"], r["steps"]) for r in runs},
        key=lambda k: (k[0], k[2] != 1.0, -k[2], METHODS.index(k[1]) if k[1] in METHODS else -1, k[3]),
    )
    out = []
    for arch, method, budget, steps in keys:
        acc = [
            r["accuracy"]
            for r in runs
            if (r["arch"], r["method"], r["budget"], r["steps"]) == (arch, method, budget, steps)
        ]
        cf = [
            r["cost_fraction"]
            for r in runs
            if (r["arch"], r["method"], r["budget"], r["steps"]) == (arch, method, budget, steps)
        ]
        out.append(
            dict(
                arch=arch,
                method=method,
                budget=budget,
                steps=steps,
                accuracy=float(np.mean(acc)),
                std=float(np.std(acc)),
                n=len(acc),
                cost_fraction=float(np.mean(cf)),
            )
        )
    return out


def summarize(results: dict) -> dict:
    """Per arch: for each (budget, steps) cell, vote's accuracy minus the best baseline's; counts of wins."""
    out = {}
    for arch in {r["arch"] for r in results["table"]}:
        cells, wins, total = [], 0, 0
        rows = [r for r in results["table"] if r["arch"] == arch and r["method"] != "dense"]
        for b in sorted({r["budget"] for r in rows}, reverse=True):
            for s in sorted({r["steps"] for r in rows}):
                cell = {r["method"]: r["accuracy"] for r in rows if r["budget"] == b and r["steps"] == s}
                if "vote" not in cell or len(cell) < 2:
                    continue
                best_base = max((a, m) for m, a in cell.items() if m != "vote")
                gap = cell["vote"] - best_base[0]
                cells.append(
                    dict(
                        budget=b,
                        steps=s,
                        vote=cell["vote"],
                        best_baseline=best_base[1],
                        best_baseline_accuracy=best_base[0],
                        gap=gap,
                    )
                )
                wins += gap > 0
                total += 1
        out[arch] = dict(
            cells=cells,
            vote_wins=wins,
            cells_total=total,
            mean_gap=float(np.mean([c["gap"] for c in cells])) if cells else float("nan"),
            paired=_paired(results["runs"], arch),
        )
    return out


def _paired(runs: list[dict], arch: str) -> list[dict]:
    """Vote minus each baseline, paired over (target, seed): mean, standard error, pairs where vote is ahead."""
    acc = {
        (r["task"], r["seed"], r["method"], r["budget"], r["steps"]): r["accuracy"] for r in runs if r["arch"] == arch
    }
    out = []
    for b in sorted({k[3] for k in acc if k[2] == "vote"}, reverse=True):
        for s in sorted({k[4] for k in acc if k[2] == "vote"}):
            for m in METHODS[1:]:
                diffs = [
                    acc[(t, sd, "vote", b, s)] - acc[(t, sd, m, b, s)]
                    for (t, sd, mm, bb, ss) in acc
                    if mm == "vote" and bb == b and ss == s and (t, sd, m, b, s) in acc
                ]
                if diffs:
                    d = np.asarray(diffs)
                    out.append(
                        dict(
                            budget=b,
                            steps=s,
                            baseline=m,
                            mean=float(d.mean()),
                            n=len(d),
                            sem=float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
                            vote_ahead=int((d > 0).sum()),
                            vote_behind=int((d < 0).sum()),
                        )
                    )
    return out


# ------------------------------------------------------------------------------------ outputs
def _markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "# Study C: one-shot structured pruning from similar tasks' masks (mask vote)",
        "",
        f"Targets ({len(cfg['targets'])}): {', '.join(cfg['targets'])}; seeds {cfg['seeds']}; library: "
        f"{len(cfg['sources'])} source tasks x {len(cfg['budgets'])} budgets (iterative Taylor, "
        f"{cfg['source_rounds']} rounds x {cfg['source_steps']} steps); vote: k={cfg['k']}, weights "
        f"{cfg['weights']} (T={cfg['temperature']}), embedding {cfg['embedding']}. Budget: "
        f"{cfg['budget_kind']} relative to the dense model. Cell: mean test accuracy over targets and seeds "
        f"(std over all runs). Backend {results['backend']}"
        + (
            f"; {results['seconds']:.0f} s wall, load average {results['loadavg'][0]:.1f} at the end."
            if "loadavg" in results and "seconds" in results
            else "."
        ),
        "",
    ]
    steps = sorted({r["steps"] for r in results["table"]})
    for arch in cfg["archs"]:
        up = results["upstream"].get(arch, {})
        um = up.get("metrics", {})
        src = um["source"] if "source" in um else f"upstream test acc {um.get('test_accuracy', float('nan')):.3f}"
        lines += [
            f"## {arch} ({up.get('model', '?')}, {src})",
            "",
            "| method | budget | achieved | " + " | ".join(f"{s} steps" for s in steps) + " |",
            "|---|---|---|" + "---|" * len(steps),
        ]
        rows = [r for r in results["table"] if r["arch"] == arch]
        for key in dict.fromkeys((r["method"], r["budget"]) for r in rows):
            sel = {r["steps"]: r for r in rows if (r["method"], r["budget"]) == key}
            cf = next(iter(sel.values()))["cost_fraction"]
            best = {
                s: max(
                    r["accuracy"] for r in rows if r["budget"] == key[1] and r["steps"] == s and r["method"] != "dense"
                )
                for s in steps
                if key[0] != "dense"
            }
            cells = []
            for s in steps:
                if s not in sel:
                    cells.append("-")
                    continue
                txt = f"{sel[s]['accuracy']:.3f} ± {sel[s]['std']:.3f}"
                cells.append(f"**{txt}**" if key[0] != "dense" and sel[s]["accuracy"] >= best[s] else txt)
            lines.append(f"| {key[0]} | {key[1]:g} | {cf:.3f} | " + " | ".join(cells) + " |")
        s = results["summary"].get(arch)
        if s:
            lines += [
                "",
                f"Mask vote beats every baseline in {s['vote_wins']}/{s['cells_total']} (budget, steps) "
                f"cells; mean gap to the best baseline {s['mean_gap']:+.3f}.",
            ]
            if s.get("paired"):
                bases = [m for m in METHODS[1:] if any(p["baseline"] == m for p in s["paired"])]
                lines += [
                    "",
                    "Vote minus baseline, paired over (target, seed): mean ± s.e. (pairs vote ahead/behind)",
                    "",
                    "| budget | steps | " + " | ".join(bases) + " |",
                    "|---|---|" + "---|" * len(bases),
                ]
                for key in dict.fromkeys((p["budget"], p["steps"]) for p in s["paired"]):
                    cell = {p["baseline"]: p for p in s["paired"] if (p["budget"], p["steps"]) == key}
                    lines.append(
                        f"| {key[0]:g} | {key[1]} | "
                        + " | ".join(_pair_cell(cell[m]) if m in cell else "-" for m in bases)
                        + " |"
                    )
                lines += ["", _claim(s["paired"])]
        shr = [r for r in results.get("shrunk", []) if r["arch"] == arch and "flops" in r]
        if shr:
            lines += [
                "",
                f"Shrunk models (each method's plan for {shr[0]['task']}, seed {cfg['seeds'][0]}, really shrunk and "
                f"rebuilt; XLA forward FLOPs at {cfg['image_size']} px; dense: {shr[0]['dense_params']:,} params, "
                f"{shr[0]['dense_flops'] / shr[0]['batch'] / 1e6:.1f} MFLOP per image):",
                "",
                "| method | budget | params | params fraction | FLOPs fraction | narrowed layers "
                "| max abs(shrunk - masked) |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in shr:
                lines.append(
                    f"| {r['method']} | {r['budget']:g} | {r['params']:,} | {r['params'] / r['dense_params']:.3f} | "
                    f"{r['flops_fraction']:.3f} | {r['narrowed_layers']} | {r['max_abs_diff']:.1e} |"
                )
        lines.append("")
    return "\n".join(lines)


def _claim(paired: list[dict]) -> str:
    """The seed claim (the vote beats the baselines at equal budget), measured: cells by sign and size."""
    pos = [p for p in paired if p["n"] > 1 and p["mean"] > 2 * p["sem"]]
    neg = [p for p in paired if p["n"] > 1 and p["mean"] < -2 * p["sem"]]
    fmt = lambda ps: ", ".join(f"{p['baseline']}@{p['budget']:g}/{p['steps']} ({p['mean']:+.3f})" for p in ps)  # noqa: E731
    return (
        f"Seed claim (the vote beats magnitude / random / Taylor at equal budget), measured: vote ahead by more than "
        f"2 s.e. in {len(pos)}/{len(paired)} (baseline, budget/steps) cells"
        + (f" [{fmt(pos)}]" if pos else "")
        + f"; behind by more than 2 s.e. in {len(neg)}"
        + (f" [{fmt(neg)}]" if neg else "")
        + "; the rest within noise."
    )


def _pair_cell(p: dict) -> str:
    return f"{p['mean']:+.3f} ± {p['sem']:.3f} ({p['vote_ahead']}/{p['vote_behind']})"


def _plot(results: dict, path: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    archs = results["config"]["archs"]
    budgets = sorted({r["budget"] for r in results["table"] if r["method"] != "dense"}, reverse=True)
    colours = {
        "dense": "black",
        "vote": "tab:red",
        "magnitude": "tab:blue",
        "random": "tab:gray",
        "taylor": "tab:green",
    }
    fig = Figure(figsize=(4.2 * len(budgets), 3.4 * len(archs)))
    axes = fig.subplots(len(archs), len(budgets), squeeze=False)
    for i, arch in enumerate(archs):
        for j, b in enumerate(budgets):
            ax = axes[i][j]
            for m in ("dense",) + METHODS:
                rows = sorted(
                    (
                        r
                        for r in results["table"]
                        if r["arch"] == arch and r["method"] == m and (r["budget"] == b or m == "dense")
                    ),
                    key=lambda r: r["steps"],
                )
                if rows:
                    ax.errorbar(
                        [r["steps"] for r in rows],
                        [r["accuracy"] for r in rows],
                        marker="o",
                        ms=3,
                        color=colours[m],
                        label=m,
                        lw=2 if m == "vote" else 1,
                        ls="--" if m == "dense" else "-",
                    )
            ax.set_xscale("symlog", linthresh=10)
            ax.set(
                title=f"{arch}: {b:g} of dense {results['config']['budget_kind']}",
                xlabel="finetune steps",
                ylabel="test accuracy",
            )
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_outputs(results: dict, out_dir: str) -> dict[str, str]:
    """Writes ``results.json``, ``results.md`` and ``accuracy_vs_steps.png`` to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, "results.json"),
        "md": os.path.join(out_dir, "results.md"),
        "plot": os.path.join(out_dir, "accuracy_vs_steps.png"),
    }
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=lambda x: x.item() if hasattr(x, "item") else str(x))
    with open(paths["md"], "w") as f:
        f.write(_markdown(results))
    _plot(results, paths["plot"])
    return paths
