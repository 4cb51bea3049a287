"""Accuracy vs measured latency: latency-planned vs FLOPs-planned structured pruning of a pretrained CNN.

The study of issue #24 item 4, on the ImageNet-pretrained EfficientNet-Lite0 (offline wheel;
``jaxprune.transfer.pretrained_upstream``) at --image-size px:

1. trace the forward pass at batch --batch and measure a coarse latency table
   (``jp.measure_latency``);
2. plan with the same L1 importance (``make_plan(method="l1")``, every group keeps at least
   1 - --max-ratio of its units) in two ways:
   * ``latency@t``: ``budget=jp.latency_budget(t, table=table)`` for each --latency-targets t
     (greedy by importance lost per predicted second saved);
   * ``flops@f``: ``budget=jp.flops_budget(f, relative=True)`` for each --flops-targets f (units
     ranked globally by importance, as many pruned as the FLOPs target needs: the usual
     "prune to x% of the FLOPs" planner). ``flops@t`` for a latency target t is also what a
     user who asks a FLOPs planner for "t x the time" gets;
3. time dense and every plan's shrunk forward pass in interleaved rounds (median of --reps);
4. shrink, rebuild the narrower model and transfer it to --task (an offline task): a linear
   probe on its frozen features (the head is finetuned, the backbone kept: the accuracy that
   pruning kept) and, with --ft-steps N, LP-FT (the probe's head, then N steps of full
   finetuning with BatchNorm in inference mode, SGD lr --ft-lr, best dev step; slow on CPU:
   XLA's depthwise-conv backward makes a 64 px step of batch 32 take seconds here);
5. report measured latency, speedup, XLA FLOPs ratio, importance retained, probe and LP-FT
   test accuracy, and compare the two planners at equal measured latency (each latency plan
   against the FLOPs-planned curve linearly interpolated at its measured latency).

Writes results.json, results.md and latency_accuracy.png (accuracy vs measured latency) to --out.

  python benchmarks/latency_accuracy.py --out benchmarks/results/latency_accuracy     # ~15 min, 2 cores
  python benchmarks/latency_accuracy.py --ft-steps 30 --out /tmp/lpft                 # + LP-FT (much slower)
  python benchmarks/latency_accuracy.py --quick --out /tmp/la_acc                     # CI smoke (~1-2 min)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as B  # noqa: E402  (puts the repository root on sys.path)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from latency_aware import importance_retained  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import models  # noqa: E402


def make_plans(variables, graph, table, args):
    """``{name: PrunePlan}``: dense, latency@t for every latency target, flops@f for every FLOPs target."""
    opts = dict(kinds=jp.DEFAULT_KINDS, max_ratio=args.max_ratio)
    plans = {"dense": jp.plan_from_kept(graph, {})}
    skipped = {}
    for norm in args.latency_normalize:
        for t in args.latency_targets:
            name = f"latency@{t:g}" if norm == "mean" else f"latency-{norm}@{t:g}"
            try:
                budget = jp.latency_budget(t, table=table)
                plans[name] = jp.make_plan(variables, graph, budget=budget, normalize=norm, **opts)
            except ValueError as e:  # unreachable within max_ratio (tiny --quick tables)
                skipped[name] = str(e)
    for f in sorted(set(args.flops_targets) | set(args.latency_targets), reverse=True):
        try:
            plans[f"flops@{f:g}"] = jp.make_plan(variables, graph, budget=jp.flops_budget(f, relative=True), **opts)
        except ValueError as e:
            skipped[f"flops@{f:g}"] = str(e)
    return plans, skipped


def transfer_accuracy(model, small, plan, data, args, sb) -> dict:
    """Transfers the model rebuilt at the widths of ``small`` (the params shrunk by ``plan``): probe and LP-FT."""
    net = models.rebuild(model, small) if plan.groups else model
    cfg = sb.Config(
        image_size=args.image_size,
        normalize="lite",
        linear_epochs=args.probe_epochs,
        full_steps=max(args.ft_steps, 1),
        full_lr=args.ft_lr,
        full_batch_size=args.ft_batch,
        full_warmup_steps=max(args.ft_steps // 10, 1),
        head_init="linear",
        seed=args.seed,
        full_freeze_batch_stats=True,
    )
    t0 = time.perf_counter()
    probe = sb.linear_finetune(net, small, data, cfg)
    out = dict(probe_acc=probe.test_accuracy, probe_s=time.perf_counter() - t0)
    if args.ft_steps > 0:
        t0 = time.perf_counter()
        ft = sb.full_finetune(net, small, None, data, cfg)
        out.update(lpft_acc=ft.test_accuracy, lpft_s=time.perf_counter() - t0)
    return out


def interpolate(xs, ys, x):
    """Piecewise-linear ``y(x)`` through the points (sorted by x); ``None`` outside their range."""
    order = np.argsort(xs)
    xs, ys = np.asarray(xs, float)[order], np.asarray(ys, float)[order]
    if len(xs) < 2 or not xs[0] <= x <= xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def compare_at_equal_latency(rows, metric):
    """Each latency plan's ``metric`` minus the FLOPs-planned curve's at the same measured latency."""
    fl = [r for r in rows if r["planner"] in ("flops", "dense") and r.get(metric) is not None]
    out = []
    for r in rows:
        if not r["planner"].startswith("latency") or r.get(metric) is None:
            continue
        ref = interpolate([q["measured_ms"] for q in fl], [q[metric] for q in fl], r["measured_ms"])
        ref_imp = interpolate([q["measured_ms"] for q in fl], [q["importance_retained"] for q in fl], r["measured_ms"])
        out.append(
            dict(
                plan=r["plan"],
                measured_ms=r["measured_ms"],
                metric=metric,
                latency_planned=r[metric],
                flops_planned_interp=ref,
                delta=None if ref is None else r[metric] - ref,
                importance_latency=r["importance_retained"],
                importance_flops_interp=ref_imp,
            )
        )
    return out


def run(args) -> dict:
    from jaxprune.transfer import pretrained_upstream
    from jaxprune.transfer import study_b as sb

    up = pretrained_upstream("lite0", image_size=args.image_size)
    model, variables = up.model, jax.tree.map(jax.numpy.asarray, up.variables)
    x = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
    graph = jp.trace_groups(lambda v, inp: model.apply(v, inp, train=False), variables, x)
    print(f"measuring the latency table (batch {args.batch}, {args.image_size} px) ...", flush=True)
    t0 = time.perf_counter()
    table = jp.measure_latency(variables, graph, coarse=True)
    table_s = time.perf_counter() - t0
    plans, skipped = make_plans(variables, graph, table, args)
    print(f"table {table_s:.1f} s; plans: {', '.join(plans)}", flush=True)
    flops = {k: jp.shrunk_flops(variables, graph, p) for k, p in plans.items()}
    load_before = B.environment()["load_avg_1_5_15"]
    meas = jp.measure_plan_latency(variables, graph, plans, reps=args.reps)
    load_after = B.environment()["load_avg_1_5_15"]
    data = sb.load_transfer_data(
        args.task,
        sb.Config(
            image_size=args.image_size,
            normalize="lite",
            max_train_examples=args.train_examples,
            max_eval_examples=args.eval_examples,
            seed=args.seed,
        ),
    )
    rows = []
    for k, p in plans.items():
        small = jax.tree.map(np.asarray, jp.shrink(variables, p))
        r = dict(
            plan=k,
            planner=k.split("@")[0],
            target=None if k == "dense" else float(k.split("@")[1]),
            measured_ms=1e3 * meas[k],
            predicted_ms=1e3 * table.predict(p),
            speedup=meas["dense"] / meas[k],
            gflops=flops[k] / 1e9,
            flops_ratio=flops["dense"] / flops[k],
            importance_retained=importance_retained(variables, graph, p, jp.DEFAULT_KINDS),
            params=int(sum(np.size(v) for v in jax.tree.leaves(small["params"]))),
        )
        r["efficiency"] = r["speedup"] / r["flops_ratio"]
        r.update(transfer_accuracy(model, small, p, data, args, sb))
        rows.append(r)
        print(
            f"{k:14s} {r['measured_ms']:7.1f} ms x{r['speedup']:.2f} FLOPs x{r['flops_ratio']:.2f} "
            f"importance {r['importance_retained']:.3f} probe {r['probe_acc']:.3f}"
            + (f" LP-FT {r['lpft_acc']:.3f}" if "lpft_acc" in r else ""),
            flush=True,
        )
    metrics = ["probe_acc"] + (["lpft_acc"] if args.ft_steps > 0 else [])
    return dict(
        benchmark="latency_accuracy",
        env=B.environment(),
        quick=args.quick,
        args={k: v for k, v in vars(args).items()},
        model="efficientnet_lite0 (ImageNet-1k, " + up.metrics["source"] + ")",
        task=args.task,
        train_examples=len(data.train),
        test_examples=len(data.test),
        table_s=table_s,
        table_meta=table.meta,
        load_during_timing=[load_before, load_after],
        skipped=skipped,
        rows=rows,
        equal_latency=[c for m in metrics for c in compare_at_equal_latency(rows, m)],
    )


def to_markdown(res) -> str:
    a = res["args"]
    out = [
        "# Accuracy vs measured latency: latency-planned vs FLOPs-planned (EfficientNet-Lite0, pretrained)",
        "",
        f"{B.env_line(res['env'])}. Model {res['model']}, {a['image_size']} px, latency at batch {a['batch']} "
        f"(median of {a['reps']} interleaved rounds; load during timing {res['load_during_timing']}); latency "
        f"table {res['table_s']:.1f} s ({res['table_meta'].get('probes')} probes). Same L1 unit scores for every "
        "planner (per group normalised by the mean, `latency-sum`: by the sum); every group keeps >= "
        f"{1 - a['max_ratio']:.2g} of its units. Importance column: share of the mean-normalised L1 scores kept. "
        f"Transfer task `{res['task']}` ({res['train_examples']} train / {res['test_examples']} test images): "
        f"linear probe on the frozen pruned backbone's features ({a['probe_epochs']} epochs)"
        + (
            f" and LP-FT ({a['ft_steps']} full finetuning steps from the probe's head, BatchNorm in inference "
            f"mode, SGD lr {a['ft_lr']}, batch {a['ft_batch']})"
            if a["ft_steps"]
            else ""
        )
        + f", seed {a['seed']}. Predicted ms: the latency table's prediction (measured separately, so its "
        "absolute error includes load changes between the two measurements).",
        "",
        B.table(
            [
                "plan",
                "measured ms",
                "predicted ms",
                "speedup",
                "GFLOPs",
                "FLOPs ratio",
                "efficiency",
                "params",
                "importance",
                "probe acc",
            ]
            + (["LP-FT acc"] if a["ft_steps"] else []),
            [
                [
                    r["plan"],
                    r["measured_ms"],
                    r["predicted_ms"],
                    r["speedup"],
                    r["gflops"],
                    r["flops_ratio"],
                    r["efficiency"],
                    r["params"],
                    r["importance_retained"],
                    r["probe_acc"],
                ]
                + ([r.get("lpft_acc")] if a["ft_steps"] else [])
                for r in res["rows"]
            ],
        ),
        "",
        "At equal measured latency: each latency plan against the FLOPs-planned curve (dense and flops@f points) "
        "linearly interpolated at its measured latency.",
        "",
        B.table(
            ["plan", "measured ms", "metric", "latency-planned", "FLOPs-planned (interp.)", "delta", "importance L/F"],
            [
                [
                    c["plan"],
                    c["measured_ms"],
                    c["metric"],
                    c["latency_planned"],
                    c["flops_planned_interp"],
                    c["delta"],
                    f"{c['importance_latency']:.3f} / "
                    + ("n/a" if c["importance_flops_interp"] is None else f"{c['importance_flops_interp']:.3f}"),
                ]
                for c in res["equal_latency"]
            ],
        ),
    ]
    for k, why in res["skipped"].items():
        out += ["", f"plan {k} skipped: {why}"]
    return "\n".join(out)


def plot(res, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"latency": ("tab:red", "o-"), "latency-sum": ("tab:orange", "^-"), "flops": ("tab:blue", "s--")}
    dense = next(r for r in res["rows"] if r["planner"] == "dense")
    panels = [("probe_acc", "linear-probe test accuracy")]
    if "lpft_acc" in dense:
        panels.append(("lpft_acc", "LP-FT test accuracy"))
    panels.append(("importance_retained", "importance retained"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4.2))
    for ax, (metric, label) in zip(axes, panels):
        for planner, (c, ls) in style.items():
            mine = [r for r in res["rows"] if r["planner"] == planner and r.get(metric) is not None]
            pts = sorted((r["measured_ms"], r[metric]) for r in mine)
            if pts:
                ax.plot(*zip(*pts), ls, color=c, label=f"{planner}-planned")
        if dense.get(metric) is not None:
            ax.scatter([dense["measured_ms"]], [dense[metric]], color="k", marker="*", s=80, label="dense", zorder=3)
        ax.set_xlabel("measured forward ms")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"EfficientNet-Lite0 (pretrained), {res['args']['image_size']} px, task {res['task']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = B.parser(__doc__, "runs/bench_latency_accuracy")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="batch of the latency table and timings")
    p.add_argument("--latency-targets", type=float, nargs="+", default=[0.8, 0.65, 0.5])
    p.add_argument("--flops-targets", type=float, nargs="+", default=[0.35], help="besides the latency targets")
    p.add_argument("--max-ratio", type=float, default=0.75, help="max_ratio of every plan")
    p.add_argument(
        "--latency-normalize",
        nargs="+",
        default=["mean", "sum"],
        help="per-group score normalisations of the latency planner ('mean': every unit averages 1, the "
        "FLOPs planner's; 'sum': every group's units sum to 1, so cutting a fraction of any group costs alike)",
    )
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--task", default="shapes_offline/task_02")
    p.add_argument("--train-examples", type=int, default=640)
    p.add_argument("--eval-examples", type=int, default=320)
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument("--ft-steps", type=int, default=0, help="LP-FT full finetuning steps (0: probe only)")
    p.add_argument("--ft-lr", type=float, default=0.003)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch, args.reps = 32, 4, 2
        args.latency_targets, args.flops_targets, args.latency_normalize = [0.7], [], ["mean"]
        args.train_examples, args.eval_examples, args.probe_epochs, args.ft_steps = 64, 32, 3, 0
    for t in args.latency_targets + args.flops_targets:
        if not 0.0 < t < 1.0:
            p.error(f"targets must be in (0, 1), got {t}")
    res = run(args)
    md = to_markdown(res)
    print(md)
    B.write(args.out, res, md)
    plot(res, os.path.join(args.out, "latency_accuracy.png"))
    return res


if __name__ == "__main__":
    main()
