"""Sharded mask computation vs a gather-everything baseline on a simulated 8-device mesh.

ResNet-50-shaped magnitude scores (the real ``jaxprune.models.resnet50``
shapes, Gaussian values; ``--quick``: a few dense/conv leaves, ~2M params)
are sharded over a ``('data', 'model')`` mesh (default 2x4): each kernel's
last dim on ``'model'`` and its second-to-last on ``'data'`` where they
divide, else that dim replicated. For ``scope`` in (layerwise, global) at 90%:

* ``sharded``: ``jax.jit(global_masks / layerwise_masks)`` on the sharded
  scores; masks come out sharded like the scores.
* ``gather``: the same function after ``with_sharding_constraint`` to fully
  replicated scores (every device holds all of them: what gathering the model
  onto one device costs), masks constrained back to the scores' shardings.

Reported per variant: warm wall time (median of ``--repeats`` calls after a
compile call), the compile time, the collectives in the compiled HLO, and the
per-device memory *proxy*: XLA's ``compiled.memory_analysis()`` of the
per-device SPMD program (``argument + output + temp`` bytes; on the CPU
backend there is no allocator peak counter) plus the largest per-device
argument shard. Exactness: both variants' masks are compared bit for bit.

On CPU the 8 "devices" share the host's cores, so wall times show the cost
of the extra work (every device ranking every score), not a speedup.

  python benchmarks/sharded_masks.py --out runs/sharded_masks
  python benchmarks/sharded_masks.py --quick --out /tmp/sm
"""

from __future__ import annotations

import argparse
import os
import sys

if "--help" not in sys.argv and "-h" not in sys.argv:  # before jax is imported
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="directory for results.json and results.md")
    p.add_argument("--quick", action="store_true", help="small parameter set (CI smoke test)")
    p.add_argument("--mesh", default="2x4", help="mesh shape 'DxM' over ('data', 'model') (default 2x4)")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def score_shapes(quick: bool):
    import jax
    import jax.numpy as jnp

    from jaxprune import leaves_with_paths, models, prunable_tree

    if quick:
        return {
            "conv1/kernel": (3, 3, 64, 128),
            "conv2/kernel": (3, 3, 128, 256),
            "dense/kernel": (1024, 1024),
            "head/kernel": (1024, 8),
        }
    model = models.resnet50(num_classes=1000)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    ok = dict(leaves_with_paths(prunable_tree(shapes)))
    return {p: tuple(s.shape) for p, s in leaves_with_paths(shapes) if ok[p]}


def spec_for(shape, mesh):
    from jax.sharding import PartitionSpec as P

    ent = [None] * len(shape)
    if len(shape) >= 1 and shape[-1] % mesh.shape["model"] == 0:
        ent[-1] = "model"
    if len(shape) >= 2 and shape[-2] % mesh.shape["data"] == 0:
        ent[-2] = "data"
    while ent and ent[-1] is None:
        ent.pop()
    return P(*ent)


def collectives(compiled) -> list[str]:
    txt = compiled.as_text()
    return sorted(set(re.findall(r"\b(all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)\b", txt)))


def run(args) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxprune as masks_lib  # layerwise_masks / global_masks

    d, m = (int(v) for v in args.mesh.lower().split("x"))
    if jax.device_count() < d * m:
        raise SystemExit(f"need {d * m} devices, have {jax.device_count()}")
    mesh = Mesh(np.array(jax.devices()[: d * m]).reshape(d, m), ("data", "model"))
    shapes = score_shapes(args.quick)
    rng = np.random.default_rng(0)
    shardings = {p: NamedSharding(mesh, spec_for(s, mesh)) for p, s in shapes.items()}
    scores = {
        p: jax.device_put(np.abs(rng.standard_normal(s, dtype=np.float32)), shardings[p]) for p, s in shapes.items()
    }
    replicated = NamedSharding(mesh, P())
    n_params = int(sum(np.prod(s) for s in shapes.values()))
    fns = {
        "layerwise": lambda s: masks_lib.layerwise_masks(s, args.sparsity, prunable=[(".*", True)]),
        "global": lambda s: masks_lib.global_masks(s, args.sparsity, prunable=[(".*", True)]),
    }
    rows = []
    for scope, fn in fns.items():
        variants = {
            "sharded": jax.jit(fn, out_shardings=shardings),
            "gather": jax.jit(
                lambda s, fn=fn: fn(jax.lax.with_sharding_constraint(s, {p: replicated for p in s})),
                out_shardings=shardings,
            ),
        }
        outs = {}
        for name, jf in variants.items():
            t0 = time.perf_counter()
            compiled = jf.lower(scores).compile()
            compile_s = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            jax.block_until_ready(jf(scores))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = jax.block_until_ready(jf(scores))
                times.append(time.perf_counter() - t0)
            outs[name] = out
            arg_b, out_b, tmp_b = (
                int(getattr(mem, f, 0) or 0)
                for f in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
            )
            rows.append(
                dict(
                    scope=scope,
                    variant=name,
                    n_params=n_params,
                    mesh=args.mesh,
                    warm_s=statistics.median(times),
                    min_s=min(times),
                    compile_s=compile_s,
                    collectives=collectives(compiled),
                    mem_argument_bytes=arg_b,
                    mem_output_bytes=out_b,
                    mem_temp_bytes=tmp_b,
                    mem_per_device_proxy_bytes=arg_b + out_b + tmp_b,
                    largest_arg_shard_bytes=max(
                        int(np.prod(x.sharding.shard_shape(x.shape))) * 4 for x in scores.values()
                    ),
                    out_sharded_like_params=all(
                        outs[name][p].sharding.is_equivalent_to(shardings[p], len(s)) for p, s in shapes.items()
                    ),
                )
            )
        same = all(np.array_equal(np.asarray(outs["sharded"][p]), np.asarray(outs["gather"][p])) for p in shapes)
        for r in rows[-2:]:
            r["masks_equal_across_variants"] = bool(same)
    return dict(
        benchmark="sharded_masks",
        quick=args.quick,
        sparsity=args.sparsity,
        repeats=args.repeats,
        backend=jax.default_backend(),
        devices=jax.device_count(),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        python=platform.python_version(),
        memory_proxy="XLA compiled.memory_analysis() of the per-device SPMD program: argument + output + temp bytes",
        rows=rows,
    )


def to_markdown(res: dict) -> str:
    lines = [
        f"# Sharded masks ({res['backend']}, {res['devices']} devices, {res['cpu_count']} CPUs, "
        f"jax {res['jax']}, sparsity {res['sparsity']})",
        "",
        f"Per-device memory proxy: {res['memory_proxy']}.",
        "",
        "| scope | variant | params | mesh | warm s (median) | compile s | per-device MiB (arg+out+temp) | "
        "temp MiB | collectives | masks equal | out sharded |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['scope']} | {r['variant']} | {r['n_params'] / 1e6:.1f}M | {r['mesh']} | {r['warm_s']:.3f} | "
            f"{r['compile_s']:.1f} | {r['mem_per_device_proxy_bytes'] / 2**20:.1f} | "
            f"{r['mem_temp_bytes'] / 2**20:.1f} | "
            f"{', '.join(r['collectives']) or '-'} | {r['masks_equal_across_variants']} | "
            f"{r['out_sharded_like_params']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    md = to_markdown(res)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
