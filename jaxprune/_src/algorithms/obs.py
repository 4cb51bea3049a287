"""WoodFisher / OBS: second-order pruning with a block-diagonal empirical Fisher.

For each prunable leaf, flattened to ``d`` weights and cut into blocks of
``block_size`` (the last block zero-padded; padding is decoupled and never
pruned), the empirical Fisher of a block is ``F = 1/N sum_n g_n g_n^T + damp I``
from ``N`` per-sample (or per-minibatch) gradients, as in WoodFisher
(Singh & Alistarh 2020); ``F^-1`` stands for the inverse Hessian.

* **Selection**: OBS saliency ``rho_i = w_i^2 / (2 [F^-1]_ii)``, the loss
  increase of removing ``w_i`` alone; the lowest are pruned (layerwise or one
  global ranking: saliencies are comparable across layers).
* **Update**: for the set ``Q`` of pruned weights of a block (new and old), the
  exact multi-weight OBS optimum of the quadratic model,
  ``delta_w = -F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q`` (WoodFisher's "joint" update;
  for a single weight it is ``-w_q / [F^-1]_qq F^-1[:, q]``). It minimises
  ``1/2 dw^T F dw`` subject to ``w_Q + dw_Q = 0`` exactly; only the choice of
  ``Q`` by single-weight saliencies is an approximation.

One-shot: :func:`woodfisher_prune` (per-sample gradients in, pruned and updated
params out). Gradual: :func:`woodfisher` is a :class:`jaxprune.Pruner` on a
polynomial schedule that accumulates the Fisher blocks from the gradient of
every step (``observe``), prunes and corrects the kept weights at each update
(``param_update=True``), then restarts the accumulation.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune._src import masks as masks_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.algorithms.common import check_fraction, check_int, check_spec, masked_scores
from jaxprune._src.distributions import check_sparsity
from jaxprune._src.pruner import MaskSpec, Pruner, check_mask_spec, check_sparsity_arg, dense_masks, masks_from_scores
from jaxprune._src.schedules import polynomial
from jaxprune._src.types import PyTree

__all__ = [
    "fisher_inverse",
    "obs_saliency",
    "obs_update",
    "obs_prune",
    "woodfisher_prune",
    "woodfisher_scores",
    "woodfisher_pruner",
]


def _block(d: int, block_size: int) -> int:
    return max(1, min(block_size, d))


def _to_blocks(x: jax.Array, b: int) -> jax.Array:
    flat = x.reshape(-1)
    pad = (-flat.size) % b
    return jnp.pad(flat, (0, pad)).reshape(-1, b)


def _from_blocks(xb: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return xb.reshape(-1)[: math.prod(shape)].reshape(shape)


def _grad_blocks(g: jax.Array, shape: tuple[int, ...], b: int) -> jax.Array:
    """(N, *shape) -> (N, n_blocks, b), zero-padded."""
    n = g.shape[0]
    flat = g.reshape(n, -1).astype(jnp.float32)
    pad = (-flat.shape[1]) % b
    return jnp.pad(flat, ((0, 0), (0, pad))).reshape(n, -1, b)


def _outer_sum(gb: jax.Array) -> jax.Array:
    return jnp.einsum("nki,nkj->kij", gb, gb)


def _spd_inverse_many(mats: list[jax.Array], floors: list[float]) -> list[jax.Array]:
    """Inverses of batches of symmetric positive-definite matrices ``(k_i, b_i, b_i)``, in ONE ``eigh``.

    Every batch is padded to the largest ``b`` with an identity block (block-diagonal, so the
    inverse of the padded matrix is exact on the original block) and all batches are
    concatenated. Eigenvalues are floored at the batch's ``floor`` (``damp`` for a damped Fisher,
    whose true spectrum is ``>= damp``).

    Why one call: on XLA:CPU (jax 0.10) several LAPACK custom calls (``eigh``, ``getrf``) in one
    compiled function can deadlock when run concurrently -- WoodFisher's gradual update over a
    CifarResNet never returned. ``eigh`` + matmuls instead of ``jnp.linalg.inv``/``solve`` also
    avoids XLA:CPU's slow batched triangular solves (576 blocks of 64x64: 1.9 s -> 0.3 s here).
    """
    if not mats:
        return []
    big = max(m.shape[-1] for m in mats)
    padded, lows = [], []
    for m, floor in zip(mats, floors):
        b, k = m.shape[-1], m.shape[0]
        pm = jnp.zeros((k, big, big), jnp.float32).at[:, :b, :b].set(m.astype(jnp.float32))
        pm = pm + jnp.diag(jnp.arange(big) >= b).astype(jnp.float32)
        padded.append(pm)
        lows.append(jnp.full((k,), max(float(floor), float(jnp.finfo(jnp.float32).tiny)), jnp.float32))
    lam, v = jnp.linalg.eigh(jnp.concatenate(padded))
    lam = jnp.maximum(lam, jnp.concatenate(lows)[:, None])
    inv = jnp.einsum("nik,nk,njk->nij", v, 1.0 / lam, v)
    out, start = [], 0
    for m in mats:
        b, k = m.shape[-1], m.shape[0]
        out.append(inv[start : start + k, :b, :b])
        start += k
    return out


def _map_inverse(tree: PyTree, floor: float) -> PyTree:
    """:func:`_spd_inverse_many` over the non-``None`` leaves of ``tree`` (one ``eigh`` call)."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=tree_lib.is_none)
    idx = [i for i, x in enumerate(leaves) if x is not None]
    invs = _spd_inverse_many([leaves[i] for i in idx], [floor] * len(idx))
    for i, x in zip(idx, invs):
        leaves[i] = x
    return jax.tree.unflatten(treedef, leaves)


def _check_args(block_size: Any, damp: Any) -> tuple[int, float]:
    block_size = check_int(block_size, "block_size", 1)
    try:
        damp = float(damp)
    except (TypeError, ValueError):
        raise TypeError(f"damp must be a positive number, got {damp!r}") from None
    if not damp > 0:
        raise ValueError(f"damp must be > 0 (it keeps F invertible), got {damp!r}")
    return block_size, damp


def _prunable(params: PyTree, prunable: Any) -> PyTree:
    if prunable is not None and not isinstance(prunable, (list, tuple)):
        return prunable
    return tree_lib.prunable_tree(params, prunable)


def _check_grads(params: PyTree, grads: PyTree, ok: PyTree) -> None:
    tree_lib.check_same_structure(params, grads, what="per-sample grads", check_shapes=False)
    for (path, w), (_, g), (_, o) in zip(
        tree_lib.leaves_with_paths(params), tree_lib.leaves_with_paths(grads), tree_lib.leaves_with_paths(ok)
    ):
        if o and (jnp.ndim(g) != jnp.ndim(w) + 1 or jnp.shape(g)[1:] != jnp.shape(w)):
            raise ValueError(
                f"fisher_inverse: grads leaf {path!r} must have shape (N, *{jnp.shape(w)}) "
                f"(a leading sample axis), got {jnp.shape(g)}"
            )


def fisher_inverse(
    params: PyTree, grads: PyTree, *, block_size: int = 128, damp: float = 1e-5, prunable: Any = None
) -> PyTree:
    """Inverse block-diagonal empirical Fisher per prunable leaf, ``(n_blocks, b, b)``, else ``None``.

    Args:
      params: the weights (shapes only).
      grads: pytree like params whose leaves have a leading sample axis ``N``
        (per-sample grads from ``jax.vmap(jax.grad(loss))``, or stacked minibatch grads).
      block_size: ``b`` (capped at the leaf size); damp: ``lambda`` added to the diagonal.
      prunable: ``(regex, bool)`` rules or bool pytree (default: kernels).

    >>> p = {'w': jnp.ones((2, 2))}
    >>> finv = fisher_inverse(p, {'w': jnp.zeros((3, 2, 2))}, block_size=2, damp=0.5)
    >>> finv['w'].shape, float(finv['w'][0, 0, 0])
    ((2, 2, 2), 2.0)
    """
    block_size, damp = _check_args(block_size, damp)
    ok = _prunable(params, prunable)
    _check_grads(params, grads, ok)

    def one(path, w, g, o):
        if not o:
            return None
        g = jnp.asarray(g)
        b = _block(math.prod(jnp.shape(w)), block_size)
        f = _outer_sum(_grad_blocks(g, jnp.shape(w), b)) / g.shape[0]
        return f + damp * jnp.eye(b, dtype=f.dtype)

    return _map_inverse(tree_lib.map_with_path(one, params, grads, ok), damp)


def _saliency_leaf(w: jax.Array, finv: jax.Array) -> jax.Array:
    b = finv.shape[-1]
    wb = _to_blocks(w.astype(jnp.float32), b)
    diag = jnp.diagonal(finv, axis1=-2, axis2=-1)
    return _from_blocks(jnp.square(wb) / (2.0 * diag), jnp.shape(w))


def obs_saliency(params: PyTree, finv: PyTree) -> PyTree:
    """``w_i^2 / (2 [F^-1]_ii)`` at leaves with an inverse, ``|w|`` elsewhere (scores shaped like params).

    >>> float(obs_saliency({'w': jnp.array([[2.]])}, {'w': jnp.array([[[0.5]]])})['w'][0, 0])
    4.0
    """
    return jax.tree.map(
        lambda f, w: jnp.abs(w) if f is None else _saliency_leaf(w, f), finv, params, is_leaf=tree_lib.is_none
    )


def _update_system(w: jax.Array, finv: jax.Array, keep: jax.Array):
    """Blocks of one leaf: ``(wb, pruned-bool pb, M)`` with ``M = P F^-1 P + (I - P)``.

    Solving ``M x = P w`` gives ``x_Q = ([F^-1]_QQ)^-1 w_Q`` and ``x = 0`` off ``Q``; ``M`` is
    symmetric positive definite. Padding is marked pruned: it is 0 and decoupled (F is damp*I there).
    """
    b = finv.shape[-1]
    wb = _to_blocks(w.astype(jnp.float32), b)
    pb = _to_blocks(~keep, b) | (_to_blocks(jnp.ones(jnp.shape(w), bool), b) == 0)
    p = pb.astype(jnp.float32)
    eye = jnp.eye(b, dtype=jnp.float32)
    return wb, pb, p[:, :, None] * finv * p[:, None, :] + eye * (1.0 - p)[:, :, None]


def obs_update(params: PyTree, finv: PyTree, masks: PyTree) -> PyTree:
    """Params after the joint OBS update that zeroes every pruned weight of each block.

    Leaves whose mask is ``None`` are unchanged; a masked leaf without an inverse is just masked.
    All blocks of all leaves are solved in one batched call (see :func:`_spd_inverse_many`).
    """
    m_leaves, treedef = jax.tree.flatten(masks, is_leaf=tree_lib.is_none)
    f_leaves = treedef.flatten_up_to(finv)  # type: ignore[attr-defined]  # jaxlib's PyTreeDef has no stubs
    w_leaves = treedef.flatten_up_to(params)  # type: ignore[attr-defined]
    out = list(w_leaves)
    systems = {}
    for i, (m, f, w) in enumerate(zip(m_leaves, f_leaves, w_leaves)):
        if m is None:
            continue
        if f is None:
            out[i] = jnp.where(m, w, jnp.zeros_like(w))
        else:
            systems[i] = _update_system(w, f, m)
    inverses = _spd_inverse_many([sys_[2] for sys_ in systems.values()], [0.0] * len(systems))
    for (i, (wb, pb, _)), minv in zip(systems.items(), inverses):
        x = jnp.einsum("kij,kj->ki", minv, jnp.where(pb, wb, 0.0))
        new = jnp.where(pb, 0.0, wb - jnp.einsum("kij,kj->ki", f_leaves[i], x))
        out[i] = _from_blocks(new, jnp.shape(w_leaves[i])).astype(w_leaves[i].dtype)
    return jax.tree.unflatten(treedef, out)


def obs_prune(
    params: PyTree,
    finv: PyTree,
    sparsity: float | jax.Array,
    spec: MaskSpec = MaskSpec(),
    *,
    masks: PyTree = None,
    final_sparsity: float | None = None,
) -> tuple[PyTree, PyTree]:
    """OBS pruning given inverse-Hessian blocks: ``(updated_params, masks)``.

    Already-pruned weights (``masks``) stay pruned and are part of every block's ``Q``.
    """
    check_spec(spec, "obs_prune")
    if masks is None:
        masks = dense_masks(params, spec)
    scores = masked_scores(obs_saliency(params, finv), masks)
    new = masks_lib.combine_masks(masks, masks_from_scores(scores, sparsity, spec, final_sparsity=final_sparsity))
    return obs_update(params, finv, new), new


def woodfisher_prune(
    params: PyTree,
    grads: PyTree,
    sparsity: float,
    *,
    block_size: int = 128,
    damp: float = 1e-5,
    spec: MaskSpec = MaskSpec(scope="global"),
    masks: PyTree = None,
) -> tuple[PyTree, PyTree]:
    """One-shot WoodFisher: Fisher from per-sample ``grads`` (leading axis N), OBS selection + update.

    >>> import jax
    >>> p = {'w': jnp.array([[1., 0.1], [2., -3.]])}
    >>> g = {'w': jax.random.normal(jax.random.key(0), (16, 2, 2))}
    >>> new, m = woodfisher_prune(p, g, 0.5, block_size=4)
    >>> int((new['w'] == 0).sum()), int((~m['w']).sum())
    (2, 2)
    """
    block_size, damp = _check_args(block_size, damp)
    sparsity = check_sparsity(sparsity)
    check_spec(spec, "woodfisher_prune")
    _check_grads(params, grads, _prunable(params, spec.prunable))  # clear errors, before tracing
    return _woodfisher_jit(params, grads, sparsity, block_size, damp, spec, masks)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _woodfisher_jit(params, grads, sparsity, block_size, damp, spec, masks):
    finv = fisher_inverse(params, grads, block_size=block_size, damp=damp, prunable=spec.prunable)
    return obs_prune(params, finv, sparsity, spec, masks=masks)


def woodfisher_scores(
    params: PyTree, grads: PyTree, *, block_size: int = 128, damp: float = 1e-5, prunable: Any = None
) -> PyTree:
    """OBS saliencies (shaped like params) from per-sample ``grads``, e.g. for group scores."""
    return obs_saliency(params, fisher_inverse(params, grads, block_size=block_size, damp=damp, prunable=prunable))


def woodfisher_pruner(
    sparsity: float,
    *,
    begin: int,
    end: int,
    every: int,
    block_size: int = 128,
    damp: float = 1e-5,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
    spec: MaskSpec = MaskSpec(scope="global"),
) -> Pruner:
    """Gradual WoodFisher on the polynomial schedule; Fisher from the gradients of the steps since
    the last update (per-minibatch gradients, via ``observe``).

    >>> p = woodfisher_pruner(0.5, begin=2, end=6, every=2, block_size=16)
    >>> p.param_update, p.observe is not None
    (True, True)
    """
    check_sparsity_arg(sparsity, "woodfisher_pruner")
    check_sparsity_arg(initial_sparsity, "woodfisher_pruner", "initial_sparsity")
    check_mask_spec(spec, "woodfisher_pruner")
    block_size, damp = _check_args(block_size, damp)
    check_spec(spec, "woodfisher")
    check_fraction(power, "power", low=0.0, high=float("inf"))
    schedule = polynomial(sparsity, begin=begin, end=end, every=every, initial_sparsity=initial_sparsity, power=power)

    def zeros_aux(params, masks):
        def one(m, w):
            if m is None:
                return None
            b = _block(math.prod(jnp.shape(w)), block_size)
            nb = -(-math.prod(jnp.shape(w)) // b)
            return jnp.zeros((nb, b, b), jnp.float32)

        return {"sum": jax.tree.map(one, masks, params, is_leaf=tree_lib.is_none), "count": jnp.zeros((), jnp.float32)}

    def init(params, key=None):
        del key
        masks = dense_masks(params, spec)
        return masks, zeros_aux(params, masks)

    def observe(params, grads, aux, step):
        del step
        acc = jax.tree.map(
            lambda s, g, w: None if s is None else s + _outer_sum(_grad_blocks(g[None], jnp.shape(w), s.shape[-1])),
            aux["sum"],
            grads,
            params,
            is_leaf=tree_lib.is_none,
        )
        return {"sum": acc, "count": aux["count"] + 1.0}

    def update(params, grads, masks, aux, step, key):
        del grads, key
        n = jnp.maximum(aux["count"], 1.0)
        finv = _map_inverse(
            jax.tree.map(
                lambda s: None if s is None else s / n + damp * jnp.eye(s.shape[-1]),
                aux["sum"],
                is_leaf=tree_lib.is_none,
            ),
            damp,
        )
        masked = masks_lib.apply_masks(params, masks)
        new_params, new_masks = obs_prune(
            masked, finv, schedule.sparsity(step), spec, masks=masks, final_sparsity=schedule.final_sparsity
        )
        delta = jax.tree.map(lambda a, b: (a - b).astype(b.dtype), new_params, params)
        return new_masks, zeros_aux(params, masks), delta

    return Pruner(init=init, update=update, schedule=schedule, observe=observe, param_update=True)
