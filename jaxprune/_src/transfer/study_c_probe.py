"""Linear probes on a pretrained model's penultimate features, and masked copies of its variables.

Study C (:mod:`~jaxprune._src.transfer.study_c`) evaluates every pruned model
with the best linear head for its features: :func:`penultimate_features`
collects the inputs of the classifier (the model's last ``nn.Dense`` call),
:func:`ridge_head` fits a ridge regression onto one-hot labels, and
``with_head`` swaps a task's ridge head into a (masked) model. ``apply_model``
zeroes pruned entries and ``full_masks`` turns a plan into masks with an
array at every leaf (one pytree structure: one compiled training step).

Example:
  >>> h = ridge_head(np.eye(3), np.arange(3), 3, 1e-6)
  >>> h['kernel'].shape, h['bias'].shape
  ((3, 3), (3,))
"""

from __future__ import annotations

import jax
import numpy as np

from jaxprune import models as models_lib  # noqa: F401  (used in the doctests)

__all__ = ["penultimate_features", "ridge_head"]

_HEADS = ("fc", "head")
_FEAT_FNS: dict = {}


def _head_name(params) -> str:
    for h in _HEADS:
        if h in params:
            return h
    raise ValueError(f"study C: expected a classifier named one of {_HEADS} in params, got {sorted(params)}")


def penultimate_features(model, variables, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Inputs of the model's classifier (its last ``nn.Dense`` call), eval mode, ``(n, d)``.

    >>> m = models_lib.vit_tiny_test(num_classes=3)
    >>> v = m.init(jax.random.key(0), m.example_input(1))
    >>> penultimate_features(m, v, np.zeros((5, 16, 16, 3), np.float32)).shape
    (5, 32)
    """
    import flax.linen as nn

    if model not in _FEAT_FNS:

        def feats(v, x):
            seen = []

            def grab(next_fun, args, kwargs, context):
                if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                    seen.append(args[0])
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(grab):
                model.apply(v, x, train=False)
            if not seen:
                raise ValueError(f"penultimate_features: {type(model).__name__} calls no nn.Dense")
            return seen[-1]

        _FEAT_FNS[model] = jax.jit(feats)
    fn = _FEAT_FNS[model]
    out = []
    n = len(images)
    for i in range(0, n, batch_size):
        x = images[i : i + batch_size]
        pad = batch_size - len(x) if n > batch_size else 0
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        out.append(np.asarray(fn(variables, x))[: len(x) - pad])
    return np.concatenate(out)


def ridge_head(features: np.ndarray, labels: np.ndarray, num_classes: int, ridge: float = 1e-2) -> dict:
    """``{'kernel': (d, C), 'bias': (C,)}`` of a ridge regression onto one-hot labels (a linear probe).

    ``ridge`` is relative to the mean feature variance.

    >>> h = ridge_head(np.eye(4), np.arange(4), 4, 1e-6)
    >>> (np.eye(4) @ h['kernel'] + h['bias']).argmax(1).tolist()
    [0, 1, 2, 3]
    """
    f = np.asarray(features, np.float64)
    y = np.eye(num_classes)[np.asarray(labels)]
    mu, ym = f.mean(0), y.mean(0)
    fc = f - mu
    gram = fc.T @ fc
    lam = ridge * max(np.trace(gram) / max(f.shape[1], 1), 1e-12)
    w = np.linalg.solve(gram + lam * np.eye(f.shape[1]), fc.T @ (y - ym))
    return {"kernel": w.astype(np.float32), "bias": (ym - mu @ w).astype(np.float32)}


def with_head(model, variables, ds, ridge: float, masks=None):
    """(task model, variables with a ridge head for ``ds``, features); ``masks`` zero pruned units first."""
    params = variables["params"]
    head = _head_name(params)
    tm = model.clone(num_classes=ds.num_classes, widths=tuple((k, w) for k, w in model.widths if k != head))
    d = np.shape(params[head]["kernel"])[0]
    v = dict(
        variables,
        params=dict(
            params,
            **{
                head: {
                    "kernel": np.zeros((d, ds.num_classes), np.float32),
                    "bias": np.zeros((ds.num_classes,), np.float32),
                }
            },
        ),
    )
    if masks is not None:
        v = apply_model(v, masks)
    feats = penultimate_features(tm, v, ds.images)
    h = ridge_head(feats, ds.labels, ds.num_classes, ridge)
    v = dict(v, params=dict(v["params"], **{head: h}))
    return tm, v, feats


def apply_model(variables, masks):
    """Zeroes masked entries on the host (numpy: no per-shape eager compilation)."""
    return jax.tree.map(
        lambda x, m: x if m is None else np.where(np.asarray(m), np.asarray(x), 0).astype(x.dtype),
        variables,
        masks,
        is_leaf=lambda x: x is None,
    )


def full_masks(variables, plan):
    """Params masks with an array at *every* leaf (one pytree structure for every plan: one compiled step)."""
    from jaxprune._src.structured import plan_to_masks

    m = plan_to_masks(variables, plan)
    return jax.tree.map(
        lambda x, mm: np.ones(np.shape(x), bool) if mm is None else np.asarray(mm),
        variables,
        m,
        is_leaf=lambda x: x is None,
    )
