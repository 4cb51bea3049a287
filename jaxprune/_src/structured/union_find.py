"""Union-find over (var, axis) nodes, with sizes, reasons and flags.

Private helper of :mod:`jaxprune._src.structured.trace`. A *node* is one axis
of one jaxpr value; nodes in the same class are index-by-index identical (the
same channels). Non-identity relations between classes (a reshape splitting an
axis into ``(heads, head_dim)``, a concatenation with offsets) are recorded
separately as *derivations* and resolved after the walk.
"""

from __future__ import annotations


class UnionFind:
    """Union-find with path halving; each node carries its axis length."""

    __slots__ = ("parent", "size", "reason", "flags")

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.reason: dict[int, list[str]] = {}
        self.flags: dict[int, set[str]] = {}

    def new(self, sizes) -> int:
        """Allocates consecutive nodes for ``sizes``; returns the first id."""
        base = len(self.parent)
        for s in sizes:
            self.parent.append(len(self.parent))
            self.size.append(int(s))
        return base

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        """Merges the classes of ``a`` and ``b`` (axes of equal length only)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            if self.size[ra] == 1 or self.size[rb] == 1:
                return  # broadcasting, not the same channels
            self.mark(ra, f"axes of different lengths {self.size[ra]} and {self.size[rb]} meet")
            self.mark(rb, f"axes of different lengths {self.size[ra]} and {self.size[rb]} meet")
            return
        if ra < rb:
            ra, rb = rb, ra
        self.parent[ra] = rb
        if ra in self.reason:
            mine = self.reason.setdefault(rb, [])
            mine.extend(r for r in self.reason.pop(ra) if r not in mine)
        if ra in self.flags:
            self.flags.setdefault(rb, set()).update(self.flags.pop(ra))

    def mark(self, x: int, reason: str) -> None:
        """Marks the class of ``x`` unprunable; every distinct reason is kept, in order."""
        reasons = self.reason.setdefault(self.find(x), [])
        if reason not in reasons:
            reasons.append(reason)

    def flag(self, x: int, name: str) -> None:
        self.flags.setdefault(self.find(x), set()).add(name)

    def reasons_of(self, x: int) -> list[str]:
        """Every distinct reason the class of ``x`` is unprunable (empty: prunable)."""
        return list(self.reason.get(self.find(x), ()))

    def reason_of(self, x: int) -> str | None:
        """All reasons joined by ``'; '`` (``None``: prunable)."""
        r = self.reason.get(self.find(x))
        return "; ".join(r) if r else None

    def flags_of(self, x: int) -> set[str]:
        return self.flags.get(self.find(x), set())
