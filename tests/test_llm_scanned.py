"""Calibration, Wanda and SparseGPT on a scanned layer stack equal the unrolled model's, layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxprune as jp
import jaxprune.llm as jl
from jaxprune.models.llama import llama_tiny_test


def _decoders(layers=3):
    m = llama_tiny_test(vocab_size=50, num_layers=layers)
    tok = jax.random.randint(jax.random.key(1), (2, 9), 0, 50)
    v = m.init(jax.random.key(0), tok[:, :-1])
    v = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), v)
    blocks = [v["params"][f"block_{i}"] for i in range(layers)]
    vs = {"params": {k: v["params"][k] for k in ("embed", "final_norm")}}
    vs["params"]["blocks"] = {"block": jax.tree.map(lambda *x: jnp.stack(x), *blocks)}
    batches = [jax.random.randint(jax.random.key(3 + i), (4, 8), 0, 50) for i in range(2)]
    return m, m.clone(scan_layers=True), v, vs, batches


def _unrolled_path(path, i):
    return path.replace("blocks/block/", f"block_{i}/")


def test_scanned_stats_masks_and_updates_equal_the_unrolled_model():
    m, ms, v, vs, batches = _decoders()
    st_u = jl.calibrate(m.apply, v, batches)
    st_s = jl.calibrate(ms.apply, vs, batches)
    stacked = {p: s for p, s in st_s.items() if "blocks/block/" in p}
    assert len(stacked) == 7 and all(s.layers == 3 and s.xtx.shape[0] == 3 for s in stacked.values())
    for path, s in stacked.items():
        for i in range(3):
            u = st_u[_unrolled_path(path, i)]
            assert s.count == u.count and s.in_axes == u.in_axes
            np.testing.assert_allclose(s.layer(i).xtx, u.xtx, rtol=2e-5, atol=1e-4)

    def unrolled_leaf(tree, path, i):
        node = tree
        for k in _unrolled_path(path, i).split("/"):
            node = node[k]
        return np.asarray(node)

    def scanned_leaf(tree, path):
        node = tree
        for k in path.split("/"):
            node = node[k]
        return np.asarray(node)

    for structure in (None, "2:4"):
        mu = jl.wanda_masks(v, st_u, 0.5, structure=structure)
        msk = jl.wanda_masks(vs, st_s, 0.5, structure=structure)
        for path in stacked:
            want = np.stack([unrolled_leaf(mu, path, i) for i in range(3)])
            np.testing.assert_array_equal(scanned_leaf(msk, path), want)
    new_u, keep_u = jl.sparsegpt(v, st_u, 0.5)
    new_s, keep_s = jl.sparsegpt(vs, st_s, 0.5)
    for path in stacked:
        np.testing.assert_array_equal(
            scanned_leaf(keep_s, path), np.stack([unrolled_leaf(keep_u, path, i) for i in range(3)])
        )
        np.testing.assert_allclose(
            scanned_leaf(new_s, path), np.stack([unrolled_leaf(new_u, path, i) for i in range(3)]), rtol=1e-4, atol=1e-5
        )
    # the pruned scanned model computes what the pruned unrolled one does
    tok = batches[0]
    np.testing.assert_allclose(ms.apply(new_s, tok), m.apply(new_u, tok), rtol=1e-4, atol=1e-4)
    err_s = jl.reconstruction_error(vs, new_s, st_s)
    err_u = jl.reconstruction_error(v, new_u, st_u)
    for path in stacked:
        per = [err_u[_unrolled_path(path, i)] for i in range(3)]
        assert min(per) - 1e-6 <= err_s[path] <= max(per) + 1e-6
    assert jp.sparsity_summary(jp.apply_masks(vs, keep_s)) is not None


def test_shared_weights_in_a_scan_sum_over_iterations_and_bad_uses_are_named():
    w = jax.random.normal(jax.random.key(0), (6, 6)) / 3
    x = jax.random.normal(jax.random.key(1), (5, 6))

    def shared(p, x):  # the same kernel applied 4 times
        h, _ = lax.scan(lambda c, _: (jnp.tanh(c @ p["w"]), None), x, None, length=4)
        return h

    st = jl.calibrate(shared, {"w": w}, [x])
    assert st["w"].layers is None and st["w"].count == 20
    hs, h = [], x
    for _ in range(4):
        hs.append(h)
        h = jnp.tanh(h @ w)
    xs = np.concatenate(hs)
    np.testing.assert_allclose(st["w"].xtx, xs.T @ xs, rtol=1e-5, atol=1e-5)

    def carried(p, x):  # a kernel that flows through (and changes in) the carry: not one layer's weights
        (h, _), _ = lax.scan(lambda c, _: ((jnp.tanh(c[0] @ c[1]), 0.5 * c[1]), None), (x, p["w"]), None, length=2)
        return h

    with pytest.raises(ValueError, match="'w'.*carry"):
        jl.calibrate(carried, {"w": w}, [x])
    stacked = {"w": jnp.stack([w, w])}
    st = jl.calibrate(lambda p, x: lax.scan(lambda c, wi: (c @ wi, None), x, p["w"])[0], stacked, [x])
    with pytest.raises(ValueError, match="stacked over 2 scanned layers"):
        jl.kernel_in_axes((6, 6), st["w"], "w")
    with pytest.raises(ValueError, match="layer axis"):
        jl.wanda_masks({"w": jnp.stack([w, w, w])}, st, 0.5)


def test_flap_on_a_scanned_stack_is_refused_by_name():
    _, ms, _, vs, batches = _decoders(layers=2)
    with pytest.raises(ValueError, match="scanned layer stack"):
        jl.flap_prune(ms.apply, vs, batches[0], batches, 0.5)
