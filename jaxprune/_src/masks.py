"""Masks from scores: layerwise / global top-k, N:M, block and channel; apply_masks.

Conventions:
  * A mask is a bool array, ``True`` = kept. A masks pytree has the structure
    of params with ``None`` at leaves that are not pruned.
  * Exactness: a layer at sparsity ``s`` with ``n`` weights has exactly
    ``round(s * n)`` pruned entries (round half to even, as numpy/jnp);
    global masks prune exactly ``round(s * N)`` over the union of prunable
    leaves. Ties are broken deterministically: among equal scores, the entry
    with the lower flat index (in leaf order, then row-major) is pruned first.
  * Every function is jit-able; sparsities may be traced (scheduled) values.

Top-k selection is the exact joint engine of :mod:`jaxprune._src.topk` (NumPy
introselect for concrete host arrays; a jitted bisection on the uint32 image of
the scores for device, sharded or traced ones, keeping the scores' sharding,
see docs/sharding.md). N:M ranks within runs by pairwise compares (no sort).
NaN scores are rejected when scores are concrete; under ``jit`` a NaN ranks
above ``+inf`` (never pruned first).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import tree as tree_lib
from jaxprune._src.distributions import check_sparsity
from jaxprune._src.topk import _host_prune_lowest, _on_host_cpu, _prune_lowest, _select_lowest, _unsharded

PyTree = Any

__all__ = [
    "topk_mask",
    "layerwise_masks",
    "global_masks",
    "nm_masks",
    "block_masks",
    "channel_masks",
    "apply_masks",
    "combine_masks",
    "check_scores",
]


def _n_prune(sparsity: Any, n: int) -> jax.Array:
    if isinstance(sparsity, (int, float, np.floating, np.integer)):
        return jnp.int32(int(np.round(check_sparsity(sparsity) * n)))
    return jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)


def check_scores(scores: PyTree, what: str = "scores") -> None:
    """Raises ``ValueError`` naming the leaf if concrete scores hold NaN (no-op under jit)."""
    for path, s in tree_lib.leaves_with_paths(scores, is_leaf=tree_lib.is_none):
        if s is None or isinstance(s, jax.core.Tracer):
            continue
        if not jnp.issubdtype(jnp.asarray(s).dtype, jnp.floating):
            continue
        # CPU-resident: check on the host (no per-shape compile); elsewhere one reduction on device
        has_nan = np.isnan(np.asarray(s)).any() if _on_host_cpu([s], 0) else bool(jnp.isnan(s).any())
        if has_nan:
            raise ValueError(f"{what} leaf {path!r} contains NaN; cannot rank it")


def topk_mask(scores: jax.Array, sparsity: float | jax.Array) -> jax.Array:
    """Keep-mask pruning exactly ``round(sparsity * scores.size)`` lowest scores of one array.

    >>> topk_mask(jnp.array([3., 1., 2., 1.]), 0.5)
    Array([ True, False,  True, False], dtype=bool)
    """
    scores = jnp.asarray(scores)
    (mask,) = _prune_lowest([scores], _n_prune(sparsity, scores.size))
    return mask


def _resolve_sparsities(scores: PyTree, sparsities: Any, prunable: Any) -> PyTree:
    """Broadcasts a scalar sparsity over prunable leaves, or validates a per-leaf tree."""
    if isinstance(sparsities, (int, float, np.floating)) or (
            isinstance(sparsities, jax.Array) and sparsities.ndim == 0):
        if prunable is None or isinstance(prunable, (list, tuple)):
            prunable = tree_lib.prunable_tree(scores, prunable)
        return jax.tree.map(lambda ok: sparsities if ok else None, prunable)
    tree_lib.check_same_structure(scores, sparsities, what="sparsities", check_shapes=False)
    return sparsities


def layerwise_masks(scores: PyTree, sparsities: Any, *, prunable: Any = None) -> PyTree:
    """Top-k masks per leaf.

    Args:
      scores: pytree of score arrays (e.g. ``jaxprune.magnitude(params)``).
      sparsities: a scalar applied to every prunable leaf, or a pytree like
        ``scores`` with a float (or traced scalar) or ``None`` per leaf
        (see :func:`jaxprune.layer_sparsities`).
      prunable: when ``sparsities`` is a scalar: bool pytree or ``(regex, bool)``
        rules selecting leaves (default: kernels with ndim >= 2).

    >>> m = layerwise_masks({'w': jnp.arange(10.).reshape(2, 5)}, 0.3)
    >>> int((~m['w']).sum())
    3
    """
    check_scores(scores)
    sp = _resolve_sparsities(scores, sparsities, prunable)
    flat_sp, treedef = jax.tree.flatten(sp, is_leaf=tree_lib.is_none)
    flat_scores = treedef.flatten_up_to(scores)
    chosen = [(i, jnp.asarray(x)) for i, (s, x) in enumerate(zip(flat_sp, flat_scores)) if s is not None]
    out: list[Any] = [None] * len(flat_sp)
    if chosen:  # one jitted call ranks every leaf (each leaf its own group)
        n_prune = jnp.stack([_n_prune(flat_sp[i], int(x.size)) for i, x in chosen])
        arrays = tuple(x for _, x in chosen)
        if _on_host_cpu(arrays, n_prune):  # concrete CPU arrays: NumPy introselect per leaf, no compiles
            masks = [_host_prune_lowest([x], int(n))[0] for x, n in zip(arrays, np.asarray(n_prune))]
        elif _unsharded(arrays):  # one call per leaf: dispatched asynchronously, they overlap on CPU
            masks = [_select_lowest((x,), n_prune[j:j + 1], groups=(0,), n_groups=1, flat=True)[0]
                     for j, x in enumerate(arrays)]
        else:  # sharded or traced: one program, every leaf's counts all-reduced together
            masks = _select_lowest(arrays, n_prune, groups=tuple(range(len(chosen))), n_groups=len(chosen))
        for (i, _), m in zip(chosen, masks):
            out[i] = m
    return jax.tree.unflatten(treedef, out)


def global_masks(scores: PyTree, sparsity: float | jax.Array, *, prunable: Any = None) -> PyTree:
    """One threshold over the union of prunable leaves: exactly ``round(s * N)`` pruned in total.

    Scores are compared across layers as given; normalise them first if
    layers have different scales.

    >>> m = global_masks({'a': jnp.array([[1., 5.]]), 'b': jnp.array([[2., 3.]])}, 0.5)
    >>> m['a'].tolist(), m['b'].tolist()
    ([[False, True]], [[False, True]])
    """
    check_scores(scores)
    if prunable is None or isinstance(prunable, (list, tuple)):
        prunable = tree_lib.prunable_tree(scores, prunable)
    else:
        tree_lib.check_same_structure(scores, prunable, what="prunable", check_shapes=False)
    flat_scores, treedef = jax.tree.flatten(scores)
    flat_ok = treedef.flatten_up_to(prunable)
    chosen = [jnp.asarray(s) for s, ok in zip(flat_scores, flat_ok) if ok]  # no flatten/concat: shardable
    total = sum(int(c.size) for c in chosen)
    kept = iter(_prune_lowest(chosen, _n_prune(sparsity, total)) if chosen else [])
    out = [next(kept) if ok else None for s, ok in zip(flat_scores, flat_ok)]
    return jax.tree.unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("n", "m", "ax"))
def _nm_keep(x: jax.Array, n: int, m: int, ax: int) -> jax.Array:
    # Rank each entry within its run of m along ``ax`` by pairwise compares with the other
    # m - 1 members (rank = #members with a higher score, or an equal one at a lower index);
    # members are reached with shifts (rolls) of the whole array, so everything stays
    # elementwise in ``x``: a sharded axis stays sharded even when runs cross shard edges.
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = jnp.where(jnp.isnan(x), -jnp.inf, x)
    pos = lax.broadcasted_iota(jnp.int32, x.shape, ax) % m
    rank = jnp.zeros(x.shape, jnp.int32)
    for o in range(-(m - 1), m):
        if o == 0:
            continue
        other = jnp.roll(x, -o, axis=ax)  # other[i] = x[i + o]
        beats = (other > x) | ((other == x) & (o < 0))
        rank = rank + (beats & (pos + o >= 0) & (pos + o < m)).astype(jnp.int32)
    return rank < n


def _nm_one(path: str, x: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    ax = axis % x.ndim if x.ndim else 0
    if x.ndim == 0 or x.shape[ax] % m:
        raise ValueError(
            f"N:M mask for leaf {path!r}: axis {axis} of shape {x.shape} must be divisible by M={m}")
    return _nm_keep(x, n, m, ax)


def nm_masks(scores: PyTree, n: int = 2, m: int = 4, *, axis: int = -2, prunable: Any = None) -> PyTree:
    """N:M masks: exactly ``n`` kept in every run of ``m`` consecutive entries along ``axis``.

    ``axis=-2`` is the input dimension of Flax kernels (Dense ``(in, out)``,
    Conv ``(h, w, in, out)``), matching the layout sparse tensor cores use.
    That axis must be divisible by ``m`` (else ``ValueError`` naming the leaf;
    exclude such layers with ``prunable`` rules).

    >>> nm_masks({'w': jnp.array([[4.], [1.], [3.], [2.]])}, 2, 4)['w'][:, 0].tolist()
    [True, False, True, False]
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(m, (int, np.integer))) or not 0 < n <= m:
        raise ValueError(f"N:M needs integers 0 < N <= M, got N={n!r}, M={m!r}")
    check_scores(scores)
    sp = _resolve_sparsities(scores, 0.0, prunable)
    return tree_lib.map_with_path(
        lambda path, s, x: None if s is None else _nm_one(path, jnp.asarray(x), int(n), int(m), axis),
        sp, scores, is_leaf=tree_lib.is_none)


def _block_one(path: str, x: jax.Array, s: Any, block: tuple[int, int]) -> jax.Array:
    bh, bw = block
    if x.ndim < 2:
        raise ValueError(f"block mask for leaf {path!r}: needs ndim >= 2, got shape {x.shape}")
    rows, cols = int(np.prod(x.shape[:-1])), x.shape[-1]
    if rows % bh or cols % bw:
        raise ValueError(
            f"block {block} does not divide leaf {path!r} viewed as a ({rows}, {cols}) matrix "
            f"(shape {x.shape}: all leading dims flattened into rows, last dim = columns)")
    mat = jnp.abs(x.reshape(rows, cols)).reshape(rows // bh, bh, cols // bw, bw)
    block_scores = mat.mean(axis=(1, 3))
    keep = topk_mask(block_scores, s)
    return jnp.repeat(jnp.repeat(keep, bh, axis=0), bw, axis=1).reshape(x.shape)


def block_masks(scores: PyTree, sparsities: Any, block: tuple[int, int] = (4, 4), *,
                prunable: Any = None) -> PyTree:
    """Block masks: whole ``block`` tiles kept or pruned, by their mean score.

    Each kernel is viewed as a 2-D ``(prod(shape[:-1]), shape[-1])`` matrix
    (fan-in x fan-out, so conv kernels work too); ``block=(bh, bw)`` must
    divide it (no padding: a ``ValueError`` names the leaf). Exactly
    ``round(s * n_blocks)`` blocks are pruned per layer.
    """
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, (int, np.integer)) and b > 0 for b in block)):
        raise ValueError(f"block must be a pair of positive ints, got {block!r}")
    check_scores(scores)
    sp = _resolve_sparsities(scores, sparsities, prunable)
    return tree_lib.map_with_path(
        lambda path, s, x: None if s is None else _block_one(path, jnp.asarray(x), s, tuple(block)),
        sp, scores, is_leaf=tree_lib.is_none)


def channel_masks(scores: PyTree, sparsities: Any, *, axis: int = -1, prunable: Any = None) -> PyTree:
    """Masks that prune whole slices along ``axis`` (default: output channels/units).

    A slice's score is the L2 norm of its scores; exactly ``round(s * size)``
    slices are pruned per layer. The weights stay dense-shaped (use the
    structured engine to really shrink them).

    >>> m = channel_masks({'w': jnp.array([[1., 9.], [1., 9.]])}, 0.5)
    >>> m['w'].tolist()
    [[False, True], [False, True]]
    """
    check_scores(scores)
    sp = _resolve_sparsities(scores, sparsities, prunable)

    def one(path, s, x):
        if s is None:
            return None
        x = jnp.asarray(x)
        ax = axis % x.ndim
        reduce_axes = tuple(i for i in range(x.ndim) if i != ax)
        ch = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=reduce_axes))
        keep = topk_mask(ch, s)
        shape = [1] * x.ndim
        shape[ax] = x.shape[ax]
        return jnp.broadcast_to(keep.reshape(shape), x.shape)

    return tree_lib.map_with_path(one, sp, scores, is_leaf=tree_lib.is_none)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes pruned entries: ``where(mask, w, 0)``; leaves whose mask is ``None`` pass through.

    >>> apply_masks({'w': jnp.array([1., 2.])}, {'w': jnp.array([True, False])})['w']
    Array([1., 0.], dtype=float32)
    """
    tree_lib.check_same_structure(params, masks, what="masks")
    return jax.tree.map(lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
                        masks, params, is_leaf=tree_lib.is_none)


def combine_masks(a: PyTree, b: PyTree) -> PyTree:
    """Logical AND of two masks pytrees (``None`` means all-kept)."""
    def one(x, y):
        if x is None:
            return y
        if y is None:
            return x
        return jnp.logical_and(x, y)
    return jax.tree.map(one, a, b, is_leaf=tree_lib.is_none)
