"""Depth pruning: Block Influence, ablation scores, removing blocks from unrolled and scanned decoders and a BERT
encoder."""

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
from jaxprune.models.bert import BertEmbeddings, BertLayer, bert_tiny_test
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


def _bert_hidden(m):
    """The encoder's residual stream before / after every layer, composed from its modules (skip: identity)."""
    emb = BertEmbeddings(m.vocab_size, m.hidden_size, m.max_position_embeddings, m.type_vocab_size, m.layer_norm_eps)
    hd = m.hidden_size // m.num_attention_heads
    layer = BertLayer(m.num_attention_heads, hd, m.intermediate_size, m.hidden_size, m.layer_norm_eps)

    def hidden(v, b, skip=()):
        h = [emb.apply({"params": v["params"]["embeddings"]}, b["ids"], jnp.zeros_like(b["ids"]))]
        for i in range(m.num_hidden_layers):
            p = {"params": v["params"][f"layer_{i}"]}
            h.append(h[-1] if i in skip else layer.apply(p, h[-1], b["mask"]))
        return h

    return hidden


def test_encoder_depth_removal_equals_identity_layers_and_metric_ablation():
    m = bert_tiny_test(num_hidden_layers=3)
    mask = jnp.asarray((np.arange(7)[None] < np.array([[7], [4]])).astype(np.int32))
    b = {"ids": jnp.asarray(np.random.default_rng(2).integers(1, 100, (2, 7))) * mask, "mask": mask}
    v = jax.jit(m.init)(jax.random.key(0), b["ids"])
    v = jax.tree.map(lambda x: x + 0.1 * np.random.default_rng(x.size).standard_normal(x.shape, np.float32), v)
    hidden = _bert_hidden(m)
    m2, v2 = remove_blocks(m, v, [1])
    assert m2.num_hidden_layers == 2 and sorted(k for k in v2["params"] if k.startswith("layer")) == [
        "layer_0",
        "layer_1",
    ]
    out = jax.jit(lambda v2: m2.apply(v2, b["ids"], b["mask"])[0])(v2)
    ref = jax.jit(lambda v: hidden(v, b, skip=(1,))[-1])(v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    full = np.asarray(m.apply(v, b["ids"], b["mask"])[0])
    assert not np.allclose(np.asarray(out), full, atol=1e-3)
    # Block Influence over real (unpadded) tokens only
    bi = block_influence(lambda p, b: hidden(p, b), v, [b], row_mask=lambda b: b["mask"])
    h = [np.asarray(x, np.float64) for x in hidden(v, b)]
    keep = np.asarray(mask, bool)
    cos = lambda a, c: np.sum(a * c, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(c, axis=-1))  # noqa: E731
    np.testing.assert_allclose(bi, [1 - cos(h[i], h[i + 1])[keep].mean() for i in range(3)], rtol=1e-4)
    # ablation with a metric: 1 - cos of mean-pooled embeddings to the dense ones

    def embed(p, b, skip):
        x = hidden(p, b, skip)[-1]
        e = jnp.sum(x * b["mask"][..., None], 1) / b["mask"].sum(1, keepdims=True)
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    metric = lambda e, ref, b: jnp.mean(1.0 - jnp.sum(e * ref, -1))  # noqa: E731
    abl = ablation_scores(embed, v, [b], 3, metric=metric)
    dense_e = np.asarray(embed(v, b, ()))
    direct = [np.mean(1 - np.sum(np.asarray(embed(v, b, (i,))) * dense_e, -1)) for i in range(3)]
    np.testing.assert_allclose(abl, direct, rtol=1e-4, atol=1e-6)
    assert (abl > 0).all()
