"""Calibrated structured pruning (FLAP-style fluctuation scores + bias compensation) on the Llama decoder."""

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
        small, plan, info = flap_prune(apply, v, calib[0], calib, 0.5, compensate=comp)
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
