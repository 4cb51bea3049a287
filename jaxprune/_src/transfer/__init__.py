"""Transfer-learning protocols: study A (zero-shot structured pruning for compute-optimal transfer)."""

from jaxprune._src.transfer.upstream import (Upstream, UpstreamConfig, build_model, default_cache_dir,
                                             load_upstream, load_upstream_data, pretrain_upstream)
from jaxprune._src.transfer.zero_shot_structured import (METHODS, PrunedModel, conv_forward_flops,
                                                         effective_step_flops, forward_flops, kernel_masks,
                                                         trace_model_groups, unit_scores, with_new_head,
                                                         zero_shot_plan, zero_shot_prune)
from jaxprune._src.transfer.study_a import (NEVIS_SHORT, NEVIS_TINY, StudyAConfig, full_config, quick_config,
                                            run_study_a, short_study_a, small_config, summarize, write_outputs)

__all__ = ["Upstream", "UpstreamConfig", "build_model", "default_cache_dir", "load_upstream", "load_upstream_data",
           "pretrain_upstream", "METHODS", "PrunedModel", "conv_forward_flops", "effective_step_flops",
           "forward_flops", "kernel_masks", "trace_model_groups", "unit_scores", "with_new_head", "zero_shot_plan",
           "zero_shot_prune", "NEVIS_SHORT", "NEVIS_TINY", "StudyAConfig", "full_config", "quick_config",
           "run_study_a", "short_study_a", "small_config", "summarize", "write_outputs"]
