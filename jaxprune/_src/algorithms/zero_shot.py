"""Zero-shot (pruning-at-init / post-training) criteria: SNIP, GraSP, SynFlow, Wanda.

Each returns a score pytree shaped like params (higher = kept), so it can be
turned into masks by :func:`jaxprune.masks_from_scores` / :func:`jaxprune.prune`
(``method=fixed_scores(s)``) or aggregated into group scores by the structured
engine.

* SNIP (Lee et al. 2019): ``|w * dL/dw|`` on one batch at init; registered as
  ``method='snip'`` (pass ``grads=``).
* GraSP (Wang et al. 2020): keep-score ``w * (H g)`` with ``H g`` a
  Hessian-gradient product (``jax.jvp`` of ``jax.grad``); GraSP removes the
  weights with the largest ``-w * Hg``, i.e. the lowest keep-score here.
* SynFlow (Tanaka et al. 2020): data-free; ``R = sum f(|theta|, 1)`` on an
  all-ones input, score ``|theta * dR/dtheta|``, pruned iteratively over
  ``rounds`` with the exponential schedule ``s_r = 1 - (1 - s)^(r / rounds)``.
  ``apply_fn`` must be the inference function (BatchNorm in eval mode).
* Wanda (Sun et al. 2023): ``|W_ij| * ||X_j||_2`` with ``||X_j||`` the L2 norm of
  input feature ``j`` over all tokens/positions of a calibration batch, collected
  by :func:`activation_norms` through ``flax.linen.intercept_methods``.
  Supported layers: Linen ``nn.Dense`` and ``nn.Conv`` (any kernel size; for
  convs, the norm of input channel ``j`` over batch and positions multiplies
  every kernel tap of that channel; grouped convs fall back to ``|w|``).
  Wanda compares weights per output unit: use :func:`per_output_masks`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxprune._src import scores as scores_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.algorithms.common import check_int, check_spec, masked_scores
from jaxprune._src.distributions import check_sparsity
from jaxprune._src.masks import apply_masks, combine_masks, topk_mask
from jaxprune._src.pruner import MaskSpec, dense_masks, masks_from_scores
from jaxprune._src.types import PyTree

LossFn = Callable[[PyTree, Any], jax.Array]

__all__ = [
    "snip_scores",
    "grasp_scores",
    "synflow_scores",
    "synflow_prune",
    "activation_norms",
    "wanda_scores",
    "fixed_scores",
    "per_output_masks",
]


def _check_callable(fn: Any, name: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable {signature}, got {type(fn).__name__}")


def snip_scores(loss_fn: LossFn, params: PyTree, batch: Any) -> PyTree:
    """SNIP connection sensitivity ``|w * g|`` with ``g = grad(loss_fn)(params, batch)``.

    >>> loss = lambda p, b: jnp.sum(p['w'] @ b)
    >>> snip_scores(loss, {'w': jnp.array([[2., -1.]])}, jnp.ones((2, 1)))['w'].tolist()
    [[2.0, 1.0]]
    """
    _check_callable(loss_fn, "loss_fn", "(params, batch) -> scalar")
    return _snip_jit(loss_fn, params, batch)


@functools.partial(jax.jit, static_argnums=0)
def _snip_jit(loss_fn, params, batch):
    return scores_lib.saliency_scores(params, grads=jax.grad(loss_fn)(params, batch))


def grasp_scores(loss_fn: LossFn, params: PyTree, batch: Any) -> PyTree:
    """GraSP keep-scores ``w * (H g)`` (higher = kept), ``H`` the Hessian of ``loss_fn`` at ``params``.

    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p['w'] ** 2)   # H = diag(b), g = b * w
    >>> grasp_scores(loss, {'w': jnp.array([[1., 2.]])}, jnp.array([[3., 1.]]))['w'].tolist()
    [[9.0, 4.0]]
    """
    _check_callable(loss_fn, "loss_fn", "(params, batch) -> scalar")
    return _grasp_jit(loss_fn, params, batch)


@functools.partial(jax.jit, static_argnums=0)
def _grasp_jit(loss_fn, params, batch):
    grad_fn = jax.grad(lambda p: loss_fn(p, batch))
    g = jax.lax.stop_gradient(grad_fn(params))
    _, hg = jax.jvp(grad_fn, (params,), (g,))
    return jax.tree.map(lambda w, h: w * h, params, hg)


def synflow_scores(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, input_shape: Sequence[int], masks: PyTree = None
) -> PyTree:
    """SynFlow scores ``|theta * dR/dtheta|``, ``R = sum(apply_fn(|theta| * mask, ones(input_shape)))``.

    Data-free: only the input *shape* is used.

    >>> f = lambda p, x: x @ p['a'] @ p['b']
    >>> s = synflow_scores(f, {'a': jnp.array([[1., -2.]]), 'b': jnp.array([[3.], [1.]])}, (1, 1))
    >>> s['a'].tolist(), s['b'].tolist()
    ([[3.0, 2.0]], [[3.0], [2.0]])
    """
    _check_callable(apply_fn, "apply_fn", "(params, inputs) -> outputs")
    lin = jax.tree.map(jnp.abs, params)
    if masks is not None:
        lin = apply_masks(lin, masks)
    ones = jnp.ones(tuple(input_shape), jnp.float32)
    grads = jax.grad(lambda p: jnp.sum(apply_fn(p, ones)))(lin)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), lin, grads)


def synflow_prune(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree,
    sparsity: float,
    input_shape: Sequence[int],
    *,
    rounds: int = 100,
    spec: MaskSpec = MaskSpec(scope="global"),
) -> tuple[PyTree, PyTree]:
    """Iterative SynFlow to ``sparsity`` in ``rounds`` rounds (one jit-compiled ``fori_loop``).

    Returns ``(pruned_params, masks)``. No data is used: the input is all ones.

    >>> f = lambda p, x: x @ p['a'] @ p['b']
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> p = {'a': jax.random.normal(k1, (4, 8)), 'b': jax.random.normal(k2, (8, 2))}
    >>> _, m = synflow_prune(f, p, 0.5, (1, 4), rounds=10)
    >>> sum(int((~x).sum()) for x in m.values())
    24
    """
    sparsity = check_sparsity(sparsity)
    rounds = check_int(rounds, "rounds", 1)
    check_spec(spec, "synflow_prune")
    input_shape = tuple(int(d) for d in input_shape)

    @jax.jit
    def run(params):
        masks0 = dense_masks(params, spec)

        def body(r, masks):
            s_r = 1.0 - (1.0 - sparsity) ** ((r + 1.0) / rounds)
            scores = masked_scores(synflow_scores(apply_fn, params, input_shape, masks), masks)
            new = masks_from_scores(scores, s_r, spec, final_sparsity=sparsity)
            return combine_masks(masks, new)

        masks = jax.lax.fori_loop(0, rounds, body, masks0)
        return apply_masks(params, masks), masks

    return run(params)


def activation_norms(module: nn.Module, variables: PyTree, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
    """``{module_path: ||X_j||_2 per input feature}`` for every ``nn.Dense``/``nn.Conv`` called in
    ``module.apply(variables, *args, **kwargs)`` (jit-able; a module called several times accumulates).

    >>> m = nn.Dense(2)
    >>> v = m.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> activation_norms(m, v, jnp.array([[3., 0., 1.], [4., 0., 1.]]))['']
    Array([5.       , 0.       , 1.4142135], dtype=float32)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"activation_norms needs a flax.linen Module, got {type(module).__name__}")
    sq: dict[str, jax.Array] = {}

    def record(next_fun, call_args, call_kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, (nn.Dense, nn.Conv)) and call_args:
            x = jnp.asarray(call_args[0], jnp.float32)
            path = "/".join(str(p) for p in mod.path)
            s = jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1)))
            sq[path] = sq[path] + s if path in sq else s
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        module.apply(variables, *args, **kwargs)
    return {k: jnp.sqrt(v) for k, v in sq.items()}


def wanda_scores(params: PyTree, norms: dict[str, jax.Array]) -> PyTree:
    """``|W| * ||X_j||`` at kernels of layers in ``norms`` (input axis -2), ``|w|`` elsewhere.

    ``params`` may be the Linen ``params`` collection or the full variables dict.

    >>> wanda_scores({'d': {'kernel': jnp.ones((2, 1))}}, {'d': jnp.array([3., 0.5])})['d']['kernel'].tolist()
    [[3.0], [0.5]]
    """
    if not isinstance(norms, dict):
        raise TypeError(f"norms must be the dict from activation_norms, got {type(norms).__name__}")

    def one(path, w):
        parts = path.split("/")
        if parts and parts[0] == "params":
            parts = parts[1:]
        if parts and parts[-1] == "kernel":
            layer = "/".join(parts[:-1])
            n = norms.get(layer)
            if n is not None and jnp.ndim(w) >= 2 and jnp.shape(w)[-2] == n.shape[-1]:
                return jnp.abs(w) * n[:, None].astype(jnp.abs(w).dtype)
        return jnp.abs(w)

    return tree_lib.map_with_path(one, params)


def fixed_scores(scores: PyTree) -> Callable[..., PyTree]:
    """A score function returning precomputed ``scores`` (for ``prune(params, s, method=...)``).

    >>> from jaxprune import prune
    >>> p = {'w': jnp.array([[1., 2.]])}
    >>> prune(p, 0.5, method=fixed_scores({'w': jnp.array([[5., 0.]])}))[1]['w'].tolist()
    [[True, False]]
    """

    def fn(params, *, grads=None, key=None):
        del grads, key
        tree_lib.check_same_structure(params, scores, what="fixed scores", allow_none=False)
        return scores

    return fn


def per_output_masks(scores: PyTree, sparsity: float, *, prunable: Any = None) -> PyTree:
    """Top-k per output unit (last axis): each column keeps ``round((1-s) * fan_in)`` entries (Wanda).

    >>> per_output_masks({'w': jnp.array([[1., 4.], [2., 3.]])}, 0.5)['w'].tolist()
    [[False, True], [True, False]]
    """
    sparsity = check_sparsity(sparsity)
    ok = tree_lib.prunable_tree(scores, prunable)

    def one(o, s):
        if not o:
            return None
        cols = jnp.asarray(s).reshape(-1, jnp.shape(s)[-1])
        keep = jax.vmap(lambda c: topk_mask(c, sparsity), in_axes=1, out_axes=1)(cols)
        return keep.reshape(jnp.shape(s))

    return jax.tree.map(one, ok, scores)


def _snip(params: PyTree, *, grads: PyTree = None, key: Any = None) -> PyTree:
    """SNIP: ``|w * g|`` with ``grads`` of the loss on one batch at init."""
    del key
    if grads is None:
        raise ValueError("score method 'snip' needs `grads=` (gradients of the loss on one batch)")
    return scores_lib.saliency_scores(params, grads=grads)


if "snip" not in scores_lib.SCORE_FNS:
    scores_lib.register_score("snip", _snip)
