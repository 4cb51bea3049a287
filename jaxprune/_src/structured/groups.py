"""The result of tracing: :class:`Member`, :class:`Group` and :class:`DependencyGraph`.

A group's unit ``u`` owns, in each member leaf, the indices
``member.index_map[u]`` along ``member.axis``. *Root* members are the output
axes of the layers that make the group (a conv kernel's output axis, a dense
kernel's free axis); the others (norm scales and statistics, biases, the next
layer's input axis) are *dependents*.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Member", "Group", "DependencyGraph", "TraceState"]


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
    """One leaf axis of a group: unit ``u`` owns ``leaf.take(index_map[u], axis)``."""

    path: str
    axis: int
    index_map: np.ndarray
    role: str = "dep"  # 'root': an output axis of the layer that makes the group; 'dep': dependent

    def __repr__(self) -> str:
        k = self.index_map.shape[1]
        return f"Member({self.path!r}, axis={self.axis}, k={k}, role={self.role!r})"


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """Units (channels, heads, hidden units) that must be pruned together."""

    id: int
    size: int
    members: tuple[Member, ...]
    prunable: bool
    reason: str | None
    kind: str = "channels"
    through_norm: bool = False  # its channels meet a reduction (a norm's statistics): shrinking is approximate

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every distinct reason the group is unprunable (empty when prunable)."""
        return tuple(self.reason.split("; ")) if self.reason else ()

    @property
    def roots(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "root")

    @property
    def dependents(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role != "root")

    @property
    def name(self) -> str:
        """The first root member's leaf path (else the first member's)."""
        first = (self.roots or self.members)[0]
        return f"{first.path}[{first.axis}]"

    def describe(self) -> str:
        status = "prunable" if self.prunable else "UNPRUNABLE"
        if self.prunable and self.through_norm:
            status += ", through a norm's statistics: approximate"
        lines = [f"group {self.id}: {self.size} {self.kind} ({status})"]
        lines += [f"  blocker: {r}" for r in self.reasons]
        for m in self.roots + self.dependents:
            k = m.index_map.shape[1]
            lines.append(f"  {m.role:4s} {m.path} axis {m.axis}" + (f" ({k} indices per unit)" if k > 1 else ""))
        return "\n".join(lines)

    __str__ = describe


@dataclasses.dataclass(frozen=True, eq=False)
class TraceState:
    """What :func:`trace_groups` keeps so the model can be re-run shrunk (internal to the engine).

    Attributes:
      walker, resolved: the axis classes and their derivations (``trace.py``).
      closed: the traced ``ClosedJaxpr``; env: jaxpr var -> first axis node.
      atoms: the atomic class of each group, by group id.
      arg_leaves, arg_tree, is_array: the flattened example arguments and which leaves are arrays.
      out_tree: the output structure.
      apply_fn, kwargs: the traced function and its keyword arguments (for re-tracing at new shapes).
      options: the keyword options of :func:`trace_groups` (``prunable``, ``ignore``, ``through_norms``).
    """

    walker: Any
    resolved: Any
    closed: Any
    env: dict
    atoms: list
    arg_leaves: list
    arg_tree: Any
    is_array: list
    out_tree: Any
    apply_fn: Any = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class DependencyGraph:
    """All groups of a traced model, plus what :func:`make_shrunk_fn` needs to re-run it."""

    groups: tuple[Group, ...]
    leaf_shapes: dict[str, tuple[int, ...]]
    trace: TraceState | None = dataclasses.field(repr=False, default=None)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Group:
        return self.groups[i]

    @property
    def prunable(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def groups_of(self, path: str) -> tuple[Group, ...]:
        """Groups with a member on leaf ``path``."""
        return tuple(g for g in self.groups if any(m.path == path for m in g.members))

    def describe(self, all: bool = False) -> str:  # noqa: A002
        """A readable listing; conv-window and model-input axes are hidden unless ``all``."""
        n = len(self.prunable)
        head = f"DependencyGraph: {len(self.groups)} groups ({n} prunable, {len(self.groups) - n} not)"
        boring = ("window axis", "axis of a model input")
        shown = [g for g in self.groups if all or g.prunable or not str(g.reason).startswith(boring)]
        return "\n".join([head] + [g.describe() for g in shown])

    __str__ = describe
