"""Lottery tickets with rewinding (Frankle et al. 2019/2020): iterative magnitude pruning.

Rounds: train ``rewind_step`` steps and save the weights (the rewind point);
train to the end of the round; prune by magnitude among the remaining weights
(global or layerwise) to the round's sparsity; rewind *all* weights (pruned
ones stay 0, biases and norms too) to the rewind point; train again; repeat.

Pure pieces: :func:`lth_sparsities` (per-round targets, each round removes
the same fraction ``p`` of what remains: ``s_r = 1 - (1 - s)^(r/R)``),
:func:`lth_prune_round` (magnitude masks that only ever add pruned weights),
:func:`rewind` (masked rewind point). :func:`lottery_ticket` drives the rounds
with a user ``train_fn``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._src import masks as masks_lib
from jaxprune._src.algorithms.common import check_int, check_spec, masked_scores, sparsity_of_masks
from jaxprune._src.distributions import check_sparsity
from jaxprune._src.pruner import MaskSpec, dense_masks, masks_from_scores
from jaxprune._src.types import PyTree

TrainFn = Callable[[PyTree, PyTree, int, int], PyTree]

__all__ = ["lth_sparsities", "lth_prune_round", "rewind", "lottery_ticket", "LotteryResult"]


def lth_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Per-round targets removing the same fraction of the remaining weights each round.

    >>> [round(s, 3) for s in lth_sparsities(0.875, 3)]
    [0.5, 0.75, 0.875]
    """
    sparsity = check_sparsity(sparsity)
    rounds = check_int(rounds, "rounds", 1)
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def lth_prune_round(
    params: PyTree, masks: PyTree, sparsity: float | jax.Array, spec: MaskSpec = MaskSpec(scope="global")
) -> PyTree:
    """Magnitude masks at ``sparsity`` that keep every already-pruned weight pruned.

    Already-pruned weights rank below all others, so as long as ``sparsity``
    is at least the current one, the new masks only add pruned weights.

    >>> p = {'w': jnp.array([[4., 3.], [2., 1.]])}
    >>> m = lth_prune_round(p, {'w': jnp.array([[True, False], [True, True]])}, 0.5)
    >>> m['w'].tolist()
    [[True, False], [True, False]]
    """
    check_spec(spec, "lth_prune_round")
    if masks is None:
        masks = dense_masks(params, spec)
    scores = masked_scores(jax.tree.map(jnp.abs, params), masks)
    return masks_lib.combine_masks(masks, masks_from_scores(scores, sparsity, spec))


def rewind(rewind_params: PyTree, masks: PyTree) -> PyTree:
    """The rewind point with the current masks applied (the next round's start)."""
    return masks_lib.apply_masks(rewind_params, masks)


class LotteryResult(NamedTuple):
    """Output of :func:`lottery_ticket`."""

    params: PyTree  # trained sparse params after the last round
    masks: PyTree  # final masks
    rewind_params: PyTree  # dense weights saved at ``rewind_step``
    sparsities: list[float]  # achieved sparsity after each round's pruning


def lottery_ticket(
    train_fn: TrainFn,
    params: PyTree,
    *,
    sparsity: float,
    rounds: int,
    round_steps: int,
    rewind_step: int,
    spec: MaskSpec = MaskSpec(scope="global"),
) -> LotteryResult:
    """Iterative magnitude pruning with rewinding to step ``rewind_step``.

    Args:
      train_fn: ``train_fn(params, masks, start_step, num_steps) -> params``; must
        keep masked weights at 0 (e.g. a loop over ``sparse_optimizer(opt,
        fixed_mask_pruner(masks))``; LR schedules can use ``start_step``).
      params: initial (dense) params.
      sparsity: final sparsity, reached after ``rounds`` prune-rewind rounds.
      round_steps: steps of one full training run; rewind_step: ``k`` (< round_steps).
      spec: global (default, as in the LTH papers) or layerwise magnitude ranking.

    >>> import jax.numpy as jnp
    >>> def train(p, m, start, n):  # toy "training": add n to every kept weight
    ...     return jax.tree.map(lambda w, k: jnp.where(k, w + n, 0.), p, m)
    >>> res = lottery_ticket(train, {'w': jnp.arange(4.).reshape(2, 2)}, sparsity=0.5, rounds=1,
    ...                      round_steps=3, rewind_step=1)
    >>> res.params['w'].tolist(), res.sparsities
    ([[0.0, 0.0], [5.0, 6.0]], [0.5])
    """
    if not callable(train_fn):
        raise TypeError(
            f"train_fn must be callable (params, masks, start_step, num_steps) -> params, got {type(train_fn).__name__}"
        )
    rounds = check_int(rounds, "rounds", 1)
    round_steps = check_int(round_steps, "round_steps", 1)
    rewind_step = check_int(rewind_step, "rewind_step")
    if rewind_step >= round_steps:
        raise ValueError(f"rewind_step ({rewind_step}) must be < round_steps ({round_steps})")
    targets = lth_sparsities(sparsity, rounds)
    check_spec(spec, "lottery_ticket")
    masks = dense_masks(params, spec)
    rewind_params = train_fn(params, masks, 0, rewind_step) if rewind_step else params
    params = train_fn(rewind_params, masks, rewind_step, round_steps - rewind_step)
    achieved = []
    for target in targets:
        masks = lth_prune_round(params, masks, target, spec)
        achieved.append(sparsity_of_masks(masks))
        params = train_fn(rewind(rewind_params, masks), masks, rewind_step, round_steps - rewind_step)
    return LotteryResult(params, masks, rewind_params, achieved)
