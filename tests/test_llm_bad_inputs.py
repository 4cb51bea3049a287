"""Hostile inputs to ``jaxprune.llm``: every bad argument gets a ValueError/TypeError naming it, never NaN masks,
silently ignored arguments, changed dtypes or changed container types."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict

import jaxprune.llm as jl

D_IN, D_OUT = 8, 4


def _fn(p, x):
    return x @ p["d"]["kernel"]


@pytest.fixture(scope="module")
def setup():
    p = {"d": {"kernel": jax.random.normal(jax.random.key(0), (D_IN, D_OUT))}}
    x = jax.random.normal(jax.random.key(1), (16, D_IN))
    return p, x, jl.calibrate(_fn, p, [x])


# ---------------------------------------------------------------- calibrate


def test_calibrate_rejects_non_iterable_batches_and_integer_dtype(setup):
    p, x, _ = setup
    with pytest.raises(TypeError, match="calibrate: batches must be an iterable"):
        jl.calibrate(_fn, p, 5)
    with pytest.raises(TypeError, match="calibrate: dtype must be a floating dtype"):
        jl.calibrate(_fn, p, [x], dtype=jnp.int32)


def test_calibrate_nan_batch_names_kernel_and_batch(setup):
    p, x, _ = setup
    with pytest.raises(ValueError, match=r"kernels \['d/kernel'\] are not finite \(first in batch 1\)"):
        jl.calibrate(_fn, p, [x, x.at[3, 2].set(jnp.nan)])


def test_calibrate_all_zero_row_mask_raises(setup):
    p, x, _ = setup
    with pytest.raises(ValueError, match=r"kernels \['d/kernel'\] saw no calibration token rows"):
        jl.calibrate(_fn, p, [x], row_mask=lambda b: jnp.zeros(b.shape[0]))


def test_calibrate_trace_error_names_the_batch(setup):
    p, x, _ = setup
    with pytest.raises(TypeError, match=r"calibrate: fn\(params, batch\) failed on batch 1 \(array shapes \(4, 7\)\)"):
        jl.calibrate(_fn, p, [x, jnp.ones((4, 7))])


def test_model_without_kernels_gives_empty_stats_that_pruning_refuses():
    p = {"b": jnp.ones(D_IN)}
    stats = jl.calibrate(lambda p, x: x * p["b"], p, [jnp.ones((2, D_IN))])
    assert stats == {}
    with pytest.raises(ValueError, match="stats is empty"):
        jl.wanda_masks(p, stats, 0.5)
    with pytest.raises(ValueError, match="stats is empty"):
        jl.sparsegpt(p, stats, 0.5)


def test_calibrate_accepts_batches_of_different_shapes(setup):
    p, x, st = setup
    two = jl.calibrate(_fn, p, [x[:5], x[5:]])["d/kernel"]
    assert two.count == 16
    np.testing.assert_allclose(two.xtx, st["d/kernel"].xtx, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- matrix views


@pytest.mark.parametrize("axes", [(2,), (0, 0), (-1,), ()])
def test_kernel_matrix_rejects_bad_in_axes(axes):
    with pytest.raises(ValueError, match=r"kernel_matrix of shape \(3, 4\): in_axes must be distinct axes in \[0, 2\)"):
        jl.kernel_matrix(jnp.ones((3, 4)), axes)


@pytest.mark.parametrize("m_shape", [(4, 3), (3, 5)])
def test_from_matrix_rejects_a_matrix_of_the_wrong_shape(m_shape):
    with pytest.raises(ValueError, match=r"from_matrix: m must be the \(d_in, d_out\) = \(3, 4\) matrix"):
        jl.from_matrix(jnp.ones(m_shape), (3, 4), (0,))


# ---------------------------------------------------------------- stats that do not fit the params


def _stats(xtx, sq, count):
    return {"d/kernel": jl.LayerStats(jnp.asarray(xtx), jnp.asarray(sq), count)}


@pytest.mark.parametrize(
    "stats, match",
    [
        (_stats(np.eye(D_IN), np.ones(D_IN - 1), 16), r"stats\['d/kernel'\].sq_norms must have shape \(8,\)"),
        (_stats(np.ones((D_IN, 3)), np.ones(D_IN), 16), r"stats\['d/kernel'\].xtx must be a square"),
        (_stats(np.eye(D_IN), np.ones(D_IN), 0), r"stats\['d/kernel'\].count must be an int >= 1"),
        (_stats(np.full((D_IN, D_IN), np.nan), np.ones(D_IN), 16), r"stats\['d/kernel'\] contains NaN/Inf"),
    ],
)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bad_layer_stats_name_the_leaf(setup, stats, match, method):
    p = setup[0]
    with pytest.raises(ValueError, match=match):
        if method == "wanda":
            jl.wanda_masks(p, stats, 0.5)
        else:
            jl.sparsegpt(p, stats, 0.5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_stats_of_another_pytree_raise_instead_of_pruning_nothing(setup, method):
    p, _, st = setup
    variables = {"params": p}  # stats of params, applied to the variables (or the other way round)
    prune = jl.wanda_masks if method == "wanda" else jl.sparsegpt
    with pytest.raises(ValueError, match=r"stats has kernel paths that are not leaves of params: \['d/kernel'\]"):
        prune(variables, st, 0.5)


def test_stats_of_another_model_with_wrong_shape_name_the_leaf(setup):
    st = setup[2]
    with pytest.raises(ValueError, match=r"leaf 'd/kernel' of shape \(6, 4\).*d_in=8"):
        jl.wanda_masks({"d": {"kernel": jnp.ones((6, 4))}}, st, 0.5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_rules_must_map_to_bool(setup, method):
    p, _, st = setup
    prune = jl.wanda_masks if method == "wanda" else jl.sparsegpt
    with pytest.raises(TypeError, match=r"rules must map to bool .* got 0.3 for leaf 'd/kernel'"):
        prune(p, st, 0.5, rules=[("d", 0.3)])


def test_wanda_nan_weights_raise_instead_of_arbitrary_masks(setup):
    p, _, st = setup
    bad = {"d": {"kernel": p["d"]["kernel"].at[0, 0].set(jnp.nan)}}
    with pytest.raises(ValueError, match=r"wanda_masks: leaf 'd/kernel' has NaN/Inf weights"):
        jl.wanda_masks(bad, st, 0.5)


def test_nm_structure_with_m_not_dividing_the_input(setup):
    w = jax.random.normal(jax.random.key(2), (9, 3))
    p = {"d": {"kernel": w}}
    st = jl.calibrate(_fn, p, [jax.random.normal(jax.random.key(3), (12, 9))])
    keep = jl.wanda_masks(p, st, 1 / 3, structure="2:3")["d"]["kernel"]  # 9 = 3 groups of 3: valid
    assert (np.asarray(keep).reshape(3, 3, 3).sum(1) == 2).all()
    with pytest.raises(ValueError, match=r"leaf 'd/kernel': input size 9 is not divisible by M=4"):
        jl.wanda_masks(p, st, 0.5, structure="2:4")


# ---------------------------------------------------------------- sparsegpt settings


@pytest.mark.parametrize("damp", [float("nan"), float("inf"), True, -0.1])
def test_sparsegpt_rejects_bad_damp(setup, damp):
    p, _, st = setup
    with pytest.raises(ValueError, match="damp must be a finite float >= 0"):
        jl.sparsegpt(p, st, 0.5, damp=damp)


def test_sparsegpt_rejects_bool_block_size(setup):
    p, _, st = setup
    with pytest.raises(ValueError, match="block_size must be a positive int, got True"):
        jl.sparsegpt(p, st, 0.5, block_size=True)


def test_sparsegpt_refuses_integer_kernels(setup):
    _, _, st = setup
    p = {"d": {"kernel": jnp.ones((D_IN, D_OUT), jnp.int32)}}
    with pytest.raises(TypeError, match=r"sparsegpt: leaf 'd/kernel' has dtype int32"):
        jl.sparsegpt(p, st, 0.5)


@pytest.mark.parametrize(
    "masks, kw, err, match",
    [
        ({"x": jnp.ones((D_IN, D_OUT), bool)}, {}, ValueError, r"masks do not have the structure of params"),
        ({"d": {"kernel": jnp.ones((D_OUT, D_IN), bool)}}, {}, ValueError, r"masks leaf 'd/kernel' has shape"),
        ({"d": {"kernel": jnp.full((D_IN, D_OUT), 0.7)}}, {}, ValueError, r"masks leaf 'd/kernel' must be boolean"),
        ({"d": {"kernel": jnp.ones((D_IN, D_OUT), bool)}}, {"structure": "2:4"}, ValueError, "not used with masks"),
    ],
)
def test_sparsegpt_bad_masks(setup, masks, kw, err, match):
    p, _, st = setup
    with pytest.raises(err, match=match):
        jl.sparsegpt(p, st, 0.5, masks=masks, **kw)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_pruning_keeps_dtype_and_does_not_touch_the_input(setup, dtype):
    p, _, st = setup
    w = np.asarray(p["d"]["kernel"].astype(dtype))
    low = {"d": {"kernel": w}}
    new, keep = jl.sparsegpt(low, st, 0.5, block_size=4)
    assert new["d"]["kernel"].dtype == dtype and keep["d"]["kernel"].dtype == jnp.bool_
    assert int(keep["d"]["kernel"].sum()) == D_IN * D_OUT // 2
    np.testing.assert_array_equal(low["d"]["kernel"], w)  # the input is not modified
    assert jl.wanda_masks(low, st, 0.5)["d"]["kernel"].dtype == jnp.bool_


def test_masks_and_params_keep_the_container_type(setup):
    p, x, _ = setup
    frozen = FrozenDict(p)
    st = jl.calibrate(_fn, frozen, [x])
    assert isinstance(jl.wanda_masks(frozen, st, 0.5), FrozenDict)
    new, keep = jl.sparsegpt(frozen, st, 0.5, block_size=4)
    assert isinstance(new, FrozenDict) and isinstance(keep, FrozenDict)

    graph, state = nnx.split(nnx.Linear(D_IN, D_OUT, rngs=nnx.Rngs(0)))
    st = jl.calibrate(lambda s, b: nnx.merge(graph, s)(b), state, [x])
    assert list(st) == ["kernel"]
    new, keep = jl.sparsegpt(state, st, 0.5, block_size=4)
    assert isinstance(new, nnx.State) and isinstance(keep, nnx.State)
    assert nnx.merge(graph, new)(x).shape == (16, D_OUT)


def test_sparsegpt_sequential_fails_fast_on_bad_arguments(setup):
    p, x, _ = setup
    stages = [lambda p, h: _fn(p, h)]
    with pytest.raises(ValueError, match="fn_layers is empty"):
        jl.sparsegpt_sequential([], p, [x], 0.5)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['blocksize'\]"):
        jl.sparsegpt_sequential(stages, p, [x], 0.5, blocksize=4)
    with pytest.raises(ValueError, match="sparsity must be in"):
        jl.sparsegpt_sequential(stages, p, [x], 1.5)
    with pytest.raises(ValueError, match="none of the 1 stages multiplies a calibratable kernel"):
        jl.sparsegpt_sequential([lambda p, h: h], p, [x], 0.5)


# ---------------------------------------------------------------- depth


P_BLOCKS = {"block_0": {"w": 0}, "block_1": {"w": 1}, "block_2": {"w": 2}, "head": 3}


@pytest.mark.parametrize("blocks", [[1.5], ["1"], [True]])
def test_remove_blocks_params_rejects_non_int_indices(blocks):
    with pytest.raises(TypeError, match="remove_blocks: block indices must be ints"):
        jl.remove_blocks_params(P_BLOCKS, blocks)


@pytest.mark.parametrize("blocks", [None, 1])
def test_remove_blocks_params_rejects_non_iterable_blocks(blocks):
    with pytest.raises(TypeError, match="remove_blocks: blocks must be an iterable of block indices"):
        jl.remove_blocks_params(P_BLOCKS, blocks)


@pytest.mark.parametrize(
    "blocks, match", [([3], r"indices \[3\] out of range"), ([-1], r"indices \[-1\] out of range")]
)
def test_remove_blocks_params_out_of_range(blocks, match):
    with pytest.raises(ValueError, match=match):
        jl.remove_blocks_params(P_BLOCKS, blocks)


def test_remove_blocks_params_duplicates_numpy_and_frozendict():
    assert jl.remove_blocks_params(P_BLOCKS, [1, 1]) == jl.remove_blocks_params(P_BLOCKS, np.array([1]))
    out = jl.remove_blocks_params(FrozenDict({"params": P_BLOCKS}), [0])
    assert isinstance(out, FrozenDict) and out["params"]["block_0"]["w"] == 1 and "block_2" not in out["params"]


@pytest.mark.parametrize("blocks_tree", [{}, {"w": jnp.float32(1)}, {"w": jnp.ones(3), "v": jnp.ones(2)}])
def test_remove_blocks_params_scanned_stack_needs_one_leading_axis(blocks_tree):
    with pytest.raises(ValueError, match="leaves under 'blocks' must all have the same leading"):
        jl.remove_blocks_params({"blocks": blocks_tree}, [0])


def test_block_influence_bad_hidden_states_and_row_masks():
    x = jnp.ones((1, 2, 3))
    three = lambda p, t: [t, 2 * t, -2 * t]  # noqa: E731
    with pytest.raises(ValueError, match="hidden_fn must return the L \\+ 1 >= 2 hidden states"):
        jl.block_influence(lambda p, t: t, None, [x])
    with pytest.raises(ValueError, match=r"row_mask\(batch\) has shape \(5,\), expected .* \(1, 2\)"):
        jl.block_influence(three, None, [x], row_mask=lambda b: jnp.ones(5))
    with pytest.raises(ValueError, match="row_mask selected no token"):
        jl.block_influence(three, None, [x], row_mask=lambda b: jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"scores of blocks \[0, 1\] are not finite"):
        jl.block_influence(three, None, [x * jnp.nan])


@pytest.mark.parametrize("batch", [jnp.zeros((1, 1), jnp.int32), jnp.zeros(3, jnp.int32), jnp.zeros((1, 3))])
def test_ablation_scores_checks_lm_batches(batch):
    f = lambda p, t, skip: jnp.zeros(t.shape + (4,))  # noqa: E731
    with pytest.raises(ValueError, match="ablation_scores: batch 0 must be integer tokens of shape"):
        jl.ablation_scores(f, None, [batch], 2)


# ---------------------------------------------------------------- evaluation / finetuning


def _uniform(p, t):
    return jnp.zeros(t.shape + (16,))


def test_perplexity_bad_batches():
    with pytest.raises(TypeError, match="perplexity: batch 0 must hold integer token ids"):
        jl.perplexity(_uniform, {}, [jnp.zeros((2, 5))])
    with pytest.raises(TypeError, match="perplexity: batches must be an iterable"):
        jl.perplexity(_uniform, {}, 5)
    with pytest.raises(ValueError, match="perplexity: no batches"):
        jl.perplexity(_uniform, {}, [])
    for bad in (-1, 16):
        with pytest.raises(ValueError, match=r"perplexity: batch 1 has target token ids outside \[0, 16\)"):
            jl.perplexity(_uniform, {}, [jnp.zeros((2, 5), jnp.int32), jnp.full((2, 5), bad, jnp.int32)])
    with pytest.raises(ValueError, match=r"must return logits \(batch, seq, vocab\)"):
        jl.perplexity(lambda p, t: jnp.zeros((3, 16)), {}, [jnp.zeros((2, 5), jnp.int32)])
    with pytest.warns(UserWarning, match="perplexity: the loss on batch 0 is not finite"):
        jl.perplexity(lambda p, t: jnp.full(t.shape + (4,), jnp.nan), {}, [jnp.zeros((2, 5), jnp.int32)])


def test_lm_loss_rejects_a_1d_batch():
    with pytest.raises(ValueError, match=r"lm_loss: batch must have shape \(batch, seq_len \+ 1\)"):
        jl.lm_loss(_uniform, {}, jnp.zeros(5, jnp.int32))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(learning_rate=float("nan")), "learning_rate must be a finite number"),
        (dict(learning_rate=-1.0), "learning_rate must be a finite number"),
        (dict(warmup=-3), "warmup must be an int >= 0"),
        (dict(distill_weight=2.0), "distill_weight must be a finite number in"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(masks={"c": jnp.ones(4, bool)}), "finetune_lm: masks do not have the structure of params"),
        (dict(masks={"b": jnp.ones(3, bool)}), "finetune_lm: masks leaf 'b' has shape"),
        (dict(masks={"b": jnp.full(4, 0.5)}), "finetune_lm: masks leaf 'b' must be a boolean keep-mask"),
    ],
)
def test_finetune_lm_bad_settings(kw, match):
    f = lambda p, t: jnp.broadcast_to(p["b"], t.shape + (4,))  # noqa: E731
    with pytest.raises(ValueError, match=match):
        jl.finetune_lm(f, {"b": jnp.zeros(4)}, [jnp.zeros((2, 3), jnp.int32)] * 2, steps=2, **kw)


def test_embedding_fidelity_needs_at_least_one_row():
    with pytest.raises(ValueError, match=r"embedding_fidelity: expected two \(n, d\) arrays .* n >= 1"):
        jl.embedding_fidelity(np.zeros((0, 4)), np.zeros((0, 4)))


def test_recipe_file_with_a_repeated_field(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"method": "wanda", "method": "depth"}')
    with pytest.raises(ValueError, match=r"repeats field\(s\) \['method'\]"):
        jl.load_llm_recipe(path)
    path.write_text(json.dumps({"method": "wanda", "ignore": ["("]}))
    with pytest.raises(ValueError, match="recipe field 'ignore': invalid regex"):
        jl.load_llm_recipe(path)


# ---------------------------------------------------------------- flap (calibrated width pruning)


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="down")(jax.nn.relu(nn.Dense(8, name="up")(x)))


@pytest.fixture(scope="module")
def mlp():
    m = _Mlp()
    v = m.init(jax.random.key(0), jnp.ones((1, 4)))
    xs = [jax.random.normal(jax.random.key(1), (16, 4))]
    return (lambda v, x: m.apply(v, x)), v, xs


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(kinds="units"), ValueError, "flap_prune: kinds must be a list of group kinds"),
        (dict(kinds=("bogus",)), ValueError, "flap_prune: kinds must be a list of group kinds"),
        (dict(compensate="down"), TypeError, "flap_prune: compensate must be a list of regexes"),
        (dict(compensate=["("]), ValueError, "flap_prune: compensate: invalid regex"),
        (dict(method="magnitude"), ValueError, "flap_prune: method must be 'fluctuation' or 'wanda'"),
    ],
)
def test_flap_prune_bad_arguments(mlp, kw, err, match):
    apply, v, xs = mlp
    with pytest.raises(err, match=match):
        jl.flap_prune(apply, v, xs[0], xs, 0.5, **kw)


def test_flap_prune_nan_batch_names_the_kernels(mlp):
    apply, v, xs = mlp
    with pytest.raises(ValueError, match=r"input_moments: the inputs of kernels \['params/down/kernel'"):
        jl.flap_prune(apply, v, xs[0], [xs[0] * jnp.nan], 0.5)


def test_flap_prune_keeps_frozendict_and_dtype(mlp):
    apply, v, xs = mlp
    frozen = FrozenDict(jax.tree.map(lambda a: a.astype(jnp.bfloat16), v))
    xs = [x.astype(jnp.bfloat16) for x in xs]
    small, _, info = jl.flap_prune(apply, frozen, xs[0], xs, 0.5, recalibrate=False)
    assert isinstance(small, FrozenDict)
    assert small["params"]["down"]["kernel"].shape == (4, 3)
    assert {a.dtype for a in jax.tree.leaves(small)} == {jnp.dtype(jnp.bfloat16)}
    assert info["compensated"] == ["params/down/kernel"]


def test_compensate_biases_bad_arguments(mlp):
    apply, v, xs = mlp
    with pytest.raises(TypeError, match="compensate_biases: plan must be a PrunePlan"):
        jl.compensate_biases(v, v, None, {})
    _, plan, _ = jl.flap_prune(apply, v, xs[0], xs, 0.5, compensate=False)
    with pytest.raises(TypeError, match="compensate_biases: compensate must be a list of regexes"):
        jl.compensate_biases(v, v, plan, {}, compensate="down")


def test_input_moments_row_mask_that_fits_no_layer(mlp):
    apply, v, _ = mlp
    x = jnp.ones((2, 5, 4))
    with pytest.raises(ValueError, match=r"input_moments: row_mask\(batch\) has shape \(5, 2\).*\(2, 5\)"):
        jl.input_moments(apply, v, [x], row_mask=lambda b: jnp.ones((5, 2)))
    assert (
        jl.input_moments(apply, v, [x], row_mask=lambda b: jnp.ones((2, 5)).at[0].set(0))["params/up/kernel"].count == 5
    )


def test_finetune_lm_masks_of_another_container_type():
    f = lambda p, t: jnp.broadcast_to(p["b"], t.shape + (4,))  # noqa: E731
    params = FrozenDict({"b": jnp.ones(4)})
    masks = {"b": jnp.array([True, False, True, False])}
    out, _ = jl.finetune_lm(f, params, [jnp.zeros((2, 3), jnp.int32)] * 2, steps=2, learning_rate=0.1, masks=masks)
    assert isinstance(out, FrozenDict)
    np.testing.assert_array_equal(np.asarray(out["b"])[[1, 3]], 0.0)


def test_flap_prune_warns_when_nothing_is_pruned(mlp):
    apply, v, xs = mlp
    with pytest.warns(UserWarning, match=r"flap_prune: ratio=0.5 but the plan prunes nothing"):
        small, _, _ = jl.flap_prune(apply, v, xs[0], xs, 0.5, kinds=("heads",))
    assert small["params"]["up"]["kernel"].shape == v["params"]["up"]["kernel"].shape
