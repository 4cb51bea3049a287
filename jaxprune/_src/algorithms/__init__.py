"""Sparse-training and pruning algorithms, each a small factory on the Pruner contract.

Pruners (train with :func:`jaxprune.sparse_optimizer`): :func:`gmp_pruner`, :func:`rigl_pruner`,
:func:`set_pruner`, :func:`ste_pruner`, :func:`acdc_pruner`, :func:`woodfisher_pruner` (gradual).
Functions yielding masks (train them with :func:`fixed_mask_pruner`): STR
(:func:`str_init` ...), lottery tickets (:func:`lottery_ticket`), one-shot OBS
(:func:`woodfisher_prune`), zero-shot SNIP/GraSP/SynFlow/Wanda.
Importing this package registers the ``'snip'`` score.
"""

from jaxprune._src.algorithms.acdc import acdc_pruner, acdc_schedule
from jaxprune._src.algorithms.common import fixed_mask_pruner, sparsity_of_masks
from jaxprune._src.algorithms.drop_grow import (
    cosine_drop_fraction,
    drop_grow_masks,
    drop_grow_pruner,
    rigl_config,
    rigl_pruner,
    set_pruner,
)
from jaxprune._src.algorithms.gmp import gmp_pruner
from jaxprune._src.algorithms.lth import LotteryResult, lottery_ticket, lth_prune_round, lth_sparsities, rewind
from jaxprune._src.algorithms.obs import (
    fisher_inverse,
    obs_prune,
    obs_saliency,
    obs_update,
    woodfisher_prune,
    woodfisher_pruner,
    woodfisher_scores,
)
from jaxprune._src.algorithms.ste import ste_pruner, straight_through_masks
from jaxprune._src.algorithms.str_ import str_effective, str_finalize, str_init, str_masks, str_sparsity
from jaxprune._src.algorithms.zero_shot import (
    activation_norms,
    fixed_scores,
    grasp_scores,
    per_output_masks,
    snip_scores,
    synflow_prune,
    synflow_scores,
    wanda_scores,
)

__all__ = [
    "fixed_mask_pruner",
    "sparsity_of_masks",
    "gmp_pruner",
    "drop_grow_pruner",
    "drop_grow_masks",
    "rigl_pruner",
    "set_pruner",
    "cosine_drop_fraction",
    "rigl_config",
    "ste_pruner",
    "straight_through_masks",
    "acdc_pruner",
    "acdc_schedule",
    "str_init",
    "str_effective",
    "str_masks",
    "str_sparsity",
    "str_finalize",
    "lottery_ticket",
    "LotteryResult",
    "lth_prune_round",
    "lth_sparsities",
    "rewind",
    "fisher_inverse",
    "obs_saliency",
    "obs_update",
    "obs_prune",
    "woodfisher_prune",
    "woodfisher_scores",
    "woodfisher_pruner",
    "snip_scores",
    "grasp_scores",
    "synflow_scores",
    "synflow_prune",
    "activation_norms",
    "wanda_scores",
    "fixed_scores",
    "per_output_masks",
]
