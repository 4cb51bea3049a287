"""Pieces shared by the sparse-training algorithms (no algorithm lives here).

* :func:`fixed_mask_pruner` turns masks computed by any one-shot method
  (LTH, STR, WoodFisher one-shot, SNIP, GraSP, SynFlow, Wanda) into a
  :class:`jaxprune.Pruner` for fixed-mask training with :func:`jaxprune.sparse_optimizer`.
* :func:`keep_top` / :func:`masked_scores` are the exact top-k building blocks
  used by drop-and-grow, lottery tickets and OBS.
* small argument checkers that raise errors naming the argument.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._src import tree as tree_lib
from jaxprune._src.pruner import MaskSpec, Pruner
from jaxprune._src.schedules import Schedule, no_update
from jaxprune._src.topk import prune_lowest
from jaxprune._src.types import PyTree

__all__ = [
    "fixed_mask_pruner",
    "keep_top",
    "masked_scores",
    "check_int",
    "check_fraction",
    "check_spec",
    "sparsity_of_masks",
]


def check_int(value: Any, name: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` or a ``ValueError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_fraction(value: Any, name: str, *, low: float = 0.0, high: float = 1.0, high_inclusive: bool = True) -> float:
    """``value`` as a float in ``[low, high]`` (or ``[low, high)``) or a ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = low <= v <= high if high_inclusive else low <= v < high
    if not ok or math.isnan(v):
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return v


def check_spec(
    spec: Any,
    method: str,
    *,
    scopes: tuple[str, ...] = ("layerwise", "global"),
    structures: tuple[str, ...] = ("unstructured",),
) -> MaskSpec:
    """Validates that ``spec`` is a :class:`MaskSpec` this method supports."""
    if not isinstance(spec, MaskSpec):
        raise TypeError(f"{method}: spec must be a jaxprune.MaskSpec, got {type(spec).__name__}")
    if spec.scope not in scopes:
        raise ValueError(f"{method}: scope must be one of {scopes}, got {spec.scope!r}")
    if spec.structure not in structures:
        raise ValueError(f"{method}: structure must be one of {structures}, got {spec.structure!r}")
    return spec


def keep_top(scores: jax.Array, n_keep: jax.Array | int) -> jax.Array:
    """Bool mask keeping exactly the ``n_keep`` largest entries of one array (traced ``n_keep`` ok).

    Ties are broken like :func:`jaxprune.topk_mask` (lower flat index pruned first).

    >>> keep_top(jnp.array([3., 1., 2.]), 2).tolist()
    [True, False, True]
    """
    flat = jnp.asarray(scores).reshape(-1)
    n_prune = jnp.asarray(flat.size, jnp.int32) - jnp.asarray(n_keep, jnp.int32)
    (mask,) = prune_lowest([flat], n_prune)  # exact bisection top-k of the core
    return mask.reshape(jnp.shape(scores))


def masked_scores(scores: PyTree, masks: PyTree, fill: float = -jnp.inf) -> PyTree:
    """``where(mask, score, fill)`` at masked leaves (pruned entries rank first); others unchanged."""
    return jax.tree.map(
        lambda m, s: s if m is None else jnp.where(m, s, jnp.asarray(fill, s.dtype)),
        masks,
        scores,
        is_leaf=tree_lib.is_none,
    )


def fixed_mask_pruner(masks: PyTree) -> Pruner:
    """A :class:`jaxprune.Pruner` whose masks are ``masks`` forever (fixed-mask finetuning).

    Use it to train the output of a one-shot method (lottery ticket, STR,
    OBS, SNIP, GraSP, SynFlow, Wanda) with :func:`jaxprune.sparse_optimizer`.

    >>> import optax
    >>> from jaxprune import sparse_optimizer
    >>> params = {'w': jnp.ones((2, 2))}
    >>> opt = sparse_optimizer(optax.sgd(0.1), fixed_mask_pruner({'w': jnp.eye(2, dtype=bool)}))
    >>> opt.init(params).masks['w'].tolist()
    [[True, False], [False, True]]
    """
    if masks is None or isinstance(masks, (Schedule, MaskSpec, str, bytes, int, float, complex)):
        raise TypeError(
            "fixed_mask_pruner expects a pytree of boolean masks shaped like the params (e.g. the masks "
            f"returned by jp.prune), got {type(masks).__name__} {masks!r}"[:300]
        )
    for path, m in tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none):
        if m is not None and not hasattr(m, "dtype") and not isinstance(m, bool):
            raise TypeError(
                f"fixed_mask_pruner: mask leaf {path!r} must be a boolean array or None, got {type(m).__name__}"
            )
        if m is not None and jnp.asarray(m).dtype != jnp.bool_:
            raise TypeError(f"fixed_mask_pruner: mask leaf {path!r} must be bool, got {jnp.asarray(m).dtype}")
    n_total = sum(int(jnp.size(m)) for m in jax.tree.leaves(masks))
    n_pruned = sum(int((~jnp.asarray(m)).sum()) for m in jax.tree.leaves(masks))
    sparsity = min(n_pruned / n_total, 0.999999) if n_total else 0.0

    def init(params, key=None):
        del key
        tree_lib.check_same_structure(params, masks, what="fixed_mask_pruner masks")
        return jax.tree.map(lambda m: None if m is None else jnp.asarray(m), masks, is_leaf=tree_lib.is_none), ()

    def update(params, grads, masks_, aux, step, key):
        del params, grads, step, key
        return masks_, aux

    return Pruner(init=init, update=update, schedule=no_update(sparsity))


def sparsity_of_masks(masks: PyTree) -> float:
    """Fraction of False entries over all mask arrays (``None`` leaves ignored)."""
    leaves = jax.tree.leaves(masks)
    total = sum(int(m.size) for m in leaves)
    return sum(int((~m).sum()) for m in leaves) / total if total else 0.0
