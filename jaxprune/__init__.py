"""jaxprune: pure-function pruning of pretrained JAX/Flax networks.

The story of the API, in the order of this file: key paths and rules ->
scores -> masks (sparse) -> schedules and pruners -> sparse training with optax
-> algorithms -> structured pruning (trace -> plan -> shrink -> run the smaller
model) -> FLOPs -> checkpoints -> sharding. Every name is imported explicitly
from the module that defines it.

Namespaces kept out of ``import jaxprune`` (they import heavier libraries):
``jaxprune.models`` (reference Linen/NNX models), ``jaxprune.train`` (the
finetuning harness), ``jaxprune.data`` (tfds + offline datasets),
``jaxprune.convert`` (torchvision / timm / HF weights), ``jaxprune.vote``
(study C's mask library and vote), ``jaxprune.llm`` (calibration-based pruning of
transformers), ``jaxprune.transfer`` (the studies),
``jaxprune.cli`` and ``jaxprune.demo``.
"""

# ----------------------------------------------------------------------- key paths and rules
from jaxprune._src.tree import (
    DEFAULT_EXCLUDE,
    check_same_structure,
    is_none,
    leaves_with_paths,
    map_with_path,
    match_rules,
    path_str,
    prunable_tree,
    rule_tree,
)

# ------------------------------------------------------------------------------------ scores
from jaxprune._src.scores import (
    SCORE_FNS,
    get_score_fn,
    magnitude_scores,
    random_scores,
    register_score,
    saliency_scores,
    taylor_scores,
)
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

# --------------------------------------------------------------------- masks (sparse pruning)
from jaxprune._src.distributions import check_sparsity, erk_densities, layer_sparsities
from jaxprune._src.masks import (
    apply_masks,
    block_masks,
    channel_masks,
    check_scores,
    combine_masks,
    global_masks,
    layerwise_masks,
    nm_masks,
    topk_mask,
)
from jaxprune._src.mask_interop import full_masks, pruned_leaves
from jaxprune._src.summary import SparsitySummary, sparsity_summary
from jaxprune._src.checkpoint.sparse_format import (
    CompactSparse,
    PackedMasks,
    compact_sparse,
    dense_from_compact,
    pack_masks,
    unpack_masks,
)

# ------------------------------------------------------------------------ schedules, pruners
from jaxprune._src.schedules import Schedule, no_update, one_shot, periodic, polynomial
from jaxprune._src.pruner import (
    MaskSpec,
    Pruner,
    dense_masks,
    magnitude_pruner,
    masks_from_scores,
    prune,
    scored_pruner,
)

# ------------------------------------------------------------------- sparse training (optax)
from jaxprune._src.sparse_optax import SparseState, find_sparse_state, get_masks, sparse_optimizer

# --------------------------------------------------------------------------------- algorithms
from jaxprune._src.algorithms.common import fixed_mask_pruner, sparsity_of_masks
from jaxprune._src.algorithms.gmp import gmp_pruner
from jaxprune._src.algorithms.drop_grow import (
    cosine_drop_fraction,
    drop_grow_masks,
    drop_grow_pruner,
    rigl_config,
    rigl_pruner,
    set_pruner,
)
from jaxprune._src.algorithms.ste import ste_pruner, straight_through_masks
from jaxprune._src.algorithms.acdc import acdc_pruner, acdc_schedule
from jaxprune._src.algorithms.str_ import str_effective, str_finalize, str_init, str_masks, str_sparsity
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

# ------------------------------------------------------- structured: trace -> plan -> shrink
from jaxprune._src.structured.groups import DependencyGraph, Group, Member
from jaxprune._src.structured.trace import trace_groups
from jaxprune._src.structured.importance import TORCH_PRUNING_DEFAULTS, group_scores
from jaxprune._src.structured.plan import DEFAULT_KINDS, make_plan
from jaxprune._src.structured.budget import Budget, flops_budget, latency_budget, param_bytes_budget
from jaxprune._src.structured.latency_table import LatencyTable
from jaxprune._src.structured.latency import measure_latency, measure_plan_latency, validate_latency
from jaxprune._src.structured.prune_plan import PrunePlan, plan_from_kept
from jaxprune._src.structured.shrink import check_plan, plan_to_masks, shrink

# ------------------------------------------------------- structured: run the smaller model
from jaxprune._src.structured.run import make_shrunk_fn, shrunk_flops, shrunk_fn_from_graph
from jaxprune._src.structured.linen_surgery import register_linen_fix, shrunk_linen_apply
from jaxprune._src.structured.nnx_surgery import shrink_nnx

# -------------------------------------------------------------------------------------- FLOPs
from jaxprune._src.flops import compare_models, flops, model_stats, param_bytes, param_count

# -------------------------------------------------------------------------------- checkpoints
from jaxprune._src.checkpoint.api import ShrunkModel, restore_checkpoint, restore_shrunk_model, save_checkpoint
from jaxprune._src.checkpoint.codec import Checkpoint, CheckpointError
from jaxprune._src.checkpoint.checkpointer import SparseCheckpointer
from jaxprune._src.checkpoint.directory import checkpoint_size_bytes, checkpoint_steps
from jaxprune._src.checkpoint.export import export_dense

# ----------------------------------------------------------------------------------- sharding
from jaxprune._src.sharding import (
    abstract_like,
    is_multiprocess_array,
    mesh_round_to,
    put_global,
    shard_like,
    shardings_of,
    shrink_sharded,
    spec_for_shape,
)
from jaxprune._src.deprecation import deprecated_attribute as _deprecated_attribute

__version__ = "0.2.0"

__all__ = [
    # key paths and rules
    "DEFAULT_EXCLUDE",
    "check_same_structure",
    "is_none",
    "leaves_with_paths",
    "map_with_path",
    "match_rules",
    "path_str",
    "prunable_tree",
    "rule_tree",
    # scores
    "SCORE_FNS",
    "get_score_fn",
    "register_score",
    "magnitude_scores",
    "random_scores",
    "saliency_scores",
    "taylor_scores",
    "snip_scores",
    "grasp_scores",
    "synflow_scores",
    "wanda_scores",
    "activation_norms",
    "fixed_scores",
    "per_output_masks",
    "synflow_prune",
    # masks
    "check_sparsity",
    "erk_densities",
    "layer_sparsities",
    "apply_masks",
    "block_masks",
    "channel_masks",
    "check_scores",
    "combine_masks",
    "global_masks",
    "layerwise_masks",
    "nm_masks",
    "topk_mask",
    "SparsitySummary",
    "sparsity_summary",
    "CompactSparse",
    "PackedMasks",
    "compact_sparse",
    "dense_from_compact",
    "pack_masks",
    "unpack_masks",
    "full_masks",
    "pruned_leaves",
    # schedules and pruners
    "Schedule",
    "no_update",
    "one_shot",
    "periodic",
    "polynomial",
    "MaskSpec",
    "Pruner",
    "dense_masks",
    "magnitude_pruner",
    "masks_from_scores",
    "prune",
    "scored_pruner",
    # sparse training
    "SparseState",
    "find_sparse_state",
    "get_masks",
    "sparse_optimizer",
    # algorithms
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
    # structured
    "DependencyGraph",
    "Group",
    "Member",
    "trace_groups",
    "TORCH_PRUNING_DEFAULTS",
    "group_scores",
    "DEFAULT_KINDS",
    "Budget",
    "PrunePlan",
    "flops_budget",
    "make_plan",
    "param_bytes_budget",
    "latency_budget",
    "LatencyTable",
    "measure_latency",
    "measure_plan_latency",
    "validate_latency",
    "plan_from_kept",
    "check_plan",
    "plan_to_masks",
    "shrink",
    "make_shrunk_fn",
    "shrunk_flops",
    "shrunk_fn_from_graph",
    "register_linen_fix",
    "shrunk_linen_apply",
    "shrink_nnx",
    # FLOPs
    "compare_models",
    "flops",
    "model_stats",
    "param_bytes",
    "param_count",
    # checkpoints
    "ShrunkModel",
    "restore_checkpoint",
    "restore_shrunk_model",
    "save_checkpoint",
    "Checkpoint",
    "CheckpointError",
    "SparseCheckpointer",
    "checkpoint_size_bytes",
    "checkpoint_steps",
    "export_dense",
    # sharding
    "abstract_like",
    "mesh_round_to",
    "shard_like",
    "shardings_of",
    "shrink_sharded",
    "put_global",
    "is_multiprocess_array",
    "spec_for_shape",
]

#: Pre-v1 names: still importable, with a DeprecationWarning naming the new one (see CHANGELOG.md).
_DEPRECATED = {
    "magnitude": ("jaxprune._src.scores", "magnitude_scores", "jaxprune.magnitude_scores"),
    "random": ("jaxprune._src.scores", "random_scores", "jaxprune.random_scores"),
    "saliency": ("jaxprune._src.scores", "saliency_scores", "jaxprune.saliency_scores"),
    "taylor": ("jaxprune._src.scores", "taylor_scores", "jaxprune.taylor_scores"),
    "gmp": ("jaxprune._src.algorithms.gmp", "gmp_pruner", "jaxprune.gmp_pruner"),
    "rigl": ("jaxprune._src.algorithms.drop_grow", "rigl_pruner", "jaxprune.rigl_pruner"),
    "ste": ("jaxprune._src.algorithms.ste", "ste_pruner", "jaxprune.ste_pruner"),
    "acdc": ("jaxprune._src.algorithms.acdc", "acdc_pruner", "jaxprune.acdc_pruner"),
    "woodfisher": ("jaxprune._src.algorithms.obs", "woodfisher_pruner", "jaxprune.woodfisher_pruner"),
    "pack_mask": ("jaxprune._src.checkpoint.sparse_format", "pack_mask", "jaxprune.pack_masks (whole pytrees)"),
    "unpack_mask": ("jaxprune._src.checkpoint.sparse_format", "unpack_mask", "jaxprune.unpack_masks (whole pytrees)"),
    "crc32": ("jaxprune._src.checkpoint.sparse_format", "crc32", "zlib.crc32"),
    "fix_nnx_attributes": ("jaxprune._src.structured.nnx_surgery", "fix_nnx_attributes", "jaxprune.shrink_nnx"),
    **{
        name: ("jaxprune.vote", name, f"jaxprune.vote.{name}")
        for name in (
            "MaskLibrary",
            "TaskRecord",
            "add_record",
            "keep_vectors",
            "record_from_plan",
            "save_library",
            "load_library",
            "validate_library",
            "task_embedding",
            "cosine_similarity",
            "task_similarity",
            "nearest_tasks",
            "neighbor_weights",
            "vote_scores",
            "vote_plan",
            "WEIGHT_SCHEMES",
        )
    },
}
_SUBMODULES = ("data", "models", "convert", "transfer", "cli", "train", "demo", "vote", "llm")


def __getattr__(name):
    if name in _SUBMODULES:  # lazy: some import tensorflow-datasets or torch-free converters
        import importlib

        return importlib.import_module(f"jaxprune.{name}")
    if name in _DEPRECATED:
        return _deprecated_attribute("jaxprune", name, *_DEPRECATED[name])
    raise AttributeError(f"module 'jaxprune' has no attribute {name!r}")
