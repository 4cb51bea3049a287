"""``PrunePlan``: which units of which groups are kept, as plain JSON-able data.

A plan records, per group, the kept unit indices, and per affected leaf the
kept indices along each pruned axis, with the leaf's original and new shape.
It is all that :func:`shrink` and :func:`plan_to_masks` need, so a pruned
model can be rebuilt from a checkpoint without the code that made the plan.

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
* ``unit_scores={group name: 1-D scores}``: rank units by scores computed
  elsewhere (e.g. a mask vote) instead of ``method``; eligible groups without
  an entry are kept whole.

Kept counts are then raised to at least ``min_keep`` and
``(1 - max_ratio) * size`` and rounded *up* to a multiple of ``round_to``
(capped at the group size).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxprune._src.structured.importance import _normalize, group_scores
from jaxprune._src.structured.trace import DependencyGraph, Group
from jaxprune._src.tree import leaves_with_paths

__all__ = ["PrunePlan", "make_plan", "plan_from_kept", "Budget", "flops_budget", "param_bytes_budget",
           "DEFAULT_KINDS"]

#: Group kinds pruned by default. ``'head_dim'`` (the per-head feature size) is
#: left out: most attention code keeps ``head_dim`` fixed and prunes heads.
DEFAULT_KINDS = ("channels", "units", "heads")


@dataclasses.dataclass(frozen=True, eq=False)
class PrunePlan:
    """Kept indices per group and per leaf axis; JSON-serializable.

    Attributes:
      groups: one dict per pruned group: ``id``, ``name``, ``kind``, ``size``, ``kept``.
      leaves: ``{path: {axis: kept indices}}`` for every affected leaf.
      shapes: ``{path: (original shape, new shape)}`` for every affected leaf.
      leaf_shapes: ``{path: original shape}`` for every leaf of the params.
      meta: free-form (method, ratio, scope, ...).
    """

    groups: tuple[dict, ...]
    leaves: dict[str, dict[int, tuple[int, ...]]]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    leaf_shapes: dict[str, tuple[int, ...]]
    meta: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "groups": [dict(g, kept=list(map(int, g["kept"]))) for g in self.groups],
            "leaves": {p: {str(a): list(map(int, k)) for a, k in ax.items()} for p, ax in self.leaves.items()},
            "shapes": {p: [list(o), list(n)] for p, (o, n) in self.shapes.items()},
            "leaf_shapes": {p: list(s) for p, s in self.leaf_shapes.items()},
            "meta": self.meta,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePlan":
        try:
            return cls(
                groups=tuple(dict(g, kept=tuple(int(i) for i in g["kept"])) for g in d["groups"]),
                leaves={p: {int(a): tuple(int(i) for i in k) for a, k in ax.items()} for p, ax in d["leaves"].items()},
                shapes={p: (tuple(o), tuple(n)) for p, (o, n) in d["shapes"].items()},
                leaf_shapes={p: tuple(s) for p, s in d["leaf_shapes"].items()},
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a PrunePlan dict: {e!r}") from None

    @classmethod
    def from_json(cls, s: str) -> "PrunePlan":
        return cls.from_dict(json.loads(s))

    def __eq__(self, other) -> bool:
        return isinstance(other, PrunePlan) and self.to_dict() == other.to_dict()

    def kept(self, group_id: int) -> tuple[int, ...] | None:
        for g in self.groups:
            if g["id"] == group_id:
                return g["kept"]
        return None

    def describe(self) -> str:
        lines = [f"PrunePlan: {len(self.groups)} groups pruned, {len(self.leaves)} leaves shrunk"]
        for g in self.groups:
            lines.append(f"  {g['name']:40s} {g['kind']:9s} {g['size']:6d} -> {len(g['kept'])}")
        return "\n".join(lines)

    __str__ = describe


# --------------------------------------------------------------------------------- plan building
def _complement(n: int, idx: np.ndarray) -> np.ndarray:
    """Sorted indices of ``range(n)`` not in ``idx`` (``np.setdiff1d(np.arange(n), idx)``, faster)."""
    keep = np.ones(n, dtype=bool)
    keep[idx] = False
    return np.flatnonzero(keep)


def plan_from_kept(graph: DependencyGraph, kept: dict[int, Sequence[int]], meta: dict | None = None,
                   *, allow_empty: bool = False) -> PrunePlan:
    """Builds a plan from ``{group id: kept unit indices}`` (unlisted groups are kept whole).

    >>> import jax.numpy as jnp
    >>> from jaxprune._src.structured import trace_groups
    >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
    >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
    >>> plan_from_kept(g, {g.prunable[0].id: [1, 3]}).shapes['a']
    ((2, 4), (2, 2))
    """
    by_id = {g.id: g for g in graph.groups}
    removed: dict[tuple[str, int], list[np.ndarray]] = {}
    groups = []
    for gid in sorted(kept):
        if gid not in by_id:
            raise ValueError(f"group id {gid} is not in the graph ({len(graph.groups)} groups)")
        g = by_id[gid]
        k = np.unique(np.asarray(kept[gid], dtype=np.int64))
        if k.size and (k[0] < 0 or k[-1] >= g.size):
            raise ValueError(f"group {gid} ({g.name}): kept indices must be in [0, {g.size}), got {k.tolist()}")
        if k.size == g.size:
            continue
        if not g.prunable:
            raise ValueError(f"group {gid} ({g.name}) is not prunable: {g.reason}")
        if k.size == 0 and not allow_empty:
            raise ValueError(f"group {gid} ({g.name}): keeping 0 units; pass allow_empty=True to allow it")
        drop = _complement(g.size, k)
        groups.append(dict(id=g.id, name=g.name, kind=g.kind, size=g.size, kept=tuple(k.tolist())))
        for m in g.members:
            removed.setdefault((m.path, m.axis), []).append(m.index_map[drop].ravel())
    leaves: dict[str, dict[int, tuple[int, ...]]] = {}
    shapes = {}
    for (path, axis), rem in sorted(removed.items()):
        n = graph.leaf_shapes[path][axis]
        keep = _complement(n, np.concatenate(rem))
        leaves.setdefault(path, {})[axis] = tuple(keep.tolist())
    for path, axes in leaves.items():
        orig = graph.leaf_shapes[path]
        new = tuple(len(axes[a]) if a in axes else s for a, s in enumerate(orig))
        shapes[path] = (tuple(orig), new)
    meta = dict(meta or {})
    approx = [g["name"] for g in groups if by_id[g["id"]].through_norm]
    if approx:  # approximate: these groups' norm statistics are computed over the kept channels
        meta["through_norms"] = approx
    return PrunePlan(tuple(groups), leaves, shapes, dict(graph.leaf_shapes), meta)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A cost target for :func:`make_plan`: ``kind`` is ``'flops'`` or ``'param_bytes'``."""

    kind: str
    target: float
    relative: bool = False
    cost_fn: Callable[..., float] | None = None


def flops_budget(target: float, *, relative: bool = False) -> Budget:
    """Target XLA FLOPs of the shrunk forward pass (of the traced function and example inputs).

    ``relative=True``: ``target`` is a fraction of the dense model's FLOPs.

    >>> flops_budget(0.5, relative=True).kind
    'flops'
    """
    return Budget("flops", float(target), relative)


def param_bytes_budget(target: float, *, relative: bool = False) -> Budget:
    """Target total bytes of the shrunk params (every leaf, all collections)."""
    return Budget("param_bytes", float(target), relative)


def _eligible(graph: DependencyGraph, kinds, ignore) -> list[Group]:
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


def make_plan(params: Any, graph: DependencyGraph, ratio: float | Sequence[tuple[str, float]] = 0.5, *,
              scope: str = "layerwise", method: str = "l1", grads: Any = None, key: Any = None,
              scores: Any = None, reduce: str = "mean", normalize: str | None = "mean", round_to: int = 1,
              min_keep: int = 1, max_ratio: float = 1.0, ignore: Sequence[str] | None = None,
              kinds: Sequence[str] | None = DEFAULT_KINDS, budget: Budget | None = None,
              unit_scores: Mapping[str, Any] | None = None, p: float | None = None,
              bias: bool = True) -> PrunePlan:
    """Chooses the units to keep in every prunable group.

    Args:
      params, graph: the params and their :func:`trace_groups` graph.
      ratio: fraction of units pruned: a float, or ``[(regex, ratio)]`` rules
        matched on each group's root leaf paths (layerwise only).
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
      budget: :func:`flops_budget` or :func:`param_bytes_budget`; overrides
        ``ratio`` (global ranking).
      unit_scores: ``{group name: scores of shape (group.size,)}`` (names as
        in ``Group.name``, e.g. ``'conv1/kernel[3]'``): use these per-unit
        scores (higher = kept first; ``normalize`` still applies) instead of
        ``method``/``grads``/``key``/``scores``/``reduce``. Only the named
        eligible groups are pruned; named groups that are not eligible
        (``kinds``, ``ignore``, unprunable) are ignored. Unknown names or
        wrong lengths raise ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.structured import trace_groups
      >>> p = {'a': jnp.arange(8.).reshape(2, 4), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> make_plan(p, g, 0.5).groups[0]['kept']
      (2, 3)
      >>> make_plan(p, g, 0.5, unit_scores={g.prunable[0].name: [4., 3., 2., 1.]}).groups[0]['kept']
      (0, 1)
      >>> from jaxprune._src.structured.importance import TORCH_PRUNING_DEFAULTS
      >>> make_plan(p, g, 0.5, **TORCH_PRUNING_DEFAULTS).groups[0]['kept']
      (2, 3)
    """
    if scope not in ("layerwise", "global"):
        raise ValueError(f"scope must be 'layerwise' or 'global', got {scope!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    _check_params(params, graph)
    eligible = _eligible(graph, kinds, ignore)
    if unit_scores is None:
        sc = group_scores(params, graph, method, grads=grads, key=key, scores=scores, reduce=reduce,
                          normalize=normalize, p=p, bias=bias)
    else:
        if scores is not None:
            raise ValueError("make_plan: pass scores= (a pytree like params) or unit_scores=, not both")
        sc = _named_unit_scores(graph, eligible, unit_scores, normalize)
        eligible = [g for g in eligible if g.id in sc]
    method = "unit_scores" if unit_scores is not None else method if scores is None else "custom"
    meta = dict(method=method, scope=scope, round_to=round_to,
                min_keep=min_keep, max_ratio=max_ratio, reduce=reduce, normalize=normalize)
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
            kept[g.id] = keep_top(g, _keep_count(g.size, int(math.floor(g.size * r + 1e-9)),
                                                    min_keep, max_ratio, round_to))
        return plan_from_kept(graph, kept, dict(meta, ratio=ratio))

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
        kept = {g.id: keep_top(g, _keep_count(g.size, int(c), min_keep, max_ratio, round_to))
                for g, c in zip(eligible, counts)}
        return plan_from_kept(graph, kept, meta)

    if budget is None:
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"scope='global' needs a float ratio in [0, 1], got {ratio!r}")
        plan = plan_for(int(math.floor(total * ratio + 1e-9)))
        return dataclasses.replace(plan, meta=dict(plan.meta, ratio=float(ratio)))
    return _plan_for_budget(params, graph, budget, plan_for, total, meta)


def _named_unit_scores(graph: DependencyGraph, eligible: list[Group], unit_scores: Mapping[str, Any],
                       normalize: str | None) -> dict[int, np.ndarray]:
    """``{group id: normalised float64 scores}`` of the eligible groups named in ``unit_scores``."""
    if not isinstance(unit_scores, Mapping):
        raise TypeError(f"make_plan: unit_scores must be a mapping {{group name: 1-D scores}}, "
                        f"got {type(unit_scores).__name__}")
    by_name = {g.name: g for g in graph.groups}
    for name, v in unit_scores.items():
        g = by_name.get(name)
        if g is None:
            raise ValueError(f"make_plan: unit_scores group {name!r} is not in the traced model "
                             f"(prunable groups: {[x.name for x in graph.prunable][:6]}...)")
        if np.shape(v) != (g.size,):
            raise ValueError(f"make_plan: unit_scores[{name!r}] has shape {np.shape(v)}, "
                             f"group has {g.size} units")
    return {g.id: _normalize(np.asarray(unit_scores[g.name], np.float64), normalize)
            for g in eligible if g.name in unit_scores}


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


def plan_cost(params: Any, graph: DependencyGraph, plan: PrunePlan, kind: str) -> float:
    """Cost of the shrunk model: ``'flops'`` (XLA, traced function) or ``'param_bytes'``."""
    if kind == "param_bytes":
        total = 0
        for path, x in leaves_with_paths(params):
            shape = plan.shapes[path][1] if path in plan.shapes else np.shape(x)
            total += int(np.prod(shape)) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
        return float(total)
    if kind == "flops":
        from jaxprune._src.structured.run import shrunk_flops
        return shrunk_flops(params, graph, plan)
    raise ValueError(f"budget kind must be 'flops' or 'param_bytes', got {kind!r}")


def _plan_for_budget(params, graph, budget: Budget, plan_for, total: int, meta: dict) -> PrunePlan:
    cache: dict[tuple, float] = {}

    def cost(k: int) -> tuple[PrunePlan, float]:
        plan = plan_for(k)
        sig = tuple((g["id"], len(g["kept"])) for g in plan.groups)
        if sig not in cache:
            cache[sig] = (budget.cost_fn(plan) if budget.cost_fn is not None
                          else plan_cost(params, graph, plan, budget.kind))
        return plan, cache[sig]

    dense_plan, dense = cost(0)
    target = budget.target * dense if budget.relative else budget.target
    if dense <= target:
        return dataclasses.replace(dense_plan, meta=dict(meta, budget=budget.kind, target=target, cost=dense))
    lo, hi = 0, total  # cost(lo) > target
    hi_plan, hi_cost = cost(hi)
    if hi_cost > target:
        raise ValueError(f"{budget.kind} budget {target:.4g} is unreachable: pruning every eligible unit "
                         f"(within min_keep/max_ratio/round_to) still costs {hi_cost:.4g} (dense {dense:.4g})")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        plan, c = cost(mid)
        if c <= target:
            hi, hi_plan, hi_cost = mid, plan, c
        else:
            lo = mid
    return dataclasses.replace(hi_plan, meta=dict(meta, budget=budget.kind, target=target, cost=hi_cost,
                                                  dense_cost=dense, pruned_units=hi))
