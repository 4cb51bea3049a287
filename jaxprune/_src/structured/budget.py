"""Cost budgets for :func:`make_plan`: XLA FLOPs or parameter bytes of the shrunk model, met by bisection,
or measured latency (a :class:`~jaxprune._src.structured.latency.LatencyTable`), met greedily."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxprune._src.structured.groups import DependencyGraph, Group
from jaxprune._src.structured.latency import LatencyTable, graph_op_hash, measure_latency
from jaxprune._src.structured.prune_plan import PrunePlan
from jaxprune._src.structured.run import shrunk_flops
from jaxprune._src.tree import leaves_with_paths

__all__ = [
    "Budget",
    "flops_budget",
    "param_bytes_budget",
    "latency_budget",
    "plan_cost",
    "plan_for_budget",
    "plan_for_latency",
]


@dataclasses.dataclass(frozen=True)
class Budget:
    """A cost target for :func:`make_plan`: ``kind`` is ``'flops'``, ``'param_bytes'`` or ``'latency'``."""

    kind: str
    target: float
    relative: bool = False
    cost_fn: Callable[..., float] | None = None
    table: LatencyTable | None = None


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


def latency_budget(target: float, *, relative: bool = True, table: LatencyTable | None = None) -> Budget:
    """Target forward latency of the shrunk model, predicted by a measured :class:`LatencyTable`.

    ``relative=True`` (the default): ``target`` is a fraction of the dense model's
    predicted latency; else seconds. ``table=None``: :func:`make_plan` measures one
    (``measure_latency(params, graph, coarse=True)``, about a minute for ResNet-50 on
    2 CPU cores); pass a table measured once (and cached) to plan repeatedly.
    :func:`make_plan` then prunes greedily: each step cuts, in one group, down to
    one of the table's probed widths, the cut that loses the least importance per
    second saved, until the predicted latency is at or below the target.

    >>> latency_budget(0.5).kind, latency_budget(0.5).relative
    ('latency', True)
    """
    if isinstance(target, bool) or not isinstance(target, (int, float, np.integer, np.floating)):
        raise TypeError(f"latency_budget: target must be a number, got {type(target).__name__} {target!r}")
    if not math.isfinite(target) or target <= 0 or (relative and target > 1):
        raise ValueError(
            f"latency_budget: target must be in (0, 1] with relative=True (else seconds > 0), got {target!r}"
        )
    if table is not None and not isinstance(table, LatencyTable):
        raise TypeError(f"latency_budget: table must be a LatencyTable (measure_latency) or None, got {table!r}")
    return Budget("latency", float(target), bool(relative), table=table)


def plan_cost(params: Any, graph: DependencyGraph, plan: PrunePlan, kind: str) -> float:
    """Cost of the shrunk model: ``'flops'`` (XLA, traced function) or ``'param_bytes'``."""
    if kind == "param_bytes":
        total = 0
        for path, x in leaves_with_paths(params):
            shape = plan.shapes[path][1] if path in plan.shapes else np.shape(x)
            total += int(np.prod(shape)) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
        return float(total)
    if kind == "flops":
        return shrunk_flops(params, graph, plan)
    if kind == "latency":
        raise ValueError("budget kind 'latency' needs a LatencyTable: use table.predict(plan)")
    raise ValueError(f"budget kind must be 'flops' or 'param_bytes', got {kind!r}")


def plan_for_budget(params, graph, budget: Budget, plan_for, total: int, meta: dict) -> PrunePlan:
    cache: dict[tuple, float] = {}

    def cost(k: int) -> tuple[PrunePlan, float]:
        plan = plan_for(k)
        sig = tuple((g["id"], len(g["kept"])) for g in plan.groups)
        if sig not in cache:
            cache[sig] = (
                budget.cost_fn(plan) if budget.cost_fn is not None else plan_cost(params, graph, plan, budget.kind)
            )
        return plan, cache[sig]

    dense_plan, dense = cost(0)
    target = budget.target * dense if budget.relative else budget.target
    if dense <= target:
        return dataclasses.replace(dense_plan, meta=dict(meta, budget=budget.kind, target=target, cost=dense))
    lo, hi = 0, total  # cost(lo) > target
    hi_plan, hi_cost = cost(hi)
    if hi_cost > target:
        raise ValueError(
            f"{budget.kind} budget {target:.4g} is unreachable: pruning every eligible unit "
            f"(within min_keep/max_ratio/round_to) still costs {hi_cost:.4g} (dense {dense:.4g})"
        )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        plan, c = cost(mid)
        if c <= target:
            hi, hi_plan, hi_cost = mid, plan, c
        else:
            lo = mid
    return dataclasses.replace(
        hi_plan, meta=dict(meta, budget=budget.kind, target=target, cost=hi_cost, dense_cost=dense, pruned_units=hi)
    )


def plan_for_latency(
    params: Any,
    graph: DependencyGraph,
    budget: Budget,
    eligible: Sequence[Group],
    scores: Mapping[int, np.ndarray],
    floor: Callable[[int], int],
    round_to: int,
    build: Callable[[dict[int, int]], PrunePlan],
    meta: dict,
) -> PrunePlan:
    """Greedy latency-budgeted plan: ``build({group id: kept count})`` at the chosen counts.

    Each group may only stop at its table's probed widths (rounded up to ``round_to``,
    at least ``floor(size)``) or at its full size; a step moves one group from its
    width to a narrower allowed one, the move with the least importance lost (sum of
    the dropped lowest ``scores``) per predicted second saved, until the prediction
    is at or below the target.
    """
    table = budget.table
    if table is None:
        table = measure_latency(params, graph, coarse=True)
    have = table.key.get("graph_hash")
    if have is not None and have != graph_op_hash(graph):
        raise ValueError(
            "latency_budget: the table was measured for another model (graph hash "
            f"{have} != {graph_op_hash(graph)}); measure_latency on this graph"
        )
    names = {g.id: g.name for g in eligible}
    for g in eligible:
        if g.name not in table.groups:
            raise ValueError(f"latency_budget: group {g.name} is not in the latency table (another model?)")
    widths: dict[str, int] = {}
    site_of = table.sites_of()
    cum = {}
    allowed = {}
    for g in eligible:
        s = np.sort(np.asarray(scores[g.id], np.float64))
        cum[g.id] = np.concatenate([[0.0], np.cumsum(s)])
        lo = floor(g.size)
        ws = {g.size, lo} | {min(g.size, int(math.ceil(w / round_to)) * round_to) for w in table.knots(g.name)}
        allowed[g.id] = sorted(w for w in ws if lo <= w <= g.size)
    kept = {g.id: g.size for g in eligible}
    dense = table.predict_widths({})
    target = budget.target * dense if budget.relative else budget.target
    now = dense

    def best_move(g: Group) -> tuple[float, float, int] | None:
        k = kept[g.id]
        sites = site_of[g.name]
        before = sum(table.site_cost(i, widths) for i in sites)
        best = None
        for w in allowed[g.id]:
            if w >= k:
                break
            trial = dict(widths)
            trial[g.name] = w
            saved = before - sum(table.site_cost(i, trial) for i in sites)
            if saved <= 0:
                continue
            lost = cum[g.id][g.size - w] - cum[g.id][g.size - k]
            cand = (lost / saved, saved, -w)  # ties: the smallest cut (the budget is then met more closely)
            if best is None or cand < best:
                best = cand
        return best

    moves = {g.id: best_move(g) for g in eligible}
    neighbours = {g.id: {h.id for h in eligible if set(site_of[h.name]) & set(site_of[g.name])} for g in eligible}
    steps = 0
    while now > target:
        cands = [(m, gid) for gid, m in moves.items() if m is not None]
        if not cands:
            raise ValueError(
                f"latency budget {target:.4g} s is unreachable: pruning every eligible group to its narrowest "
                f"allowed width (min_keep/max_ratio/round_to) is predicted at {now:.4g} s (dense {dense:.4g} s)"
            )
        (_, saved, neg_w), gid = min(cands)
        w = -neg_w
        if saved >= now - target:  # the last move: the finishing move that loses the least importance instead
            gid, w = _cheapest_finish(eligible, kept, allowed, cum, table, site_of, widths, now - target, gid, w)
        kept[gid] = w
        widths[names[gid]] = w
        now = table.predict_widths(widths)
        steps += 1
        for h in neighbours[gid] | {gid}:
            moves[h] = best_move(next(g for g in eligible if g.id == h))
    plan = build(kept)
    return dataclasses.replace(
        plan,
        meta=dict(
            meta,
            budget="latency",
            target=target,
            cost=now,
            dense_cost=dense,
            relative=budget.relative,
            latency_table=table.key.get("graph_hash"),
            greedy_steps=steps,
        ),
    )


def _cheapest_finish(eligible, kept, allowed, cum, table, site_of, widths, need, gid, w) -> tuple[int, int]:
    """Among the single moves that save at least ``need`` seconds, the one losing the least importance."""
    best = (float("inf"), gid, w)
    for g in eligible:
        k = kept[g.id]
        sites = site_of[g.name]
        before = sum(table.site_cost(i, widths) for i in sites)
        for cand in reversed(allowed[g.id]):  # widest first: the first that finishes loses the least here
            if cand >= k:
                continue
            trial = dict(widths)
            trial[g.name] = cand
            if before - sum(table.site_cost(i, trial) for i in sites) >= need:
                lost = cum[g.id][g.size - cand] - cum[g.id][g.size - k]
                best = min(best, (lost, g.id, cand))
                break
    return best[1], best[2]
