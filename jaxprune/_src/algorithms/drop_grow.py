"""Drop-and-grow sparse training: RigL (gradient regrowth) and SET (random regrowth).

Both keep the number of nonzeros of every layer constant. At each update step
``t`` (every ``every`` steps in ``[begin, end)``), in each masked leaf:

1. **drop** the ``k = round(f_t * n_active)`` active weights of smallest ``|w|``;
2. **grow** ``k`` weights, chosen among all weights not kept by step 1, by the
   largest ``|grad|`` (RigL, Evci et al. 2020) or at random (SET, Mocanu et al. 2018);

with the cosine-decayed drop fraction ``f_t = alpha/2 (1 + cos(pi t / end))``.
A weight dropped in step 1 may be chosen again in step 2 (as in RigL's
reference code); it then simply stays active with its value.

Grown weights start at 0: pruned weights are exactly 0 in the params (the
optimizer gives them the update ``-w``) and their optimizer moments are reset
when they come back (``reset_regrown=True``). Initial masks are random at the
per-layer sparsities of the distribution (ERK by default), drawn from the key.
Leaves that are not pruned (biases, norms) hold ``None`` masks and are skipped.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxprune._src import scores as scores_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.algorithms.common import check_fraction, check_int, check_spec, keep_top, masked_scores
from jaxprune._src.pruner import MaskSpec, Pruner, check_mask_spec, check_sparsity_arg, masks_from_scores
from jaxprune._src.schedules import Schedule, periodic
from jaxprune._src.types import PyTree

__all__ = ["drop_grow_pruner", "rigl_pruner", "set_pruner", "cosine_drop_fraction", "rigl_config", "drop_grow_masks"]


def cosine_drop_fraction(step: jax.Array, alpha: float, end: int) -> jax.Array:
    """``alpha/2 (1 + cos(pi min(t, end) / end))`` (RigL's decay; 0 from ``end`` on).

    >>> round(float(cosine_drop_fraction(0, 0.3, 100)), 3), round(float(cosine_drop_fraction(50, 0.3, 100)), 3)
    (0.3, 0.15)
    """
    t = jnp.minimum(jnp.asarray(step, jnp.float32), end)
    return 0.5 * alpha * (1.0 + jnp.cos(jnp.pi * t / end))


def drop_grow_masks(masks: PyTree, drop_scores: PyTree, grow_scores: PyTree, fraction: jax.Array) -> PyTree:
    """One drop-and-grow update: per masked leaf, drop ``round(fraction * n_active)``
    lowest ``drop_scores`` among active weights and grow as many highest
    ``grow_scores`` among the rest. Nonzero counts per leaf are unchanged.

    >>> m = {'w': jnp.array([True, True, False, False]), 'b': None}
    >>> new = drop_grow_masks(m, {'w': jnp.array([1., 5., 0., 0.]), 'b': None},
    ...                       {'w': jnp.array([0., 0., 3., 9.]), 'b': None}, 0.5)
    >>> new['w'].tolist(), new['b']
    ([False, True, False, True], None)
    """

    def one(m, d, g):
        if m is None:
            return None
        n_active = jnp.sum(m, dtype=jnp.int32)
        k = jnp.round(jnp.asarray(fraction, jnp.float32) * n_active).astype(jnp.int32)
        kept = keep_top(jnp.where(m, d.astype(jnp.float32), -jnp.inf), n_active - k)
        grown = keep_top(jnp.where(kept, -jnp.inf, g.astype(jnp.float32)), k)
        return kept | grown

    return jax.tree.map(one, masks, drop_scores, grow_scores, is_leaf=tree_lib.is_none)


def _abs_grads(params, grads, key):
    del params, key
    return jax.tree.map(jnp.abs, grads)


def _random_scores(params, grads, key):
    del grads
    return scores_lib.random_scores(params, key=key)


GROW_FNS: dict[str, Callable[..., PyTree]] = {"gradient": _abs_grads, "random": _random_scores}


def drop_grow_pruner(
    sparsity: float,
    *,
    grow: str | Callable[..., PyTree],
    every: int,
    end: int,
    begin: int | None = None,
    drop_fraction: float = 0.3,
    distribution: str = "erk",
    spec: MaskSpec | None = None,
) -> Pruner:
    """The shared drop-and-grow pruner (RigL = ``grow='gradient'``, SET = ``grow='random'``).

    Args:
      sparsity: constant sparsity in [0, 1).
      grow: ``'gradient'`` (|g|), ``'random'``, or ``fn(params, grads, key) -> scores``.
      every: steps between mask updates; end: last update step bound (exclusive) and
        the cosine horizon ``T_end``; begin: first update step (default ``every``,
        so that step 0 already zeroed the pruned weights).
      drop_fraction: ``alpha``, the initial fraction of active weights dropped.
      distribution / spec: per-layer sparsities of the random initial masks
        (``'erk'``, ``'er'`` or ``'uniform'``); ``spec`` must be layerwise unstructured.
    """
    sparsity = check_sparsity_arg(sparsity, "drop_grow_pruner")
    check_mask_spec(spec, "drop_grow_pruner", allow_none=True)
    every = check_int(every, "every", 1)
    end = check_int(end, "end", 1)
    begin = every if begin is None else check_int(begin, "begin")
    if end <= begin:
        raise ValueError(f"end ({end}) must be > begin ({begin}): no mask update would happen")
    alpha = check_fraction(drop_fraction, "drop_fraction")
    if isinstance(grow, str):
        if grow not in GROW_FNS:
            raise ValueError(f"grow must be one of {sorted(GROW_FNS)} or a callable, got {grow!r}")
        grow_fn = GROW_FNS[grow]
    elif callable(grow):
        grow_fn = grow
    else:
        raise TypeError(f"grow must be a string or a callable, got {type(grow).__name__}")
    spec = MaskSpec(distribution=distribution) if spec is None else spec
    check_spec(spec, "drop_grow_pruner", scopes=("layerwise",))
    base = periodic(sparsity, every=every, begin=begin, end=end)
    schedule = Schedule(base.sparsity, base.is_update, sparsity)

    def init(params, key):
        return masks_from_scores(scores_lib.random_scores(params, key=key), sparsity, spec), ()

    def update(params, grads, masks, aux, step, key):
        drop = masked_scores(jax.tree.map(jnp.abs, params), masks)
        grow_scores = grow_fn(params, grads, key)
        return drop_grow_masks(masks, drop, grow_scores, cosine_drop_fraction(step, alpha, end)), aux

    return Pruner(init=init, update=update, schedule=schedule, reset_regrown=True)


def rigl_pruner(
    sparsity: float, *, every: int = 100, end: int, drop_fraction: float = 0.3, distribution: str = "erk", **kwargs: Any
) -> Pruner:
    """RigL (Evci et al. 2020): ERK random init, drop smallest |w|, grow largest |grad|.

    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxprune import sparse_optimizer
    >>> params = {'dense': {'kernel': jnp.ones((8, 8)), 'bias': jnp.zeros(8)}}
    >>> opt = sparse_optimizer(optax.adam(1e-2), rigl_pruner(0.75, every=2, end=10, distribution='uniform'))
    >>> state = opt.init(params)
    >>> int(state.masks['dense']['kernel'].sum()), state.masks['dense']['bias']
    (16, None)
    """
    check_sparsity_arg(sparsity, "rigl_pruner")
    return drop_grow_pruner(
        sparsity,
        grow="gradient",
        every=every,
        end=end,
        drop_fraction=drop_fraction,
        distribution=distribution,
        **kwargs,
    )


def set_pruner(
    sparsity: float, *, every: int = 100, end: int, drop_fraction: float = 0.3, distribution: str = "erk", **kwargs: Any
) -> Pruner:
    """SET (Mocanu et al. 2018): like :func:`rigl` but regrowth is random (from the step's key)."""
    check_sparsity_arg(sparsity, "set_pruner")
    return drop_grow_pruner(
        sparsity, grow="random", every=every, end=end, drop_fraction=drop_fraction, distribution=distribution, **kwargs
    )


def rigl_config(
    base_steps: int, multiplier: int = 1, *, every: int = 100, end_fraction: float = 0.75, drop_fraction: float = 0.3
) -> dict[str, int | float]:
    """RigL's training-length recipes: ``multiplier=1`` (1x) or ``5`` (5x) times ``base_steps``.

    Returns ``{'total_steps', 'every', 'end', 'drop_fraction'}``: train for
    ``total_steps`` and build ``rigl(s, every=cfg['every'], end=cfg['end'],
    drop_fraction=cfg['drop_fraction'])``; masks stop changing at
    ``end_fraction`` of training (0.75 in the paper).

    >>> rigl_config(1000, 5)
    {'total_steps': 5000, 'every': 100, 'end': 3750, 'drop_fraction': 0.3}
    """
    base_steps = check_int(base_steps, "base_steps", 1)
    multiplier = check_int(multiplier, "multiplier", 1)
    every = check_int(every, "every", 1)
    check_fraction(end_fraction, "end_fraction", low=0.0)
    total = base_steps * multiplier
    end = max(int(math.floor(end_fraction * total)), min(every + 1, total))
    return {"total_steps": total, "every": every, "end": end, "drop_fraction": float(drop_fraction)}
