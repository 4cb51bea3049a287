"""A small, jit-compiled finetuning harness for Linen classifiers.

Used by the demo and the study scripts; users with their own loops need only
:func:`jaxprune.sparse_optimizer`. The recipe is the Nevis'22 / study-A one:
SGD with (Nesterov) momentum and decoupled weight decay that skips biases and
norm parameters (SGDW), linear warm-up then cosine decay to ~0, periodic
evaluation on a dev split with early stopping and best-dev-state selection,
and compute accounting = XLA FLOPs of one jitted train step x steps run.

Model convention: ``model.apply(variables, x, train=bool, mutable=[...])``
with ``variables = {'params': ..., **other collections (batch_stats)}``
(all of ``jaxprune.models`` follow it).

Example:
  >>> cfg = TrainConfig(steps=100, batch_size=64, learning_rate=0.05)  # doctest: +SKIP
  >>> result = fit(model, variables, train_ds, cfg, eval_ds=dev_ds)    # doctest: +SKIP
  >>> result.best_accuracy, result.total_flops                        # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune._src import masks as masks_lib
from jaxprune._src.algorithms.common import fixed_mask_pruner
from jaxprune._src.pruner import Pruner
from jaxprune._src.sparse_optax import get_masks, sparse_optimizer
from jaxprune._src.types import PyTree

__all__ = [
    "TrainConfig",
    "TrainState",
    "FitResult",
    "sgdw",
    "scale_by_warmup_cosine",
    "warmup_cosine",
    "xla_flops",
    "fixed_mask_pruner",
    "fit",
    "evaluate",
    "cross_entropy",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Finetuning hyper-parameters (defaults: the Nevis'22 baseline recipe, scaled down)."""

    steps: int = 500
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    eval_every: int = 0  # 0: evaluate once, at the end
    patience: int | None = None  # evaluations without improvement before stopping
    augment: bool = False  # random crop (pad 4) + horizontal flip
    seed: int = 0
    # True: the forward pass of every step runs in inference mode (``train=False``): BatchNorm uses and
    # keeps its running statistics, dropout is off. The usual choice for a few finetuning steps of a
    # pretrained BN network on a small dataset, where batch statistics and updated running averages
    # disagree (measured on EfficientNet-Lite0: benchmarks/latency_accuracy.py).
    freeze_batch_stats: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")


class TrainState(NamedTuple):
    params: PyTree
    model_state: PyTree  # other collections, e.g. {'batch_stats': ...}
    opt_state: optax.OptState
    step: jax.Array


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns. ``variables`` are the best-dev ones when an eval set was given."""

    variables: PyTree
    history: list[dict[str, float]]
    best_step: int
    best_accuracy: float | None
    steps_run: int
    step_flops: float
    seconds: float
    step_seconds: float  # median wall time of one step after compilation
    masks: PyTree = None  # final masks of the pruner (None without ``masks=``/``pruner=``)

    @property
    def total_flops(self) -> float:
        return self.step_flops * self.steps_run


class ScheduleState(NamedTuple):
    """State of :func:`scale_by_warmup_cosine`: the step and the schedule's hyper-parameters (arrays)."""

    count: jax.Array  # type: ignore[assignment]  # the optax field name shadows tuple.count
    peak: jax.Array
    warmup: jax.Array
    total: jax.Array


def warmup_cosine(count, peak, warmup, total):
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Same values as ``optax.warmup_cosine_decay_schedule(0, peak, warmup, total, 0)``
    (``warmup=0``: ``optax.cosine_decay_schedule(peak, total)``); every argument may be traced.

    >>> float(warmup_cosine(5, 1.0, 10, 100))
    0.5
    """
    c = jnp.asarray(count, jnp.float32)
    warmup = jnp.asarray(warmup, jnp.float32)
    total = jnp.maximum(jnp.asarray(total, jnp.float32), warmup + 1.0)
    warm = peak * c / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((c - warmup) / (total - warmup), 0.0, 1.0)
    cos = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(c < warmup, warm, cos)


def scale_by_warmup_cosine(peak: float, warmup: int, total: int) -> optax.GradientTransformation:
    """``-lr(t) * update`` with :func:`warmup_cosine`; ``peak``/``warmup``/``total`` live in the state.

    Keeping them in the state (not in the code) lets one compiled train step serve every
    step budget and learning rate of a grid.
    """

    def init(params):
        del params
        f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return ScheduleState(jnp.zeros((), jnp.int32), f(peak), f(warmup), f(total))

    def update(updates, state, params=None):
        del params
        lr = warmup_cosine(state.count, state.peak, state.warmup, state.total)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, state._replace(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def sgdw(cfg: TrainConfig, params: PyTree) -> optax.GradientTransformation:
    """SGD + momentum + decoupled weight decay (not on ndim<=1 leaves), warm-up + cosine LR.

    The schedule's peak LR, warm-up and length are optimizer *state*, so fits that differ
    only in ``steps``/``learning_rate``/``warmup_steps`` reuse one compiled step.
    """
    decay_mask = jax.tree.map(lambda p: jnp.ndim(p) > 1, params)
    return optax.chain(
        optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov) if cfg.momentum else optax.identity(),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        scale_by_warmup_cosine(cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1)),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy with optional label smoothing."""
    n = logits.shape[-1]
    onehot = (
        optax.smooth_labels(jax.nn.one_hot(labels, n), label_smoothing)
        if label_smoothing
        else jax.nn.one_hot(labels, n)
    )
    return optax.softmax_cross_entropy(logits, onehot).mean()


def _split_variables(variables: PyTree) -> tuple[PyTree, PyTree]:
    if not isinstance(variables, dict) and not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError(
            "variables must be a Linen variables dict with a 'params' collection, got keys "
            f"{list(variables.keys()) if hasattr(variables, 'keys') else type(variables).__name__}"
        )
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _forward_params(params: PyTree, opt_state: Any, straight_through: bool) -> PyTree:
    """The weights the forward pass uses: masked with a straight-through gradient for STE pruners."""
    if not straight_through:
        return params
    from jaxprune._src.algorithms.ste import straight_through_masks

    return straight_through_masks(params, get_masks(opt_state))


def make_train_step(model, tx, label_smoothing, straight_through: bool = False, freeze_batch_stats: bool = False):
    """One jit-able train step. ``straight_through``: the pruner keeps dense weights (STE) and the
    forward pass uses the masked ones, with dense gradients. ``freeze_batch_stats``: the forward
    pass runs with ``train=False`` and the other collections (BatchNorm statistics) stay as they are."""

    def step(state: TrainState, batch):
        def loss_fn(params):
            params = _forward_params(params, state.opt_state, straight_through)
            variables = {"params": params, **state.model_state}
            if freeze_batch_stats:
                out, new_ms = model.apply(variables, batch["image"], train=False), state.model_state
            else:
                out, new_ms = model.apply(variables, batch["image"], train=True, mutable=list(state.model_state))
            return cross_entropy(out, batch["label"], label_smoothing), (out, new_ms)

        (loss, (logits, new_ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return TrainState(params, dict(new_ms), opt_state, state.step + 1), {"loss": loss, "accuracy": acc}

    return step


_CACHE_SIZE = 64
_EVAL_FNS: "collections.OrderedDict[Any, Callable]" = collections.OrderedDict()
_STEPS: "collections.OrderedDict[Any, tuple]" = collections.OrderedDict()


def _cache_get(cache, key, make):
    """A small LRU of jitted/compiled functions; ``key=None`` (unhashable model) disables it."""
    if key is None:
        return make()
    try:
        hit = cache.pop(key)
    except KeyError:
        hit = make()
    except TypeError:  # unhashable part in the key
        return make()
    cache[key] = hit
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return hit


def _hashable(model) -> Any:
    try:
        hash(model)
        return model
    except TypeError:
        return None


def _eval_fn(model):
    @jax.jit
    def batch_stats(v, x, y, w):
        logits = model.apply(v, x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        top1 = jnp.argmax(logits, -1) == y
        k = min(5, logits.shape[-1])
        top5 = jnp.any(jax.lax.top_k(logits, k)[1] == y[:, None], axis=-1)
        return jnp.sum(w * top1), jnp.sum(w * top5), jnp.sum(w * loss)

    return batch_stats


def evaluate(model, variables: PyTree, ds, batch_size: int = 512) -> dict[str, float]:
    """Top-1, top-5 accuracy and mean loss of ``model`` on a :class:`jaxprune.data.Dataset`.

    The jitted evaluation function is cached per (hashable) model, so repeated
    evaluations (every ``eval_every`` steps of :func:`fit`) compile once.
    """
    m = _hashable(model)
    batch_stats = _cache_get(_EVAL_FNS, None if m is None else ("eval", m), lambda: _eval_fn(model))
    n = len(ds.labels)
    bs = min(batch_size, n)
    tot = np.zeros(3)
    for i in range(0, n, bs):
        x, y = ds.images[i : i + bs], ds.labels[i : i + bs]
        w = np.ones(len(y), np.float32)
        if len(y) < bs:  # pad the last batch to keep one compiled shape
            pad = bs - len(y)
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            w = np.concatenate([w, np.zeros(pad, np.float32)])
        tot += np.array([float(v) for v in batch_stats(variables, x, y, w)])
    return {"accuracy": tot[0] / n, "top5": tot[1] / n, "loss": tot[2] / n}


def xla_flops(fn: Callable, *args: Any, compiled=None) -> float:
    """XLA cost-analysis FLOPs of ``fn(*args)``, counted by the **CPU** compiler.

    GPU backends lower convolutions to cuDNN custom calls, which XLA's cost
    analysis does not count (a ResNet step reads as ~50x cheaper), so on any
    non-CPU backend the function is also compiled (not run) for the host CPU
    from the arguments' shapes. ``compiled``: an already compiled ``fn`` for
    the default backend (used as is on CPU).

    >>> xla_flops(lambda a, b: a @ b, jnp.ones((4, 8)), jnp.ones((8, 2)))
    128.0
    """
    from jaxprune._src.flops import cost_analysis, counted_flops

    if jax.default_backend() == "cpu" and compiled is not None:
        return float(cost_analysis(compiled).get("flops", 0.0))
    return counted_flops(fn, *args)


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves)


def fit(
    model,
    variables: PyTree,
    train_ds,
    cfg: TrainConfig,
    *,
    eval_ds=None,
    tx: optax.GradientTransformation | None = None,
    masks: PyTree = None,
    pruner: Pruner | None = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Trains ``model`` from ``variables`` on ``train_ds`` for ``cfg.steps`` steps.

    Args:
      model: a Linen module following the ``train=``/``mutable`` convention.
      variables: ``{'params': ..., 'batch_stats': ...}``.
      train_ds, eval_ds: :class:`jaxprune.data.Dataset` (eval = dev split for early stopping).
      cfg: :class:`TrainConfig`.
      tx: optimizer (default :func:`sgdw`).
      masks: fixed masks: pruned weights are zeroed and stay exactly 0.
      pruner: any :class:`jaxprune.Pruner` to run during training (exclusive with ``masks``).
    """
    from jaxprune._src.data import batches  # local: data imports tensorflow-datasets

    if masks is not None and pruner is not None:
        raise ValueError("pass either masks= (fixed) or pruner=, not both")
    params, model_state = _split_variables(variables)
    own_tx = tx is None
    tx = tx if tx is not None else sgdw(cfg, params)
    if masks is not None:
        pruner = fixed_mask_pruner(masks)
    straight_through = pruner is not None and pruner.straight_through
    if pruner is not None:
        tx = sparse_optimizer(tx, pruner, key=cfg.seed)
    state = TrainState(params, dict(model_state), tx.init(params), jnp.zeros((), jnp.int32))
    if masks is not None:  # start from the masked weights
        from jaxprune._src.masks import apply_masks

        state = state._replace(params=apply_masks(params, masks))
    it = batches(
        train_ds,
        cfg.batch_size,
        seed=cfg.seed,
        shuffle=True,
        epochs=None,
        crop_padding=4 if cfg.augment else 0,
        flip=cfg.augment,
    )
    first = next(it)
    t0 = time.perf_counter()

    def compile_step():
        step_fn = make_train_step(model, tx, cfg.label_smoothing, straight_through, cfg.freeze_batch_stats)
        c = jax.jit(step_fn).lower(state, first).compile()
        return c, xla_flops(step_fn, state, first, compiled=c)

    # The default optimizer keeps its schedule in the state and a fixed-mask pruner keeps its
    # masks there: one compiled step serves every fit of the same model, shapes and recipe.
    m = _hashable(model) if (own_tx and (pruner is None or masks is not None)) else None
    key = (
        None
        if m is None
        else (
            m,
            cfg.momentum,
            cfg.nesterov,
            cfg.weight_decay,
            cfg.label_smoothing,
            cfg.freeze_batch_stats,
            masks is not None,
            _signature((state, first)),
        )
    )
    compiled, step_flops = _cache_get(_STEPS, key, compile_step)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any] | None] = (-1.0, 0, None)  # (accuracy, step, variables)
    bad_evals, times = 0, []
    eval_every = cfg.eval_every or cfg.steps
    batch = first
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    steps_run = 0
    for i in bar:
        ts = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        if i % 10 == 0 or i == cfg.steps - 1:
            metrics = {k: float(v) for k, v in metrics.items()}
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}")
        times.append(time.perf_counter() - ts)
        steps_run = i + 1
        batch = next(it)
        if eval_ds is not None and (steps_run % eval_every == 0 or steps_run == cfg.steps):
            cur = {"params": state.params, **state.model_state}
            if straight_through:  # the model being trained is the masked one
                cur["params"] = masks_lib.apply_masks(state.params, get_masks(state.opt_state))
            ev = evaluate(model, cur, eval_ds)
            history.append({"step": steps_run, "train_loss": float(metrics["loss"]), **ev})
            if ev["accuracy"] > best[0]:
                best = (ev["accuracy"], steps_run, cur)
                bad_evals = 0
            else:
                bad_evals += 1
                if cfg.patience is not None and bad_evals > cfg.patience:
                    break
    bar.close()
    jax.block_until_ready(state.params)
    final = {"params": state.params, **state.model_state}
    if straight_through:  # STE: weights stay dense during training; the trained model is the masked one
        final["params"] = masks_lib.apply_masks(state.params, get_masks(state.opt_state))
    step_seconds = float(np.median(times[1:])) if len(times) > 1 else float(times[0])
    return FitResult(
        variables=best[2] if best[2] is not None else final,
        history=history,
        best_step=best[1] if best[2] is not None else steps_run,
        best_accuracy=best[0] if best[2] is not None else None,
        steps_run=steps_run,
        step_flops=step_flops,
        seconds=time.perf_counter() - t0,
        step_seconds=step_seconds,
        masks=None if pruner is None else get_masks(state.opt_state),
    )
