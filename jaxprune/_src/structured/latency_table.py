"""``LatencyTable``: a measured latency model (per-op profiles + calibration) that predicts a plan's seconds.

Made by :func:`~jaxprune._src.structured.latency.measure_latency` (which documents the model);
plain JSON-able data with an atomic save and a keyed load.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import tempfile
from typing import Any, Mapping, Sequence

from jaxprune._src.structured.prune_plan import PrunePlan

__all__ = ["LatencyTable", "key_mismatch", "step_time"]


@dataclasses.dataclass
class LatencyTable:
    """Measured per-op latency profiles of one traced model on one backend; JSON round trip.

    Attributes:
      key: what the measurement depends on (backend, device kind, dtype, batch, widths, graph hash, ...).
      groups: ``{group name: size}`` of the prunable groups.
      probes: one dict per distinct op: ``op``, ``full_s``, ``factors``, a list of
        ``{'widths': [...], 'times': [...]}`` profiles (seconds, the full width last), and for ops
        of several groups ``diag``: the times with every group at its j-th probed width.
      sites: one dict per op of the model: ``probe`` (index), ``groups`` (the group name of each
        factor of the probe), ``out_elems`` and ``out_groups`` (groups that set its output size).
      dense_s: the measured dense whole-model time; residual_s / scale: the calibration (module docstring).
      meta: how it was measured (reps, seconds taken, load average).
    """

    key: dict
    groups: dict
    probes: list
    sites: list
    dense_s: float | None = None
    residual_s: float = 0.0
    scale: float = 1.0
    meta: dict = dataclasses.field(default_factory=dict)
    _knots: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # -- prediction
    def _site_time(self, s: dict, widths: Mapping[str, int]) -> float:
        p = self.probes[s["probe"]]
        full = p["full_s"]
        if full <= 0:
            return 0.0
        t = full
        top = 0  # the widest factor's step index: the interaction is read on the diagonal there
        for f, g in zip(p["factors"], s["groups"]):
            w = widths.get(g)
            n = len(f["widths"])
            if w is None or w >= self.groups[g]:
                top = n - 1
                continue
            if w <= 0:
                return 0.0
            top = max(top, min(bisect.bisect_left(f["widths"], w), n - 1))
            t *= step_time(f["widths"], f["times"], w) / full
        diag = p.get("diag")
        if diag and top < len(diag) - 1:
            prod = full
            for f in p["factors"]:
                prod *= f["times"][top] / full
            if prod > 0:
                t *= diag[top] / prod
        return t

    def _site_act(self, s: dict, widths: Mapping[str, int]) -> float:
        a = float(s["out_elems"])
        for g in s["out_groups"]:
            w = widths.get(g)
            if w is not None and w < self.groups[g]:
                a *= self._step_width(g, w) / self.groups[g]
        return a

    def _step_width(self, group: str, w: int) -> int:
        """The smallest probed width of ``group`` that is >= ``w`` (the step the op times use too)."""
        if self._knots is None:
            self._knots = {g: self.knots(g) for g in self.groups}
        ks = self._knots[group]
        if w <= 0:
            return 0
        return ks[min(bisect.bisect_left(ks, w), len(ks) - 1)]

    @property
    def total_out_elems(self) -> float:
        return float(sum(s["out_elems"] for s in self.sites)) or 1.0

    def predict_widths(self, widths: Mapping[str, int]) -> float:
        """Predicted seconds with group ``name`` keeping ``widths[name]`` units (others whole).

        >>> t = LatencyTable({}, {'g': 4}, [{'op': 'dot_general', 'full_s': 2.0,
        ...     'factors': [{'widths': [2, 4], 'times': [1.0, 2.0]}]}],
        ...     [{'probe': 0, 'groups': ['g'], 'out_elems': 4, 'out_groups': ['g']}])
        >>> t.predict_widths({}), t.predict_widths({'g': 2}), t.predict_widths({'g': 3})
        (2.0, 1.0, 2.0)
        """
        for g in widths:
            if g not in self.groups:
                raise ValueError(f"widths: group {g!r} is not in the latency table (measured for another model?)")
        ops = sum(self._site_time(s, widths) for s in self.sites)
        act = sum(self._site_act(s, widths) for s in self.sites) / self.total_out_elems
        return float(self.scale * ops + self.residual_s * act)

    def predict(self, plan: PrunePlan) -> float:
        """Predicted seconds of the model shrunk by ``plan`` (groups the plan does not prune: whole)."""
        if not isinstance(plan, PrunePlan):
            raise TypeError(f"plan: expected a PrunePlan, got {type(plan).__name__}")
        return self.predict_widths({g["name"]: len(g["kept"]) for g in plan.groups})

    def knots(self, group: str) -> list[int]:
        """The probed widths of ``group`` (full width included), sorted."""
        ws = {self.groups[group]}
        for s in self.sites:
            for f, g in zip(self.probes[s["probe"]]["factors"], s["groups"]):
                if g == group:
                    ws.update(int(w) for w in f["widths"])
        return sorted(ws)

    def sites_of(self) -> dict[str, list[int]]:
        """``{group name: indices of the sites whose time or output size it sets}``."""
        out: dict[str, list[int]] = {g: [] for g in self.groups}
        for i, s in enumerate(self.sites):
            for g in set(s["groups"]) | set(s["out_groups"]):
                out[g].append(i)
        return out

    def site_cost(self, i: int, widths: Mapping[str, int]) -> float:
        """Seconds one site contributes (its op, scaled, plus its share of the residual)."""
        s = self.sites[i]
        return self.scale * self._site_time(s, widths) + self.residual_s * self._site_act(s, widths) / (
            self.total_out_elems
        )

    # -- JSON
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyTable":
        try:
            t = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.init and f.name in d})
            for s in t.sites:
                p = t.probes[s["probe"]]
                if len(p["factors"]) != len(s["groups"]) or any(g not in t.groups for g in s["groups"]):
                    raise ValueError(f"site {s} does not match its probe or the groups")
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"not a LatencyTable dict: {e!r}") from None
        return t

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table as JSON, atomically (temporary file + rename)."""
        path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".latency-", suffix=".json")
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, key: Mapping[str, Any] | None = None) -> "LatencyTable":
        """Reads a saved table; with ``key``, ``ValueError`` naming the fields that differ."""
        try:
            with open(os.fspath(path)) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"latency cache {os.fspath(path)!r} is not JSON: {e}") from None
        t = cls.from_dict(d)
        if key is not None:
            diff = key_mismatch(t.key, key)
            if diff:
                raise ValueError(f"latency cache {os.fspath(path)!r} was measured for another setting: {diff}")
        return t


def key_mismatch(have: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    """Readable list of the key fields that differ ('' if none)."""
    keys = sorted(set(have) | set(want))
    diffs = [f"{k}: cached {have.get(k)!r}, wanted {want.get(k)!r}" for k in keys if have.get(k) != want.get(k)]
    return "; ".join(diffs)


def step_time(widths: Sequence[int], times: Sequence[float], w: int) -> float:
    """The time of the smallest probed width >= ``w`` (0 for ``w <= 0``)."""
    if w <= 0:
        return 0.0
    i = bisect.bisect_left(widths, w)
    return float(times[min(i, len(times) - 1)])
