"""What calibration produces: per-kernel input statistics, and the kernel as a matrix over its input axes.

:class:`LayerStats` holds ``X^T X`` (and the squared input norms) of the
activation one kernel leaf multiplies; :func:`kernel_matrix` /
:func:`from_matrix` view any kernel leaf as the ``(d_in, d_out)`` matrix those
statistics refer to; :func:`reconstruction_error` compares a pruned kernel with
the dense one on the calibration inputs, from the statistics alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.llm.stacked import StackPair, per_layer
from jaxprune._src.tree import leaves_with_paths
from jaxprune._src.types import PyTree

__all__ = [
    "LayerStats",
    "check_layer_stats",
    "kernel_matrix",
    "from_matrix",
    "kernel_in_axes",
    "reconstruction_error",
]


@dataclasses.dataclass
class LayerStats:
    """Calibration statistics of the activation multiplied by one kernel leaf.

    ``xtx`` is ``sum x x^T`` ``(d_in, d_in)`` over all ``count`` token rows,
    ``sq_norms`` its diagonal ``(d_in,)``; ``in_axes`` the leaf axes contracted
    with the activation (``None``: the leading axes whose sizes multiply to
    ``d_in``, as for Flax kernels).

    A kernel stacked over the layers of a ``lax.scan`` has ``layers`` set:
    ``xtx`` is ``(layers, d_in, d_in)``, ``sq_norms`` ``(layers, d_in)``,
    ``count`` the rows each layer saw and ``in_axes`` refer to one layer's
    slice (the leaf without its leading layer axis); :meth:`layer` gives one
    layer's statistics.
    """

    xtx: jax.Array
    sq_norms: jax.Array
    count: int
    in_axes: tuple[int, ...] | None = None
    layers: int | None = None

    @property
    def d_in(self) -> int:
        return int(self.xtx.shape[-1])

    def layer(self, i: int) -> LayerStats:
        """The statistics of layer ``i`` of a stacked kernel."""
        if self.layers is None:
            raise ValueError("LayerStats.layer: these statistics are not stacked over scanned layers")
        return LayerStats(self.xtx[i], self.sq_norms[i], self.count, self.in_axes)


def check_layer_stats(stats: Any, path: str = "") -> None:
    """Raises ``TypeError``/``ValueError`` naming ``path`` unless ``stats`` is a usable :class:`LayerStats`.

    ``xtx`` must be a square ``(d_in, d_in)`` matrix, ``sq_norms`` ``(d_in,)``, ``count`` an int >= 1 (a
    kernel that saw no calibration token has no statistics) and both arrays finite.
    """
    if not isinstance(stats, LayerStats):
        raise TypeError(f"stats[{path!r}] must be a LayerStats (from calibrate), got {type(stats).__name__}")
    xs, qs = np.shape(stats.xtx), np.shape(stats.sq_norms)
    lead = () if stats.layers is None else (stats.layers,)
    if len(xs) != 2 + len(lead) or xs[-1] != xs[-2] or xs[: len(lead)] != lead:
        raise ValueError(f"stats[{path!r}].xtx must be a square {lead} + (d_in, d_in) matrix, got shape {xs}")
    if qs != lead + (xs[-1],):
        raise ValueError(f"stats[{path!r}].sq_norms must have shape {lead + (xs[-1],)} to match xtx {xs}, got {qs}")
    count = stats.count
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(
            f"stats[{path!r}].count must be an int >= 1 (number of calibration token rows), got {count!r}: "
            "the kernel saw no calibration tokens (empty batches, or row_mask all zero?)"
        )
    if not bool(jnp.all(jnp.isfinite(stats.xtx))) or not bool(jnp.all(jnp.isfinite(stats.sq_norms))):
        raise ValueError(
            f"stats[{path!r}] contains NaN/Inf (NaN/Inf in the calibration batches or activations, or overflow "
            "in low precision); recalibrate on finite data"
        )


def _check_axes(in_axes: Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    try:
        axes = tuple(int(a) for a in in_axes)
    except TypeError:
        raise TypeError(f"{what}: in_axes must be a sequence of ints, got {in_axes!r}") from None
    if not axes or len(set(axes)) != len(axes) or any(not 0 <= a < ndim for a in axes):
        raise ValueError(f"{what}: in_axes must be distinct axes in [0, {ndim}), got {in_axes!r}")
    return axes


def kernel_in_axes(shape: Sequence[int], stats: LayerStats, path: str = "") -> tuple[int, ...]:
    """The leaf axes that are the kernel's input (contracted) axes, checked against ``stats``."""
    shape = tuple(int(s) for s in shape)
    check_layer_stats(stats, path)
    if stats.layers is not None:
        raise ValueError(
            f"leaf {path!r}: its statistics are stacked over {stats.layers} scanned layers; take one layer's with "
            "stats.layer(i) for the slice leaf[i]"
        )
    d_in = stats.d_in
    if stats.in_axes is not None:
        axes = _check_axes(stats.in_axes, len(shape), f"leaf {path!r} of shape {shape}")
        if math.prod(shape[a] for a in axes) != d_in:
            raise ValueError(f"leaf {path!r} of shape {shape}: input axes {axes} do not multiply to d_in={d_in}")
        return axes
    prod = 1
    for k, s in enumerate(shape[:-1]):
        prod *= s
        if prod == d_in:
            return tuple(range(k + 1))
    raise ValueError(
        f"leaf {path!r} of shape {shape}: no leading axes multiply to the calibrated d_in={d_in} "
        "(stats from another model, or set LayerStats.in_axes)"
    )


def kernel_matrix(w: jax.Array, in_axes: Sequence[int]) -> jax.Array:
    """The ``(d_in, d_out)`` matrix view of a kernel leaf (input axes first, in leaf order, flattened).

    >>> kernel_matrix(jnp.zeros((12, 32, 384)), (0, 1)).shape
    (384, 384)
    """
    in_axes = _check_axes(in_axes, np.ndim(w), f"kernel_matrix of shape {np.shape(w)}")
    rest = tuple(a for a in range(w.ndim) if a not in in_axes)
    d_in = math.prod(w.shape[a] for a in in_axes)
    return jnp.transpose(w, in_axes + rest).reshape(d_in, -1)


def from_matrix(m: jax.Array, shape: Sequence[int], in_axes: Sequence[int]) -> jax.Array:
    """Inverse of :func:`kernel_matrix`: the ``(d_in, d_out)`` matrix back in the leaf's ``shape``."""
    shape = tuple(int(d) for d in shape)
    in_axes = _check_axes(in_axes, len(shape), f"from_matrix to shape {shape}")
    rest = tuple(a for a in range(len(shape)) if a not in in_axes)
    want = (math.prod(shape[a] for a in in_axes), math.prod(shape[a] for a in rest))
    if tuple(np.shape(m)) != want:
        raise ValueError(
            f"from_matrix: m must be the (d_in, d_out) = {want} matrix of shape {shape} with in_axes {in_axes}, "
            f"got shape {tuple(np.shape(m))}"
        )
    perm = in_axes + rest
    t = m.reshape(tuple(shape[a] for a in perm))
    return jnp.transpose(t, tuple(int(i) for i in np.argsort(perm)))


def reconstruction_error(params: PyTree, pruned: PyTree, stats: dict[str, LayerStats]) -> dict[str, float]:
    """``{path: ||X W - X W'||^2 / ||X W||^2}`` per calibrated kernel, on the calibration inputs of ``stats``.

    ``W`` is the leaf in ``params``, ``W'`` the same leaf in ``pruned`` (masked
    or updated weights, same structure); ``X`` the calibration inputs whose
    ``X^T X`` is in ``stats`` (so nothing but the statistics is needed:
    ``tr(D^T X^T X D)`` with ``D = W - W'``). Compares pruning methods layer by
    layer (Wanda's and SparseGPT's objective).

    >>> from jaxprune.llm import calibrate
    >>> p = {'w': jnp.array([[3., 0.], [0., 4.]])}
    >>> s = calibrate(lambda p, x: x @ p['w'], p, [jnp.eye(2)])
    >>> round(reconstruction_error(p, {'w': jnp.array([[0., 0.], [0., 4.]])}, s)['w'], 4)  # 3^2 / (3^2 + 4^2)
    0.36
    """
    if not isinstance(stats, dict) or not all(isinstance(v, LayerStats) for v in stats.values()):
        raise TypeError("reconstruction_error: stats must be the dict {path: LayerStats} returned by calibrate")
    a = dict(leaves_with_paths(params))
    b = dict(leaves_with_paths(pruned))
    out: dict[str, float] = {}
    for path, st in stats.items():
        if path not in a or path not in b:
            raise ValueError(f"reconstruction_error: leaf {path!r} of stats is missing from params or pruned")
        if np.shape(a[path]) != np.shape(b[path]):
            raise ValueError(
                f"reconstruction_error: leaf {path!r} has shape {np.shape(a[path])} in params but "
                f"{np.shape(b[path])} in pruned"
            )

        def errors(wb, st, path=path):
            axes = kernel_in_axes(np.shape(wb[0]), st, path)
            w = kernel_matrix(jnp.asarray(wb[0], jnp.float32), axes)
            d = w - kernel_matrix(jnp.asarray(wb[1], jnp.float32), axes)
            h = st.xtx.astype(jnp.float32)
            hp = jax.lax.Precision.HIGHEST
            return jnp.stack([jnp.sum(d * jnp.matmul(h, d, precision=hp)), jnp.sum(w * jnp.matmul(h, w, precision=hp))])

        # a stacked (scanned) kernel: per-layer errors summed, relative to the summed outputs of all layers
        err, ref = jnp.reshape(per_layer(errors, StackPair(a[path], b[path]), st, path), (-1, 2)).sum(0)
        out[path] = float(err / jnp.maximum(ref, jnp.finfo(jnp.float32).tiny))
    return out
