"""``jaxprune evaluate``: compare checkpoints on a split: accuracy, loss, sparsity, params, FLOPs, latency.

  jaxprune evaluate runs/dense runs/sparse90_ft runs/shrunk50_ft --dataset digits_offline --out runs/eval

Writes ``results.json``, ``results.md`` and ``results.png`` (top-1 accuracy
vs XLA FLOPs) to ``--out`` and prints the table. FLOPs are XLA's count for one
forward pass of one example; latency is the median wall time of a jitted
forward pass at ``--batch-size``. When a checkpoint's forward pass is below
100 MFLOPs per batch, latency measures dispatch overhead rather than compute
(a shrunk model can time *slower* than the dense one): the table and
``results.json`` (``latency_caveat``, per row ``latency_dispatch_bound``) say
so, and XLA FLOPs are the number to compare. The batch is not enlarged behind
the user's back: pass a larger ``--batch-size`` for a meaningful latency.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Sequence

import jax
import numpy as np

from jaxprune._src.cli import common
from jaxprune._src.cli.common import CliError, LoadedModel

RESULTS = ("results.json", "results.md", "results.png")
# Below this many FLOPs per timed batch, a jitted forward pass is dominated by dispatch overhead.
LATENCY_MIN_FLOPS = 100e6


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="evaluate and compare checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", help="checkpoints (orbax folders or jaxprune run folders)")
    p.add_argument("--labels", help="comma-separated names for the checkpoints (default: folder names)")
    p.add_argument("--model", help="model name, for checkpoints without a stored model config")
    p.add_argument("--dataset", default="digits_offline", help="offline task or prepared tfds name")
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir for real dataset names")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64, help="batch size for evaluation and latency (default 64)")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes for the latency (default 20)")
    p.add_argument("--out", required=True, help="output folder: results.json, results.md, results.png")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--quick", action="store_true", help="smoke mode: at most 256 examples, 3 timed passes")
    p.set_defaults(run=run)
    return p


def default_label(path: str) -> str:
    path = os.path.normpath(path)
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) or base if base == common.CHECKPOINT else base


def latency_ms(loaded: LoadedModel, batch_size: int, repeats: int) -> float:
    """Median wall time (ms) of the jitted eval-mode forward pass on a batch of ``batch_size`` zeros."""
    fn = jax.jit(common.apply_fn(loaded.model))
    x = loaded.model.example_input(batch_size)
    jax.block_until_ready(fn(loaded.variables, x))
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        jax.block_until_ready(fn(loaded.variables, x))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def dispatch_bound(flops_per_example, batch_size: int) -> bool:
    """Whether a forward pass of ``batch_size`` examples is too small (< 100 MFLOPs) for latency to mean compute."""
    return bool(flops_per_example) and flops_per_example * batch_size < LATENCY_MIN_FLOPS


def latency_caveat(rows: Sequence[dict]) -> str | None:
    """The caveat printed under the table when some row's latency is dispatch overhead (else ``None``)."""
    small = [r for r in rows if r.get("latency_dispatch_bound")]
    if not small:
        return None
    batch = rows[0]["batch_size"]
    which = "every checkpoint" if len(small) == len(rows) else ", ".join(r["label"] for r in small)
    biggest = max(r["flops"] * r["batch_size"] for r in small)
    return (
        f"latency caveat: the forward pass of {which} is below {common.fmt_count(LATENCY_MIN_FLOPS)} "
        f"FLOPs per batch of {batch} (at most {common.fmt_count(biggest)}), so latency at this size is dominated "
        "by dispatch overhead, not compute (smaller models may even time slower); compare XLA FLOPs, or "
        "measure a larger --batch-size."
    )


def evaluate_model(loaded: LoadedModel, ds, *, batch_size: int = 64, repeats: int = 20, label: str = "") -> dict:
    """One results row: top-1/top-5/loss on ``ds`` plus sparsity, params, XLA FLOPs and latency."""
    from jaxprune._src.train import evaluate

    ev = evaluate(loaded.model, loaded.variables, ds, batch_size=batch_size)
    stats = common.model_stats(loaded)
    return dict(
        label=label,
        checkpoint=loaded.source,
        kind=loaded.kind,
        step=loaded.step,
        top1=float(ev["accuracy"]),
        top5=float(ev["top5"]),
        loss=float(ev["loss"]),
        **stats,
        latency_ms=latency_ms(loaded, batch_size, repeats),
        latency_dispatch_bound=dispatch_bound(stats["flops"], batch_size),
        batch_size=batch_size,
        examples=len(ds),
        model_config=loaded.model_config,
    )


def results_markdown(rows: Sequence[dict], dataset: str, split: str) -> str:
    caveat = latency_caveat(rows)
    head = [
        "checkpoint",
        "kind",
        "top-1",
        "top-5",
        "loss",
        "sparsity",
        "params",
        "non-zero",
        "XLA FLOPs",
        f"latency ms (batch {rows[0]['batch_size']})",
    ]
    body = [
        [
            r["label"],
            r["kind"],
            f"{r['top1']:.4f}",
            f"{r['top5']:.4f}",
            f"{r['loss']:.4f}",
            f"{r['sparsity']:.1%}",
            f"{r['params']:,}",
            f"{r['nonzero_params']:,}",
            common.fmt_count(r["flops"]),
            f"{r['latency_ms']:.2f}",
        ]
        for r in rows
    ]
    return (
        f"# jaxprune evaluate: {dataset} / {split} ({rows[0]['examples']} examples)\n\n"
        + common.markdown_table(head, body)
        + "\n\nXLA FLOPs: one forward pass of one example. Masked (sparse) weights are zeros inside dense "
        "tensors, so only structured pruning lowers FLOPs and latency.\n" + (f"\n**{caveat}**\n" if caveat else "")
    )


def plot_results(rows: Sequence[dict], path: str) -> None:
    """Top-1 accuracy vs XLA FLOPs, one labelled point per checkpoint."""
    from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    markers = {"dense": "o", "sparse": "s", "shrunk": "^"}
    for r in rows:
        ax.scatter(
            r["flops"] / 1e6,
            r["top1"],
            s=50,
            marker=markers.get(r["kind"], "o"),
            alpha=0.8,
            label=f"{r['label']} ({r['kind']})",
        )
    ax.set(xlabel="XLA MFLOPs per example (forward pass)", ylabel="top-1 accuracy", title="accuracy vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    labels = args.labels.split(",") if args.labels else [default_label(c) for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise CliError(f"--labels gives {len(labels)} names for {len(args.checkpoints)} checkpoints")
    if args.batch_size < 1 or args.repeats < 1:
        raise CliError(f"--batch-size and --repeats must be >= 1, got {args.batch_size} and {args.repeats}")
    existing = [n for n in RESULTS if os.path.exists(os.path.join(args.out, n))]
    if (existing or common.holds_checkpoint(args.out)) and not args.overwrite:
        raise CliError(
            f"--out {args.out!r} already holds {existing or 'a checkpoint'}; pass --overwrite to "
            "replace, or choose another folder"
        )
    loaded = [common.load_checkpoint_model(c, args.model) for c in args.checkpoints]
    common.check_dataset_name(args.dataset, args.data_dir)
    max_examples = 256 if args.quick else None
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    data = {}
    rows = []
    for lm, label in zip(loaded, labels):
        size = common.input_size(lm.model)
        if size not in data:
            data[size] = common.load_data(
                args.dataset, args.split, size, data_dir=args.data_dir, max_examples=max_examples
            )
        common.check_classes(lm, data[size].num_classes, args.dataset)
    for lm, label in zip(loaded, labels):
        rows.append(
            evaluate_model(
                lm, data[common.input_size(lm.model)], batch_size=args.batch_size, repeats=repeats, label=label
            )
        )
    os.makedirs(args.out, exist_ok=True)
    md = results_markdown(rows, args.dataset, args.split)
    common.write_json(
        os.path.join(args.out, "results.json"),
        dict(
            dataset=args.dataset,
            split=args.split,
            backend=jax.default_backend(),
            latency_caveat=latency_caveat(rows),
            rows=rows,
        ),
    )
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    plot_results(rows, os.path.join(args.out, "results.png"))
    print(md)
    print(f"wrote {args.out}/results.json, results.md, results.png")
    return 0
