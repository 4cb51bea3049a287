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

__all__ = ["penultimate_features", "ridge_head", "masked_finetune"]

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


#: bias of the padding classes of a padded head: never predicted, zero probability, zero gradient.
PAD_BIAS = -1e9


def with_head(model, variables, ds, ridge: float, masks=None, num_classes: int | None = None):
    """(task model, variables with a ridge head for ``ds``, features); ``masks`` zero pruned units first.

    ``num_classes`` (>= ``ds.num_classes``) pads the head: the extra classes get
    zero weights and a bias of ``PAD_BIAS``, so tasks with different class counts
    share one model (one compilation of every jitted function).
    """
    params = variables["params"]
    head = _head_name(params)
    nc = ds.num_classes if num_classes is None else int(num_classes)
    if nc < ds.num_classes:
        raise ValueError(f"with_head: num_classes={nc} is below the task's {ds.num_classes} classes ({ds.name})")
    tm = model.clone(num_classes=nc, widths=tuple((k, w) for k, w in model.widths if k != head))
    d = np.shape(params[head]["kernel"])[0]
    v = dict(
        variables,
        params=dict(
            params,
            **{head: {"kernel": np.zeros((d, nc), np.float32), "bias": np.zeros((nc,), np.float32)}},
        ),
    )
    if masks is not None:
        v = apply_model(v, masks)
    feats = penultimate_features(tm, v, ds.images)
    h = ridge_head(feats, ds.labels, ds.num_classes, ridge)
    if nc > ds.num_classes:
        h = {
            "kernel": np.pad(h["kernel"], ((0, 0), (0, nc - ds.num_classes))),
            "bias": np.pad(h["bias"], (0, nc - ds.num_classes), constant_values=PAD_BIAS).astype(np.float32),
        }
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


_STEP_FNS: dict = {}


def _frozen(freeze: str | None, path: str) -> bool:
    import re

    return bool(freeze) and re.search(freeze, path) is not None  # type: ignore[arg-type]


def _make_step(model, freeze: str | None, momentum: float, weight_decay: float, temperature: float | None):
    import jax.numpy as jnp

    from jaxprune._src.train import cross_entropy
    from jaxprune._src.tree import map_with_path

    def step(params, mom, rest, masks, x, y, lr, teacher):
        def loss(p):
            p = map_with_path(lambda path, a: jax.lax.stop_gradient(a) if _frozen(freeze, path) else a, p)
            logits = model.apply(dict(rest, params=p), x, train=False)
            if temperature is None:
                return cross_entropy(logits, y)
            t = jax.lax.stop_gradient(model.apply(teacher, x, train=False)) / temperature
            kl = jnp.sum(jax.nn.softmax(t) * (jax.nn.log_softmax(t) - jax.nn.log_softmax(logits / temperature)), -1)
            return temperature**2 * jnp.mean(kl)  # distillation from the teacher's logits only

        value, grads = jax.value_and_grad(loss)(params)
        new_mom = map_with_path(lambda path, m, g: m if _frozen(freeze, path) else momentum * m + g, mom, grads)

        def upd(path, p, g, m, k):
            if _frozen(freeze, path):
                return p
            d = g + momentum * m  # Nesterov
            if p.ndim > 1:  # decoupled weight decay on kernels only
                d = d + weight_decay * p
            return ((p - lr * d) * k).astype(p.dtype)

        return map_with_path(upd, params, grads, new_mom, masks), new_mom, value

    return jax.jit(step)


def masked_finetune(
    model,
    variables,
    masks,
    ds,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 5e-4,
    warmup_steps: int = 0,
    seed: int = 0,
    freeze: str | None = None,
    momentum: float = 0.9,
    schedule: str = "cosine",
    teacher=None,
    temperature: float = 2.0,
):
    """``steps`` of SGD (Nesterov momentum, decoupled decay, warm-up + cosine) on ``ds``; returns variables.

    Masked entries (``masks``: params pytree of 0/1 arrays, every leaf) stay 0;
    params whose path matches the regex ``freeze`` are neither differentiated
    nor updated (e.g. ``'dw_conv/kernel'``: XLA's CPU backward of depthwise
    kernels costs several times the rest of an EfficientNet step). BatchNorm
    runs in eval mode (running statistics kept: short finetunes of a
    pretrained model at small batch). ``schedule``: ``'cosine'`` (warm-up then
    cosine to 0) or ``'constant'`` (warm-up then ``learning_rate``).
    ``teacher``: variables of the same model (e.g. the dense one) to distil
    from instead of the labels: ``T^2 KL(softmax(t/T) || softmax(s/T))`` with
    ``T = temperature``. One compiled step per (model, freeze, momentum,
    weight_decay, distillation), reused for every mask.

    >>> v = masked_finetune(model, variables, masks, train_ds, steps=20, batch_size=32,
    ...                     learning_rate=0.02, freeze="dw_conv/kernel")  # doctest: +SKIP
    """
    import jax.numpy as jnp

    from jaxprune._src.data import batches

    if schedule not in ("cosine", "constant"):
        raise ValueError(f"masked_finetune: schedule must be 'cosine' or 'constant', got {schedule!r}")
    temp = None if teacher is None else float(temperature)
    key = (model, freeze, float(momentum), float(weight_decay), temp)
    if key not in _STEP_FNS:
        _STEP_FNS[key] = _make_step(model, freeze, float(momentum), float(weight_decay), temp)
    step = _STEP_FNS[key]
    rest = {k: v for k, v in variables.items() if k != "params"}
    params = jax.tree.map(jnp.asarray, variables["params"])
    mk = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), masks)
    params = jax.tree.map(lambda p, k: (p * k).astype(p.dtype), params, mk)
    mom = jax.tree.map(jnp.zeros_like, params)
    it = batches(ds, min(batch_size, len(ds)), seed=seed, epochs=None)
    for i in range(int(steps)):
        if i < warmup_steps:
            lr = learning_rate * (i + 1) / warmup_steps
        elif schedule == "constant":
            lr = learning_rate
        else:
            t = (i - warmup_steps) / max(steps - warmup_steps, 1)
            lr = 0.5 * learning_rate * (1.0 + np.cos(np.pi * t))
        b = next(it)
        params, mom, _ = step(params, mom, rest, mk, b["image"], b["label"], np.float32(lr), teacher)
    return dict(variables, params=jax.tree.map(np.asarray, params))
