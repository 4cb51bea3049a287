"""A Llama/Gemma-style decoder written the way a user would (RMSNorm, RoPE, GQA, gated MLP, tied embeddings).

Linen and NNX versions with the same math. Shared by the structured-pruning tests.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def rope(x: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding on ``x`` of shape (batch, seq, heads, head_dim) (rotate-half form)."""
    seq, dim = x.shape[1], x.shape[-1]
    inv = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    ang = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv[None, :]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[None, :, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[None, :, None, :]
    half = dim // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def gqa_attention(q, k, v):
    """q: (b, s, hq, d); k, v: (b, s, hkv, d); each kv head serves hq // hkv query heads; causal."""
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, s, hkv, hq // hkv, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k) / jnp.sqrt(d).astype(q.dtype)
    mask = jnp.tril(jnp.ones((s, s), bool))
    logits = jnp.where(mask, logits, -1e9)
    w = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgqs,bskd->bqkgd", w, v)
    return out.reshape(b, s, hq * d)


class LinenBlock(nn.Module):
    dim: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        h = nn.RMSNorm(name="attn_norm")(x)
        q = nn.DenseGeneral((self.heads, self.head_dim), use_bias=False, name="q")(h)
        k = nn.DenseGeneral((self.kv_heads, self.head_dim), use_bias=False, name="k")(h)
        v = nn.DenseGeneral((self.kv_heads, self.head_dim), use_bias=False, name="v")(h)
        a = gqa_attention(rope(q), rope(k), v)
        x = x + nn.Dense(self.dim, use_bias=False, name="o")(a)
        h = nn.RMSNorm(name="mlp_norm")(x)
        gate = nn.Dense(self.hidden, use_bias=False, name="gate")(h)
        up = nn.Dense(self.hidden, use_bias=False, name="up")(h)
        return x + nn.Dense(self.dim, use_bias=False, name="down")(nn.silu(gate) * up)


class LinenDecoder(nn.Module):
    vocab: int = 50
    dim: int = 32
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 8
    hidden: int = 48
    layers: int = 2

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.vocab, self.dim, name="embed")
        x = embed(tokens)
        for i in range(self.layers):
            x = LinenBlock(self.dim, self.heads, self.kv_heads, self.head_dim, self.hidden, name=f"block_{i}")(x)
        return embed.attend(nn.RMSNorm(name="final_norm")(x))  # tied input/output embeddings


class NNXBlock(nnx.Module):
    def __init__(self, dim, heads, kv_heads, head_dim, hidden, *, rngs):
        self.attn_norm = nnx.RMSNorm(dim, rngs=rngs)
        self.q = nnx.LinearGeneral(dim, (heads, head_dim), use_bias=False, rngs=rngs)
        self.k = nnx.LinearGeneral(dim, (kv_heads, head_dim), use_bias=False, rngs=rngs)
        self.v = nnx.LinearGeneral(dim, (kv_heads, head_dim), use_bias=False, rngs=rngs)
        self.o = nnx.Linear(heads * head_dim, dim, use_bias=False, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(dim, rngs=rngs)
        self.gate = nnx.Linear(dim, hidden, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(dim, hidden, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(hidden, dim, use_bias=False, rngs=rngs)

    def __call__(self, x):
        h = self.attn_norm(x)
        a = gqa_attention(rope(self.q(h)), rope(self.k(h)), self.v(h))
        x = x + self.o(a)
        h = self.mlp_norm(x)
        return x + self.down(nnx.silu(self.gate(h)) * self.up(h))


class NNXDecoder(nnx.Module):
    def __init__(self, vocab=50, dim=32, heads=4, kv_heads=2, head_dim=8, hidden=48, layers=2, *, rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.blocks = nnx.List([NNXBlock(dim, heads, kv_heads, head_dim, hidden, rngs=rngs) for _ in range(layers)])
        self.final_norm = nnx.RMSNorm(dim, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.embed.attend(self.final_norm(x))


def random_variables(m, seed=0):
    """Random variables of ``m`` without compiling anything (norm scales around 1, weights ~ N(0, 0.2))."""
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), m.example_input(1)))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        scale = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(scale + 0.2 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
