"""``jaxprune prune``: checkpoint + recipe -> pruned checkpoint + summary (per-layer sparsity/widths, FLOPs).

  jaxprune prune --checkpoint runs/dense --recipe unstructured90 --out runs/sparse90
  jaxprune prune --checkpoint runs/dense --recipe structured_flops50 --set budget.flops=0.3 --out runs/shrunk30
  jaxprune prune --checkpoint runs/dense --recipe my_recipe.json --out runs/mine

``--recipe`` takes the name of a recipe shipped in the package (listed below) or
a path to a JSON recipe file.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from jaxprune._src.cli import common
from jaxprune._src.cli.common import CliError, LoadedModel
from jaxprune._src.cli.recipe import Recipe, apply_recipe, calibration_grads, load_recipe, packaged_recipes


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint with a recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint to prune (orbax folder or jaxprune run folder)")
    p.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help="a packaged recipe name (" + ", ".join(packaged_recipes()) + ") or a JSON recipe file; "
        "default: 50%% layerwise magnitude",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field (dotted keys, JSON values), e.g. --set sparsity=0.8",
    )
    p.add_argument("--out", required=True, help="output folder: checkpoint/, summary.json, summary.md")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--model", help="model name, for checkpoints without a stored model config")
    p.add_argument("--dataset", help="calibration data for gradient methods (saliency, taylor, snip)")
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir for real dataset names")
    p.add_argument("--quick", action="store_true", help="smoke mode (fewer calibration examples)")
    p.set_defaults(run=run)
    return p


def layer_rows(before: LoadedModel, after: LoadedModel) -> list[dict]:
    """Per-layer rows: sparsity of each masked leaf, or width before/after of each shrunk layer."""
    from jaxprune import models
    from jaxprune._src.summary import sparsity_summary

    if after.kind == "sparse":
        s = sparsity_summary(after.variables, only=after.masks)
        return [
            dict(layer=r.path, shape=list(r.shape), params=r.size, zeros=r.zeros, sparsity=r.sparsity) for r in s.rows
        ]
    w0 = models.layer_widths(before.variables["params"])
    w1 = models.layer_widths(after.variables["params"])
    return [dict(layer=k, width_before=w0[k], width_after=w1.get(k, w0[k]), kept=w1.get(k, w0[k]) / w0[k]) for k in w0]


def prune_summary(recipe: Recipe, before: LoadedModel, after: LoadedModel, seconds: float) -> dict:
    """The JSON summary ``jaxprune prune`` writes (stats before/after + per-layer rows)."""
    b, a = common.model_stats(before), common.model_stats(after)
    out: dict[str, Any] = dict(
        source=before.source,
        source_kind=before.kind,
        kind=after.kind,
        recipe=recipe.to_dict(),
        before=b,
        after=a,
        flops_ratio=a["flops"] / b["flops"] if b["flops"] else None,
        params_ratio=a["params"] / b["params"] if b["params"] else None,
        layers=layer_rows(before, after),
        model_config=after.model_config,
        seconds=seconds,
    )
    if after.kind == "sparse":
        rows = out["layers"]
        total = sum(r["params"] for r in rows)
        out["sparsity"] = sum(r["zeros"] for r in rows) / total if total else 0.0
    else:
        out["plan_groups"] = [
            dict(name=g["name"], kind=g["kind"], size=g["size"], kept=len(g["kept"])) for g in after.plan.groups
        ]
    return out


def summary_markdown(summary: dict) -> str:
    b, a = summary["before"], summary["after"]
    lines = [
        f"# jaxprune prune: {summary['kind']} ({summary['recipe']['kind']}, method "
        f"{summary['recipe']['method'] or 'default'})",
        "",
        f"source: `{summary['source']}`",
        "",
    ]
    lines.append(
        common.markdown_table(
            ["", "before", "after", "ratio"],
            [
                [
                    "XLA FLOPs (forward, batch 1)",
                    common.fmt_count(b["flops"]),
                    common.fmt_count(a["flops"]),
                    f"{a['flops'] / b['flops']:.3f}" if b["flops"] else "-",
                ],
                ["params", f"{b['params']:,}", f"{a['params']:,}", f"{a['params'] / b['params']:.3f}"],
                [
                    "non-zero params",
                    f"{b['nonzero_params']:,}",
                    f"{a['nonzero_params']:,}",
                    f"{a['nonzero_params'] / max(b['nonzero_params'], 1):.3f}",
                ],
                ["sparsity (prunable weights)", f"{b['sparsity']:.1%}", f"{a['sparsity']:.1%}", ""],
            ],
        )
    )
    lines.append("")
    if summary["kind"] == "sparse":
        lines.append(
            common.markdown_table(
                ["layer", "shape", "params", "sparsity"],
                [
                    [r["layer"], "x".join(map(str, r["shape"])), f"{r['params']:,}", f"{r['sparsity']:.1%}"]
                    for r in summary["layers"]
                ],
            )
        )
        lines.append(
            "\nMasked weights are zeros inside dense tensors: XLA FLOPs do not drop "
            "(structured pruning shrinks tensors)."
        )
    else:
        lines.append(
            common.markdown_table(
                ["layer", "width before", "width after"],
                [[r["layer"], r["width_before"], r["width_after"]] for r in summary["layers"]],
            )
        )
    return "\n".join(lines) + "\n"


def prune_checkpoint(
    loaded: LoadedModel, recipe: Recipe, out: str, *, calibration=None, overwrite: bool = False
) -> dict:
    """Prunes ``loaded`` with ``recipe`` and writes ``out/checkpoint`` + ``out/summary.{json,md}``.

    ``calibration``: ``(images, labels)`` for gradient methods. Everything is
    computed (and validated) before ``out`` is created.
    """
    t0 = time.perf_counter()
    grads = None
    if recipe.needs_grads:
        if calibration is None:
            raise CliError(f"method {recipe.score!r} needs gradients: pass --dataset for calibration data")
        grads = calibration_grads(loaded.model, loaded.variables, *calibration)
    pruned = apply_recipe(recipe, loaded, grads=grads)
    summary = prune_summary(recipe, loaded, pruned, time.perf_counter() - t0)
    common.prepare_out_dir(out, overwrite)
    common.save_model(
        os.path.join(out, common.CHECKPOINT),
        0,
        pruned,
        data_state={"source": loaded.source, "recipe": recipe.to_dict()},
    )
    common.write_json(os.path.join(out, "summary.json"), summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_markdown(summary))
    return summary


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.set)
    common.check_out_dir(args.out, args.overwrite)
    loaded = common.load_checkpoint_model(args.checkpoint, args.model)
    calibration = None
    if recipe.needs_grads:
        if not args.dataset:
            raise CliError(f"method {recipe.score!r} needs gradients: pass --dataset for calibration data")
        n = min(recipe.calibration_examples, 16 if args.quick else recipe.calibration_examples)
        ds = common.load_data(
            args.dataset, "train", common.input_size(loaded.model), data_dir=args.data_dir, max_examples=max(n, 1)
        )
        common.check_classes(loaded, ds.num_classes, args.dataset)
        calibration = (ds.images, ds.labels)
    elif args.dataset:
        common.check_dataset_name(args.dataset, args.data_dir)
    s = prune_checkpoint(loaded, recipe, args.out, calibration=calibration, overwrite=args.overwrite)
    b, a = s["before"], s["after"]
    print(summary_markdown(s))
    what = f"sparsity {s['sparsity']:.1%}" if s["kind"] == "sparse" else f"params {b['params']:,} -> {a['params']:,}"
    print(
        f"pruned ({s['kind']}): {what}; XLA FLOPs {common.fmt_count(b['flops'])} -> "
        f"{common.fmt_count(a['flops'])}; wrote {os.path.join(args.out, common.CHECKPOINT)}, summary.json, "
        f"summary.md"
    )
    return 0
