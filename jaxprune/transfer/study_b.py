"""Study B: how well do sparse upstream models transfer? (Iofinova et al., CVPR 2022).

Make an upstream model sparse with each algorithm (GMP, AC/DC, RigL, STR,
WoodFisher, LTH, ...: :func:`train_upstream` / :func:`run_upstreams`), then
transfer it to downstream datasets by linear probing on frozen features and by
full finetuning with the sparsity mask kept fixed (:func:`run`).

Same shape as the other studies: :class:`Config` (the transfer recipe),
:func:`quick_config` / :func:`small_config` / :func:`full_config`, :func:`run`,
:func:`summarize`, :func:`write_outputs`; the upstream side:
:class:`UpstreamConfig`, :func:`train_upstream`, :func:`save_upstream`,
:func:`load_upstream`, :func:`run_upstreams`.

Example:
  >>> from jaxprune.transfer import study_b
  >>> study_b.full_config().linear_epochs, study_b.quick_config().full_steps
  (150, 20)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxprune._src.transfer.pretrained_sparse import PRETRAINED_METHODS, PretrainedSparseConfig
from jaxprune._src.transfer.pretrained_sparse import sparse_pretrained_upstreams as pretrained_upstreams
from jaxprune._src.transfer.pretrained_transfer import pretrained_claim, pretrained_transfer
from jaxprune._src.transfer.pretrained_transfer import run_pretrained_study_b as run_pretrained
from jaxprune._src.transfer.sparse_transfer import (
    MODES,
    PAPER_DATASETS,
    SMALL_DATASETS,
    TransferData,
    TransferResult,
    extract_features,
    feature_fn,
    find_head,
    full_finetune,
    linear_finetune,
    load_transfer_data,
    resolve_datasets,
    train_linear_head,
    transfer,
    with_fresh_head,
)
from jaxprune._src.transfer.sparse_transfer import TransferConfig as Config
from jaxprune._src.transfer.sparse_transfer import run_study_b as run
from jaxprune._src.transfer.sparse_transfer import study_b_tables as summarize
from jaxprune._src.transfer.sparse_transfer import write_study_b as _write_study_b
from jaxprune._src.transfer.sparse_upstream import DEFAULT_METHODS as DEFAULT_UPSTREAM_METHODS
from jaxprune._src.transfer.sparse_upstream import METHODS as UPSTREAM_METHODS
from jaxprune._src.transfer.sparse_upstream import SparseUpstream as Upstream
from jaxprune._src.transfer.sparse_upstream import SparseUpstreamConfig as UpstreamConfig
from jaxprune._src.transfer.sparse_upstream import (
    full_upstream_config,
    load_upstream_splits,
    prunable_sparsity,
    write_upstream_report,
)
from jaxprune._src.transfer.sparse_upstream import load_sparse_upstream as load_upstream
from jaxprune._src.transfer.sparse_upstream import run_sparse_upstream as run_upstreams
from jaxprune._src.transfer.sparse_upstream import save_sparse_upstream as save_upstream
from jaxprune._src.transfer.sparse_upstream import train_sparse_upstream as train_upstream

__all__ = [
    "Config",
    "quick_config",
    "small_config",
    "full_config",
    "run",
    "summarize",
    "write_outputs",
    "MODES",
    "PAPER_DATASETS",
    "SMALL_DATASETS",
    "TransferData",
    "TransferResult",
    "extract_features",
    "feature_fn",
    "find_head",
    "full_finetune",
    "linear_finetune",
    "load_transfer_data",
    "resolve_datasets",
    "train_linear_head",
    "transfer",
    "with_fresh_head",
    "Upstream",
    "UpstreamConfig",
    "UPSTREAM_METHODS",
    "DEFAULT_UPSTREAM_METHODS",
    "full_upstream_config",
    "load_upstream_splits",
    "prunable_sparsity",
    "load_upstream",
    "save_upstream",
    "train_upstream",
    "run_upstreams",
    "write_upstream_report",
    "PRETRAINED_METHODS",
    "PretrainedSparseConfig",
    "pretrained_upstreams",
    "pretrained_transfer",
    "run_pretrained",
    "pretrained_claim",
    "effnet_config",
    "effnet_quick_config",
]


def quick_config(**overrides: Any) -> Config:
    """A CI smoke recipe: 10 linear epochs, 20 full-finetuning steps, 300 training examples."""
    return dataclasses.replace(Config(linear_epochs=10, full_steps=20, max_train_examples=300), **overrides)


def small_config(**overrides: Any) -> Config:
    """The default offline study: 100 linear epochs, 200 full-finetuning steps."""
    return dataclasses.replace(Config(linear_epochs=100, full_steps=200), **overrides)


def full_config(**overrides: Any) -> Config:
    """The paper's recipe: 224 px, linear lr 0.01 for 150 epochs, full lr 0.001, augmentation."""
    return dataclasses.replace(
        Config(
            image_size=224,
            linear_epochs=150,
            linear_lr=0.01,
            full_lr=0.001,
            full_steps=20_000,
            full_batch_size=64,
            augment=True,
        ),
        **overrides,
    )


def write_outputs(results: dict, out_dir: str) -> str:
    """Writes ``results.json``, ``results.md`` (the paper's table shape per mode), ``results.png``;
    returns the Markdown. Same argument order as the other studies."""
    return _write_study_b(out_dir, results)


def effnet_config(**overrides: Any) -> Config:
    """Transfer recipe for the ImageNet-pretrained EfficientNet-Lite0 on 2 CPU cores (32 px, Lite input scale).

    Linear: 100 epochs (lr 0.05) on cached features. Full: 10 LP-FT steps (lr 0.001, batch 32) with the upstream
    mask fixed and depthwise kernels frozen (see :func:`pretrained_transfer`).
    """
    base = Config(
        image_size=32,
        normalize="lite",
        linear_epochs=100,
        linear_lr=0.05,
        full_steps=10,
        full_lr=0.001,  # 0.01 collapses the pretrained Lite0 to chance (measured on digits)
        full_batch_size=32,
        full_warmup_steps=3,
        max_train_examples=160,
        max_eval_examples=160,
    )
    return dataclasses.replace(base, **overrides)


def effnet_quick_config(**overrides: Any) -> Config:
    """CI smoke recipe of :func:`effnet_config`: 16 px, 5 linear epochs, 2 full steps, 64 examples."""
    return effnet_config(
        **{
            "image_size": 16,
            "linear_epochs": 5,
            "full_steps": 2,
            "full_warmup_steps": 1,
            "max_train_examples": 64,
            "max_eval_examples": 64,
            **overrides,
        }
    )
