"""Apply a :class:`PrunePlan`: slice every coupled leaf, or build the equivalent masks.

``shrink(params, plan)`` takes, along each pruned axis of each affected leaf,
the kept indices; every collection in the pytree (``params``,
``batch_stats``, an ``nnx.State``'s variables) is handled alike because the
plan addresses leaves by path.

``plan_to_masks(params, plan)`` gives boolean masks (``True`` = kept) at the
affected leaves and ``None`` elsewhere. Masking semantics: a pruned channel is
zeroed in *every* member leaf of its group -- the producing kernel's output
slice and bias, the norm's scale, bias *and* running statistics, and the
consuming layer's input slice. Zeroing only the producer is not enough
(BatchNorm would turn the zero channel into ``bias - mean * scale / std``);
zeroing the consumer's input slice is what makes the masked dense model
compute exactly what the shrunk model computes. (A zeroed ``var`` gives
``rsqrt(eps)`` times a zero input: still zero.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.structured.prune_plan import PrunePlan
from jaxprune._src.tree import leaves_with_paths, map_with_path

__all__ = ["shrink", "plan_to_masks", "check_plan"]


def check_plan(params: Any, plan: PrunePlan, *, shrunk: bool = False, graph: Any = None) -> None:
    """Raises ``ValueError`` naming the group or leaf if the plan is inconsistent or does not fit ``params``.

    The plan itself is checked first (:meth:`PrunePlan.validate`: kept indices
    sorted, unique and in range, axes in range, ``shapes`` consistent; with
    ``graph``, its groups exist there and give exactly the plan's leaves), then
    the first leaf whose shape does not match the plan is named. ``shrunk=True``
    checks against the plan's new shapes instead of the original ones.
    """
    if not isinstance(plan, PrunePlan):
        raise TypeError(f"plan must be a PrunePlan, got {type(plan).__name__}")
    plan.validate(graph)
    have = {p: tuple(np.shape(x)) for p, x in leaves_with_paths(params)}
    for path, orig in plan.leaf_shapes.items():
        want = plan.shapes[path][1] if (shrunk and path in plan.shapes) else tuple(orig)
        if path not in have:
            raise ValueError(f"params have no leaf {path!r}, which the plan expects with shape {want}")
        if have[path] != tuple(want):
            raise ValueError(
                f"params leaf {path!r} has shape {have[path]}, the plan expects {tuple(want)}"
                + (
                    " (already shrunk?)"
                    if not shrunk and path in plan.shapes and have[path] == plan.shapes[path][1]
                    else ""
                )
            )
    extra = sorted(set(have) - set(plan.leaf_shapes))
    if extra:
        raise ValueError(f"params have leaves the plan does not know: {extra[:10]}")


def _take(x, axes: dict[int, tuple[int, ...]]):
    if isinstance(x, jax.core.Tracer):  # under jit: a gather
        for axis, kept in sorted(axes.items()):
            x = jnp.take(x, jnp.asarray(kept, dtype=np.int32), axis=axis)
        return x
    on_device = isinstance(x, jax.Array)
    y = np.asarray(x)  # host slicing: no compilation per leaf shape
    for axis, kept in sorted(axes.items()):
        y = np.take(y, np.asarray(kept, dtype=np.int64), axis=axis)
    return jax.device_put(y) if on_device else y  # a transfer; jnp.asarray would compile a convert per shape


def shrink(params: Any, plan: PrunePlan) -> Any:
    """Returns params with every pruned axis sliced to the plan's kept indices.

    Raises ``ValueError`` (naming the leaf) if ``params`` do not have the
    shapes the plan was made for.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import trace_groups, make_plan
      >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> jax.tree.map(jnp.shape, shrink(p, make_plan(p, g, 0.5)))
      {'a': (2, 2), 'b': (2, 1)}
    """
    check_plan(params, plan)
    return map_with_path(lambda path, x: _take(x, plan.leaves[path]) if path in plan.leaves else x, params)


def plan_to_masks(params: Any, plan: PrunePlan) -> Any:
    """Boolean masks equivalent to the plan: ``True`` where kept, ``None`` at unaffected leaves.

    ``params * mask`` (at non-None leaves) computes what the shrunk model
    computes; see the module docstring for why every member leaf is masked.
    """
    check_plan(params, plan)

    def mask(path, x):
        if path not in plan.leaves:
            return None
        shape = np.shape(x)
        m = np.ones(shape, dtype=bool)
        for axis, kept in plan.leaves[path].items():
            keep = np.zeros(shape[axis], dtype=bool)
            keep[list(kept)] = True
            m &= keep.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        return jnp.asarray(m)

    return map_with_path(mask, params)


def apply_plan_masks(params: Any, masks: Any) -> Any:
    """``params * masks`` where masks are not ``None`` (a local helper for equivalence checks)."""

    def f(x, m):
        if m is None:
            return x
        if isinstance(x, np.ndarray):
            return np.where(np.asarray(m), x, np.zeros_like(x))
        return jnp.where(m, x, jnp.zeros_like(x))

    return jax.tree.map(f, params, masks, is_leaf=lambda v: v is None)
