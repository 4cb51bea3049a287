"""Structured pruning: coupled groups from the jaxpr, a serializable plan, real shrinking, running the result."""

from jaxprune._src.structured.budget import Budget, flops_budget, latency_budget, param_bytes_budget
from jaxprune._src.structured.groups import DependencyGraph, Group, Member
from jaxprune._src.structured.importance import TORCH_PRUNING_DEFAULTS, group_scores
from jaxprune._src.structured.latency import measure_latency, measure_plan_latency, validate_latency
from jaxprune._src.structured.latency_table import LatencyTable
from jaxprune._src.structured.linen_surgery import register_linen_fix, shrunk_linen_apply
from jaxprune._src.structured.nnx_surgery import fix_nnx_attributes, shrink_nnx
from jaxprune._src.structured.plan import DEFAULT_KINDS, make_plan
from jaxprune._src.structured.prune_plan import PrunePlan, plan_from_kept
from jaxprune._src.structured.run import make_shrunk_fn, shrunk_flops, shrunk_fn_from_graph
from jaxprune._src.structured.shrink import check_plan, plan_to_masks, shrink
from jaxprune._src.structured.trace import trace_groups

__all__ = [
    "trace_groups",
    "DependencyGraph",
    "Group",
    "Member",
    "group_scores",
    "TORCH_PRUNING_DEFAULTS",
    "PrunePlan",
    "make_plan",
    "plan_from_kept",
    "Budget",
    "flops_budget",
    "param_bytes_budget",
    "latency_budget",
    "LatencyTable",
    "measure_latency",
    "measure_plan_latency",
    "validate_latency",
    "DEFAULT_KINDS",
    "shrink",
    "plan_to_masks",
    "check_plan",
    "make_shrunk_fn",
    "shrunk_fn_from_graph",
    "shrunk_flops",
    "shrink_nnx",
    "fix_nnx_attributes",
    "shrunk_linen_apply",
    "register_linen_fix",
]
