"""Planning cost: one-shot magnitude masks at 90% and trace + plan + shrink, per phase.

Part 1, sparse masks: a ResNet-50-shaped parameter set (the real ``jaxprune.models.resnet50``
shapes, Gaussian values; 25.6M params of which the prunable kernels hold 23.4M) gets one-shot
magnitude masks at 90% sparsity, ``scope='layerwise'`` and ``scope='global'``, through the public
API: ``jaxprune.prune`` (scores + masks + masked params) and the mask functions alone
(``layerwise_masks`` / ``global_masks`` on precomputed ``magnitude`` scores). The first call
(compilation included) and the median of the warm calls are reported separately.
Reference (2-core CPU): jaxpruner 8.7 s layerwise, 0.49 s global; targets 0.9 s and 0.25 s.

Part 2, structured: ``trace_groups`` -> ``make_plan`` (layerwise L1, ratio 0.5) -> ``shrink``
for ResNet-50 (224x224) and ViT-B/16 (heads + MLP units). ``trace`` is split into the model's
own tracing (``jax.make_jaxpr`` of the Flax apply: Flax and JAX, not jaxprune) and jaxprune's
analysis of the jaxpr (``trace_groups`` minus a separate ``make_jaxpr``). First call and the median
of warm calls. Reference: Torch-Pruning 0.22 s for
ResNet-50 (target: at most that), ViT-B/16 target < 1 s.

  python benchmarks/planning_cost.py --out runs/bench_planning
  python benchmarks/planning_cost.py --quick --out /tmp/p        # CI smoke: small models
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

MASK_MODELS = {
    "resnet50": lambda: models.resnet50(num_classes=1000),
    "cifar_resnet20": lambda: models.cifar_resnet20(num_classes=10),
    "small_cnn": lambda: models.SmallCNN(channels=(16, 32, 64), num_classes=10, image_size=16),
}
STRUCT_MODELS = {
    "resnet50": (lambda: models.resnet50(image_size=224), jp.DEFAULT_KINDS),
    "vit_b16": (models.vit_b16, ("heads", "units")),
    "cifar_resnet20": (lambda: models.cifar_resnet20(num_classes=10), jp.DEFAULT_KINDS),
    "vit_tiny_test": (lambda: models.vit_tiny_test(num_classes=10), ("heads", "units")),
}
REFERENCE = {"layerwise": 8.7, "global": 0.49}
TARGET = {"layerwise": 0.9, "global": 0.25}
STRUCT_TARGET = {"resnet50": 0.22, "vit_b16": 1.0}


def _first_and_warm(fn, reps):
    _, first = B.timed(fn)
    warm = [B.timed(fn)[1] for _ in range(max(reps, 1))]
    return first, float(np.median(warm))


def mask_rows(name, sparsity, reps):
    params = B.random_variables(MASK_MODELS[name]())["params"]
    prunable = jp.prunable_tree(params)
    n_prunable = sum(
        int(np.prod(np.shape(x))) for x, ok in zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if ok
    )
    scores = jax.block_until_ready(jp.magnitude_scores(params))
    rows = []
    for scope in ("layerwise", "global"):
        masks_fn = jp.layerwise_masks if scope == "layerwise" else jp.global_masks
        calls = {
            "masks_only": lambda: masks_fn(scores, sparsity, prunable=prunable),
            "prune": lambda: jp.prune(params, sparsity, scope=scope),
        }
        for api, fn in calls.items():
            print(f"[masks {name}] {scope} {api} ...", flush=True)
            first, warm = _first_and_warm(fn, reps)
            out = fn()
            m = out[1] if api == "prune" else out
            kept = sum(int(np.sum(x)) for x in jax.tree.leaves(m))
            total = sum(int(np.size(x)) for x in jax.tree.leaves(m))
            rows.append(
                dict(
                    model=name,
                    params=jp.param_count(params),
                    prunable_params=n_prunable,
                    scope=scope,
                    api=api,
                    sparsity=sparsity,
                    achieved_sparsity=1 - kept / total,
                    first_s=first,
                    warm_s=warm,
                    reference_jaxpruner_s=REFERENCE[scope] if name == "resnet50" else None,
                    target_s=TARGET[scope] if name == "resnet50" else None,
                )
            )
            print(f"[masks {name}] {scope} {api}: first {first:.3f} s, warm {warm:.3f} s", flush=True)
    return rows


def structured_rows(name, ratio, reps):
    make, kinds = STRUCT_MODELS[name]
    model = make()
    x = model.example_input(1)
    variables = B.random_variables(model)
    apply = lambda v, inp: model.apply(v, inp, train=False)  # noqa: E731

    def once():
        t0 = time.perf_counter()
        jax.make_jaxpr(apply)(variables, x)  # the model's own tracing (Flax), timed alone
        t1 = time.perf_counter()
        graph = jp.trace_groups(apply, variables, x)  # the same tracing + jaxprune's analysis
        t2 = time.perf_counter()
        plan = jp.make_plan(variables, graph, ratio=ratio, kinds=kinds)
        t3 = time.perf_counter()
        jax.block_until_ready(jp.shrink(variables, plan))
        t4 = time.perf_counter()
        trace, tracing = t2 - t1, t1 - t0
        return dict(
            trace_s=trace,
            model_tracing_s=tracing,
            analysis_s=max(trace - tracing, 0.0),
            plan_s=t3 - t2,
            shrink_s=t4 - t3,
            total_s=t4 - t1,
            groups=len(graph.groups),
            prunable_groups=len(graph.prunable),
            pruned_groups=len(plan.groups),
        )

    print(f"[structured {name}] ...", flush=True)
    first = once()
    warm = [once() for _ in range(max(reps, 1))]
    med = {k: float(np.median([w[k] for w in warm])) for k in warm[0] if k.endswith("_s")}
    row = dict(
        model=name,
        ratio=ratio,
        params=jp.param_count(variables["params"]),
        groups=first["groups"],
        prunable_groups=first["prunable_groups"],
        pruned_groups=first["pruned_groups"],
        first={k: v for k, v in first.items() if k.endswith("_s")},
        warm=med,
        target_s=STRUCT_TARGET.get(name),
        reference_torch_pruning_s=0.22 if name == "resnet50" else None,
    )
    print(
        f"[structured {name}] first {first['total_s']:.3f} s (trace {first['trace_s']:.3f}, plan "
        f"{first['plan_s']:.3f}, shrink {first['shrink_s']:.3f}); warm {med['total_s']:.3f} s",
        flush=True,
    )
    return [row]


def to_markdown(result) -> str:
    out = [
        "# Planning cost",
        "",
        B.env_line(result["env"]),
        "",
        f"## One-shot magnitude masks at {result['sparsity']:.0%}",
        "",
        "`prune` = `jaxprune.prune(params, s, scope=...)` (scores + masks + masked params); `masks_only` = "
        "`layerwise_masks` / `global_masks` on precomputed magnitude scores. First call includes compilation.",
        "",
    ]
    out.append(
        B.table(
            ["model", "prunable params", "scope", "api", "first s", "warm s", "target s", "jaxpruner s"],
            [
                [
                    r["model"],
                    f"{r['prunable_params'] / 1e6:.1f}M",
                    r["scope"],
                    r["api"],
                    r["first_s"],
                    r["warm_s"],
                    r["target_s"],
                    r["reference_jaxpruner_s"],
                ]
                for r in result["mask_rows"]
            ],
        )
    )
    out += [
        "",
        f"## Trace + plan + shrink (layerwise L1, ratio {result['ratio']})",
        "",
        "trace = `trace_groups` = the model's own tracing (`jax.make_jaxpr` of the Flax apply: Flax/JAX "
        "code, not jaxprune's) + jaxprune's analysis of the jaxpr. First call in the process, then the median of "
        "warm calls.",
        "",
    ]
    rows = []
    for r in result["structured_rows"]:
        for when in ("first", "warm"):
            d = r[when]
            rows.append(
                [
                    r["model"],
                    when,
                    d["model_tracing_s"],
                    d["analysis_s"],
                    d["trace_s"],
                    d["plan_s"],
                    d["shrink_s"],
                    d["total_s"],
                    r["target_s"],
                ]
            )
    out.append(
        B.table(
            ["model", "call", "model tracing s", "analysis s", "trace s", "plan s", "shrink s", "total s", "target s"],
            rows,
        )
    )
    return "\n".join(out)


def main(argv=None):
    p = B.parser(__doc__, "runs/bench_planning")
    p.add_argument("--mask-models", nargs="*", default=["resnet50"], choices=sorted(MASK_MODELS))
    p.add_argument(
        "--models",
        nargs="*",
        default=["resnet50", "vit_b16"],
        choices=sorted(STRUCT_MODELS),
        help="models for trace + plan + shrink",
    )
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=3, help="warm calls (median)")
    args = p.parse_args(argv)
    if args.quick:
        args.mask_models, args.models, args.reps = ["small_cnn"], ["cifar_resnet20", "vit_tiny_test"], 2
    result = dict(
        benchmark="planning_cost",
        env=B.environment(),
        quick=args.quick,
        sparsity=args.sparsity,
        ratio=args.ratio,
        reps=args.reps,
        mask_rows=[],
        structured_rows=[],
    )
    for name in args.models:  # structured first: its "first call" is then the first jaxprune call of the process
        result["structured_rows"] += structured_rows(name, args.ratio, args.reps)
    for name in args.mask_models:
        result["mask_rows"] += mask_rows(name, args.sparsity, args.reps)
    md = to_markdown(result)
    print(md)
    B.write(args.out, result, md)
    return result


if __name__ == "__main__":
    main()
