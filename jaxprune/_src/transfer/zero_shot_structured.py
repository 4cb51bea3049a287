"""Zero-shot (data-free) filter, channel and kernel pruning of a pretrained CNN, for study A.

Everything here reads only the pretrained *weights* -- no data, no gradients --
and every structured-engine call lives in this one module.

* ``'filter'``: every coupled channel group of the traced model (a conv's
  output filters with their BatchNorm, the consumers' input slices, residual
  streams as one group) loses ``floor(ratio * size)`` units, ranked by the
  mean L1 norm of the **producing** filters (the group's root conv kernels'
  output slices). The model is really shrunk: :func:`jaxprune._src.structured.shrink`
  slices every member leaf, :func:`jaxprune.models.rebuild` gives the smaller
  Linen model.
* ``'channel'``: the same groups, ranked by the mean L1 norm of the
  **consuming** weights (the input-channel slices of the conv kernels that read
  the channel; the dense head if no conv does). Also shrunk.
* ``'kernel'``: in every conv kernel (``H, W, I, O``), the ``ratio`` fraction
  of whole ``H x W`` kernels (one per input/output pair) with the smallest L1
  norm is masked. Tensors keep their shape, so **XLA FLOPs do not drop**;
  :func:`effective_step_flops` estimates the FLOPs that a kernel-sparse
  implementation would need.
* ``'dense'``: the pretrained model unchanged.

Example:
  >>> pm = zero_shot_prune(model, variables, 'filter', 0.5)        # doctest: +SKIP
  >>> pm.model.widths, pm.forward_flops / dense.forward_flops       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import models as models_lib
from jaxprune._src.tree import leaves_with_paths, map_with_path

__all__ = [
    "METHODS",
    "PrunedModel",
    "trace_model_groups",
    "unit_scores",
    "zero_shot_plan",
    "kernel_masks",
    "zero_shot_prune",
    "with_new_head",
    "conv_forward_flops",
    "effective_step_flops",
    "forward_flops",
    "random_init",
]

METHODS = ("dense", "filter", "channel", "kernel")
_HEAD = "fc"  # the classifier of jaxprune's ResNets (re-initialised per downstream task)


@dataclasses.dataclass
class PrunedModel:
    """A zero-shot pruned upstream model.

    ``model``/``variables``: runnable Linen model and its (shrunk or masked)
    variables; ``masks``: kernel masks over ``variables['params']`` (``None``
    at unmasked leaves) for ``'kernel'``, else ``None``; ``plan``: the
    structured :class:`PrunePlan` for ``'filter'``/``'channel'``; ``stats``:
    parameter counts and forward FLOPs (XLA and effective).
    """

    method: str
    ratio: float
    model: Any
    variables: Any
    masks: Any = None
    plan: Any = None
    stats: dict = dataclasses.field(default_factory=dict)


def _example(model, batch: int = 2):
    return jnp.zeros(model.example_input(batch).shape, jnp.float32)


def trace_model_groups(model, variables):
    """Coupled channel groups of ``model`` (eval mode) traced over all its variables."""
    from jaxprune._src.structured import trace_groups

    return trace_groups(lambda v, x: model.apply(v, x, train=False), variables, _example(model))


def _is_kernel(path: str, ndim: int) -> bool:
    return path.split("/")[-1] == "kernel" and ndim >= 2


def unit_scores(variables, graph, method: str) -> dict[int, np.ndarray]:
    """Per-unit L1 scores of every prunable channel group: producing (``'filter'``) or consuming (``'channel'``).

    Returns ``{group id: (size,) float array}``; only the pretrained weights are read.
    """
    if method not in ("filter", "channel"):
        raise ValueError(f"unit_scores: method must be 'filter' or 'channel', got {method!r}")
    leaves = dict(leaves_with_paths(variables))
    out = {}
    for g in graph.groups:
        if not g.prunable or g.kind != "channels":
            continue
        if method == "filter":
            members = [m for m in g.roots if _is_kernel(m.path, np.ndim(leaves[m.path]))]
        else:
            kern = [m for m in g.dependents if _is_kernel(m.path, np.ndim(leaves[m.path]))]
            members = [m for m in kern if np.ndim(leaves[m.path]) == 4] or kern
        if not members:
            continue
        vecs = []
        for m in members:
            w = np.abs(np.asarray(leaves[m.path], np.float64))
            per_index = w.sum(axis=tuple(a for a in range(w.ndim) if a != m.axis))
            per_unit = per_index[m.index_map].sum(axis=1) / m.index_map.shape[1]
            vecs.append(per_unit / max(w.size / w.shape[m.axis], 1))  # mean |w| of the slice
        out[g.id] = np.mean(vecs, axis=0)
    return out


def zero_shot_plan(variables, graph, method: str, ratio: float):
    """Layerwise plan: each scored group keeps its ``size - floor(ratio * size)`` (>= 1) best units."""
    from jaxprune._src.structured import plan_from_kept

    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    kept: dict[int, np.ndarray] = {}
    for gid, sc in unit_scores(variables, graph, method).items():
        n = sc.size
        keep = max(1, n - int(math.floor(n * ratio + 1e-9)))
        kept[gid] = np.sort(np.argsort(-sc, kind="stable")[:keep])
    return plan_from_kept(
        graph,
        kept,
        {"method": method, "ratio": float(ratio), "criterion": "l1", "scope": "layerwise", "zero_shot": True},
    )


def kernel_masks(params, ratio: float):
    """Masks removing the ``ratio`` fraction of lowest-L1 ``H x W`` kernels of every conv kernel.

    ``True`` = kept; shape ``(H, W, I, O)`` (constant over ``H, W``); ``None`` at
    non-conv leaves. Ties are broken by position (exact counts).

    >>> m = kernel_masks({'c': {'kernel': jnp.arange(16.).reshape(1, 1, 4, 4)}}, 0.25)
    >>> int(m['c']['kernel'].sum())
    12
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")

    def mask(path, x):
        if np.ndim(x) != 4 or not path.endswith("kernel"):
            return None
        h, w, i, o = np.shape(x)
        norms = np.abs(np.asarray(x, np.float64)).sum(axis=(0, 1)).ravel()
        drop = int(math.floor(norms.size * ratio + 1e-9))
        keep = np.ones(norms.size, bool)
        keep[np.argsort(norms, kind="stable")[:drop]] = False
        return jnp.asarray(np.broadcast_to(keep.reshape(1, 1, i, o), (h, w, i, o)))

    return map_with_path(mask, params)


def forward_flops(model, variables, batch: int = 1) -> float:
    """XLA FLOPs of one eval-mode forward pass on ``batch`` examples."""
    from jaxprune._src.train import xla_flops

    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), variables)
    x = jax.ShapeDtypeStruct(model.example_input(batch).shape, jnp.float32)
    return xla_flops(lambda v, x: model.apply(v, x, train=False), shapes, x)


def conv_forward_flops(model, variables, batch: int = 1) -> dict[str, float]:
    """``{'params/<conv>/kernel': XLA forward FLOPs}`` of every ``nn.Conv`` call for ``batch`` examples.

    Each conv is compiled on its own (its input shape is recorded with
    ``nn.intercept_methods``), so the counts are XLA's (CPU compiler), like the step FLOPs.
    """
    from jaxprune._src.train import xla_flops as flops

    calls = []

    def record(next_fun, args, kwargs, context):
        mdl = context.module
        if isinstance(mdl, nn.Conv) and context.method_name == "__call__":
            calls.append(("/".join(mdl.path), mdl.clone(parent=None, name=None), np.shape(args[0])))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, _example(model, batch))
    params = variables["params"]
    out: dict[str, float] = {}
    for layer, conv, in_shape in calls:
        sub = params
        for part in layer.split("/"):
            sub = sub[part]
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), sub)
        x = jax.ShapeDtypeStruct(in_shape, jnp.float32)
        out[f"params/{layer}/kernel"] = out.get(f"params/{layer}/kernel", 0.0) + flops(
            lambda p, x, _c=conv: _c.apply({"params": p}, x), shapes, x
        )
    return out


def effective_step_flops(step_flops: float, conv_flops: dict[str, float], masks, batch_size: int) -> float:
    """Train-step FLOPs a kernel-sparse implementation would need.

    ``step_flops`` (XLA, dense tensors) minus, for every masked conv, the
    fraction of masked kernels times 3x its forward FLOPs at ``batch_size``
    (forward, input-gradient and weight-gradient convolutions). An estimate:
    XLA itself does not skip zeros.
    """
    if masks is None:
        return float(step_flops)
    saved = 0.0
    for path, m in leaves_with_paths(masks, is_leaf=lambda x: x is None):
        if m is None:
            continue
        key = path if path.startswith("params/") else f"params/{path}"
        if key in conv_flops:
            saved += 3.0 * conv_flops[key] * batch_size * (1.0 - float(np.mean(np.asarray(m))))
    return float(step_flops) - saved


def _param_count(tree) -> int:
    return int(sum(int(np.prod(np.shape(x))) for _, x in leaves_with_paths(tree)))


def zero_shot_prune(model, variables, method: str, ratio: float = 0.0) -> PrunedModel:
    """Prunes a pretrained model without data: ``'dense'``, ``'filter'``, ``'channel'`` or ``'kernel'``.

    Example:
      >>> import jax
      >>> m = models_lib.CifarResNet(stage_sizes=(1, 1, 1), stage_widths=(8, 16, 32), image_size=8)
      >>> v = m.init(jax.random.key(0), m.example_input(1))
      >>> zero_shot_prune(m, v, 'filter', 0.5).model.widths[0]
      ('conv1', 4)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    variables = jax.tree.map(jnp.asarray, variables)
    masks = plan = None
    if method == "dense":
        out_model, out_vars = model, variables
    elif method == "kernel":
        masks = kernel_masks(variables["params"], ratio)
        out_model = model
        out_vars = dict(
            variables,
            params=jax.tree.map(
                lambda x, m: x if m is None else jnp.where(m, x, 0),
                variables["params"],
                masks,
                is_leaf=lambda v: v is None,
            ),
        )
    else:
        from jaxprune._src.structured import shrink

        plan = zero_shot_plan(variables, trace_model_groups(model, variables), method, ratio)
        out_vars = shrink(variables, plan)
        out_model = models_lib.rebuild(model, out_vars)
    fwd = forward_flops(out_model, out_vars)
    eff = fwd
    nonzero = _param_count(out_vars["params"])
    if masks is not None:
        dense_conv = conv_forward_flops(model, variables)  # one compile per conv: only where needed
        eff = fwd - sum(
            dense_conv[p if p.startswith("params/") else f"params/{p}"] * (1 - float(np.mean(m)))
            for p, m in leaves_with_paths(masks, is_leaf=lambda x: x is None)
            if m is not None
        )
        nonzero -= int(
            sum(
                int(np.size(m) - np.sum(m))
                for _, m in leaves_with_paths(masks, is_leaf=lambda x: x is None)
                if m is not None
            )
        )
    stats = {
        "params": _param_count(out_vars["params"]),
        "nonzero_params": nonzero,
        "forward_flops": fwd,
        "effective_forward_flops": eff,
    }
    return PrunedModel(method, float(ratio), out_model, out_vars, masks, plan, stats)


def random_init(model, variables, key: jax.Array) -> PrunedModel:
    """The same architecture as the pretrained ``model`` with freshly initialised weights (method ``'random_init'``).

    The baseline that shows what pretraining is worth: ``variables`` only fix
    the structure (they must match ``model.init``'s).

    Example:
      >>> import jax
      >>> m = models_lib.CifarResNet(stage_sizes=(1, 1, 1), stage_widths=(8, 16, 32), image_size=8)
      >>> v = m.init(jax.random.key(0), m.example_input(1))
      >>> pm = random_init(m, v, jax.random.key(1))
      >>> pm.method, pm.stats['params'] == _param_count(v['params'])
      ('random_init', True)
    """
    from jaxprune._src.tree import check_same_structure

    fresh = dict(jax.jit(model.init)(key, _example(model, 1)))
    check_same_structure(variables, fresh, "random_init: model.init variables")
    n = _param_count(fresh["params"])
    fwd = forward_flops(model, fresh)
    stats = {"params": n, "nonzero_params": n, "forward_flops": fwd, "effective_forward_flops": fwd}
    return PrunedModel("random_init", 0.0, model, fresh, None, None, stats)


def with_new_head(pm: PrunedModel, num_classes: int, key: jax.Array):
    """``(model, variables, masks)`` for a downstream task: the classifier re-initialised for ``num_classes``.

    All other variables (shrunk or masked) are kept; kernel masks (if any) get
    ``None`` at the new head.
    """
    params = pm.variables["params"]
    if _HEAD not in params:
        raise ValueError(f"with_new_head: expected a classifier named {_HEAD!r} in params, got {sorted(params)}")
    model = pm.model.clone(num_classes=num_classes, widths=tuple((k, w) for k, w in pm.model.widths if k != _HEAD))
    fresh = model.init(key, model.example_input(1))
    head = fresh["params"][_HEAD]
    if np.shape(head["kernel"])[0] != np.shape(params[_HEAD]["kernel"])[0]:
        raise ValueError(
            f"with_new_head: head input width {np.shape(head['kernel'])[0]} != backbone output "
            f"{np.shape(params[_HEAD]['kernel'])[0]}"
        )
    variables = dict(pm.variables, params=dict(params, **{_HEAD: head}))
    masks = None
    if pm.masks is not None:
        masks = dict(pm.masks, **{_HEAD: jax.tree.map(lambda _: None, head)})
    return model, variables, masks
