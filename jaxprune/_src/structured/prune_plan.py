"""``PrunePlan``: which units of which groups are kept, as plain JSON-able data, validated.

A plan records, per group, the kept unit indices (and its members), and per
affected leaf the kept indices along each pruned axis, with the leaf's original
and new shape. It is all that :func:`shrink` and :func:`plan_to_masks` need,
so a pruned model can be rebuilt from a checkpoint without the code that made
the plan. :func:`plan_from_kept` builds one from chosen units; every plan is
validated when it is loaded or used (:meth:`PrunePlan.validate`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

from jaxprune._src.structured.groups import DependencyGraph

__all__ = ["PrunePlan", "plan_from_kept", "EMPTY_HINT"]

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
                leaves={
                    p: {_int(int(a) if isinstance(a, str) else a): tuple(_int(i) for i in k) for a, k in ax.items()}
                    for p, ax in d["leaves"].items()
                },
                shapes={p: (tuple(_int(i) for i in o), tuple(_int(i) for i in n)) for p, (o, n) in d["shapes"].items()},
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
    if (
        not isinstance(plan.leaf_shapes, Mapping)
        or not isinstance(plan.leaves, Mapping)
        or not isinstance(plan.shapes, Mapping)
    ):
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
                raise ValueError(
                    f"{where}: leaf {path!r}: axis {axis!r} is out of range for its {len(orig)}-d shape {orig}"
                )
            _check_indices(kept, orig[axis], f"{where}: leaf {path!r} axis {axis}")
        if path not in plan.shapes:
            raise ValueError(f"{where}: leaf {path!r} is shrunk but has no entry in shapes")
        o, n = plan.shapes[path]
        want = tuple(len(axes[a]) if a in axes else d for a, d in enumerate(orig))
        if tuple(o) != orig:
            raise ValueError(
                f"{where}: leaf {path!r}: shapes gives original shape {tuple(o)}, leaf_shapes gives {orig}"
            )
        if tuple(n) != want:
            raise ValueError(f"{where}: leaf {path!r}: shapes gives new shape {tuple(n)}, its kept indices give {want}")
    extra = sorted(set(plan.shapes) - set(plan.leaves))
    if extra:
        raise ValueError(f"{where}: leaf {extra[0]!r} has an entry in shapes but is not shrunk (no kept indices)")
    # groups vs leaves (plans that record their members)
    if not plan.groups and plan.leaves:
        raise ValueError(f"{where}: leaf {next(iter(plan.leaves))!r} is shrunk but the plan prunes no group")
    if plan.groups and not plan.leaves and any(len(g["kept"]) < g["size"] for g in plan.groups):
        g = next(g for g in plan.groups if len(g["kept"]) < g["size"])
        raise ValueError(
            f"{where}: group {g['id']} ({g['name']}) keeps {len(g['kept'])} of {g['size']} units "
            "but the plan shrinks no leaf"
        )
    if not plan.groups or not all("members" in g for g in plan.groups):
        return
    cover: dict[tuple[str, int], list[tuple[dict, int]]] = {}
    for g in plan.groups:
        for path, axis, k in g["members"]:
            cover.setdefault((path, axis), []).append((g, k))
    for path, axes in plan.leaves.items():
        for axis, kept in axes.items():
            if (path, axis) not in cover:
                raise ValueError(
                    f"{where}: leaf {path!r} axis {axis} is shrunk but belongs to no group of the plan "
                    "(a group deleted from the plan?)"
                )
    for (path, axis), gs in cover.items():
        removed = [(g, (g["size"] - len(g["kept"])) * k) for g, k in gs]
        if path not in plan.leaf_shapes:
            raise ValueError(
                f"{where}: group {gs[0][0]['id']} ({gs[0][0]['name']}): member leaf {path!r} is not "
                "in the plan's leaf_shapes"
            )
        size = plan.leaf_shapes[path][axis] if 0 <= axis < len(plan.leaf_shapes[path]) else None
        kept_here = plan.leaves.get(path, {}).get(axis)
        dropped = 0 if kept_here is None else (size or 0) - len(kept_here)
        g0, most = max(removed, key=lambda t: t[1])
        if dropped < most:
            raise ValueError(
                f"{where}: group {g0['id']} ({g0['name']}) drops {g0['size'] - len(g0['kept'])} "
                f"units, but its member leaf {path!r} axis {axis} has {dropped} indices dropped "
                f"(expected at least {most})"
            )
        if all(k > 0 for _, k in gs) and dropped > sum(r for _, r in removed):
            raise ValueError(
                f"{where}: leaf {path!r} axis {axis} has {dropped} indices dropped, but its groups "
                f"{[g['name'] for g, _ in gs]} drop only {sum(r for _, r in removed)}"
            )


def _validate_against_graph(plan: "PrunePlan", graph: DependencyGraph) -> None:
    where = "PrunePlan does not match the traced model"
    by_id = {g.id: g for g in graph.groups}
    for pg in plan.groups:
        g = by_id.get(pg["id"])
        if g is None:
            raise ValueError(
                f"{where}: group {pg['id']} ({pg['name']}) does not exist in the traced model "
                f"({len(graph.groups)} groups)"
            )
        if g.name != pg["name"] or g.size != pg["size"]:
            raise ValueError(
                f"{where}: plan group {pg['id']} is {pg['name']} with {pg['size']} units, the traced "
                f"model's group {g.id} is {g.name} with {g.size} units"
            )
        if not g.prunable and len(pg["kept"]) < g.size:
            raise ValueError(f"{where}: group {g.id} ({g.name}) is pruned by the plan but not prunable: {g.reason}")
    for path, shape in graph.leaf_shapes.items():
        if tuple(plan.leaf_shapes.get(path, ())) != tuple(shape):
            raise ValueError(
                f"{where}: leaf {path!r}: the plan expects shape {plan.leaf_shapes.get(path)}, the "
                f"traced model has {tuple(shape)}"
            )
    extra = sorted(set(plan.leaf_shapes) - set(graph.leaf_shapes))
    if extra:
        raise ValueError(f"{where}: leaf {extra[0]!r} of the plan is not in the traced model")
    ref = plan_from_kept(graph, {g["id"]: g["kept"] for g in plan.groups}, allow_empty=True)
    for path in sorted(set(ref.leaves) | set(plan.leaves)):
        want, have = ref.leaves.get(path, {}), plan.leaves.get(path, {})
        if want != have:
            axis = next(a for a in sorted(set(want) | set(have)) if want.get(a) != have.get(a))
            culprits = [g.name for g in graph.groups if any(m.path == path and m.axis == axis for m in g.members)]
            raise ValueError(
                f"{where}: leaf {path!r} axis {axis}: the plan keeps "
                f"{_short(have.get(axis))}, its groups' kept units give {_short(want.get(axis))} "
                f"(groups {culprits[:4]}; a group deleted or edited?)"
            )


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


def plan_from_kept(
    graph: DependencyGraph,
    kept: Mapping[int, Sequence[int] | np.ndarray],
    meta: dict | None = None,
    *,
    allow_empty: bool = False,
) -> PrunePlan:
    """Builds a plan from ``{group id: kept unit indices}`` (unlisted groups are kept whole).

    >>> import jax.numpy as jnp
    >>> from jaxprune import trace_groups
    >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
    >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
    >>> plan_from_kept(g, {g.prunable[0].id: [1, 3]}).shapes['a']
    ((2, 4), (2, 2))
    """
    by_id = {g.id: g for g in graph.groups}
    removed: dict[tuple[str, int], list[np.ndarray]] = {}
    groups: list[dict[str, Any]] = []
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
        groups.append(
            dict(
                id=g.id,
                name=g.name,
                kind=g.kind,
                size=g.size,
                kept=tuple(k.tolist()),
                members=tuple((m.path, int(m.axis), _unit_width(m)) for m in g.members),
            )
        )
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
