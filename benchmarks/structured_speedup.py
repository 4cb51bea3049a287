"""Does structured pruning make models faster? Dense vs shrunk vs built-narrow latency and XLA FLOPs.

For ResNet-50 (channel ratios) and ViT-B/16 (heads + MLP units) at each ratio:
trace -> plan (layerwise L1) -> shrink -> rebuild the Linen model, then time the
jitted forward (median of --reps after warm-up, block_until_ready) of the
dense model, the shrunk model and the same architecture *built narrow from
scratch* (random init with the shrunk widths: no pruning code involved).
Efficiency = measured speedup / FLOPs ratio (1.0 is the limit). Also records
the planning cost (trace, plan, shrink seconds). Writes results.json and
results.md to --out; reports the backend it ran on.

  python benchmarks/structured_speedup.py --out runs/bench_structured          # full: 224px
  python benchmarks/structured_speedup.py --quick --out /tmp/b                 # CI smoke (tiny)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import models  # noqa: E402


def _median_time(fn, args, reps):
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_model(name, model, ratios, batch, reps, kinds):
    x = jax.random.normal(jax.random.key(0), (batch,) + model.example_input(1).shape[1:])
    variables = model.init(jax.random.key(1), x[:1])
    apply = lambda v, inp: model.apply(v, inp, train=False)  # noqa: E731
    dense_fn = jax.jit(apply)
    dense_flops = jp.flops(apply, variables, x)
    dense_t = _median_time(dense_fn, (variables, x), reps)
    rows = [dict(model=name, ratio=0.0, flops=dense_flops, ms=1e3 * dense_t, narrow_ms=1e3 * dense_t,
                 speedup=1.0, flops_ratio=1.0, efficiency=1.0, narrow_efficiency=1.0,
                 params=jp.param_count(variables["params"]))]
    for r in ratios:
        t0 = time.perf_counter()
        graph = jp.trace_groups(apply, variables, x[:1])
        t1 = time.perf_counter()
        plan = jp.make_plan(variables, graph, ratio=r, kinds=kinds) if kinds else \
            jp.make_plan(variables, graph, ratio=r)
        t2 = time.perf_counter()
        small = jp.shrink(variables, plan)
        jax.block_until_ready(small)
        t3 = time.perf_counter()
        small_model = models.rebuild(model, small)
        s_apply = lambda v, inp, m=small_model: m.apply(v, inp, train=False)  # noqa: E731
        s_flops = jp.flops(s_apply, small, x)
        s_t = _median_time(jax.jit(s_apply), (small, x), reps)
        narrow_vars = small_model.init(jax.random.key(2), x[:1])  # built narrow from scratch
        n_t = _median_time(jax.jit(s_apply), (narrow_vars, x), reps)
        fr = dense_flops / s_flops
        rows.append(dict(model=name, ratio=r, flops=s_flops, ms=1e3 * s_t, narrow_ms=1e3 * n_t,
                         speedup=dense_t / s_t, flops_ratio=fr, efficiency=dense_t / s_t / fr,
                         narrow_efficiency=dense_t / n_t / fr, params=jp.param_count(small["params"]),
                         trace_s=t1 - t0, plan_s=t2 - t1, shrink_s=t3 - t2))
        print(f"{name} ratio={r}: FLOPs x{fr:.2f}, speedup x{dense_t / s_t:.2f} "
              f"(narrow x{dense_t / n_t:.2f}), efficiency {rows[-1]['efficiency']:.2f}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_structured")
    p.add_argument("--quick", action="store_true", help="tiny models, for CI smoke tests")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_b16"])
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.quick:
        specs = [("cifar_resnet20", models.cifar_resnet20(num_classes=10), None),
                 ("vit_tiny_test", models.vit_tiny_test(num_classes=10), ("heads", "units"))]
        args.ratios, args.reps, args.batch = [0.5], 3, 2
    else:
        table = {"resnet50": (lambda: models.resnet50(image_size=224), None),
                 "vit_b16": (models.vit_b16, ("heads", "units"))}
        specs = [(n, table[n][0](), table[n][1]) for n in args.models]
    rows = []
    for name, model, kinds in specs:
        rows += bench_model(name, model, args.ratios, args.batch, args.reps, kinds)
    result = dict(backend=jax.default_backend(), device=str(jax.devices()[0]), batch=args.batch, reps=args.reps,
                  rows=rows)
    head = "| model | ratio | GFLOPs | FLOPs ratio | ms | speedup | efficiency | narrow ms | narrow eff. |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['ratio']} | {r['flops'] / 1e9:.2f} | {r['flops_ratio']:.2f} | {r['ms']:.1f} | "
              f"{r['speedup']:.2f} | {r['efficiency']:.2f} | {r['narrow_ms']:.1f} | {r['narrow_efficiency']:.2f} |"
              for r in rows]
    md = f"backend: {result['backend']} ({result['device']}), batch {args.batch}\n\n" + "\n".join(lines)
    print(md)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    return result


if __name__ == "__main__":
    main()
