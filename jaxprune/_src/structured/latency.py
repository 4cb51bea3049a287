"""A latency model of a traced model, measured on the current backend, for latency-aware planning.

:func:`measure_latency` finds every convolution and ``dot_general`` of the
traced forward pass (the jaxpr of :func:`trace_groups`, sub-jaxprs inlined;
ops inside ``scan``/``cond`` bodies are not probed), works out which prunable
groups set the sizes of its operands (a conv's input channels, its output
channels, a head axis, ...) and times that op alone, jitted, at its traced
shapes with each such group at a few kept widths (the others kept whole):

* widths: fractions of the group (``coarse``: 1/4, 1/2, 3/4; default: eighths),
  rounded to multiples of 8 for groups of 64 units or more, plus the full width;
* an op set by several groups is also timed with all of them at their j-th
  probed width (the "diagonal"), which measures how the groups interact;
* each distinct op signature (primitive, parameters, operand shapes at every
  probed width) is measured once and shared by all the layers that have it;
* one compiling call and ``warmup`` calls, then ``reps`` interleaved rounds in
  which every variant of every op *and the dense whole model* run once (so a
  change of machine load affects all alike), median.

An op's time at widths ``(w_1, ..., w_k)`` of its groups is modelled as
``t_full * prod_i t_i(w_i) / t_full``, where ``t_i`` is the group's measured
profile read as a *step function* (a width between two probed widths costs
what the next larger probed width costs), times the diagonal's correction
``diag(j) / prod_i t_i(j) * t_full**(k-1)`` at the widest group's step ``j``
when every group is cut (exact on each axis and on the diagonal). The model's
time is the sum over ops plus a residual for everything not probed
(elementwise ops, norms, pooling), calibrated against the dense whole model
timed in the same rounds and scaled with the kept fraction of the probed ops'
output elements. (If the probes alone sum to more than the whole model --
XLA fuses better inside the model -- all op times are scaled down instead.)

The result is a :class:`LatencyTable` (JSON, cached with ``cache=path``
under a key of backend, device kind, dtype, batch size, probed widths and a
hash of the graph's op shapes). :meth:`LatencyTable.predict` gives the
predicted seconds of a plan; :func:`validate_latency` measures plans and
reports the model's error; ``make_plan(..., budget=latency_budget(0.5))``
plans to a latency target (``budget.py``).

Only the forward pass is modelled (no train step), at the batch size the
graph was traced with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.extend import core as jcore

from jaxprune._src.structured.axis_rules import CALLS, RULES
from jaxprune._src.structured.groups import DependencyGraph
from jaxprune._src.structured.latency_table import LatencyTable
from jaxprune._src.structured.prune_plan import PrunePlan, plan_from_kept
from jaxprune._src.structured.run import shrunk_fn_from_graph
from jaxprune._src.structured.shrink import shrink

__all__ = ["LatencyTable", "measure_latency", "measure_plan_latency", "validate_latency", "graph_op_hash"]

PROBED = ("conv_general_dilated", "dot_general")
COARSE_FRACTIONS = (0.25, 0.5, 0.75)
FINE_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
_VERSION = 2


# ------------------------------------------------------------------------------------------ graph reading
@dataclasses.dataclass
class _Site:
    key: tuple
    eqn: Any
    ins: list  # first axis node of every operand (None: a literal / unknown)
    outs: list


def _sites(graph: DependencyGraph) -> list[_Site]:
    """Every conv / dot_general of the traced jaxpr, with the axis nodes of its operands."""
    st = graph.trace
    if st is None:
        raise ValueError("graph: has no trace state; measure the latency of a graph made by trace_groups")
    w = st.walker
    out: list[_Site] = []

    def walk(jaxpr, env: dict, ctx: tuple) -> None:
        for i, eqn in enumerate(jaxpr.eqns):
            key = ctx + (i,)
            outs = w.eqn_outs.get(key)
            if outs is None:
                continue
            ins = [None if isinstance(v, jcore.Literal) else env.get(v) for v in eqn.invars]
            for v, b in zip(eqn.outvars, outs):
                env[v] = b
            name = eqn.primitive.name
            if name in PROBED:
                out.append(_Site(key, eqn, ins, list(outs)))
            elif name not in RULES and CALLS.get(name):
                sub = eqn.params[CALLS[name]]
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                walk(inner, {v: b for v, b in zip(inner.invars, ins) if b is not None}, key)

    walk(st.closed.jaxpr, dict(st.env), ())
    return out


class _Sizer:
    """Sizes of axis nodes when the groups' atoms keep ``kept[atom]`` units; which atoms an axis depends on."""

    def __init__(self, graph: DependencyGraph):
        st = graph.trace
        assert st is not None
        self.uf = st.walker.uf
        self.derived = st.resolved.derived
        self.group_of = {self.uf.find(st.atoms[g.id]): g for g in graph.groups if g.prunable}

    def size(self, node: int, kept: Mapping[int, int]) -> int:
        r = self.uf.find(node)
        d = self.derived.get(r)
        if d is not None:
            sizes = [self.size(p, kept) for p in d[1]]
            return int(np.prod(sizes)) if d[0] == "product" else int(sum(sizes))
        return int(kept.get(r, self.uf.size[r]))

    def deps(self, node: int) -> set[int]:
        r = self.uf.find(node)
        d = self.derived.get(r)
        if d is not None:
            return set().union(*(self.deps(p) for p in d[1]))
        return {r} if r in self.group_of else set()

    def shape(self, base, dense: tuple, kept: Mapping[int, int]) -> tuple:
        if base is None:
            return tuple(dense)
        return tuple(self.size(base + ax, kept) for ax in range(len(dense)))


def _shape(v) -> tuple:
    return tuple(getattr(v.aval, "shape", ()))


def _params_sig(eqn) -> str:
    return repr(sorted((k, repr(v)) for k, v in eqn.params.items() if k != "feature_group_count"))


def graph_op_hash(graph: DependencyGraph) -> str:
    """A hash of the probed ops' shapes and parameters and of the prunable groups (names, sizes).

    >>> import jax.numpy as jnp
    >>> from jaxprune import trace_groups
    >>> p = {'a': jnp.ones((2, 8)), 'b': jnp.ones((8, 3))}
    >>> len(graph_op_hash(trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))))
    16
    """
    h = hashlib.sha256()
    for s in _sites(graph):
        h.update(repr((s.eqn.primitive.name, [_shape(v) for v in s.eqn.invars], _params_sig(s.eqn))).encode())
    for g in graph.prunable:
        h.update(repr((g.name, g.size)).encode())
    return h.hexdigest()[:16]


def _probe_widths(n: int, fractions: Sequence[float]) -> list[int]:
    align = 8 if n >= 64 else 1
    ws = {min(n - 1, max(1, int(round(f * n / align)) * align)) for f in fractions}
    return sorted(w for w in ws if 1 <= w < n)


# ------------------------------------------------------------------------------------------ measuring
def _time_rounds(calls: Sequence[tuple[Callable, tuple]], reps: int, warmup: int) -> list[float]:
    """Median seconds of each call over ``reps`` interleaved rounds, after a compiling call and ``warmup``."""
    for fn, args in calls:
        for _ in range(warmup + 1):
            jax.block_until_ready(fn(*args))
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(max(reps, 1)):
        for i, (fn, args) in enumerate(calls):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def _dense_args(graph: DependencyGraph) -> list:
    st = graph.trace
    assert st is not None
    return [x for x, a in zip(st.arg_leaves, st.is_array) if a]


def latency_key(params: Any, graph: DependencyGraph, fractions: Sequence[float]) -> dict:
    """The cache key of a measurement: backend, device kind, dtype, batch, widths, graph hash, jax version."""
    dev = jax.devices()[0]
    dyn = _dense_args(graph)
    batch = int(np.shape(dyn[0])[0]) if dyn and np.ndim(dyn[0]) else None
    dtypes = sorted({str(np.dtype(s.eqn.invars[0].aval.dtype)) for s in _sites(graph)})
    return dict(
        version=_VERSION,
        backend=jax.default_backend(),
        device_kind=getattr(dev, "device_kind", str(dev)),
        dtype=",".join(dtypes),
        batch=batch,
        fractions=[float(f) for f in fractions],
        graph_hash=graph_op_hash(graph),
        jax=jax.__version__,
        mode="forward",
    )


def measure_latency(
    params: Any,
    graph: DependencyGraph,
    *,
    coarse: bool = False,
    fractions: Sequence[float] | None = None,
    reps: int | None = None,
    warmup: int | None = None,
    cache: str | os.PathLike | None = None,
    calibrate: bool = True,
    verbose: bool = False,
) -> LatencyTable:
    """Measures a :class:`LatencyTable` of the traced model on the default backend.

    Args:
      params, graph: the params and their :func:`trace_groups` graph, traced at the batch size
        (and input shapes) you will run the model with.
      coarse: widths 1/4, 1/2, 3/4 and full, 3 rounds, 1 warm-up (about a minute for ResNet-50 at
        batch 8 on 2 loaded CPU cores); default: every eighth, 5 rounds, 2 warm-ups.
      fractions, reps, warmup: override the widths (fractions of each group in (0, 1)) and timing.
      cache: a JSON path: loaded if its key (:func:`latency_key`) matches, else measured and written.
      calibrate: time the dense whole model once (else the model is the plain sum of op times).
      verbose: print progress.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import trace_groups
      >>> p = {'a': jnp.ones((4, 16)), 'b': jnp.ones((16, 3))}
      >>> g = trace_groups(lambda p, x: jnp.tanh(x @ p['a']) @ p['b'], p, jnp.ones((2, 4)))
      >>> t = measure_latency(p, g, coarse=True, reps=1, warmup=0, calibrate=False)
      >>> t.knots(g.prunable[0].name)
      [4, 8, 12, 16]
    """
    if not isinstance(graph, DependencyGraph):
        raise TypeError(f"graph: expected a DependencyGraph from trace_groups, got {type(graph).__name__}")
    fr = tuple(fractions) if fractions is not None else COARSE_FRACTIONS if coarse else FINE_FRACTIONS
    for f in fr:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f < 1.0:
            raise ValueError(f"fractions: every fraction must be a number in (0, 1), got {f!r}")
    reps = (3 if coarse else 5) if reps is None else reps
    warmup = (1 if coarse else 2) if warmup is None else warmup
    for name, v in (("reps", reps), ("warmup", warmup)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "reps" else 0):
            raise ValueError(f"{name}: must be an int >= {1 if name == 'reps' else 0}, got {v!r}")
    key = latency_key(params, graph, fr)
    if cache is not None and os.path.exists(os.fspath(cache)):
        try:
            return LatencyTable.load(cache, key)
        except ValueError as e:
            if verbose:
                print(f"[latency] re-measuring: {e}", flush=True)
    t0 = time.perf_counter()
    table = _measure(params, graph, fr, reps, warmup, calibrate, verbose)
    table.key = key
    table.meta.update(seconds=time.perf_counter() - t0, reps=reps, warmup=warmup, load_avg=_load())
    if cache is not None:
        table.save(cache)
    return table


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _measure(params, graph, fractions, reps, warmup, calibrate, verbose) -> LatencyTable:
    sizer = _Sizer(graph)
    probes: list[dict] = []
    by_sig: dict[Any, tuple[int, list[int]]] = {}
    sites: list[dict] = []
    todo: list[tuple[int, Any, list, list, list]] = []  # (probe, eqn, variants, widths per factor, diagonal)
    for s in _sites(graph):
        eqn = s.eqn
        dense = [_shape(v) for v in eqn.invars]
        atoms = set()
        for b, shp in zip(s.ins, dense):
            if b is not None:
                for ax in range(len(shp)):
                    atoms |= sizer.deps(b + ax)
        out_dense = _shape(eqn.outvars[0])
        out_atoms = set().union(*(sizer.deps(s.outs[0] + ax) for ax in range(len(out_dense)))) if out_dense else set()
        gnode = (graph.trace.walker.eqn_extra.get(s.key, {}) or {}).get("groups_node")  # type: ignore[union-attr]
        factors = []
        for a in atoms:
            g = sizer.group_of[a]
            ws = _probe_widths(g.size, fractions)
            variants = [
                ([sizer.shape(b, d, {a: w}) for b, d in zip(s.ins, dense)], _groups(sizer, gnode, {a: w})) for w in ws
            ]
            factors.append((repr((g.size, ws, variants)), a, ws, variants))
        factors.sort(key=lambda f: f[0])
        diag = []  # every factor at its j-th probed width (the interaction of the factors)
        if len(factors) >= 2 and len({len(f[2]) for f in factors}) == 1:
            for j in range(len(factors[0][2])):
                kept = {a: ws[j] for _, a, ws, _ in factors}
                diag.append(([sizer.shape(b, d, kept) for b, d in zip(s.ins, dense)], _groups(sizer, gnode, kept)))
        sig = (eqn.primitive.name, _params_sig(eqn), tuple(dense), tuple(f[0] for f in factors), repr(diag))
        if sig not in by_sig:
            idx = len(probes)
            probes.append(
                dict(
                    op=eqn.primitive.name,
                    shapes=[list(d) for d in dense],
                    full_s=None,
                    factors=[dict(widths=list(ws) + [sizer.group_of[a].size], times=[]) for _, a, ws, _ in factors],
                )
            )
            variants = [(dense, _groups(sizer, gnode, {}))] + [v for f in factors for v in f[3]]
            todo.append((idx, eqn, variants, [len(f[2]) for f in factors], diag))
            by_sig[sig] = (idx, [])
        idx = by_sig[sig][0]
        sites.append(
            dict(
                probe=idx,
                groups=[sizer.group_of[a].name for _, a, _, _ in factors],
                out_elems=int(np.prod(out_dense)) if out_dense else 1,
                out_groups=sorted({sizer.group_of[a].name for a in out_atoms}),
            )
        )
    # every variant of every op (and the dense model) in one list, timed in global interleaved rounds
    entries: list[tuple[int, str, int, int]] = []  # (probe, 'full' | 'factor' | 'diag', factor, width index)
    variant_of: list[tuple[Any, list, int | None]] = []
    for idx, eqn, variants, counts, diag in todo:
        entries.append((idx, "full", -1, -1))
        variant_of.append((eqn, *variants[0]))
        k = 1
        for fi, c in enumerate(counts):
            for j in range(c):
                entries.append((idx, "factor", fi, j))
                variant_of.append((eqn, *variants[k]))
                k += 1
        for j, v in enumerate(diag):
            entries.append((idx, "diag", -1, j))
            variant_of.append((eqn, *v))
    times = _time_chunked(params, graph, variant_of, calibrate, reps, warmup, verbose)
    dense_s = times.pop() if calibrate else None
    for (idx, kind, fi, j), t in zip(entries, times):
        p = probes[idx]
        if kind == "full":
            p["full_s"] = t
        elif kind == "factor":
            p["factors"][fi]["times"].append(t)
        else:
            p.setdefault("diag", []).append(t)
    for p in probes:
        for f in p["factors"]:
            f["times"].append(p["full_s"])
        if "diag" in p:
            p["diag"].append(p["full_s"])
    table = LatencyTable(key={}, groups={g.name: g.size for g in graph.prunable}, probes=probes, sites=sites)
    ops = sum(probes[s["probe"]]["full_s"] for s in sites)
    table.meta["ops_dense_s"] = ops
    table.meta["probes"] = len(probes)
    table.meta["variants"] = len(entries)
    if dense_s is not None:
        table.dense_s = dense_s
        if dense_s >= ops:
            table.residual_s, table.scale = dense_s - ops, 1.0
        else:
            table.residual_s, table.scale = 0.0, (dense_s / ops if ops > 0 else 1.0)
    return table


#: Operand bytes held at once while timing probes (more variants are timed in several chunks).
CHUNK_BYTES = 1_500_000_000


def _time_chunked(params, graph, variants, calibrate, reps, warmup, verbose) -> list[float]:
    """Seconds of every ``(eqn, shapes, groups)`` variant (and last, the dense model if ``calibrate``).

    Variants are compiled, then timed in interleaved rounds together with the dense model, in
    chunks of at most :data:`CHUNK_BYTES` of operands; the dense time is the median over chunks.
    """
    dense_call = None
    if calibrate:
        st = graph.trace
        assert st is not None
        fn = jax.jit(shrunk_fn_from_graph(graph, plan_from_kept(graph, {})))
        it = iter(_dense_args(graph))
        full = [next(it) if a else x for x, a in zip(st.arg_leaves, st.is_array)]
        dense_call = (fn, (params, *jax.tree_util.tree_unflatten(st.arg_tree, full)))
    chunks: list[list[int]] = [[]]
    used = 0
    for i, (eqn, shapes, _) in enumerate(variants):
        b = sum(int(np.prod(s)) * np.dtype(v.aval.dtype).itemsize for v, s in zip(eqn.invars, shapes))
        if chunks[-1] and used + b > CHUNK_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += b
    out: list[float] = [0.0] * len(variants)
    dense: list[float] = []
    for c, idxs in enumerate(chunks):
        calls = [(_probe_fn(variants[i][0], variants[i][2]), _operands(variants[i][0], variants[i][1])) for i in idxs]
        if dense_call is not None:
            calls.append(dense_call)
        if verbose:
            print(f"[latency] chunk {c + 1}/{len(chunks)}: timing {len(calls)} variants", flush=True)
        times = _time_rounds(calls, reps, warmup)
        for i, t in zip(idxs, times):
            out[i] = t
        if dense_call is not None:
            dense.append(times[-1])
        del calls
    if dense_call is not None:
        out.append(float(np.median(dense)))
    return out


def _groups(sizer: _Sizer, gnode, kept) -> int | None:
    return None if gnode is None else sizer.size(gnode, kept)


def _probe_fn(eqn, feature_groups: int | None) -> Callable:
    params = dict(eqn.params)
    if feature_groups is not None:
        params["feature_group_count"] = feature_groups
    prim = eqn.primitive
    return jax.jit(lambda *xs: prim.bind(*xs, **params))


def _operands(eqn, shapes) -> tuple:
    """Constant operands of the given shapes (values do not change a conv's or matmul's speed)."""
    return tuple(jax.device_put(np.full(shp, 0.5, np.dtype(v.aval.dtype))) for v, shp in zip(eqn.invars, shapes))


# ------------------------------------------------------------------------------------------ validating
def measure_plan_latency(
    params: Any,
    graph: DependencyGraph,
    plans: Mapping[str, PrunePlan],
    *,
    reps: int = 5,
    warmup: int = 2,
) -> dict[str, float]:
    """Median forward seconds of the model shrunk by each plan, timed in interleaved rounds.

    Runs ``shrunk_fn_from_graph(graph, plan)`` jitted on ``shrink(params, plan)`` and the
    graph's example inputs (a plan that prunes nothing gives the dense model).
    """
    if not isinstance(plans, Mapping) or not all(isinstance(p, PrunePlan) for p in plans.values()):
        raise TypeError("plans: expected a mapping {name: PrunePlan}")
    dyn = _dense_args(graph)
    calls = []
    for plan in plans.values():
        fn = jax.jit(shrunk_fn_from_graph(graph, plan))
        small = jax.block_until_ready(shrink(params, plan))
        st = graph.trace
        assert st is not None
        it = iter(dyn)
        full = [next(it) if a else x for x, a in zip(st.arg_leaves, st.is_array)]
        args = jax.tree_util.tree_unflatten(st.arg_tree, full)
        calls.append((fn, (small, *args)))
    return dict(zip(plans, _time_rounds(calls, reps, warmup)))


def validate_latency(
    params: Any,
    graph: DependencyGraph,
    table: LatencyTable,
    plans: Mapping[str, PrunePlan],
    *,
    reps: int = 5,
    warmup: int = 2,
) -> list[dict]:
    """Predicted vs measured seconds of each plan (and of the dense model, measured in the same rounds).

    Returns one dict per plan: ``name``, ``predicted_s``, ``measured_s``, ``error`` (predicted /
    measured - 1), and ``measured_ratio`` / ``predicted_ratio`` (to dense, both from this run).
    """
    if not isinstance(table, LatencyTable):
        raise TypeError(f"table: expected a LatencyTable, got {type(table).__name__}")
    allp = {"dense": plan_from_kept(graph, {}), **plans}
    meas = measure_plan_latency(params, graph, allp, reps=reps, warmup=warmup)
    pred_dense = table.predict(allp["dense"])
    out = []
    for name, plan in allp.items():
        pred = table.predict(plan)
        out.append(
            dict(
                name=name,
                predicted_s=pred,
                measured_s=meas[name],
                error=pred / meas[name] - 1.0,
                predicted_ratio=pred / pred_dense,
                measured_ratio=meas[name] / meas["dense"],
            )
        )
    return out
