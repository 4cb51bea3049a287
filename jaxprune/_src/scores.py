"""Importance scores: pure functions from params (and grads) to a pytree of scores.

Higher score = more important = kept longer. Every score function has the
signature ``fn(params, *, grads=None, key=None, **kwargs) -> scores`` so that
pruners can take any of them; they are registered by name in
:data:`SCORE_FNS` (see :func:`register_score`).

Example:
  >>> import jax.numpy as jnp
  >>> magnitude_scores({'w': jnp.array([[-3., 1.], [0., 2.]])})['w']
  Array([[3., 1.],
         [0., 2.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

ScoreFn = Callable[..., PyTree]

__all__ = [
    "magnitude_scores",
    "random_scores",
    "saliency_scores",
    "taylor_scores",
    "SCORE_FNS",
    "register_score",
    "get_score_fn",
]


def _require(value: Any, name: str, method: str) -> Any:
    if value is None:
        raise ValueError(f"score method {method!r} needs `{name}=`; got None")
    return value


def magnitude_scores(params: PyTree, *, grads: PyTree = None, key: jax.Array | None = None) -> PyTree:
    """``|w|``: the classic magnitude criterion (grads and key are ignored)."""
    del grads, key
    return jax.tree.map(jnp.abs, params)


def random_scores(params: PyTree, *, grads: PyTree = None, key: jax.Array | None = None) -> PyTree:
    """Uniform random scores in [0, 1), reproducible given ``key`` (one sub-key per leaf).

    >>> s = random_scores({'w': jnp.ones((2, 2))}, key=jax.random.key(0))
    >>> s['w'].shape
    (2, 2)
    """
    del grads
    key = _require(key, "key", "random")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = [jax.random.uniform(k, jnp.shape(x), dtype=jnp.float32) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def _check_grads(params: PyTree, grads: PyTree, method: str) -> None:
    _require(grads, "grads", method)
    tree_lib.check_same_structure(params, grads, what=f"grads for {method!r}", allow_none=False)


def saliency_scores(params: PyTree, *, grads: PyTree = None, key: jax.Array | None = None) -> PyTree:
    """``|w * g|`` (connection sensitivity, as in SNIP), given ``grads`` of a loss."""
    del key
    _check_grads(params, grads, "saliency")
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def taylor_scores(params: PyTree, *, grads: PyTree = None, key: jax.Array | None = None) -> PyTree:
    """First-order Taylor estimate of the loss change from removing ``w``: ``(w * g)**2``.

    (Molchanov et al. 2019). Summed over a structure (filter, head), it is
    the group Taylor importance.
    """
    del key
    _check_grads(params, grads, "taylor")
    return jax.tree.map(lambda w, g: jnp.square(w * g), params, grads)


SCORE_FNS: dict[str, ScoreFn] = {
    "magnitude": magnitude_scores,
    "random": random_scores,
    "saliency": saliency_scores,
    "taylor": taylor_scores,
}


def register_score(name: str, fn: ScoreFn, *, overwrite: bool = False) -> None:
    """Makes ``fn(params, *, grads=None, key=None)`` available as ``method=name``."""
    if not callable(fn):
        raise TypeError(f"score function for {name!r} must be callable, got {type(fn).__name__}")
    if name in SCORE_FNS and not overwrite:
        raise ValueError(f"score method {name!r} already registered; pass overwrite=True to replace it")
    SCORE_FNS[name] = fn


def get_score_fn(method: str | ScoreFn) -> ScoreFn:
    """Looks a score method up by name (or returns a callable unchanged)."""
    if callable(method):
        return method
    if method not in SCORE_FNS:
        raise ValueError(f"unknown score method {method!r}; known: {sorted(SCORE_FNS)}")
    return SCORE_FNS[method]
