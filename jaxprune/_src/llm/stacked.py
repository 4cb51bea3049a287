"""Calibration through ``lax.scan``: per-layer statistics of stacked (scanned) kernels.

Models that scan one block over a stack of layers (``nn.scan``, ``nnx.scan``,
``scan_layers=True``) keep every kernel as one leaf with a leading layer axis;
inside the scan body each iteration multiplies its activation by one slice.
:func:`capture_scan` evaluates such a ``scan`` equation for the calibration
interpreter: the body runs under a fresh capture whose statistics are emitted
as the scan's per-iteration outputs, so a stacked leaf gets ``xtx`` of shape
``(layers, d_in, d_in)`` -- layer ``i``'s statistics are those of slice ``i``
only. A kernel closed over by the body (the same weights in every iteration)
gets its statistics summed over the iterations.

:func:`per_layer` applies a per-kernel rule (Wanda, SparseGPT, the layer error)
slice by slice when the statistics are stacked.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["StackPair", "capture_scan", "per_layer"]


def capture_scan(cap: Any, eqn: Any, vals: list, tags: list, make_capture: Callable[[], Any], make_tag) -> list:
    """Evaluates one ``scan`` equation, adding its kernels' statistics to ``cap`` (a calibration capture)."""
    p = eqn.params
    nc, ncarry, body = p["num_consts"], p["num_carry"], p["jaxpr"]
    for t in tags[nc : nc + ncarry]:
        if t is not None:
            cap.bad.setdefault(t.leaf, "flows through a lax.scan carry (calibrate cannot tell its layers apart)")
    sliced: set[int] = set()
    inner_tags: list = list(tags[:nc]) + [None] * ncarry
    for t in tags[nc + ncarry :]:
        if t is None:
            inner_tags.append(None)
        elif t.perm[0] != 0:
            cap.bad.setdefault(t.leaf, "is scanned over an axis other than its first (the layer axis)")
            inner_tags.append(None)
        else:
            sliced.add(t.leaf)
            inner_tags.append(make_tag(t.leaf, tuple(a - 1 for a in t.perm[1:])))
    shared = {t.leaf for t in tags[:nc] if t is not None}
    for leaf in sliced & shared:
        cap.bad.setdefault(leaf, "is used both sliced and whole inside one lax.scan")
    found: dict[str, Any] = {}

    def step(carry, x):
        sub = make_capture()
        outs, _ = sub.eval(body.jaxpr, body.consts, [*vals[:nc], *carry, *x], inner_tags)
        found.update(bad=dict(sub.bad), in_axes=dict(sub.in_axes), stacked=set(sub.stacked), keys=sorted(sub.stats))
        return outs[:ncarry], (outs[ncarry:], [tuple(sub.stats[k]) for k in found["keys"]])

    carry, (ys, stats) = lax.scan(
        step,
        list(vals[nc : nc + ncarry]),
        list(vals[nc + ncarry :]),
        length=p["length"],
        reverse=p["reverse"],
        unroll=p.get("unroll", 1),
    )
    for leaf, why in found["bad"].items():
        cap.bad.setdefault(leaf, why)
    for leaf, (xtx, sq, n) in zip(found["keys"], stats):
        if leaf in found["stacked"]:
            cap.bad.setdefault(leaf, "is sliced by nested lax.scans (one level of stacking is supported)")
            continue
        axes = found["in_axes"][leaf]
        if leaf in sliced:  # (layers, ...) per-iteration statistics; every layer sees the same token rows
            cap.add(leaf, (xtx, sq, n[0]), axes, stacked=True)
        else:  # the same weights in every iteration: statistics summed over the iterations
            cap.add(leaf, (xtx.sum(0), sq.sum(0), n.sum(0)), axes, stacked=False)
    return [*carry, *ys]


class StackPair(tuple):
    """Several same-shape leaves sliced together by :func:`per_layer` (``StackPair(w, w_pruned)[i]`` is a pair)."""

    def __new__(cls, *leaves: Any) -> StackPair:
        return super().__new__(cls, leaves)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self[0]))

    def layer(self, i: int) -> tuple:
        return tuple(x[i] for x in self)


def per_layer(fn: Callable[[Any, Any], Any], w: Any, st: Any, path: str) -> Any:
    """``fn(w, st)``; for stacked statistics ``fn`` on every layer's slice, results stacked on a new axis 0.

    ``w`` is a leaf, or a :class:`StackPair` of leaves sliced together.
    """
    if st.layers is None:
        return fn(w, st)
    shape = w.shape if isinstance(w, StackPair) else np.shape(w)
    if len(shape) < 1 or shape[0] != st.layers:
        raise ValueError(
            f"leaf {path!r} of shape {shape}: its statistics are stacked over {st.layers} scanned layers, "
            "so its first axis must be the layer axis of that size"
        )
    outs = [fn(w.layer(i) if isinstance(w, StackPair) else w[i], st.layer(i)) for i in range(st.layers)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
