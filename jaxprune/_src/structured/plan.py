"""``make_plan``: choose the units to keep in every prunable group (the plan itself: ``prune_plan.py``).

:func:`make_plan` ranks units by group importance (see
:mod:`~jaxprune._src.structured.importance`):

* ``scope='layerwise'``: each group loses ``floor(ratio * size)`` units
  (``ratio`` a float or ``[(regex, ratio), ...]`` rules on the group's root
  leaf paths; unmatched groups are kept whole).
* ``scope='global'``: all eligible groups' units are ranked together on their
  *per-group normalised* scores (``normalize='mean'``: each group's scores are
  divided by the group's mean, so a unit is judged against its own layer and
  layers of different fan-in compete fairly) and the lowest ``ratio`` fraction
  is pruned.
* ``budget=flops_budget(...)`` or ``param_bytes_budget(...)``: the number of
  globally pruned units is bisected so that the shrunk model's cost is at or
  below the target and pruning one ``round_to`` step less would exceed it.
* ``budget=latency_budget(...)``: greedy over groups by importance lost per
  second of *measured* latency saved (a :class:`LatencyTable`, see
  ``latency.py``), each group stopping at one of the table's probed widths.
* ``unit_scores={group name: 1-D scores}``: rank units by scores computed
  elsewhere (e.g. a mask vote) instead of ``method``; eligible groups without
  an entry are kept whole.

Kept counts are then raised to at least ``min_keep`` and
``(1 - max_ratio) * size`` and rounded *up* to a multiple of ``round_to``
(capped at the group size).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any, Mapping, Sequence, TypeVar, cast

import jax
import numpy as np

from jaxprune._src.structured.budget import (
    Budget,
    flops_budget,
    latency_budget,
    param_bytes_budget,
    plan_cost,
    plan_for_budget,
    plan_for_latency,
)
from jaxprune._src.structured.groups import DependencyGraph, Group
from jaxprune._src.structured.importance import group_scores, nan_probe, normalize_scores
from jaxprune._src.structured.prune_plan import EMPTY_HINT, PrunePlan, plan_from_kept
from jaxprune._src.tree import leaves_with_paths

# PrunePlan / plan_from_kept (prune_plan.py) and the budgets (budget.py) are re-exported: this module is the
# planning entry point.
__all__ = [
    "PrunePlan",
    "make_plan",
    "plan_from_kept",
    "Budget",
    "flops_budget",
    "param_bytes_budget",
    "latency_budget",
    "DEFAULT_KINDS",
    "EMPTY_HINT",
    "eligible_groups",
    "plan_cost",
]

_T = TypeVar("_T")

#: Group kinds pruned by default. ``'head_dim'`` (the per-head feature size) is
#: left out: most attention code keeps ``head_dim`` fixed and prunes heads.
DEFAULT_KINDS = ("channels", "units", "heads")


def eligible_groups(graph: DependencyGraph, kinds, ignore) -> list[Group]:
    ig = [re.compile(r) for r in (ignore or ())]
    out = []
    for g in graph.groups:
        if not g.prunable or (kinds is not None and g.kind not in kinds):
            continue
        names = [m.path for m in (g.roots or g.members)]
        if any(rx.search(p) for rx in ig for p in names):
            continue
        out.append(g)
    return out


def _keep_count(n: int, pruned: int, min_keep: int, max_ratio: float, round_to: int) -> int:
    keep = max(n - pruned, min_keep, math.ceil(n * (1.0 - max_ratio) - 1e-9))
    keep = min(n, int(math.ceil(keep / round_to) * round_to))
    return keep


def make_plan(
    params: Any,
    graph: DependencyGraph,
    ratio: float | Sequence[tuple[str, float]] = 0.5,
    *,
    scope: str = "layerwise",
    method: str = "l1",
    grads: Any = None,
    key: Any = None,
    scores: Any = None,
    reduce: str = "mean",
    normalize: str | None = "mean",
    round_to: int = 1,
    min_keep: int = 1,
    max_ratio: float = 1.0,
    ignore: Sequence[str] | None = None,
    kinds: Sequence[str] | None = DEFAULT_KINDS,
    budget: Budget | None = None,
    unit_scores: Mapping[str, Any] | None = None,
    p: float | None = None,
    bias: bool = True,
    allow_empty: bool = False,
    rules: Sequence[tuple[str, float]] | None = None,
) -> PrunePlan:
    """Chooses the units to keep in every prunable group.

    Args:
      params, graph: the params and their :func:`trace_groups` graph.
      ratio: fraction of units pruned in every eligible group (a float), as
        ``sparsity`` is for :func:`jaxprune.prune`.
      rules: per-layer ratios ``[(regex, ratio), ...]`` matched on each
        group's root leaf paths, first match wins; unmatched groups are kept
        whole (layerwise only) -- the same spelling as ``prune(rules=...)``.
        Passing rules as ``ratio`` still works but is deprecated.
      scope: ``'layerwise'`` or ``'global'`` (see module docstring).
      method, grads, key, scores, reduce, normalize, p, bias: see
        :func:`group_scores`. ``**TORCH_PRUNING_DEFAULTS`` sets them to
        Torch-Pruning's ``GroupMagnitudeImportance()`` (``p=2``, biases left
        out, mean reduction and normalizer); see ``docs/importance.md``.
      round_to: kept counts are multiples of this (or the whole group).
      min_keep, max_ratio: each group keeps at least ``min_keep`` units and at
        least ``(1 - max_ratio)`` of its units.
      ignore: regexes on root leaf paths; matching groups are kept whole.
      kinds: group kinds that may be pruned (``None``: all).
      budget: :func:`flops_budget`, :func:`param_bytes_budget` or :func:`latency_budget`; overrides
        ``ratio`` (global ranking).
      unit_scores: ``{group name: scores of shape (group.size,)}`` (names as
        in ``Group.name``, e.g. ``'conv1/kernel[3]'``): use these per-unit
        scores (higher = kept first; ``normalize`` still applies) instead of
        ``method``/``grads``/``key``/``scores``/``reduce``. Only the named
        eligible groups are pruned; named groups that are not eligible
        (``kinds``, ``ignore``, unprunable) are ignored. Unknown names or
        wrong lengths raise ``ValueError``.
      allow_empty: let a group keep 0 units (only reachable with ``min_keep=0``);
        otherwise that raises ``ValueError``.

    Bad arguments (a ratio outside ``[0, 1]`` or not a number, a negative
    ``min_keep``, ...) and params holding NaN in a leaf of an eligible group
    raise ``TypeError``/``ValueError`` naming the argument or the leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import trace_groups
      >>> p = {'a': jnp.arange(8.).reshape(2, 4), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> make_plan(p, g, 0.5).groups[0]['kept']
      (2, 3)
      >>> make_plan(p, g, 0.5, unit_scores={g.prunable[0].name: [4., 3., 2., 1.]}).groups[0]['kept']
      (0, 1)
      >>> from jaxprune import TORCH_PRUNING_DEFAULTS
      >>> make_plan(p, g, 0.5, **TORCH_PRUNING_DEFAULTS).groups[0]['kept']
      (2, 3)
    """
    if rules is not None:
        if not isinstance(ratio, (int, float)) or ratio != 0.5:
            raise ValueError("make_plan: pass either ratio= (a float) or rules= (per-layer ratios), not both")
        ratio = list(rules)
    elif not isinstance(ratio, (int, float, np.integer, np.floating)) and isinstance(ratio, (list, tuple)):
        warnings.warn(
            "make_plan(ratio=[(regex, ratio), ...]) is deprecated: pass rules=[(regex, ratio), ...] (see CHANGELOG.md)",
            DeprecationWarning,
            stacklevel=2,
        )
    _check_make_plan_args(ratio, scope, round_to, min_keep, max_ratio, ignore, kinds, budget, allow_empty)
    ratio, round_to, min_keep, max_ratio = _py(ratio), _py(round_to), _py(min_keep), _py(max_ratio)  # JSON-able meta
    _check_params(params, graph)
    eligible = eligible_groups(graph, kinds, ignore)
    _check_finite(graph, eligible, params=params, grads=grads, scores=scores)
    if unit_scores is None:
        sc = group_scores(
            params,
            graph,
            method,
            grads=grads,
            key=key,
            scores=scores,
            reduce=reduce,
            normalize=normalize,
            p=p,
            bias=bias,
        )
    else:
        if scores is not None:
            raise ValueError("make_plan: pass scores= (a pytree like params) or unit_scores=, not both")
        sc = _named_unit_scores(graph, eligible, unit_scores, normalize)
        eligible = [g for g in eligible if g.id in sc]
    method = "unit_scores" if unit_scores is not None else method if scores is None else "custom"
    meta = dict(
        method=method,
        scope=scope,
        round_to=round_to,
        min_keep=min_keep,
        max_ratio=max_ratio,
        reduce=reduce,
        normalize=normalize,
    )
    if unit_scores is None and (p is not None or not bias):  # non-default scoring options only
        meta.update(p=p, bias=bias)

    def keep_top(g: Group, n_keep: int) -> np.ndarray:
        order = np.argsort(-sc[g.id], kind="stable")
        return np.sort(order[:n_keep])

    if budget is None and scope == "layerwise":
        kept = {}
        for g in eligible:
            r = ratio if isinstance(ratio, (int, float)) else _match_ratio(g, ratio)
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"ratio for group {g.name} must be in [0, 1], got {r}")
            kept[g.id] = keep_top(
                g, _keep_count(g.size, int(math.floor(g.size * r + 1e-9)), min_keep, max_ratio, round_to)
            )
        return plan_from_kept(graph, kept, dict(meta, ratio=ratio), allow_empty=allow_empty)

    if budget is not None and budget.kind == "latency":
        return plan_for_latency(
            params,
            graph,
            budget,
            eligible,
            sc,
            lambda n: _keep_count(n, n, min_keep, max_ratio, round_to),
            round_to,
            lambda counts: plan_from_kept(
                graph, {g.id: keep_top(g, counts[g.id]) for g in eligible}, meta, allow_empty=allow_empty
            ),
            meta,
        )

    # global ranking: units sorted by normalised score, pruned lowest first
    if eligible:
        gidx = np.concatenate([np.full(g.size, i) for i, g in enumerate(eligible)])
        allsc = np.concatenate([sc[g.id] for g in eligible])
        order = np.lexsort((np.arange(allsc.size), allsc))
        ranked_group = gidx[order]
    else:
        ranked_group = np.zeros(0, dtype=np.int64)
    total = ranked_group.size

    def plan_for(k: int) -> PrunePlan:
        counts = np.bincount(ranked_group[:k], minlength=len(eligible))
        kept = {
            g.id: keep_top(g, _keep_count(g.size, int(c), min_keep, max_ratio, round_to))
            for g, c in zip(eligible, counts)
        }
        return plan_from_kept(graph, kept, meta, allow_empty=allow_empty)

    if budget is None:
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"scope='global' needs a float ratio in [0, 1], got {ratio!r}")
        plan = plan_for(int(math.floor(total * ratio + 1e-9)))
        return dataclasses.replace(plan, meta=dict(plan.meta, ratio=float(ratio)))
    return plan_for_budget(params, graph, budget, plan_for, total, meta)


def _py(x: _T) -> _T:
    """A numpy scalar as the Python scalar it holds (anything else as is)."""
    return cast(_T, x.item()) if isinstance(x, (np.integer, np.floating)) else x


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _check_make_plan_args(ratio, scope, round_to, min_keep, max_ratio, ignore, kinds, budget, allow_empty) -> None:
    if scope not in ("layerwise", "global"):
        raise ValueError(f"make_plan: scope must be 'layerwise' or 'global', got {scope!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ValueError(f"make_plan: round_to must be a positive int (>= 1), got {round_to!r}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)):
        raise TypeError(f"make_plan: min_keep must be an int >= 0, got {type(min_keep).__name__} {min_keep!r}")
    if min_keep < 0:
        raise ValueError(f"make_plan: min_keep must be an int >= 0, got {min_keep!r}")
    if not _is_number(max_ratio):
        raise TypeError(
            f"make_plan: max_ratio must be a number in [0, 1], got {type(max_ratio).__name__} {max_ratio!r}"
        )
    if not 0.0 <= max_ratio <= 1.0:
        raise ValueError(f"make_plan: max_ratio must be in [0, 1], got {max_ratio!r}")
    if not isinstance(allow_empty, (bool, np.bool_)):
        raise TypeError(f"make_plan: allow_empty must be a bool, got {allow_empty!r}")
    if _is_number(ratio):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"make_plan: ratio must be in [0, 1], got {ratio!r}")
    elif isinstance(ratio, (str, bytes)) or not isinstance(ratio, Sequence):
        raise TypeError(
            f"make_plan: ratio must be a number in [0, 1] or a list of (regex, ratio) pairs, "
            f"got {type(ratio).__name__} {ratio!r}"
        )
    else:
        for i, rule in enumerate(ratio):
            if (
                isinstance(rule, (str, bytes))
                or not isinstance(rule, Sequence)
                or len(rule) != 2
                or not isinstance(rule[0], str)
                or not _is_number(rule[1])
            ):
                raise TypeError(f"make_plan: ratio rule {i} must be a (regex string, number) pair, got {rule!r}")
            if not 0.0 <= rule[1] <= 1.0:
                raise ValueError(
                    f"make_plan: ratio rule {i} ({rule[0]!r}) must have a ratio in [0, 1], got {rule[1]!r}"
                )
            try:
                re.compile(rule[0])
            except re.error as e:
                raise ValueError(f"make_plan: ratio rule {i}: invalid regex {rule[0]!r}: {e}") from None
    for name, v in (("ignore", ignore), ("kinds", kinds)):
        if v is None:
            continue
        if (
            isinstance(v, (str, bytes))
            or not isinstance(v, (Sequence, set, frozenset))
            or not all(isinstance(x, str) for x in v)
        ):
            raise TypeError(f"make_plan: {name} must be a list of strings (or None), got {v!r}")
    for rx in ignore or ():
        try:
            re.compile(rx)
        except re.error as e:
            raise ValueError(f"make_plan: ignore: invalid regex {rx!r}: {e}") from None
    if budget is not None:
        if not isinstance(budget, Budget):
            raise TypeError(
                "make_plan: budget must be flops_budget(...), param_bytes_budget(...) or latency_budget(...), "
                f"got {budget!r}"
            )
        if not _is_number(budget.target) or not math.isfinite(budget.target) or budget.target <= 0:
            raise ValueError(f"make_plan: budget target must be a finite number > 0, got {budget.target!r}")


def _check_finite(graph: DependencyGraph, eligible: list[Group], **trees: Any) -> None:
    """``ValueError`` naming the leaf if a concrete float leaf of an eligible group holds NaN."""
    paths = {m.path: g for g in eligible for m in g.members}
    for what, tree in trees.items():
        if tree is None:
            continue
        for path, x in leaves_with_paths(tree):
            g = paths.get(path)
            if g is None or x is None or isinstance(x, jax.core.Tracer):
                continue
            a = np.asarray(nan_probe(x))  # a global multi-process array: reduced on device first
            if str(a.dtype) == "bfloat16":
                a = a.astype(np.float32)
            if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
                if np.isnan(a).any():
                    raise ValueError(
                        f"make_plan: {what} leaf {path!r} contains NaN (group {g.name}); cannot rank its units"
                    )


def _named_unit_scores(
    graph: DependencyGraph, eligible: list[Group], unit_scores: Mapping[str, Any], normalize: str | None
) -> dict[int, np.ndarray]:
    """``{group id: normalised float64 scores}`` of the eligible groups named in ``unit_scores``."""
    if not isinstance(unit_scores, Mapping):
        raise TypeError(
            f"make_plan: unit_scores must be a mapping {{group name: 1-D scores}}, got {type(unit_scores).__name__}"
        )
    by_name = {g.name: g for g in graph.groups}
    for name, v in unit_scores.items():
        g = by_name.get(name)
        if g is None:
            raise ValueError(
                f"make_plan: unit_scores group {name!r} is not in the traced model "
                f"(prunable groups: {[x.name for x in graph.prunable][:6]}...)"
            )
        if np.shape(v) != (g.size,):
            raise ValueError(f"make_plan: unit_scores[{name!r}] has shape {np.shape(v)}, group has {g.size} units")
        try:
            nan = bool(np.isnan(np.asarray(v, np.float64)).any())
        except (TypeError, ValueError):
            raise TypeError(f"make_plan: unit_scores[{name!r}] must be numbers, got {v!r}") from None
        if nan:
            raise ValueError(f"make_plan: unit_scores[{name!r}] contains NaN; cannot rank the group's units")
    return {
        g.id: normalize_scores(np.asarray(unit_scores[g.name], np.float64), normalize)
        for g in eligible
        if g.name in unit_scores
    }


def _match_ratio(g: Group, rules) -> float:
    for rx, r in rules:
        if any(re.search(rx, m.path) for m in (g.roots or g.members)):
            return float(r)
    return 0.0


def _check_params(params: Any, graph: DependencyGraph) -> None:
    shapes = {p: tuple(np.shape(x)) for p, x in leaves_with_paths(params)}
    for path, s in graph.leaf_shapes.items():
        if path not in shapes:
            raise ValueError(f"params have no leaf {path!r} (the graph was traced on other params)")
        if shapes[path] != tuple(s):
            raise ValueError(f"params leaf {path!r} has shape {shapes[path]}, the graph expects {tuple(s)}")
