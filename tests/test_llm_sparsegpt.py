"""SparseGPT: OBS reconstruction (closed forms), lower error than magnitude/Wanda, exact N:M, sequential mode."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._src.llm.calibration import calibrate
from jaxprune._src.llm.sparsegpt import sparsegpt, sparsegpt_sequential
from jaxprune._src.llm.wanda import per_column_prune, wanda_masks

D_IN, D_OUT, N = 16, 6, 96


def _data(seed=0):
    """Correlated inputs with unequal feature scales (so magnitude, Wanda and SparseGPT differ)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, D_IN))
    mix = np.eye(D_IN) + 0.5 * rng.normal(size=(D_IN, D_IN)) / np.sqrt(D_IN)
    x = (z @ mix) * rng.uniform(0.2, 3.0, size=D_IN)
    w = rng.normal(size=(D_IN, D_OUT))
    return jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)


def _stats(x, w):
    p = {"w": w}
    return p, calibrate(lambda p, x: x @ p["w"], p, [x[: N // 2], x[N // 2 :]])


def _sequential_obs(x, w, prune):
    """Reference: for each output unit, inputs left to right; a pruned input is zeroed and the later inputs
    take the exact OBS update with the explicit inverse of the trailing sub-Hessian (no Cholesky, no blocks)."""
    h = np.asarray(x, np.float64).T @ np.asarray(x, np.float64)
    out = np.array(w, np.float64)
    for j in range(out.shape[1]):
        col = out[:, j]
        for i in range(len(col)):
            if prune[i, j]:
                hinv = np.linalg.inv(h[i:, i:])
                col[i:] -= col[i] / hinv[0, 0] * hinv[0]
                col[i] = 0.0
    return out


@pytest.mark.parametrize("block_size", [16, 3])  # one block; several blocks with a padded last one
def test_fixed_mask_equals_sequential_obs_and_least_squares(block_size):
    x, w = _data()
    p, stats = _stats(x, w)
    rng = np.random.default_rng(1)
    prune = rng.random((D_IN, D_OUT)) < 0.5
    lead = np.arange(D_IN)[:, None] < np.array([3, 5, 8, 2, 6, 7])[None]  # pruned inputs first in every unit
    prune[:, :3] = lead[:, :3]
    new, keep = sparsegpt(p, stats, 0.5, masks={"w": jnp.asarray(~prune)}, block_size=block_size, damp=0.0)
    np.testing.assert_array_equal(keep["w"], ~prune)
    assert np.all(np.asarray(new["w"])[prune] == 0)
    np.testing.assert_allclose(new["w"], _sequential_obs(x, w, prune), rtol=2e-3, atol=2e-3)
    # when a unit's pruned inputs all come before its kept ones, the result is the least-squares optimum
    for j in range(3):
        kept = ~prune[:, j]
        opt = np.linalg.lstsq(np.asarray(x)[:, kept], np.asarray(x @ w[:, j]), rcond=None)[0]
        np.testing.assert_allclose(np.asarray(new["w"])[kept, j], opt, rtol=2e-3, atol=2e-3)


def _err(x, w, w2):
    return float(jnp.linalg.norm(x @ w - x @ w2))


@pytest.mark.parametrize("structure,sparsity", [(None, 0.5), ("2:4", 0.5)])
def test_adaptive_masks_beat_magnitude_and_wanda(structure, sparsity):
    x, w = _data(seed=2)
    p, stats = _stats(x, w)
    new, keep = sparsegpt(p, stats, sparsity, structure=structure, block_size=8)
    k = np.asarray(keep["w"])
    assert k.dtype == bool and np.all(np.asarray(new["w"])[~k] == 0)
    if structure is None:
        assert k.sum() == D_IN * D_OUT // 2  # round(s * block size) pruned in each of the 2 blocks
        mag = per_column_prune(jnp.abs(w), sparsity)
    else:
        groups = k.reshape(D_IN // 4, 4, D_OUT).sum(axis=1)
        assert np.all(groups == 2)
        mag = jnp.asarray(
            jnp.abs(w).reshape(D_IN // 4, 4, D_OUT) >= jnp.sort(jnp.abs(w).reshape(-1, 4, D_OUT), 1)[:, 2:3]
        )
        mag = mag.reshape(D_IN, D_OUT)
    wanda = wanda_masks(p, stats, sparsity, structure=structure)["w"]
    e_sgpt, e_mag, e_wanda = _err(x, w, new["w"]), _err(x, w, w * mag), _err(x, w, w * wanda)
    assert e_sgpt < e_wanda and e_sgpt < e_mag, (e_sgpt, e_wanda, e_mag)
    # the adaptive result is the OBS reconstruction of its own mask
    again, _ = sparsegpt(p, stats, sparsity, masks=keep, block_size=8)
    np.testing.assert_allclose(again["w"], new["w"], rtol=1e-4, atol=1e-4)


def test_nm_exact_on_a_multi_axis_kernel_and_bf16():
    rng = np.random.default_rng(3)
    params = {"out": jnp.asarray(rng.normal(size=(2, 8, 5)), jnp.bfloat16)}  # (heads, head_dim, d): d_in = 16
    x = jnp.asarray(rng.normal(size=(40, 2, 8)), jnp.float32)
    stats = calibrate(lambda p, x: jnp.einsum("bhd,hdo->bo", x, p["out"].astype(jnp.float32)), params, [x])
    new, keep = sparsegpt(params, stats, 0.5, structure="4:8", block_size=8)  # 2:4 is checked above
    assert new["out"].dtype == jnp.bfloat16 and keep["out"].shape == (2, 8, 5)
    k = np.asarray(keep["out"]).reshape(2, 8, 5)  # input axes (heads, head_dim) flattened: 2 groups of 8
    assert np.all(k.sum(axis=1) == 4)
    assert np.all(np.asarray(new["out"], np.float32)[~np.asarray(keep["out"])] == 0)
    f32, _ = sparsegpt({"out": params["out"].astype(jnp.float32)}, stats, 0.5, structure="4:8", block_size=8)
    np.testing.assert_allclose(np.asarray(new["out"], np.float32), f32["out"], rtol=2e-2, atol=2e-2)


def test_errors_name_the_problem():
    x, w = _data()
    p, stats = _stats(x, w)
    with pytest.raises(ValueError, match="multiple of M=4"):
        sparsegpt(p, stats, 0.5, structure="2:4", block_size=6)
    with pytest.raises(ValueError, match="means sparsity 0.5"):
        sparsegpt(p, stats, 0.7, structure="2:4")
    with pytest.raises(ValueError, match="'N:M'"):
        sparsegpt(p, stats, 0.5, structure="2-4")
    with pytest.raises(TypeError, match="calibrate"):
        sparsegpt(p, {"w": 1}, 0.5)
    untouched, masks = sparsegpt(p, stats, 0.5, rules=[("w", False)])
    assert untouched["w"] is p["w"] and masks["w"] is None


def test_sequential_calibrates_each_layer_on_the_pruned_outputs():
    rng = np.random.default_rng(4)
    params = {"l0": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "l1": jnp.asarray(rng.normal(size=(8, 4)))}
    batches = [jnp.asarray(rng.normal(size=(32, 8)), jnp.float32) for _ in range(2)]
    layers = [lambda p, h: jnp.tanh(h @ p["l0"]), lambda p, h: h @ p["l1"]]
    new, masks = sparsegpt_sequential(layers, params, batches, 0.5, block_size=8)
    # by hand: prune l0 on the inputs, then calibrate l1 on the outputs of the *pruned* l0
    s0 = calibrate(layers[0], params, batches)
    p1, m0 = sparsegpt(params, s0, 0.5, block_size=8)
    s1 = calibrate(layers[1], p1, [layers[0](p1, b) for b in batches])
    want, m1 = sparsegpt(p1, s1, 0.5, block_size=8)
    for k in ("l0", "l1"):
        np.testing.assert_allclose(new[k], want[k], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(masks["l0"], m0["l0"])
    np.testing.assert_array_equal(masks["l1"], m1["l1"])
