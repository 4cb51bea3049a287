"""optax integration: any GradientTransformation + a Pruner -> a sparse optimizer.

The masks live in the optimizer state (:class:`SparseState`), are recomputed
on the pruner's schedule *inside* ``jit`` with ``lax.cond`` (one compilation
for every step), and pruned coordinates get the update ``-w`` so that after
``optax.apply_updates`` they are exactly zero, and stay zero: their gradients
are masked before the inner optimizer sees them.

Example:
  >>> import optax, jax, jax.numpy as jnp
  >>> from jaxprune import magnitude_pruner, one_shot
  >>> params = {'w': jnp.arange(1., 17.).reshape(4, 4)}
  >>> opt = sparse_optimizer(optax.sgd(0.1), magnitude_pruner(one_shot(0.75)))
  >>> state = opt.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = jax.jit(opt.update)(grads, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> int((params['w'] == 0).sum()), int(state.count)
  (12, 1)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxprune._src import tree as tree_lib
from jaxprune._src.pruner import Pruner
from jaxprune._src.sharding import put_global
from jaxprune._src.types import PyTree

__all__ = ["SparseState", "sparse_optimizer", "find_sparse_state", "get_masks"]


class SparseState(NamedTuple):
    """Optimizer state of :func:`sparse_optimizer`.

    Attributes:
      count: number of updates done so far (int32); the schedule's step.
      masks: current masks (``None`` at unpruned leaves).
      aux: the pruner's own state.
      key: PRNG key, split at every step for randomized pruners.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array  # type: ignore[assignment]  # the optax field name shadows tuple.count
    masks: PyTree
    aux: PyTree
    key: jax.Array
    inner_state: optax.OptState


def _mask_tree(masks: PyTree, values: PyTree, fill: Any) -> PyTree:
    """``where(mask, value, fill(value))`` at masked leaves; others unchanged."""
    return jax.tree.map(
        lambda m, v: v if m is None else jnp.where(m, v, fill(v)), masks, values, is_leaf=tree_lib.is_none
    )


def _shard_like_params(masks: PyTree, params: PyTree) -> PyTree:
    """Eager ``init`` on sharded params: each mask gets its param's sharding (no-op under jit)."""

    def one(m, p):
        sh = getattr(p, "sharding", None)
        if (
            m is None
            or sh is None
            or isinstance(m, jax.core.Tracer)
            or isinstance(p, jax.core.Tracer)
            or getattr(m, "sharding", None) == sh
            or jnp.shape(m) != jnp.shape(p)
        ):
            return m
        return jax.device_put(m, sh)

    return jax.tree.map(one, masks, params, is_leaf=tree_lib.is_none)


def _replicate_on_params_mesh(x: Any, params: PyTree) -> Any:
    """Eager ``init``: put a scalar (count, key) replicated on the params' mesh, so the state
    a jitted step returns has the shardings it was given (no retrace on the second step)."""
    if isinstance(x, jax.core.Tracer):
        return x
    for p in jax.tree.leaves(params):
        sh = getattr(p, "sharding", None)
        if isinstance(sh, jax.sharding.NamedSharding) and not isinstance(p, jax.core.Tracer):
            return put_global(x, jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec()))
    return x


def _check_grads(updates: PyTree, params: PyTree) -> None:
    """Raises ``ValueError`` naming the first path where ``updates`` (grads) differ from ``params``."""
    if jax.tree.structure(updates) != jax.tree.structure(params):  # type: ignore[operator]  # PyTreeDef: no stubs
        diff = tree_lib.first_structure_difference(params, updates)
        raise ValueError(
            "sparse_optimizer.update: grads (updates) do not have the structure of params; "
            f"first difference: {diff} (params vs grads)"
        )
    for (path, p), (_, g) in zip(tree_lib.leaves_with_paths(params), tree_lib.leaves_with_paths(updates)):
        if jnp.shape(g) != jnp.shape(p):
            raise ValueError(
                f"sparse_optimizer.update: grads leaf {path!r} has shape {jnp.shape(g)}, the param has {jnp.shape(p)}"
            )


def sparse_optimizer(
    inner: optax.GradientTransformation, pruner: Pruner, *, key: jax.Array | int = 0
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that it trains a sparse model under ``pruner``.

    Composes with ``optax.chain`` (put it last, or anywhere: it needs ``params``),
    ``optax.MultiSteps`` (masks then update once per accumulated step) and
    ``optax.inject_hyperparams`` (wrap an injected optimizer; its hyperparams stay
    reachable as ``state.inner_state.hyperparams``).

    Args:
      inner: any optax transformation (e.g. ``optax.sgd(0.1, momentum=0.9)``).
      pruner: a :class:`jaxprune.Pruner` (e.g. ``jaxprune.magnitude_pruner(...)``).
      key: PRNG key (or int seed) for randomized pruners.

    Returns:
      A transformation whose ``update(grads, state, params)`` requires ``params``.
    """
    if not isinstance(pruner, Pruner):
        raise TypeError(f"pruner must be a jaxprune.Pruner, got {type(pruner).__name__}")
    if not hasattr(inner, "init") or not hasattr(inner, "update"):
        raise TypeError(f"inner must be an optax GradientTransformation, got {type(inner).__name__}")
    base_key = jax.random.key(key) if isinstance(key, int) else key

    def init_fn(params):
        k_init, k_state = jax.random.split(base_key)
        masks, aux = pruner.init(params, k_init)
        tree_lib.check_same_structure(params, masks, what="pruner.init masks")
        masks = _shard_like_params(masks, params)
        count = _replicate_on_params_mesh(jnp.zeros((), jnp.int32), params)
        k_state = _replicate_on_params_mesh(k_state, params)
        return SparseState(count, masks, aux, k_state, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("jaxprune.sparse_optimizer needs params: call opt.update(grads, state, params)")
        _check_grads(updates, params)
        step = state.count
        key, k_upd = jax.random.split(state.key)
        aux = state.aux
        if pruner.observe is not None:
            aux = pruner.observe(params, updates, aux, step)
        old_masks = state.masks
        if pruner.param_update:
            masks, aux, delta = lax.cond(
                pruner.schedule.is_update(step),
                lambda: pruner.update(params, updates, old_masks, aux, step, k_upd),
                lambda: (old_masks, aux, jax.tree.map(jnp.zeros_like, params)),
            )
        else:
            masks, aux = lax.cond(
                pruner.schedule.is_update(step),
                lambda: pruner.update(params, updates, old_masks, aux, step, k_upd),
                lambda: (old_masks, aux),
            )
            delta = None
        inner_state = state.inner_state
        if pruner.reset_regrown:
            regrown = jax.tree.map(
                lambda o, n: False if o is None else n & ~o, old_masks, masks, is_leaf=tree_lib.is_none
            )
            inner_state = optax.tree_utils.tree_map_params(
                inner,
                lambda s, r: jnp.where(r, jnp.zeros_like(s), s),
                inner_state,
                regrown,
                transform_non_params=lambda s: s,
            )
        if pruner.straight_through:
            new_updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
        else:
            grads = _mask_tree(masks, updates, jnp.zeros_like)
            new_updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
            # Pruned coordinates: update = -w, so w + update == 0 exactly.
            new_updates = jax.tree.map(
                lambda m, u, p: u if m is None else jnp.where(m, u, -p).astype(u.dtype),
                masks,
                new_updates,
                params,
                is_leaf=tree_lib.is_none,
            )
        if delta is not None:  # pruner's own correction of the kept weights (e.g. OBS)
            new_updates = jax.tree.map(
                lambda m, u, d: (u + d).astype(u.dtype) if m is None else jnp.where(m, u + d, u).astype(u.dtype),
                masks,
                new_updates,
                delta,
                is_leaf=tree_lib.is_none,
            )
        return new_updates, SparseState(step + 1, masks, aux, key, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_sparse_state(opt_state: Any) -> SparseState:
    """Finds the (first) :class:`SparseState` inside a possibly nested optax state."""
    found = []

    def visit(x):
        if isinstance(x, SparseState):
            found.append(x)
            return True
        return False

    jax.tree.leaves(opt_state, is_leaf=visit)
    if not found:
        raise ValueError(
            "no jaxprune SparseState in this optimizer state; was it built with jaxprune.sparse_optimizer?"
        )
    return found[0]


def get_masks(opt_state: Any) -> PyTree:
    """The current masks held by a (possibly nested) sparse optimizer state."""
    return find_sparse_state(opt_state).masks
