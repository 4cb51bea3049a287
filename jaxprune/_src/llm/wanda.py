"""Wanda (Sun et al., 2023): prune by ``|W| * ||X||`` within each output unit, no weight update.

For a kernel viewed as ``(d_in, d_out)`` (see
:func:`~jaxprune._src.llm.calibration.kernel_matrix`), the score of weight
``W[i, j]`` is ``|W[i, j]| * sqrt(sum over calibration tokens of x_i^2)``.
The comparison group is one output unit (the paper's "per output" row of a
PyTorch ``(d_out, d_in)`` weight, i.e. a column of a Flax kernel): each unit
keeps its ``round((1 - sparsity) * d_in)`` highest-scored inputs. With
``structure="N:M"``, every run of ``M`` consecutive inputs of a unit keeps its
``N`` best (2:4, 4:8).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.distributions import check_sparsity
from jaxprune._src.llm.calibration import LayerStats, from_matrix, kernel_in_axes, kernel_matrix
from jaxprune._src.llm.stacked import per_layer
from jaxprune._src.masks import nm_masks
from jaxprune._src.tree import Rules, leaves_with_paths, map_with_path, rule_tree
from jaxprune._src.types import PyTree

__all__ = ["wanda_masks", "parse_structure", "resolve_sparsity", "per_column_prune", "selected_leaves"]


def parse_structure(structure: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``None`` -> ``None`` (unstructured); anything else ``ValueError``."""
    if structure is None:
        return None
    if not isinstance(structure, str):
        raise TypeError(f"structure must be None or a string 'N:M' such as '2:4', got {structure!r}")
    parts = structure.split(":")
    try:
        n, m = int(parts[0]), int(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"structure must be 'N:M' such as '2:4' or '4:8', got {structure!r}") from None
    if not 0 < n <= m:
        raise ValueError(f"structure {structure!r}: needs 0 < N <= M")
    return n, m


def resolve_sparsity(sparsity: float, nm: tuple[int, int] | None) -> float:
    """Checks ``sparsity``; with N:M it must be ``1 - N/M`` (the structure fixes it)."""
    if nm is not None:
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is None or abs(float(sparsity) - implied) > 1e-6:
            raise ValueError(
                f"structure '{nm[0]}:{nm[1]}' means sparsity {implied:g}, but sparsity={sparsity!r} was given"
            )
        return implied
    return check_sparsity(sparsity)


def per_column_prune(scores: jax.Array, sparsity: float) -> jax.Array:
    """Keep-mask of a ``(d_in, d_out)`` score matrix: each column prunes its ``round(sparsity * d_in)`` lowest.

    Ties are broken towards pruning the lower input index (stable sort).

    >>> per_column_prune(jnp.array([[1., 4.], [2., 3.]]), 0.5).tolist()
    [[False, True], [True, False]]
    """
    k = int(round(float(sparsity) * scores.shape[0]))
    ranks = jnp.argsort(jnp.argsort(scores, axis=0, stable=True), axis=0, stable=True)
    return ranks >= k


def selected_leaves(params: PyTree, stats: dict[str, LayerStats], rules: Rules | None) -> PyTree:
    """Bool pytree: the leaves of ``params`` that are in ``stats`` and not excluded by ``rules``.

    ``stats`` must be non-empty and every one of its paths a leaf of ``params`` (statistics from another
    model, or from ``{'params': ...}`` variables applied to the inner params, would otherwise prune nothing).
    """
    if not isinstance(stats, dict) or not all(isinstance(v, LayerStats) for v in stats.values()):
        raise TypeError("stats must be the dict {path: LayerStats} returned by calibrate")
    if not stats:
        raise ValueError(
            "stats is empty: calibrate found no kernel multiplying an activation (a model without kernels, "
            "or calibrate's rules excluded them all), so there is nothing to prune"
        )
    paths = [p for p, _ in leaves_with_paths(params)]
    missing = sorted(set(stats) - set(paths))
    if missing:
        raise ValueError(
            f"stats has kernel paths that are not leaves of params: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} (stats from another model, or calibrated on different "
            f"variables: calibrate and prune the same pytree); params paths: {paths[:10]}"
        )
    chosen = rule_tree(params, rules, default=True, name="wanda/sparsegpt rules")

    def pick(path: str, c: Any) -> bool:
        if not isinstance(c, (bool, np.bool_)):
            raise TypeError(f"wanda/sparsegpt rules must map to bool (prune or not), got {c!r} for leaf {path!r}")
        return bool(c) and path in stats

    return map_with_path(pick, chosen)


def wanda_masks(
    params: PyTree,
    stats: dict[str, LayerStats],
    sparsity: float,
    *,
    structure: str | None = None,
    rules: Rules | None = None,
) -> PyTree:
    """Bool keep-masks by the Wanda rule at every calibrated leaf (``None`` elsewhere).

    ``stats`` comes from :func:`~jaxprune._src.llm.calibration.calibrate`;
    ``rules`` (``[(regex, bool)]``) can leave calibrated leaves unpruned.
    ``structure``: ``None`` (unstructured, per output unit) or ``"N:M"`` along
    the input axis (then ``sparsity`` must be ``1 - N/M``).

    >>> from jaxprune.llm import calibrate
    >>> p = {'w': jnp.array([[1., 1.], [1., 1.]])}
    >>> s = calibrate(lambda p, x: x @ p['w'], p, [jnp.array([[3., 1.]])])
    >>> wanda_masks(p, s, 0.5)['w'].tolist()
    [[True, True], [False, False]]
    """
    nm = parse_structure(structure)
    sparsity = resolve_sparsity(sparsity, nm)
    chosen = selected_leaves(params, stats, rules)

    def one(path: str, w: Any, ok: bool) -> Any:
        if not ok:
            return None
        return per_layer(lambda w, st: keep_mask(path, w, st), w, stats[path], path)  # per layer if scanned

    def keep_mask(path: str, w: Any, st: LayerStats) -> Any:
        axes = kernel_in_axes(np.shape(w), st, path)
        mat = kernel_matrix(jnp.asarray(w), axes)
        score = jnp.abs(mat).astype(jnp.float32) * jnp.sqrt(st.sq_norms.astype(jnp.float32))[:, None]
        if not bool(jnp.all(jnp.isfinite(score))):
            raise ValueError(f"wanda_masks: leaf {path!r} has NaN/Inf weights, so its scores are not finite")
        if nm is None:
            keep = per_column_prune(score, sparsity)
        else:
            if score.shape[0] % nm[1]:
                raise ValueError(
                    f"N:M mask for leaf {path!r}: input size {score.shape[0]} is not divisible by M={nm[1]} "
                    "(exclude it with rules)"
                )
            keep = nm_masks({"w": score}, nm[0], nm[1], axis=0)["w"]
        return from_matrix(keep, np.shape(w), axes)

    return map_with_path(one, params, chosen)
