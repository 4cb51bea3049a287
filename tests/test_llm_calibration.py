"""calibrate: X^T X of every matmul kernel's input, captured from the jaxpr (Linen, NNX, plain JAX)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from jaxprune._src.llm.calibration import (
    LayerStats,
    calibrate,
    from_matrix,
    kernel_in_axes,
    kernel_matrix,
    reconstruction_error,
)


def _xtx(x, d_in):
    x2 = np.asarray(x, np.float64).reshape(-1, d_in)
    return x2.T @ x2


def _batches(shapes, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s) for k, s in zip(keys, shapes)]


class _TwoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="b")(nn.relu(nn.Dense(5, name="a")(x)))


def test_linen_dense_accumulates_over_batches_of_different_shapes():
    model = _TwoDense()
    v = model.init(jax.random.key(0), jnp.ones((1, 4)))
    xs = _batches([(2, 6, 4), (3, 4)])  # two shapes: two traces, one accumulation
    stats = calibrate(model.apply, v, xs)
    assert set(stats) == {"params/a/kernel", "params/b/kernel"}
    s = stats["params/a/kernel"]
    want = _xtx(xs[0], 4) + _xtx(xs[1], 4)
    np.testing.assert_allclose(s.xtx, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.sq_norms, np.diag(want), rtol=1e-5)
    assert s.count == 15 and s.in_axes == (0,) and s.xtx.dtype == jnp.float32
    # the second layer sees relu(first layer): its stats are those of the hidden activation
    h = [jax.nn.relu(x @ v["params"]["a"]["kernel"] + v["params"]["a"]["bias"]) for x in xs]
    np.testing.assert_allclose(stats["params/b/kernel"].xtx, _xtx(h[0], 5) + _xtx(h[1], 5), rtol=1e-4, atol=1e-4)


def test_nnx_linear_through_split_merge():
    lin = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(lin)
    xs = _batches([(5, 4), (5, 4)], seed=1)
    stats = calibrate(lambda st, x: nnx.merge(graphdef, st)(x), state, xs)
    assert list(stats) == ["kernel"]
    np.testing.assert_allclose(stats["kernel"].xtx, _xtx(xs[0], 4) + _xtx(xs[1], 4), rtol=1e-5, atol=1e-5)
    assert stats["kernel"].count == 10


def test_plain_einsum_bf16_and_tied_embedding_transpose():
    params = {"w": jax.random.normal(jax.random.key(2), (4, 2, 3)), "emb": jax.random.normal(jax.random.key(3), (7, 6))}

    def fn(p, x):  # einsum on a bf16 copy of a (d_in, heads, head_dim) kernel, then a tied "LM head"
        h = jnp.einsum("bsd,dho->bsho", x.astype(jnp.bfloat16), p["w"].astype(jnp.bfloat16)).astype(jnp.float32)
        h = h.reshape(h.shape[:2] + (6,))
        return h @ p["emb"].T + p["emb"][0, 0]

    xs = _batches([(2, 3, 4)], seed=4)
    stats = calibrate(fn, params, xs)
    x = np.asarray(xs[0].astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(stats["w"].xtx, _xtx(x, 4), rtol=1e-5, atol=1e-5)
    assert stats["w"].in_axes == (0,)
    assert stats["emb"].in_axes == (1,) and stats["emb"].xtx.shape == (6, 6)  # x @ E.T contracts E's axis 1
    h = np.asarray(fn({"w": params["w"], "emb": jnp.eye(7, 6)}, xs[0]))[..., :6] - np.eye(7, 6)[0, 0]
    np.testing.assert_allclose(stats["emb"].xtx, _xtx(h, 6), rtol=2e-2, atol=2e-2)


def test_same_shaped_matmuls_get_their_own_inputs():
    params = {"a": jax.random.normal(jax.random.key(6), (4, 4)), "b": jax.random.normal(jax.random.key(7), (4, 4))}
    x = jax.random.normal(jax.random.key(8), (5, 4))
    mm = jax.jit(lambda x, w: x @ w)  # one cached inner jaxpr, called twice with different operands
    stats = calibrate(lambda p, x: mm(jnp.tanh(mm(x, p["a"])), p["b"]), params, [x])
    np.testing.assert_allclose(stats["a"].xtx, _xtx(x, 4), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["b"].xtx, _xtx(jnp.tanh(x @ params["a"]), 4), rtol=1e-4, atol=1e-4)


def test_dense_general_two_input_axes_and_row_mask():
    model = nn.DenseGeneral(5, axis=(-2, -1))
    x = jax.random.normal(jax.random.key(5), (2, 3, 2, 4))  # (batch, seq, heads, head_dim)
    v = model.init(jax.random.key(0), x)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    stats = calibrate(model.apply, v, [x], row_mask=lambda b: mask)
    s = stats["params/kernel"]
    assert s.in_axes == (0, 1) and s.count == 3
    rows = np.asarray(x).reshape(6, 8)[np.asarray(mask).reshape(-1) > 0]
    np.testing.assert_allclose(s.xtx, rows.T @ rows, rtol=1e-5, atol=1e-5)
    assert kernel_in_axes(v["params"]["kernel"].shape, s) == (0, 1)
    with pytest.raises(ValueError, match="row_mask has shape"):
        calibrate(model.apply, v, [x], row_mask=lambda b: jnp.ones((2,)))


def test_kernel_matrix_round_trip_and_inferred_axes():
    w = jnp.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    for axes in [(0,), (0, 1), (1,), (2,), (0, 2)]:
        m = kernel_matrix(w, axes)
        assert m.shape[0] == int(np.prod([w.shape[a] for a in axes]))
        np.testing.assert_array_equal(from_matrix(m, w.shape, axes), w)
    st = LayerStats(jnp.zeros((6, 6)), jnp.zeros(6), 1)  # in_axes None: leading axes multiplying to d_in
    assert kernel_in_axes((2, 3, 4), st) == (0, 1)
    with pytest.raises(ValueError, match="'k'.*d_in=6"):
        kernel_in_axes((4, 6), st, "k")


def test_rules_select_and_unsupported_uses_are_named():
    params = {"conv": jnp.ones((3, 3, 1, 4)), "dense": jnp.ones((4, 2))}  # grouped (depthwise-like) conv

    def fn(p, x):
        y = jax.lax.conv_general_dilated(
            x, p["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
        )
        return y.mean((1, 2)) @ p["dense"]

    x = jnp.ones((1, 5, 5, 2))
    with pytest.raises(ValueError, match=r"'conv' is a grouped/depthwise convolution kernel"):
        calibrate(fn, params, [x])
    stats = calibrate(fn, params, [x], rules=[("conv", False)])
    assert list(stats) == ["dense"]

    def looped(p, x):  # a while loop's trip count is unknown: its kernels are refused by name
        return jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (c[0] @ p["w"], c[1] + 1), (x, 0))[0]

    with pytest.raises(ValueError, match=r"'w' is used inside lax.while"):
        calibrate(looped, {"w": jnp.ones((3, 3))}, [jnp.ones((1, 3))])
    # scanned stacks are calibrated per layer (tests/test_llm_scanned.py)
    st = calibrate(
        lambda p, x: jax.lax.scan(lambda h, w: (h @ w, None), x, p["stack"])[0],
        {"stack": jnp.ones((2, 3, 3))},
        [jnp.ones((1, 3))],
    )
    assert st["stack"].layers == 2 and st["stack"].xtx.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="batches is empty"):
        calibrate(lambda p, x: x @ p["dense"], params, [])


def test_reconstruction_error_equals_the_output_error_on_the_calibration_inputs():
    """From X^T X alone: ||X W - X W'||^2 / ||X W||^2 of a multi-axis (heads, head_dim, d) kernel, per leaf."""
    model = nn.DenseGeneral(5, axis=(-2, -1))
    xs = _batches([(2, 3, 2, 4), (1, 3, 2, 4)], seed=9)
    v = model.init(jax.random.key(1), xs[0])
    stats = calibrate(model.apply, v, xs)
    w = np.asarray(v["params"]["kernel"], np.float64)
    w2 = w * (np.random.default_rng(0).uniform(size=w.shape) > 0.5)
    pruned = {"params": {"kernel": jnp.asarray(w2, jnp.float32), "bias": v["params"]["bias"]}}
    err = reconstruction_error(v, pruned, stats)
    assert set(err) == {"params/kernel"}  # the bias is not calibrated
    x = np.concatenate([np.asarray(b, np.float64).reshape(-1, 8) for b in xs])
    want = np.sum((x @ (w - w2).reshape(8, 5)) ** 2) / np.sum((x @ w.reshape(8, 5)) ** 2)
    np.testing.assert_allclose(err["params/kernel"], want, rtol=1e-4)
    assert reconstruction_error(v, v, stats)["params/kernel"] == 0.0
    with pytest.raises(ValueError, match="'params/kernel'.*shape"):
        reconstruction_error(v, {"params": {"kernel": jnp.zeros((2, 4, 4)), "bias": v["params"]["bias"]}}, stats)
    with pytest.raises(TypeError, match="calibrate"):
        reconstruction_error(v, v, {"params/kernel": 1.0})
