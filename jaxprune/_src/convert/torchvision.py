"""torchvision ResNet (18/34/50/101/152, v1.5) state dicts -> :class:`jaxprune.models.ResNet` variables.

Name mapping (torchvision -> Flax):

=====================================  ==========================================
``conv1.weight`` (O, I, kh, kw)        ``params/conv1/kernel`` (kh, kw, I, O)
``bn1.weight`` / ``bn1.bias``          ``params/bn1/scale`` / ``params/bn1/bias``
``bn1.running_mean`` / ``running_var`` ``batch_stats/bn1/mean`` / ``batch_stats/bn1/var``
``layer{s}.{b}.conv{j}``, ``bn{j}``    ``layer{s}_{b}/conv{j}``, ``bn{j}``
``layer{s}.{b}.downsample.0`` / ``.1`` ``layer{s}_{b}/downsample_conv`` / ``downsample_bn``
``fc.weight`` (out, in), ``fc.bias``   ``params/fc/kernel`` (in, out), ``params/fc/bias``
=====================================  ==========================================

``num_batches_tracked`` buffers are ignored. The architecture (block type,
blocks per stage, widths, classes) is read from the keys and shapes by
:func:`torchvision_resnet_config`. The reference model's BatchNorm uses
``epsilon=1e-5`` like torchvision, so eval-mode outputs match to float tolerance.

Example:
  >>> import jax, numpy as np
  >>> from jaxprune.models import resnet18
  >>> m = resnet18(num_classes=4)
  >>> sd = flax_to_torchvision_resnet(m.init(jax.random.key(0), m.example_input(1)))
  >>> model, variables = from_torchvision_resnet(sd)
  >>> model.num_classes, sorted(variables)
  (4, ['batch_stats', 'params'])
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxprune._src.convert.common import Entry, assemble, conv_kernel, linear_kernel, model_shapes, to_numpy
from jaxprune._src.tree import leaves_with_paths

__all__ = [
    "torchvision_resnet_config",
    "convert_torchvision_resnet",
    "from_torchvision_resnet",
    "flax_to_torchvision_resnet",
]

_IGNORE = (r"num_batches_tracked$",)
_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.")


def _bn_entries(flax: str, torch: str) -> list[Entry]:
    return [
        Entry(f"params/{flax}/scale", f"{torch}.weight"),
        Entry(f"params/{flax}/bias", f"{torch}.bias"),
        Entry(f"batch_stats/{flax}/mean", f"{torch}.running_mean"),
        Entry(f"batch_stats/{flax}/var", f"{torch}.running_var"),
    ]


def _block_layout(state_dict: Mapping[str, Any]) -> dict[int, int]:
    """``{stage: number of blocks}`` from keys like ``layer2.3.conv1.weight``."""
    blocks: dict[int, set[int]] = {}
    for k in state_dict:
        m = _BLOCK_RE.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    for s, bs in blocks.items():
        if bs != set(range(len(bs))):
            raise ValueError(f"torchvision ResNet: stage layer{s} has non-contiguous block indices {sorted(bs)}")
    if sorted(blocks) != list(range(1, len(blocks) + 1)):
        raise ValueError(f"torchvision ResNet: stages must be layer1..layerN, found {sorted(blocks)}")
    return {s: len(bs) for s, bs in sorted(blocks.items())}


def torchvision_resnet_config(state_dict: Mapping[str, Any], **overrides: Any) -> dict:
    """Keyword arguments of :class:`jaxprune.models.ResNet` matching a torchvision ResNet state dict.

    Reads the block type (``conv3`` present: bottleneck), the blocks per
    stage, the stage widths, the stem width, the input channels and the
    number of classes. ``overrides`` (e.g. ``image_size=224``) win.

    >>> import numpy as np
    >>> sd = {'conv1.weight': np.zeros((64, 3, 7, 7)), 'layer1.0.conv1.weight': np.zeros((64, 64, 3, 3)),
    ...       'fc.weight': np.zeros((10, 64))}
    >>> torchvision_resnet_config(sd)['stage_sizes']
    (1,)
    """
    for k in ("conv1.weight", "fc.weight"):
        if k not in state_dict:
            raise ValueError(f"torchvision ResNet: missing key {k!r} (is this a torchvision ResNet state dict?)")
    layout = _block_layout(state_dict)
    if not layout:
        raise ValueError("torchvision ResNet: no 'layer{s}.{b}.*' keys found")
    bottleneck = "layer1.0.conv3.weight" in state_dict
    conv1 = to_numpy(state_dict["conv1.weight"], "conv1.weight")
    stage_widths = []
    for s in layout:
        k = f"layer{s}.0.conv1.weight"
        if k not in state_dict:
            raise ValueError(f"torchvision ResNet: missing key {k!r}")
        stage_widths.append(int(np.shape(to_numpy(state_dict[k], k))[0]))
    cfg = dict(
        stage_sizes=tuple(layout.values()),
        block="bottleneck" if bottleneck else "basic",
        stage_widths=tuple(stage_widths),
        stem_width=int(conv1.shape[0]),
        in_channels=int(conv1.shape[1]),
        num_classes=int(np.shape(to_numpy(state_dict["fc.weight"]))[0]),
        small_input=conv1.shape[-1] == 3,
        image_size=224,
    )
    cfg.update(overrides)
    return cfg


def _entries(state_dict: Mapping[str, Any]) -> list[Entry]:
    entries = [Entry("params/conv1/kernel", "conv1.weight", conv_kernel), *_bn_entries("bn1", "bn1")]
    n_convs = 3 if "layer1.0.conv3.weight" in state_dict else 2
    for s, n in _block_layout(state_dict).items():
        for b in range(n):
            t, f = f"layer{s}.{b}", f"layer{s}_{b}"
            for j in range(1, n_convs + 1):
                entries.append(Entry(f"params/{f}/conv{j}/kernel", f"{t}.conv{j}.weight", conv_kernel))
                entries += _bn_entries(f"{f}/bn{j}", f"{t}.bn{j}")
            if f"{t}.downsample.0.weight" in state_dict:
                entries.append(Entry(f"params/{f}/downsample_conv/kernel", f"{t}.downsample.0.weight", conv_kernel))
                entries += _bn_entries(f"{f}/downsample_bn", f"{t}.downsample.1")
    entries += [Entry("params/fc/kernel", "fc.weight", linear_kernel), Entry("params/fc/bias", "fc.bias")]
    return entries


def convert_torchvision_resnet(state_dict: Mapping[str, Any], model: Any = None) -> dict:
    """Flax variables ``{'params', 'batch_stats'}`` for ``model`` from a torchvision ResNet state dict.

    ``model`` defaults to the :class:`~jaxprune.models.ResNet` described by
    :func:`torchvision_resnet_config`. Raises ``ValueError`` naming any
    missing, unexpected or mis-shaped key (e.g. a ResNet-34 checkpoint given
    for a ResNet-18 model).

    >>> import jax
    >>> from jaxprune.models import resnet18
    >>> m = resnet18(num_classes=3)
    >>> sd = flax_to_torchvision_resnet(m.init(jax.random.key(0), m.example_input(1)))
    >>> convert_torchvision_resnet(sd, m)['params']['conv1']['kernel'].shape
    (7, 7, 3, 64)
    """
    if model is None:
        from jaxprune.models import ResNet

        model = ResNet(**torchvision_resnet_config(state_dict))
    return assemble(
        state_dict,
        _entries(state_dict),
        lambda: model_shapes(model),
        ignore=_IGNORE,
        what="torchvision ResNet state dict",
    )


def from_torchvision_resnet(state_dict: Mapping[str, Any], **overrides: Any) -> tuple[Any, dict]:
    """``(model, variables)``: the matching :class:`~jaxprune.models.ResNet` and its converted variables.

    Example: ``model, v = from_torchvision_resnet(torchvision.models.resnet50().state_dict())``,
    then ``model.apply(v, x_nhwc)`` (inputs are NHWC: ``x_nchw.transpose(0, 2, 3, 1)``).
    """
    from jaxprune.models import ResNet

    model = ResNet(**torchvision_resnet_config(state_dict, **overrides))
    return model, convert_torchvision_resnet(state_dict, model)


def flax_to_torchvision_resnet(variables: Any) -> dict[str, np.ndarray]:
    """The inverse mapping: a torchvision-style state dict (NumPy arrays) from ResNet variables.

    Useful to export a (shrunk) model back to PyTorch and for round-trip tests.
    """
    inv = {}
    for e in _entries_from_variables(variables):
        inv[e.src] = e
    flat = {p: np.asarray(x) for p, x in leaves_with_paths(variables)}
    out = {}
    for src, e in inv.items():
        x = flat[e.dst]
        if e.fn is conv_kernel:
            x = np.transpose(x, (3, 2, 0, 1))
        elif e.fn is linear_kernel:
            x = x.T
        out[src] = np.ascontiguousarray(x)
    return out


def _entries_from_variables(variables: Any) -> list[Entry]:
    paths = {p for p, _ in leaves_with_paths(variables)}
    fake: dict[str, Any] = {}
    for p in paths:
        parts = p.split("/")[1:]
        m = re.match(r"layer(\d+)_(\d+)$", parts[0])
        if m:
            t = f"layer{m.group(1)}.{m.group(2)}."
            rest = parts[1].replace("downsample_conv", "downsample.0").replace("downsample_bn", "downsample.1")
            fake[t + rest + ".weight"] = None
    fake.update({"conv1.weight": None, "fc.weight": None})
    return _entries(fake)
