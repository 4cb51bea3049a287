"""Depth pruning: Block Influence, ablation scores, removing blocks from unrolled and scanned decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from decoder_models import random_variables

from jaxprune._src.llm.depth import (
    ablation_scores,
    block_influence,
    blocks_to_remove,
    remove_blocks,
    remove_blocks_params,
)
from jaxprune.models.llama import llama_rebuild, llama_tiny_test

TOK = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 10)))


@pytest.mark.parametrize("scan", [False, True])
def test_removed_blocks_equal_identity_blocks(scan):
    m = llama_tiny_test(num_layers=4, scan_layers=scan)
    v = random_variables(m)
    m2, v2 = remove_blocks(m, v, [2, 0])
    assert m2.num_layers == 2
    ref, full, out = jax.jit(lambda v, v2, t: (m.apply(v, t, skip=(0, 2)), m.apply(v, t), m2.apply(v2, t)))(v, v2, TOK)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(out), np.asarray(full), atol=1e-3)  # the blocks did matter
    assert llama_rebuild(m, v2) == m2  # the shallower model is also what the params describe
    if scan:
        assert v2["params"]["blocks"]["block"]["attn"]["q"]["kernel"].shape[0] == 2
    else:
        assert sorted(k for k in v2["params"] if k.startswith("block")) == ["block_0", "block_1"]
        np.testing.assert_array_equal(
            v2["params"]["block_0"]["mlp"]["up"]["kernel"], v["params"]["block_1"]["mlp"]["up"]["kernel"]
        )


def test_block_influence_and_ablation_match_direct_computation():
    m = llama_tiny_test(num_layers=2)
    v = random_variables(m, 3)
    hidden = lambda p, t: m.apply(p, t, return_hidden=True)[1]  # noqa: E731
    bi = block_influence(hidden, v, [TOK])
    h = [np.asarray(x, np.float64).reshape(-1, x.shape[-1]) for x in jax.jit(hidden)(v, TOK)]
    cos = lambda a, b: np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # noqa: E731
    np.testing.assert_allclose(bi, [1 - cos(h[i], h[i + 1]).mean() for i in range(2)], rtol=1e-4)
    batch = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 9)))
    abl = ablation_scores(lambda p, t, skip: m.apply(p, t, skip=skip), v, [batch], 2)

    def losses(v, b):  # all four variants in one compilation
        out = []
        for skip in ((), (0,), (1,)):
            lg = m.apply(v, b[:, :-1], skip=skip)
            out.append(optax.softmax_cross_entropy_with_integer_labels(lg, b[:, 1:]).mean())
        return jnp.stack(out)

    ref = np.asarray(jax.jit(losses)(v, batch))
    np.testing.assert_allclose(abl, ref[1:] - ref[0], rtol=1e-4, atol=1e-5)
    assert blocks_to_remove(abl, 1) == (int(np.argmin(abl)),)


def test_depth_errors_name_the_problem():
    m = llama_tiny_test(num_layers=2)
    v = random_variables(m)
    with pytest.raises(ValueError, match="out of range"):
        remove_blocks(m, v, [2])
    with pytest.raises(ValueError, match="all 2 blocks"):
        remove_blocks(m, v, [0, 1])
    with pytest.raises(ValueError, match="no 'block_<i>'"):
        remove_blocks_params({"a": {"w": 1}}, [0])
    with pytest.raises(ValueError, match="n must be"):
        blocks_to_remove([0.1, 0.2], 2)
    with pytest.raises(ValueError, match="skip index"):
        jax.eval_shape(lambda v: m.apply(v, TOK, skip=(5,)), v)
