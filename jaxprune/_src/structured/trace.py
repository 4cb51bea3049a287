"""Coupled axis groups of a model, read from the jaxpr of its forward pass.

``trace_groups(apply_fn, params, x)`` traces ``apply_fn(params, x)`` with
:func:`jax.make_jaxpr` and follows every axis of every value through the
equations with a union-find over ``(value, axis)`` nodes: an elementwise op or
a residual ``add`` makes its operands' axes the same channels, a conv couples
its kernel's input axis with the input's feature axis, a reshape that splits
``D`` into ``(heads, head_dim)`` makes ``D`` the *product* of two classes, a
concatenation makes its output axis the *concatenation* of its inputs' axes.

After the walk, every class that cannot be split further is an *atomic* class;
one whose indices reach a parameter leaf is a :class:`Group`. A group's unit
``u`` owns, in each member leaf, the indices ``member.index_map[u]`` along
``member.axis`` (one index for a channel, a ``head_dim`` block for a head, the
strided positions of a channel in a flattened feature map).

Axes of the model inputs and outputs, of constants captured by the function,
and every axis touched by an op the tracer cannot follow are *unprunable*, and
so is every group that reaches them; :attr:`Group.reason` says why.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.extend import core as jcore

from jaxprune._src.structured import axis_rules
from jaxprune._src.structured.groups import DependencyGraph, Group, Member, TraceState
from jaxprune._src.structured.union_find import UnionFind
from jaxprune._src.tree import leaves_with_paths

__all__ = ["Member", "Group", "DependencyGraph", "trace_groups"]


# ---------------------------------------------------------------------------------------- walker
class _Walker:
    """Walks a jaxpr, recording unions, derivations and marks over axis nodes."""

    def __init__(self, through_norms: bool = False) -> None:
        self.through_norms = through_norms
        self.sums: dict[int, list[int]] = {}  # var base -> axis nodes it is a sum over (through_norms)
        self.counts: dict[Any, tuple] = {}  # scalar jaxpr var -> (eqn key, literal pos, value, other operand)
        self.uf = UnionFind()
        self.derivs: list[tuple[str, int, list[int]]] = []  # (kind, whole node, part nodes)
        self.param_base: dict[int, int] = {}  # node base -> param leaf index
        self.roots: set[int] = set()
        self.alias: dict[int, int] = {}  # axis node of a param view (cast, transpose, scan slice) -> the param's
        self.eqn_outs: dict[tuple, list[int]] = {}
        self.eqn_extra: dict[tuple, dict] = {}

    # -- nodes
    def new_var(self, shape) -> int:
        return self.uf.new(shape)

    def new_node(self, size: int) -> int:
        return self.uf.new([size])

    def union(self, a: int, b: int) -> None:
        self.uf.union(a, b)

    def product(self, whole: int, parts: list[int]) -> None:
        self.derivs.append(("product", whole, parts))

    def concat(self, whole: int, parts: list[int]) -> None:
        self.derivs.append(("concat", whole, parts))

    def mark(self, node: int, reason: str) -> None:
        self.uf.mark(node, reason)

    def mark_var(self, base: int, shape, reason: str) -> None:
        for ax in range(len(shape)):
            self.uf.mark(base + ax, reason)

    def mark_all(self, eqn, ins, outs, reason: str) -> None:
        for b, v in list(zip(ins, eqn.invars)) + list(zip(outs, eqn.outvars)):
            if b is not None:
                self.mark_var(b, axis_rules._shape(v), reason)

    def flag(self, node: int, name: str) -> None:
        self.uf.flag(node, name)

    def root(self, node: int) -> None:
        while node in self.alias:  # a layer producing units along a view's axis: the param's axis is the root
            node = self.alias[node]
        self.roots.add(node)

    def view_of_param(self, out: int, src: int, axes: Sequence[int]) -> None:
        """``out`` is a view of the param (or param view) at ``src``: its axis ``j`` is the source's ``axes[j]``."""
        self.param_base[out] = self.param_base[src]
        for j, a in enumerate(axes):
            self.alias[out + j] = src + a

    def is_param(self, base: int | None) -> bool:
        return base is not None and base in self.param_base

    def extra(self, key, **kw) -> None:
        self.eqn_extra.setdefault(key, {}).update(kw)

    # -- walk
    def read(self, env: dict, v) -> int | None:
        if isinstance(v, jcore.Literal):
            return None
        return env[v]

    def walk(self, jaxpr: jcore.Jaxpr, env: dict, ctx: tuple) -> None:
        for i, eqn in enumerate(jaxpr.eqns):
            key = ctx + (i,)
            ins = [self.read(env, v) for v in eqn.invars]
            outs = [self.new_var(axis_rules._shape(v)) for v in eqn.outvars]
            self.eqn_outs[key] = outs
            for v, b in zip(eqn.outvars, outs):
                env[v] = b
            name = eqn.primitive.name
            rule = axis_rules.RULES.get(name)
            if rule is not None:
                rule(self, eqn, ins, outs, key)
                if self.sums:
                    axis_rules.track_normalizer(self, eqn, ins, outs, key)
                if name in ("convert_element_type", "copy", "copy_p", "transpose") and ins[0] in self.param_base:
                    ndim = len(axis_rules._shape(eqn.outvars[0]))
                    perm = eqn.params["permutation"] if name == "transpose" else range(ndim)
                    self.view_of_param(outs[0], ins[0], perm)
            elif (call_param := axis_rules.CALLS.get(name)) and name in _CALL_OK:
                self.call(eqn.params[call_param], eqn, ins, outs, key)
            elif name == "scan":
                self.scan(eqn, ins, outs, key)
            elif name == "cond":
                for bi, br in enumerate(eqn.params["branches"]):
                    self.call(br, eqn, ins[1:], outs, key + ("b", bi), invars=eqn.invars[1:])
                if ins[0] is not None:
                    self.mark_var(ins[0], axis_rules._shape(eqn.invars[0]), "cond predicate")
            else:
                self.mark_all(eqn, ins, outs, f"unsupported op `{name}`")

    def call(self, sub, eqn, ins, outs, key, invars=None) -> None:
        invars = eqn.invars if invars is None else invars
        closed = sub if isinstance(sub, jcore.ClosedJaxpr) else None
        jaxpr = closed.jaxpr if closed is not None else sub
        env = {}
        for v, c in zip(jaxpr.constvars, closed.consts if closed is not None else ()):
            env[v] = self.new_var(np.shape(c))
            self.mark_var(env[v], np.shape(c), "constant captured inside the function")
        for inner, b, outer in zip(jaxpr.invars, ins, invars):
            if b is None:
                b = self.new_var(axis_rules._shape(inner))
            env[inner] = b
        self.walk(jaxpr, env, key)
        self._bind_outs(jaxpr, env, outs)

    def _bind_outs(self, jaxpr, env, outs, offset=0) -> None:
        for v, o in zip(jaxpr.outvars[offset:], outs):
            b = self.read(env, v)
            if b is None:
                continue
            for ax in range(len(axis_rules._shape(v))):
                self.union(b + ax, o + ax)

    def scan(self, eqn, ins, outs, key) -> None:
        p = eqn.params
        closed = p["jaxpr"]
        jaxpr = closed.jaxpr
        nc, ncarry = p["num_consts"], p["num_carry"]
        env = {}
        for v, c in zip(jaxpr.constvars, closed.consts):
            env[v] = self.new_var(np.shape(c))
            self.mark_var(env[v], np.shape(c), "constant captured inside the function")
        for k, (inner, b) in enumerate(zip(jaxpr.invars, ins)):
            shape = axis_rules._shape(inner)
            if k < nc + ncarry:
                env[inner] = b if b is not None else self.new_var(shape)
            else:  # xs: the scanned axis is stripped
                nb = self.new_var(shape)
                if b is not None:
                    self.mark(b, "scanned axis of lax.scan")
                    for ax in range(len(shape)):
                        self.union(b + ax + 1, nb + ax)
                    if b in self.param_base:  # one layer's slice of a stacked leaf is a parameter too
                        self.view_of_param(nb, b, range(1, len(shape) + 1))
                env[inner] = nb
        self.walk(jaxpr, env, key)
        for k, v in enumerate(jaxpr.outvars):
            b = self.read(env, v)
            if b is None:
                continue
            shape = axis_rules._shape(v)
            for ax in range(len(shape)):
                if k < ncarry:
                    self.union(b + ax, outs[k] + ax)
                    init = ins[nc + k]
                    if init is not None:
                        self.union(b + ax, init + ax)
                else:
                    self.union(b + ax, outs[k] + ax + 1)
        for k in range(ncarry, len(outs)):
            self.mark(outs[k], "scanned axis of lax.scan")


_CALL_OK = {k for k, v in axis_rules.CALLS.items() if v}


# ------------------------------------------------------------------------------------ resolution
class _Resolved:
    """Atomic classes and the expansion of every class into atomic index maps."""

    def __init__(self, w: _Walker):
        self.w = w
        uf = w.uf
        self.derived: dict[int, tuple[str, list[int]]] = {}
        changed = True
        while changed:
            changed = False
            self.derived = {}
            for kind, whole, parts in list(w.derivs):
                rw = uf.find(whole)
                rparts = [uf.find(p) for p in parts]
                if kind == "product":
                    rparts = [p for p in rparts if uf.size[p] != 1]
                else:
                    rparts = [p for p in rparts if uf.size[p] != 0]
                if len(rparts) == 1:
                    if rparts[0] != rw:
                        uf.union(rw, rparts[0])
                        changed = True
                    continue
                if not rparts:
                    continue
                if rw in rparts:
                    uf.mark(rw, f"axis is a {kind} of itself")
                    continue
                prev = self.derived.get(rw)
                if prev is None:
                    self.derived[rw] = (kind, rparts)
                elif prev != (kind, rparts):
                    pk, pp = prev
                    if pk == kind and [uf.size[x] for x in pp] == [uf.size[x] for x in rparts]:
                        for a, b in zip(pp, rparts):
                            if uf.find(a) != uf.find(b):
                                uf.union(a, b)
                                changed = True
                    elif pk == kind == "concat":
                        self._refine(rw)
                        changed = True
                        break
                    elif {pk, kind} == {"concat", "product"} and self._split_product(rw):
                        changed = True
                        break
                    else:
                        why = (
                            f"axis split in two incompatible ways ({pk} {[uf.size[x] for x in pp]} "
                            f"vs {kind} {[uf.size[x] for x in rparts]})"
                        )
                        for x in [rw] + list(pp) + rparts:
                            uf.mark(x, why)
        self._memo: dict[int, dict[int, np.ndarray]] = {}
        self._active: set[int] = set()

    def _refine(self, rw: int) -> None:
        """Several concatenations of one axis with different boundaries: cut it at all boundaries."""
        w, uf = self.w, self.w.uf
        mine = [d for d in w.derivs if d[0] == "concat" and uf.find(d[1]) == rw]
        partlists = [[p for p in d[2] if uf.size[uf.find(p)] != 0] for d in mine]
        bounds = sorted({0}.union(*(np.cumsum([uf.size[uf.find(x)] for x in parts]).tolist() for parts in partlists)))
        segs = [w.new_node(hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]
        new = [("concat", rw, segs)]
        for parts in partlists:
            start = 0
            for p in parts:
                end = start + uf.size[uf.find(p)]
                new.append(("concat", p, segs[bounds.index(start) : bounds.index(end)]))
                start = end
        w.derivs = [d for d in w.derivs if not (d[0] == "concat" and uf.find(d[1]) == rw)] + new

    def _split_product(self, rw: int) -> bool:
        """An axis that is both a concatenation and a ``(outer, inner...)`` product, e.g. GroupNorm's group
        reshape after a concat: if every concatenated part is a whole number of outer units, each part
        becomes ``product(outer_i, inner...)`` and ``outer = concat(outer_i)``. False if they do not align."""
        w, uf = self.w, self.w.uf
        mine = [d for d in w.derivs if uf.find(d[1]) == rw]
        concat = next(d for d in mine if d[0] == "concat")
        product = next(d for d in mine if d[0] == "product")
        cparts = [p for p in concat[2] if uf.size[uf.find(p)] != 0]
        pparts = [p for p in product[2] if uf.size[uf.find(p)] != 1]
        inner = int(np.prod([uf.size[uf.find(p)] for p in pparts[1:]]))
        sizes = [uf.size[uf.find(p)] for p in cparts]
        if len(pparts) < 2 or inner <= 1 or any(s % inner for s in sizes):
            return False
        outers = [w.new_node(s // inner) for s in sizes]
        new = [("concat", pparts[0], outers)]
        new += [("product", c, [o] + pparts[1:]) for c, o in zip(cparts, outers)]
        w.derivs = [d for d in w.derivs if not (d[0] == "product" and uf.find(d[1]) == rw)] + new
        return True

    def expand(self, node: int) -> dict[int, np.ndarray]:
        """``{atomic root: index_map (n_atomic, k)}`` of indices into ``node``'s axis."""
        uf = self.w.uf
        r = uf.find(node)
        if r in self._memo:
            return self._memo[r]
        n = uf.size[r]
        d = self.derived.get(r)
        if d is None or r in self._active:
            if r in self._active:
                uf.mark(r, "cyclic reshape/concatenate relation")
            out: dict[int, np.ndarray] = {r: np.arange(n, dtype=np.int64)[:, None]}
            self._memo[r] = out
            return out
        self._active.add(r)
        kind, parts = d
        sizes = [uf.size[uf.find(p)] for p in parts]
        out = {}
        if kind == "product":
            grid = np.arange(n, dtype=np.int64).reshape(sizes)
            for j, p in enumerate(parts):
                rows = np.moveaxis(grid, j, 0).reshape(sizes[j], -1)
                for a, imap in self.expand(p).items():
                    lifted = rows[imap].reshape(imap.shape[0], -1)
                    out[a] = np.concatenate([out[a], lifted], axis=1) if a in out else lifted
        else:
            offset = 0
            for p, s in zip(parts, sizes):
                for a, imap in self.expand(p).items():
                    lifted = imap + offset
                    out[a] = np.concatenate([out[a], lifted], axis=1) if a in out else lifted
                offset += s
        self._active.discard(r)
        self._memo[r] = out
        return out

    def propagate_marks(self) -> None:
        uf = self.w.uf
        for r in list(self.derived):
            reasons = uf.reasons_of(r)
            inherited = uf.flags_of(r) & {"conv", "dense", "norm"}
            for a in self.expand(r):
                for reason in reasons:
                    uf.mark(a, reason)
                for f in inherited:
                    uf.flag(a, f)


def _split_static(args):
    leaves, treedef = jax.tree_util.tree_flatten(args)
    is_arr = [isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)) for x in leaves]
    return leaves, treedef, is_arr


def _kind(flags: set[str]) -> str:
    free = sum(f.startswith("act_free:") for f in flags)  # activation x activation products it is free in
    if "act_batch" in flags or (free >= 2 and "act_contract" not in flags):
        return "heads"  # a batch axis of attention, or a query-group axis (GQA: free in QK^T and in AV)
    if "act_contract" in flags or (free and "conv" not in flags):
        return "head_dim"
    if "conv" in flags:
        return "channels"
    return "units"


def trace_groups(
    apply_fn: Callable[..., Any],
    params: Any,
    *example_args: Any,
    prunable: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    through_norms: bool = False,
    **example_kwargs: Any,
) -> DependencyGraph:
    """Finds the groups of coupled parameter axes of ``apply_fn(params, *example_args)``.

    Only ``params`` (any pytree: Linen variables with ``batch_stats``, an
    ``nnx.State``, nested dicts) is analysed; array leaves of ``example_args``
    are the model inputs (their axes are never pruned), other arguments and
    ``example_kwargs`` are passed through unchanged. Trace the model in eval
    mode (BatchNorm with running statistics, no dropout) and return only the
    model outputs: every axis of the outputs is kept.

    Args:
      apply_fn: ``apply_fn(params, *example_args, **example_kwargs)``.
      params: the parameter pytree.
      prunable: optional regexes; a group is prunable only if one of its root
        members' paths matches one of them.
      ignore: regexes; a group with a root member matching one is kept whole
        (the layer's outputs stay; its inputs may still be pruned).
      through_norms: also make prunable the channels that pass through a
        reduction over the channel axis -- LayerNorm / RMSNorm / GroupNorm
        statistics -- such as a transformer's residual (embedding) width. The
        shrunk model then computes every such reduction over the *kept*
        channels only (a mean divides by the kept count), which is not what
        the masked dense model computes: these groups are marked
        ``through_norm`` and plans pruning them record their names in
        ``plan.meta['through_norms']``. Default ``False``: every plan is exact
        (shrunk == masked dense).

    Example:
      >>> import jax.numpy as jnp
      >>> p = {'a': jnp.ones((3, 8)), 'b': jnp.ones((8, 2))}
      >>> g = trace_groups(lambda p, x: jnp.tanh(x @ p['a']) @ p['b'], p, jnp.ones((1, 3)))
      >>> [(grp.size, grp.prunable) for grp in g if grp.prunable]
      [(8, True)]
    """
    leaves = leaves_with_paths(params)
    paths = [p for p, _ in leaves]
    a_leaves, a_tree, is_arr = _split_static(example_args)
    dyn = [x for x, a in zip(a_leaves, is_arr) if a]

    def fn(p, *dyn_args):
        it = iter(dyn_args)
        full = [next(it) if a else x for x, a in zip(a_leaves, is_arr)]
        return apply_fn(p, *jax.tree_util.tree_unflatten(a_tree, full), **example_kwargs)

    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *dyn)
    out_tree = jax.tree_util.tree_structure(out_shape)
    options = dict(prunable=prunable, ignore=ignore, through_norms=through_norms)
    return _build_graph(
        closed,
        paths,
        [np.shape(x) for _, x in leaves],
        options,
        dict(
            arg_leaves=a_leaves,
            arg_tree=a_tree,
            is_array=is_arr,
            out_tree=out_tree,
            apply_fn=apply_fn,
            kwargs=dict(example_kwargs),
            options=options,
        ),
    )


def _build_graph(closed, paths, shapes, options, state_fields) -> DependencyGraph:
    prunable, ignore = options["prunable"], options["ignore"]
    jaxpr = closed.jaxpr
    w = _Walker(through_norms=bool(options["through_norms"]))
    env = {}
    n_params = len(paths)
    for v, c in zip(jaxpr.constvars, closed.consts):
        env[v] = w.new_var(np.shape(c))
        w.mark_var(env[v], np.shape(c), "constant captured by the function")
    for i, v in enumerate(jaxpr.invars):
        shape = axis_rules._shape(v)
        env[v] = w.new_var(shape)
        if i < n_params:
            w.param_base[env[v]] = i
        else:
            w.mark_var(env[v], shape, "axis of a model input")
    w.walk(jaxpr, env, ())
    used = {v for eqn in jaxpr.eqns for v in eqn.invars if not isinstance(v, jcore.Literal)}
    used.update(v for v in jaxpr.outvars if not isinstance(v, jcore.Literal))
    for v in jaxpr.invars[:n_params]:
        if v not in used:
            w.mark_var(env[v], axis_rules._shape(v), "leaf not used by the traced function")
    for v in jaxpr.outvars:
        b = w.read(env, v)
        if b is not None:
            w.mark_var(b, axis_rules._shape(v), "axis of a model output")
    res = _Resolved(w)
    res.propagate_marks()
    uf = w.uf

    members: dict[int, list[Member]] = {}
    for i, v in enumerate(jaxpr.invars[:n_params]):
        base = env[v]
        for ax, n in enumerate(shapes[i]):
            if n <= 1:
                continue
            role = "root" if base + ax in w.roots else "dep"
            for a, imap in res.expand(base + ax).items():
                if uf.size[a] > 1:
                    members.setdefault(a, []).append(Member(paths[i], ax, imap, role))
    ig = [re.compile(r) for r in (ignore or ())]
    pr = [re.compile(r) for r in prunable] if prunable is not None else None
    groups: list[Group] = []
    atom_of_group: list[int] = []
    for a, mems in members.items():
        reason = uf.reason_of(a)
        roots = [m.path for m in mems if m.role == "root"]
        if reason is None:
            for rx in ig:
                hit = next((p for p in roots if rx.search(p)), None)
                if hit is not None:
                    reason = f"ignored: root {hit!r} matches {rx.pattern!r}"
                    break
        if reason is None and not roots:
            reason = (
                "no layer produces these units: entries not read at the traced input shapes (e.g. the "
                "unused tail of a position-embedding table); pruning them would break other input shapes"
            )
        if reason is None and pr is not None and not any(rx.search(p) for rx in pr for p in roots):
            reason = "no root member matches the `prunable` regexes"
        flags = uf.flags_of(a)
        groups.append(
            Group(
                len(groups), uf.size[a], tuple(mems), reason is None, reason, _kind(flags), through_norm="norm" in flags
            )
        )
        atom_of_group.append(a)
    state = TraceState(walker=w, resolved=res, closed=closed, env=env, atoms=atom_of_group, **state_fields)
    return DependencyGraph(tuple(groups), dict(zip(paths, map(tuple, shapes))), state)
