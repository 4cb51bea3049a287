"""Run a shrunk NNX model: merge the shrunk state and fix the modules' width attributes.

``nnx.merge(graphdef, shrunk_state)`` accepts arrays of new shapes, but some
modules read their widths from attributes (``nnx.MultiHeadAttention`` reshapes
with ``num_heads``; ``nnx.Conv`` checks ``in_features``). :func:`shrink_nnx`
re-derives those attributes from the shrunk parameters for the built-in
modules (``Linear``, ``LinearGeneral``, ``Conv`` incl. grouped/depthwise,
``BatchNorm``/``LayerNorm``/``RMSNorm``/``GroupNorm``, ``Embed``,
``MultiHeadAttention``) and for any module with ``num_heads``/``head_dim``
attributes and ``query``/``key``/``value`` children holding ``(in, heads,
head_dim)`` kernels. Pass ``fix=`` for other custom attributes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flax import nnx

from jaxprune._src.structured.plan import PrunePlan
from jaxprune._src.structured.shrink import shrink

__all__ = ["shrink_nnx", "fix_nnx_attributes"]


def _shape(module, name):
    v = getattr(module, name, None)
    if v is None:
        return None
    if isinstance(v, nnx.Variable):
        v = v.get_value() if hasattr(v, "get_value") else v[...]
    return tuple(np.shape(v))


def _set(module, name, value) -> None:
    if hasattr(module, name) and value is not None:
        setattr(module, name, value)


def fix_nnx_attributes(root: nnx.Module, old_attrs: dict | None = None) -> None:
    """Re-derives width attributes of every sub-module from its (shrunk) parameters, in place."""
    old_attrs = old_attrs or {}
    for path, m in nnx.iter_modules(root):
        old = old_attrs.get(path, {})
        if isinstance(m, nnx.Conv):
            k = _shape(m, "kernel")
            old_groups = old.get("feature_group_count", m.feature_group_count)
            old_out = old.get("out_features", m.out_features)
            groups = old_groups
            if old_groups > 1:
                per_group_out = old_out // old_groups
                groups = max(1, k[-1] // per_group_out)
            _set(m, "feature_group_count", groups)
            _set(m, "in_features", k[-2] * groups)
            _set(m, "out_features", k[-1])
            _set(m, "kernel_shape", k)
        elif isinstance(m, nnx.LinearGeneral):
            k = _shape(m, "kernel")
            n_in = len(m.in_features) if isinstance(m.in_features, tuple) else 1
            ins, outs = k[:n_in], k[n_in:]
            _set(m, "in_features", ins if isinstance(m.in_features, tuple) else ins[0])
            _set(m, "out_features", outs if isinstance(m.out_features, tuple) else outs[0])
        elif isinstance(m, nnx.Linear):
            k = _shape(m, "kernel")
            _set(m, "in_features", k[0])
            _set(m, "out_features", k[1])
        elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
            s = _shape(m, "scale") or _shape(m, "bias") or _shape(m, "mean")
            if s is not None:
                _set(m, "num_features", s[-1])
        elif isinstance(m, nnx.Embed):
            e = _shape(m, "embedding")
            _set(m, "num_embeddings", e[0])
            _set(m, "features", e[1])
        if hasattr(m, "num_heads") and all(hasattr(m, n) for n in ("query", "key", "value")):
            q = _shape(m.query, "kernel")
            if q is not None and len(q) == 3:
                _set(m, "num_heads", q[1])
                _set(m, "head_dim", q[2])
                _set(m, "qkv_features", q[1] * q[2])
                _set(m, "in_features", q[0])
                if hasattr(m, "num_kv_heads"):
                    _set(m, "num_kv_heads", _shape(m.key, "kernel")[1])
                o = _shape(getattr(m, "out", None), "kernel")
                if o is not None:
                    _set(m, "out_features", o[-1])


def shrink_nnx(module: nnx.Module, plan: PrunePlan, *, fix: Callable[[nnx.Module], None] | None = None) -> nnx.Module:
    """A new, smaller NNX module: ``module``'s state shrunk by ``plan``, attributes updated.

    The input module is not modified. The plan must address the leaves of
    ``nnx.split(module)[1]`` (trace with ``nnx.split``/``nnx.merge``, see the example).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxprune._src.structured import trace_groups, make_plan
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.a, self.b = nnx.Linear(2, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)
      ...     def __call__(self, x): return self.b(jax.nn.relu(self.a(x)))
      >>> net = Net(nnx.Rngs(0)); graphdef, state = nnx.split(net)
      >>> g = trace_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((1, 2)))
      >>> shrink_nnx(net, make_plan(state, g, 0.5)).a.out_features
      4
    """
    graphdef, state = nnx.split(module)
    old_attrs = {}
    for path, m in nnx.iter_modules(module):
        old_attrs[path] = {n: getattr(m, n) for n in ("feature_group_count", "out_features") if hasattr(m, n)}
    new = nnx.merge(graphdef, shrink(state, plan))
    fix_nnx_attributes(new, old_attrs)
    if fix is not None:
        fix(new)
    return new
