"""Exactness and determinism of masks (hypothesis over shapes and sparsities)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune as jp

SETTINGS = settings(max_examples=10, deadline=None)

shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)
sparsities = st.floats(0.0, 0.99, allow_nan=False)


def _scores(shape, seed, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=shape) if ties else rng.normal(size=shape)
    return jnp.asarray(x, jnp.float32)


@SETTINGS
@given(shape=shapes, s=sparsities, seed=st.integers(0, 10**6), ties=st.booleans())
def test_topk_mask_prunes_exactly_round_s_n(shape, s, seed, ties):
    x = _scores(shape, seed, ties)
    mask = jp.topk_mask(x, s)
    n_prune = int(np.round(s * x.size))
    assert mask.shape == x.shape and mask.dtype == jnp.bool_
    assert int((~mask).sum()) == n_prune
    # Every pruned score <= every kept score.
    if 0 < n_prune < x.size:
        assert float(x[~mask].max()) <= float(x[mask].min())


@SETTINGS
@given(shape=shapes, s=sparsities, seed=st.integers(0, 10**6))
def test_topk_ties_break_by_lower_index_first(shape, s, seed):
    x = jnp.zeros(shape)  # all tied: the first round(s*n) flat entries go.
    mask = np.asarray(jp.topk_mask(x, s)).reshape(-1)
    n_prune = int(np.round(s * x.size))
    assert not mask[:n_prune].any() and mask[n_prune:].all()


@SETTINGS
@given(shape_a=shapes, shape_b=shapes, s=sparsities, seed=st.integers(0, 10**6), ties=st.booleans())
def test_global_masks_exact_over_union(shape_a, shape_b, s, seed, ties):
    scores = {"a": _scores(shape_a + (2,), seed, ties), "b": [_scores(shape_b + (3,), seed + 1, ties)]}
    masks = jp.global_masks(scores, s)
    total = scores["a"].size + scores["b"][0].size
    pruned = int((~masks["a"]).sum() + (~masks["b"][0]).sum())
    assert pruned == int(np.round(s * total))
    kept = np.concatenate(
        [np.asarray(scores["a"])[np.asarray(masks["a"])], np.asarray(scores["b"][0])[np.asarray(masks["b"][0])]]
    )
    gone = np.concatenate(
        [np.asarray(scores["a"])[~np.asarray(masks["a"])], np.asarray(scores["b"][0])[~np.asarray(masks["b"][0])]]
    )
    if kept.size and gone.size:
        assert gone.max() <= kept.min()


def test_topk_with_traced_sparsity_matches_static():
    x = _scores((5, 7), 0)
    f = jax.jit(jp.topk_mask)
    for s in (0.0, 0.3, 0.5, 0.9):
        np.testing.assert_array_equal(f(x, jnp.float32(s)), jp.topk_mask(x, s))


@SETTINGS
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    n=st.integers(1, 4),
    seed=st.integers(0, 10**6),
    ties=st.booleans(),
)
def test_nm_has_exactly_n_in_every_group_of_m(rows, groups, n, seed, ties):
    m = 4
    x = _scores((3, groups * m, rows), seed, ties)  # conv-like: axis -2 is the input dim
    mask = jp.nm_masks({"k": x}, n, m)["k"]
    per_group = np.asarray(mask).reshape(3, groups, m, rows).sum(axis=2)
    assert (per_group == n).all()
    # Within each group the kept entries have the largest scores.
    xs = np.asarray(x).reshape(3, groups, m, rows)
    ms = np.asarray(mask).reshape(3, groups, m, rows)
    kept_min = np.where(ms, xs, np.inf).min(axis=2)
    gone_max = np.where(~ms, xs, -np.inf).max(axis=2)
    assert (gone_max <= kept_min).all()


@SETTINGS
@given(
    bh=st.integers(1, 4),
    bw=st.integers(1, 4),
    nr=st.integers(1, 4),
    nc=st.integers(1, 4),
    s=sparsities,
    seed=st.integers(0, 10**6),
)
def test_block_masks_constant_within_blocks_and_exact(bh, bw, nr, nc, s, seed):
    x = _scores((nr * bh, nc * bw), seed)
    mask = np.asarray(jp.block_masks({"k": x}, s, (bh, bw))["k"])
    tiles = mask.reshape(nr, bh, nc, bw)
    assert (tiles.all(axis=(1, 3)) | ~tiles.any(axis=(1, 3))).all()
    assert int((~tiles.all(axis=(1, 3))).sum()) == int(np.round(s * nr * nc))


def test_block_masks_on_conv_kernels_reach_target():
    k = _scores((3, 3, 8, 16), 0)  # viewed as (72, 16)
    mask = jp.block_masks({"conv": {"kernel": k}}, 0.75, (8, 4))["conv"]["kernel"]
    assert float((~mask).mean()) == pytest.approx(0.75)


def test_channel_masks_prune_whole_output_channels():
    k = _scores((3, 3, 4, 10), 1)
    mask = np.asarray(jp.channel_masks({"k": k}, 0.3)["k"])
    per_channel = mask.reshape(-1, 10)
    assert ((per_channel.all(0)) | (~per_channel.any(0))).all()
    assert int((~per_channel.all(0)).sum()) == 3


def test_apply_masks_zeroes_and_passes_none_through():
    params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
    masks = {"dense": {"kernel": jnp.array([[True, False, True], [False, True, True]]), "bias": None}}
    out = jp.apply_masks(params, masks)
    np.testing.assert_array_equal(out["dense"]["kernel"], masks["dense"]["kernel"].astype(float))
    np.testing.assert_array_equal(out["dense"]["bias"], jnp.ones(3))


def test_combine_masks_is_logical_and():
    a = {"w": jnp.array([True, True, False]), "b": None}
    b = {"w": jnp.array([True, False, True]), "b": jnp.array([False])}
    out = jp.combine_masks(a, b)
    assert out["w"].tolist() == [True, False, False] and out["b"].tolist() == [False]


def test_layerwise_masks_per_leaf_sparsities():
    scores = {"a": _scores((10, 10), 0), "b": _scores((4, 5), 1), "c": _scores((3, 3), 2)}
    masks = jp.layerwise_masks(scores, {"a": 0.9, "b": 0.25, "c": None})
    assert int((~masks["a"]).sum()) == 90 and int((~masks["b"]).sum()) == 5 and masks["c"] is None


@pytest.mark.parametrize("seed", range(4))
def test_host_and_device_topk_paths_agree_exactly(seed):
    """The NumPy path (concrete CPU arrays) and the jitted bisection prune the same entries, ties included."""
    from jaxprune._src import topk as M

    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in rng.integers(1, 7, size=rng.integers(1, 4))) for _ in range(3)]
    leaves = [rng.integers(-3, 4, size=s).astype(np.float32) for s in shapes]  # many ties
    leaves[0].flat[0], leaves[-1].flat[-1] = -0.0, 0.0  # signed zeros
    leaves = [jnp.asarray(x) for x in leaves]
    total = sum(int(x.size) for x in leaves)
    assert M.on_host_cpu(leaves, 1)
    for n in sorted({0, 1, total // 3, total // 2, total - 1, total}):
        host = M.host_prune_lowest(leaves, n)
        device = M.select_lowest(tuple(leaves), jnp.asarray([n], jnp.int32), groups=(0,) * 3, n_groups=1)
        assert sum(int((~h).sum()) for h in host) == n
        for h, d in zip(host, device):
            np.testing.assert_array_equal(np.asarray(h), np.asarray(d))
