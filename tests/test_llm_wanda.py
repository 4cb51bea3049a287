"""Wanda masks equal a direct NumPy implementation of the paper's rule; N:M exact; selection rules."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune._src.llm.calibration import LayerStats, calibrate
from jaxprune._src.llm.wanda import per_column_prune, wanda_masks
from jaxprune._src.masks import layerwise_masks, nm_masks


def _numpy_wanda(w_out_in, x, sparsity=None, nm=None):
    """The paper's rule on a PyTorch-layout (d_out, d_in) weight and inputs x (n, d_in)."""
    metric = np.abs(w_out_in) * np.sqrt((x.astype(np.float64) ** 2).sum(0))[None, :]
    keep = np.ones_like(metric, bool)
    if nm is None:
        k = int(round(sparsity * metric.shape[1]))
        idx = np.argsort(metric, axis=1, kind="stable")[:, :k]
        np.put_along_axis(keep, idx, False, axis=1)
    else:
        n, m = nm
        for g in range(0, metric.shape[1], m):
            idx = np.argsort(metric[:, g : g + m], axis=1, kind="stable")[:, : m - n] + g
            np.put_along_axis(keep, idx, False, axis=1)
    return keep


def _stats(x, in_axes):
    x = np.asarray(x, np.float64)
    return LayerStats(jnp.asarray(x.T @ x, jnp.float32), jnp.asarray((x**2).sum(0), jnp.float32), len(x), in_axes)


@settings(max_examples=8, deadline=None)
@given(
    d_in=st.sampled_from([8, 12, 16]),
    d_out=st.integers(1, 5),
    sparsity=st.sampled_from([0.25, 0.5, 0.7]),
    seed=st.integers(0, 2**16),
)
def test_unstructured_equals_numpy_rule(d_in, d_out, sparsity, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d_in, d_out)).astype(np.float32)  # Flax (d_in, d_out)
    x = (rng.normal(size=(20, d_in)) * rng.uniform(0.1, 3, d_in)).astype(np.float32)
    masks = wanda_masks({"k": jnp.asarray(w)}, {"k": _stats(x, (0,))}, sparsity)
    np.testing.assert_array_equal(masks["k"], _numpy_wanda(w.T, x, sparsity).T)


@pytest.mark.parametrize("structure,nm", [("2:4", (2, 4)), ("4:8", (4, 8))])
def test_nm_equals_numpy_rule_and_is_exact(structure, nm):
    rng = np.random.default_rng(7)
    w = rng.normal(size=(16, 6)).astype(np.float32)
    x = (rng.normal(size=(30, 16)) * rng.uniform(0.1, 3, 16)).astype(np.float32)
    keep = np.asarray(wanda_masks({"k": jnp.asarray(w)}, {"k": _stats(x, (0,))}, 0.5, structure=structure)["k"])
    np.testing.assert_array_equal(keep, _numpy_wanda(w.T, x, nm=nm).T)
    assert np.all(keep.reshape(16 // nm[1], nm[1], 6).sum(1) == nm[0])


def test_multi_axis_kernels_use_the_calibrated_input_axes():
    rng = np.random.default_rng(8)
    q = rng.normal(size=(8, 2, 3)).astype(np.float32)  # (d, heads, head_dim): input axis 0
    out = rng.normal(size=(2, 4, 8)).astype(np.float32)  # (heads, head_dim, d): input axes (0, 1)
    xq, xo = rng.normal(size=(10, 8)), rng.normal(size=(10, 8))
    params = {"q": jnp.asarray(q), "out": jnp.asarray(out), "bias": jnp.zeros(8), "free": jnp.ones((4, 4))}
    stats = {"q": _stats(xq, (0,)), "out": _stats(xo, None)}
    masks = wanda_masks(params, stats, 0.5)
    np.testing.assert_array_equal(masks["q"], _numpy_wanda(q.reshape(8, 6).T, xq, 0.5).T.reshape(8, 2, 3))
    np.testing.assert_array_equal(masks["out"], _numpy_wanda(out.reshape(8, 8).T, xo, 0.5).T.reshape(2, 4, 8))
    assert masks["bias"] is None and masks["free"] is None  # not calibrated: not pruned
    only_q = wanda_masks(params, stats, 0.5, rules=[("out", False)])
    assert only_q["out"] is None and only_q["q"] is not None


def test_errors():
    params = {"k": jnp.ones((6, 2))}
    stats = {"k": _stats(np.ones((3, 6)), (0,))}
    with pytest.raises(ValueError, match="'k'.*not divisible by M=4"):
        wanda_masks(params, stats, 0.5, structure="2:4")
    with pytest.raises(ValueError, match="means sparsity 0.5"):
        wanda_masks(params, stats, 0.6, structure="4:8")
    with pytest.raises(ValueError):
        wanda_masks(params, stats, 1.5)
    with pytest.raises(TypeError, match="calibrate"):
        wanda_masks(params, {"k": np.ones(3)}, 0.5)


def _recon_err(x, w, keep):
    """||X W - X (W * keep)||^2 (float64): the layer output reconstruction error on the calibration inputs."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    return float(np.sum((x @ (w * ~np.asarray(keep))) ** 2))


def _magnitude_per_output(w, sparsity=None, nm=None):
    a = jnp.abs(jnp.asarray(w))
    return np.asarray(per_column_prune(a, sparsity) if nm is None else nm_masks({"w": a}, *nm, axis=0)["w"])


@settings(max_examples=12, deadline=None)
@given(
    d_in=st.sampled_from([8, 16, 24]),
    d_out=st.integers(1, 6),
    structure=st.sampled_from([None, "2:4"]),
    log_spread=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_wanda_is_the_best_per_output_mask_for_uncorrelated_features(d_in, d_out, structure, log_spread, seed):
    """With uncorrelated input features (X^T X diagonal) Wanda's rule minimizes ||X W - X W_pruned||^2 over all
    masks with the same per-output count (or N:M group) -- so it never loses to per-output magnitude, and wins
    when the feature scales differ."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d_in, d_out))
    scales = 10.0 ** rng.uniform(-log_spread / 2, log_spread / 2, d_in)
    q, _ = np.linalg.qr(rng.normal(size=(2 * d_in, d_in)))  # orthonormal columns: X^T X = diag(scales^2)
    x = q * scales
    keep_w = np.asarray(
        wanda_masks({"k": jnp.asarray(w, jnp.float32)}, {"k": _stats(x, (0,))}, 0.5, structure=structure)["k"]
    )
    keep_m = _magnitude_per_output(w, 0.5, None if structure is None else (2, 4))
    assert keep_w.sum() == keep_m.sum()
    err_w, err_m = _recon_err(x, w, keep_w), _recon_err(x, w, keep_m)
    assert err_w <= err_m * (1 + 1e-4) + 1e-9
    # the exact optimum of each output's diagonal problem: prune the smallest W_ij^2 * s_i^2
    cost = (w * scales[:, None]) ** 2
    if structure is None:
        best = np.sort(cost, axis=0)[: d_in // 2].sum()
    else:
        best = np.sort(cost.reshape(d_in // 4, 4, d_out), axis=1)[:, :2].sum()
    np.testing.assert_allclose(err_w, best, rtol=1e-4, atol=1e-9)


def test_equal_feature_scales_make_wanda_per_output_magnitude():
    """When every input feature has the same norm, |W| * ||X|| ranks like |W|: Wanda = per-output magnitude."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 5))
    q, _ = np.linalg.qr(rng.normal(size=(40, 16)))
    stats = {"k": _stats(q * 2.0, (0,))}
    for structure, nm in ((None, None), ("2:4", (2, 4))):
        keep = wanda_masks({"k": jnp.asarray(w, jnp.float32)}, stats, 0.5, structure=structure)["k"]
        np.testing.assert_array_equal(keep, _magnitude_per_output(w, 0.5, nm))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_outlier_features_make_wanda_beat_layerwise_magnitude(seed):
    """Correlated calibration inputs with a few large-magnitude features (as in LLMs), run through
    ``calibrate``: Wanda's layer output error is well below magnitude's (per layer or per output) at 50% and 2:4."""
    rng = np.random.default_rng(seed)
    d_in, d_out, n = 32, 12, 200
    scales = np.ones(d_in)
    scales[rng.choice(d_in, 3, replace=False)] = 20.0  # outlier features
    mix = np.eye(d_in) + 0.3 * rng.normal(size=(d_in, d_in)) / np.sqrt(d_in)
    x = (rng.normal(size=(n, d_in)) @ mix) * scales
    w = rng.normal(size=(d_in, d_out))
    params = {"k": jnp.asarray(w, jnp.float32)}
    stats = calibrate(
        lambda p, xb: xb @ p["k"], params, [jnp.asarray(x[:100], jnp.float32), jnp.asarray(x[100:], jnp.float32)]
    )
    for structure, nm in ((None, None), ("2:4", (2, 4))):
        err_w = _recon_err(x, w, wanda_masks(params, stats, 0.5, structure=structure)["k"])
        err_out = _recon_err(x, w, _magnitude_per_output(w, 0.5, nm))
        layer = (
            layerwise_masks({"k": jnp.abs(params["k"])}, 0.5)["k"] if nm is None else _magnitude_per_output(w, 0.5, nm)
        )
        err_layer = _recon_err(x, w, layer)
        assert err_w < 0.7 * min(err_out, err_layer), (structure, err_w, err_out, err_layer)
