"""Latency-aware vs FLOPs-ranked structured pruning at an equal latency target, measured on this backend.

For each model (ResNet-50 torchvision layout by default; EfficientNet-Lite0 and ViT-B/16 with
--models), at batch --batch and 224 px:

1. trace, then measure a latency table (``measure_latency``: per-op probes at a few widths per
   group; ``--fine`` for eighths instead of quarters) and time how long that takes;
2. plan to ``--target`` x the dense latency (predicted by the table) in two ways:
   * ``latency``: ``make_plan(budget=jp.latency_budget(target, table=table))`` -- greedy by L1
     importance lost per second saved, widths on the table's probed steps;
   * ``flops_ranked``: units ranked globally by L1 importance (the ranking ``flops_budget`` uses),
     the number pruned bisected so that the *predicted* latency meets the same target
     (``Budget('latency_global', target, True, cost_fn=table.predict)``);
     both keep at least 1 - --max-ratio (default 1/4) of every group;
   * ``flops_budget``: ``make_plan(budget=jp.flops_budget(target, relative=True))``: the same global
     ranking pruned to ``target`` x the dense FLOPs -- what a FLOPs planner gives a user who asks
     for ``target`` x the time (the must-show comparison of issue #24: its measured speedup vs
     the latency plan's at the same target);
   * ``flops_ranked_measured``: the same global ranking, its pruned fraction bisected on the
     *measured* latency (--match-steps steps; dense timed in the same rounds): equal measured latency,
     so the planners differ only in the importance they keep (and the accuracy, see
     ``latency_accuracy.py``);
   * and, for reference, ``layerwise 0.5`` (every group halved, as in ``structured_speedup.py``);
3. measure the dense and shrunk forward passes in interleaved rounds (median of --reps after
   warm-up), count XLA FLOPs, and report: measured speedup, FLOPs ratio, efficiency = speedup /
   FLOPs ratio, importance retained (share of the eligible groups' mean-normalised L1 scores kept),
   measured latency / target, and the latency model's error (predicted / measured - 1) per plan;
4. Torch-Pruning (if installed, ResNet-50 only): torchvision ResNet-50 pruned by ``MetaPruner``
   (``GroupMagnitudeImportance(p=1)``, ratio 0.5, fc ignored), dense and pruned forward timed in
   interleaved rounds on the same machine (2 torch threads), MACs from ``tp.utils.count_ops_and_params``.

The machine may be loaded by other jobs: variants are interleaved, medians are reported and the
load average is recorded. No finetuning is done here; accuracy vs measured latency of a pretrained
model: ``latency_accuracy.py``.

  python benchmarks/latency_aware.py --out benchmarks/results/latency_aware            # ResNet-50
  python benchmarks/latency_aware.py --models resnet50 efficientnet_lite0 --fine       # more
  python benchmarks/latency_aware.py --quick --out /tmp/la                             # CI smoke (tiny)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as B  # noqa: E402  (puts the repository root on sys.path)
import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import models  # noqa: E402

MODELS = {
    "resnet50": (lambda: models.resnet50(image_size=224), jp.DEFAULT_KINDS),
    "efficientnet_lite0": (lambda: models.efficientnet_lite0(), jp.DEFAULT_KINDS),
    "vit_b16": (models.vit_b16, ("heads", "units")),
    "small_cnn": (lambda: models.SmallCNN(channels=(16, 32, 64), num_classes=10, image_size=32), jp.DEFAULT_KINDS),
}


def importance_retained(variables, graph, plan, kinds) -> float:
    """Share of the eligible groups' mean-normalised L1 scores that the plan keeps."""
    sc = jp.group_scores(variables, graph, "l1", normalize="mean")
    kept = {g["id"]: g["kept"] for g in plan.groups}
    tot = keep = 0.0
    for g in graph.prunable:
        if g.kind not in kinds:
            continue
        s = np.asarray(sc[g.id], np.float64)
        tot += float(s.sum())
        keep += float(s[list(kept[g.id])].sum()) if g.id in kept else float(s.sum())
    return keep / tot if tot else 1.0


def bench_model(name, args):
    make, kinds = MODELS[name]
    model = make()
    x = jax.random.normal(jax.random.key(0), (args.batch,) + model.example_input(1).shape[1:])
    variables = B.random_variables(model, seed=1)
    apply = lambda v, inp: model.apply(v, inp, train=False)  # noqa: E731
    graph = jp.trace_groups(apply, variables, x)
    cache = None if args.cache is None else os.path.join(args.cache, f"{name}_b{args.batch}.json")
    print(f"[{name}] measuring the latency table ({'fine' if args.fine else 'coarse'}) ...", flush=True)
    t0 = time.perf_counter()
    table = jp.measure_latency(variables, graph, coarse=not args.fine, cache=cache, verbose=args.verbose)
    table_s = time.perf_counter() - t0
    print(f"[{name}] table: {table.meta.get('probes')} probes, {table_s:.1f} s", flush=True)
    plans = {}
    t0 = time.perf_counter()
    opts = dict(kinds=kinds, max_ratio=args.max_ratio)
    skipped = {}
    try:
        plans["latency"] = jp.make_plan(variables, graph, budget=jp.latency_budget(args.target, table=table), **opts)
    except ValueError as e:  # an unreachable target (noisy tiny tables in --quick)
        skipped["latency"] = str(e)
    plan_s = time.perf_counter() - t0
    try:
        plans["flops_ranked"] = jp.make_plan(
            variables,
            graph,
            budget=jp.Budget("latency_global", args.target, True, cost_fn=table.predict),
            **opts,
        )
    except ValueError as e:
        skipped["flops_ranked"] = str(e)
    # what a FLOPs planner gives for the same target: "t x the FLOPs" (same L1 ranking, same max_ratio)
    plans["flops_budget"] = jp.make_plan(variables, graph, budget=jp.flops_budget(args.target, relative=True), **opts)
    plans["layerwise_0.5"] = jp.make_plan(variables, graph, 0.5, kinds=kinds)
    dense_plan = jp.plan_from_kept(graph, {})
    matching = None
    if args.match_steps and "flops_ranked" in plans:
        plans["flops_ranked_measured"], matching = match_measured(variables, graph, plans["flops_ranked"], args, opts)
    print(f"[{name}] counting FLOPs ...", flush=True)
    flops = {"dense": jp.shrunk_flops(variables, graph, dense_plan)}
    for k, p in plans.items():
        flops[k] = jp.shrunk_flops(variables, graph, p)
    print(f"[{name}] timing dense / {' / '.join(plans)} ({args.reps} interleaved rounds) ...", flush=True)
    load_before = B.environment()["load_avg_1_5_15"]
    meas = jp.measure_plan_latency(variables, graph, {"dense": dense_plan, **plans}, reps=args.reps)
    load_after = B.environment()["load_avg_1_5_15"]
    dense_s = meas["dense"]
    rows = []
    pred_dense = table.predict(dense_plan)
    for k in ["dense", *plans]:
        p = dense_plan if k == "dense" else plans[k]
        pred = table.predict(p)
        speed = dense_s / meas[k]
        fr = flops["dense"] / flops[k]
        rows.append(
            dict(
                model=name,
                plan=k,
                measured_ms=1e3 * meas[k],
                predicted_ms=1e3 * pred,
                model_error=pred / meas[k] - 1.0,
                speedup=speed,
                predicted_speedup=pred_dense / pred,
                speedup_error=(pred_dense / pred) / speed - 1.0,
                gflops=flops[k] / 1e9,
                flops_ratio=fr,
                efficiency=speed / fr,
                importance_retained=importance_retained(variables, graph, p, kinds),
                latency_vs_target=None if k in ("dense", "layerwise_0.5") else meas[k] / (args.target * dense_s),
                pruned_groups=len([g for g in p.groups if len(g["kept"]) < g["size"]]),
            )
        )
        print(
            f"[{name}] {k:14s} {1e3 * meas[k]:8.1f} ms (pred {1e3 * pred:8.1f}) speedup x{speed:.2f} "
            f"FLOPs x{fr:.2f} eff {speed / fr:.2f} importance {rows[-1]['importance_retained']:.3f}",
            flush=True,
        )
    return dict(
        model=name,
        batch=args.batch,
        target=args.target,
        table_s=table_s,
        table_meta=table.meta,
        table_key=table.key,
        table_dense_ms=None if table.dense_s is None else 1e3 * table.dense_s,
        latency_plan_s=plan_s,
        widths={
            k: {g["name"]: [len(g["kept"]), g["size"]] for g in p.groups if len(g["kept"]) < g["size"]}
            for k, p in plans.items()
        },
        load_during_timing=[load_before, load_after],
        measured_matching=matching,
        skipped=skipped,
        rows=rows,
    )


def match_measured(variables, graph, start, args, opts):
    """Global L1 ranking, the pruned fraction bisected on *measured* latency (dense timed in the same rounds).

    Starts from the bracket [0, fraction of ``start``] or [fraction, max] and runs ``--match-steps``
    bisection steps, each timing dense and candidate in 3 interleaved rounds; returns the best plan
    whose measured ratio is <= target (or the last tried) and the steps taken.
    """
    kinds = opts["kinds"]  # None: every kind (as make_plan)
    total = sum(g.size for g in graph.groups if g.prunable and (kinds is None or g.kind in kinds))
    dense_plan = jp.plan_from_kept(graph, {})

    def measured(frac):
        plan = jp.make_plan(variables, graph, frac, scope="global", **opts)
        t = jp.measure_plan_latency(variables, graph, {"dense": dense_plan, "cand": plan}, reps=3, warmup=1)
        return plan, t["cand"] / t["dense"]

    f0 = start.meta.get("pruned_units", 0) / max(total, 1)
    plan0, r0 = measured(f0)
    steps = [dict(fraction=f0, measured_ratio=r0)]
    lo, hi = (0.0, f0) if r0 <= args.target else (f0, 0.95)
    best = (plan0, r0) if r0 <= args.target else None
    for _ in range(args.match_steps - 1):
        mid = (lo + hi) / 2
        plan, r = measured(mid)
        steps.append(dict(fraction=mid, measured_ratio=r))
        print(f"[match] pruned fraction {mid:.3f}: measured ratio {r:.3f}", flush=True)
        if r <= args.target:
            hi, best = mid, (plan, r)
        else:
            lo = mid
    chosen = best[0] if best is not None else plan
    return chosen, steps


def torch_pruning_row(batch, reps):
    """Torch-Pruning 1.6 on torchvision ResNet-50 at ratio 0.5: MACs ratio, measured speedup, efficiency."""
    try:
        import torch
        import torch_pruning as tp
        import torchvision
    except Exception as e:  # noqa: BLE001  (optional; any import failure means: no row)
        return dict(available=False, reason=f"{type(e).__name__}: {e}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    dense = torchvision.models.resnet50(weights=None).eval()
    pruned = torchvision.models.resnet50(weights=None).eval()
    pruned.load_state_dict(dense.state_dict())
    ex = torch.randn(1, 3, 224, 224)
    macs0, params0 = tp.utils.count_ops_and_params(dense, ex)
    pruner = tp.pruner.MetaPruner(
        pruned,
        ex,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[pruned.fc],
    )
    pruner.step()
    macs1, params1 = tp.utils.count_ops_and_params(pruned, ex)
    xb = torch.randn(batch, 3, 224, 224)
    times: dict = {"dense": [], "pruned": []}
    with torch.no_grad():
        for m in (dense, pruned):
            for _ in range(2):
                m(xb)
        for _ in range(max(reps, 1)):
            for k, m in (("dense", dense), ("pruned", pruned)):
                t = time.perf_counter()
                m(xb)
                times[k].append(time.perf_counter() - t)
    d, p = float(np.median(times["dense"])), float(np.median(times["pruned"]))
    return dict(
        available=True,
        version=getattr(tp, "__version__", "?"),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        dense_ms=1e3 * d,
        pruned_ms=1e3 * p,
        speedup=d / p,
        macs_ratio=float(macs0) / float(macs1),
        efficiency=(d / p) / (float(macs0) / float(macs1)),
        params=[int(params0), int(params1)],
    )


def to_markdown(result) -> str:
    env = result["env"]
    out = [
        "# Latency-aware vs FLOPs-ranked structured pruning (equal latency target)",
        "",
        f"{B.env_line(env)}; batch {result['batch']}, target {result['target']} x dense latency, "
        f"median of {result['reps']} interleaved rounds (dense and every plan once per round) after warm-up. "
        "The machine was shared with other jobs: absolute times are noisy, ratios within one run less so.",
        "",
        "efficiency = measured speedup / XLA FLOPs ratio; importance = share of the mean-normalised L1 group "
        "scores kept; model error = predicted / measured - 1 (absolute: the table was measured minutes earlier, "
        "under other load); speedup error = predicted speedup / measured speedup - 1 (the load-robust error); "
        "vs target = measured / (target x measured dense). Budgeted plans keep at least "
        f"{1 - result['max_ratio']:.2g} of every group (max_ratio {result['max_ratio']}).",
        "",
    ]
    rows = []
    for m in result["models"]:
        for r in m["rows"]:
            rows.append(
                [
                    r["model"],
                    r["plan"],
                    r["measured_ms"],
                    r["predicted_ms"],
                    r["model_error"],
                    r["predicted_speedup"],
                    r["speedup"],
                    r["speedup_error"],
                    r["gflops"],
                    r["flops_ratio"],
                    r["efficiency"],
                    r["importance_retained"],
                    r["latency_vs_target"],
                ]
            )
    out.append(
        B.table(
            [
                "model",
                "plan",
                "measured ms",
                "predicted ms",
                "model error",
                "predicted speedup",
                "speedup",
                "speedup error",
                "GFLOPs",
                "FLOPs ratio",
                "efficiency",
                "importance",
                "vs target",
            ],
            rows,
        )
    )
    for m in result["models"]:
        rows_by = {r["plan"]: r for r in m["rows"]}
        lat, fb, fm = (rows_by.get(k) for k in ("latency", "flops_budget", "flops_ranked_measured"))
        if lat and fb:
            out += [
                "",
                f"{m['model']}, target {result['target']} x dense latency: latency-planned speedup "
                f"{lat['speedup']:.2f}x ({lat['latency_vs_target']:.2f} of target) vs FLOPs-planned "
                f"(flops_budget({result['target']})) {fb['speedup']:.2f}x ({fb['latency_vs_target']:.2f} of target)"
                + (
                    f"; at equal measured latency (flops_ranked_measured, {fm['speedup']:.2f}x) importance retained "
                    f"{lat['importance_retained']:.3f} (latency) vs {fm['importance_retained']:.3f} (FLOPs ranking)."
                    if fm
                    else "."
                ),
            ]
        if m.get("measured_matching"):
            steps = ", ".join(f"{s['fraction']:.3f} -> {s['measured_ratio']:.3f}" for s in m["measured_matching"])
            out += ["", f"{m['model']}: flops_ranked_measured bisection (pruned fraction -> measured ratio): {steps}."]
        for k, why in m.get("skipped", {}).items():
            out += ["", f"{m['model']}: plan {k} skipped: {why}"]
    out += ["", "Latency table: how long measuring it took.", ""]
    out.append(
        B.table(
            ["model", "probes", "variants", "measuring s", "load then", "from cache", "plan s", "load during timing"],
            [
                [
                    m["model"],
                    m["table_meta"].get("probes"),
                    m["table_meta"].get("variants"),
                    m["table_meta"].get("seconds"),
                    m["table_meta"].get("load_avg"),
                    m["table_s"] < 0.5 * m["table_meta"].get("seconds", 0.0),
                    m["latency_plan_s"],
                    m["load_during_timing"],
                ]
                for m in result["models"]
            ],
        )
    )
    tp = result.get("torch_pruning")
    if tp and tp.get("available"):
        out += ["", f"Torch-Pruning {tp['version']} (torch {tp['torch']}, {tp['threads']} threads), same machine:", ""]
        out.append(
            B.table(
                ["model", "plan", "dense ms", "pruned ms", "speedup", "MACs ratio", "efficiency"],
                [
                    [
                        "torchvision resnet50",
                        "MetaPruner L1 0.5",
                        tp["dense_ms"],
                        tp["pruned_ms"],
                        tp["speedup"],
                        tp["macs_ratio"],
                        tp["efficiency"],
                    ]
                ],
            )
        )
    elif tp:
        out += ["", f"Torch-Pruning: not measured ({tp['reason']})."]
    return "\n".join(out)


def plot(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {
        "dense": "k",
        "latency": "tab:red",
        "flops_ranked": "tab:blue",
        "flops_ranked_measured": "tab:cyan",
        "flops_budget": "tab:purple",
        "layerwise_0.5": "tab:gray",
    }
    for m in result["models"]:
        for r in m["rows"]:
            c = colors.get(r["plan"], "tab:green")
            axes[0].scatter(r["flops_ratio"], r["speedup"], color=c, label=f"{r['model']} {r['plan']}")
            axes[1].scatter(r["measured_ms"], r["importance_retained"], color=c, label=f"{r['model']} {r['plan']}")
    tp = result.get("torch_pruning") or {}
    if tp.get("available"):
        axes[0].scatter(tp["macs_ratio"], tp["speedup"], color="tab:orange", marker="x", label="Torch-Pruning 0.5")
    lim = max([1.0] + [r["flops_ratio"] for m in result["models"] for r in m["rows"]])
    axes[0].plot([1, lim], [1, lim], ":", color="0.6", lw=1)
    axes[0].set_xlabel("FLOPs ratio (dense / pruned)")
    axes[0].set_ylabel("measured speedup")
    axes[0].set_title("speedup vs FLOPs (dotted: efficiency 1)")
    axes[1].set_xlabel("measured forward ms")
    axes[1].set_ylabel("importance retained")
    axes[1].set_title("importance vs measured latency")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = B.parser(__doc__, "runs/bench_latency_aware")
    p.add_argument("--models", nargs="+", default=["resnet50"], choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--target", type=float, default=0.5, help="latency target, a fraction of the dense latency")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-ratio", type=float, default=0.75, help="max_ratio of both budgeted plans")
    p.add_argument(
        "--match-steps",
        type=int,
        default=6,
        help="bisection steps of the FLOPs-ranked plan matched on *measured* latency (0: skip)",
    )
    p.add_argument("--fine", action="store_true", help="probe every eighth of each group (default: quarters)")
    p.add_argument("--cache", default=None, help="folder for latency-table JSON caches (default: none)")
    p.add_argument("--no-tp", dest="tp", action="store_false", help="skip the Torch-Pruning row")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.reps, args.tp, args.target, args.match_steps = ["small_cnn"], 4, 2, False, 0.8, 0
    if not 0.0 < args.target < 1.0:
        p.error(f"--target must be in (0, 1), got {args.target}")
    result = dict(
        benchmark="latency_aware",
        env=B.environment(),
        quick=args.quick,
        batch=args.batch,
        target=args.target,
        reps=args.reps,
        fine=args.fine,
        max_ratio=args.max_ratio,
        models=[],
    )
    for name in args.models:
        result["models"].append(bench_model(name, args))
    if args.tp and "resnet50" in args.models:
        print("[torch-pruning] resnet50 ...", flush=True)
        result["torch_pruning"] = torch_pruning_row(args.batch, args.reps)
    result["env_end"] = B.environment()
    md = to_markdown(result)
    print(md)
    B.write(args.out, result, md)
    plot(result, os.path.join(args.out, "latency_aware.png"))
    return result


if __name__ == "__main__":
    main()
