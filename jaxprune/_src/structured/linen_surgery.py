"""Run any Flax Linen module with shrunk variables, without rewriting the module.

After :func:`shrink`, ``model.apply(small, x)`` fails for a user's own Linen
module: ``nn.Dense(features=64)`` still creates a 64-wide ``kernel`` and Flax
raises ``ScopeParamShapeError``. :func:`shrunk_linen_apply` runs
``model.apply`` inside :func:`flax.linen.intercept_methods`; before each layer
is called, the interceptor reads the layer's own (shrunk) variables and the
shapes of its inputs and overwrites the layer's width attributes on the bound
module (``object.__setattr__``). The bound module is a fresh copy made by
every ``apply``, so ``model`` itself is never changed, and everything read is
a static shape: the returned function is pure and works under ``jax.jit``,
``jax.grad`` and at any batch size, spatial size or sequence length.

Built-in layers (``isinstance``, so subclasses too):

* ``Dense``: ``features``; ``DenseGeneral``: ``features`` (int or tuple);
  ``Einsum``: ``shape``; ``Embed``: ``num_embeddings``, ``features``.
* ``Conv``/``ConvLocal``: ``features``; a grouped or depthwise ``Conv`` also
  ``feature_group_count`` = input channels // ``kernel.shape[-2]``;
  ``ConvTranspose``: ``features``.
* ``GroupNorm(num_groups=...)``: ``num_groups`` = new channels / old group
  size, the old channel count read from ``plan.leaf_shapes`` at the module's
  ``scale`` or ``bias`` (``group_size=...`` needs nothing).
* ``MultiHeadDotProductAttention`` (and ``SelfAttention``,
  ``MultiHeadAttention``): ``num_heads``, ``qkv_features``, ``out_features``
  from the ``query`` and ``out`` kernels; if the plan pruned the q/k
  ``head_dim``, ``attention_fn`` is wrapped so that queries are still scaled by
  ``1/sqrt(original head_dim)``, as in the masked dense model. (Without a plan
  the original head_dim is taken from ``qkv_features // num_heads`` when
  ``qkv_features`` is set, else assumed unchanged.)
* ``BatchNorm``, ``LayerNorm``, ``RMSNorm``, ``InstanceNorm``: nothing, they
  size their variables from the input.

Other modules whose variables are sized from their own attributes need a fix
``fn(module, variables_of_module, args, kwargs) -> {attribute: value}``,
passed as ``fixes={MyModule: fn}`` or registered with
:func:`register_linen_fix`. It runs after the built-in fix (if any) before
every ``__call__``, and before ``setup`` (with ``args=()``, ``kwargs={}``) for
modules that define one. A variable created at its unshrunk width raises a
``ValueError`` naming the module's path and type and telling to pass a fix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.errors
import flax.linen as nn
import numpy as np

from jaxprune._src.structured.prune_plan import PrunePlan

__all__ = ["register_linen_fix", "shrunk_linen_apply"]

Fix = Callable[[nn.Module, dict, tuple, dict], Mapping[str, Any]]
_REGISTRY: dict[type, Fix] = {}


def register_linen_fix(module_type: type, fn: Fix) -> None:
    """Registers ``fn(module, variables, args, kwargs) -> {attribute: value}`` for every call.

    The fix applies to ``module_type`` and its subclasses in every
    :func:`shrunk_linen_apply` (a ``fixes=`` entry of the same call wins).

    >>> import flax.linen as nn, jaxprune as jp
    >>> class Scale(nn.Module):
    ...     width: int
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return x * self.param('w', nn.initializers.ones, (self.width,))
    >>> jp.register_linen_fix(Scale, lambda m, v, args, kwargs: {'width': v['params']['w'].shape[0]})
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_linen_fix: module_type must be a flax.linen.Module subclass, got {module_type!r}")
    if not callable(fn):
        raise TypeError(f"register_linen_fix: fn must be callable, got {type(fn).__name__}")
    _REGISTRY[module_type] = fn


def _lookup(table: Mapping[type, Any], cls: type) -> Any:
    for c in cls.__mro__:
        if c in table:
            return table[c]
    return None


def _path(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.path) or "<root>"


def _var(vs: Mapping, *keys: str) -> tuple[int, ...] | None:
    """Shape of ``vs['params'][k0][k1]...`` or None."""
    x = vs.get("params")
    for k in keys:
        if not isinstance(x, Mapping) or k not in x:
            return None
        x = x[k]
    return tuple(np.shape(nn.unbox(x)))


def _orig_shape(plan: PrunePlan | None, module: nn.Module, leaf: str) -> tuple[int, ...] | None:
    """The leaf's shape before shrinking, from ``plan.leaf_shapes`` (paths with or without 'params/')."""
    if plan is None:
        return None
    rel = "/".join(map(str, module.path + (leaf,)))
    for key in (f"params/{rel}", rel):
        if key in plan.leaf_shapes:
            return tuple(plan.leaf_shapes[key])
    hits = [k for k in plan.leaf_shapes if k.endswith("/" + rel)]
    return tuple(plan.leaf_shapes[hits[0]]) if len(hits) == 1 else None


def _err(module: nn.Module, attr: str, why: str) -> ValueError:
    return ValueError(
        f"shrunk_linen_apply: cannot set {type(module).__name__}.{attr} at module '{_path(module)}': "
        f"{why} (or pass fixes={{{type(module).__name__}: fn}} returning {{'{attr}': ...}})"
    )


# ----------------------------------------------------------------------------- built-in fixes
def _dense(m, vs, args, kwargs, plan):
    k = _var(vs, "kernel")
    return {} if k is None else {"features": k[-1]}


def _dense_general(m, vs, args, kwargs, plan):
    k, f = _var(vs, "kernel"), m.features
    return {} if k is None else {"features": k[-1] if isinstance(f, int) else tuple(k[len(k) - len(f) :])}


def _einsum(m, vs, args, kwargs, plan):
    k = _var(vs, "kernel")
    return {} if k is None else {"shape": k}


def _embed(m, vs, args, kwargs, plan):
    e = _var(vs, "embedding")
    return {} if e is None else {"num_embeddings": e[0], "features": e[1]}


def _conv(m, vs, args, kwargs, plan):
    k = _var(vs, "kernel")
    if k is None:
        return {}
    out = {"features": k[-1]}
    x = args[0] if args else kwargs.get("inputs")
    if isinstance(m, nn.Conv) and m.feature_group_count != 1 and x is not None:  # grouped / depthwise
        cin, per_group = np.shape(x)[-1], k[-2]
        if cin % per_group or k[-1] % (cin // per_group):
            raise _err(m, "feature_group_count", f"input has {cin} channels, kernel {k}: no whole number of groups")
        out["feature_group_count"] = cin // per_group
    return out


def _conv_transpose(m, vs, args, kwargs, plan):
    k = _var(vs, "kernel")
    return {} if k is None else {"features": k[-2] if m.transpose_kernel else k[-1]}


def _group_norm(m, vs, args, kwargs, plan):
    x = args[0] if args else kwargs.get("x")
    if m.num_groups is None or x is None:  # group_size=...: the group count follows the channels
        return {}
    have = [leaf for leaf in ("scale", "bias") if _var(vs, leaf) is not None]
    old = next((s for s in (_orig_shape(plan, m, leaf) for leaf in have) if s is not None), None)
    if old is None:
        why = (
            "no plan was given"
            if plan is None and have
            else "it has no scale/bias"
            if not have
            else "the plan does not have its scale/bias"
        )
        raise _err(
            m,
            "num_groups",
            f"the original channel count is unknown ({why}); pass the plan, or use "
            "GroupNorm(num_groups=None, group_size=...)",
        )
    size, cin = old[-1] // m.num_groups, np.shape(x)[-1]
    if old[-1] % m.num_groups or cin % size:
        raise _err(
            m,
            "num_groups",
            f"{cin} channels are not whole groups of {size} (was {old[-1]} channels in {m.num_groups} groups)",
        )
    return {"num_groups": cin // size}


def _attention(m, vs, args, kwargs, plan):
    q, o = _var(vs, "query", "kernel"), _var(vs, "out", "kernel")
    if q is None or o is None:
        return {}
    heads, dq = q[-2], q[-1]
    fix = {"num_heads": heads, "qkv_features": heads * dq, "out_features": o[-1]}
    orig = _orig_shape(plan, m, "query/kernel")
    d_old = orig[-1] if orig else (m.qkv_features // m.num_heads if m.qkv_features else dq)
    if d_old != dq:  # pruned head_dim: keep the original 1/sqrt(head_dim) logit scale
        fn, factor = m.attention_fn, math.sqrt(dq / d_old)

        @functools.wraps(fn)  # keeps the signature, which the layer inspects for kwargs
        def attention_fn(query, key, value, *a, **kw):
            return fn(query * np.asarray(factor, query.dtype), key, value, *a, **kw)

        fix["attention_fn"] = attention_fn
    return fix


_BUILTIN: dict[type, Callable] = {
    nn.Dense: _dense,
    nn.DenseGeneral: _dense_general,
    nn.Einsum: _einsum,
    nn.Embed: _embed,
    nn.Conv: _conv,
    nn.ConvLocal: _conv,
    nn.ConvTranspose: _conv_transpose,
    nn.GroupNorm: _group_norm,
    nn.MultiHeadDotProductAttention: _attention,
}


def _shape_error(module: nn.Module, e: Exception, fixed: bool) -> ValueError:
    t, where = type(module).__name__, _path(module)
    if fixed:
        return ValueError(
            f"shrunk_linen_apply: {t} at module '{where}' creates a variable whose shape does not match its shrunk "
            f"variables even after its width attributes were set. Does the model choose its layers from activation "
            f"widths (e.g. `if x.shape[-1] != self.width: <projection>`), or do the variables not come from this "
            f"model? Flax said: {e}"
        )
    return ValueError(
        f"shrunk_linen_apply: {t} at module '{where}' creates a variable at a width its shrunk variables do not "
        f"have, and jaxprune cannot derive {t}'s width attributes. Pass shrunk_linen_apply(model, plan, "
        f"fixes={{{t}: fn}}) (or register_linen_fix({t}, fn)) where fn(module, variables, args, kwargs) returns the "
        f"attributes to set, e.g. {{'width': variables['params']['w'].shape[-1]}}. Flax said: {e}"
    )


# ----------------------------------------------------------------------------- the interceptor
def shrunk_linen_apply(
    model: nn.Module, plan: PrunePlan | None = None, *, fixes: Mapping[type, Fix] | None = None, method: Any = None
) -> Callable[..., Any]:
    """Returns ``apply(variables, *args, **kwargs)`` that runs ``model`` with shrunk variables.

    ``apply`` calls ``model.apply(variables, *args, method=method, **kwargs)``
    (so ``rngs=``, ``mutable=`` and the model's own keyword arguments pass
    through) while every layer's width attributes are set from its variables;
    see the module docstring for the layers covered. ``plan`` (the
    :class:`PrunePlan` the variables were shrunk with) is needed only for
    ``GroupNorm(num_groups=...)`` and for a pruned attention ``head_dim``.

    ``fixes`` maps module types (subclasses included) to
    ``fn(module, variables, args, kwargs) -> {attribute: value}`` for modules
    that size their own variables from attributes; ``variables`` is the
    module's ``{'params': {...}, ...}``. ``apply`` is pure: use it under
    ``jax.jit``/``jax.grad`` and at any input shape.

    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxprune as jp
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(3)(nn.relu(nn.Conv(8, (3, 3))(x)).mean((1, 2)))
    >>> model, x = Net(), jnp.ones((2, 8, 8, 3))
    >>> v = model.init(jax.random.key(0), x)
    >>> plan = jp.make_plan(v, jp.trace_groups(lambda v, x: model.apply(v, x), v, x), 0.5)
    >>> small = jp.shrink(v, plan)
    >>> small['params']['Conv_0']['kernel'].shape
    (3, 3, 3, 4)
    >>> jax.jit(jp.shrunk_linen_apply(model, plan))(small, jnp.ones((5, 12, 12, 3))).shape
    (5, 3)

    A module that reads its width from an attribute needs a fix:

    >>> class Gain(nn.Module):
    ...     width: int
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return x * self.param('g', nn.initializers.ones, (self.width,))
    >>> fix = lambda module, variables, args, kwargs: {'width': variables['params']['g'].shape[0]}
    >>> g = {'params': {'g': jnp.ones(2)}}
    >>> jp.shrunk_linen_apply(Gain(width=4), fixes={Gain: fix})(g, jnp.ones((1, 2))).shape
    (1, 2)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"shrunk_linen_apply: model must be a flax.linen Module, got {type(model).__name__}")
    if plan is not None and not isinstance(plan, PrunePlan):
        raise TypeError(f"shrunk_linen_apply: plan must be a PrunePlan or None, got {type(plan).__name__}")
    fixes = dict(fixes or {})
    for t, fn in fixes.items():
        if not (isinstance(t, type) and issubclass(t, nn.Module)) or not callable(fn):
            raise TypeError(f"shrunk_linen_apply: fixes must map Linen Module types to callables, got {t!r}: {fn!r}")

    def apply(variables, *args, **kwargs):
        originals: dict[int, tuple[nn.Module, dict]] = {}  # per call: a module called twice is fixed alike

        def set_attrs(module, attrs, who):
            saved = originals.setdefault(id(module), (module, {}))[1]
            for name, value in dict(attrs or {}).items():
                if not hasattr(module, name):
                    raise ValueError(
                        f"shrunk_linen_apply: {who} for module '{_path(module)}' returned unknown "
                        f"attribute {name!r} of {type(module).__name__}"
                    )
                saved.setdefault(name, getattr(module, name))
                object.__setattr__(module, name, value)

        def interceptor(next_fun, args, kwargs, context):
            module, name = context.module, context.method_name
            is_setup = name == "setup" and type(module).setup is not nn.Module.setup
            if module.scope is not None and (name == "__call__" or is_setup):
                for attr, value in originals.get(id(module), (None, {}))[1].items():  # derive from the originals
                    object.__setattr__(module, attr, value)
                vs = dict(module.variables)
                builtin = _lookup(_BUILTIN, type(module))
                a, kw = (args, kwargs) if name == "__call__" else ((), {})  # setup (e.g. nn.Embed): no inputs
                if builtin is not None:
                    set_attrs(module, builtin(module, vs, a, kw, plan), "the built-in fix")
                user = _lookup(fixes, type(module)) or _lookup(_REGISTRY, type(module))
                if user is not None:
                    set_attrs(module, user(module, vs, a, kw), f"the fix {getattr(user, '__name__', user)!r}")
            try:
                return next_fun(*args, **kwargs)
            except flax.errors.ScopeParamShapeError as e:  # the innermost module: the one creating the variable
                fixed = any(_lookup(t, type(module)) is not None for t in (_BUILTIN, fixes, _REGISTRY))
                raise _shape_error(module, e, fixed) from e

        with nn.intercept_methods(interceptor):
            return model.apply(variables, *args, method=method, **kwargs)

    return apply
