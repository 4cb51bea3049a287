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
    Concrete sparsities (Python numbers, NumPy or JAX arrays) are checked: a
    string, NaN or a value outside [0, 1) raises. A *traced* sparsity cannot
    be checked without a host round-trip: it is clipped to [0, 1] and a NaN
    counts as 0 (nothing pruned), so a bad schedule never prunes "everything".
  * Masks must be boolean (``apply_masks`` raises ``TypeError`` naming the leaf
    otherwise: a float mask of 0.3 is not "kept" or "pruned"). Axis arguments
    must be in ``[-ndim, ndim)`` of each leaf (``ValueError`` naming it).
  * With a scalar sparsity, a scores tree with no prunable leaf gives all-None
    masks and a ``UserWarning`` (:func:`jaxprune.prune` raises instead).

Top-k selection is the exact joint engine of :mod:`jaxprune._src.topk` (NumPy
introselect for concrete host arrays; a jitted bisection on the uint32 image of
the scores for device, sharded or traced ones, keeping the scores' sharding,
see docs/sharding.md). N:M ranks within runs by pairwise compares (no sort).
NaN scores are rejected when scores are concrete; under ``jit`` a NaN ranks
above ``+inf`` (never pruned first).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src import tree as tree_lib
from jaxprune._src.distributions import check_sparsity
from jaxprune._src.topk import host_prune_lowest, on_host_cpu, prune_lowest, select_lowest, unsharded
from jaxprune._src.types import PyTree

__all__ = [
    "topk_mask",
    "layerwise_masks",
    "global_masks",
    "nm_masks",
    "block_masks",
    "channel_masks",
    "apply_masks",
    "check_masks",
    "combine_masks",
    "check_scores",
]


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _is_scalar_sparsity(x: Any) -> bool:
    """A Python/NumPy number or a 0-d array (concrete or traced): one sparsity for every leaf."""
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return True
    return isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)) and np.ndim(x) == 0


def _n_prune(sparsity: Any, n: int, name: str = "sparsity") -> jax.Array:
    if not _is_traced(sparsity):  # concrete (number, NumPy or JAX array): checked, raises on bad values
        return jnp.int32(int(np.round(check_sparsity(sparsity, name) * n)))
    if not jnp.issubdtype(sparsity.dtype, jnp.number) or np.ndim(sparsity) != 0:
        raise TypeError(f"{name} must be a scalar number, got a traced {sparsity.dtype} {np.shape(sparsity)}")
    s = jnp.asarray(sparsity, jnp.float32)
    s = jnp.clip(jnp.where(jnp.isnan(s), 0.0, s), 0.0, 1.0)  # traced: NaN -> 0, clipped to [0, 1]
    return jnp.round(s * n).astype(jnp.int32)


def check_scores(scores: PyTree, what: str = "scores") -> None:
    """Raises ``ValueError`` naming the leaf if concrete scores hold NaN (no-op under jit)."""
    for path, s in tree_lib.leaves_with_paths(scores, is_leaf=tree_lib.is_none):
        if s is None or isinstance(s, jax.core.Tracer):
            continue
        if not jnp.issubdtype(jnp.asarray(s).dtype, jnp.floating):
            continue
        # CPU-resident: check on the host (no per-shape compile); elsewhere one reduction on device
        has_nan = np.isnan(np.asarray(s)).any() if on_host_cpu([s], 0) else bool(_any_nan(s))
        if has_nan:
            raise ValueError(f"{what} leaf {path!r} contains NaN; cannot rank it")


@jax.jit
def _any_nan(s: jax.Array) -> jax.Array:
    return jnp.isnan(s).any()  # a scalar: replicated, readable in every process of a multi-process job


def _on_device(x: jax.Array, s: Any) -> bool:
    """A concrete device (sharded, accelerator, or multi-process) leaf with a concrete sparsity:
    run its per-leaf mask as one jitted program (op-by-op dispatch would compile every op)."""
    return not _is_traced(x) and not _is_traced(s) and not on_host_cpu([x], 0)


def _leaf_program(fn: Any, x: jax.Array, s: Any, **static: Any) -> jax.Array:
    """``fn(x, s, **static)`` jitted with a static sparsity; the mask gets ``x``'s sharding."""
    sh = x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) else None
    return _jit_leaf(fn, sh, float(check_sparsity(s)), tuple(sorted(static.items())))(x)


@functools.lru_cache(maxsize=256)
def _jit_leaf(fn: Any, sh: Any, s: float, static: tuple) -> Any:
    return jax.jit(lambda x: fn(x, s, **dict(static)), out_shardings=sh)


def topk_mask(scores: jax.Array, sparsity: float | jax.Array) -> jax.Array:
    """Keep-mask pruning exactly ``round(sparsity * scores.size)`` lowest scores of one array.

    >>> topk_mask(jnp.array([3., 1., 2., 1.]), 0.5)
    Array([ True, False,  True, False], dtype=bool)
    """
    if isinstance(sparsity, (str, bytes)):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    scores = jnp.asarray(scores)
    (mask,) = prune_lowest([scores], _n_prune(sparsity, scores.size))
    return mask


def _resolve_sparsities(scores: PyTree, sparsities: Any, prunable: Any) -> PyTree:
    """Broadcasts a scalar sparsity over prunable leaves, or validates a per-leaf tree."""
    tree_lib.check_no_none_leaves(scores, "scores")
    if isinstance(sparsities, (str, bytes, bool, np.bool_)):
        raise TypeError(
            f"sparsities must be a number in [0, 1) or a pytree of them, got {type(sparsities).__name__} {sparsities!r}"
        )
    if _is_scalar_sparsity(sparsities):
        if not _is_traced(sparsities):
            check_sparsity(sparsities, "sparsities")
        if prunable is None or isinstance(prunable, (list, tuple)):
            prunable = tree_lib.prunable_tree(scores, prunable)
        else:
            tree_lib.check_same_structure(scores, prunable, what="prunable", check_shapes=False)
        out = jax.tree.map(lambda ok: sparsities if ok else None, prunable)
        _warn_if_nothing_prunable(scores, out)
        return out
    tree_lib.check_same_structure(scores, sparsities, what="sparsities", check_shapes=False)
    for path, sp in tree_lib.leaves_with_paths(sparsities, is_leaf=tree_lib.is_none):
        if sp is not None and not _is_traced(sp):
            check_sparsity(sp, f"sparsities leaf {path!r}")
    return sparsities


def _warn_if_nothing_prunable(scores: PyTree, chosen: PyTree) -> None:
    if jax.tree.leaves(scores) and all(c is None for c in jax.tree.leaves(chosen, is_leaf=tree_lib.is_none)):
        paths = [p for p, _ in tree_lib.leaves_with_paths(scores)]
        warnings.warn(
            f"no prunable leaf among {paths[:8]}{' ...' if len(paths) > 8 else ''}: every mask is "
            "None (nothing is pruned). By default only float leaves with ndim >= 2 that are not "
            "biases/norms are pruned; pass prunable=[(regex, True)] to choose leaves.",
            UserWarning,
            stacklevel=3,
        )


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
    flat_scores = treedef.flatten_up_to(scores)  # type: ignore[attr-defined]  # jaxlib's PyTreeDef has no stubs
    chosen = [(i, jnp.asarray(x)) for i, (s, x) in enumerate(zip(flat_sp, flat_scores)) if s is not None]
    out: list[Any] = [None] * len(flat_sp)
    if chosen:  # one jitted call ranks every leaf (each leaf its own group)
        n_prune = jnp.stack([_n_prune(flat_sp[i], int(x.size)) for i, x in chosen])
        arrays = tuple(x for _, x in chosen)
        if on_host_cpu(arrays, n_prune):  # concrete CPU arrays: NumPy introselect per leaf, no compiles
            masks = [host_prune_lowest([x], int(n))[0] for x, n in zip(arrays, np.asarray(n_prune))]
        elif unsharded(arrays):  # one call per leaf: dispatched asynchronously, they overlap on CPU
            masks = [
                select_lowest((x,), n_prune[j : j + 1], groups=(0,), n_groups=1, flat=True)[0]
                for j, x in enumerate(arrays)
            ]
        else:  # sharded or traced: one program, every leaf's counts all-reduced together
            masks = select_lowest(arrays, n_prune, groups=tuple(range(len(chosen))), n_groups=len(chosen))
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
    tree_lib.check_no_none_leaves(scores, "scores")
    if isinstance(sparsity, (str, bytes)) or not _is_scalar_sparsity(sparsity):
        raise TypeError(
            f"global_masks: sparsity must be a number in [0, 1) (one scalar), got "
            f"{type(sparsity).__name__} {sparsity!r}"
        )
    if not _is_traced(sparsity):
        check_sparsity(sparsity)
    if prunable is None or isinstance(prunable, (list, tuple)):
        prunable = tree_lib.prunable_tree(scores, prunable)
    else:
        tree_lib.check_same_structure(scores, prunable, what="prunable", check_shapes=False)
    flat_scores, treedef = jax.tree.flatten(scores)
    flat_ok = treedef.flatten_up_to(prunable)  # type: ignore[attr-defined]  # jaxlib's PyTreeDef has no stubs
    chosen = [jnp.asarray(s) for s, ok in zip(flat_scores, flat_ok) if ok]  # no flatten/concat: shardable
    total = sum(int(c.size) for c in chosen)
    kept = iter(prune_lowest(chosen, _n_prune(sparsity, total)) if chosen else [])
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


def _check_axis(what: str, path: str, axis: Any, x: Any) -> int:
    """``axis`` normalized for leaf ``x``; ``ValueError`` naming the leaf if out of ``[-ndim, ndim)``."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{what}: axis must be an int, got {axis!r}")
    nd = np.ndim(x)
    if nd == 0:
        raise ValueError(
            f"{what} for leaf {path!r}: the leaf is a scalar (shape ()), it has no axis {axis}; "
            "exclude it with prunable rules"
        )
    if not -nd <= axis < nd:
        raise ValueError(
            f"{what} for leaf {path!r}: axis {axis} is out of range for its ndim {nd} "
            f"(shape {np.shape(x)}; valid axes are {-nd}..{nd - 1})"
        )
    return int(axis) % nd


def _nm_one(path: str, x: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    ax = _check_axis("N:M mask", path, axis, x)
    if x.shape[ax] % m:
        raise ValueError(f"N:M mask for leaf {path!r}: axis {axis} of shape {x.shape} must be divisible by M={m}")
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
        sp,
        scores,
        is_leaf=tree_lib.is_none,
    )


def _block_one(path: str, x: jax.Array, s: Any, block: tuple[int, int]) -> jax.Array:
    bh, bw = block
    if x.ndim < 2:
        raise ValueError(f"block mask for leaf {path!r}: needs ndim >= 2, got shape {x.shape}")
    rows, cols = int(np.prod(x.shape[:-1])), x.shape[-1]
    if rows % bh or cols % bw:
        raise ValueError(
            f"block {block} does not divide leaf {path!r} viewed as a ({rows}, {cols}) matrix "
            f"(shape {x.shape}: all leading dims flattened into rows, last dim = columns)"
        )
    if _on_device(x, s):
        return _leaf_program(_block_keep, x, s, block=block)
    return _block_keep(x, s, block)


def _block_keep(x: jax.Array, s: Any, block: tuple[int, int]) -> jax.Array:
    bh, bw = block
    rows, cols = int(np.prod(x.shape[:-1])), x.shape[-1]
    mat = jnp.abs(x.reshape(rows, cols)).reshape(rows // bh, bh, cols // bw, bw)
    block_scores = mat.mean(axis=(1, 3))
    keep = topk_mask(block_scores, s)
    return jnp.repeat(jnp.repeat(keep, bh, axis=0), bw, axis=1).reshape(x.shape)


def block_masks(scores: PyTree, sparsities: Any, block: tuple[int, int] = (4, 4), *, prunable: Any = None) -> PyTree:
    """Block masks: whole ``block`` tiles kept or pruned, by their mean score.

    Each kernel is viewed as a 2-D ``(prod(shape[:-1]), shape[-1])`` matrix
    (fan-in x fan-out, so conv kernels work too); ``block=(bh, bw)`` must
    divide it (no padding: a ``ValueError`` names the leaf). Exactly
    ``round(s * n_blocks)`` blocks are pruned per layer.
    """
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(b, (int, np.integer)) and b > 0 for b in block)
    ):
        raise ValueError(f"block must be a pair of positive ints, got {block!r}")
    check_scores(scores)
    sp = _resolve_sparsities(scores, sparsities, prunable)
    pair = cast(tuple[int, int], tuple(block))  # checked above: two positive ints
    return tree_lib.map_with_path(
        lambda path, s, x: None if s is None else _block_one(path, jnp.asarray(x), s, pair),
        sp,
        scores,
        is_leaf=tree_lib.is_none,
    )


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
        ax = _check_axis("channel mask", path, axis, x)
        if _on_device(x, s):
            return _leaf_program(_channel_keep, x, s, ax=ax)
        return _channel_keep(x, s, ax)

    return tree_lib.map_with_path(one, sp, scores, is_leaf=tree_lib.is_none)


def _channel_keep(x: jax.Array, s: Any, ax: int) -> jax.Array:
    reduce_axes = tuple(i for i in range(x.ndim) if i != ax)
    ch = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=reduce_axes))
    keep = topk_mask(ch, s)
    shape = [1] * x.ndim
    shape[ax] = x.shape[ax]
    return jnp.broadcast_to(keep.reshape(shape), x.shape)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes pruned entries: ``where(mask, w, 0)``; leaves whose mask is ``None`` pass through.

    Masks must be boolean arrays (``True`` = kept); any other dtype raises
    ``TypeError`` naming the leaf (convert 0/1 masks with ``m.astype(bool)``).

    >>> apply_masks({'w': jnp.array([1., 2.])}, {'w': jnp.array([True, False])})['w']
    Array([1., 0.], dtype=float32)
    """
    check_masks(params, masks)
    return jax.tree.map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)), masks, params, is_leaf=tree_lib.is_none
    )


def check_masks(params: PyTree, masks: PyTree, what: str = "masks") -> None:
    """Raises naming the leaf if ``masks`` does not match ``params`` or a mask is not boolean."""
    tree_lib.check_same_structure(params, masks, what=what)
    check_boolean_masks(masks, what)


def check_boolean_masks(masks: PyTree, what: str = "masks") -> None:
    """Raises ``TypeError`` naming the first mask leaf that is not a boolean array (``None`` leaves pass)."""
    for path, m in tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none):
        if m is None:
            continue
        dtype = getattr(m, "dtype", None)
        if dtype is None:
            dtype = np.asarray(m).dtype
        if np.dtype(dtype) != np.bool_:
            raise TypeError(
                f"{what} leaf {path!r} has dtype {dtype}; masks must be boolean (True = kept). "
                "Convert 0/1 masks with .astype(bool)"
            )


def combine_masks(a: PyTree, b: PyTree) -> PyTree:
    """Logical AND of two masks pytrees (``None`` means all-kept)."""

    def one(x, y):
        if x is None:
            return y
        if y is None:
            return x
        return jnp.logical_and(x, y)

    return jax.tree.map(one, a, b, is_leaf=tree_lib.is_none)
