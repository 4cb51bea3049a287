"""Evaluating pruned language models: perplexity, a short (recovery) finetune, embedding fidelity.

A decoder is any ``apply_fn(params, tokens) -> logits (batch, seq, vocab)``;
batches are int arrays ``(batch, seq_len + 1)`` (inputs and next-token
targets, as :func:`jaxprune._src.llm.text_data.lm_batches` yields them).

Example:
  >>> import jax.numpy as jnp
  >>> uniform = lambda p, t: jnp.zeros(t.shape + (16,))
  >>> round(perplexity(uniform, {}, [jnp.zeros((2, 5), jnp.int32)]), 3)
  16.0
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src.tree import check_same_structure, is_none, leaves_with_paths

__all__ = ["lm_loss", "perplexity", "finetune_lm", "embedding_fidelity"]

ApplyFn = Callable[[Any, jax.Array], jax.Array]
_NUMBER = (int, float, np.integer, np.floating)


def lm_loss(apply_fn: ApplyFn, params: Any, batch: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats) of ``batch`` ``(b, s + 1)``.

    >>> float(lm_loss(lambda p, t: jnp.zeros(t.shape + (4,)), {}, jnp.zeros((1, 3), jnp.int32)))  # log 4
    1.3862943649291992
    """
    return _loss_and_vocab(apply_fn, params, batch, "lm_loss: batch")[0]


def _loss_and_vocab(apply_fn: ApplyFn, params: Any, batch: jax.Array, what: str) -> tuple[jax.Array, int]:
    _check_tokens(batch, what)
    x, y = batch[:, :-1], batch[:, 1:]
    logits = apply_fn(params, x).astype(jnp.float32)
    if logits.ndim != 3 or logits.shape[:2] != x.shape:
        raise ValueError(
            f"apply_fn(params, tokens {x.shape}) must return logits (batch, seq, vocab) = "
            f"{(*x.shape, 'vocab')}, got shape {logits.shape}"
        )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), int(logits.shape[-1])


def _check_tokens(batch: Any, what: str) -> None:
    shape, dtype = np.shape(batch), getattr(batch, "dtype", None)
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"{what} must have shape (batch, seq_len + 1) with seq_len >= 1, got {shape}")
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{what} must hold integer token ids, got dtype {dtype}")


def perplexity(apply_fn: ApplyFn, params: Any, batches: Iterable[Any]) -> float:
    """``exp`` of the token-weighted mean next-token loss over ``batches`` (one jit compilation per shape).

    Raises ``ValueError`` for no batches, a batch that is not ``(b, s + 1)`` with ``s >= 1`` or target ids
    outside the logits' vocab, ``TypeError`` for non-integer tokens; warns when a batch's loss is not finite.
    """

    def loss_sum(p, b):
        loss, vocab = _loss_and_vocab(apply_fn, p, b, "perplexity: batch")
        in_vocab = jnp.all((b[:, 1:] >= 0) & (b[:, 1:] < vocab))
        return loss * (b.shape[0] * (b.shape[1] - 1)), in_vocab, jnp.int32(vocab)

    f = jax.jit(loss_sum)
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(f"perplexity: batches must be an iterable of token batches, got {type(batches).__name__}")
    total, count = 0.0, 0
    for i, b in enumerate(batches):
        b = jnp.asarray(b)
        _check_tokens(b, f"perplexity: batch {i}")
        loss, in_vocab, vocab = f(params, b)
        if not bool(in_vocab):
            raise ValueError(
                f"perplexity: batch {i} has target token ids outside [0, {int(vocab)}) (the logits' vocab)"
            )
        if not math.isfinite(float(loss)):
            warnings.warn(
                f"perplexity: the loss on batch {i} is not finite (NaN/Inf logits from apply_fn)", stacklevel=2
            )
        total += float(loss)
        count += b.shape[0] * (b.shape[1] - 1)
    if count == 0:
        raise ValueError("perplexity: no batches")
    return math.exp(total / count)


def _check_masks(params: Any, masks: Any) -> Any:
    """``masks`` with the structure and shapes of ``params``, boolean (0/1 numeric masks are converted)."""
    check_same_structure(params, masks, what="finetune_lm: masks")

    def one(path: str, m: Any) -> Any:
        if m is None:
            return None
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            if not bool(jnp.all((m == 0) | (m == 1))):
                raise ValueError(
                    f"finetune_lm: masks leaf {path!r} must be a boolean keep-mask (or 0/1), got {m.dtype}"
                )
            m = m.astype(bool)
        return m

    checked = [one(path, m) for path, m in leaves_with_paths(masks, is_leaf=is_none)]
    return jax.tree.unflatten(jax.tree.structure(params), checked)  # the params' containers (dict vs FrozenDict)


def _apply_masks(params: Any, masks: Any) -> Any:
    if masks is None:
        return params
    return jax.tree.map(lambda m, p: p if m is None else p * m.astype(p.dtype), masks, params, is_leaf=is_none)


def finetune_lm(
    apply_fn: ApplyFn,
    params: Any,
    batches: Iterable[Any],
    *,
    steps: int,
    learning_rate: float = 1e-3,
    warmup: int = 0,
    weight_decay: float = 0.0,
    masks: Any = None,
    teacher_fn: ApplyFn | None = None,
    teacher_params: Any = None,
    distill_weight: float = 0.5,
    temperature: float = 1.0,
    log_every: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Trains (or recovery-finetunes) a decoder with AdamW + cosine decay for ``steps`` batches.

    Args:
      masks: bool masks (``None`` at unpruned leaves): pruned weights stay exactly zero.
      teacher_fn, teacher_params: distillation: the loss is ``(1 - w) * CE + w * KL(teacher || student)``
        at ``temperature`` with ``w = distill_weight``.
      log_every: print the mean loss every that many steps (0: quiet).

    Returns ``(params, info)`` with ``info['losses']`` (per step) and ``info['seconds']``.

    >>> import jax.numpy as jnp
    >>> p = {'b': jnp.zeros(4)}
    >>> f = lambda p, t: jnp.broadcast_to(p['b'], t.shape + (4,))
    >>> q, info = finetune_lm(f, p, [jnp.zeros((2, 3), jnp.int32)] * 20, steps=20, learning_rate=0.1)
    >>> info['losses'][-1] < info['losses'][0]
    True
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"finetune_lm: steps must be a positive int, got {steps!r}")
    if (teacher_fn is None) != (teacher_params is None):
        raise ValueError("finetune_lm: pass both teacher_fn and teacher_params for distillation, or neither")
    for name, val, lo, hi in (
        ("learning_rate", learning_rate, 0.0, math.inf),
        ("weight_decay", weight_decay, 0.0, math.inf),
        ("distill_weight", distill_weight, 0.0, 1.0),
    ):
        if isinstance(val, bool) or not isinstance(val, _NUMBER) or not lo <= val <= hi or math.isnan(val):
            raise ValueError(f"finetune_lm: {name} must be a finite number in [{lo}, {hi}], got {val!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, _NUMBER) or not 0 < temperature < math.inf:
        raise ValueError(f"finetune_lm: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ValueError(f"finetune_lm: warmup must be an int >= 0, got {warmup!r}")
    if masks is not None:
        masks = _check_masks(params, masks)
    w = max(int(warmup), 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, learning_rate, w, max(steps, w + 1))
    opt = optax.adamw(sched, b2=0.95, weight_decay=weight_decay)
    params = _apply_masks(params, masks)
    state = opt.init(params)

    def loss_fn(p, b):
        ce = lm_loss(apply_fn, p, b)
        if teacher_fn is None:
            return ce
        t_logits = jax.lax.stop_gradient(teacher_fn(teacher_params, b[:, :-1]).astype(jnp.float32))
        s_logits = apply_fn(p, b[:, :-1]).astype(jnp.float32)
        t_prob = jax.nn.softmax(t_logits / temperature, -1)
        kl = jnp.sum(
            t_prob * (jax.nn.log_softmax(t_logits / temperature, -1) - jax.nn.log_softmax(s_logits / temperature, -1)),
            -1,
        )
        return (1 - distill_weight) * ce + distill_weight * (temperature**2) * kl.mean()

    @jax.jit
    def step(p, s, b):
        loss, g = jax.value_and_grad(loss_fn)(p, b)
        g = _apply_masks(g, masks)
        upd, s = opt.update(g, s, p)
        p = _apply_masks(optax.apply_updates(p, upd), masks)
        return p, s, loss

    losses: list[float] = []
    t0 = time.perf_counter()
    it = iter(batches)
    for i in range(steps):
        try:
            b = next(it)
        except StopIteration:
            raise ValueError(f"finetune_lm: batches ran out after {i} of {steps} steps") from None
        params, state, loss = step(params, state, jnp.asarray(b))
        losses.append(float(loss))
        if log_every and (i + 1) % log_every == 0:
            print(f"  step {i + 1}/{steps}: loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    return params, {"losses": losses, "seconds": time.perf_counter() - t0}


def embedding_fidelity(embeddings: Any, dense_embeddings: Any) -> dict[str, float]:
    """How close pruned sentence embeddings ``(n, d)`` are to the dense ones: mean cosine and similarity error.

    ``mean_cosine``: mean over sentences of cos(pruned_i, dense_i); ``sim_mae``: mean absolute error of the
    ``n x n`` cosine-similarity matrix; ``sim_rel_fro``: its relative Frobenius error.

    >>> e = np.eye(3)
    >>> embedding_fidelity(e, e)['mean_cosine']
    1.0
    """
    a = np.asarray(embeddings, np.float64)
    b = np.asarray(dense_embeddings, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(
            f"embedding_fidelity: expected two (n, d) arrays of the same shape with n >= 1, got {a.shape} and {b.shape}"
        )
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sa, sb = an @ an.T, bn @ bn.T
    return {
        "mean_cosine": round(float(np.mean(np.sum(an * bn, 1))), 12),
        "sim_mae": float(np.mean(np.abs(sa - sb))),
        "sim_rel_fro": float(np.linalg.norm(sa - sb)) / max(float(np.linalg.norm(sb)), 1e-12),
    }
