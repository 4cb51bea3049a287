"""Run a shrunk model through its own jaxpr: the generic fallback for any traceable model.

:func:`make_shrunk_fn` re-evaluates the jaxpr traced by :func:`trace_groups`
equation by equation on the shrunk params, rewriting the shape parameters that
the pruning changed (``reshape`` new sizes, ``broadcast_in_dim`` shapes,
``split`` sizes, ``slice`` bounds, ``pad`` widths, ``feature_group_count`` of
grouped convs, ``gather`` slice sizes, any ``shape`` parameter) from the new
size of each axis class. Sub-jaxprs (``jit``, ``custom_jvp``/``custom_vjp``,
``remat``) are inlined; ``scan`` and ``cond`` are rebuilt with ``lax.scan`` /
``lax.switch``. The result is a pure, jit-able ``fn(shrunk_params, *args)``.

The shrunk function runs at every input shape the original accepts (batch
size, sequence length, spatial size): shapes are baked into a jaxpr, so a call
with a new signature of input shapes/dtypes re-traces the *original* function
at those shapes (from abstract dense params: no FLOPs, no dense weights),
checks that the new trace has exactly the groups the plan was made for, and
caches the result; calls with a known signature reuse it. Inside your own
``jax.jit`` the re-trace happens once per compiled shape. Custom derivative
rules of inlined ``custom_jvp``/``custom_vjp`` functions are replaced by plain
autodiff of their primal code.

Plans made with ``trace_groups(..., through_norms=True)`` also rescale every
mean over a pruned axis (``sum / N`` becomes ``sum / N_kept``), so the shrunk
model's norms compute their statistics over the kept channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxprune._src.structured import axis_rules
from jaxprune._src.structured.prune_plan import PrunePlan
from jaxprune._src.structured.shrink import check_plan
from jaxprune._src.structured.trace import DependencyGraph, Group, trace_groups
from jaxprune._src.tree import leaves_with_paths, map_with_path

__all__ = ["make_shrunk_fn", "shrunk_fn_from_graph", "shrunk_flops"]


def _check_match(graph: DependencyGraph, plan: PrunePlan) -> dict[int, np.ndarray]:
    """Removed units per atomic class; raises if the plan was made for another graph."""
    plan.validate(graph)  # kept indices, shapes and leaves exactly as the graph's groups give them
    st = graph.trace
    assert st is not None  # shrunk_fn_from_graph, the only caller's caller, checks this
    removed = {}
    for g in plan.groups:
        gid = g["id"]
        if gid >= len(graph.groups):
            raise ValueError(f"plan group {gid} ({g['name']}) does not exist in the traced model")
        grp = graph.groups[gid]
        if grp.size != g["size"] or grp.name != g["name"]:
            raise ValueError(
                f"plan group {gid} is {g['name']} with {g['size']} units, but the traced model's "
                f"group {gid} is {grp.name} with {grp.size} units: plan made for another model"
            )
        removed[st.atoms[gid]] = np.setdiff1d(np.arange(grp.size), np.asarray(g["kept"], dtype=np.int64))
    for path, shape in graph.leaf_shapes.items():
        if tuple(plan.leaf_shapes.get(path, ())) != tuple(shape):
            raise ValueError(
                f"plan expects leaf {path!r} with shape {plan.leaf_shapes.get(path)}, "
                f"the traced model has {tuple(shape)}"
            )
    return removed


class _Evaluator:
    def __init__(self, graph: DependencyGraph, plan: PrunePlan):
        st = graph.trace
        assert st is not None  # checked by shrunk_fn_from_graph (or a fresh trace_groups graph)
        self.w = st.walker
        self.res = st.resolved
        self.closed = st.closed
        self.n_params = len(graph.leaf_shapes)
        self.removed = _check_match(graph, plan)
        self._sizes: dict[int, int] = {}  # new length of each axis class (depends on the plan only)

    # -- sizes
    def new_size(self, node: int) -> int:
        uf = self.w.uf
        r = uf.find(node)
        if r in self._sizes:
            return self._sizes[r]
        if r in self.res.derived:
            kind, parts = self.res.derived[r]
            sizes = [self.new_size(p) for p in parts]
            out = int(np.prod(sizes)) if kind == "product" else int(sum(sizes))
        else:
            rem = self.removed.get(r)
            out = uf.size[r] - (0 if rem is None else len(rem))
        self._sizes[r] = out
        return out

    def shape(self, base: int, ndim: int) -> tuple[int, ...]:
        return tuple(self.new_size(base + i) for i in range(ndim))

    # -- evaluation
    def __call__(self, flat_params, dyn_args):
        # Inputs always have the traced shapes (a new shape signature is re-traced), so the new size of
        # every axis class depends on the plan alone: one size cache per evaluator.
        jaxpr = self.closed.jaxpr
        return self.eval(jaxpr, self.closed.consts, list(flat_params) + list(dyn_args), ())

    def eval(self, jaxpr, consts, args, ctx):
        env = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        for i, eqn in enumerate(jaxpr.eqns):
            key = ctx + (i,)
            invals = [read(v) for v in eqn.invars]
            outs_b = self.w.eqn_outs[key]
            new_shapes = [self.shape(b, len(axis_rules._shape(v))) for b, v in zip(outs_b, eqn.outvars)]
            name = eqn.primitive.name
            p = eqn.params
            if name in axis_rules.CALLS and axis_rules.CALLS[name]:
                sub = p[axis_rules.CALLS[name]]
                closed = sub if isinstance(sub, jcore.ClosedJaxpr) else None
                inner = closed.jaxpr if closed is not None else sub
                outs = self.eval(inner, closed.consts if closed is not None else (), invals, key)
            elif name == "scan":
                outs = self._scan(eqn, invals, key)
            elif name == "cond":
                branches = [
                    (lambda *ops, _b=br, _k=key + ("b", bi): self.eval(_b.jaxpr, _b.consts, list(ops), _k))
                    for bi, br in enumerate(p["branches"])
                ]
                outs = lax.switch(invals[0], branches, *invals[1:])
            else:
                norm = self.w.eqn_extra.get(key, {}).get("normalizer")
                if norm is not None:
                    invals = self._rescale_normalizer(norm, eqn, invals)
                params = self._rewrite(eqn, key, new_shapes, invals)
                outs = eqn.primitive.bind(*invals, **params)
                if not eqn.primitive.multiple_results:
                    outs = [outs]
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _rescale_normalizer(self, norm, eqn, invals):
        """``sum / N`` (or ``sum * 1/N``) over pruned axes: divide by the kept count instead."""
        pos, nodes, op = norm
        n_new = float(np.prod([self.new_size(x) for x in nodes]))
        n_old = float(np.prod([self.w.uf.size[x] for x in nodes]))
        if n_new == n_old:
            return invals
        dtype = np.asarray(eqn.invars[pos].val).dtype
        invals = list(invals)
        if op == "count":  # ``N - ddof``: the literal N becomes the kept count
            invals[pos] = np.asarray(n_new, dtype=dtype)
        else:
            invals[pos] = np.asarray(n_new if op == "div" else 1.0 / n_new, dtype=dtype)
        return invals

    def _scan(self, eqn, invals, key):
        p = eqn.params
        nc, ncarry = p["num_consts"], p["num_carry"]
        closed = p["jaxpr"]
        consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]

        def body(carry, x):
            outs = self.eval(closed.jaxpr, closed.consts, list(consts) + list(carry) + list(x), key)
            return outs[:ncarry], outs[ncarry:]

        carry, ys = lax.scan(
            body, list(init), list(xs), length=p["length"], reverse=p["reverse"], unroll=p.get("unroll", 1)
        )
        return list(carry) + list(ys)

    def _rewrite(self, eqn, key, new_shapes, invals) -> dict:
        name = eqn.primitive.name
        p = dict(eqn.params)
        old_out = [axis_rules._shape(v) for v in eqn.outvars]
        if new_shapes == old_out and all(np.shape(x) == axis_rules._shape(v) for x, v in zip(invals, eqn.invars)):
            return p
        extra = self.w.eqn_extra.get(key, {})
        size = self.new_size
        if name == "reshape":
            p["new_sizes"] = new_shapes[0]
        elif name == "split":
            p["sizes"] = tuple(s[p["axis"]] for s in new_shapes)
        elif name == "slice":
            start, limit = list(p["start_indices"]), list(p["limit_indices"])
            for ax, n in enumerate(np.shape(invals[0])):
                if ax in extra.get("pieces", {}):
                    lo, _ = extra["pieces"][ax]
                    start[ax] = size(lo)
                    limit[ax] = start[ax] + new_shapes[0][ax]
                elif start[ax] == 0 and limit[ax] == axis_rules._shape(eqn.invars[0])[ax]:
                    limit[ax] = n
            p["start_indices"], p["limit_indices"] = tuple(start), tuple(limit)
        elif name == "pad":
            cfg = list(p["padding_config"])
            for ax, (lo, hi) in extra.get("pieces", {}).items():
                cfg[ax] = (size(lo), size(hi), 0)
            p["padding_config"] = tuple(cfg)
        elif name == "conv_general_dilated" and "groups_node" in extra:
            p["feature_group_count"] = size(extra["groups_node"])
        elif name in ("dynamic_slice",):
            p["slice_sizes"] = new_shapes[0]
        elif name == "gather":
            old_in = axis_rules._shape(eqn.invars[0])
            p["slice_sizes"] = tuple(
                np.shape(invals[0])[ax] if s == old_in[ax] and s != 1 else s for ax, s in enumerate(p["slice_sizes"])
            )
        if "shape" in p and p["shape"] is not None and tuple(p["shape"]) == old_out[0]:
            p["shape"] = new_shapes[0]
        return p


def _signature(args, kwargs) -> tuple:
    """Hashable key of a call: argument structure, array shapes/dtypes, static leaves."""
    leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
    sig: list[tuple[Any, ...]] = []
    for x in leaves:
        if isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
            sig.append(("array", tuple(np.shape(x)), str(np.dtype(x.dtype))))
        else:
            try:
                hash(x)
                sig.append(("static", x))
            except TypeError:
                sig.append(("static-id", id(x)))
    return (tree, tuple(sig))


def _member_key(g) -> frozenset:
    return frozenset((m.path, m.axis, m.index_map.tobytes(), m.index_map.shape) for m in g.members)


def _rebase_plan(old: DependencyGraph, new: DependencyGraph, plan: PrunePlan) -> PrunePlan:
    """The plan with group ids of ``new`` (a re-trace at other input shapes); raises if a group changed.

    Every pruned group must exist in ``new`` with exactly the same members and
    index maps, and be prunable there; groups the plan keeps whole may differ
    (e.g. a position-embedding slice that covers the whole table at one input size).
    """
    by_members: dict[frozenset, Group] = {}
    for grp in new.groups:
        by_members.setdefault(_member_key(grp), grp)
    groups = []
    for pg in plan.groups:
        g = by_members.get(_member_key(old.groups[pg["id"]]))
        if g is None:
            raise ValueError(f"group {pg['name']} ({pg['size']} units) couples other axes at these input shapes")
        if not g.prunable:
            raise ValueError(f"group {pg['name']} is pruned by the plan but unprunable at these shapes: {g.reason}")
        groups.append(dict(pg, id=g.id))
    return dataclasses.replace(plan, groups=tuple(groups))


def shrunk_fn_from_graph(graph: DependencyGraph, plan: PrunePlan) -> Callable[..., Any]:
    """Like :func:`make_shrunk_fn`, for an already traced graph.

    The function runs at any input shape when the graph was made by
    :func:`trace_groups` (it keeps the traced function for re-tracing).
    """
    st = graph.trace
    if st is None:
        raise ValueError("graph has no trace state (was it built by trace_groups?)")
    paths = list(graph.leaf_shapes)
    cache: dict[tuple, tuple[_Evaluator, Any]] = {}
    base_sig = _signature(jax.tree_util.tree_unflatten(st.arg_tree, st.arg_leaves), st.kwargs)
    cache[base_sig] = (_Evaluator(graph, plan), st)

    def evaluator_for(shrunk_params, args, kwargs):
        kwargs = dict(st.kwargs, **kwargs)
        sig = _signature(args, kwargs)
        hit = cache.get(sig)
        if hit is not None:
            return hit
        if st.apply_fn is None:
            raise ValueError(
                "this graph cannot be re-traced at new input shapes (no traced function kept); "
                "trace_groups at the shapes you call it with"
            )
        abstract = map_with_path(lambda p, x: jax.ShapeDtypeStruct(tuple(plan.leaf_shapes[p]), x.dtype), shrunk_params)
        try:
            new = trace_groups(st.apply_fn, abstract, *args, **kwargs, **st.options)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            shapes = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(args)]
            raise ValueError(
                f"shrunk fn: re-tracing the original function at input shapes {shapes} failed: {type(e).__name__}: {e}"
            ) from e
        try:
            new_plan = _rebase_plan(graph, new, plan)
        except ValueError as e:
            shapes = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(args)]
            raise ValueError(
                f"shrunk fn: at input shapes {shapes} the model's coupled groups differ from the "
                f"traced ones ({e}); the plan does not apply at these shapes"
            ) from None
        cache[sig] = (_Evaluator(new, new_plan), new.trace)
        return cache[sig]

    def fn(shrunk_params, *args, **kwargs):
        leaves = leaves_with_paths(shrunk_params)
        if [p for p, _ in leaves] != paths:
            raise ValueError(
                f"shrunk params do not have the traced params' leaves: got {[p for p, _ in leaves][:5]}"
                f"..., expected {paths[:5]}..."
            )
        for path, x in leaves:
            want = plan.shapes[path][1] if path in plan.shapes else plan.leaf_shapes[path]
            if tuple(np.shape(x)) != tuple(want):
                raise ValueError(f"shrunk params leaf {path!r} has shape {np.shape(x)}, the plan says {tuple(want)}")
        ev, tst = evaluator_for(shrunk_params, args, kwargs)
        flat_args, tree = jax.tree_util.tree_flatten(args)
        if tree != tst.arg_tree:
            raise ValueError(f"arguments must have the structure of the example arguments: {tst.arg_tree}, got {tree}")
        dyn = [x for x, a in zip(flat_args, tst.is_array) if a]
        outs = ev([x for _, x in leaves], dyn)
        return jax.tree_util.tree_unflatten(tst.out_tree, outs)

    return fn


def make_shrunk_fn(
    apply_fn: Callable[..., Any],
    params: Any,
    plan: PrunePlan,
    *example_args: Any,
    through_norms: bool | None = None,
    **example_kwargs: Any,
) -> Callable[..., Any]:
    """A pure ``fn(shrunk_params, *args)`` that runs ``apply_fn`` pruned according to ``plan``.

    Works for any model :func:`trace_groups` can trace (Linen, NNX, Haiku,
    plain functions); arguments as for :func:`trace_groups`. The result is
    jit-able and differentiable, and runs at any input shape the original
    accepts (a new shape signature re-traces ``apply_fn`` once, see the module
    docstring). ``through_norms`` defaults to what the plan was made with.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxprune as jp
      >>> f = lambda p, x: jnp.tanh(x @ p['a']) @ p['b']
      >>> p = {'a': jnp.ones((2, 8)), 'b': jnp.ones((8, 3))}
      >>> plan = jp.make_plan(p, jp.trace_groups(f, p, jnp.ones((1, 2))), 0.5)
      >>> small_f = jp.make_shrunk_fn(f, p, plan, jnp.ones((1, 2)))
      >>> small_f(jp.shrink(p, plan), jnp.ones((5, 2))).shape   # another batch size
      (5, 3)
    """
    check_plan(params, plan)
    if through_norms is None:
        through_norms = bool(plan.meta.get("through_norms"))
    graph = trace_groups(apply_fn, params, *example_args, through_norms=through_norms, **example_kwargs)
    return shrunk_fn_from_graph(graph, plan)


def shrunk_flops(params: Any, graph: DependencyGraph, plan: PrunePlan) -> float:
    """XLA FLOPs of the traced function run pruned by ``plan`` (compiled from shapes only)."""
    from jaxprune._src.flops import flops

    st = graph.trace
    fn = shrunk_fn_from_graph(graph, plan)
    assert st is not None  # shrunk_fn_from_graph raised otherwise
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    shapes = _reshape_tree(shapes, plan)
    args = jax.tree_util.tree_unflatten(
        st.arg_tree,
        [jax.ShapeDtypeStruct(np.shape(x), x.dtype) if a else x for x, a in zip(st.arg_leaves, st.is_array)],
    )
    return flops(fn, shapes, *args)


def _reshape_tree(shapes, plan: PrunePlan):
    return map_with_path(
        lambda path, s: jax.ShapeDtypeStruct(plan.shapes[path][1], s.dtype) if path in plan.shapes else s, shapes
    )
