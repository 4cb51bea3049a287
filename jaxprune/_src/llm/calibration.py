"""Calibration: the input second moment ``X^T X`` of every weight matrix, for any JAX function.

SparseGPT and Wanda need, for each kernel ``W`` that multiplies an activation
``X`` (``Y = X W``), the statistics of ``X`` over calibration data:
``X^T X`` (the layer Hessian of the reconstruction error, up to a factor 2/n)
and the per-feature squared norms ``diag(X^T X)``.

How (jaxpr-level capture, so Linen ``apply``, NNX ``split``/``merge`` calls and
plain functions all work the same):

1. ``fn(params, batch)`` is traced once per batch shape with
   ``jax.make_jaxpr`` with the param leaves as separate inputs.
2. An interpreter re-evaluates that jaxpr on the real values. Each param leaf
   carries a *tag* that follows it through dtype casts, copies, sharding
   constraints and transposes, and into nested calls (``pjit``, ``remat``,
   ``custom_jvp``...). At a ``dot_general`` whose weight operand is tagged and
   whose other operand is not, the other operand ``x`` is the activation: its
   contracted dims (matched to the leaf's contracted dims, in the leaf's axis
   order) are moved last and flattened, and ``x^T x`` and ``sum x^2`` of the
   rows are added to the leaf's running statistics.
3. The instrumented evaluation is ``jax.jit``-ted (once per batch shape) and
   returns only the statistics, so nothing but ``(d_in, d_in)`` matrices leaves
   the device; batches are accumulated one by one (memory is bounded by one
   batch's activations). Inputs keep their sharding; there are no host
   transfers inside.

The kernel's *input axes* are the leaf axes contracted with the activation:
``(0,)`` for a Dense ``(d_in, d_out)`` kernel, ``(0, 1)`` for an attention
output kernel ``(heads, head_dim, d_model)``, ``(1,)`` for a tied embedding
``(vocab, d)`` used as ``x @ E.T``. :func:`kernel_matrix` gives the ``(d_in,
d_out)`` view that the pruning methods work on and :func:`from_matrix` restores
the leaf's shape.

Convolutions: at a ``conv_general_dilated`` whose kernel is tagged, the rows are
the input patches under every output position (im2col,
:func:`~jaxprune._src.llm.conv_rows.conv_rows`), flattened in the kernel leaf's
order of its input axes (``(kh, kw, c_in)`` for a Flax HWIO kernel): the kernel's
input axes are its window and input-feature axes, and ``X^T X`` is
``(kh*kw*c_in)^2``.

Supported: kernels of ``dot_general`` (Dense, DenseGeneral, Einsum, ``x @ W``,
``jnp.einsum``) and of ungrouped convolutions (any layout, stride, padding,
dilation), also inside ``lax.scan`` bodies: a kernel stacked over scanned
layers (``nn.scan``, ``nnx.scan``) gets per-layer statistics
(``LayerStats.layers``; :mod:`jaxprune._src.llm.stacked`). Not supported
(``ValueError`` naming the leaf, exclude it with ``rules``): grouped /
depthwise convolution kernels, kernels with dot_general batch dimensions, kernels
used inside ``while``/``cond`` or sliced by nested scans (unroll the stack or use
:func:`~jaxprune._src.llm.sparsegpt.sparsegpt_sequential` per layer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxprune._src.llm.conv_rows import conv_kernel_in_axes, conv_rows
from jaxprune._src.llm.layer_stats import (
    LayerStats,
    check_layer_stats,
    from_matrix,
    kernel_in_axes,
    kernel_matrix,
    reconstruction_error,
)
from jaxprune._src.llm.stacked import capture_scan
from jaxprune._src.structured.axis_rules import CALLS
from jaxprune._src.tree import Rules, leaves_with_paths, prunable_tree
from jaxprune._src.types import PyTree

__all__ = [
    "LayerStats",
    "calibrate",
    "check_layer_stats",
    "kernel_matrix",
    "from_matrix",
    "kernel_in_axes",
    "reconstruction_error",
]

_VIEW_OPS = {
    "convert_element_type",
    "copy",
    "copy_p",
    "reduce_precision",
    "sharding_constraint",
    "optimization_barrier",
}
_LOOPS = {"while", "cond"}


@dataclasses.dataclass(frozen=True)
class _Tag:
    leaf: int
    perm: tuple[int, ...]  # operand axis -> leaf axis


class _Capture:
    """Interpreter state for one traced evaluation: accumulated stats and per-leaf use records."""

    def __init__(self, dtype: Any, row_mask: jax.Array | None):
        self.dtype = dtype
        self.row_mask = row_mask
        self.stats: dict[int, list] = {}  # leaf -> [xtx, sq, count]
        self.in_axes: dict[int, tuple[int, ...]] = {}
        self.bad: dict[int, str] = {}
        self.stacked: set[int] = set()  # leaves whose statistics are per scanned layer

    def add(self, leaf: int, moments: tuple, axes: tuple[int, ...], *, stacked: bool) -> None:
        """Accumulates ``(xtx, sq, n)`` of ``leaf`` contracted on ``axes`` (``stacked``: per scanned layer)."""
        if self.in_axes.setdefault(leaf, axes) != axes:
            self.bad.setdefault(leaf, f"is contracted on axes {axes} and on {self.in_axes[leaf]}")
            return
        if leaf in self.stats and (leaf in self.stacked) != stacked:
            self.bad.setdefault(leaf, "is used both inside a lax.scan (sliced per layer) and outside it")
            return
        if stacked:
            self.stacked.add(leaf)
        acc = self.stats.get(leaf)
        self.stats[leaf] = list(moments) if acc is None else [a + m for a, m in zip(acc, moments)]

    def dot(self, eqn, vals, tags, memo: dict) -> None:
        """Adds the stats of the activation operand of one dot_general (``memo``: per evaluated jaxpr frame)."""
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lt, rt = tags
        if (lt is None) == (rt is None):
            return
        if rt is not None:
            tag, xv, xvar, kc, xc, kb = rt, vals[0], eqn.invars[0], rc, lc, rb
        else:
            tag, xv, xvar, kc, xc, kb = lt, vals[1], eqn.invars[1], lc, rc, lb
        if kb:
            self.bad.setdefault(tag.leaf, "is a dot_general operand with batch dimensions")
            return
        leaf_c = [tag.perm[d] for d in kc]
        order = np.argsort(leaf_c)
        axes = tuple(int(leaf_c[i]) for i in order)
        xc_sorted = tuple(int(xc[i]) for i in order)
        key = (xvar, xc_sorted)
        if key not in memo:
            memo[key] = self._moments(xv, xc_sorted)
        self.add(tag.leaf, memo[key], axes, stacked=False)

    def conv(self, eqn, vals, tags) -> None:
        """Adds the im2col patch stats of the input of one convolution whose kernel is a tagged leaf."""
        lt, rt = tags
        if lt is not None:
            self.bad.setdefault(lt.leaf, "is the input (not the kernel) of a convolution")
        if rt is None or lt is not None:
            return
        axes, why = conv_kernel_in_axes(eqn.params, rt.perm)
        if why is not None:
            self.bad.setdefault(rt.leaf, why)
            return
        self.add(
            rt.leaf,
            self._moments(conv_rows(vals[0], np.shape(vals[1]), eqn.params, rt.perm), (1,)),
            axes,
            stacked=False,
        )

    def _moments(self, x, xc):
        rest = tuple(d for d in range(x.ndim) if d not in xc)
        d_in = math.prod(x.shape[d] for d in xc)
        rows_shape = tuple(x.shape[d] for d in rest)
        x2 = jnp.transpose(x, rest + xc).reshape(-1, d_in).astype(self.dtype)
        if self.row_mask is not None:
            if tuple(self.row_mask.shape) != rows_shape:
                raise ValueError(
                    f"calibrate: row_mask has shape {tuple(self.row_mask.shape)} but an activation has rows of "
                    f"shape {rows_shape} (its non-contracted axes); row_mask must match every calibrated input"
                )
            keep = self.row_mask.reshape(-1) > 0
            x2 = jnp.where(keep[:, None], x2, 0)
            n = jnp.sum(keep, dtype=jnp.int32)
        else:
            n = jnp.asarray(x2.shape[0], jnp.int32)
        xtx = jnp.matmul(x2.T, x2, precision=jax.lax.Precision.HIGHEST)
        return xtx, jnp.sum(jnp.square(x2), axis=0), n

    def eval(self, jaxpr, consts, args, arg_tags) -> tuple[list, list]:
        env: dict = {}
        tenv: dict = {}
        memo: dict = {}  # shared sub-jaxprs (e.g. jnp.matmul's) reuse Var objects: never share across frames
        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c
        for v, a, t in zip(jaxpr.invars, args, arg_tags):
            env[v] = a
            if t is not None:
                tenv[v] = t

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        def rtag(v):
            return None if isinstance(v, jcore.Literal) else tenv.get(v)

        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            tags = [rtag(v) for v in eqn.invars]
            name = eqn.primitive.name
            call = CALLS.get(name)
            out_tags: list = [None] * len(eqn.outvars)
            if call and any(t is not None for t in tags):
                sub = eqn.params[call]
                closed = sub if isinstance(sub, jcore.ClosedJaxpr) else None
                inner = closed.jaxpr if closed is not None else sub
                outs, out_tags = self.eval(inner, closed.consts if closed is not None else (), vals, tags)
            elif name == "scan" and any(t is not None for t in tags):
                outs = capture_scan(self, eqn, vals, tags, lambda: _Capture(self.dtype, self.row_mask), _Tag)
            else:
                if any(t is not None for t in tags):
                    self._note(eqn, tags, out_tags)
                with eqn.ctx.manager:
                    ans = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
                if name == "dot_general":
                    self.dot(eqn, vals, tags, memo)
                elif name == "conv_general_dilated":
                    self.conv(eqn, vals, tags)
            for v, o, t in zip(eqn.outvars, outs, out_tags):
                env[v] = o
                if t is not None:
                    tenv[v] = t
        return [read(v) for v in jaxpr.outvars], [rtag(v) for v in jaxpr.outvars]

    def _note(self, eqn, tags, out_tags) -> None:
        name = eqn.primitive.name
        if name in _VIEW_OPS and len(eqn.outvars) == len(tags):
            out_tags[:] = tags
        elif name == "transpose" and tags[0] is not None:
            perm = eqn.params["permutation"]
            out_tags[0] = _Tag(tags[0].leaf, tuple(tags[0].perm[p] for p in perm))
        elif name in _LOOPS:
            for t in tags:
                if t is not None:
                    self.bad.setdefault(
                        t.leaf, f"is used inside lax.{name} (unroll the stack or calibrate layer by layer)"
                    )


def _batch_key(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))


def calibrate(
    fn: Callable[[PyTree, Any], Any],
    params: PyTree,
    batches: Iterable[Any],
    *,
    rules: Rules | None = None,
    dtype: Any = jnp.float32,
    progress: bool = False,
    row_mask: Callable[[Any], jax.Array] | None = None,
) -> dict[str, LayerStats]:
    """``{leaf path: LayerStats}`` of every kernel leaf that multiplies an activation in ``fn(params, batch)``.

    ``fn`` is any pure function (Linen ``apply``, an NNX split/merge call, plain
    JAX). Statistics are accumulated over ``batches`` in ``dtype`` (float32),
    one jitted call per batch (compiled once per batch shape). ``rules`` is a
    list of ``(regex, bool)`` choosing the leaves (default: every prunable leaf
    with ``ndim >= 2`` that is found as a matmul weight). ``row_mask(batch)``
    (optional) gives a 0/1 array over the token rows (e.g. the attention mask
    ``(batch, seq)``) so padding tokens are left out; it must match the
    non-contracted axes of every calibrated activation.

    >>> p = {'d': {'kernel': jnp.ones((3, 2))}}
    >>> x = jnp.array([[1., 2., 0.], [0., 1., 1.]])
    >>> s = calibrate(lambda p, x: x @ p['d']['kernel'], p, [x, x])
    >>> s['d/kernel'].xtx.tolist()[0], s['d/kernel'].count
    ([2.0, 4.0, 0.0], 4)
    """
    if not callable(fn):
        raise TypeError(f"calibrate: fn must be callable fn(params, batch), got {type(fn).__name__}")
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"calibrate: batches must be an iterable of batches (e.g. a list), got {type(batches).__name__}"
        )
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(f"calibrate: dtype must be a floating dtype (the accumulation precision), got {dtype!r}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [p for p, _ in leaves_with_paths(params)]
    leaves = [x for _, x in flat]
    ok = [bool(o) for o in jax.tree.leaves(prunable_tree(params, rules))]
    cand = [i for i, leaf in enumerate(leaves) if ok[i] and np.ndim(leaf) >= 2]
    cache: dict[tuple, Any] = {}
    totals: dict[int, list] = {}
    in_axes: dict[int, tuple[int, ...]] = {}
    stacked: set[int] = set()
    iterator: Iterable[Any] = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="calibrate")
    n_batches = 0
    finite: list[jax.Array] = []  # per batch: all of its statistics finite (checked only if the totals are not)
    for batch in iterator:
        n_batches += 1
        key = _batch_key(batch)
        if key not in cache:
            cache[key] = _instrument(
                fn, treedef, leaves, batch, cand, paths, dtype, row_mask, (in_axes, stacked), n_batches - 1
            )
        out, ok_batch = cache[key](leaves, batch)
        finite.append(ok_batch)
        for i, (xtx, sq, n) in out.items():
            acc = totals.get(i)
            totals[i] = [xtx, sq, n] if acc is None else [acc[0] + xtx, acc[1] + sq, acc[2] + n]
    if n_batches == 0:
        raise ValueError("calibrate: batches is empty")
    stats = {
        paths[i]: LayerStats(t[0], t[1], int(t[2]), in_axes[i], int(t[0].shape[0]) if i in stacked else None)
        for i, t in sorted(totals.items())
    }
    _check_calibrated(stats, finite)
    return stats


def _check_calibrated(stats: dict[str, LayerStats], finite: list[jax.Array]) -> None:
    """``ValueError`` naming the kernels whose statistics are empty (no token rows) or not finite."""
    empty = [p for p, st in stats.items() if st.count < 1]
    if empty:
        raise ValueError(
            f"calibrate: kernels {empty[:5]} saw no calibration token rows (row_mask is all zero on every batch?)"
        )
    ok = jax.device_get([jnp.all(jnp.isfinite(st.xtx)) for st in stats.values()])
    bad = [p for p, o in zip(stats, ok) if not o]
    if bad:
        first = next((i for i, f in enumerate(jax.device_get(finite)) if not f), None)
        where = f" (first in batch {first})" if first is not None else ""
        raise ValueError(
            f"calibrate: the input statistics of kernels {bad[:5]} are not finite{where}: NaN/Inf in the "
            "calibration batches or params, or overflow in a low-precision model"
        )


def _instrument(fn, treedef, leaves, batch, cand, paths, dtype, row_mask, found, index=0):
    try:
        closed = jax.make_jaxpr(lambda ls, b: fn(jax.tree_util.tree_unflatten(treedef, ls), b))(leaves, batch)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        shapes = jax.tree.map(lambda x: tuple(np.shape(x)), batch)
        msg = f"calibrate: fn(params, batch) failed on batch {index} (array shapes {shapes}): {e}"
        if type(e) not in (TypeError, ValueError, IndexError, KeyError):  # subclasses: keep them, add a note
            e.add_note(msg)
            raise
        raise type(e)(msg) from e
    n_leaves = len(leaves)
    if len(closed.jaxpr.invars) < n_leaves:
        raise ValueError("calibrate: could not match the traced inputs to the param leaves")
    cset = set(cand)
    arg_tags = [_Tag(i, tuple(range(np.ndim(leaves[i])))) if i in cset else None for i in range(n_leaves)]

    def run(ls, b, consts):
        mask = None if row_mask is None else jnp.asarray(row_mask(b))
        cap = _Capture(dtype, mask)
        args = list(ls) + jax.tree.leaves(b)
        cap.eval(closed.jaxpr, consts, args, arg_tags + [None] * (len(args) - n_leaves))
        for i, why in cap.bad.items():
            raise ValueError(
                f"calibrate: leaf {paths[i]!r} {why}; exclude it with rules=[({paths[i]!r}, False)] "
                "or restructure the model"
            )
        found[0].update(cap.in_axes)
        found[1].update(cap.stacked)
        ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v[0])) for v in cap.stats.values()] or [True]))
        return {i: tuple(v) for i, v in cap.stats.items()}, ok

    jitted = jax.jit(run)
    return lambda ls, b: jitted(ls, b, closed.consts)
