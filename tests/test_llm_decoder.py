"""The Llama-style decoder, the offline text data, perplexity / finetuning and the LLM recipe format."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoder_models import LinenDecoder, random_variables

from jaxprune._src.llm.perplexity import embedding_fidelity, finetune_lm, lm_loss, perplexity
from jaxprune._src.llm.recipe import load_llm_recipe, recipe_from_dict
from jaxprune._src.llm.text_data import decode, encode, lm_batches, sequences, text_splits, token_splits
from jaxprune.models import from_config, get_config
from jaxprune.models.llama import llama_rebuild, llama_tiny_test

TOK = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 7)))


def _same_math_params(v):
    """Our params renamed to the test-suite reference decoder's layout (tests/decoder_models.py)."""
    p = v["params"]
    out = {"embed": p["embed"], "final_norm": p["final_norm"]}
    for i in range(2):
        b = p[f"block_{i}"]
        o = b["attn"]["o"]["kernel"]
        out[f"block_{i}"] = {
            "attn_norm": b["attn_norm"],
            "mlp_norm": b["mlp_norm"],
            "q": b["attn"]["q"],
            "k": b["attn"]["k"],
            "v": b["attn"]["v"],
            "o": {"kernel": o.reshape(-1, o.shape[-1])},
            **b["mlp"],
        }
    return {"params": out}


def test_decoder_matches_reference_math_and_scanned_stack():
    m = llama_tiny_test(vocab_size=50)
    v = random_variables(m)
    ref = LinenDecoder(vocab=50, dim=32, heads=4, kv_heads=2, head_dim=8, hidden=48, layers=2)
    ms = m.clone(scan_layers=True)
    blocks = [v["params"][f"block_{i}"] for i in range(2)]
    vs = {"params": {"embed": v["params"]["embed"], "final_norm": v["params"]["final_norm"]}}
    vs["params"]["blocks"] = {"block": jax.tree.map(lambda *x: jnp.stack(x), *blocks)}
    tok2 = TOK.at[:, 5:].set(0)

    @jax.jit
    def run(v, vs):
        out, hidden = m.apply(v, TOK, return_hidden=True)
        return out, ref.apply(_same_math_params(v), TOK), ms.apply(vs, TOK), m.apply(v, tok2), hidden

    out, ref_out, scanned, out2, hidden = run(v, vs)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned, out, rtol=1e-5, atol=1e-5)
    assert len(hidden) == 3 and hidden[0].shape == (2, 7, 32)
    # causal: the logits at position t do not depend on later tokens
    np.testing.assert_allclose(out2[:, :5], out[:, :5], rtol=1e-5, atol=1e-5)


def test_rebuild_from_shrunk_params_and_config_round_trip():
    m = llama_tiny_test()
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), m.example_input(1)))
    v = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    p = jax.tree.map(lambda x: x, v["params"])
    blk = p["block_1"]
    for name in ("q",):
        blk["attn"][name]["kernel"] = blk["attn"][name]["kernel"][:, :2]
    blk["attn"]["k"]["kernel"] = blk["attn"]["k"]["kernel"][:, :1]
    blk["attn"]["v"]["kernel"] = blk["attn"]["v"]["kernel"][:, :1]
    blk["attn"]["o"]["kernel"] = blk["attn"]["o"]["kernel"][:2]
    blk["mlp"]["down"]["bias"] = np.ones(32, np.float32)
    m2 = llama_rebuild(m, {"params": p})
    assert dict(m2.widths) == {"block_1/attn/q": 2, "block_1/attn/k": 1} and m2.biases == ("block_1/mlp/down",)
    assert jax.eval_shape(lambda p: m2.apply({"params": p}, TOK), p).shape == (2, 7, 64)
    assert from_config(json.loads(json.dumps(get_config(m2)))) == m2
    blk["attn"]["q"]["kernel"] = blk["attn"]["q"]["kernel"][..., :4]
    with pytest.raises(ValueError, match="head_dim"):
        llama_rebuild(m, {"params": p})


def test_text_data_is_real_deterministic_and_split_by_topic():
    train, held = text_splits()
    assert train == text_splits()[0] and len(held) > 20_000 and len(train) > 300_000
    assert "assignment" in train or "Assignment" in train
    assert held not in train
    tr, he = token_splits()
    assert tr.dtype == np.int32 and 0 <= tr.min() and tr.max() < 256
    assert decode(encode("naïve café")) == "naïve café"
    s = sequences(he, 16, max_sequences=5)
    assert s.shape == (5, 17)
    b = list(lm_batches(tr[:2000], 16, 4, seed=0))
    assert b and all(x.shape == (4, 17) for x in b)
    np.testing.assert_array_equal(b[0], list(lm_batches(tr[:2000], 16, 4, seed=0))[0])
    with pytest.raises(ValueError, match="seq_len"):
        sequences(tr, 0)


def test_perplexity_and_masked_finetune():
    m = llama_tiny_test(num_layers=1)
    v = random_variables(m)
    f = lambda p, t: m.apply({"params": p}, t)  # noqa: E731
    batch = jnp.asarray(np.random.default_rng(1).integers(0, 8, (4, 9)))
    ppl = perplexity(f, v["params"], [batch, batch])
    np.testing.assert_allclose(
        np.log(ppl), float(jax.jit(lambda p, b: lm_loss(f, p, b))(v["params"], batch)), rtol=1e-5
    )
    masks = jax.tree.map(lambda x: None, v["params"])
    w = v["params"]["block_0"]["mlp"]["up"]["kernel"]
    masks["block_0"]["mlp"]["up"]["kernel"] = jnp.arange(w.size).reshape(w.shape) % 2 == 0
    p2, info = finetune_lm(f, v["params"], [batch] * 10, steps=10, learning_rate=1e-2, masks=masks)
    assert info["losses"][-1] < info["losses"][0] - 0.1
    assert float(jnp.abs(p2["block_0"]["mlp"]["up"]["kernel"][~masks["block_0"]["mlp"]["up"]["kernel"]]).max()) == 0.0
    with pytest.raises(ValueError, match="ran out"):
        finetune_lm(f, v["params"], [batch], steps=2)
    # pure distillation from an identical teacher: the KL term starts at exactly zero
    _, dist = finetune_lm(
        f, v["params"], [batch], steps=1, teacher_fn=f, teacher_params=v["params"], distill_weight=1.0
    )
    assert abs(dist["losses"][0]) < 1e-6
    with pytest.raises(ValueError, match="teacher"):
        finetune_lm(f, v["params"], [batch], steps=1, teacher_fn=f)
    fid = embedding_fidelity(np.eye(3) + 0.1, np.eye(3))
    assert 0.9 < fid["mean_cosine"] < 1.0 and fid["sim_mae"] > 0


def test_llm_recipe_validation_names_the_field(tmp_path):
    r = recipe_from_dict({"method": "sparsegpt", "structure": "4:8", "ignore": ["attn/o"]})
    assert r["sparsity"] == 0.5 and r["structure"] == "4:8" and r["calibration"] == {"samples": 128, "seq_len": 128}
    for bad, field in [
        ({"method": "wanda", "sparsity": 1.5}, "'sparsity'"),
        ({"method": "wanda", "structure": "2:4", "sparsity": 0.3}, "'sparsity'"),
        ({"method": "flap", "structure": "2:4"}, "'structure'"),
        ({"method": "wanda", "calibration": {"samples": 0}}, "'calibration.samples'"),
        ({"method": "wanda", "ignore": ["("]}, "'ignore'"),
        ({"method": "wanda", "sparsty": 0.5}, "sparsty"),
        ({"sparsity": 0.5}, "'method'"),
        ({"method": "depth", "score": "cos"}, "'score'"),
    ]:
        with pytest.raises(ValueError, match=field):
            recipe_from_dict(bad)
    path = tmp_path / "r.json"
    path.write_text('{"method": "flap", "sparsity": 0.25, "compensate": false}')
    assert load_llm_recipe(path)["compensate"] is False
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_llm_recipe(path)
