"""Study B on sparse versions of a *real* pretrained model (EfficientNet-Lite): linear probe and LP-FT.

The transfer side of ``--config effnet`` (the upstreams are made by
:mod:`jaxprune._src.transfer.pretrained_sparse`); the generic transfer machinery
(data, linear probe, full finetuning, tables) is :mod:`jaxprune._src.transfer.sparse_transfer`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.transfer.sparse_transfer import (
    TransferConfig,
    TransferData,
    TransferResult,
    linear_finetune,
    load_transfer_data,
    study_b_tables,
)

__all__ = ["pretrained_transfer", "run_pretrained_study_b", "pretrained_claim"]


def pretrained_transfer(up, data: TransferData, cfg: TransferConfig, *, freeze: str | None = "dw_conv/kernel") -> list:
    """Linear probe and fixed-mask full finetuning of one (sparse) pretrained upstream; two run dicts.

    ``linear``: :func:`linear_finetune` (frozen features, new head). ``full``:
    LP-FT -- starts from the linear probe's head and trains every weight for
    ``cfg.full_steps`` steps with the upstream mask fixed
    (:func:`~jaxprune._src.transfer.study_c_probe.masked_finetune`: SGD with
    Nesterov momentum, warm-up + cosine, BatchNorm statistics kept, params
    matching ``freeze`` not trained -- depthwise kernels by default, whose CPU
    backward dominates the step). ``sparsity_after`` checks the mask held.
    """
    from jaxprune._src.train import evaluate
    from jaxprune._src.transfer.sparse_upstream import prunable_sparsity
    from jaxprune._src.transfer.study_c_probe import masked_finetune

    lin = linear_finetune(up.model, up.variables, data, cfg, up.masks)
    t0 = time.perf_counter()
    params = lin.variables["params"]
    masks = (
        jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
        if lin.masks is None
        else jax.tree.map(
            lambda p, m: np.ones(np.shape(p), bool) if m is None else np.asarray(m, bool),
            params,
            lin.masks,
            is_leaf=tree_lib.is_none,
        )
    )
    v = masked_finetune(
        lin.model,
        lin.variables,
        masks,
        data.train,
        steps=cfg.full_steps,
        batch_size=min(cfg.full_batch_size, len(data.train)),
        learning_rate=cfg.full_lr,
        weight_decay=cfg.full_weight_decay,
        warmup_steps=cfg.full_warmup_steps,
        seed=cfg.seed,
        freeze=freeze,
    )
    test = evaluate(lin.model, v, data.test)
    dev = evaluate(lin.model, v, data.dev)
    after = 0.0 if up.masks is None else prunable_sparsity(v["params"], lin.masks)
    full = TransferResult(
        "full",
        data.name,
        float(test["accuracy"]),
        float(dev["accuracy"]),
        float(test["top5"]),
        lin.seconds + time.perf_counter() - t0,
        extra={"steps": int(cfg.full_steps), "sparsity_after": float(after), "frozen": freeze},
    )
    return [lin, full]


def run_pretrained_study_b(
    upstreams, datasets, cfg: TransferConfig, *, freeze: str | None = "dw_conv/kernel", data_dir=None, log=print
) -> dict:
    """Study B on sparse versions of a real pretrained model: every upstream x dataset, both modes."""
    runs = []
    for name in datasets:
        data = load_transfer_data(name, cfg, data_dir=data_dir)
        for up in upstreams:
            for r in pretrained_transfer(up, data, cfg, freeze=freeze):
                runs.append(
                    {
                        "method": up.method,
                        "sparsity": float(up.sparsity),
                        "upstream_sparsity": float(up.stats.get("sparsity", up.sparsity)),
                        "upstream_agreement": float(up.stats.get("agreement", float("nan"))),
                        **r.summary(),
                    }
                )
                log(f"{name:>24} {r.mode:>6} {up.method:>17} s={up.sparsity:.2f}: top-1 {r.test_accuracy:.3f}")
    return {
        "config": dataclasses.asdict(cfg),
        "datasets": list(datasets),
        "runs": runs,
        "backend": jax.default_backend(),
    }


def pretrained_claim(result: dict) -> str:
    """Markdown: per mode and sparsity, the mean delta vs dense of each method (the seed claim's direction)."""
    tables = study_b_tables(result)
    lines = [
        "Seed claim (Iofinova et al.): sparse upstreams transfer about as well as dense ones. Measured here "
        "(mean over datasets of sparse minus dense top-1, points; |delta| <= 1 counts as 'as well'):",
        "",
    ]
    for mode, t in tables.items():
        sps = sorted({row[1] for row in t["rows"] if row[0] != "dense"})
        methods = list(dict.fromkeys(row[0] for row in t["rows"] if row[0] != "dense"))
        lines += [f"| {mode} | " + " | ".join(f"{100 * s:.0f}%" for s in sps) + " |", "|---|" + "---|" * len(sps)]
        for m in methods:
            cells = [t["mean_delta"].get((m, s), float("nan")) for s in sps]
            lines.append(f"| {m} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |")
        deltas = [(row, d) for row, d in t["mean_delta"].items() if row[0] != "dense"]
        held = [(row, d) for row, d in deltas if abs(d) <= 1.0]
        worse = [(row, d) for row, d in deltas if d < -1.0]
        better = [(row, d) for row, d in deltas if d > 1.0]
        lines += [
            "",
            f"{mode}: {len(held)}/{len(deltas)} sparse upstreams within 1 point of dense; above dense by more than "
            f"1 point: {len(better)}; below dense by more than 1 point: "
            + (", ".join(f"{r[0]}@{100 * r[1]:.0f}% ({d:+.1f})" for r, d in worse) or "none"),
            "",
        ]
    return "\n".join(lines)
