"""Cost budgets for :func:`make_plan`: XLA FLOPs or parameter bytes of the shrunk model, met by bisection."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxprune._src.structured.groups import DependencyGraph
from jaxprune._src.structured.prune_plan import PrunePlan
from jaxprune._src.structured.run import shrunk_flops
from jaxprune._src.tree import leaves_with_paths

__all__ = ["Budget", "flops_budget", "param_bytes_budget", "plan_cost", "plan_for_budget"]


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
