"""Depth pruning: score whole residual blocks and remove the least important ones.

* :func:`block_influence` (ShortGPT's Block Influence): ``BI_i = 1 - E[cos(h_i, h_{i+1})]``
  over calibration tokens, where ``h_i`` is the residual stream entering block
  ``i``: a block that barely turns its input is cheap to drop.
* :func:`ablation_scores`: the increase of the calibration loss when block
  ``i`` alone is replaced by the identity.
* :func:`blocks_to_remove`: the ``n`` lowest-scoring blocks.
* :func:`remove_blocks_params` / :func:`remove_blocks`: drop blocks from an
  unrolled stack (``block_0 .. block_{L-1}`` subtrees, renumbered) or from a
  scanned stack (leaves under ``blocks`` with a leading layer axis, sliced),
  and return a runnable shallower model (``model.clone(num_layers=...)``, or
  ``num_hidden_layers`` for a BERT/MiniLM encoder whose layers are ``layer_{i}``).

Example:
  >>> import numpy as np
  >>> p = {'block_0': {'w': 0}, 'block_1': {'w': 1}, 'block_2': {'w': 2}, 'head': 3}
  >>> remove_blocks_params(p, [1])
  {'block_0': {'w': 0}, 'block_1': {'w': 2}, 'head': 3}
  >>> blocks_to_remove(np.array([0.3, 0.1, 0.2, 0.9]), 2)
  (1, 2)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import FrozenDict

from jaxprune._src.tree import leaves_with_paths

__all__ = ["block_influence", "ablation_scores", "blocks_to_remove", "remove_blocks_params", "remove_blocks"]


def block_influence(
    hidden_fn: Callable[[Any, Any], Any],
    params: Any,
    batches: Iterable[Any],
    *,
    row_mask: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """Block Influence of every block, ``(num_blocks,)``: ``1 - mean cos(h_i, h_{i+1})`` over all tokens.

    Args:
      hidden_fn: ``hidden_fn(params, batch)`` -> the residual stream before the first block and after every
        block: a list of ``L + 1`` arrays ``(..., d)`` or one array ``(L + 1, ..., d)``.
      batches: token batches (for LM batches ``(b, s + 1)`` pass ``b[:, :-1]`` yourself if you want), or any
        pytree batches ``hidden_fn`` accepts (e.g. a BERT batch dict).
      row_mask: ``row_mask(batch)`` -> 0/1 weights of the hidden states' leading ``(..., )`` token axes
        (e.g. an encoder's attention mask, to leave padding out); default: every token counts.

    >>> f = lambda p, t: [t, 2 * t, -2 * t]   # block 0 scales (cos 1), block 1 flips (cos -1)
    >>> block_influence(f, None, [jnp.ones((1, 2, 3))]).tolist()
    [0.0, 2.0]
    """

    @jax.jit
    def cos_sums(p, tokens):
        h = hidden_fn(p, tokens)
        h = jnp.stack(list(h)) if isinstance(h, (list, tuple)) else h
        if h.ndim < 2 or h.shape[0] < 2:
            raise ValueError(
                "block_influence: hidden_fn must return the L + 1 >= 2 hidden states (before the first block and "
                f"after every block) as a list of (..., d) arrays or one (L + 1, ..., d) array, got shape {h.shape}"
            )
        h = h.astype(jnp.float32)
        a, b = h[:-1], h[1:]
        cos = jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-12)
        if row_mask is None:
            w = jnp.ones(cos.shape[1:])
        else:
            w = jnp.asarray(row_mask(tokens))
            if w.shape != cos.shape[1:]:
                raise ValueError(
                    f"block_influence: row_mask(batch) has shape {w.shape}, expected the hidden states' token "
                    f"axes {cos.shape[1:]}"
                )
        w = w.astype(jnp.float32)
        return (cos * w).reshape(cos.shape[0], -1).sum(1), w.sum()

    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(f"block_influence: batches must be an iterable of batches, got {type(batches).__name__}")
    total, count = None, 0.0
    for tokens in batches:
        s, n = cos_sums(params, jax.tree.map(jnp.asarray, tokens))
        total = np.asarray(s, np.float64) if total is None else total + np.asarray(s, np.float64)
        count += float(n)
    if total is None:
        raise ValueError("block_influence: no calibration batches")
    if count <= 0:
        raise ValueError("block_influence: row_mask selected no token in any batch")
    out = 1.0 - total / count
    if not np.all(np.isfinite(out)):
        raise ValueError(
            f"block_influence: the scores of blocks {np.flatnonzero(~np.isfinite(out)).tolist()} are not finite "
            "(NaN/Inf hidden states: check the params and batches)"
        )
    return out


def ablation_scores(
    apply_fn: Callable[..., Any],
    params: Any,
    batches: Sequence[Any],
    num_blocks: int,
    *,
    metric: Callable[[Any, Any, Any], jax.Array] | None = None,
) -> np.ndarray:
    """Loss increase ``(num_blocks,)`` when each block alone is replaced by the identity.

    Args:
      apply_fn: ``apply_fn(params, tokens, skip) -> logits`` where ``skip`` is a tuple of block indices run
        as the identity (``LlamaDecoder.apply(v, t, skip=...)``).
      batches: LM batches ``(b, s + 1)`` (inputs and next-token targets); a sequence (read ``L + 1`` times).
      metric: for any other model (an encoder): ``metric(out, dense_out, batch) -> scalar`` (lower is
        better), where ``out = apply_fn(params, batch, skip)`` gets the *whole* batch and ``dense_out`` is
        the output with no block skipped. Score ``i`` = mean over batches of ``metric`` with block ``i``
        skipped minus the same with none skipped; e.g. ``1 - cos`` of sentence embeddings to the dense
        ones (0 for the unpruned model). Default: next-token cross-entropy of an LM, as above.

    >>> f = lambda p, t, skip: jnp.zeros(t.shape + (4,)) + (1 in skip) * jax.nn.one_hot(t, 4) * 5
    >>> float(ablation_scores(f, None, [jnp.zeros((1, 3), jnp.int32)], 2)[0])
    0.0
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"ablation_scores: num_blocks must be a positive int, got {num_blocks!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("ablation_scores: no calibration batches")

    if metric is None:
        for i, b in enumerate(batches):
            shape, dt = np.shape(b), getattr(b, "dtype", np.asarray(b).dtype)
            if len(shape) != 2 or shape[1] < 2 or not np.issubdtype(dt, np.integer):
                raise ValueError(
                    f"ablation_scores: batch {i} must be integer tokens of shape (batch, seq_len + 1) with "
                    f"seq_len >= 1, got {dt} {shape} (pass metric= for non-LM models)"
                )

    def mean_loss(skip: tuple[int, ...]) -> float:
        f = jax.jit(
            lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
                apply_fn(p, b[:, :-1], skip).astype(jnp.float32), b[:, 1:]
            ).sum()
        )
        tot = sum(float(f(params, jnp.asarray(b))) for b in batches)
        return tot / sum(int(np.shape(b)[0]) * (int(np.shape(b)[1]) - 1) for b in batches)

    if metric is not None:
        return _metric_ablation(apply_fn, params, batches, num_blocks, metric)
    base = mean_loss(())
    return np.asarray([mean_loss((i,)) - base for i in range(num_blocks)])


def _metric_ablation(apply_fn, params, batches, num_blocks, metric) -> np.ndarray:
    def scores(p, b, skip):
        ref = apply_fn(p, b, ())
        return metric(apply_fn(p, b, skip), ref, b)

    f = jax.jit(scores, static_argnums=2)
    batches = [jax.tree.map(jnp.asarray, b) for b in batches]

    def mean(skip):
        return float(np.mean([float(f(params, b, skip)) for b in batches]))

    base = mean(())
    return np.asarray([mean((i,)) - base for i in range(num_blocks)])


def blocks_to_remove(scores: Any, n: int) -> tuple[int, ...]:
    """The ``n`` blocks with the lowest scores (ties: lower index first), sorted.

    >>> blocks_to_remove([0.5, 0.5, 0.1], 2)
    (0, 2)
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 1:
        raise ValueError(f"blocks_to_remove: scores must be 1-D (one per block), got shape {s.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n < s.size:
        raise ValueError(f"blocks_to_remove: n must be an int in [0, {s.size}), got {n!r}")
    if np.isnan(s).any():
        raise ValueError("blocks_to_remove: scores contain NaN")
    return tuple(sorted(int(i) for i in np.argsort(s, kind="stable")[:n]))


class _NoBlocks(ValueError):
    """No block subtrees at this level of the params."""


def _check_blocks(blocks: Iterable[int], num: int) -> list[int]:
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise TypeError(f"remove_blocks: blocks must be an iterable of block indices, got {blocks!r}")
    blocks = list(np.asarray(blocks).reshape(-1)) if isinstance(blocks, (np.ndarray, jax.Array)) else list(blocks)
    wrong = [b for b in blocks if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer))]
    if wrong:
        raise TypeError(f"remove_blocks: block indices must be ints, got {wrong[:5]}")
    out = sorted({int(b) for b in blocks})
    bad = [b for b in out if not 0 <= b < num]
    if bad:
        raise ValueError(f"remove_blocks: block indices {bad} out of range for {num} blocks")
    if len(out) >= num:
        raise ValueError(f"remove_blocks: cannot remove all {num} blocks")
    return out


def remove_blocks_params(
    params: Mapping[str, Any], blocks: Iterable[int], *, prefix: str = "block_", scan_key: str = "blocks"
) -> Mapping[str, Any]:
    """``params`` without the given blocks: ``{prefix}{i}`` subtrees renumbered, or ``scan_key`` leaves sliced.

    Works on the first level holding the blocks (a Linen ``{'params': ...}`` dict: each collection).
    Raises ``ValueError`` if no blocks are found or an index is out of range.

    >>> import numpy as np
    >>> remove_blocks_params({'blocks': {'w': np.arange(3)}}, [0])['blocks']['w'].tolist()
    [1, 2]
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"remove_blocks_params: params must be a mapping, got {type(params).__name__}")
    if isinstance(params, FrozenDict):
        return FrozenDict(remove_blocks_params(params.unfreeze(), blocks, prefix=prefix, scan_key=scan_key))
    rx = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    idx = sorted(int(m.group(1)) for k in params if (m := rx.match(str(k))))
    if idx:
        if idx != list(range(len(idx))):
            raise ValueError(f"remove_blocks_params: blocks must be numbered {prefix}0.., got indices {idx}")
        drop = _check_blocks(blocks, len(idx))
        new_index = {i: j for j, i in enumerate(i for i in idx if i not in drop)}
        out = {}
        for k, v in params.items():
            m = rx.match(str(k))
            if m is None:
                out[k] = v
            elif int(m.group(1)) in new_index:
                out[f"{prefix}{new_index[int(m.group(1))]}"] = v
        return out
    if scan_key in params:
        leaves = leaves_with_paths(params[scan_key])
        sizes = {p: (np.shape(x)[0] if np.ndim(x) else None) for p, x in leaves}
        if not leaves or len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(
                f"remove_blocks_params: the leaves under {scan_key!r} must all have the same leading (layer) axis, "
                f"got leading sizes {dict(list(sizes.items())[:8])}"
            )
        num = int(next(iter(sizes.values())) or 0)
        drop = _check_blocks(blocks, num)
        keep = np.asarray([i for i in range(num) if i not in drop])
        return {**params, scan_key: jax.tree.map(lambda x: x[keep], params[scan_key])}
    nested = [k for k, v in params.items() if isinstance(v, Mapping)]
    if nested and all(isinstance(params[k], Mapping) for k in nested):
        found = {}
        for k in nested:
            try:
                found[k] = remove_blocks_params(params[k], blocks, prefix=prefix, scan_key=scan_key)
            except _NoBlocks:
                continue
        if found:
            return {**params, **found}
    raise _NoBlocks(f"remove_blocks_params: no '{prefix}<i>' subtrees and no {scan_key!r} key in {list(params)}")


def remove_blocks(model: Any, variables: Any, blocks: Iterable[int], *, prefix: str | None = None) -> tuple[Any, Any]:
    """``(shallower_model, variables)``: the model cloned with ``L - k`` layers and the variables without ``blocks``.

    ``model`` is a Linen model with a ``num_layers`` (e.g. :class:`jaxprune.models.llama.LlamaDecoder`) or
    ``num_hidden_layers`` (e.g. :class:`jaxprune.models.bert.BertEncoder`) field whose blocks are
    ``{prefix}{i}`` submodules (``prefix`` default: ``'block_'``, else ``'layer_'``, whichever the variables
    hold) or one scanned ``blocks`` submodule. The shallower model computes exactly what the original
    computes with those blocks replaced by the identity.

    >>> import jax
    >>> from jaxprune.models.llama import llama_tiny_test
    >>> m = llama_tiny_test(num_layers=3); v = m.init(jax.random.key(0), m.example_input(1))
    >>> m2, v2 = remove_blocks(m, v, [1]); m2.num_layers, sorted(k for k in v2['params'] if k.startswith('block'))
    (2, ['block_0', 'block_1'])
    """
    field = next((f for f in ("num_layers", "num_hidden_layers") if hasattr(model, f)), None)
    if field is None or not hasattr(model, "clone"):
        raise TypeError(
            "remove_blocks: model must be a Linen model with a num_layers or num_hidden_layers field, "
            f"got {type(model).__name__}"
        )
    num = int(getattr(model, field))
    blocks = _check_blocks(blocks, num)
    new_vars = None
    for pre in (prefix,) if prefix is not None else ("block_", "layer_"):
        try:
            new_vars = remove_blocks_params(variables, blocks, prefix=pre)
        except _NoBlocks:
            if prefix is not None or pre == "layer_":
                raise
            continue
        prefix = pre
        break
    old_to_new = {i: j for j, i in enumerate(i for i in range(num) if i not in blocks)}
    rx = re.compile(rf"^{re.escape(str(prefix))}(\d+)(/.*)?$")

    def renumber(entries, key=lambda e: e, rebuild=lambda e, k: k):
        out = []
        for e in entries:
            m = rx.match(key(e))
            if m is None:
                out.append(e)
            elif int(m.group(1)) in old_to_new:
                out.append(rebuild(e, f"{prefix}{old_to_new[int(m.group(1))]}{m.group(2) or ''}"))
        return tuple(out)

    changes: dict[str, Any] = {field: num - len(blocks)}
    if getattr(model, "widths", ()):
        changes["widths"] = renumber(model.widths, key=lambda e: e[0], rebuild=lambda e, k: (k, e[1]))
    if getattr(model, "biases", ()):
        changes["biases"] = renumber(model.biases)
    return model.clone(**changes), new_vars
