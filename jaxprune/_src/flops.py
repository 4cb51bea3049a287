"""FLOPs from XLA's cost analysis, parameter counts and bytes, before/after tables.

``flops(fn, *args)`` compiles ``fn`` for the given arguments (arrays or
``jax.ShapeDtypeStruct``; nothing is executed) and reads ``"flops"`` from
``compiled.cost_analysis()`` -- the count the compute-optimal-transfer study
uses. Non-array arguments and keyword arguments are static.

XLA's cost analysis counts a loop body once, whatever its trip count, so a
model whose layers are one ``lax.scan`` (``nn.scan``, ``nnx.scan``) would read
about ``num_layers`` times too cheap. Functions containing ``scan`` are
therefore compiled with their scans fully unrolled (same arithmetic, counted
per iteration), including scans inside ``jit`` / ``remat`` calls. Still counted
once: ``while_loop`` bodies (trip count unknown when compiling) and scans inside
``cond`` branches or ``custom_jvp`` / ``custom_vjp`` functions.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxprune._src.tree import leaves_with_paths

__all__ = ["flops", "param_count", "param_bytes", "model_stats", "compare_models"]


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def cost_analysis(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return dict(ca or {})


def flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """XLA FLOPs of one call ``fn(*args, **kwargs)`` (jit-compiled, not run).

    >>> import jax.numpy as jnp
    >>> flops(lambda a, b: a @ b, jnp.ones((4, 8)), jnp.ones((8, 2)))
    128.0
    """
    leaves, tree = jax.tree_util.tree_flatten(args)
    is_arr = [_is_array(x) for x in leaves]
    dyn = [x for x, a in zip(leaves, is_arr) if a]

    def wrapped(*d):
        it = iter(d)
        full = [next(it) if a else x for x, a in zip(leaves, is_arr)]
        return fn(*jax.tree_util.tree_unflatten(tree, full), **kwargs)

    return counted_flops(wrapped, *dyn)


def counted_flops(fn: Callable[..., Any], *args: Any) -> float:
    """XLA FLOPs of ``jax.jit(fn)(*args)`` (all args arrays), counted by the **CPU** compiler.

    GPU backends lower convolutions to cuDNN custom calls that XLA's cost
    analysis does not count (a ResNet reads ~50x cheaper), so on any non-CPU
    backend the function is compiled (never run) for the host CPU from the
    arguments' shapes; FLOPs are then the same on every backend.
    """
    if jax.default_backend() != "cpu":
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=cpu), args)
    closed = jax.make_jaxpr(fn)(*args)
    if _has_scan(closed.jaxpr):
        out_tree = jax.tree_util.tree_structure(jax.eval_shape(fn, *args))

        def fn(*a):  # the same computation with every scan unrolled
            flat = _eval_unrolled(closed.jaxpr, closed.consts, jax.tree.leaves(a))
            return jax.tree_util.tree_unflatten(out_tree, flat)

    return float(cost_analysis(jax.jit(fn).lower(*args).compile()).get("flops", 0.0))


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(x, jcore.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jcore.Jaxpr):
                yield x


def _has_scan(jaxpr) -> bool:
    return any(e.primitive.name == "scan" or any(_has_scan(j) for j in _sub_jaxprs(e)) for e in jaxpr.eqns)


def _eval_unrolled(jaxpr, consts, args) -> list:
    """Evaluates ``jaxpr``; ``scan`` equations whose body holds the work run as ``lax.scan(unroll=True)``."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive.name == "scan":
            outs = _unrolled_scan(eqn.params, invals)
        elif eqn.primitive.name in ("pjit", "jit", "closed_call", "remat", "checkpoint") and _has_scan(
            next(iter(_sub_jaxprs(eqn)))
        ):
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            inner, sub_consts = (sub.jaxpr, sub.consts) if isinstance(sub, jcore.ClosedJaxpr) else (sub, ())
            outs = _eval_unrolled(inner, sub_consts, invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _unrolled_scan(p: dict, invals: list) -> list:
    nc, ncarry, body = p["num_consts"], p["num_carry"], p["jaxpr"]
    consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]

    def step(carry, x):
        outs = _eval_unrolled(body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:ncarry], outs[ncarry:]

    carry, ys = lax.scan(step, list(init), list(xs), length=p["length"], reverse=p["reverse"], unroll=True)
    return [*carry, *ys]


def _array_leaves(tree: Any):
    return [(p, x) for p, x in leaves_with_paths(tree) if _is_array(x) or hasattr(x, "shape")]


def param_count(tree: Any) -> int:
    """Number of scalars in all array leaves (every collection; key arrays count as their shape).

    >>> import jax.numpy as jnp
    >>> param_count({'w': jnp.ones((3, 4)), 'b': jnp.zeros(4)})
    16
    """
    return int(sum(int(np.prod(np.shape(x))) for _, x in _array_leaves(tree)))


def param_bytes(tree: Any) -> int:
    """Bytes of all array leaves (``size * itemsize``).

    >>> import jax.numpy as jnp
    >>> param_bytes({'w': jnp.ones((3, 4), jnp.bfloat16)})
    24
    """
    total = 0
    for _, x in _array_leaves(tree):
        try:
            itemsize = np.dtype(x.dtype).itemsize
        except TypeError:  # extended dtypes (PRNG keys)
            itemsize = getattr(x.dtype, "itemsize", 0) or 0
        total += int(np.prod(np.shape(x))) * itemsize
    return int(total)


def model_stats(apply_fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any) -> dict:
    """``{'flops', 'params', 'bytes'}`` of ``apply_fn(params, *args, **kwargs)``."""
    return dict(flops=flops(apply_fn, params, *args, **kwargs), params=param_count(params), bytes=param_bytes(params))


def _fmt(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3f}{unit}"
    return f"{x:.0f}"


def compare_models(before: tuple, after: tuple, *args: Any, **kwargs: Any) -> str:
    """A before/after table of XLA FLOPs, parameter count and bytes.

    ``before`` and ``after`` are ``(apply_fn, params)`` pairs run on the same
    ``*args``. Returns the table as a string (its rows are also easy to parse).

    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p
    >>> print(compare_models((f, jnp.ones((8, 4))), (f, jnp.ones((8, 2))), jnp.ones((1, 8))))  # doctest: +SKIP
    """
    b = model_stats(before[0], before[1], *args, **kwargs)
    a = model_stats(after[0], after[1], *args, **kwargs)
    rows = [("metric", "before", "after", "ratio")]
    for k, label in (("flops", "FLOPs (XLA)"), ("params", "params"), ("bytes", "bytes")):
        ratio = b[k] / a[k] if a[k] else float("inf")
        rows.append((label, _fmt(b[k]), _fmt(a[k]), f"{ratio:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
