"""Key paths on every kind of pytree, and clear errors on bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

import jaxprune as jp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Block:
    kernel: jax.Array
    bias: jax.Array


def _trees():
    k = jnp.arange(24.0).reshape(4, 6)
    b = jnp.ones(6)
    return {
        "dict": {"layer": {"kernel": k, "bias": b}},
        "frozen": FrozenDict({"layer": {"kernel": k, "bias": b}}),
        "dataclass": {"layer": Block(k, b)},
        "list": {"layer": [{"kernel": k, "bias": b}]},
    }


@pytest.mark.parametrize("kind", ["dict", "frozen", "dataclass", "list"])
def test_prune_works_on_any_pytree_and_keeps_structure(kind):
    tree = _trees()[kind]
    pruned, masks = jp.prune(tree, 0.5)
    assert jax.tree.structure(pruned) == jax.tree.structure(tree)
    paths = [p for p, _ in jp.leaves_with_paths(pruned)]
    assert any(p.endswith("kernel") for p in paths)
    for path, leaf in jp.leaves_with_paths(pruned):
        if path.endswith("kernel"):
            assert int((leaf == 0).sum()) == 12  # exactly half, the smallest
            np.testing.assert_array_equal(np.asarray(leaf).reshape(-1)[12:], np.arange(12.0, 24.0))
        else:
            np.testing.assert_array_equal(leaf, jnp.ones(6))  # bias untouched


def test_paths_drop_nnx_value_and_join_with_slash():
    from flax import nnx

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    _, state = nnx.split(model)
    assert sorted(p for p, _ in jp.leaves_with_paths(state)) == ["bias", "kernel"]
    assert [p for p, _ in jp.leaves_with_paths(_trees()["list"])] == ["layer/0/bias", "layer/0/kernel"]


def test_default_prunable_excludes_biases_norms_and_position_tables():
    params = {
        "embed": {"embedding": jnp.ones((10, 4))},
        "pos_embedding": jnp.ones((1, 5, 4)),
        "cls_token": jnp.ones((1, 1, 4)),
        "norm": {"scale": jnp.ones(4)},
        "dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
    }
    ok = jp.prunable_tree(params)
    assert ok["dense"]["kernel"] and ok["embed"]["embedding"]
    assert not (ok["pos_embedding"] or ok["cls_token"] or ok["norm"]["scale"] or ok["dense"]["bias"])


def test_strict_rules_that_match_nothing_raise():
    params = _trees()["dict"]
    with pytest.raises(ValueError, match="matched no leaf"):
        jp.prune(params, 0.5, rules=[("encoder", 0.9)], strict=True)
    with pytest.raises(ValueError, match="matched no leaf"):
        jp.prunable_tree(params, rules=[("convv", True)], strict=True)
    # Non-strict: silently no-op for that rule.
    jp.prune(params, 0.5, rules=[("encoder", 0.9)])


def test_bad_rules_are_type_errors():
    with pytest.raises(TypeError, match="rules"):
        jp.prune(_trees()["dict"], 0.5, rules="kernel")
    with pytest.raises(ValueError, match="invalid regex"):
        jp.prune(_trees()["dict"], 0.5, rules=[("(", 0.5)])


def test_n_greater_than_m_and_bad_block():
    params = _trees()["dict"]
    with pytest.raises(ValueError, match="N:M"):
        jp.prune(params, structure="nm", n=5, m=4)
    with pytest.raises(ValueError, match="layer/kernel"):
        jp.prune(params, 0.5, structure="nm", n=2, m=3)  # 4 input rows not divisible by 3
    with pytest.raises(ValueError, match="does not divide leaf 'layer/kernel'"):
        jp.prune(params, 0.5, structure="block", block=(3, 3))
    with pytest.raises(ValueError, match="block"):
        jp.prune(params, 0.5, structure="block", block=(0, 2))


def test_masks_with_wrong_structure_or_shape_are_rejected():
    params = _trees()["dict"]
    with pytest.raises(ValueError, match="missing paths"):
        jp.apply_masks(params, {"layer": {"kernel": jnp.ones((4, 6), bool)}})
    with pytest.raises(ValueError, match=r"'layer/kernel' has shape \(6, 4\)"):
        jp.apply_masks(params, {"layer": {"kernel": jnp.ones((6, 4), bool), "bias": None}})


def test_nan_scores_are_rejected_naming_the_leaf():
    scores = {"a": {"kernel": jnp.array([[1.0, jnp.nan]])}}
    with pytest.raises(ValueError, match="'a/kernel' contains NaN"):
        jp.layerwise_masks(scores, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        jp.global_masks(scores, 0.5)


def test_unknown_method_and_missing_key_or_grads():
    params = _trees()["dict"]
    with pytest.raises(ValueError, match="unknown score method 'magnitud'"):
        jp.prune(params, 0.5, method="magnitud")
    with pytest.raises(ValueError, match="needs `key=`"):
        jp.prune(params, 0.5, method="random")
    with pytest.raises(ValueError, match="needs `grads=`"):
        jp.prune(params, 0.5, method="taylor")
    with pytest.raises(ValueError, match="grads for 'saliency'"):
        jp.prune(params, 0.5, method="saliency", grads={"layer": {"kernel": jnp.ones((4, 6))}})


def test_bad_spec_options():
    with pytest.raises(ValueError, match="scope"):
        jp.MaskSpec(scope="world")
    with pytest.raises(ValueError, match="distribution must be 'uniform'"):
        jp.MaskSpec(scope="global", distribution="erk")
    with pytest.raises(ValueError, match="distribution must be one of"):
        jp.prune(_trees()["dict"], 0.5, distribution="gaussian")


def test_random_scores_are_deterministic_given_key():
    params = _trees()["dict"]
    _, m1 = jp.prune(params, 0.5, method="random", key=jax.random.key(3))
    _, m2 = jp.prune(params, 0.5, method="random", key=jax.random.key(3))
    _, m3 = jp.prune(params, 0.5, method="random", key=jax.random.key(4))
    np.testing.assert_array_equal(m1["layer"]["kernel"], m2["layer"]["kernel"])
    assert not np.array_equal(m1["layer"]["kernel"], m3["layer"]["kernel"])


def test_summary_renders_table_and_markdown():
    _, masks = jp.prune(_trees()["dict"], 0.25)
    s = jp.sparsity_summary(masks)
    assert s.total_sparsity == pytest.approx(0.25)
    assert "layer/kernel" in str(s) and "25.0%" in str(s)
    assert s.to_markdown().splitlines()[0].startswith("| layer |")
    assert s.to_json()["total_zeros"] == 6
