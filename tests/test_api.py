"""The public API v1: an explicit, snapshot-tested namespace; deprecated names warn; no private reaches."""

import ast
import importlib
import pathlib
import re
import warnings

import pytest

import jaxprune as jp

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: ``sorted(jaxprune.__all__)``. A change here is an API change: say it in CHANGELOG.md.
API_V1 = """
Budget Checkpoint CheckpointError CompactSparse DEFAULT_EXCLUDE DEFAULT_KINDS DependencyGraph Group LatencyTable
LotteryResult MaskSpec Member PackedMasks PrunePlan Pruner SCORE_FNS Schedule ShrunkModel SparseCheckpointer
SparseState SparsitySummary TORCH_PRUNING_DEFAULTS abstract_like acdc_pruner acdc_schedule activation_norms
apply_masks block_masks channel_masks check_plan check_same_structure check_scores check_sparsity
checkpoint_size_bytes checkpoint_steps combine_masks compact_sparse compare_models cosine_drop_fraction
dense_from_compact dense_masks drop_grow_masks drop_grow_pruner erk_densities export_dense find_sparse_state
fisher_inverse fixed_mask_pruner fixed_scores flops flops_budget full_masks get_masks get_score_fn global_masks
gmp_pruner grasp_scores group_scores is_multiprocess_array is_none latency_budget layer_sparsities layerwise_masks
leaves_with_paths lottery_ticket lth_prune_round lth_sparsities magnitude_pruner magnitude_scores make_plan
make_shrunk_fn map_with_path masks_from_scores match_rules measure_latency measure_plan_latency mesh_round_to
model_stats nm_masks no_update obs_prune obs_saliency obs_update one_shot pack_masks param_bytes param_bytes_budget
param_count path_str per_output_masks periodic plan_from_kept plan_to_masks polynomial prunable_tree prune
pruned_leaves put_global random_scores register_linen_fix register_score restore_checkpoint restore_shrunk_model
rewind rigl_config rigl_pruner rule_tree saliency_scores save_checkpoint scored_pruner set_pruner shard_like
shardings_of shrink shrink_nnx shrink_sharded shrunk_flops shrunk_fn_from_graph shrunk_linen_apply snip_scores
sparse_optimizer sparsity_of_masks sparsity_summary spec_for_shape ste_pruner str_effective str_finalize str_init
str_masks str_sparsity straight_through_masks synflow_prune synflow_scores taylor_scores topk_mask trace_groups
unpack_masks validate_latency wanda_scores woodfisher_prune woodfisher_pruner woodfisher_scores
""".split()

RENAMED = {
    "magnitude": "magnitude_scores",
    "random": "random_scores",
    "saliency": "saliency_scores",
    "taylor": "taylor_scores",
    "gmp": "gmp_pruner",
    "rigl": "rigl_pruner",
    "ste": "ste_pruner",
    "acdc": "acdc_pruner",
    "woodfisher": "woodfisher_pruner",
}
MOVED_TO_VOTE = [
    "MaskLibrary",
    "TaskRecord",
    "vote_plan",
    "vote_scores",
    "task_similarity",
    "nearest_tasks",
    "cosine_similarity",
    "WEIGHT_SCHEMES",
    "save_library",
    "load_library",
]


def test_api_snapshot():
    assert sorted(jp.__all__) == sorted(API_V1), "public API changed: update API_V1 and CHANGELOG.md"
    assert len(set(jp.__all__)) == len(jp.__all__)
    for name in jp.__all__:
        assert getattr(jp, name) is not None, name


def test_init_imports_every_name_explicitly():
    for path in [
        ROOT / "jaxprune" / "__init__.py",
        *sorted((ROOT / "jaxprune").glob("*.py")),
        *sorted((ROOT / "jaxprune" / "transfer").glob("*.py")),
    ]:
        tree = ast.parse(path.read_text())
        stars = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
        assert not stars, f"{path.relative_to(ROOT)} uses a star import"


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_renamed_names_warn_and_resolve(old, new):
    with pytest.warns(DeprecationWarning, match=rf"jaxprune\.{old} is deprecated.*jaxprune\.{new}"):
        obj = getattr(jp, old)
    assert obj is getattr(jp, new)
    assert old not in jp.__all__


@pytest.mark.parametrize("name", MOVED_TO_VOTE)
def test_study_c_names_moved_to_jaxprune_vote(name):
    import jaxprune.vote as jv

    with pytest.warns(DeprecationWarning, match=rf"jaxprune\.vote\.{name}"):
        obj = getattr(jp, name)
    assert obj is getattr(jv, name) and name in jv.__all__


def test_transfer_studies_share_one_shape_and_old_names_warn():
    from jaxprune.transfer import study_a, study_b, study_c

    for study in (study_a, study_b, study_c):
        for name in ("Config", "quick_config", "run", "summarize", "write_outputs"):
            assert callable(getattr(study, name)), f"{study.__name__}.{name}"
        assert isinstance(study.quick_config(), study.Config)
    import jaxprune.transfer as jt

    with pytest.warns(DeprecationWarning, match="study_a.run"):
        assert jt.run_study_a is study_a.run


def test_public_namespaces_and_unknown_attribute():
    for name in ("train", "vote", "llm", "transfer", "convert", "data", "models", "demo"):
        mod = importlib.import_module(f"jaxprune.{name}")
        assert getattr(jp, name) is mod
        if name not in ("models", "demo"):
            assert all(hasattr(mod, n) for n in mod.__all__), name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        jp.nonexistent  # noqa: B018


def _src_imports(text: str) -> list[str]:
    return re.findall(
        r"^\s*(?:>>>\s*|\.\.\.\s*)?(?:from\s+jaxprune\._src\S*\s+import\s+.*|import\s+jaxprune\._src\S*)",
        text,
        flags=re.M,
    )


def test_no_private_imports_outside_the_package():
    """Scripts, benchmarks, notebooks and the README use only the public API (tests may reach inside)."""
    files = [
        *ROOT.glob("scripts/*.py"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("benchmarks/_benchlib/*.py"),
        ROOT / "colab" / "_build.py",
        *ROOT.glob("colab/*.ipynb"),
        ROOT / "README.md",
    ]
    offenders = {str(f.relative_to(ROOT)): hits for f in files if (hits := _src_imports(f.read_text()))}
    assert not offenders, offenders


def test_public_docstring_examples_use_the_public_api():
    offenders = {}
    for f in (ROOT / "jaxprune").rglob("*.py"):
        hits = [h for h in _src_imports(f.read_text()) if ">>>" in h or "..." in h]
        if hits:
            offenders[str(f.relative_to(ROOT))] = hits
    assert not offenders, offenders


def test_no_deprecation_warnings_from_the_package_itself():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in ("jaxprune.train", "jaxprune.vote", "jaxprune.llm", "jaxprune.transfer", "jaxprune.convert"):
            importlib.reload(importlib.import_module(name))
