"""Study A: zero-shot structured pruning for compute-optimal transfer (Caccia et al. 2023).

Prune a pretrained CNN's filters / channels / kernels *before* finetuning (no
data: magnitude), finetune the smaller net on every task of a stream, and plot
accuracy against compute (XLA FLOPs of one train step x steps).

* :class:`Config`, :func:`quick_config` (CI smoke), :func:`small_config` (the
  default offline study), :func:`efficientnet_config` (the same study on the real
  ImageNet-pretrained EfficientNet-Lite0, ``backbone='efficientnet-lite0'``),
  :func:`full_config` (Nevis'22 TINY / SHORT streams of real tfds datasets),
  :func:`run`, :func:`summarize`, :func:`write_outputs`;
* the zero-shot pruning itself: :func:`zero_shot_prune`, :func:`zero_shot_plan`,
  :func:`kernel_masks`, :func:`random_init`, :class:`PrunedModel`, FLOPs helpers.

Example:
  >>> from jaxprune.transfer import study_a
  >>> study_a.quick_config().methods
  ('filter', 'channel', 'kernel')
"""

from jaxprune._src.transfer.study_a import (
    BACKBONES,
    NEVIS_SHORT,
    NEVIS_TINY,
    efficientnet_config,
    full_config,
    quick_config,
    short_study_a,
    small_config,
    summarize,
    write_outputs,
)
from jaxprune._src.transfer.study_a import StudyAConfig as Config
from jaxprune._src.transfer.study_a import run_study_a as run
from jaxprune._src.transfer.zero_shot_structured import (
    METHODS,
    PrunedModel,
    conv_forward_flops,
    effective_step_flops,
    forward_flops,
    kernel_masks,
    random_init,
    trace_model_groups,
    unit_scores,
    with_new_head,
    zero_shot_plan,
    zero_shot_prune,
)

__all__ = [
    "Config",
    "quick_config",
    "small_config",
    "full_config",
    "efficientnet_config",
    "BACKBONES",
    "run",
    "summarize",
    "write_outputs",
    "short_study_a",
    "NEVIS_TINY",
    "NEVIS_SHORT",
    "METHODS",
    "PrunedModel",
    "conv_forward_flops",
    "effective_step_flops",
    "forward_flops",
    "kernel_masks",
    "random_init",
    "trace_model_groups",
    "unit_scores",
    "with_new_head",
    "zero_shot_plan",
    "zero_shot_prune",
]
