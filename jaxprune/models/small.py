"""Small Linen nets: ``MLP``, ``SmallCNN``, ``MobileNetBlockNet`` (depthwise), ``ConcatNet`` (concat).

They exercise the coupling patterns structured pruning must handle: plain chains,
BN after conv, depthwise convs (output channels = input channels), residual adds
and channel concatenation.

Example:
  >>> import jax
  >>> model = SmallCNN(channels=(8, 16), num_classes=3)
  >>> v = model.init(jax.random.key(0), model.example_input(2))
  >>> y, updates = model.apply(v, model.example_input(2), train=True, mutable=['batch_stats'])
  >>> y.shape
  (2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.models.core import Widths, register_model, sub_widths, width
from jaxprune.models.layers import batch_norm, check_same_width, conv

__all__ = ["MLP", "SmallCNN", "InvertedResidual", "MobileNetBlockNet", "ConcatNet"]


@register_model
class MLP(nn.Module):
    """Flatten -> ``fc_{i}`` (Dense + ReLU) -> ``head``."""

    features: tuple[int, ...] = (64, 64)
    num_classes: int = 10
    in_features: int = 64
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.in_features), jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = x.reshape(x.shape[0], -1)
        for i, f in enumerate(self.features):
            x = nn.relu(nn.Dense(width(self.widths, f"fc_{i}", f), name=f"fc_{i}")(x))
        return nn.Dense(width(self.widths, "head", self.num_classes), name="head")(x)


@register_model
class SmallCNN(nn.Module):
    """``conv_{i}`` (3x3, stride 1 then 2, no bias) -> ``bn_{i}`` -> ReLU, global average pool, ``head``."""

    channels: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 16
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, c in enumerate(self.channels):
            x = conv(width(self.widths, f"conv_{i}", c), 3, 1 if i == 0 else 2, name=f"conv_{i}")(x)
            x = nn.relu(batch_norm(train, name=f"bn_{i}")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(width(self.widths, "head", self.num_classes), name="head")(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand + BN + ReLU6] -> 3x3 depthwise + BN + ReLU6 -> 1x1 project + BN.

    The expand conv is omitted when ``expand_ratio == 1``. Residual add when ``residual``.
    """

    in_features: int
    out_features: int
    expand_ratio: int = 4
    strides: int = 1
    residual: bool = False
    widths: Widths = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w = self.widths
        y = x
        hidden = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            y = conv(width(w, "expand_conv", hidden), 1, name="expand_conv")(y)
            y = nn.relu6(batch_norm(train, name="expand_bn")(y))
        channels = y.shape[-1]
        dw = width(w, "dw_conv", hidden)
        if dw != channels:
            raise ValueError(
                f"{self.name}/dw_conv: a depthwise conv keeps its width, but widths give {dw} "
                f"output channels for {channels} input channels"
            )
        y = conv(channels, 3, self.strides, groups=channels, name="dw_conv")(y)
        y = nn.relu6(batch_norm(train, name="dw_bn")(y))
        y = conv(width(w, "project_conv", self.out_features), 1, name="project_conv")(y)
        y = batch_norm(train, name="project_bn")(y)
        if self.residual:
            check_same_width(self.name, x, y, "identity shortcut and residual branch")
            y = x + y
        return y


@register_model
class MobileNetBlockNet(nn.Module):
    """Small MobileNetV2-style net. ``block_specs`` rows: ``(expand_ratio, out_channels, stride)``."""

    block_specs: tuple[tuple[int, int, int], ...] = ((1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2))
    stem_width: int = 16
    last_width: int = 64
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 16
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(width(self.widths, "stem_conv", self.stem_width), 3, name="stem_conv")(x)
        x = nn.relu6(batch_norm(train, name="stem_bn")(x))
        in_f = self.stem_width
        for i, (t, out, s) in enumerate(self.block_specs):
            name = f"block_{i}"
            x = InvertedResidual(in_f, out, t, s, s == 1 and in_f == out, sub_widths(self.widths, name), name=name)(
                x, train
            )
            in_f = out
        x = conv(width(self.widths, "last_conv", self.last_width), 1, name="last_conv")(x)
        x = nn.relu6(batch_norm(train, name="last_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(width(self.widths, "head", self.num_classes), name="head")(x)


@register_model
class ConcatNet(nn.Module):
    """Inception/DenseNet-like net with channel concatenation.

    stem conv; two parallel branches (``branch1_conv`` 1x1, ``branch3_conv`` 3x3, each + BN + ReLU)
    concatenated; a dense block whose layers ``dense_{i}_conv`` (3x3, ``growth`` channels) + BN +
    ReLU have their outputs concatenated to their inputs; ``transition_conv`` 1x1 + BN + ReLU;
    global average pool; ``head``.
    """

    stem_width: int = 16
    branch_widths: tuple[int, int] = (8, 8)
    growth: int = 8
    num_dense: int = 3
    transition_width: int = 32
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 16
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w = self.widths

        def conv_bn_relu(x, name, feats, k, strides=1):
            x = conv(width(w, f"{name}_conv", feats), k, strides, name=f"{name}_conv")(x)
            return nn.relu(batch_norm(train, name=f"{name}_bn")(x))

        x = conv_bn_relu(x, "stem", self.stem_width, 3)
        a = conv_bn_relu(x, "branch1", self.branch_widths[0], 1)
        b = conv_bn_relu(x, "branch3", self.branch_widths[1], 3)
        x = jnp.concatenate([a, b], axis=-1)
        for i in range(self.num_dense):
            x = jnp.concatenate([x, conv_bn_relu(x, f"dense_{i}", self.growth, 3)], axis=-1)
        x = conv_bn_relu(x, "transition", self.transition_width, 1, strides=2)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(width(w, "head", self.num_classes), name="head")(x)
