"""ResNets (Linen, NHWC) with torchvision-like parameter names and per-layer widths.

Names mirror torchvision so weight converters are simple: ``conv1``, ``bn1``,
``layer{s}_{b}/{conv1,bn1,conv2,bn2[,conv3,bn3]}``,
``layer{s}_{b}/downsample_conv``, ``layer{s}_{b}/downsample_bn``, ``fc``.
Bottleneck blocks put the stride on the 3x3 conv (torchvision v1.5).
Paddings are explicit (``k // 2``) as in PyTorch, not 'SAME'.

Example:
  >>> import jax
  >>> model = cifar_resnet20(num_classes=10)
  >>> v = model.init(jax.random.key(0), model.example_input(2))
  >>> model.apply(v, model.example_input(2)).shape
  (2, 10)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.models.core import Widths, register_model, sub_widths, width
from jaxprune.models.layers import batch_norm, check_same_width, conv

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ResNet",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet34",
    "resnet18",
    "resnet34",
    "resnet50",
]


class BasicBlock(nn.Module):
    """Two 3x3 convs; projection shortcut (1x1 conv + BN) when ``downsample``."""

    features: int
    strides: int = 1
    downsample: bool = False
    widths: Widths = ()

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w = self.widths
        y = conv(width(w, "conv1", self.features), 3, self.strides, name="conv1")(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = conv(width(w, "conv2", self.features), 3, name="conv2")(y)
        y = batch_norm(train, name="bn2")(y)
        return nn.relu(y + _shortcut(self, x, y, train))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4); projection shortcut when ``downsample``."""

    features: int
    strides: int = 1
    downsample: bool = False
    widths: Widths = ()

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w = self.widths
        y = conv(width(w, "conv1", self.features), 1, name="conv1")(x)
        y = nn.relu(batch_norm(train, name="bn1")(y))
        y = conv(width(w, "conv2", self.features), 3, self.strides, name="conv2")(y)
        y = nn.relu(batch_norm(train, name="bn2")(y))
        y = conv(width(w, "conv3", self.features * 4), 1, name="conv3")(y)
        y = batch_norm(train, name="bn3")(y)
        return nn.relu(y + _shortcut(self, x, y, train))


def _shortcut(block: Any, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    if block.downsample:
        out = block.features * block.expansion
        r = conv(width(block.widths, "downsample_conv", out), 1, block.strides, padding=0, name="downsample_conv")(x)
        r = batch_norm(train, name="downsample_bn")(r)
        check_same_width(block.name, r, y, "downsample and residual branch")
    else:
        check_same_width(block.name, x, y, "identity shortcut and residual branch")
        r = x
    return r


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _stages(
    owner: str,
    widths: Widths,
    stage_sizes: tuple[int, ...],
    stage_widths: tuple[int, ...],
    block: str,
    x: jax.Array,
    train: bool,
    in_width: int,
) -> jax.Array:
    """Runs the residual stages (call inside a compact method: blocks get that module as parent).

    ``downsample`` is decided by the *default* widths, so it is part of the structure and does
    not change when the model is rebuilt with pruned widths.
    """
    if block not in _BLOCKS:
        raise ValueError(f"{owner}.block must be one of {sorted(_BLOCKS)}, got {block!r}")
    if len(stage_sizes) != len(stage_widths):
        raise ValueError(
            f"{owner}: stage_sizes {stage_sizes} and stage_widths {stage_widths} must have the same length"
        )
    cls = _BLOCKS[block]
    for s, (n, feats) in enumerate(zip(stage_sizes, stage_widths)):
        for b in range(n):
            strides = 2 if (s > 0 and b == 0) else 1
            name = f"layer{s + 1}_{b}"
            downsample = strides != 1 or in_width != feats * cls.expansion
            x = cls(feats, strides, downsample, sub_widths(widths, name), name=name)(x, train)
            in_width = feats * cls.expansion
    return x


def _scaled(widths: tuple[int, ...], multiplier: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(w * multiplier))) for w in widths)


@register_model
class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (stride 1, no maxpool), configurable stages of basic blocks.

    Depth ``6n + 2`` with ``stage_sizes=(n, n, n)``, widths ``(16, 32, 64) * width_multiplier``.
    Nevis' ``CifarResNet34`` is ``stage_sizes=(3, 4, 6, 3)``, ``stage_widths=(64, 128, 256, 512)``.
    """

    stage_sizes: tuple[int, ...] = (3, 3, 3)
    stage_widths: tuple[int, ...] = (16, 32, 64)
    width_multiplier: float = 1.0
    block: str = "basic"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stage_widths = _scaled(self.stage_widths, self.width_multiplier)
        stem = stage_widths[0]
        x = conv(width(self.widths, "conv1", stem), 3, name="conv1")(x)
        x = nn.relu(batch_norm(train, name="bn1")(x))
        x = _stages("CifarResNet", self.widths, self.stage_sizes, stage_widths, self.block, x, train, stem)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(width(self.widths, "fc", self.num_classes), name="fc")(x)


@register_model
class ResNet(nn.Module):
    """ImageNet-style ResNet (torchvision v1.5 layout).

    Stem 7x7/2 conv + BN + ReLU + 3x3/2 maxpool, or with ``small_input=True``
    a 3x3/1 conv and no maxpool (for 32x32 / 64x64 images).
    """

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    block: str = "basic"
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64
    num_classes: int = 1000
    small_input: bool = False
    in_channels: int = 3
    image_size: int = 32
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stem = width(self.widths, "conv1", self.stem_width)
        if self.small_input:
            x = conv(stem, 3, name="conv1")(x)
        else:
            x = conv(stem, 7, 2, name="conv1")(x)
        x = nn.relu(batch_norm(train, name="bn1")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = _stages("ResNet", self.widths, self.stage_sizes, self.stage_widths, self.block, x, train, self.stem_width)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(width(self.widths, "fc", self.num_classes), name="fc")(x)


def cifar_resnet20(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-20 for 32x32 inputs (3 stages of 3 basic blocks)."""
    return CifarResNet(**{"stage_sizes": (3, 3, 3), "num_classes": num_classes, **kw})


def cifar_resnet32(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-32 for 32x32 inputs (3 stages of 5 basic blocks)."""
    return CifarResNet(**{"stage_sizes": (5, 5, 5), "num_classes": num_classes, **kw})


def cifar_resnet56(num_classes: int = 10, **kw: Any) -> CifarResNet:
    """ResNet-56 for 32x32 inputs (3 stages of 9 basic blocks)."""
    return CifarResNet(**{"stage_sizes": (9, 9, 9), "num_classes": num_classes, **kw})


def cifar_resnet34(num_classes: int = 10, image_size: int = 64, **kw: Any) -> CifarResNet:
    """Nevis'22-style CifarResNet34: ResNet-34 stages with a 3x3/1 stem and no maxpool (64x64 inputs)."""
    return CifarResNet(
        **{
            "stage_sizes": (3, 4, 6, 3),
            "stage_widths": (64, 128, 256, 512),
            "num_classes": num_classes,
            "image_size": image_size,
            **kw,
        }
    )


def resnet18(num_classes: int = 1000, **kw: Any) -> ResNet:
    """torchvision ResNet-18 (pass ``small_input=True`` for 32x32/64x64 data)."""
    return ResNet(**{"stage_sizes": (2, 2, 2, 2), "block": "basic", "num_classes": num_classes, **kw})


def resnet34(num_classes: int = 1000, **kw: Any) -> ResNet:
    """torchvision ResNet-34."""
    return ResNet(**{"stage_sizes": (3, 4, 6, 3), "block": "basic", "num_classes": num_classes, **kw})


def resnet50(num_classes: int = 1000, **kw: Any) -> ResNet:
    """torchvision ResNet-50 v1.5 (bottleneck blocks, stride on the 3x3 conv)."""
    return ResNet(**{"stage_sizes": (3, 4, 6, 3), "block": "bottleneck", "num_classes": num_classes, **kw})
