"""EfficientNet-Lite0/1/2 (Linen, NHWC): MBConv blocks without squeeze-excite, ReLU6, fixed stem and head.

Layout and numerics follow ``efficientnet_lite_pytorch`` (the PyTorch port of
TensorFlow's ``efficientnet/lite`` builder) so that its checkpoints convert
exactly (see :mod:`jaxprune.convert`, ``load_efficientnet_lite``):

* stem: ``stem_conv`` 3x3/2, 32 filters + ``stem_bn`` + ReLU6 (not scaled);
* ``block_{i}`` (``i`` = the PyTorch ``_blocks.{i}`` index): [``expand_conv`` 1x1 +
  ``expand_bn`` + ReLU6 when the expand ratio is not 1] -> ``dw_conv`` kxk depthwise
  (``feature_group_count`` = channels) + ``dw_bn`` + ReLU6 -> ``project_conv`` 1x1 +
  ``project_bn``; identity residual when the stride is 1 and input and output widths
  are equal (decided by the default widths: structure, not width);
* head: ``head_conv`` 1x1, 1280 filters + ``head_bn`` + ReLU6 (not scaled), global
  average pool, ``fc``.

Widths are scaled by ``width_coefficient`` (TensorFlow's ``round_filters``: multiples
of 8, never more than 10% below) and repeats by ``depth_coefficient`` (``ceil``),
except the first and last stage's repeats. Convolutions use TensorFlow ``'SAME'``
padding, as the reference does (its ``Conv2dStaticSamePadding``): for a stride-2
conv on an even input this pads ``(k - 2) // 2`` before and ``k // 2`` after, not
``k // 2`` on both sides. BatchNorm: ``epsilon=1e-3``, ``momentum=0.99``. Dropout
before ``fc`` and drop-connect (training-only in the reference) are left out.
Inputs are RGB in ``[0, 1]`` mapped to ``(x * 255 - 127.5) / 128`` (see
:func:`preprocess`).

Example:
  >>> import jax
  >>> model = efficientnet_lite0(num_classes=5, image_size=32)
  >>> v = model.init(jax.random.key(0), model.example_input(2))
  >>> model.apply(v, model.example_input(2)).shape
  (2, 5)
  >>> model.apply(v, model.example_input(2), pre_logits=True).shape
  (2, 1280)
  >>> len(model.block_specs()), v['params']['block_15']['dw_conv']['kernel'].shape
  (16, (3, 3, 1, 1152))
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune.models.core import Widths, register_model, sub_widths, width
from jaxprune.models.layers import check_same_width

__all__ = [
    "EfficientNetLite",
    "MBConvBlock",
    "EFFICIENTNET_LITE_BLOCKS",
    "EFFICIENTNET_LITE_VARIANTS",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "preprocess",
]

#: Lite0 stages: ``(repeats, kernel, stride, expand_ratio, in_filters, out_filters)``.
EFFICIENTNET_LITE_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: ``variant -> (width_coefficient, depth_coefficient, resolution)`` (TensorFlow's lite builder).
EFFICIENTNET_LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}

BN_EPS = 1e-3
BN_MOMENTUM = 0.99  # TensorFlow convention (PyTorch momentum 0.01)


def preprocess(images: Any) -> jax.Array:
    """RGB images in ``[0, 1]`` (NHWC) -> the model's input scale ``(x * 255 - 127.5) / 128``.

    >>> float(preprocess(jnp.ones((1, 2, 2, 3)))[0, 0, 0, 0])
    0.99609375
    """
    return (jnp.asarray(images, jnp.float32) * 255.0 - 127.5) / 128.0


def round_filters(filters: int, multiplier: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: ``filters * multiplier`` to a multiple of ``divisor``, at most 10% lower.

    >>> round_filters(112, 1.1), round_filters(320, 1.1), round_filters(40, 1.0)
    (120, 352, 40)
    """
    if not multiplier:
        return int(filters)
    f = filters * multiplier
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def _conv(features: int, kernel: int, strides: int = 1, *, groups: int = 1, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME",
        use_bias=False,
        feature_group_count=groups,
        name=name,
    )


def _bn(train: bool, eps: float, momentum: float, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=eps, name=name)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite: [expand] -> depthwise -> project (+ identity)."""

    in_features: int
    out_features: int
    kernel: int = 3
    strides: int = 1
    expand_ratio: int = 6
    residual: bool = False
    bn_epsilon: float = BN_EPS
    bn_momentum: float = BN_MOMENTUM
    widths: Widths = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w, eps, mom = self.widths, self.bn_epsilon, self.bn_momentum
        y = x
        hidden = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            y = _conv(width(w, "expand_conv", hidden), 1, name="expand_conv")(y)
            y = nn.relu6(_bn(train, eps, mom, "expand_bn")(y))
        channels = y.shape[-1]
        dw = width(w, "dw_conv", hidden)
        if dw != channels:
            raise ValueError(
                f"{self.name}/dw_conv: a depthwise conv keeps its width, but widths give {dw} "
                f"output channels for {channels} input channels"
            )
        y = _conv(channels, self.kernel, self.strides, groups=channels, name="dw_conv")(y)
        y = nn.relu6(_bn(train, eps, mom, "dw_bn")(y))
        y = _conv(width(w, "project_conv", self.out_features), 1, name="project_conv")(y)
        y = _bn(train, eps, mom, "project_bn")(y)
        if self.residual:
            check_same_width(self.name, x, y, "identity shortcut and residual branch")
            y = x + y
        return y


@register_model
class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (no squeeze-excite, ReLU6, fixed stem/head), see the module docstring.

    ``blocks`` are the Lite0 stage rows ``(repeats, kernel, stride, expand, in, out)``;
    ``width_coefficient`` / ``depth_coefficient`` scale them (Lite1: ``1.0 / 1.1``,
    Lite2: ``1.1 / 1.2``). ``__call__(x, train=False, pre_logits=False)``: with
    ``pre_logits=True`` returns the pooled ``head_width`` features instead of logits.
    """

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    blocks: tuple[tuple[int, int, int, int, int, int], ...] = EFFICIENTNET_LITE_BLOCKS
    stem_width: int = 32
    head_width: int = 1280
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    bn_epsilon: float = BN_EPS
    bn_momentum: float = BN_MOMENTUM
    widths: Widths = ()

    def example_input(self, batch: int = 1) -> jax.Array:
        return jnp.zeros((batch, self.image_size, self.image_size, self.in_channels), jnp.float32)

    def block_specs(self) -> list[tuple[int, int, int, int, int, bool]]:
        """One row per block (``block_{i}``): ``(kernel, stride, expand, in, out, residual)`` at default widths."""
        specs = []
        last = len(self.blocks) - 1
        for s, (repeats, k, stride, expand, fin, fout) in enumerate(self.blocks):
            fin = self.stem_width if s == 0 else round_filters(fin, self.width_coefficient)
            fout = round_filters(fout, self.width_coefficient)
            n = repeats if s in (0, last) else int(math.ceil(self.depth_coefficient * repeats))
            for b in range(n):
                st, i = (stride, fin) if b == 0 else (1, fout)
                specs.append((k, st, expand, i, fout, st == 1 and i == fout))
        return specs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, pre_logits: bool = False) -> jax.Array:
        w, eps, mom = self.widths, self.bn_epsilon, self.bn_momentum
        x = _conv(width(w, "stem_conv", self.stem_width), 3, 2, name="stem_conv")(x)
        x = nn.relu6(_bn(train, eps, mom, "stem_bn")(x))
        for i, (k, s, e, fin, fout, res) in enumerate(self.block_specs()):
            name = f"block_{i}"
            x = MBConvBlock(fin, fout, k, s, e, res, eps, mom, sub_widths(w, name), name=name)(x, train)
        x = _conv(width(w, "head_conv", self.head_width), 1, name="head_conv")(x)
        x = nn.relu6(_bn(train, eps, mom, "head_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        if pre_logits:
            return x
        return nn.Dense(width(w, "fc", self.num_classes), name="fc")(x)


def _lite(variant: str, num_classes: int, kw: dict[str, Any]) -> EfficientNetLite:
    wc, dc, res = EFFICIENTNET_LITE_VARIANTS[variant]
    return EfficientNetLite(
        **{"width_coefficient": wc, "depth_coefficient": dc, "image_size": res, "num_classes": num_classes, **kw}
    )


def efficientnet_lite0(num_classes: int = 1000, **kw: Any) -> EfficientNetLite:
    """EfficientNet-Lite0 (224x224, 16 blocks, 4.7M params with 1000 classes)."""
    return _lite("lite0", num_classes, kw)


def efficientnet_lite1(num_classes: int = 1000, **kw: Any) -> EfficientNetLite:
    """EfficientNet-Lite1 (240x240, depth x1.1: 21 blocks)."""
    return _lite("lite1", num_classes, kw)


def efficientnet_lite2(num_classes: int = 1000, **kw: Any) -> EfficientNetLite:
    """EfficientNet-Lite2 (260x260, width x1.1, depth x1.2: 21 blocks)."""
    return _lite("lite2", num_classes, kw)
