"""Sparsity summaries of params or masks, as data and as a rendered table.

Example:
  >>> import jax.numpy as jnp
  >>> s = sparsity_summary({'a': {'kernel': jnp.array([[0., 1.], [0., 2.]])}})
  >>> s.rows[0].path, s.rows[0].zeros, s.total_sparsity
  ('a/kernel', 2, 0.5)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

__all__ = ["LayerSparsity", "SparsitySummary", "sparsity_summary"]


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    path: str
    shape: tuple[int, ...]
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsitySummary:
    """Per-leaf zero counts. ``str(summary)`` renders a table; ``to_markdown()`` too."""

    rows: tuple[LayerSparsity, ...]

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.rows)

    @property
    def total_zeros(self) -> int:
        return sum(r.zeros for r in self.rows)

    @property
    def total_sparsity(self) -> float:
        return self.total_zeros / self.total_size if self.total_size else 0.0

    def as_dict(self) -> dict[str, float]:
        """``{path: sparsity}``."""
        return {r.path: r.sparsity for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [
                dict(path=r.path, shape=list(r.shape), size=r.size, zeros=r.zeros, sparsity=r.sparsity)
                for r in self.rows
            ],
            "total_size": self.total_size,
            "total_zeros": self.total_zeros,
            "total_sparsity": self.total_sparsity,
        }

    def _table(self, markdown: bool) -> str:
        head = ("layer", "shape", "params", "zeros", "sparsity")
        body = [
            (r.path, "x".join(map(str, r.shape)) or "()", f"{r.size:,}", f"{r.zeros:,}", f"{100 * r.sparsity:.1f}%")
            for r in self.rows
        ]
        body.append(("TOTAL", "", f"{self.total_size:,}", f"{self.total_zeros:,}", f"{100 * self.total_sparsity:.2f}%"))
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            return "\n".join(lines)
        widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
        fmt = lambda row: "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )
        sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
        return "\n".join([fmt(head), sep, *map(fmt, body[:-1]), sep, fmt(body[-1])])

    def to_markdown(self) -> str:
        return self._table(markdown=True)

    def __str__(self) -> str:
        return self._table(markdown=False)


def sparsity_summary(tree: PyTree, *, only: PyTree | None = None, min_ndim: int = 1) -> SparsitySummary:
    """Counts zeros per leaf of params (``== 0``) or masks (``False``).

    Args:
      tree: params or masks (mask leaves that are ``None`` are skipped).
      only: optional masks/bool pytree; only leaves where it is not None/False are listed.
      min_ndim: skip leaves with fewer dims (scalars by default).
    """
    rows = []
    keep = None
    if only is not None:
        keep = {
            p: (o is not None and o is not False) for p, o in tree_lib.leaves_with_paths(only, is_leaf=tree_lib.is_none)
        }
    for path, leaf in tree_lib.leaves_with_paths(tree, is_leaf=tree_lib.is_none):
        if leaf is None or (keep is not None and not keep.get(path, False)):
            continue
        arr = np.asarray(leaf)
        if arr.ndim < min_ndim:
            continue
        zeros = int(np.sum(~arr)) if arr.dtype == bool else int(np.sum(arr == 0))
        rows.append(LayerSparsity(path, tuple(arr.shape), int(arr.size), zeros))
    return SparsitySummary(tuple(rows))
