"""timm ``VisionTransformer`` state dicts (ViT-Ti/S/B, class token) -> :class:`jaxprune.models.ViT` variables.

Name mapping (timm -> Flax), ``D`` = embedding width, ``H`` heads, ``Dh = D / H``:

=======================================  =================================================
``cls_token`` (1, 1, D)                  ``cls_token``
``pos_embed`` (1, 1 + N, D)              ``pos_embedding``
``patch_embed.proj.weight`` (D, C, p, p) ``patch_embed/kernel`` (p, p, C, D)
``blocks.{i}.norm1`` / ``norm2``         ``encoder_{i}/ln1`` / ``ln2`` (``weight`` -> ``scale``)
``blocks.{i}.attn.qkv.weight`` (3D, D)   ``encoder_{i}/attn/{query,key,value}/kernel`` (D, H, Dh)
``blocks.{i}.attn.qkv.bias`` (3D,)       ``encoder_{i}/attn/{query,key,value}/bias`` (H, Dh)
``blocks.{i}.attn.proj.weight`` (D, D)   ``encoder_{i}/attn/out/kernel`` (H, Dh, D)
``blocks.{i}.mlp.fc1`` / ``fc2``         ``encoder_{i}/mlp/fc1`` / ``fc2``
``norm``, ``head``                       ``norm``, ``head``
=======================================  =================================================

The fused ``qkv`` rows are ``[q; k; v]``, each ``H`` blocks of ``Dh`` rows
(timm reshapes the qkv output to ``(3, H, Dh)``). The number of heads cannot be
read from the shapes: :func:`timm_vit_config` takes ``num_heads`` or uses the
standard one for the width (192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16).
Supported: class-token pooling (``global_pool='token'``), no register tokens,
no layer scale, no ``fc_norm`` (timm's defaults for ``vit_*_patch16_224``).
The reference ViT uses LayerNorm ``eps=1e-6`` and exact GELU, as timm.

Example:
  >>> import jax
  >>> from jaxprune.models import vit_tiny_test
  >>> m = vit_tiny_test(num_classes=3)
  >>> sd = flax_to_timm_vit(m.init(jax.random.key(0), m.example_input(1)))
  >>> convert_timm_vit(sd, m)['params']['encoder_0']['attn']['query']['kernel'].shape
  (32, 4, 8)
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

import numpy as np

from jaxprune._src.convert.common import (
    Entry,
    assemble,
    attn_out_kernel,
    conv_kernel,
    count_layers,
    dense_entries,
    layer_norm_entries,
    linear_kernel,
    model_shapes,
    to_numpy,
)
from jaxprune._src.tree import leaves_with_paths

__all__ = ["timm_vit_config", "convert_timm_vit", "from_timm_vit", "flax_to_timm_vit", "STANDARD_VIT_HEADS"]

#: Heads of the standard ViT sizes, by embedding width.
STANDARD_VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

_UNSUPPORTED = {
    "reg_token": "register tokens",
    "fc_norm.weight": "fc_norm (average pooling head)",
    "blocks.0.ls1.gamma": "layer scale",
    "dist_token": "a distillation token (DeiT distilled)",
}


def _qkv_kernel(j: int, heads: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(w: np.ndarray) -> np.ndarray:  # (3D, D) -> (D, H, Dh) for q (j=0), k (1), v (2)
        if w.ndim != 2 or w.shape[0] % 3 or (w.shape[0] // 3) % heads:
            raise ValueError(f"expected a fused qkv weight (3*H*Dh, D) with H={heads}, got shape {w.shape}")
        n = w.shape[0] // 3
        return w[j * n : (j + 1) * n].T.reshape(w.shape[1], heads, n // heads)

    return fn


def _qkv_bias(j: int, heads: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(b: np.ndarray) -> np.ndarray:  # (3D,) -> (H, Dh)
        if b.ndim != 1 or b.shape[0] % 3 or (b.shape[0] // 3) % heads:
            raise ValueError(f"expected a fused qkv bias (3*H*Dh,) with H={heads}, got shape {b.shape}")
        n = b.shape[0] // 3
        return b[j * n : (j + 1) * n].reshape(heads, n // heads)

    return fn


def timm_vit_config(state_dict: Mapping[str, Any], num_heads: int | None = None, **overrides: Any) -> dict:
    """Keyword arguments of :class:`jaxprune.models.ViT` matching a timm ViT state dict.

    >>> import numpy as np
    >>> sd = {'patch_embed.proj.weight': np.zeros((192, 3, 16, 16)), 'pos_embed': np.zeros((1, 197, 192)),
    ...       'blocks.0.mlp.fc1.weight': np.zeros((768, 192)), 'head.weight': np.zeros((1000, 192))}
    >>> c = timm_vit_config(sd); (c['image_size'], c['num_heads'], c['num_layers'])
    (224, 3, 1)
    """
    for k, what in _UNSUPPORTED.items():
        if k in state_dict:
            raise ValueError(f"timm ViT: key {k!r} found: {what} is not supported by jaxprune.models.ViT")
    for k in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight", "head.weight"):
        if k not in state_dict:
            raise ValueError(f"timm ViT: missing key {k!r} (is this a timm VisionTransformer state dict?)")
    patch = to_numpy(state_dict["patch_embed.proj.weight"])
    d, c, p = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    n_tokens = int(np.shape(to_numpy(state_dict["pos_embed"]))[1])
    side = math.isqrt(n_tokens - 1)
    if side * side != n_tokens - 1:
        raise ValueError(
            f"timm ViT: pos_embed has {n_tokens} tokens, not 1 + a square number of patches "
            "(only square images with a class token are supported)"
        )
    if num_heads is None:
        if d not in STANDARD_VIT_HEADS:
            raise ValueError(
                f"timm ViT: embedding width {d} is not a standard ViT size {sorted(STANDARD_VIT_HEADS)}; pass num_heads"
            )
        num_heads = STANDARD_VIT_HEADS[d]
    cfg = dict(
        image_size=side * p,
        patch_size=p,
        hidden_size=d,
        num_layers=count_layers(state_dict, "blocks", "timm ViT"),
        num_heads=int(num_heads),
        mlp_dim=int(np.shape(to_numpy(state_dict["blocks.0.mlp.fc1.weight"]))[0]),
        num_classes=int(np.shape(to_numpy(state_dict["head.weight"]))[0]),
        in_channels=c,
        layer_norm_eps=1e-6,
    )
    cfg.update(overrides)
    return cfg


def _entries(num_layers: int, heads: int) -> list[Entry]:
    entries = [
        Entry("params/cls_token", "cls_token"),
        Entry("params/pos_embedding", "pos_embed"),
        Entry("params/patch_embed/kernel", "patch_embed.proj.weight", conv_kernel),
        Entry("params/patch_embed/bias", "patch_embed.proj.bias"),
    ]
    for i in range(num_layers):
        t, f = f"blocks.{i}", f"encoder_{i}"
        entries += layer_norm_entries(f"{f}/ln1", f"{t}.norm1") + layer_norm_entries(f"{f}/ln2", f"{t}.norm2")
        for j, name in enumerate(("query", "key", "value")):
            entries.append(Entry(f"params/{f}/attn/{name}/kernel", f"{t}.attn.qkv.weight", _qkv_kernel(j, heads)))
            entries.append(Entry(f"params/{f}/attn/{name}/bias", f"{t}.attn.qkv.bias", _qkv_bias(j, heads)))
        entries += [
            Entry(f"params/{f}/attn/out/kernel", f"{t}.attn.proj.weight", attn_out_kernel(heads)),
            Entry(f"params/{f}/attn/out/bias", f"{t}.attn.proj.bias"),
        ]
        entries += dense_entries(f"{f}/mlp/fc1", f"{t}.mlp.fc1") + dense_entries(f"{f}/mlp/fc2", f"{t}.mlp.fc2")
    entries += layer_norm_entries("norm", "norm") + dense_entries("head", "head")
    return entries


def convert_timm_vit(state_dict: Mapping[str, Any], model: Any = None, *, num_heads: int | None = None) -> dict:
    """Flax variables ``{'params': ...}`` for ``model`` (a :class:`~jaxprune.models.ViT`) from a timm state dict.

    ``model`` defaults to the ViT described by :func:`timm_vit_config`.
    Raises ``ValueError`` naming any missing, unexpected or mis-shaped key.
    """
    if model is None:
        from jaxprune.models import ViT

        model = ViT(**timm_vit_config(state_dict, num_heads))
    heads = model.num_heads
    return assemble(
        state_dict, _entries(model.num_layers, heads), lambda: model_shapes(model), what="timm ViT state dict"
    )


def from_timm_vit(state_dict: Mapping[str, Any], num_heads: int | None = None, **overrides: Any) -> tuple[Any, dict]:
    """``(model, variables)`` for a timm ViT state dict, e.g. ``timm.create_model('vit_tiny_patch16_224')``.

    Inputs of the Flax model are NHWC (``x_nchw.transpose(0, 2, 3, 1)``).
    """
    from jaxprune.models import ViT

    model = ViT(**timm_vit_config(state_dict, num_heads, **overrides))
    return model, convert_timm_vit(state_dict, model)


def flax_to_timm_vit(variables: Any) -> dict[str, np.ndarray]:
    """The inverse mapping: a timm-style state dict (NumPy) from :class:`~jaxprune.models.ViT` variables."""
    flat = {p: np.asarray(x) for p, x in leaves_with_paths(variables)}
    if "params/cls_token" not in flat:
        raise ValueError("flax_to_timm_vit: variables have no params/cls_token; not a jaxprune ViT")
    n = len({m.group(1) for p in flat if (m := re.match(r"params/encoder_(\d+)/", p))})
    out: dict[str, np.ndarray] = {}
    for e in _entries(n, 1):
        if e.src in out:  # the fused qkv key feeds three entries
            continue
        x = flat[e.dst]
        if "attn.qkv" in e.src:
            f = e.dst.rsplit("/", 2)[0]
            parts = [flat[f"{f}/{nm}/{e.dst.rsplit('/', 1)[1]}"] for nm in ("query", "key", "value")]
            if e.src.endswith("weight"):
                x = np.concatenate([q.reshape(q.shape[0], -1).T for q in parts], axis=0)
            else:
                x = np.concatenate([q.reshape(-1) for q in parts])
        elif e.src.endswith("attn.proj.weight"):
            x = x.reshape(-1, x.shape[-1]).T
        elif e.fn is conv_kernel:
            x = np.transpose(x, (3, 2, 0, 1))
        elif e.fn is linear_kernel:
            x = x.T
        out[e.src] = np.ascontiguousarray(x)
    return out
