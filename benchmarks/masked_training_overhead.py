"""Masked (sparse) training overhead: sparse-optimizer step time / dense step time, off- and on-steps.

The dense step is one jitted SGD-momentum train step (cross-entropy, BatchNorm
statistics). The sparse step is the same step with the optimizer wrapped by
``jaxprune.sparse_optimizer``: masks live in the optimizer state, gradients are
masked, pruned weights get the update ``-w`` and masks are recomputed under
``lax.cond`` on the schedule's update steps -- one compiled step for all steps.

Measured per model (median of --reps interleaved rounds after warm-up --
each round calls every variant once, so load changes hit all alike --
block_until_ready; the same compiled sparse step with the optimizer state's
``count`` set to an off-step or an on-step of the schedule):

* ``magnitude``: ``magnitude_pruner(periodic(0.9, every=100))`` -- off-steps
  (mask kept; target <= 1.10 x dense) and on-steps (magnitude re-ranking);
* ``rigl``: ``rigl(0.9, every=100, end=...)`` -- off-steps and the drop-and-grow
  update step (reported separately: it ranks |w| and |g| of every layer);
* the amortized ratio ``((every - 1) * off + on) / every / dense``;
* compile time of each step, and the optimizer-state bytes (masks included).

  python benchmarks/masked_training_overhead.py --out runs/bench_masked
  python benchmarks/masked_training_overhead.py --quick --out /tmp/m     # CI smoke
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as B  # noqa: E402  (puts the repository root on sys.path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import models  # noqa: E402

MODELS = {
    "small_cnn": (lambda: models.SmallCNN(channels=(32, 64, 128), num_classes=10, image_size=32), 64),
    "cifar_resnet20": (lambda: models.cifar_resnet20(num_classes=10), 64),
    "resnet18_64px": (lambda: models.resnet18(num_classes=100, image_size=64), 32),
    # parameter-heavy, compute-light: the worst case for per-parameter mask work (2.4M params)
    "mlp_wide": (lambda: models.MLP(features=(1024, 1024), num_classes=10, in_features=1024), 256),
    "tiny_cnn": (lambda: models.SmallCNN(channels=(8, 16), num_classes=10, image_size=16), 8),
}
QUICK_MODELS = ["tiny_cnn"]
TARGET_OFF = 1.10


def _pruners(sparsity, every):
    return {
        "magnitude": jp.magnitude_pruner(jp.periodic(sparsity, every=every)),
        "rigl": jp.rigl_pruner(sparsity, every=every, end=100 * every, distribution="uniform"),
    }


def bench_model(name, batch, reps, sparsity, every):
    make, default_batch = MODELS[name]
    model = make()
    batch = batch or default_batch
    x = jax.random.normal(jax.random.key(0), (batch,) + model.example_input(1).shape[1:])
    y = jax.random.randint(jax.random.key(1), (batch,), 0, model.num_classes)
    variables = B.random_variables(model, seed=0)
    inner = optax.sgd(0.05, momentum=0.9)

    print(f"[{name}] compiling dense and sparse steps ...", flush=True)
    dense_state = inner.init(variables["params"])
    c_dense, dense_compile = B.compile_timed(B.train_step(model, inner), variables, dense_state, x, y)
    calls = {"dense": (c_dense, (variables, dense_state, x, y))}
    info = {}
    for pname, pruner in _pruners(sparsity, every).items():
        tx = jp.sparse_optimizer(inner, pruner)
        state = tx.init(variables["params"])
        c_sparse, compile_s = B.compile_timed(B.train_step(model, tx), variables, state, x, y)
        on_step, off_step = every, every + 1  # update steps are begin + k * every (begin = 0 or every)
        assert bool(pruner.schedule.is_update(on_step)) and not bool(pruner.schedule.is_update(off_step))
        for kind, count in (("off", off_step), ("on", on_step)):
            st = state._replace(count=jnp.asarray(count, state.count.dtype))
            calls[f"{pname}/{kind}"] = (c_sparse, (variables, st, x, y))
        info[pname] = dict(compile_s=compile_s, opt_state_bytes=jp.param_bytes(state))
    # Interleaved rounds (one call of every variant per round), so that a change of machine load
    # during the run hits all variants alike; median per variant.
    print(f"[{name}] timing {len(calls)} variants x {reps} rounds ...", flush=True)
    times = B.interleaved_times(calls, reps)
    dense_ms = 1e3 * times["dense"]
    row = dict(
        model=name,
        batch=batch,
        params=jp.param_count(variables["params"]),
        sparsity=sparsity,
        every=every,
        dense_ms=dense_ms,
        dense_compile_s=dense_compile,
        dense_opt_state_bytes=jp.param_bytes(dense_state),
        pruners={},
    )
    for pname in info:
        off, on = 1e3 * times[f"{pname}/off"], 1e3 * times[f"{pname}/on"]
        row["pruners"][pname] = dict(
            off_ms=off,
            on_ms=on,
            off_ratio=off / dense_ms,
            on_ratio=on / dense_ms,
            update_cost_ms=on - off,
            amortized_ratio=((every - 1) * off + on) / every / dense_ms,
            off_target=TARGET_OFF,
            off_target_met=off / dense_ms <= TARGET_OFF,
            **info[pname],
        )
        print(
            f"[{name}] {pname}: dense {dense_ms:.2f} ms, off-step x{off / dense_ms:.3f}, on-step x{on / dense_ms:.3f}",
            flush=True,
        )
    return row


def to_markdown(result) -> str:
    out = [
        "# Masked training overhead",
        "",
        B.env_line(result["env"]),
        "",
        f"Sparsity {result['sparsity']:.0%}, mask update every {result['every']} steps; median of "
        f"{result['reps']} interleaved rounds after 2 warm-up calls. ratio = sparse step / dense step "
        f"(target off-steps <= {TARGET_OFF}); amortized = ((every - 1) x off + on) / every / dense.",
        "",
    ]
    rows = []
    for r in result["rows"]:
        for pname, p in r["pruners"].items():
            rows.append(
                [
                    r["model"],
                    r["batch"],
                    f"{r['params'] / 1e6:.2f}M",
                    pname,
                    r["dense_ms"],
                    p["off_ms"],
                    p["off_ratio"],
                    p["on_ms"],
                    p["on_ratio"],
                    p["update_cost_ms"],
                    p["amortized_ratio"],
                    r["dense_compile_s"],
                    p["compile_s"],
                ]
            )
    out.append(
        B.table(
            [
                "model",
                "batch",
                "params",
                "pruner",
                "dense ms",
                "off ms",
                "off ratio",
                "on ms",
                "on ratio",
                "update cost ms",
                "amortized ratio",
                "dense compile s",
                "sparse compile s",
            ],
            rows,
        )
    )
    return "\n".join(out)


def main(argv=None):
    p = B.parser(__doc__, "runs/bench_masked")
    p.add_argument(
        "--models", nargs="+", default=["small_cnn", "cifar_resnet20", "resnet18_64px"], choices=sorted(MODELS)
    )
    p.add_argument("--batch", type=int, default=0, help="batch size (0: the model's default)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--every", type=int, default=100, help="steps between mask updates")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.reps = QUICK_MODELS, 3
    rows = [bench_model(n, args.batch, args.reps, args.sparsity, args.every) for n in args.models]
    result = dict(
        benchmark="masked_training_overhead",
        env=B.environment(),
        quick=args.quick,
        sparsity=args.sparsity,
        every=args.every,
        reps=args.reps,
        rows=rows,
    )
    md = to_markdown(result)
    print(md)
    B.write(args.out, result, md)
    return result


if __name__ == "__main__":
    main()
