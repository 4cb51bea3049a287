"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with layer-wise OBS weight reconstruction.

For a kernel viewed as ``W`` ``(d_in, d_out)`` and its calibration input
statistics (``calibrate``), each output unit ``w`` (a column of the Flax
kernel, a row of the paper's ``(d_out, d_in)`` weight) is pruned input by
input, left to right. Pruning input ``i`` sets ``w_i = 0`` and moves the
error onto the inputs not yet processed with the Optimal Brain Surgeon
update ``w_{>i} -= (w_i / [H^-1]_{ii}) [H^-1]_{i,>i}``, where
``H = 2 X^T X / n + damp * mean(diag) I`` and the successive inverses of the
trailing sub-Hessians are the rows of the upper Cholesky factor of ``H^-1``.
Updates are applied lazily: exactly inside a block of ``block_size`` inputs,
then once to the rest with one matmul. The mask is chosen adaptively: for
unstructured sparsity, the ``round(sparsity * size)`` lowest ``w^2 /
[H^-1]_{ii}^2`` of each block (across all units); for N:M, the ``M - N``
lowest of each group of ``M`` inputs of each unit, when the group is reached.

All arithmetic is float32 (bf16 params are cast back at the end); the
per-layer routine is one jitted function per (shape, settings).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.llm.calibration import LayerStats, calibrate, from_matrix, kernel_in_axes, kernel_matrix
from jaxprune._src.llm.stacked import StackPair, per_layer
from jaxprune._src.llm.wanda import parse_structure, resolve_sparsity, selected_leaves
from jaxprune._src.tree import Rules, check_same_structure, is_none, leaves_with_paths, map_with_path
from jaxprune._src.types import PyTree

__all__ = ["sparsegpt", "sparsegpt_matrix", "sparsegpt_sequential", "hessian"]

_HI = jax.lax.Precision.HIGHEST


def hessian(stats: LayerStats, damp: float = 0.01) -> jax.Array:
    """``2 X^T X / n + damp * mean(diag) I`` (dead inputs, with zero diagonal, get 1 on the diagonal first)."""
    n = max(int(stats.count), 1)
    h = 2.0 * stats.xtx.astype(jnp.float32) / n
    diag = jnp.diag(h)
    h = h + jnp.diag(jnp.where(diag == 0, 1.0, 0.0))
    return h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)


@partial(jax.jit, static_argnames=("sparsity", "nm", "block_size"))
def sparsegpt_matrix(
    w: jax.Array,
    h: jax.Array,
    *,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    fixed_prune: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SparseGPT on one ``(d_in, d_out)`` kernel matrix with Hessian ``h`` ``(d_in, d_in)``.

    Returns ``(pruned w in float32, keep-mask)``. ``fixed_prune`` (bool
    ``(d_in, d_out)``, True = prune) replaces the adaptive mask choice: only
    the OBS reconstruction is done. The inputs are padded to a multiple of
    ``block_size`` (zero weights, identity Hessian, never chosen for pruning),
    so one compiled block step serves every block.

    Example::

        w2, keep = sparsegpt_matrix(w, hessian(stats), sparsity=0.5)  # w: (d_in, d_out); keep.sum() == w.size // 2
    """
    d_in, d_out = w.shape
    bs = int(block_size)
    n_blocks = -(-d_in // bs)
    pad = n_blocks * bs - d_in
    hinv = jnp.linalg.inv(h.astype(jnp.float32))
    hinv = 0.5 * (hinv + hinv.T)
    u = jnp.linalg.cholesky(hinv).T  # upper: hinv = u^T u
    wt = w.astype(jnp.float32).T  # (d_out, d_in): a row per output unit, as in the paper
    fixed = None if fixed_prune is None else fixed_prune.T
    if pad:
        u = jnp.pad(u, ((0, pad), (0, pad))) + jnp.diag(jnp.concatenate([jnp.zeros(d_in), jnp.ones(pad)]))
        wt = jnp.pad(wt, ((0, 0), (0, pad)))
        fixed = None if fixed is None else jnp.pad(fixed, ((0, 0), (0, pad)))
    real = jnp.arange(n_blocks * bs) < d_in
    chunk = nm[1] if nm is not None and fixed is None else 1

    def block(b, state):
        wt, q_all, prune_all = state
        i1 = b * bs
        w1 = jax.lax.dynamic_slice_in_dim(wt, i1, bs, axis=1)
        u_rows = jax.lax.dynamic_slice_in_dim(u, i1, bs, axis=0)  # (bs, d_pad)
        u1 = jax.lax.dynamic_slice_in_dim(u_rows, i1, bs, axis=1)
        d1 = jnp.diag(u1)
        real1 = jax.lax.dynamic_slice_in_dim(real, i1, bs)
        if fixed is not None:
            prune1 = jax.lax.dynamic_slice_in_dim(fixed, i1, bs, axis=1)
        elif nm is None:
            score = jnp.where(real1[None, :], (w1 / d1[None, :]) ** 2, jnp.inf)
            k = jnp.round(sparsity * d_out * jnp.sum(real1))
            order = jnp.argsort(score.reshape(-1), stable=True)
            prune1 = jnp.zeros(score.size, bool).at[order].set(jnp.arange(score.size) < k).reshape(score.shape)
        else:
            prune1 = jnp.zeros(w1.shape, bool)

        def step(g, inner):
            w1, q1, e1, prune1 = inner
            g0 = g * chunk
            if chunk > 1:  # N:M: choose the group's mask now, on the already-updated weights
                n, m = nm
                cols = jax.lax.dynamic_slice_in_dim(w1, g0, m, axis=1)
                dg = jax.lax.dynamic_slice_in_dim(d1, g0, m)
                ranks = jnp.argsort(jnp.argsort((cols / dg[None, :]) ** 2, axis=1, stable=True), axis=1, stable=True)
                prune1 = jax.lax.dynamic_update_slice_in_dim(prune1, ranks < (m - n), g0, axis=1)
            for c in range(chunk):
                i = g0 + c
                col = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
                drop = jax.lax.dynamic_index_in_dim(prune1, i, axis=1, keepdims=False)
                q = jnp.where(drop, 0.0, col)
                err = (col - q) / u1[i, i]
                w1 = w1 - err[:, None] * u1[i][None, :]
                q1 = jax.lax.dynamic_update_index_in_dim(q1, q, i, axis=1)
                e1 = jax.lax.dynamic_update_index_in_dim(e1, err, i, axis=1)
            return w1, q1, e1, prune1

        init = (w1, jnp.zeros_like(w1), jnp.zeros_like(w1), prune1)
        _, q1, e1, prune1 = jax.lax.fori_loop(0, bs // chunk, step, init)
        # lazy update of all later inputs at once (u is upper triangular: earlier columns get zero)
        wt = wt - jnp.matmul(e1, u_rows, precision=_HI)
        wt = jax.lax.dynamic_update_slice_in_dim(wt, q1, i1, axis=1)
        q_all = jax.lax.dynamic_update_slice_in_dim(q_all, q1, i1, axis=1)
        prune_all = jax.lax.dynamic_update_slice_in_dim(prune_all, prune1, i1, axis=1)
        return wt, q_all, prune_all

    init = (wt, jnp.zeros_like(wt), jnp.zeros(wt.shape, bool))
    _, q, prune = jax.lax.fori_loop(0, n_blocks, block, init)
    return q[:, :d_in].T, ~prune[:, :d_in].T


def _check_settings(block_size: int, damp: float, nm: tuple[int, int] | None) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if nm is not None and block_size % nm[1]:
        raise ValueError(f"block_size={block_size} must be a multiple of M={nm[1]} for N:M sparsity")
    if (
        isinstance(damp, bool)
        or not isinstance(damp, (int, float, np.integer, np.floating))
        or not math.isfinite(damp)
        or damp < 0
    ):
        raise ValueError(f"damp must be a finite float >= 0, got {damp!r}")


def _fixed_masks(params: PyTree, masks: PyTree) -> dict[str, Any]:
    """``{path: keep-mask}`` of the non-None leaves of ``masks`` (same structure as ``params``, boolean or 0/1)."""
    check_same_structure(params, masks, what="sparsegpt: masks")
    fixed = {}
    for path, m in leaves_with_paths(masks, is_leaf=is_none):
        if m is None:
            continue
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            if not bool(jnp.all((m == 0) | (m == 1))):
                raise ValueError(f"sparsegpt: masks leaf {path!r} must be boolean keep-masks (or 0/1), got {m.dtype}")
            m = m.astype(bool)
        fixed[path] = m
    return fixed


def sparsegpt(
    params: PyTree,
    stats: dict[str, LayerStats],
    sparsity: float,
    *,
    structure: str | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    rules: Rules | None = None,
    masks: PyTree | None = None,
) -> tuple[PyTree, PyTree]:
    """``(params with pruned and reconstructed kernels, bool keep-masks)`` at every calibrated leaf.

    ``stats`` from :func:`~jaxprune._src.llm.calibration.calibrate`; leaves
    not in ``stats`` (or set False by ``rules``) are returned unchanged with a
    ``None`` mask. ``structure``: ``None`` (unstructured) or ``"N:M"`` along the
    input axis (``sparsity`` must then be ``1 - N/M``). ``damp`` is the
    fraction of the mean Hessian diagonal added to it. ``masks`` (optional bool
    keep-mask pytree with the structure of ``params``): use these masks and only do
    the OBS reconstruction (``sparsity`` is then not used and ``structure`` must be None).

    >>> from jaxprune.llm import calibrate
    >>> p = {'w': jnp.array([[1.], [1.]])}
    >>> x = jnp.array([[1., 1.], [1., 0.9]])
    >>> new, keep = sparsegpt(p, calibrate(lambda p, x: x @ p['w'], p, [x]), 0.5, block_size=2, damp=0.0)
    >>> keep['w'].tolist(), [round(float(v), 2) for v in new['w'][:, 0]]
    ([[False], [True]], [0.0, 2.05])
    """
    nm = parse_structure(structure)
    if masks is None:
        sparsity = resolve_sparsity(sparsity, nm)
    elif nm is not None:
        raise ValueError(
            f"sparsegpt: structure={structure!r} is not used with masks (the given masks fix the pattern); "
            "pass structure=None"
        )
    _check_settings(block_size, damp, nm)
    chosen = selected_leaves(params, stats, rules)
    fixed: dict[str, Any] = {}
    if masks is not None:
        fixed = _fixed_masks(params, masks)
    out_masks: dict[str, jax.Array] = {}

    def one(path: str, w: Any, ok: bool) -> Any:
        if not ok or (masks is not None and path not in fixed):
            return w
        if not jnp.issubdtype(jnp.asarray(w).dtype, jnp.floating):
            raise TypeError(
                f"sparsegpt: leaf {path!r} has dtype {jnp.asarray(w).dtype}; SparseGPT updates the kept weights and "
                "needs a floating-point kernel (use wanda_masks, or exclude it with rules)"
            )
        if path in fixed and np.shape(fixed[path]) != np.shape(w):
            raise ValueError(f"masks leaf {path!r} has shape {np.shape(fixed[path])}, expected {np.shape(w)}")
        pair = StackPair(w, fixed[path]) if path in fixed else StackPair(w)
        new, keep = per_layer(lambda wm, st: update(path, wm, st), pair, stats[path], path)  # per layer if scanned
        out_masks[path] = keep
        return new

    def update(path: str, wm: tuple, st: LayerStats) -> tuple[jax.Array, jax.Array]:
        w = wm[0]
        axes = kernel_in_axes(np.shape(w), st, path)
        mat = kernel_matrix(jnp.asarray(w), axes).astype(jnp.float32)  # float32 math, one compile for any dtype
        if nm is not None and mat.shape[0] % nm[1]:
            raise ValueError(
                f"N:M for leaf {path!r}: input size {mat.shape[0]} is not divisible by M={nm[1]} "
                "(exclude it with rules)"
            )
        fp = None if len(wm) == 1 else ~kernel_matrix(jnp.asarray(wm[1], bool), axes)
        new, keep = sparsegpt_matrix(
            mat, hessian(st, damp), sparsity=float(sparsity or 0.0), nm=nm, block_size=int(block_size), fixed_prune=fp
        )
        if not bool(jnp.all(jnp.isfinite(new))):
            if not bool(jnp.all(jnp.isfinite(mat))):
                raise ValueError(f"sparsegpt: leaf {path!r} has NaN/Inf weights")
            raise ValueError(f"sparsegpt: leaf {path!r}: non-finite result (H not positive definite?); raise damp")
        return from_matrix(new, np.shape(w), axes).astype(jnp.asarray(w).dtype), from_matrix(keep, np.shape(w), axes)

    new_params = map_with_path(one, params, chosen)
    mask_tree = map_with_path(lambda path, _: out_masks.get(path), params)
    return new_params, mask_tree


def sparsegpt_sequential(
    fn_layers: Sequence[Callable[[PyTree, Any], Any]],
    params: PyTree,
    batches: Iterable[Any],
    sparsity: float,
    *,
    row_mask: Callable[[Any], jax.Array] | None = None,
    calib_rules: Rules | None = None,
    progress: bool = False,
    **kw: Any,
) -> tuple[PyTree, PyTree]:
    """SparseGPT layer by layer, each layer calibrated on the outputs of the already-pruned layers before it.

    Contract: ``fn_layers`` is a list of stages ``f_k(params, h) -> h_next``
    that compose to the model: ``h_0`` is a calibration batch and ``h_{k+1} =
    f_k(params, h_k)`` (``h`` may be any pytree, e.g. ``(hidden, mask)``). Each
    stage reads its weights from the full ``params``. For each stage in order:
    the kernels it multiplies (not pruned by an earlier stage) are calibrated on
    the current ``h_k`` of every batch, pruned with :func:`sparsegpt` (``kw``:
    ``structure``, ``block_size``, ``damp``, ``rules``), and ``h_{k+1}`` is
    recomputed with the pruned weights. The ``h_k`` of all batches are kept in
    memory (as the paper does). ``row_mask(h_k)`` and ``calib_rules`` are passed
    to ``calibrate``. Returns ``(pruned params, keep-masks)``.

    Example (a 2-block MLP)::

        def embed(p, x): return x                              # stage without kernels is fine
        def block(i):
            return lambda p, h: jax.nn.relu(h @ p[f'b{i}']['kernel'])
        new, masks = sparsegpt_sequential([embed, block(0), block(1)], params, batches, 0.5)

    A Linen BERT: ``[lambda p, b: (emb.apply({'params': p['params']['embeddings']}, b['ids'], b['types']),
    b['mask'])] + [lambda p, h, i=i: (layer.apply({'params': p['params'][f'layer_{i}']}, *h), h[1]) for i ...]``.
    """
    if isinstance(fn_layers, (str, bytes)) or not all(callable(f) for f in fn_layers):
        raise TypeError("fn_layers must be a sequence of callables f(params, h) -> h_next")
    if not len(fn_layers):
        raise ValueError("sparsegpt_sequential: fn_layers is empty (give the model's stages f(params, h) -> h_next)")
    unknown = sorted(set(kw) - {"structure", "block_size", "damp", "rules", "masks"})
    if unknown:
        raise TypeError(
            f"sparsegpt_sequential: unknown keyword argument(s) {unknown}; sparsegpt takes structure, block_size, "
            "damp, rules, masks"
        )
    nm = parse_structure(kw.get("structure"))  # fail before any calibration work
    if kw.get("masks") is None:
        resolve_sparsity(sparsity, nm)
    _check_settings(kw.get("block_size", 128), kw.get("damp", 0.01), nm)
    hs = list(batches)
    if not hs:
        raise ValueError("sparsegpt_sequential: batches is empty")
    done: set[str] = set()
    all_masks: dict[str, jax.Array] = {}
    calibrated = False
    for k, f in enumerate(fn_layers):
        stats = calibrate(f, params, hs, rules=calib_rules, row_mask=row_mask, progress=progress)
        stats = {p: s for p, s in stats.items() if p not in done}
        if stats:
            calibrated = True
            params, masks = sparsegpt(params, stats, sparsity, **kw)
            for p, m in leaves_with_paths(masks, is_leaf=is_none):
                if m is not None:
                    all_masks[p] = m
                    done.add(p)
        if k + 1 < len(fn_layers):
            jf = jax.jit(f)
            hs = [jf(params, h) for h in hs]
    if not calibrated:
        raise ValueError(
            f"sparsegpt_sequential: none of the {len(fn_layers)} stages multiplies a calibratable kernel of params "
            "(check fn_layers and calib_rules), so nothing was pruned"
        )
    return params, map_with_path(lambda path, _: all_masks.get(path), params)
