"""Checkpoint sizes: dense vs compact sparse (kept values + packed bitmask) at 50/90/95% sparsity.

For each model, masks are layerwise magnitude masks on the prunable leaves
(kernels, ``jaxprune.prunable_tree`` defaults); the masked params are saved
twice with ``jaxprune`` checkpoints: ``compact=False`` (dense arrays) and
``compact=True`` (kept values + ``np.packbits`` masks). Sizes are the bytes on
disk of the step directory (orbax files included). Writes ``results.json``
and ``results.md`` to ``--out`` (with the backend, versions and CPU count).

Usage:
  python benchmarks/checkpoint_sizes.py --out results/ [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as B  # noqa: E402  (puts the repository root on sys.path)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import checkpoint_size_bytes, compact_sparse, map_with_path, prunable_tree, save_checkpoint  # noqa: E402
from jaxprune import models as M  # noqa: E402

SPARSITIES = (0.5, 0.9, 0.95)


def model_variables(name: str, seed: int = 0):
    """Variables of the model's shapes filled with Gaussian noise (magnitude masks only need values)."""
    model = {
        "cifar_resnet20": lambda: M.cifar_resnet20(num_classes=10),
        "resnet18": lambda: M.resnet18(num_classes=1000),
        "resnet50": lambda: M.resnet50(num_classes=1000),
        "vit_s16": lambda: M.vit_s16(num_classes=1000),
    }[name]()
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.example_input(1))
    rng = np.random.default_rng(seed)
    return map_with_path(lambda p, s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def magnitude_masks(params, sparsity: float):
    prunable = prunable_tree(params)

    def mask(x, keep):
        if not keep:
            return None
        a = np.abs(x)
        k = int(round(sparsity * a.size))
        thr = np.partition(a.reshape(-1), k)[k] if k < a.size else np.inf
        return a >= thr

    masks = jax.tree.map(mask, params, prunable)
    pruned = jax.tree.map(
        lambda x, m: x if m is None else np.where(m, x, 0).astype(x.dtype), params, masks, is_leaf=lambda x: x is None
    )
    return pruned, masks


def measure(name: str, workdir: str) -> list[dict]:
    params = model_variables(name)
    n_total = sum(x.size for x in jax.tree.leaves(params))
    rows = []
    for s in SPARSITIES:
        pruned, masks = magnitude_masks(params, s)
        n_masked = sum(m.size for m in jax.tree.leaves(masks))
        n_kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
        d = tempfile.mkdtemp(dir=workdir)
        t0 = time.perf_counter()
        save_checkpoint(d, 0, params=pruned, masks=masks, compact=False)
        t_dense = time.perf_counter() - t0
        t0 = time.perf_counter()
        save_checkpoint(d, 1, params=pruned, masks=masks, compact=True)
        t_compact = time.perf_counter() - t0
        dense_b, compact_b = checkpoint_size_bytes(d, 0), checkpoint_size_bytes(d, 1)
        mem_b = compact_sparse(pruned, masks).nbytes()
        rows.append(
            dict(
                model=name,
                params=int(n_total),
                prunable=int(n_masked),
                sparsity=s,
                achieved_sparsity=round(1 - n_kept / n_masked, 4),
                dense_bytes=dense_b,
                compact_bytes=compact_b,
                ratio=round(compact_b / dense_b, 4),
                compact_payload_bytes=int(mem_b),
                dense_payload_bytes=int(sum(x.nbytes for x in jax.tree.leaves(params))),
                save_s_dense=round(t_dense, 3),
                save_s_compact=round(t_compact, 3),
            )
        )
        print(
            f"{name:16s} sparsity {s:.2f}: dense {dense_b / 1e6:8.2f} MB  compact {compact_b / 1e6:8.2f} MB  "
            f"ratio {compact_b / dense_b:.3f}",
            flush=True,
        )
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "# Checkpoint sizes: dense vs compact sparse",
        "",
        "Masked params saved with `save_checkpoint(..., compact=False)` (dense arrays) and `compact=True` "
        "(kept values + packed bitmask). Bytes on disk of one step directory (orbax metadata included); "
        "layerwise magnitude masks on prunable leaves (kernels).",
        "",
        "Orbax already compresses (zstd) the dense arrays on disk, which removes most of the zeros; "
        "the raw column is the uncompressed dense payload (params x itemsize) for reference.",
        "",
        "| model | params | prunable | sparsity | raw dense MB | dense on disk MB | compact on disk MB "
        "| compact / dense on disk | compact / raw dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        raw = r["dense_payload_bytes"]
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['prunable']:,} | {r['sparsity']:.0%} | "
            f"{raw / 1e6:.2f} | {r['dense_bytes'] / 1e6:.2f} | {r['compact_bytes'] / 1e6:.2f} | "
            f"{r['ratio']:.3f} | {r['compact_bytes'] / raw:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--out", default="benchmark_results", help="output directory (created)")
    parser.add_argument("--quick", action="store_true", help="small model only (CifarResNet-20, ~0.3M params)")
    parser.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="models among cifar_resnet20, resnet18, resnet50, vit_s16 "
        "(default: cifar_resnet20 resnet50, or cifar_resnet20 with --quick)",
    )
    args = parser.parse_args(argv)
    names = args.models or (["cifar_resnet20"] if args.quick else ["cifar_resnet20", "resnet50"])
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            rows.extend(measure(name, work))
    meta = dict(jax=jax.__version__, python=platform.python_version(), machine=platform.machine(), quick=args.quick)
    result = {"benchmark": "checkpoint_sizes", "env": B.environment(), "quick": args.quick, "meta": meta, "rows": rows}
    B.write(args.out, result, B.env_line(result["env"]) + "\n\n" + to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
