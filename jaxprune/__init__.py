"""jaxprune: pure-function pruning of pretrained JAX/Flax networks.

The story of the API: scores -> masks -> apply (sparse), or
trace -> plan -> shrink (structured); train with :func:`sparse_optimizer`;
save with the checkpoint helpers.
"""

from jaxprune._src.distributions import check_sparsity, erk_densities, layer_sparsities
from jaxprune._src.masks import (apply_masks, block_masks, channel_masks, check_scores, combine_masks,
                                 global_masks, layerwise_masks, nm_masks, topk_mask)
from jaxprune._src.pruner import (MaskSpec, Pruner, dense_masks, magnitude_pruner, masks_from_scores, prune,
                                  scored_pruner)
from jaxprune._src.schedules import Schedule, no_update, one_shot, periodic, polynomial
from jaxprune._src.scores import SCORE_FNS, get_score_fn, magnitude, random, register_score, saliency, taylor
from jaxprune._src.sparse_optax import SparseState, find_sparse_state, get_masks, sparse_optimizer
from jaxprune._src.summary import SparsitySummary, sparsity_summary
from jaxprune._src.tree import (DEFAULT_EXCLUDE, check_same_structure, is_none, leaves_with_paths, map_with_path,
                                match_rules, path_str, prunable_tree, rule_tree)

__version__ = "0.1.0"

__all__ = [
    # tree
    "DEFAULT_EXCLUDE", "check_same_structure", "is_none", "leaves_with_paths", "map_with_path", "match_rules",
    "path_str", "prunable_tree", "rule_tree",
    # scores
    "SCORE_FNS", "get_score_fn", "magnitude", "random", "register_score", "saliency", "taylor",
    # distributions
    "check_sparsity", "erk_densities", "layer_sparsities",
    # masks
    "apply_masks", "block_masks", "channel_masks", "check_scores", "combine_masks", "global_masks",
    "layerwise_masks", "nm_masks", "topk_mask",
    # schedules
    "Schedule", "no_update", "one_shot", "periodic", "polynomial",
    # pruners
    "MaskSpec", "Pruner", "dense_masks", "magnitude_pruner", "masks_from_scores", "prune", "scored_pruner",
    # optax
    "SparseState", "find_sparse_state", "get_masks", "sparse_optimizer",
    # reporting
    "SparsitySummary", "sparsity_summary",
]


def __getattr__(name):  # lazy submodules: `jaxprune.data` imports tensorflow-datasets.
    if name in ("data", "models"):
        import importlib
        return importlib.import_module(f"jaxprune.{name}")
    raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")
