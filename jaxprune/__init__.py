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

from jaxprune._src import algorithms as _algorithms
from jaxprune._src import checkpoint as _checkpoint
from jaxprune._src import flops as _flops
from jaxprune._src import sparse_format as _sparse_format
from jaxprune._src import structured as _structured
from jaxprune._src.algorithms import *  # noqa: F401,F403  (gmp, rigl, set_pruner, acdc, ...)
from jaxprune._src.checkpoint import *  # noqa: F401,F403  (save_checkpoint, restore_checkpoint, ...)
from jaxprune._src.flops import *  # noqa: F401,F403  (flops, param_count, param_bytes, ...)
from jaxprune._src import mask_library as _mask_library
from jaxprune._src.sharding import (abstract_like, mesh_round_to, shard_like, shardings_of, shrink_sharded,
                                   spec_for_shape)
from jaxprune._src.mask_library import *  # noqa: F401,F403  (study C: MaskLibrary, vote_scores, vote_plan, ...)
from jaxprune._src.sparse_format import *  # noqa: F401,F403  (pack_masks, compact_sparse, ...)
from jaxprune._src.structured import *  # noqa: F401,F403  (trace_groups, make_plan, shrink, ...)

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
    # sharding (device meshes)
    "abstract_like", "mesh_round_to", "shard_like", "shardings_of", "shrink_sharded", "spec_for_shape",
]
# algorithms, structured engine, FLOPs, checkpoints (each module's own __all__):
__all__ += list(_algorithms.__all__) + list(_structured.__all__) + list(_flops.__all__)
__all__ += list(_checkpoint.__all__) + list(_sparse_format.__all__) + list(_mask_library.__all__)
del _mask_library, _algorithms, _checkpoint, _flops, _sparse_format, _structured


def __getattr__(name):  # lazy submodules: `jaxprune.data` imports tensorflow-datasets.
    if name in ("data", "models", "convert", "transfer", "cli", "train", "demo"):
        import importlib
        return importlib.import_module(f"jaxprune.{name}")
    raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")
