"""STE: straight-through sparse training (forward masked, dense gradients).

The weights stay dense in the optimizer; the forward pass sees
``apply_masks(params, masks)``, and the gradient with respect to the masked
weights is applied to the dense weights as if masking were the identity, so a
pruned weight keeps learning and may come back at the next mask update.

Two pieces: :func:`ste` (a :class:`jaxprune.Pruner` with
``straight_through=True``, whose scores are computed on the *dense* weights)
and :func:`straight_through_masks`, to use inside the loss so the gradient
reaches pruned weights (``jnp.where`` alone would give them zero gradient).
Take the final sparse model as ``apply_masks(params, get_masks(opt_state))``.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxprune._src.algorithms.common import check_spec
from jaxprune._src.masks import apply_masks
from jaxprune._src.pruner import MaskSpec, Pruner, check_mask_spec, check_schedule, check_score, scored_pruner
from jaxprune._src.schedules import Schedule
from jaxprune._src.types import PyTree

__all__ = ["ste_pruner", "straight_through_masks"]


def straight_through_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Masked weights in the forward pass, identity in the backward pass.

    >>> import jax, jax.numpy as jnp
    >>> w = {'w': jnp.array([1., 2.])}
    >>> m = {'w': jnp.array([True, False])}
    >>> jax.grad(lambda p: straight_through_masks(p, m)['w'].sum())(w)['w'].tolist()
    [1.0, 1.0]
    """
    masked = apply_masks(params, masks)
    return jax.tree.map(lambda p, q: p + jax.lax.stop_gradient(q - p), params, masked)


def ste_pruner(schedule: Schedule, spec: MaskSpec = MaskSpec(), *, score: Any = "magnitude") -> Pruner:
    """Straight-through pruner: masks by ``score`` of the dense weights on ``schedule``.

    >>> import optax
    >>> from jaxprune import periodic, sparse_optimizer
    >>> pruner = ste_pruner(periodic(0.5, every=1))
    >>> pruner.straight_through
    True
    """
    check_schedule(schedule, "ste_pruner")
    check_mask_spec(spec, "ste_pruner")
    check_score(score, "ste_pruner")
    check_spec(spec, "ste", structures=("unstructured", "nm", "block", "channel"))
    return scored_pruner(score, schedule, spec, straight_through=True)
