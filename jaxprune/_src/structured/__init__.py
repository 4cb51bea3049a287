"""Structured pruning: coupled groups from the jaxpr, a serializable plan, real shrinking."""

from jaxprune._src.structured.trace import DependencyGraph, Group, Member, trace_groups
from jaxprune._src.structured.importance import group_scores
from jaxprune._src.structured.plan import (DEFAULT_KINDS, Budget, PrunePlan, flops_budget, make_plan,
                                           param_bytes_budget, plan_from_kept)
from jaxprune._src.structured.shrink import check_plan, plan_to_masks, shrink

__all__ = [
    "trace_groups", "DependencyGraph", "Group", "Member", "group_scores", "PrunePlan", "make_plan",
    "plan_from_kept", "Budget", "flops_budget", "param_bytes_budget", "DEFAULT_KINDS", "shrink",
    "plan_to_masks", "check_plan",
]
from jaxprune._src.structured.run import make_shrunk_fn, shrunk_flops, shrunk_fn_from_graph

__all__ += ["make_shrunk_fn", "shrunk_fn_from_graph", "shrunk_flops"]
from jaxprune._src.structured.nnx_surgery import fix_nnx_attributes, shrink_nnx

__all__ += ["shrink_nnx", "fix_nnx_attributes"]
from jaxprune._src.structured.importance import TORCH_PRUNING_DEFAULTS

__all__ += ["TORCH_PRUNING_DEFAULTS"]
from jaxprune._src.structured.linen_surgery import register_linen_fix, shrunk_linen_apply

__all__ += ["shrunk_linen_apply", "register_linen_fix"]
