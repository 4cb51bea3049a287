"""BERT encoder (Linen), post-LN, fields named like the Hugging Face ``BertConfig``.

Parameter names (HF name in brackets):
``embeddings/word_embeddings`` [embeddings.word_embeddings],
``embeddings/position_embeddings``, ``embeddings/token_type_embeddings``,
``embeddings/LayerNorm``; per layer ``layer_{i}/attention/{query,key,value}``
[encoder.layer.i.attention.self.*] with kernels ``(D, heads, head_dim)``,
``layer_{i}/attention/out`` [attention.output.dense] kernel ``(heads, head_dim, D)``,
``layer_{i}/attention_norm`` [attention.output.LayerNorm],
``layer_{i}/mlp/fc1`` [intermediate.dense], ``layer_{i}/mlp/fc2`` [output.dense],
``layer_{i}/output_norm`` [output.LayerNorm]; ``pooler`` [pooler.dense].
GELU is the exact erf GELU, as in HF BERT.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = bert_tiny_test()
  >>> ids = jnp.ones((2, 6), jnp.int32)
  >>> v = model.init(jax.random.key(0), ids)
  >>> hidden, pooled = model.apply(v, ids, attention_mask=jnp.ones((2, 6)))
  >>> hidden.shape, pooled.shape
  ((2, 6, 32), (2, 32))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.models.core import Widths, register_model, sub_widths, width
from jaxprune.models.layers import Mlp, MultiHeadAttention, check_same_width

__all__ = ["BertEncoder", "BertLayer", "bert_tiny_test", "minilm_l6_config", "bert_base_config"]

_INIT = nn.initializers.normal(0.02)


class BertLayer(nn.Module):
    """Post-LN layer: ``ln(x + attn(x))`` then ``ln(x + mlp(x))``."""

    num_heads: int
    head_dim: int
    intermediate_size: int
    hidden_size: int
    layer_norm_eps: float = 1e-12
    widths: Widths = ()

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        w = self.widths
        y = MultiHeadAttention(
            width(w, "attention", self.num_heads),
            self.head_dim,
            width(w, "attention/out", self.hidden_size),
            kernel_init=_INIT,
            name="attention",
        )(x, mask)
        check_same_width(f"{self.name}/attention", x, y, "residual stream and attention output")
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, name="attention_norm")(x + y)
        y = Mlp(
            width(w, "mlp/fc1", self.intermediate_size),
            width(w, "mlp/fc2", self.hidden_size),
            approximate_gelu=False,
            kernel_init=_INIT,
            name="mlp",
        )(x)
        check_same_width(f"{self.name}/mlp", x, y, "residual stream and MLP output")
        return nn.LayerNorm(epsilon=self.layer_norm_eps, name="output_norm")(x + y)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    widths: Widths = ()

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        w = self.widths
        seq = input_ids.shape[1]
        if seq > self.max_position_embeddings:
            raise ValueError(
                f"BertEncoder: sequence length {seq} > max_position_embeddings {self.max_position_embeddings}"
            )
        words = nn.Embed(
            self.vocab_size, width(w, "word_embeddings", self.hidden_size), embedding_init=_INIT, name="word_embeddings"
        )(input_ids)
        pos = nn.Embed(
            self.max_position_embeddings,
            width(w, "position_embeddings", self.hidden_size),
            embedding_init=_INIT,
            name="position_embeddings",
        )(jnp.arange(seq)[None])
        types = nn.Embed(
            self.type_vocab_size,
            width(w, "token_type_embeddings", self.hidden_size),
            embedding_init=_INIT,
            name="token_type_embeddings",
        )(token_type_ids)
        check_same_width("embeddings", words, pos, "word and position embedding")
        check_same_width("embeddings", words, types, "word and token-type embedding")
        return nn.LayerNorm(epsilon=self.layer_norm_eps, name="LayerNorm")(words + pos + types)


@register_model
class BertEncoder(nn.Module):
    """BERT encoder returning ``(last_hidden_state, pooled_output)``.

    ``attention_mask`` is ``(batch, seq)`` with 1 = keep, 0 = padding.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    head_dim: int = 0
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, min(8, self.max_position_embeddings)), jnp.int32)

    @property
    def _head_dim(self) -> int:
        if self.head_dim:
            return self.head_dim
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertEncoder: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; set head_dim"
            )
        return self.hidden_size // self.num_attention_heads

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        del train  # no dropout
        if input_ids.ndim != 2:
            raise ValueError(f"BertEncoder: input_ids must be (batch, seq), got shape {input_ids.shape}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"BertEncoder: attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}"
            )
        x = BertEmbeddings(
            self.vocab_size,
            self.hidden_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.layer_norm_eps,
            sub_widths(self.widths, "embeddings"),
            name="embeddings",
        )(input_ids, token_type_ids)
        for i in range(self.num_hidden_layers):
            name = f"layer_{i}"
            x = BertLayer(
                self.num_attention_heads,
                self._head_dim,
                self.intermediate_size,
                self.hidden_size,
                self.layer_norm_eps,
                sub_widths(self.widths, name),
                name=name,
            )(x, attention_mask)
        pooled = jnp.tanh(
            nn.Dense(width(self.widths, "pooler", self.hidden_size), kernel_init=_INIT, name="pooler")(x[:, 0])
        )
        return x, pooled


def bert_tiny_test(**kw: Any) -> BertEncoder:
    """A tiny BERT for tests: vocab 100, hidden 32, 2 layers, 4 heads, intermediate 64, 16 positions."""
    cfg: dict[str, Any] = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        type_vocab_size=2,
    )
    cfg.update(kw)
    return BertEncoder(**cfg)


def minilm_l6_config(**kw: Any) -> BertEncoder:
    """sentence-transformers all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, intermediate 1536."""
    cfg: dict[str, Any] = dict(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
    )
    cfg.update(kw)
    return BertEncoder(**cfg)


def bert_base_config(**kw: Any) -> BertEncoder:
    """BERT-base: 12 layers, hidden 768, 12 heads, intermediate 3072."""
    return BertEncoder(**kw)
