"""Calibrated structured pruning with bias compensation (FLAP-style), through the structured engine.

1. :func:`input_moments` runs a Linen model on calibration batches and
   accumulates, for the input of every ``nn.Dense`` / ``nn.DenseGeneral``, the
   per-input-element sum and sum of squares over tokens (memory: two arrays the
   size of the layer's input features; activations are never stored).
2. :func:`calibrated_unit_scores` scores every prunable group of a
   :func:`jaxprune.trace_groups` graph from the layers that *consume* its units
   (a head group's ``o`` rows, an MLP group's ``down`` rows, the residual
   width's ``q/k/v/gate/up`` rows): FLAP's fluctuation metric
   ``Var_tokens(x_j) * ||W_j||^2`` or a Wanda-style ``sqrt(E[x_j^2]) * ||W_j||_1``,
   summed over a unit's input elements and its consumers.
3. :func:`compensate_biases`: for every consumer layer whose inputs lose
   elements ``P`` under a plan, the pruned elements' mean contribution
   ``sum_{j in P} E[x_j] W_j`` is added to the layer's output bias (a bias leaf is
   created if the layer has none), so the layer's mean output over the
   calibration tokens is unchanged; the bias is then shrunk like the layer's
   output axes.
4. :func:`flap_prune` ties it together: trace -> moments -> scores -> ``make_plan(unit_scores=...)``
   -> ``shrink`` -> compensation. By default (``recalibrate=True``) the compensation is then refined on
   the pruned model itself: the calibration batches are run again through the pruned, compensated model
   and every bias is set so that its layer's mean output equals the dense layer's
   (``b + E_dense[x] W - E_pruned[x_kept] W_kept``), pass after pass until it no longer changes -- the
   one-shot biases use dense-model means, which are wrong for layers whose inputs changed upstream.
5. Inputs may be any pytree (a BERT batch dict); ``row_mask`` leaves padding tokens out.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> class M(nn.Module):
  ...     @nn.compact
  ...     def __call__(self, x):
  ...         return nn.Dense(3, name='down')(jax.nn.relu(nn.Dense(8, name='up')(x)))
  >>> m = M(); v = m.init(jax.random.key(0), jnp.ones((1, 4)))
  >>> xs = [jax.random.normal(jax.random.key(1), (16, 4))]
  >>> small, plan, info = flap_prune(lambda v, x: m.apply(v, x), v, xs[0], xs, 0.5)
  >>> small['params']['down']['kernel'].shape, small['params']['down']['bias'].shape
  ((4, 3), (3,))
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.core import FrozenDict

from jaxprune._src.tree import leaves_with_paths, map_with_path

__all__ = [
    "InputMoments",
    "input_moments",
    "calibrated_unit_scores",
    "compensate_biases",
    "flap_prune",
    "within_kv_groups",
    "DEFAULT_COMPENSATE",
]

#: Consumer kernels (regexes on leaf paths) that get output-bias compensation by default: attention output
#: and MLP down projections (their outputs are not themselves pruned through RoPE or gating).
DEFAULT_COMPENSATE = (r"(^|/)(o|out|o_proj|out_proj|down|down_proj|fc2|wo)/kernel$",)
_KINDS = ("heads", "units", "channels", "head_dim")  # the group kinds of jaxprune.trace_groups


@dataclasses.dataclass(frozen=True)
class InputMoments:
    """Per-input-element statistics of one linear layer's input over calibration tokens.

    ``sum`` and ``sq_sum`` have the shape of the kernel's input axes (``kernel.shape[:n_in]``); ``count`` is
    the number of tokens.
    """

    sum: np.ndarray
    sq_sum: np.ndarray
    count: int
    n_in: int

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        """Variance over tokens (population; clipped at 0)."""
        return np.maximum(self.sq_sum / max(self.count, 1) - self.mean**2, 0.0)


def _n_in(module: nn.Module) -> int | None:
    if isinstance(module, nn.Dense):
        return 1
    if isinstance(module, nn.DenseGeneral):
        axis = module.axis
        return len(axis) if isinstance(axis, (tuple, list)) else 1
    return None


def input_moments(
    apply_fn: Callable[[Any, Any], Any],
    variables: Any,
    batches: Iterable[Any],
    *,
    dtype: Any = jnp.float32,
    row_mask: Callable[[Any], Any] | None = None,
) -> dict[str, InputMoments]:
    """``{kernel leaf path: InputMoments}`` of every ``nn.Dense`` / ``nn.DenseGeneral`` called by ``apply_fn``.

    ``apply_fn(variables, batch)`` must call a Linen ``Module.apply`` (the interception is
    ``nn.intercept_methods``); a batch is any pytree of arrays (e.g. a BERT batch
    ``{'input_ids', 'attention_mask', ...}``). Paths are those of ``variables``
    (``'params/block_0/mlp/down/kernel'`` for a Linen variables dict). One jit compilation per batch shape;
    float32 accumulation.

    ``row_mask(batch)`` (optional) gives a ``(batch, seq)`` 0/1 array of the tokens to count (e.g. the
    attention mask, to leave padding out); it applies to every layer whose input has those leading axes
    (layers on other shapes, e.g. a pooler on the first token only, count all their rows).

    >>> import flax.linen as nn
    >>> d = nn.Dense(2); v = d.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> mom = input_moments(d.apply, v, [jnp.arange(6.).reshape(2, 3)])
    >>> mom['params/kernel'].mean.tolist(), mom['params/kernel'].count
    ([1.5, 2.5, 3.5], 2)
    """
    return _moments(apply_fn, variables, batches, dtype=dtype, row_mask=row_mask)


def _moments(
    apply_fn: Callable[[Any, Any], Any],
    variables: Any,
    batches: Iterable[Any],
    *,
    dtype: Any = jnp.float32,
    row_mask: Callable[[Any], Any] | None = None,
    offsets: Mapping[str, np.ndarray] | None = None,
    stats_fn: Callable[..., Any] | None = None,
) -> dict[str, InputMoments]:
    """:func:`input_moments`; ``offsets`` (``{kernel path: array of the layer's output features}``) are added
    to those layers' outputs while calibrating (compensation biases on a model whose layers have none).
    ``stats_fn``: a :func:`_stats_fn` to reuse (one compilation for repeated passes)."""
    offs = {k: jnp.asarray(v, dtype) for k, v in (offsets or {}).items()}
    f = stats_fn or _stats_fn(apply_fn, variables, dtype, row_mask)
    out: dict[str, list] = {}
    for batch in batches:
        try:
            found = f(variables, jax.tree.map(jnp.asarray, batch), offs).items()
        except jax.errors.UnexpectedTracerError as e:
            raise ValueError(
                "input_moments / flap_prune: a layer runs inside a JAX transformation of the model's own (most "
                "likely a scanned layer stack, nn.scan / scan_layers=True); FLAP's per-layer input moments are "
                "intercepted with nn.intercept_methods, which cannot see into it: calibrate the unrolled model "
                "(the same params unstacked into one module per layer), or use wanda_masks / sparsegpt, which "
                "calibrate scanned stacks per layer"
            ) from e
        for k, (s, q, c) in found:
            s, q = np.asarray(s, np.float64), np.asarray(q, np.float64)
            if k in out:
                out[k][0] += s
                out[k][1] += q
                out[k][2] += int(round(float(c)))
            else:
                out[k] = [s, q, int(round(float(c)))]
    if not out:
        raise ValueError("input_moments: no calibration batches, or apply_fn calls no nn.Dense / nn.DenseGeneral")
    bad = [k for k, (s, q, _) in out.items() if not (np.all(np.isfinite(s)) and np.all(np.isfinite(q)))]
    if bad:
        raise ValueError(
            f"input_moments: the inputs of kernels {bad[:5]} are not finite (NaN/Inf in the calibration batches "
            "or variables, or overflow in low precision)"
        )
    empty = [k for k, (_, _, c) in out.items() if c < 1]
    if empty:
        raise ValueError(f"input_moments: kernels {empty[:5]} saw no calibration token (row_mask all zero?)")
    return {k: InputMoments(s, q, c, s.ndim) for k, (s, q, c) in out.items()}


def _stats_fn(
    apply_fn: Callable[[Any, Any], Any], variables: Any, dtype: Any, row_mask: Callable[[Any], Any] | None
) -> Callable[..., Any]:
    """Jitted ``(variables, batch, offsets) -> {kernel path: (sum, sq_sum, count)}`` for one batch."""
    prefix = ["params"] if isinstance(variables, Mapping) and "params" in variables else []

    def stats(v, batch, offs):
        found: dict[str, tuple[jax.Array, jax.Array, jax.Array]] = {}
        mask = None if row_mask is None else jnp.asarray(row_mask(batch)).astype(dtype)
        token_shapes: list[tuple[int, ...]] = []  # leading (token) axes of every layer input, for row_mask

        def interceptor(next_fun, args, kwargs, context):
            n_in = _n_in(context.module) if context.method_name == "__call__" else None
            if n_in is not None and args:
                x = jnp.asarray(args[0]).astype(dtype)
                flat = x.reshape((-1,) + x.shape[x.ndim - n_in :])
                path = "/".join([*prefix, *context.module.path, "kernel"])
                token_shapes.append(tuple(x.shape[: x.ndim - n_in]))
                if mask is not None and x.shape[: x.ndim - n_in] == mask.shape:
                    r = mask.reshape((-1,) + (1,) * n_in)
                    s, q, c = (flat * r).sum(0), (flat * flat * r).sum(0), mask.sum()
                else:
                    s, q, c = flat.sum(0), (flat * flat).sum(0), jnp.asarray(flat.shape[0], dtype)
                if path in found:  # a layer called twice: accumulate
                    s0, q0, c0 = found[path]
                    s, q, c = s + s0, q + q0, c + c0
                found[path] = (s, q, c)
                if path in offs:
                    y = next_fun(*args, **kwargs)
                    return y + offs[path].astype(y.dtype)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            apply_fn(v, batch)
        if mask is not None and token_shapes and tuple(mask.shape) not in token_shapes:
            raise ValueError(
                f"input_moments: row_mask(batch) has shape {tuple(mask.shape)}, but no layer input has those leading "
                f"(token) axes (they are {sorted(set(token_shapes))}), so it would be ignored"
            )
        return found

    return jax.jit(stats)


def _params_by_path(params: Any) -> dict[str, np.ndarray]:
    return {p: x for p, x in leaves_with_paths(params)}


def _element_scores(kernel: np.ndarray, mom: InputMoments, method: str) -> np.ndarray:
    """Score of every input element of a consumer layer (shape ``kernel.shape[:n_in]``)."""
    w = np.asarray(kernel, np.float64)
    out_axes = tuple(range(mom.n_in, w.ndim))
    if method == "fluctuation":
        return mom.var * np.sum(w * w, axis=out_axes)
    if method == "wanda":
        return np.sqrt(mom.sq_sum / max(mom.count, 1)) * np.sum(np.abs(w), axis=out_axes)
    raise ValueError(f"method must be 'fluctuation' or 'wanda', got {method!r}")


def calibrated_unit_scores(
    params: Any, graph: Any, moments: Mapping[str, InputMoments], *, method: str = "fluctuation"
) -> dict[str, np.ndarray]:
    """``{group name: per-unit scores}`` for every prunable group with at least one calibrated consumer.

    A consumer is a group member on a kernel in ``moments`` along one of its input axes; a unit's score is the
    sum of the element scores (``method``: ``'fluctuation'`` = ``Var(x_j) ||W_j||^2``, ``'wanda'`` =
    ``sqrt(E x_j^2) ||W_j||_1``) over the input elements it owns, over all its consumers. Pass the result
    to ``make_plan(..., unit_scores=...)``.
    """
    if method not in ("fluctuation", "wanda"):
        raise ValueError(f"calibrated_unit_scores: method must be 'fluctuation' or 'wanda', got {method!r}")
    leaves = _params_by_path(params)
    cache: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for g in graph.prunable:
        total = np.zeros(g.size, np.float64)
        used = False
        for m in g.members:
            mom = moments.get(m.path)
            if mom is None or m.axis >= mom.n_in:
                continue
            if m.path not in cache:
                cache[m.path] = _element_scores(np.asarray(leaves[m.path]), mom, method)
            el = cache[m.path]
            other = tuple(a for a in range(el.ndim) if a != m.axis)
            per_index = el.sum(axis=other) if other else el
            total += per_index[np.asarray(m.index_map)].sum(1)
            used = True
        if used:
            out[g.name] = total
    return out


def within_kv_groups(graph: Any) -> list[Any]:
    """The head groups of a GQA graph that select query heads *within* every kv group.

    Such a group's roots all lie on one leaf (the query kernel) that is also a root of another head group
    with more root leaves (the kv group: k, v and the query kernel, whole query groups per unit).
    """
    heads = [g for g in graph.groups if g.kind == "heads"]
    multi = {p for g in heads if len({m.path for m in g.roots}) > 1 for p in (m.path for m in g.roots)}
    out = []
    for g in graph.prunable:
        roots = {m.path for m in g.roots}
        if g.kind == "heads" and len(roots) == 1 and roots <= multi:
            out.append(g)
    return out


def _kept_inputs(shape: tuple[int, ...], n_in: int, in_axes: Mapping[int, Sequence[int]]) -> np.ndarray:
    kept = np.ones(shape[:n_in], bool)
    for a, k in in_axes.items():
        along = np.zeros(shape[a], bool)
        along[list(k)] = True
        kept &= along.reshape([-1 if i == a else 1 for i in range(n_in)])
    return kept


def _bias_offsets(
    params: Any,
    plan: Any,
    moments: Mapping[str, InputMoments],
    compensate: Sequence[str],
    pruned_moments: Mapping[str, InputMoments] | None = None,
) -> dict[str, np.ndarray]:
    """``{consumer kernel path: output offset (dense output coordinates)}``.

    Without ``pruned_moments``: ``sum_{j in P} E[x_j] W_j`` (FLAP). With them (the consumer's input moments
    measured on the pruned, already compensated model): ``E_dense[x] W - E_pruned[x_kept] W_kept``, which
    makes the consumer's mean output over the calibration tokens equal the dense model's.
    """
    leaves = _params_by_path(params)
    rx = [re.compile(r) for r in compensate]
    out = {}
    for path, axes in plan.leaves.items():
        mom = moments.get(path)
        if mom is None or not any(r.search(path) for r in rx):
            continue
        in_axes = {a: k for a, k in axes.items() if a < mom.n_in}
        if not in_axes:
            continue
        w = np.asarray(leaves[path], np.float64)
        kept = _kept_inputs(w.shape, mom.n_in, in_axes)
        if pruned_moments is None or path not in pruned_moments:
            contrib = mom.mean * (~kept)
        else:
            contrib = mom.mean - pruned_moments[path].mean * kept
        out[path] = np.tensordot(contrib, w, axes=(list(range(mom.n_in)), list(range(mom.n_in))))
    return out


def _write_biases(params: Any, shrunk_params: Any, plan: Any, offsets: Mapping[str, np.ndarray]) -> Any:
    leaves = _params_by_path(params)
    out = jax.tree.map(lambda x: x, shrunk_params)  # a copy of the containers
    for path, comp in offsets.items():
        n_in = np.ndim(leaves[path]) - comp.ndim
        bias_path = path[: -len("kernel")] + "bias"
        old = leaves.get(bias_path)
        bias = comp + (np.asarray(old, np.float64) if old is not None else 0.0)
        for a, k in plan.leaves[path].items():
            if a >= n_in:
                bias = np.take(bias, list(k), axis=a - n_in)
        _set_path(out, bias_path, jnp.asarray(bias, np.asarray(leaves[path]).dtype))
    return out


def compensate_biases(
    params: Any,
    shrunk_params: Any,
    plan: Any,
    moments: Mapping[str, InputMoments],
    *,
    compensate: Sequence[str] = DEFAULT_COMPENSATE,
    pruned_moments: Mapping[str, InputMoments] | None = None,
) -> tuple[Any, list[str]]:
    """Adds each pruned input element's mean contribution to its layer's (new or existing) output bias.

    For a consumer kernel ``W`` (dense coordinates, from ``params``) matching a ``compensate`` regex whose
    input axes lose elements ``P`` in ``plan``: ``b' = b + sum_{j in P} E[x_j] W_j``, then shrunk along the
    kernel's pruned output axes, written next to the kernel in ``shrunk_params`` (nested dicts). Returns
    ``(new_shrunk_params, [compensated kernel paths])``.

    ``pruned_moments`` (optional, the consumers' input moments on the pruned model, see
    :func:`flap_prune`'s ``recalibrate``): ``b' = b + E_dense[x] W - E_pruned[x_kept] W_kept`` instead, which
    also corrects the drift of the kept inputs' means caused by pruning upstream layers.
    """
    if not isinstance(getattr(plan, "leaves", None), Mapping):
        raise TypeError(f"compensate_biases: plan must be a PrunePlan (from make_plan), got {type(plan).__name__}")
    offsets = _bias_offsets(params, plan, moments, _compensate_regexes(compensate, "compensate_biases"), pruned_moments)
    return _write_biases(params, shrunk_params, plan, offsets), list(offsets)


def _compensate_regexes(compensate: Any, where: str) -> tuple[str, ...]:
    if isinstance(compensate, (str, bytes)) or not isinstance(compensate, Iterable):
        raise TypeError(f"{where}: compensate must be a list of regexes on kernel paths, got {compensate!r}")
    out = tuple(compensate)
    for r in out:
        if not isinstance(r, str):
            raise TypeError(f"{where}: compensate must be a list of regex strings, got entry {r!r}")
        try:
            re.compile(r)
        except re.error as e:
            raise ValueError(f"{where}: compensate: invalid regex {r!r}: {e}") from None
    return out


def _masked_dense(variables: Any, plan: Any) -> Any:
    """``variables`` with every unit the plan prunes zeroed (dense shapes: the shrunk model's computation)."""

    def one(path, x):
        axes = plan.leaves.get(path)
        if not axes:
            return x
        keep = np.ones(np.shape(x), bool)
        for a, k in axes.items():
            along = np.zeros(np.shape(x)[a], bool)
            along[list(k)] = True
            keep &= along.reshape([-1 if i == a else 1 for i in range(np.ndim(x))])
        return jnp.where(jnp.asarray(keep), x, jnp.zeros((), jnp.asarray(x).dtype))

    return map_with_path(one, variables)


def _set_path(tree: Any, path: str, value: Any) -> None:
    parts = path.split("/")
    node = tree
    for p in parts[:-1]:
        if not isinstance(node, dict):
            raise TypeError(f"compensate_biases: cannot add leaf {path!r}: {p!r} is not in a plain dict")
        node = node[p]
    if not isinstance(node, dict):
        raise TypeError(f"compensate_biases: cannot add leaf {path!r} (its parent is not a plain dict)")
    node[parts[-1]] = value


def _to_dicts(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_dicts(v) for k, v in tree.items()}
    return tree


def flap_prune(
    apply_fn: Callable[[Any, Any], Any],
    variables: Any,
    example: Any,
    batches: Iterable[Any],
    ratio: float,
    *,
    method: str = "fluctuation",
    compensate: bool | Sequence[str] = True,
    kinds: Sequence[str] = ("heads", "units"),
    through_norms: bool = False,
    ignore: Sequence[str] | None = None,
    round_to: int = 1,
    query_heads: bool = False,
    row_mask: Callable[[Any], Any] | None = None,
    recalibrate: bool | int = True,
) -> tuple[Any, Any, dict]:
    """Calibrated structured pruning: ``(shrunk_variables, plan, info)``.

    Args:
      apply_fn, variables, example: the model as for :func:`jaxprune.trace_groups` (a Linen
        ``Module.apply`` inside ``apply_fn``, for :func:`input_moments`).
      batches: calibration inputs (each a valid ``apply_fn`` input).
      ratio: fraction of the units of every eligible group pruned (layerwise).
      method: ``'fluctuation'`` (FLAP) or ``'wanda'``.
      compensate: ``True`` (the :data:`DEFAULT_COMPENSATE` layers), ``False``, or regexes of consumer kernels.
      kinds: group kinds pruned (``'heads'``: query heads and kv groups; ``'units'``: MLP channels and, with
        ``through_norms=True``, the residual width).
      ignore: regexes of root leaf paths kept whole.
      query_heads: also prune query heads *within* each kv group (GQA). Default ``False``: heads go by whole
        query groups (a kv head with its query heads), so ``ratio`` is the fraction of heads removed.
      row_mask: ``row_mask(batch)`` -> ``(batch, seq)`` 0/1 tokens to calibrate on (see :func:`input_moments`;
        e.g. ``lambda b: b['attention_mask']`` for a padded encoder batch).
      recalibrate: compensation on the pruned model. ``False`` (one shot): every bias gets the pruned
        inputs' *dense-model* means, although the inputs of a layer change once the layers before it are
        pruned (on the byte-level decoder at 50% width this made perplexity worse than no compensation).
        ``True`` (default; FLAP also calibrates each layer on the pruned layers before it) or a number of
        passes: re-run the calibration batches through the pruned,
        compensated model (dense shapes, pruned units zeroed; compensation added at the consumers' outputs)
        and set each bias so that the layer's mean output equals the dense model's, ``b + E_dense[x] W -
        E_pruned[x_kept] W_kept``; repeated until no bias changes (``True``: at most one pass per
        compensated layer, which makes every layer exact given the ones before it). With
        ``through_norms=True`` the zeroed dense model only approximates the shrunk one (norm statistics).

    ``info``: ``calibration_seconds``, ``compensated`` (kernel paths), ``scored_groups``, ``recalibration_passes``.
    Rebuild the model from the shrunk variables (e.g. :func:`jaxprune.models.llama.llama_rebuild`) or run it
    with :func:`jaxprune.make_shrunk_fn`.
    """
    from jaxprune._src.structured.plan import make_plan
    from jaxprune._src.structured.shrink import shrink
    from jaxprune._src.structured.trace import trace_groups

    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"flap_prune: ratio must be a number in [0, 1), got {ratio!r}")
    if not isinstance(recalibrate, (bool, int)) or recalibrate < 0:
        raise ValueError(f"flap_prune: recalibrate must be a bool or an int >= 0, got {recalibrate!r}")
    if isinstance(kinds, (str, bytes)) or not isinstance(kinds, Iterable) or not set(kinds) <= set(_KINDS):
        raise ValueError(f"flap_prune: kinds must be a list of group kinds from {list(_KINDS)}, got {kinds!r}")
    if not isinstance(compensate, bool):
        compensate = _compensate_regexes(compensate, "flap_prune")
    if method not in ("fluctuation", "wanda"):
        raise ValueError(f"flap_prune: method must be 'fluctuation' or 'wanda', got {method!r}")
    batches = list(batches)
    t0 = time.perf_counter()
    moments = input_moments(apply_fn, variables, batches, row_mask=row_mask)
    calib_s = time.perf_counter() - t0
    graph = trace_groups(apply_fn, variables, example, through_norms=through_norms)
    scores = calibrated_unit_scores(variables, graph, moments, method=method)
    if not query_heads:
        for g in within_kv_groups(graph):
            scores.pop(g.name, None)
    plan = make_plan(
        variables, graph, float(ratio), unit_scores=scores, kinds=tuple(kinds), ignore=ignore, round_to=round_to
    )
    if ratio > 0 and not plan.leaves:
        warnings.warn(
            f"flap_prune: ratio={ratio} but the plan prunes nothing ({len(scores)} groups scored; "
            f"kinds={tuple(kinds)}, ignore={ignore!r}): no eligible group of those kinds was found. Check "
            "kinds/ignore, and that `example` has the dtype and shapes of the calibration batches",
            UserWarning,
            stacklevel=2,
        )
    small = _to_dicts(shrink(variables, plan))
    done: list[str] = []
    passes = 0
    if compensate:
        regexes = DEFAULT_COMPENSATE if compensate is True else tuple(compensate)  # type: ignore[arg-type]
        offsets = _bias_offsets(variables, plan, moments, regexes)
        most = len(offsets) if recalibrate is True else int(recalibrate)
        if most and offsets:
            masked = _masked_dense(variables, plan)
            fn = _stats_fn(apply_fn, masked, jnp.float32, row_mask)
            while passes < most:
                t = time.perf_counter()
                pruned = _moments(apply_fn, masked, batches, row_mask=row_mask, offsets=offsets, stats_fn=fn)
                calib_s += time.perf_counter() - t
                new = _bias_offsets(variables, plan, moments, regexes, pruned)
                change = max(float(np.max(np.abs(new[k] - offsets[k]))) for k in new)
                scale = max(float(np.max(np.abs(v))) for v in new.values())
                offsets, passes = new, passes + 1
                if change <= 1e-6 * max(scale, 1e-30):
                    break
        small = _write_biases(variables, small, plan, offsets)
        done = list(offsets)
    if isinstance(variables, FrozenDict):  # keep the caller's container type
        small = FrozenDict(small)
    info = dict(
        calibration_seconds=calib_s,
        seconds=time.perf_counter() - t0,
        compensated=done,
        scored_groups=sorted(scores),
        method=method,
        recalibration_passes=passes,
    )
    return small, plan, info
