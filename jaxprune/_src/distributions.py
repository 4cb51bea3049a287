"""How a target sparsity is spread over layers: uniform, ERK / ER, regex overrides.

:func:`layer_sparsities` returns a pytree shaped like params holding, per
prunable leaf, its target sparsity (a Python float) and ``None`` at leaves
that are not pruned. Everything here depends only on shapes, so it runs at
trace time and never retraces.

ERK (Evci et al. 2020, "Rigging the lottery"): the density of layer ``l``
is ``eps * raw_l`` with ``raw_l = sum(shape_l) / prod(shape_l)`` (for a
conv kernel ``(h, w, in, out)``: ``(h + w + in + out) / (h*w*in*out)``;
``erk_power_scale`` raises ``raw_l`` to a power). ``eps`` is chosen so the
total number of kept weights is ``(1 - s) * N``. Layers whose density would
exceed 1 are made dense and ``eps`` is solved again over the rest, until no
layer exceeds 1. ``'er'`` uses only the last two dims (in, out).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

__all__ = ["layer_sparsities", "erk_densities", "check_sparsity"]

DISTRIBUTIONS = ("uniform", "erk", "er")


def check_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    """Validates a static sparsity in [0, 1) and returns it as a float.

    Strings, bools and non-scalar values raise ``TypeError`` (``"0.5"`` is not a
    sparsity); NaN and values outside [0, 1) raise ``ValueError``.
    """
    if (
        isinstance(sparsity, (str, bytes, bool, np.bool_))
        or np.ndim(sparsity) != 0
        or (hasattr(sparsity, "dtype") and np.dtype(sparsity.dtype) == np.bool_)
    ):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(sparsity).__name__} {sparsity!r}")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return s


def _raw_density(shape: Sequence[int], distribution: str, power: float) -> float:
    dims = tuple(shape) if distribution == "erk" else tuple(shape[-2:])
    n = float(np.prod(shape))
    return (float(np.sum(dims)) / float(np.prod(dims))) ** power if n else 0.0


def erk_densities(
    shapes: dict[str, tuple[int, ...]], sparsity: float, *, distribution: str = "erk", power_scale: float = 1.0
) -> dict[str, float]:
    """Per-layer densities (1 - sparsity) of the ERK/ER distribution for ``shapes``.

    >>> d = erk_densities({'a': (3, 3, 16, 32), 'b': (512, 10)}, 0.9)
    >>> round(sum(d[k] * np.prod(s) for k, s in {'a': (3, 3, 16, 32), 'b': (512, 10)}.items()))
    973
    """
    sparsity = check_sparsity(sparsity)
    sizes = {k: float(np.prod(s)) for k, s in shapes.items()}
    raw = {k: _raw_density(s, distribution, power_scale) for k, s in shapes.items()}
    total_keep = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    eps = 0.0
    while True:
        free = [k for k in shapes if k not in dense]
        budget = total_keep - sum(sizes[k] for k in dense)
        denom = sum(raw[k] * sizes[k] for k in free)
        if not free or denom <= 0:
            break
        eps = budget / denom
        over = [k for k in free if eps * raw[k] > 1.0]
        if not over:
            break
        # Densify the layer(s) with the largest raw density first (as in RigL).
        top = max(raw[k] for k in over)
        dense.update(k for k in over if raw[k] == top)
    out: dict[str, float] = {}
    for k in shapes:
        out[k] = 1.0 if k in dense else min(1.0, max(0.0, eps * raw[k]))
    return out


def layer_sparsities(
    params: PyTree,
    sparsity: float,
    *,
    distribution: str = "uniform",
    prunable: PyTree | Sequence[tuple[str, bool]] | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    erk_power_scale: float = 1.0,
    strict: bool = False,
) -> PyTree:
    """Per-leaf target sparsity (float) or ``None`` for leaves left dense.

    Args:
      params: any pytree of arrays (only shapes are used).
      sparsity: overall target in [0, 1) over the prunable leaves not set by ``rules``.
      distribution: ``'uniform'`` (every layer ``sparsity``), ``'erk'`` or ``'er'``.
      prunable: bool pytree, or ``(regex, bool)`` rules, or None for the default
        (see :func:`jaxprune.prunable_tree`).
      rules: ``(regex, sparsity or None)`` overrides, first match wins; a matched
        layer gets exactly that sparsity (``None`` = leave dense) and is excluded
        from the ERK redistribution. Rules only apply to *prunable* leaves: a
        rule ``('conv', 0.8)`` does not prune the biases or norm scales of the
        ``conv`` layers (mark such a leaf prunable with ``prunable`` rules to
        prune it).
      strict: raise if a rule (in ``prunable`` or ``rules``) matches no leaf.

    >>> import jax.numpy as jnp
    >>> p = {'conv': {'kernel': jnp.ones((3, 3, 3, 8))}, 'head': {'kernel': jnp.ones((8, 2))}}
    >>> layer_sparsities(p, 0.5, rules=[('head', None)])
    {'conv': {'kernel': 0.5}, 'head': {'kernel': None}}
    """
    sparsity = check_sparsity(sparsity)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if prunable is None or isinstance(prunable, (list, tuple)):
        prunable = tree_lib.prunable_tree(params, prunable, strict=strict)
    else:
        tree_lib.check_same_structure(params, prunable, what="prunable", check_shapes=False)
    _unset = object()
    overrides = tree_lib.rule_tree(params, rules, default=_unset, strict=strict, name="sparsity rules")
    fixed: dict[str, float | None] = {}
    free_shapes: dict[str, tuple[int, ...]] = {}
    leaves = tree_lib.leaves_with_paths(params)
    for (path, leaf), (_, ok), (_, rule) in zip(
        leaves, tree_lib.leaves_with_paths(prunable), tree_lib.leaves_with_paths(overrides, is_leaf=tree_lib.is_none)
    ):
        value = None if rule is _unset or rule is None else check_sparsity(rule, f"sparsity rule for {path!r}")
        if not ok:  # rules never make a non-prunable leaf (bias, norm scale, ...) prunable
            fixed[path] = None
        elif rule is not _unset:
            fixed[path] = value
        else:
            free_shapes[path] = tuple(np.shape(leaf))
    if distribution == "uniform":
        free = {p: sparsity for p in free_shapes}
    else:
        dens = erk_densities(free_shapes, sparsity, distribution=distribution, power_scale=erk_power_scale)
        free = {p: 1.0 - d for p, d in dens.items()}
    values = {**fixed, **free}
    return tree_lib.map_with_path(lambda path, _: values[path], params)
