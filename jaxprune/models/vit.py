"""Vision Transformer (Linen): patch conv, class token, learned ``pos_embedding``, pre-LN blocks.

Parameter names: ``patch_embed`` (conv, kernel ``(p, p, C, D)``), ``cls_token``
``(1, 1, D)``, ``pos_embedding`` ``(1, 1 + N, D)``, ``encoder_{i}/{ln1, attn, ln2, mlp}``
with ``attn/{query,key,value}`` kernels ``(D, heads, head_dim)``, ``attn/out``
kernel ``(heads, head_dim, D)``, ``mlp/fc1`` ``(D, hidden)``, ``mlp/fc2``
``(hidden, D)``; final ``norm`` and ``head``. GELU is the exact (erf) one, as in
timm/torch. Widths: ``"encoder_{i}/attn"`` = number of heads,
``"encoder_{i}/mlp/fc1"`` = hidden units, ``"patch_embed"`` = embedding width.

Example:
  >>> import jax
  >>> model = vit_tiny_test(num_classes=5)
  >>> v = model.init(jax.random.key(0), model.example_input(2))
  >>> model.apply(v, model.example_input(2)).shape
  (2, 5)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.models.core import Widths, register_model, sub_widths, width
from jaxprune.models.layers import Mlp, MultiHeadAttention, check_same_width

__all__ = ["ViT", "ViTEncoderBlock", "vit_tiny_test", "vit_ti16", "vit_s16", "vit_b16"]


class ViTEncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    hidden_size: int
    layer_norm_eps: float = 1e-6
    widths: Widths = ()

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        w = self.widths
        y = nn.LayerNorm(epsilon=self.layer_norm_eps, name="ln1")(x)
        y = MultiHeadAttention(
            width(w, "attn", self.num_heads), self.head_dim, width(w, "attn/out", self.hidden_size), name="attn"
        )(y, mask)
        check_same_width(f"{self.name}/attn", x, y, "residual stream and attention output")
        x = x + y
        y = nn.LayerNorm(epsilon=self.layer_norm_eps, name="ln2")(x)
        y = Mlp(width(w, "mlp/fc1", self.mlp_dim), width(w, "mlp/fc2", self.hidden_size), name="mlp")(y)
        check_same_width(f"{self.name}/mlp", x, y, "residual stream and MLP output")
        return x + y


@register_model
class ViT(nn.Module):
    """ViT classifier on the class token. ``head_dim`` defaults to ``hidden_size // num_heads``."""

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    head_dim: int = 0
    num_classes: int = 1000
    in_channels: int = 3
    layer_norm_eps: float = 1e-6
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    @property
    def _head_dim(self) -> int:
        if self.head_dim:
            return self.head_dim
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViT: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; set head_dim"
            )
        return self.hidden_size // self.num_heads

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout / batch norm
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"ViT: image size {x.shape[1:3]} is not divisible by patch_size {p}")
        x = nn.Conv(
            width(self.widths, "patch_embed", self.hidden_size),
            (p, p),
            strides=(p, p),
            padding="VALID",
            name="patch_embed",
        )(x)
        b, h, w_, d = x.shape
        x = x.reshape(b, h * w_, d)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d), x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], d), x.dtype)
        x = x + pos
        for i in range(self.num_layers):
            name = f"encoder_{i}"
            x = ViTEncoderBlock(
                self.num_heads,
                self._head_dim,
                self.mlp_dim,
                self.hidden_size,
                self.layer_norm_eps,
                sub_widths(self.widths, name),
                name=name,
            )(x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, name="norm")(x)
        return nn.Dense(width(self.widths, "head", self.num_classes), name="head")(x[:, 0])


def vit_tiny_test(num_classes: int = 10, **kw: Any) -> ViT:
    """A tiny ViT for tests: 16x16 images, patch 4, dim 32, 2 layers, 4 heads, MLP 64."""
    cfg: dict[str, Any] = dict(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
    cfg.update(kw)
    return ViT(num_classes=num_classes, **cfg)


def vit_ti16(num_classes: int = 1000, **kw: Any) -> ViT:
    """ViT-Ti/16: dim 192, 3 heads, 12 layers, MLP 768."""
    return ViT(**{**dict(hidden_size=192, num_heads=3, num_layers=12, mlp_dim=768), "num_classes": num_classes, **kw})


def vit_s16(num_classes: int = 1000, **kw: Any) -> ViT:
    """ViT-S/16: dim 384, 6 heads, 12 layers, MLP 1536."""
    return ViT(**{**dict(hidden_size=384, num_heads=6, num_layers=12, mlp_dim=1536), "num_classes": num_classes, **kw})


def vit_b16(num_classes: int = 1000, **kw: Any) -> ViT:
    """ViT-B/16: dim 768, 12 heads, 12 layers, MLP 3072."""
    return ViT(**{**dict(hidden_size=768, num_heads=12, num_layers=12, mlp_dim=3072), "num_classes": num_classes, **kw})
