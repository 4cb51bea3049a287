"""How each jaxpr primitive couples the axes of its inputs and outputs.

Private helper of :mod:`jaxprune._src.structured.trace`. A rule receives the
walker ``w``, the equation, the node bases of its inputs (``None`` for a
literal) and of its outputs, and the equation's key; it calls ``w.union``,
``w.product``, ``w.concat`` and ``w.mark``. A primitive with no rule and no
sub-jaxpr marks every axis it touches unprunable, naming the op.
"""

from __future__ import annotations

import numpy as np

ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type
    copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite
    le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem round
    rsqrt select_n sign sin sinh sqrt square sub tan tanh xor sharding_constraint optimization_barrier
    stop_gradient square logaddexp""".split()
)
REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin".split()
)


def _shape(v):
    return tuple(getattr(v.aval, "shape", ()))


def elementwise(w, eqn, ins, outs, key):
    for o, ov in zip(outs, eqn.outvars):
        oshape = _shape(ov)
        for b, v in zip(ins, eqn.invars):
            if b is None:
                continue
            shape = _shape(v)
            if len(shape) != len(oshape):
                if len(shape) and eqn.primitive.name != "select_n":
                    w.mark_var(b, shape, f"{eqn.primitive.name} with operands of different ranks")
                continue
            for ax, (s, t) in enumerate(zip(shape, oshape)):
                if s == t:
                    w.union(b + ax, o + ax)
    if eqn.primitive.name == "optimization_barrier":
        for b, o, v in zip(ins, outs, eqn.invars):
            if b is not None:
                for ax in range(len(_shape(v))):
                    w.union(b + ax, o + ax)


def reduction(w, eqn, ins, outs, key):
    (b,), (o,) = ins, outs
    if b is None:
        return
    axes = set(int(a) for a in eqn.params["axes"])
    shape = _shape(eqn.invars[0])
    through = w.through_norms and eqn.primitive.name == "reduce_sum"
    if through:
        w.sums[o] = [b + ax for ax in sorted(axes) if shape[ax] > 1]
    j = 0
    for ax in range(len(shape)):
        if ax in axes:
            if shape[ax] > 1 and through:
                w.flag(b + ax, "norm")  # prunable: the shrunk model sums over the kept channels
            elif shape[ax] > 1:
                w.mark(
                    b + ax,
                    f"reduced over by {eqn.primitive.name} (a norm's statistics, a pooling or "
                    f"max over features: shrinking would change the result, "
                    f"trace_groups(..., through_norms=True) allows it for reduce_sum)",
                )
        else:
            w.union(b + ax, o + j)
            j += 1


#: Ops that carry "this value is a sum over these axes" from their input to their output.
SUM_CARRIERS = frozenset("convert_element_type copy copy_p reshape expand_dims broadcast_in_dim squeeze".split())


def track_normalizer(w, eqn, ins, outs, key) -> None:
    """Through-norm mode: remember a mean's divisor (``sum / N`` or ``sum * (1/N)``) so it can be rescaled.

    When ``N`` equals the product of the summed axes' lengths, the shrunk
    model divides by the product of their *kept* lengths instead.
    """
    from jax.extend import core as jcore

    name = eqn.primitive.name
    if name in SUM_CARRIERS:
        if ins and ins[0] in w.sums:
            w.sums[outs[0]] = w.sums[ins[0]]
        return
    if len(eqn.invars) != 2:
        return
    if name in ("add", "sub") and _shape(eqn.outvars[0]) == ():  # e.g. jnp.var's ``N - ddof``
        for pos in (0, 1):
            if isinstance(eqn.invars[pos], jcore.Literal) and np.ndim(eqn.invars[pos].val) == 0:
                w.counts[eqn.outvars[0]] = (key, pos, float(eqn.invars[pos].val), eqn.invars[1 - pos])
        return
    if (
        name == "div"
        and not isinstance(eqn.invars[1], jcore.Literal)
        and eqn.invars[1] in w.counts
        and ins[0] in w.sums
    ):
        ckey, cpos, value, _ = w.counts[eqn.invars[1]]
        nodes = w.sums[ins[0]]
        if nodes and value == float(np.prod([w.uf.size[x] for x in nodes])):
            w.extra(ckey, normalizer=(cpos, tuple(nodes), "count"))
            w.sums[outs[0]] = nodes
        return
    if name not in ("div", "mul"):
        return
    for pos in (1,) if name == "div" else (0, 1):
        lit, other = eqn.invars[pos], ins[1 - pos]
        if not isinstance(lit, jcore.Literal) or other not in w.sums or np.ndim(lit.val) != 0:
            continue
        nodes = w.sums[other]
        n = float(np.prod([w.uf.size[x] for x in nodes])) if nodes else 1.0
        value = float(lit.val)
        want = n if name == "div" else 1.0 / n
        if nodes and abs(value - want) <= 1e-6 * abs(want):
            w.extra(key, normalizer=(pos, tuple(nodes), name))
            w.sums[outs[0]] = nodes
            return


def transpose(w, eqn, ins, outs, key):
    (b,), (o,) = ins, outs
    for i, p in enumerate(eqn.params["permutation"]):
        w.union(b + int(p), o + i)


def squeeze(w, eqn, ins, outs, key):
    (b,), (o,) = ins, outs
    dims = set(int(d) % max(len(_shape(eqn.invars[0])), 1) for d in eqn.params["dimensions"])
    j = 0
    for ax in range(len(_shape(eqn.invars[0]))):
        if ax not in dims:
            w.union(b + ax, o + j)
            j += 1


def expand_dims(w, eqn, ins, outs, key):
    (b,), (o,) = ins, outs
    dims = set(int(d) for d in eqn.params["dimensions"])
    j = 0
    for ax in range(len(_shape(eqn.outvars[0]))):
        if ax not in dims:
            w.union(b + j, o + ax)
            j += 1


def broadcast_in_dim(w, eqn, ins, outs, key):
    b, o = ins[0], outs[0]
    if b is None:
        return
    shape, oshape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    for ax, d in enumerate(eqn.params["broadcast_dimensions"]):
        if shape[ax] == oshape[d]:
            w.union(b + ax, o + int(d))


def reshape_blocks(in_shape, out_shape):
    """Pairs of (input axes, output axes) with equal products, size-1 axes skipped."""
    ins = [i for i, s in enumerate(in_shape) if s != 1]
    outs = [i for i, s in enumerate(out_shape) if s != 1]
    blocks, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        a, pa, i = [ins[i]], in_shape[ins[i]], i + 1
        b, pb, j = [outs[j]], out_shape[outs[j]], j + 1
        while pa != pb:
            if pa < pb and i < len(ins):
                a.append(ins[i])
                pa *= in_shape[ins[i]]
                i += 1  # noqa: E702
            elif pb < pa and j < len(outs):
                b.append(outs[j])
                pb *= out_shape[outs[j]]
                j += 1  # noqa: E702
            else:
                return None
        blocks.append((a, b))
    return blocks


def reshape(w, eqn, ins, outs, key):
    (b,), (o,) = ins[:1], outs
    if b is None:
        return
    shape, oshape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if eqn.params.get("dimensions") not in (None, ()):
        w.mark_all(eqn, ins, outs, "reshape with a dimensions permutation")
        return
    blocks = reshape_blocks(shape, oshape)
    if blocks is None:
        w.mark_all(eqn, ins, outs, "reshape whose axes could not be matched")
        return
    for a, c in blocks:
        if len(a) == 1 and len(c) == 1:
            w.union(b + a[0], o + c[0])
        elif len(a) == 1:
            w.product(b + a[0], [o + x for x in c])
        elif len(c) == 1:
            w.product(o + c[0], [b + x for x in a])
        else:
            for x in a:
                w.mark(b + x, f"reshape {shape} -> {oshape} mixes several axes at once")
            for x in c:
                w.mark(o + x, f"reshape {shape} -> {oshape} mixes several axes at once")


def dot_general(w, eqn, ins, outs, key):
    (lb, rb), (o,) = ins, outs
    (lc, rc), (lbd, rbd) = eqn.params["dimension_numbers"]
    lshape, rshape = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    lp, rp = w.is_param(lb), w.is_param(rb)
    for a, c in zip(lc, rc):
        if lb is not None and rb is not None:
            w.union(lb + a, rb + c)
            if not lp and not rp:
                w.flag(lb + a, "act_contract")
    j = 0
    for a, c in zip(lbd, rbd):
        if lb is not None:
            w.union(lb + a, o + j)
        if rb is not None:
            w.union(rb + c, o + j)
        if not lp and not rp:
            w.flag(o + j, "act_batch")
        j += 1
    for base, shape, cd, bd, isp, other in ((lb, lshape, lc, lbd, lp, rp), (rb, rshape, rc, rbd, rp, lp)):
        for ax in range(len(shape)):
            if ax in cd or ax in bd:
                continue
            if base is not None:
                w.union(base + ax, o + j)
                if isp:
                    w.root(base + ax)
            if isp or other:
                w.flag(o + j, "dense")
            elif base is not None:  # one flag per product: a query-group axis is free in both QK^T and AV
                w.flag(o + j, "act_free:" + "/".join(map(str, key)))
            j += 1


def conv(w, eqn, ins, outs, key):
    (lb, rb), (o,) = ins, outs
    dn = eqn.params["dimension_numbers"]
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    lshape, rshape, oshape = _shape(eqn.invars[0]), _shape(eqn.invars[1]), _shape(eqn.outvars[0])
    if eqn.params.get("batch_group_count", 1) != 1 or lb is None or rb is None:
        w.mark_all(eqn, ins, outs, "conv_general_dilated with batch_group_count > 1")
        return
    w.union(lb + lspec[0], o + ospec[0])
    for ax in lspec[2:]:
        if lshape[ax] > 1:
            w.mark(lb + ax, "spatial axis of a convolution")
    for ax in rspec[2:]:
        if rshape[ax] > 1:
            w.mark(rb + ax, "window axis of a convolution kernel")
    for ax in ospec[2:]:
        if oshape[ax] > 1:
            w.mark(o + ax, "spatial axis of a convolution")
    groups = int(eqn.params.get("feature_group_count", 1))
    w.union(rb + rspec[0], o + ospec[1])
    w.flag(o + ospec[1], "conv")
    if w.is_param(rb):
        w.root(rb + rspec[0])
    if groups == 1:
        w.union(lb + lspec[1], rb + rspec[1])
        return
    g = w.new_node(groups)
    ao = w.new_node(oshape[ospec[1]] // groups)
    w.product(lb + lspec[1], [g, rb + rspec[1]])
    w.product(o + ospec[1], [g, ao])
    w.extra(key, groups_node=g)


def concatenate(w, eqn, ins, outs, key):
    (o,) = outs
    d = int(eqn.params["dimension"])
    parts = []
    for b, v in zip(ins, eqn.invars):
        if b is None:
            b = w.new_var(_shape(v))
            w.mark_var(b, _shape(v), "concatenated with a literal")
        for ax in range(len(_shape(v))):
            if ax != d:
                w.union(b + ax, o + ax)
        parts.append(b + d)
    w.concat(o + d, parts)


def split(w, eqn, ins, outs, key):
    (b,) = ins
    d = int(eqn.params["axis"])
    for o, v in zip(outs, eqn.outvars):
        for ax in range(len(_shape(v))):
            if ax != d:
                w.union(b + ax, o + ax)
    w.concat(b + d, [o + d for o in outs])


def slice_(w, eqn, ins, outs, key):
    (b,), (o,) = ins, outs
    shape = _shape(eqn.invars[0])
    start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params.get("strides") or (1,) * len(shape)
    pieces = {}
    for ax, n in enumerate(shape):
        s, e, st = int(start[ax]), int(limit[ax]), int(strides[ax])
        if s == 0 and e == n and st == 1:
            w.union(b + ax, o + ax)
        elif st != 1:
            w.mark(b + ax, f"strided slice (stride {st})")
            w.mark(o + ax, f"strided slice (stride {st})")
        else:
            lo, hi = w.new_node(s), w.new_node(n - e)
            w.concat(b + ax, [lo, o + ax, hi])
            pieces[ax] = (lo, hi)
    w.extra(key, pieces=pieces)


def pad(w, eqn, ins, outs, key):
    (b, _), (o,) = ins, outs
    pieces = {}
    for ax, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        if (lo, hi, interior) == (0, 0, 0):
            w.union(b + ax, o + ax)
        elif interior != 0 or lo < 0 or hi < 0:
            w.mark(b + ax, "pad with interior or negative padding")
            w.mark(o + ax, "pad with interior or negative padding")
        else:
            nlo, nhi = w.new_node(lo), w.new_node(hi)
            w.concat(o + ax, [nlo, b + ax, nhi])
            pieces[ax] = (nlo, nhi)
    w.extra(key, pieces=pieces)


def reduce_window(w, eqn, ins, outs, key):
    b, o = ins[0], outs[0]
    p = eqn.params
    shape = _shape(eqn.invars[0])
    pads = p.get("padding") or ((0, 0),) * len(shape)
    for ax in range(len(shape)):
        trivial = (
            p["window_dimensions"][ax] == 1
            and p["window_strides"][ax] == 1
            and tuple(pads[ax]) == (0, 0)
            and all(d == 1 for d in (p.get("base_dilation") or (1,) * len(shape))[ax : ax + 1])
            and all(d == 1 for d in (p.get("window_dilation") or (1,) * len(shape))[ax : ax + 1])
        )
        if trivial:
            w.union(b + ax, o + ax)
        elif shape[ax] > 1:
            w.mark(b + ax, f"pooled axis of {eqn.primitive.name}")
            w.mark(o + ax, f"pooled axis of {eqn.primitive.name}")


def dynamic_slice(w, eqn, ins, outs, key):
    b, o = ins[0], outs[0]
    shape, oshape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    for ax, (s, t) in enumerate(zip(shape, oshape)):
        if s == t:
            w.union(b + ax, o + ax)
        else:
            w.mark(b + ax, "dynamic_slice along this axis")
            w.mark(o + ax, "dynamic_slice along this axis")


def dynamic_update_slice(w, eqn, ins, outs, key):
    b, u, o = ins[0], ins[1], outs[0]
    shape, ushape = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    for ax, (s, t) in enumerate(zip(shape, ushape)):
        w.union(b + ax, o + ax)
        if u is None:
            continue
        if s == t:
            w.union(u + ax, o + ax)
        else:
            w.mark(b + ax, "dynamic_update_slice along this axis")
            w.mark(u + ax, "dynamic_update_slice along this axis")


def gather(w, eqn, ins, outs, key):
    """Embedding-style gathers: the operand's full, un-indexed axes follow the output's offset dims."""
    b, idx, o = ins[0], ins[1], outs[0]
    dn = eqn.params["dimension_numbers"]
    shape, oshape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    sizes = eqn.params["slice_sizes"]
    skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    offset_axes = [ax for ax in range(len(shape)) if ax not in skipped]
    for ax, od in zip(offset_axes, dn.offset_dims):
        if ax not in dn.start_index_map and sizes[ax] == shape[ax]:
            if b is not None:
                w.union(b + ax, o + int(od))
                if w.is_param(b):
                    w.root(b + ax)
        else:
            if b is not None:
                w.mark(b + ax, "gathered along this axis")
            w.mark(o + int(od), "gathered along this axis")
    for ax in range(len(shape)):
        if ax in skipped and b is not None and shape[ax] > 1:
            w.mark(b + ax, "gathered along this axis (indexed by gather)")
    for od in range(len(oshape)):
        if od not in dn.offset_dims:
            w.mark(o + od, "index axis of a gather")
    if idx is not None:
        w.mark_var(idx, _shape(eqn.invars[1]), "indices of a gather")


def rev(w, eqn, ins, outs, key):
    """``lax.rev``: reversed axes (e.g. a transposed conv's window) are not index-preserving; others are."""
    (b,), (o,) = ins, outs
    if b is None:
        return
    dims = set(int(d) for d in eqn.params["dimensions"])
    for ax, n in enumerate(_shape(eqn.invars[0])):
        if ax not in dims:
            w.union(b + ax, o + ax)
        elif n > 1:
            w.mark(b + ax, "reversed by lax.rev")
            w.mark(o + ax, "reversed by lax.rev")


def iota(w, eqn, ins, outs, key):
    w.mark_var(outs[0], _shape(eqn.outvars[0]), "iota (an index array)")


RULES = {name: elementwise for name in ELEMENTWISE}
RULES.update({name: reduction for name in REDUCTIONS})
RULES.update(
    {
        "transpose": transpose,
        "squeeze": squeeze,
        "expand_dims": expand_dims,
        "broadcast_in_dim": broadcast_in_dim,
        "reshape": reshape,
        "dot_general": dot_general,
        "conv_general_dilated": conv,
        "concatenate": concatenate,
        "split": split,
        "slice": slice_,
        "pad": pad,
        "reduce_window_sum": reduce_window,
        "reduce_window_max": reduce_window,
        "reduce_window_min": reduce_window,
        "reduce_window": reduce_window,
        "dynamic_slice": dynamic_slice,
        "dynamic_update_slice": dynamic_update_slice,
        "gather": gather,
        "iota": iota,
        "rev": rev,
    }
)

# Higher-order primitives whose body is walked inline: name -> param holding the jaxpr.
CALLS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "custom_lin": None,
}
