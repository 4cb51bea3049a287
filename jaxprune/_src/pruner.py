"""The pruner contract, mask specs, score-based pruners and one-call :func:`prune`.

A :class:`Pruner` says how masks start and how they change. Every sparse
algorithm (GMP, RigL, SET, AC/DC, STE, ...) is a small factory returning one,
and :func:`jaxprune.sparse_optimizer` runs any of them inside an optax
optimizer, jit-compiled, with the masks in the optimizer state.

Contract (all functions pure and jit-able; shapes never depend on the step):
  * ``init(params, key) -> (masks, aux)``: initial masks (``None`` at unpruned
    leaves) and the pruner's own state ``aux`` (any pytree, ``()`` if none).
  * ``update(params, grads, masks, aux, step, key) -> (masks, aux)``: new masks;
    only called on steps where ``schedule.is_update(step)`` (under ``lax.cond``).
  * ``observe(params, grads, aux, step) -> aux`` or None: runs every step
    (e.g. to accumulate gradient statistics).
  * ``schedule``: a :class:`jaxprune.Schedule`.
  * ``straight_through``: if True, weights stay dense and only the forward pass
    uses ``apply_masks(params, masks)`` (STE); otherwise pruned weights are
    zeroed and receive no updates.
  * ``reset_regrown``: if True, optimizer moments of coordinates whose mask goes
    from False to True are zeroed (drop-and-grow methods).
  * ``param_update``: if True, ``update`` returns ``(masks, aux, delta)`` where
    ``delta`` (shaped like params) is added to the kept weights at that step
    (second-order methods such as WoodFisher/OBS correct the remaining weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxprune._src import masks as masks_lib
from jaxprune._src import scores as scores_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.distributions import check_sparsity, layer_sparsities
from jaxprune._src.schedules import Schedule
from jaxprune._src.types import PyTree

__all__ = [
    "Pruner",
    "MaskSpec",
    "masks_from_scores",
    "scored_pruner",
    "magnitude_pruner",
    "prune",
    "dense_masks",
    "check_schedule",
    "check_mask_spec",
    "check_score",
    "check_sparsity_arg",
]

SCOPES = ("layerwise", "global")
STRUCTURES = ("unstructured", "nm", "block", "channel")


class Pruner(NamedTuple):
    """A sparse-training algorithm: see the module docstring for the contract."""

    init: Callable[..., tuple[PyTree, PyTree]]
    update: Callable[..., tuple[PyTree, PyTree]]
    schedule: Schedule
    observe: Callable[..., PyTree] | None = None
    straight_through: bool = False
    reset_regrown: bool = False
    param_update: bool = False


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Static description of which masks to build from scores.

    Attributes:
      scope: ``'layerwise'`` (each leaf at its own sparsity) or ``'global'`` (one
        threshold over all prunable leaves).
      distribution: ``'uniform'``, ``'erk'`` or ``'er'`` (layerwise scope only).
      prunable: ``(regex, bool)`` rules choosing prunable leaves (None = default:
        kernels with ndim >= 2, no biases/norms/position tables).
      rules: ``(regex, sparsity or None)`` per-layer overrides, first match wins.
      structure: ``'unstructured'``, ``'nm'`` (``n``:``m`` along ``nm_axis``),
        ``'block'`` (``block`` tiles) or ``'channel'`` (slices along ``channel_axis``).
      strict: raise ``ValueError`` if a rule matches no leaf (default: a ``UserWarning``
        naming the regex, since an unmatched rule is almost always a typo).
    """

    scope: str = "layerwise"
    distribution: str = "uniform"
    prunable: tuple[tuple[str, bool], ...] | None = None
    rules: tuple[tuple[str, Any], ...] | None = None
    structure: str = "unstructured"
    n: int = 2
    m: int = 4
    nm_axis: int = -2
    block: tuple[int, int] = (4, 4)
    channel_axis: int = -1
    erk_power_scale: float = 1.0
    strict: bool = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if self.scope == "global" and self.distribution != "uniform":
            raise ValueError(
                f"scope='global' ranks all layers together; distribution must be 'uniform', got {self.distribution!r}"
            )
        if self.scope == "global" and self.structure != "unstructured":
            raise ValueError(f"scope='global' supports structure='unstructured' only, got {self.structure!r}")
        if self.structure == "nm" and not (
            isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n <= self.m
        ):
            raise ValueError(f"N:M needs integers 0 < N <= M, got N={self.n!r}, M={self.m!r}")
        for name in ("prunable", "rules"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(tuple(r) for r in value))

    @property
    def nm_sparsity(self) -> float:
        return 1.0 - self.n / self.m


def _scale(s: Any, factor: Any) -> Any:
    return None if s is None else s * factor


def masks_from_scores(
    scores: PyTree, sparsity: float | jax.Array, spec: MaskSpec = MaskSpec(), *, final_sparsity: float | None = None
) -> PyTree:
    """Masks for ``scores`` at ``sparsity`` as described by ``spec``.

    With a non-uniform distribution, per-layer sparsities are computed for
    ``final_sparsity`` (default: ``sparsity``) and scaled by
    ``sparsity / final_sparsity``, so a schedule can pass a traced sparsity.
    For ``structure='nm'``, ``sparsity`` is ignored (N:M fixes it).

    >>> params = {'a': {'kernel': jnp.arange(8.).reshape(2, 4)}}
    >>> m = masks_from_scores(scores_lib.magnitude_scores(params), 0.5)
    >>> m['a']['kernel'].tolist()
    [[False, False, False, False], [True, True, True, True]]
    """
    with tree_lib.warn_once_per_call():
        return _masks_from_scores(scores, sparsity, spec, final_sparsity)


def _masks_from_scores(scores: PyTree, sparsity: Any, spec: MaskSpec, final_sparsity: Any) -> PyTree:
    if spec.structure == "nm":
        return masks_lib.nm_masks(
            scores,
            spec.n,
            spec.m,
            axis=spec.nm_axis,
            prunable=tree_lib.prunable_tree(scores, spec.prunable, strict=spec.strict),
        )
    final = sparsity if final_sparsity is None else final_sparsity
    final = check_sparsity(final, "final_sparsity" if final_sparsity is not None else "sparsity")
    per_layer = layer_sparsities(
        scores,
        final,
        distribution=spec.distribution,
        prunable=spec.prunable,
        rules=spec.rules,
        erk_power_scale=spec.erk_power_scale,
        strict=spec.strict,
    )
    if spec.scope == "global":
        overridden = tree_lib.rule_tree(scores, spec.rules, default=False, warn=False)
        overridden = jax.tree.map(lambda r: r is not False, overridden, is_leaf=tree_lib.is_none)
        glob_ok = jax.tree.map(lambda s, o: s is not None and not o, per_layer, overridden, is_leaf=tree_lib.is_none)
        glob = masks_lib.global_masks(scores, sparsity, prunable=glob_ok)
        fixed_sp = jax.tree.map(lambda s, o: s if o else None, per_layer, overridden, is_leaf=tree_lib.is_none)
        fixed = masks_lib.layerwise_masks(scores, fixed_sp)
        return jax.tree.map(lambda g, f: f if g is None else g, glob, fixed, is_leaf=tree_lib.is_none)
    factor = 1.0 if final == 0 else jnp.asarray(sparsity, jnp.float32) / final
    if isinstance(sparsity, (int, float)) and final_sparsity is None:
        factor = 1.0
    per_layer = jax.tree.map(lambda s: _scale(s, factor), per_layer, is_leaf=tree_lib.is_none)
    if spec.structure == "block":
        return masks_lib.block_masks(scores, per_layer, spec.block)
    if spec.structure == "channel":
        return masks_lib.channel_masks(scores, per_layer, axis=spec.channel_axis)
    return masks_lib.layerwise_masks(scores, per_layer)


def dense_masks(params: PyTree, spec: MaskSpec = MaskSpec()) -> PyTree:
    """All-True masks at the prunable leaves of ``spec`` (``None`` elsewhere)."""
    with tree_lib.warn_once_per_call():
        if spec.structure == "nm":
            ok = tree_lib.prunable_tree(params, spec.prunable, strict=spec.strict)
        else:  # same None positions as masks_from_scores (rules may leave layers dense)
            ok = layer_sparsities(params, 0.0, prunable=spec.prunable, rules=spec.rules, strict=spec.strict)
            ok = jax.tree.map(lambda s: s is not None, ok, is_leaf=tree_lib.is_none)
    return jax.tree.map(lambda o, p: jnp.ones(jnp.shape(p), bool) if o else None, ok, params)


# ------------------------------------------------------------------ argument checks of pruner factories
def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_schedule(schedule: Any, fn: str, name: str = "schedule") -> Schedule:
    """``schedule`` if it is a :class:`jaxprune.Schedule`, else a ``TypeError`` telling what to pass."""
    if isinstance(schedule, Schedule):
        return schedule
    hint = ""
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        hint = f" (to prune once to {schedule!r}, pass jp.one_shot({schedule!r}))"
    raise TypeError(
        f"{fn} expects a Schedule such as jp.one_shot(0.5) or jp.polynomial(...) for `{name}`, "
        f"got {_describe(schedule)}{hint}"
    )


def check_mask_spec(spec: Any, fn: str, name: str = "spec", *, allow_none: bool = False) -> MaskSpec | None:
    """``spec`` if it is a :class:`jaxprune.MaskSpec` (or None when allowed), else a ``TypeError``."""
    if isinstance(spec, MaskSpec) or (allow_none and spec is None):
        return spec
    raise TypeError(f"{fn} expects a MaskSpec such as jp.MaskSpec(scope='global') for `{name}`, got {_describe(spec)}")


def check_score(score: Any, fn: str, name: str = "score") -> Any:
    """``score`` if it is a score name or a callable, else a ``TypeError`` (unknown names: ``ValueError``)."""
    if isinstance(score, str):
        scores_lib.get_score_fn(score)  # ValueError listing the known names
        return score
    if callable(score) and not isinstance(score, (Schedule, MaskSpec)):
        return score
    raise TypeError(
        f"{fn} expects a score name such as 'magnitude' (or a callable (params, *, grads, key) -> scores) "
        f"for `{name}`, got {_describe(score)}"
    )


def check_sparsity_arg(value: Any, fn: str, name: str = "sparsity") -> float:
    """``value`` as a float in [0, 1), else a ``TypeError`` / ``ValueError`` naming ``fn`` and ``name``."""
    if isinstance(value, Schedule):
        raise TypeError(
            f"{fn} expects a float in [0, 1) such as 0.9 for `{name}` and builds its own schedule, "
            f"got a Schedule; to prune on a schedule of your own use jp.magnitude_pruner(schedule)"
        )
    try:
        return check_sparsity(value, name)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{fn}: {e} (pass a float in [0, 1) such as 0.9)") from None


def check_bool(value: Any, fn: str, name: str) -> bool:
    """``value`` if it is a bool, else a ``TypeError`` naming ``fn`` and ``name``."""
    if isinstance(value, bool):
        return value
    raise TypeError(f"{fn} expects True or False for `{name}`, got {_describe(value)}")


def scored_pruner(
    score: str | Callable[..., PyTree],
    schedule: Schedule,
    spec: MaskSpec = MaskSpec(),
    *,
    straight_through: bool = False,
) -> Pruner:
    """A pruner that re-ranks ``score(params, grads=, key=)`` at each scheduled update.

    Masks start dense; at update step ``t`` they become the masks of the
    scores at ``schedule.sparsity(t)``. Scores are computed on the masked
    weights, so with magnitude scores pruned weights stay pruned (they are 0).

    >>> import jaxprune as jp
    >>> pruner = scored_pruner('magnitude', jp.one_shot(0.5))
    >>> masks, aux = pruner.init({'w': jnp.ones((4, 4))}, jax.random.key(0))
    >>> bool(masks['w'].all())
    True
    """
    check_score(score, "scored_pruner")
    check_schedule(schedule, "scored_pruner")
    check_mask_spec(spec, "scored_pruner")
    check_bool(straight_through, "scored_pruner", "straight_through")
    score_fn = scores_lib.get_score_fn(score)

    def init(params, key=None):
        del key
        return dense_masks(params, spec), ()

    def update(params, grads, masks, aux, step, key):
        masked = masks_lib.apply_masks(params, masks) if not straight_through else params
        s = score_fn(masked, grads=grads, key=key)
        new = masks_from_scores(s, schedule.sparsity(step), spec, final_sparsity=schedule.final_sparsity)
        return new, aux

    return Pruner(init=init, update=update, schedule=schedule, straight_through=straight_through)


def magnitude_pruner(schedule: Schedule, spec: MaskSpec = MaskSpec(), **kwargs: Any) -> Pruner:
    """:func:`scored_pruner` with ``|w|`` scores (GMP when the schedule is polynomial).

    ``schedule`` must be a :class:`jaxprune.Schedule` (e.g. ``jp.one_shot(0.5)``):
    anything else raises ``TypeError`` here, not at the first training step.
    """
    check_schedule(schedule, "magnitude_pruner")
    check_mask_spec(spec, "magnitude_pruner")
    return scored_pruner("magnitude", schedule, spec, **kwargs)


def prune(
    params: PyTree,
    sparsity: float = 0.5,
    *,
    method: str | Callable[..., PyTree] = "magnitude",
    scope: str = "layerwise",
    distribution: str = "uniform",
    structure: str = "unstructured",
    prunable: Sequence[tuple[str, bool]] | None = None,
    rules: Sequence[tuple[str, Any]] | None = None,
    n: int = 2,
    m: int = 4,
    block: tuple[int, int] = (4, 4),
    grads: PyTree = None,
    key: jax.Array | None = None,
    masks: PyTree = None,
    strict: bool = False,
) -> tuple[PyTree, PyTree]:
    """One-shot pruning: returns ``(pruned_params, masks)``.

    Args:
      params: any pytree (Linen ``{'params': ...}``, ``nnx.State``, nested dicts, ...).
      sparsity: fraction in [0, 1) of prunable weights to remove (ignored for N:M).
      method: score name (``'magnitude'``, ``'random'``, ``'saliency'``, ``'taylor'``,
        or any registered with :func:`jaxprune.register_score`) or a callable.
      scope, distribution, structure, prunable, rules, n, m, block, strict: see :class:`MaskSpec`.
      grads: gradients for gradient-based scores; key: PRNG key for random scores.
      masks: existing masks to keep (the result prunes on top of them); boolean
        arrays (``True`` = kept) or ``None`` per leaf, else ``TypeError`` naming the leaf.

    Raises:
      TypeError / ValueError naming the argument or leaf: a non-numeric or
      out-of-range ``sparsity``, a ``None`` leaf in params, non-boolean masks,
      or params with no prunable leaf. ``rules`` only set the sparsity of
      prunable leaves (biases and norm scales of a matched layer stay dense).
      A ``rules`` or ``prunable`` regex that matches no leaf emits a ``UserWarning``
      naming it (``strict=True``: ``ValueError``), so a typo such as
      ``rules=[('hed', None)]`` does not silently prune the head.

    >>> params = {'dense': {'kernel': jnp.arange(1., 9.).reshape(4, 2), 'bias': jnp.ones(2)}}
    >>> pruned, masks = prune(params, 0.5)
    >>> pruned['dense']['kernel'].tolist(), masks['dense']['bias']
    ([[0.0, 0.0], [0.0, 0.0], [5.0, 6.0], [7.0, 8.0]], None)
    """
    with tree_lib.warn_once_per_call():
        return _prune(
            params,
            sparsity,
            method=method,
            spec=MaskSpec(
                scope=scope,
                distribution=distribution,
                structure=structure,
                prunable=None if prunable is None else tuple(prunable),
                rules=None if rules is None else tuple(rules),
                n=n,
                m=m,
                block=(int(block[0]), int(block[1])) if len(block) == 2 else tuple(block),  # type: ignore[arg-type]
                strict=strict,
            ),
            grads=grads,
            key=key,
            masks=masks,
        )


def _prune(params: PyTree, sparsity: Any, *, method: Any, spec: MaskSpec, grads: Any, key: Any, masks: Any):
    structure = spec.structure
    if structure != "nm":
        check_sparsity(sparsity)
    tree_lib.check_no_none_leaves(params, "params")
    if masks is not None:
        masks_lib.check_masks(params, masks, what="masks")
    ok = tree_lib.prunable_tree(params, spec.prunable, strict=spec.strict)
    if not any(jax.tree.leaves(ok)):
        paths = [p for p, _ in tree_lib.leaves_with_paths(params)]
        raise ValueError(
            f"prune: params have no prunable leaf (leaves: {paths[:8]}{' ...' if len(paths) > 8 else ''}"
            "); by default only float leaves with ndim >= 2 that are not biases/norms/position "
            "tables are pruned. Mark leaves prunable with prunable=[(regex, True)]"
        )
    base = params if masks is None else masks_lib.apply_masks(params, masks)
    s = scores_lib.get_score_fn(method)(base, grads=grads, key=key)
    new = masks_from_scores(s, sparsity, spec)
    if masks is not None:
        new = masks_lib.combine_masks(masks, new)
    return masks_lib.apply_masks(params, new), new
