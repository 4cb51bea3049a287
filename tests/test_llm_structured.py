"""Calibrated structured pruning (FLAP-style fluctuation scores + bias compensation): Llama decoder, BERT encoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_models import random_variables

from jaxprune._src.llm.structured_calib import (
    calibrated_unit_scores,
    flap_prune,
    input_moments,
    within_kv_groups,
)
from jaxprune._src.structured.trace import trace_groups
from jaxprune.models import rebuild
from jaxprune.models.bert import bert_tiny_test
from jaxprune.models.llama import llama_rebuild, llama_tiny_test

DOWN = "params/block_0/mlp/down/kernel"


@pytest.fixture(scope="module")
def setup():
    m = llama_tiny_test(num_heads=4, num_kv_heads=2)
    v = random_variables(m)
    rng = np.random.default_rng(0)
    calib = [jnp.asarray(rng.integers(0, 64, (4, 12))) for _ in range(2)]
    apply = lambda v, t: m.apply(v, t)  # noqa: E731
    return m, v, apply, calib


def _down_inputs(apply, v, batches):
    """The dense model's per-token inputs of block_0's MLP down projection, ``(tokens, mlp_dim)``."""

    def inputs(v, b):
        rows = []

        def grab(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and "/".join(context.module.path) == "block_0/mlp/down":
                rows.append(args[0].reshape(-1, args[0].shape[-1]))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(grab):
            apply(v, b)
        return rows[0]

    f = jax.jit(inputs)
    return np.concatenate([np.asarray(f(v, b)) for b in batches])


def test_input_moments_and_fluctuation_scores_match_numpy(setup):
    m, v, apply, calib = setup
    mom = input_moments(apply, v, calib)
    x = _down_inputs(apply, v, calib)
    np.testing.assert_allclose(mom[DOWN].mean, x.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mom[DOWN].var, x.var(0), rtol=1e-3, atol=1e-6)
    assert mom[DOWN].count == x.shape[0] and mom["params/block_0/attn/o/kernel"].n_in == 2
    graph = trace_groups(apply, v, calib[0])
    scores = calibrated_unit_scores(v, graph, mom)
    w = np.asarray(v["params"]["block_0"]["mlp"]["down"]["kernel"], np.float64)
    np.testing.assert_allclose(scores["params/block_0/mlp/gate/kernel[1]"], x.var(0) * (w * w).sum(1), rtol=1e-3)


def test_compensation_preserves_mean_output_and_lowers_error(setup):
    m, v, apply, calib = setup
    x = _down_inputs(apply, v, calib).astype(np.float64)
    w = np.asarray(v["params"]["block_0"]["mlp"]["down"]["kernel"], np.float64)
    dense = x @ w
    errs = {}
    for comp in (False, True):
        # one-shot compensation (dense-model means): exact for block 0's down projection on dense inputs
        small, plan, info = flap_prune(apply, v, calib[0], calib, 0.5, compensate=comp, recalibrate=False)
        kept = list(plan.leaves[DOWN][0])
        assert len(kept) == 24
        ws = np.asarray(small["params"]["block_0"]["mlp"]["down"]["kernel"], np.float64)
        np.testing.assert_array_equal(ws, w[kept])
        bias = small["params"]["block_0"]["mlp"].get("down", {}).get("bias")
        out = x[:, kept] @ ws + (0.0 if bias is None else np.asarray(bias, np.float64))
        errs[comp] = float(np.mean((out - dense) ** 2))
        if comp:
            assert DOWN in info["compensated"] and bias is not None
            np.testing.assert_allclose(out.mean(0), dense.mean(0), atol=1e-4 * max(1.0, np.abs(dense).max()))
        else:
            assert bias is None and not info["compensated"]
            assert np.abs(out.mean(0) - dense.mean(0)).max() > 1e-3
    assert errs[True] < errs[False]


def _mean_outputs(apply, v, batches, paths, mask=None):
    """Mean output over (unmasked) tokens of the modules at ``paths`` (e.g. ``'layer_0/mlp/fc2'``)."""

    def outs(v, b):
        found = {}

        def grab(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            name = "/".join(context.module.path)
            if context.method_name == "__call__" and name in paths:
                w = jnp.ones(y.shape[:2]) if mask is None else mask(b).astype(y.dtype)
                found[name] = (jnp.einsum("bs...,bs->...", y, w), w.sum())
            return y

        with nn.intercept_methods(grab):
            apply(v, b)
        return found

    f = jax.jit(outs)
    tot = {}
    for b in batches:
        for k, (s, n) in f(v, b).items():
            s0, n0 = tot.get(k, (0.0, 0.0))
            tot[k] = (s0 + np.asarray(s, np.float64), n0 + float(n))
    return {k: s / n for k, (s, n) in tot.items()}


def test_recalibrated_compensation_matches_dense_mean_outputs_on_the_pruned_decoder(setup):
    m, v, apply, calib = setup
    paths = {f"block_{i}/{n}" for i in range(2) for n in ("attn/o", "mlp/down")}
    dense = _mean_outputs(apply, v, calib, paths)
    means = {}
    for rec in (False, True):
        small, _, info = flap_prune(apply, v, calib[0], calib, 0.5, recalibrate=rec)
        if not rec:
            assert info["recalibration_passes"] == 0
        m2 = llama_rebuild(m, small)
        means[rec] = _mean_outputs(lambda v, t: m2.apply(v, t), small, calib, paths)
    assert 1 <= info["recalibration_passes"] <= 4
    for p in paths:  # every layer's mean output on the pruned model equals the dense layer's
        np.testing.assert_allclose(means[True][p], dense[p], atol=1e-4 * max(1.0, np.abs(dense[p]).max()))
    # one-shot (dense means) misses the drift of the later layers' inputs
    assert max(np.abs(means[False][p] - dense[p]).max() for p in paths) > 1e-3


@pytest.fixture(scope="module")
def encoder():
    m = bert_tiny_test(num_hidden_layers=2)
    rng = np.random.default_rng(0)

    def batch(n, s):
        lengths = rng.integers(3, s + 1, n)
        mask = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(1, 100, (n, s)) * mask
        return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}

    v = jax.jit(m.init)(jax.random.key(0), batch(1, 8)["input_ids"])
    noise = lambda x: 0.1 * np.random.default_rng(x.size).standard_normal(x.shape, np.float32)  # noqa: E731
    v = jax.tree.map(lambda x: x + noise(x), v)  # non-trivial biases
    apply = lambda v, b: m.apply(v, b["input_ids"], b["attention_mask"])[0]  # noqa: E731
    return m, v, apply, [batch(4, 8) for _ in range(2)], batch


def test_flap_on_encoder_dict_batches_shrinks_rebuilds_and_keeps_mean_outputs(encoder):
    m, v, apply, calib, batch = encoder
    mask = lambda b: b["attention_mask"]  # noqa: E731
    small, plan, info = flap_prune(apply, v, calib[0], calib, 0.5, ignore=[r"pooler"], row_mask=mask)
    m2 = rebuild(m, small)
    widths = dict(m2.widths)
    assert widths["layer_0/attention"] == 2 and widths["layer_1/mlp/fc1"] == 32 and "pooler" not in widths
    assert sorted(info["compensated"]) == sorted(
        f"params/layer_{i}/{n}/kernel" for i in range(2) for n in ("attention/out", "mlp/fc2")
    )
    apply2 = lambda v, b: m2.apply(v, b["input_ids"], b["attention_mask"])[0]  # noqa: E731
    paths = {f"layer_{i}/{n}" for i in range(2) for n in ("attention/out", "mlp/fc2")}
    dense = _mean_outputs(apply, v, calib, paths, mask)
    pruned = _mean_outputs(apply2, small, calib, paths, mask)
    for p in paths:  # padding left out of the means: compensation matches the dense means on real tokens
        np.testing.assert_allclose(pruned[p], dense[p], atol=1e-4 * max(1.0, np.abs(dense[p]).max()))
    out = jax.jit(apply2)(small, batch(3, 11))  # another shape than calibration
    assert out.shape == (3, 11, 32) and bool(jnp.isfinite(out).all())
    mom = input_moments(apply, v, calib, row_mask=mask)
    assert mom["params/layer_0/mlp/fc1/kernel"].count == int(sum(b["attention_mask"].sum() for b in calib))
    assert mom["params/pooler/kernel"].count == 8  # the first token of each sentence: no (batch, seq) axes
    with pytest.raises(ValueError, match="recalibrate"):
        flap_prune(apply, v, calib[0], calib, 0.5, recalibrate=-1)


def test_shrunk_decoder_runs_smaller_and_keeps_whole_query_groups(setup):
    m, v, apply, calib = setup
    small, plan, _ = flap_prune(apply, v, calib[0], calib, 0.5)
    m2 = llama_rebuild(m, small)
    size = lambda t: sum(int(np.size(a)) for a in jax.tree.leaves(t))  # noqa: E731
    assert size(small) < size(v)
    # kv groups pruned 2 -> 1, each keeping its 2 query heads (GQA stays balanced); MLP 48 -> 24
    assert dict(m2.widths)["block_0/attn/k"] == 1 and dict(m2.widths)["block_0/attn/q"] == 2
    assert dict(m2.widths)["block_1/mlp/gate"] == 24
    assert set(m2.biases) == {"block_0/attn/o", "block_0/mlp/down", "block_1/attn/o", "block_1/mlp/down"}
    tok = jnp.asarray(np.random.default_rng(3).integers(0, 64, (2, 9)))  # another length than calibration
    out = jax.jit(m2.apply)(small, tok)
    assert out.shape == (2, 9, 64) and bool(jnp.isfinite(out).all())
    graph = trace_groups(apply, v, calib[0])
    inner = within_kv_groups(graph)
    assert {g.name for g in inner} == {f"params/block_{i}/attn/q/kernel[1]" for i in range(2)}


def test_embedding_width_through_norms_and_errors(setup):
    m, v, apply, calib = setup
    small, plan, _ = flap_prune(apply, v, calib[0], calib, 0.25, through_norms=True, compensate=False)
    m2 = llama_rebuild(m, small)
    assert dict(m2.widths)["embed"] == 24
    out = jax.jit(m2.apply)(small, calib[0])
    assert out.shape == (4, 12, 64) and bool(jnp.isfinite(out).all())
    with pytest.raises(ValueError, match="ratio"):
        flap_prune(apply, v, calib[0], calib, 1.5)
    with pytest.raises(ValueError, match="method"):
        calibrated_unit_scores(v, trace_groups(apply, v, calib[0]), input_moments(apply, v, calib), method="l9")
