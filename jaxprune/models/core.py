"""Per-layer widths, model configs and rebuilding a Linen model from shrunk params.

Structured pruning shrinks tensors. A Linen module with fixed ``features``
raises ``ScopeParamShapeError`` when applied to shrunk params, so every
reference model here is a flax dataclass with a field

    widths: tuple[tuple[str, int], ...] = ()

mapping a layer's param path (``"layer1_0/conv1"``, ``"encoder_0/mlp/fc1"``)
to its output width (for an attention layer such as ``"encoder_0/attn"``: its
number of heads; ``head_dim`` stays). Input widths follow from the previous
layer because Linen infers them lazily. :func:`rebuild` reads the widths from
the shapes of (possibly shrunk) variables; :func:`get_config` /
:func:`from_config` turn a model, widths included, into JSON and back.

Example:
  >>> from jaxprune.models import SmallCNN, get_config, from_config
  >>> model = SmallCNN(channels=(8, 16), widths=(("conv_1", 4),))   # conv_1 shrunk to 4 filters
  >>> from_config(get_config(model)) == model
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn

from jaxprune._src.tree import leaves_with_paths

Widths = tuple[tuple[str, int], ...]

__all__ = [
    "Widths",
    "width",
    "sub_widths",
    "register_model",
    "registered_models",
    "get_config",
    "from_config",
    "rebuild",
    "layer_widths",
    "check_widths",
]

_ATTN_PROJ = ("query", "key", "value")


# --------------------------------------------------------------------------- widths helpers
def width(widths: Widths, path: str, default: int) -> int:
    """The output width of layer ``path``: its entry in ``widths``, else ``default``.

    >>> width((("conv1", 4),), "conv1", 16), width((), "conv1", 16)
    (4, 16)
    """
    for key, value in widths:
        if key == path:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"widths[{path!r}] must be a positive int, got {value!r}")
            return int(value)
    return int(default)


def sub_widths(widths: Widths, prefix: str) -> Widths:
    """Entries of ``widths`` under ``prefix + "/"``, with that prefix stripped.

    >>> sub_widths((("layer1_0/conv1", 4), ("fc", 3)), "layer1_0")
    (('conv1', 4),)
    """
    head = prefix + "/"
    return tuple((k[len(head) :], v) for k, v in widths if k.startswith(head))


def _check_widths_field(widths: Any, owner: str) -> None:
    if not isinstance(widths, tuple) or not all(
        isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) for e in widths
    ):
        raise TypeError(f"{owner}.widths must be a tuple of (path: str, width: int) pairs, got {widths!r}")


# --------------------------------------------------------------------------- registry / config
_REGISTRY: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Class decorator: makes ``cls`` known to :func:`from_config` under its class name."""
    if cls.__name__ in _REGISTRY and _REGISTRY[cls.__name__] is not cls:
        raise ValueError(f"a model class named {cls.__name__!r} is already registered")
    _REGISTRY[cls.__name__] = cls
    return cls


def registered_models() -> dict[str, type]:
    """Name -> class of every model :func:`from_config` can build."""
    return dict(_REGISTRY)


def _config_fields(model: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(model) if f.name not in ("parent", "name") and f.init]


def _to_json(value: Any, where: str) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_json(v, where) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"get_config: field {where} holds {type(value).__name__}, which is not JSON-serializable")


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value


def get_config(model: nn.Module) -> dict:
    """JSON-serializable description of a registered model: class name and fields, widths included.

    >>> from jaxprune.models import SmallCNN
    >>> get_config(SmallCNN(channels=(4, 8), widths=(("conv_0", 2),)))["config"]["widths"]
    [['conv_0', 2]]
    """
    cls = type(model)
    _check_widths_field(getattr(model, "widths", ()), cls.__name__)
    if cls.__name__ not in _REGISTRY:
        raise TypeError(
            f"get_config: {cls.__name__} is not a registered model (known: {sorted(_REGISTRY)}); "
            "decorate it with jaxprune.models.register_model"
        )
    return {
        "class": cls.__name__,
        "config": {f.name: _to_json(getattr(model, f.name), f"{cls.__name__}.{f.name}") for f in _config_fields(model)},
    }


def from_config(config: Mapping[str, Any]) -> nn.Module:
    """Builds the model described by :func:`get_config`'s output (e.g. read back from JSON).

    >>> import json
    >>> from jaxprune.models import SmallCNN
    >>> m = SmallCNN(channels=(4, 8), widths=(("conv_0", 2),))
    >>> from_config(json.loads(json.dumps(get_config(m)))) == m
    True
    """
    if not isinstance(config, Mapping) or "class" not in config or "config" not in config:
        raise ValueError(f"from_config: expected a dict with keys 'class' and 'config', got {config!r}")
    name = config["class"]
    if name not in _REGISTRY:
        raise ValueError(f"from_config: unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[name]
    if not isinstance(config["config"], Mapping):
        raise ValueError(f"from_config: config['config'] must be a dict of fields, got {config['config']!r}")
    known = {f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
    unknown = sorted(set(config["config"]) - known)
    if unknown:
        raise ValueError(f"from_config: {name} has no field(s) {unknown}; fields are {sorted(known)}")
    model = cls(**{k: _to_tuple(v) for k, v in config["config"].items()})
    if getattr(model, "widths", ()):
        check_widths(model)
    return model


# --------------------------------------------------------------------------- rebuild
def _width_key(path: str, shape: tuple[int, ...]) -> tuple[str, int] | None:
    """(layer path, output width) carried by the param leaf ``path``, or None.

    ``.../kernel`` and ``.../embedding`` carry their layer's output width in the
    last axis; the 3-d ``query/key/value`` kernels of an attention layer
    (shape ``(D, heads, head_dim)``) carry the attention layer's number of heads.
    """
    parts = path.split("/")
    leaf = parts[-1]
    if leaf not in ("kernel", "embedding") or len(parts) < 2 or len(shape) < 2:
        return None
    if leaf == "kernel" and parts[-2] in _ATTN_PROJ and len(shape) == 3 and len(parts) >= 3:
        return "/".join(parts[:-2]), int(shape[1])
    return "/".join(parts[:-1]), int(shape[-1])


def layer_widths(params: Any) -> dict[str, int]:
    """Output width of every layer found in ``params`` (see :func:`rebuild`).

    >>> import jax.numpy as jnp
    >>> layer_widths({'conv1': {'kernel': jnp.zeros((3, 3, 3, 8))}})
    {'conv1': 8}
    """
    out: dict[str, int] = {}
    for path, leaf in leaves_with_paths(params):
        key = _width_key(path, tuple(np.shape(leaf)))
        if key is None:
            continue
        layer, w = key
        if layer in out and out[layer] != w:
            raise ValueError(
                f"layer {layer!r}: its projections disagree on the width ({out[layer]} vs {w} at {path!r})"
            )
        out[layer] = w
    return out


def check_widths(model: nn.Module) -> None:
    """Raises ``ValueError`` if ``model.widths`` names a layer the model lacks or gives an inconsistent model.

    Traces the model abstractly (``jax.eval_shape``, no compilation).

    >>> from jaxprune.models import SmallCNN
    >>> check_widths(SmallCNN(widths=(("conv_0", 4),)))
    >>> check_widths(SmallCNN(widths=(("conv0", 4),)))
    Traceback (most recent call last):
    ...
    ValueError: SmallCNN.widths: no layer named 'conv0'; layers are ['conv_0', 'conv_1', 'conv_2', 'head']
    """
    _check_widths_field(model.widths, type(model).__name__)
    for k, _ in model.widths:
        width(model.widths, k, 1)  # validates the value
    try:
        shapes = _init_shapes(model)
    except Exception as e:
        raise ValueError(f"{type(model).__name__}.widths={dict(model.widths)} give an inconsistent model: {e}") from e
    layers = set(layer_widths(shapes["params"]))
    for k, _ in model.widths:
        if k not in layers:
            raise ValueError(f"{type(model).__name__}.widths: no layer named {k!r}; layers are {sorted(layers)[:30]}")


def _collections(variables: Any) -> dict[str, Any]:
    if isinstance(variables, Mapping) and "params" in variables:
        return {k: variables[k] for k in variables}
    if isinstance(variables, Mapping):
        return {"params": variables}
    raise TypeError(
        f"rebuild: variables must be a Linen variables dict or a params dict, got {type(variables).__name__}"
    )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {p: tuple(np.shape(x)) for p, x in leaves_with_paths(tree)}


def _init_shapes(model: nn.Module) -> dict[str, Any]:
    x = model.example_input(1)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def rebuild(model: nn.Module, variables: Any) -> nn.Module:
    """``model.clone(widths=...)`` with every layer width read from ``variables``' shapes.

    ``variables`` is a Linen variables dict (``{'params': ..., 'batch_stats': ...}``)
    or a bare params dict, possibly shrunk by structured pruning. The shapes are
    compared to those of the default model (``widths=()``); every layer whose
    output width differs is recorded. Raises ``ValueError`` naming the layer or
    leaf when the paths differ, when a width cannot be derived from output
    widths (e.g. a pruned ``head_dim``) or when the widths are inconsistent
    (e.g. a residual branch and its shortcut of different widths).

    >>> import jax
    >>> from jaxprune.models import SmallCNN
    >>> model = SmallCNN(channels=(8, 16), num_classes=3)
    >>> v = model.init(jax.random.key(0), model.example_input(1))
    >>> v['params']['conv_1']['kernel'] = v['params']['conv_1']['kernel'][..., :4]
    >>> v['params']['head']['kernel'] = v['params']['head']['kernel'][:4]
    >>> v = {c: {**t, 'bn_1': jax.tree.map(lambda a: a[:4], t['bn_1'])} for c, t in v.items()}
    >>> rebuild(model, v).widths
    (('conv_1', 4),)
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "widths") or not hasattr(model, "example_input"):
        raise TypeError(
            f"rebuild: expected a jaxprune reference Linen model (with `widths` and `example_input`), "
            f"got {type(model).__name__}"
        )
    _check_widths_field(model.widths, type(model).__name__)
    given = _collections(variables)
    base = model.clone(widths=())
    default = _init_shapes(base)
    given_p, default_p = _shapes(given["params"]), _shapes(default["params"])
    if set(given_p) != set(default_p):
        missing = sorted(set(default_p) - set(given_p))
        extra = sorted(set(given_p) - set(default_p))
        raise ValueError(
            f"rebuild: params do not match {type(model).__name__}'s structure: missing {missing[:10]}, "
            f"unexpected {extra[:10]}"
        )
    given_w = layer_widths(given["params"])
    default_w = layer_widths(default["params"])
    widths = tuple(sorted((k, w) for k, w in given_w.items() if w != default_w[k]))
    new = model.clone(widths=widths)
    try:
        expected = _init_shapes(new)
    except Exception as e:  # a residual/concat mismatch raised by the model, or an XLA shape error
        raise ValueError(
            f"rebuild: the widths read from the variables do not give a consistent {type(model).__name__} "
            f"(widths={dict(widths)}): {e}"
        ) from e
    for coll, tree in given.items():
        if coll not in expected:
            continue
        exp = _shapes(expected[coll])
        for path, shape in _shapes(tree).items():
            if path not in exp:
                raise ValueError(f"rebuild: leaf {coll}/{path} is not a variable of the rebuilt model")
            if exp[path] != shape:
                raise ValueError(
                    f"rebuild: leaf {coll}/{path} has shape {shape}, but the model rebuilt from the layer "
                    f"output widths expects {exp[path]}; this axis cannot be derived from output widths "
                    "(e.g. a pruned head_dim, pruned input channels of the first layer, or inconsistent "
                    "slicing of coupled leaves)"
                )
    return new
