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

import jax
import numpy as np

from jaxprune._src.structured.importance import _normalize, group_scores
from jaxprune._src.structured.trace import DependencyGraph, Group
from jaxprune._src.tree import leaves_with_paths

__all__ = ["PrunePlan", "make_plan", "plan_from_kept", "Budget", "flops_budget", "param_bytes_budget",
           "DEFAULT_KINDS"]

#: Group kinds pruned by default. ``'head_dim'`` (the per-head feature size) is
#: left out: most attention code keeps ``head_dim`` fixed and prunes heads.
DEFAULT_KINDS = ("channels", "units", "heads")


#: How to allow a group to keep 0 units (the CLI, which has no such option, rewrites this hint).
EMPTY_HINT = "pass allow_empty=True (to make_plan or plan_from_kept) to allow it, or min_keep >= 1"


@dataclasses.dataclass(frozen=True, eq=False)
class PrunePlan:
    """Kept indices per group and per leaf axis; JSON-serializable.

    Attributes:
      groups: one dict per pruned group: ``id``, ``name``, ``kind``, ``size``, ``kept`` and
        ``members`` (``(leaf path, axis, indices per unit)`` of each member; 0 indices per unit
        when units share indices), which lets a stored plan be checked without the model.
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
            "groups": [_group_to_dict(g) for g in self.groups],
            "leaves": {p: {str(a): list(map(int, k)) for a, k in ax.items()} for p, ax in self.leaves.items()},
            "shapes": {p: [list(o), list(n)] for p, (o, n) in self.shapes.items()},
            "leaf_shapes": {p: list(s) for p, s in self.leaf_shapes.items()},
            "meta": self.meta,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePlan":
        """The plan of :meth:`to_dict`'s output, validated (see :meth:`validate`); ``ValueError`` otherwise."""
        try:
            plan = cls(
                groups=tuple(_group_from_dict(g) for g in d["groups"]),
                leaves={p: {_int(int(a) if isinstance(a, str) else a): tuple(_int(i) for i in k)
                            for a, k in ax.items()} for p, ax in d["leaves"].items()},
                shapes={p: (tuple(_int(i) for i in o), tuple(_int(i) for i in n))
                        for p, (o, n) in d["shapes"].items()},
                leaf_shapes={p: tuple(_int(i) for i in s) for p, s in d["leaf_shapes"].items()},
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a PrunePlan dict: {e!r}") from None
        plan.validate()
        return plan

    @classmethod
    def from_json(cls, s: str) -> "PrunePlan":
        try:
            d = json.loads(s)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a PrunePlan JSON string: {e}") from None
        return cls.from_dict(d)

    def validate(self, graph: DependencyGraph | None = None) -> "PrunePlan":
        """Raises ``ValueError`` naming the group or leaf if the plan is not self-consistent.

        Checked from the plan alone: every group's kept indices are sorted,
        unique and in ``[0, size)``; every shrunk leaf is a leaf of
        ``leaf_shapes``, its axes are in range and its kept indices sorted,
        unique and in range of the original shape; ``shapes`` agree with
        ``leaf_shapes`` and the kept counts; and, for plans that record their
        groups' members (plans made by this version), every shrunk leaf axis
        belongs to a pruned group, every member axis of a pruned group is
        shrunk, and the number of dropped indices agrees with the groups'
        kept counts. With ``graph`` (the :func:`trace_groups` graph the plan
        was made for), every group must exist there with the same name and
        size and be prunable, and the leaves must be exactly those the
        groups' kept units give. Returns the plan.
        """
        _validate_plan(self)
        if graph is not None:
            _validate_against_graph(self, graph)
        return self

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


def _int(x: Any) -> int:
    """``x`` as an int: ints (not bools) and integral floats; ``ValueError`` otherwise."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer, float, np.floating)):
        raise ValueError(f"expected an integer, got {x!r}")
    if isinstance(x, (float, np.floating)) and not float(x).is_integer():
        raise ValueError(f"expected an integer, got {x!r}")
    return int(x)


def _group_to_dict(g: dict) -> dict:
    out = dict(g, kept=list(map(int, g["kept"])))
    if "members" in g:
        out["members"] = [[str(path), int(axis), int(k)] for path, axis, k in g["members"]]
    return out


def _group_from_dict(g: dict) -> dict:
    out = dict(g, kept=tuple(_int(i) for i in g["kept"]))
    if "members" in out:
        out["members"] = tuple((str(path), _int(axis), _int(k)) for path, axis, k in out["members"])
    return out


def _check_indices(idx: Sequence[int], n: int, what: str) -> None:
    """``idx`` sorted, unique, in ``[0, n)``; ``ValueError`` starting with ``what`` otherwise."""
    a = np.asarray(idx, dtype=np.int64)
    if a.size == 0:
        return
    bad = a[(a < 0) | (a >= n)]
    if bad.size:
        raise ValueError(f"{what}: kept index {int(bad[0])} is out of range [0, {n})")
    d = np.diff(a)
    if (d == 0).any():
        raise ValueError(f"{what}: kept index {int(a[1:][d == 0][0])} is duplicated")
    if (d < 0).any():
        raise ValueError(f"{what}: kept indices must be sorted ascending, got {a.tolist()[:20]}")


def _validate_plan(plan: "PrunePlan") -> None:
    where = "invalid PrunePlan"
    if not isinstance(plan.leaf_shapes, Mapping) or not isinstance(plan.leaves, Mapping) \
            or not isinstance(plan.shapes, Mapping):
        raise ValueError(f"{where}: leaves, shapes and leaf_shapes must be dicts keyed by leaf path")
    for path, shape in plan.leaf_shapes.items():
        if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
            raise ValueError(f"{where}: leaf_shapes[{path!r}] must be a shape of non-negative ints, got {shape!r}")
    # groups
    ids: set = set()
    for i, g in enumerate(plan.groups):
        if not isinstance(g, Mapping):
            raise ValueError(f"{where}: groups[{i}] must be a dict, got {type(g).__name__}")
        missing = [k for k in ("id", "name", "kind", "size", "kept") if k not in g]
        if missing:
            raise ValueError(f"{where}: groups[{i}] ({g.get('name')!r}) lacks {missing}")
        name = f"group {g['id']} ({g['name']})"
        size = g["size"]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"{where}: {name}: size must be a non-negative int, got {size!r}")
        if g["id"] in ids:
            raise ValueError(f"{where}: {name}: group id {g['id']} appears twice")
        ids.add(g["id"])
        _check_indices(g["kept"], int(size), f"{where}: {name}")
    # leaves and shapes
    for path, axes in plan.leaves.items():
        if path not in plan.leaf_shapes:
            raise ValueError(f"{where}: leaf {path!r} is shrunk by the plan but is not in its leaf_shapes")
        orig = tuple(plan.leaf_shapes[path])
        for axis, kept in axes.items():
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis < len(orig):
                raise ValueError(f"{where}: leaf {path!r}: axis {axis!r} is out of range for its "
                                 f"{len(orig)}-d shape {orig}")
            _check_indices(kept, orig[axis], f"{where}: leaf {path!r} axis {axis}")
        if path not in plan.shapes:
            raise ValueError(f"{where}: leaf {path!r} is shrunk but has no entry in shapes")
        o, n = plan.shapes[path]
        want = tuple(len(axes[a]) if a in axes else d for a, d in enumerate(orig))
        if tuple(o) != orig:
            raise ValueError(f"{where}: leaf {path!r}: shapes gives original shape {tuple(o)}, "
                             f"leaf_shapes gives {orig}")
        if tuple(n) != want:
            raise ValueError(f"{where}: leaf {path!r}: shapes gives new shape {tuple(n)}, its kept indices "
                             f"give {want}")
    extra = sorted(set(plan.shapes) - set(plan.leaves))
    if extra:
        raise ValueError(f"{where}: leaf {extra[0]!r} has an entry in shapes but is not shrunk (no kept indices)")
    # groups vs leaves (plans that record their members)
    if not plan.groups and plan.leaves:
        raise ValueError(f"{where}: leaf {next(iter(plan.leaves))!r} is shrunk but the plan prunes no group")
    if plan.groups and not plan.leaves and any(len(g["kept"]) < g["size"] for g in plan.groups):
        g = next(g for g in plan.groups if len(g["kept"]) < g["size"])
        raise ValueError(f"{where}: group {g['id']} ({g['name']}) keeps {len(g['kept'])} of {g['size']} units "
                         "but the plan shrinks no leaf")
    if not plan.groups or not all("members" in g for g in plan.groups):
        return
    cover: dict[tuple[str, int], list[tuple[dict, int]]] = {}
    for g in plan.groups:
        for path, axis, k in g["members"]:
            cover.setdefault((path, axis), []).append((g, k))
    for path, axes in plan.leaves.items():
        for axis, kept in axes.items():
            if (path, axis) not in cover:
                raise ValueError(f"{where}: leaf {path!r} axis {axis} is shrunk but belongs to no group of the plan "
                                 "(a group deleted from the plan?)")
    for (path, axis), gs in cover.items():
        removed = [(g, (g["size"] - len(g["kept"])) * k) for g, k in gs]
        if path not in plan.leaf_shapes:
            raise ValueError(f"{where}: group {gs[0][0]['id']} ({gs[0][0]['name']}): member leaf {path!r} is not "
                             "in the plan's leaf_shapes")
        n = plan.leaf_shapes[path][axis] if 0 <= axis < len(plan.leaf_shapes[path]) else None
        kept = plan.leaves.get(path, {}).get(axis)
        dropped = 0 if kept is None else (n or 0) - len(kept)
        g0, most = max(removed, key=lambda t: t[1])
        if dropped < most:
            raise ValueError(f"{where}: group {g0['id']} ({g0['name']}) drops {g0['size'] - len(g0['kept'])} "
                             f"units, but its member leaf {path!r} axis {axis} has {dropped} indices dropped "
                             f"(expected at least {most})")
        if all(k > 0 for _, k in gs) and dropped > sum(r for _, r in removed):
            raise ValueError(f"{where}: leaf {path!r} axis {axis} has {dropped} indices dropped, but its groups "
                             f"{[g['name'] for g, _ in gs]} drop only {sum(r for _, r in removed)}")


def _validate_against_graph(plan: "PrunePlan", graph: DependencyGraph) -> None:
    where = "PrunePlan does not match the traced model"
    by_id = {g.id: g for g in graph.groups}
    for pg in plan.groups:
        g = by_id.get(pg["id"])
        if g is None:
            raise ValueError(f"{where}: group {pg['id']} ({pg['name']}) does not exist in the traced model "
                             f"({len(graph.groups)} groups)")
        if g.name != pg["name"] or g.size != pg["size"]:
            raise ValueError(f"{where}: plan group {pg['id']} is {pg['name']} with {pg['size']} units, the traced "
                             f"model's group {g.id} is {g.name} with {g.size} units")
        if not g.prunable and len(pg["kept"]) < g.size:
            raise ValueError(f"{where}: group {g.id} ({g.name}) is pruned by the plan but not prunable: {g.reason}")
    for path, shape in graph.leaf_shapes.items():
        if tuple(plan.leaf_shapes.get(path, ())) != tuple(shape):
            raise ValueError(f"{where}: leaf {path!r}: the plan expects shape {plan.leaf_shapes.get(path)}, the "
                             f"traced model has {tuple(shape)}")
    extra = sorted(set(plan.leaf_shapes) - set(graph.leaf_shapes))
    if extra:
        raise ValueError(f"{where}: leaf {extra[0]!r} of the plan is not in the traced model")
    ref = plan_from_kept(graph, {g["id"]: g["kept"] for g in plan.groups}, allow_empty=True)
    for path in sorted(set(ref.leaves) | set(plan.leaves)):
        want, have = ref.leaves.get(path, {}), plan.leaves.get(path, {})
        if want != have:
            axis = next(a for a in sorted(set(want) | set(have)) if want.get(a) != have.get(a))
            culprits = [g.name for g in graph.groups if any(m.path == path and m.axis == axis for m in g.members)]
            raise ValueError(f"{where}: leaf {path!r} axis {axis}: the plan keeps "
                             f"{_short(have.get(axis))}, its groups' kept units give {_short(want.get(axis))} "
                             f"(groups {culprits[:4]}; a group deleted or edited?)")


def _short(k) -> str:
    if k is None:
        return "all indices"
    k = list(k)
    return f"{len(k)} indices {k[:8]}{'...' if len(k) > 8 else ''}"


# --------------------------------------------------------------------------------- plan building
def _complement(n: int, idx: np.ndarray) -> np.ndarray:
    """Sorted indices of ``range(n)`` not in ``idx`` (``np.setdiff1d(np.arange(n), idx)``, faster)."""
    keep = np.ones(n, dtype=bool)
    keep[idx] = False
    return np.flatnonzero(keep)


def _unit_width(m) -> int:
    """Indices each unit owns along the member's axis; 0 if units share indices (no count check then)."""
    im = np.asarray(m.index_map)
    if im.ndim != 2 or np.unique(im).size != im.size:
        return 0
    return int(im.shape[1])


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
            raise ValueError(f"group {gid} ({g.name}): keeping 0 units; {EMPTY_HINT}")
        drop = _complement(g.size, k)
        groups.append(dict(id=g.id, name=g.name, kind=g.kind, size=g.size, kept=tuple(k.tolist()),
                           members=tuple((m.path, int(m.axis), _unit_width(m)) for m in g.members)))
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
              bias: bool = True, allow_empty: bool = False) -> PrunePlan:
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
      allow_empty: let a group keep 0 units (only reachable with ``min_keep=0``);
        otherwise that raises ``ValueError``.

    Bad arguments (a ratio outside ``[0, 1]`` or not a number, a negative
    ``min_keep``, ...) and params holding NaN in a leaf of an eligible group
    raise ``TypeError``/``ValueError`` naming the argument or the leaf.

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
    _check_make_plan_args(ratio, scope, round_to, min_keep, max_ratio, ignore, kinds, budget, allow_empty)
    ratio, round_to, min_keep, max_ratio = (x.item() if isinstance(x, (np.integer, np.floating)) else x
                                            for x in (ratio, round_to, min_keep, max_ratio))  # JSON-able meta
    _check_params(params, graph)
    eligible = _eligible(graph, kinds, ignore)
    _check_finite(graph, eligible, params=params, grads=grads, scores=scores)
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
        return plan_from_kept(graph, kept, dict(meta, ratio=ratio), allow_empty=allow_empty)

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
        return plan_from_kept(graph, kept, meta, allow_empty=allow_empty)

    if budget is None:
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"scope='global' needs a float ratio in [0, 1], got {ratio!r}")
        plan = plan_for(int(math.floor(total * ratio + 1e-9)))
        return dataclasses.replace(plan, meta=dict(plan.meta, ratio=float(ratio)))
    return _plan_for_budget(params, graph, budget, plan_for, total, meta)


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
        raise TypeError(f"make_plan: max_ratio must be a number in [0, 1], got {type(max_ratio).__name__} "
                        f"{max_ratio!r}")
    if not 0.0 <= max_ratio <= 1.0:
        raise ValueError(f"make_plan: max_ratio must be in [0, 1], got {max_ratio!r}")
    if not isinstance(allow_empty, (bool, np.bool_)):
        raise TypeError(f"make_plan: allow_empty must be a bool, got {allow_empty!r}")
    if _is_number(ratio):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"make_plan: ratio must be in [0, 1], got {ratio!r}")
    elif isinstance(ratio, (str, bytes)) or not isinstance(ratio, Sequence):
        raise TypeError(f"make_plan: ratio must be a number in [0, 1] or a list of (regex, ratio) pairs, "
                        f"got {type(ratio).__name__} {ratio!r}")
    else:
        for i, rule in enumerate(ratio):
            if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2 \
                    or not isinstance(rule[0], str) or not _is_number(rule[1]):
                raise TypeError(f"make_plan: ratio rule {i} must be a (regex string, number) pair, got {rule!r}")
            if not 0.0 <= rule[1] <= 1.0:
                raise ValueError(f"make_plan: ratio rule {i} ({rule[0]!r}) must have a ratio in [0, 1], "
                                 f"got {rule[1]!r}")
            try:
                re.compile(rule[0])
            except re.error as e:
                raise ValueError(f"make_plan: ratio rule {i}: invalid regex {rule[0]!r}: {e}") from None
    for name, v in (("ignore", ignore), ("kinds", kinds)):
        if v is None:
            continue
        if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, set, frozenset)) \
                or not all(isinstance(x, str) for x in v):
            raise TypeError(f"make_plan: {name} must be a list of strings (or None), got {v!r}")
    for rx in ignore or ():
        try:
            re.compile(rx)
        except re.error as e:
            raise ValueError(f"make_plan: ignore: invalid regex {rx!r}: {e}") from None
    if budget is not None:
        if not isinstance(budget, Budget):
            raise TypeError(f"make_plan: budget must be flops_budget(...) or param_bytes_budget(...), got {budget!r}")
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
            a = np.asarray(x)
            if str(a.dtype) == "bfloat16":
                a = a.astype(np.float32)
            if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
                if np.isnan(a).any():
                    raise ValueError(f"make_plan: {what} leaf {path!r} contains NaN (group {g.name}); cannot rank "
                                     "its units")


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
        try:
            nan = bool(np.isnan(np.asarray(v, np.float64)).any())
        except (TypeError, ValueError):
            raise TypeError(f"make_plan: unit_scores[{name!r}] must be numbers, got {v!r}") from None
        if nan:
            raise ValueError(f"make_plan: unit_scores[{name!r}] contains NaN; cannot rank the group's units")
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
