"""STR: soft threshold reparameterisation (Kusupati et al. 2020).

Each prunable layer ``l`` gets a learnable scalar ``s_l``; the forward pass
uses ``w_eff = sign(w) * relu(|w| - g(s_l))`` with ``g = sigmoid`` by default.
Weights whose magnitude falls below the layer's threshold are exactly 0, so
the sparsity is *learned*, not set: it rises with the threshold init and with
the weight decay applied to ``s_l`` (decay pulls a negative ``s_l`` towards 0,
i.e. raises ``g(s_l)``). Report it with :func:`str_sparsity`.

The trainable pytree is ``{'weights': params, 'thresholds': ...}`` where
``thresholds`` mirrors params with a scalar at prunable leaves and ``None``
elsewhere, so any optax optimizer trains both. :func:`str_finalize` gives the
sparse params and masks for fixed-mask finetuning
(``sparse_optimizer(..., fixed_mask_pruner(masks))``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

Gate = Callable[[jax.Array], jax.Array]

__all__ = ["str_init", "str_effective", "str_masks", "str_sparsity", "str_finalize"]


def _check(str_params: Any) -> tuple[PyTree, PyTree]:
    if not (isinstance(str_params, dict) and set(str_params) == {"weights", "thresholds"}):
        got = sorted(str_params) if isinstance(str_params, dict) else type(str_params).__name__
        raise TypeError(f"STR params must be the dict {{'weights', 'thresholds'}} made by str_init, got {got}")
    return str_params["weights"], str_params["thresholds"]


def str_init(
    params: PyTree, *, init_threshold: float = -5.0, prunable: Sequence[tuple[str, bool]] | None = None
) -> dict[str, PyTree]:
    """Adds one learnable threshold parameter ``s_l = init_threshold`` per prunable leaf.

    >>> sp = str_init({'d': {'kernel': jnp.ones((2, 2)), 'bias': jnp.zeros(2)}})
    >>> sp['thresholds']
    {'d': {'bias': None, 'kernel': Array(-5., dtype=float32)}}
    """
    try:
        s0 = float(init_threshold)
    except (TypeError, ValueError):
        raise TypeError(f"init_threshold must be a number, got {init_threshold!r}") from None
    ok = tree_lib.prunable_tree(params, prunable)
    if not any(jax.tree.leaves(ok)):
        raise ValueError("str_init: no prunable leaf (kernels with ndim >= 2 by default); check `prunable`")
    thresholds = jax.tree.map(lambda o: jnp.asarray(s0, jnp.float32) if o else None, ok)
    return {"weights": params, "thresholds": thresholds}


def str_effective(str_params: dict[str, PyTree], *, gate: Gate = jax.nn.sigmoid) -> PyTree:
    """Effective weights ``sign(w) relu(|w| - g(s))`` (call inside the loss; differentiable).

    >>> sp = {'weights': {'k': jnp.array([[0.3, -2.0]])}, 'thresholds': {'k': jnp.array(0.0)}}
    >>> str_effective(sp)['k'].tolist()
    [[0.0, -1.5]]
    """
    weights, thresholds = _check(str_params)
    return jax.tree.map(
        lambda s, w: (
            w if s is None else (jnp.sign(w) * jax.nn.relu(jnp.abs(w) - gate(s).astype(w.dtype))).astype(w.dtype)
        ),
        thresholds,
        weights,
        is_leaf=tree_lib.is_none,
    )


def str_masks(str_params: dict[str, PyTree], *, gate: Gate = jax.nn.sigmoid) -> PyTree:
    """Masks (``|w| > g(s)``) at prunable leaves, ``None`` elsewhere."""
    weights, thresholds = _check(str_params)
    return jax.tree.map(
        lambda s, w: None if s is None else jnp.abs(w) > gate(s).astype(w.dtype),
        thresholds,
        weights,
        is_leaf=tree_lib.is_none,
    )


def str_sparsity(str_params: dict[str, PyTree], *, gate: Gate = jax.nn.sigmoid) -> jax.Array:
    """Achieved sparsity over the thresholded (prunable) leaves, a float32 scalar (jit-able).

    >>> sp = str_init({'k': jnp.array([[0.001, 1.0]])}, init_threshold=0.0)
    >>> float(str_sparsity(sp))
    0.5
    """
    masks = jax.tree.leaves(str_masks(str_params, gate=gate))
    kept = sum(jnp.sum(m, dtype=jnp.float32) for m in masks)
    total = sum(m.size for m in masks)
    return 1.0 - kept / total


def str_finalize(str_params: dict[str, PyTree], *, gate: Gate = jax.nn.sigmoid) -> tuple[PyTree, PyTree]:
    """``(effective_params, masks)``: the sparse model and its masks, for finetuning or export."""
    return str_effective(str_params, gate=gate), str_masks(str_params, gate=gate)
