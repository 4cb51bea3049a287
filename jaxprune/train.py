"""The public finetuning harness: SGDW + warm-up/cosine, best-dev selection, XLA FLOPs per step.

``import jaxprune.train`` (kept out of ``import jaxprune`` so that the core
stays light). :func:`fit` trains any Linen model on a :class:`jaxprune.data.Dataset`,
optionally with fixed masks (sparse finetuning) or a pruner (sparse training);
:func:`evaluate` gives accuracy / top-5 / loss.

Example:
  >>> import jaxprune.train as jt
  >>> jt.TrainConfig(steps=100).learning_rate
  0.1
"""

from jaxprune._src.train import (
    FitResult,
    TrainConfig,
    TrainState,
    cross_entropy,
    evaluate,
    fit,
    fixed_mask_pruner,
    scale_by_warmup_cosine,
    sgdw,
    warmup_cosine,
    xla_flops,
)

__all__ = [
    "TrainConfig",
    "TrainState",
    "FitResult",
    "fit",
    "evaluate",
    "sgdw",
    "scale_by_warmup_cosine",
    "warmup_cosine",
    "cross_entropy",
    "fixed_mask_pruner",
    "xla_flops",
]
