"""GMP: gradual magnitude pruning (Zhu & Gupta 2017) with the cubic schedule.

Masks start dense; at ``begin, begin + every, ..., end`` they become the
magnitude top-k masks at ``s_t = s_f (1 - (1 - (t - begin) / (end - begin))^3)``.
Pruned weights are zero and stay zero (magnitude scores are computed on the
masked weights, so a pruned weight never comes back). Layerwise (uniform or
ERK) or one global ranking (``scope='global'``).
"""

from __future__ import annotations

from typing import Any

from jaxprune._src.algorithms.common import check_spec
from jaxprune._src.pruner import MaskSpec, Pruner, check_mask_spec, check_score, check_sparsity_arg, scored_pruner
from jaxprune._src.schedules import polynomial

__all__ = ["gmp_pruner"]


def gmp_pruner(
    sparsity: float,
    *,
    begin: int,
    end: int,
    every: int,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
    scope: str = "layerwise",
    distribution: str = "uniform",
    spec: MaskSpec | None = None,
    score: Any = "magnitude",
) -> Pruner:
    """Gradual magnitude pruning to ``sparsity`` between steps ``begin`` and ``end``.

    Args:
      sparsity: final sparsity in [0, 1).
      begin, end, every: first/last pruning step and the interval between updates.
      initial_sparsity, power: the polynomial schedule (power 3 = cubic GMP).
      scope, distribution: ``'layerwise'``/``'global'`` and ``'uniform'``/``'erk'``
        (ignored when ``spec`` is given).
      spec: full :class:`jaxprune.MaskSpec` (prunable rules, per-layer overrides, N:M...).
      score: score name or function (default magnitude; any registered score works).

    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxprune import sparse_optimizer
    >>> opt = sparse_optimizer(optax.sgd(0.1), gmp_pruner(0.5, begin=0, end=2, every=1))
    >>> params = {'w': jnp.arange(1., 9.).reshape(2, 4)}
    >>> state = opt.init(params)
    >>> for _ in range(3):
    ...     u, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
    ...     params = optax.apply_updates(params, u)
    >>> int((params['w'] == 0).sum())
    4
    """
    check_sparsity_arg(sparsity, "gmp_pruner")
    check_sparsity_arg(initial_sparsity, "gmp_pruner", "initial_sparsity")
    check_mask_spec(spec, "gmp_pruner", allow_none=True)
    check_score(score, "gmp_pruner")
    spec = MaskSpec(scope=scope, distribution=distribution) if spec is None else spec
    check_spec(spec, "gmp", structures=("unstructured", "block", "channel"))
    schedule = polynomial(sparsity, begin=begin, end=end, every=every, initial_sparsity=initial_sparsity, power=power)
    return scored_pruner(score, schedule, spec)
