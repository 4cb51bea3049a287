"""Shared Linen building blocks: torchvision-style conv/BN, head-shaped attention, MLP.

Attention keeps heads visible in parameter shapes (like flax's
``nn.MultiHeadDotProductAttention``): ``query/key/value`` kernels are
``(D, heads, head_dim)`` with biases ``(heads, head_dim)``, the ``out`` kernel is
``(heads, head_dim, D)``. Pruning heads slices axis 1 of q/k/v kernels, axis 0
of their biases and axis 0 of the ``out`` kernel.

Example:
  >>> import jax, jax.numpy as jnp
  >>> attn = MultiHeadAttention(num_heads=2, head_dim=4, out_features=8)
  >>> v = attn.init(jax.random.key(0), jnp.zeros((1, 5, 8)))
  >>> v['params']['query']['kernel'].shape, v['params']['out']['kernel'].shape
  ((8, 2, 4), (2, 4, 8))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

__all__ = ["conv", "batch_norm", "MultiHeadAttention", "Mlp", "check_same_width"]

BN_MOMENTUM = 0.9  # torchvision's momentum=0.1 in the other convention
BN_EPS = 1e-5


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    *,
    name: str,
    use_bias: bool = False,
    groups: int = 1,
    padding: Any = None,
) -> nn.Conv:
    """torchvision-style conv: explicit symmetric padding ``kernel // 2`` (not 'SAME'), no bias."""
    pad = kernel // 2 if padding is None else padding
    if isinstance(pad, int):
        pad = ((pad, pad), (pad, pad))
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=pad,
        use_bias=use_bias,
        feature_group_count=groups,
        name=name,
    )


def batch_norm(train: bool, *, name: str) -> nn.BatchNorm:
    """BatchNorm with running averages in eval mode and batch statistics in train mode."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)


def check_same_width(where: str | None, a: jax.Array, b: jax.Array, what: str) -> None:
    """Raises ``ValueError`` when two tensors to be added have different channel widths."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{where}: {what} widths differ ({a.shape[-1]} vs {b.shape[-1]}); residual/coupled channels "
            "must be pruned together"
        )


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention with head-shaped parameters.

    ``mask`` (optional) is ``(batch, keys)`` with 1/True = attend.
    """

    num_heads: int
    head_dim: int
    out_features: int
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        def proj(name):
            return nn.DenseGeneral((self.num_heads, self.head_dim), axis=-1, kernel_init=self.kernel_init, name=name)(x)

        q, k, v = proj("query"), proj("key"), proj("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(self.head_dim, q.dtype))
        if mask is not None:
            keep = jnp.asarray(mask).astype(bool)[:, None, None, :]
            logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(self.out_features, axis=(-2, -1), kernel_init=self.kernel_init, name="out")(out)


class Mlp(nn.Module):
    """``fc1`` (hidden units) -> exact (erf) GELU -> ``fc2``."""

    hidden: int
    out_features: int
    approximate_gelu: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, kernel_init=self.kernel_init, name="fc1")(x)
        x = nn.gelu(x, approximate=self.approximate_gelu)
        return nn.Dense(self.out_features, kernel_init=self.kernel_init, name="fc2")(x)
