"""Per-unit importance of every group: magnitude, Taylor, BN scale, random or your own scores.

A unit's score is gathered from every member leaf of its group: the member's
elementwise score (``|w|`` for ``'l1'``, ``w**2`` for ``'l2'``, ``|w|**p`` for
``'magnitude'``, ``|w * g|`` for ``'taylor'``, the given ``scores`` pytree for
``'custom'``) is summed over all axes but the member's axis, then over the
unit's ``index_map`` entries (e.g. the strided positions of a channel in a
flattened feature map), and the members' vectors are reduced with ``reduce``
(``'mean'``, ``'sum'``, ``'max'``, ``'prod'`` or ``'first'``, the first root
member). Running statistics (``mean``/``var`` leaves, the ``batch_stats``
collection) are not weights and are left out, unless they are all there is.
With ``bias=False`` bias leaves (last path component ``bias``: dense, conv and
norm biases) are left out too, like Torch-Pruning's default.

``normalize`` rescales each group's vector so that groups of different sizes
and layers are comparable in a global ranking: ``'mean'`` divides by the
group's mean score (the default; scores near 1 are "average for this group"),
``'max'`` by its max, ``'sum'`` by its sum, ``'standardize'`` subtracts the
mean and divides by the standard deviation, ``None`` leaves raw scores.
Torch-Pruning's normalizers are there under their own names: ``'gaussian'``
(z-score with the unbiased standard deviation), ``'standarization'`` (TP's
spelling; it is a *min-max* rescaling, also spelled ``'minmax'``),
``'lamp'`` and ``'sentinel_<q>'``.

:data:`TORCH_PRUNING_DEFAULTS` reproduces Torch-Pruning 1.6's default
``GroupMagnitudeImportance()`` (see ``docs/importance.md``).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxprune._src.sharding import is_multiprocess_array, put_global
from jaxprune._src.structured.trace import DependencyGraph, Group
from jaxprune._src.tree import leaves_with_paths

__all__ = ["group_scores", "nan_probe", "METHODS", "REDUCTIONS", "NORMALIZERS", "TORCH_PRUNING_DEFAULTS"]

METHODS = ("l1", "l2", "magnitude", "taylor", "bn_scale", "random", "custom")
REDUCTIONS = ("mean", "sum", "max", "prod", "first")
#: Named normalizers; ``'sentinel_<q>'`` (``q`` in ``[0, 1)``) and ``None`` are accepted too.
NORMALIZERS = ("mean", "max", "sum", "standardize", "gaussian", "minmax", "standarization", "lamp")

#: Keyword arguments of :func:`make_plan` / :func:`group_scores` that reproduce
#: Torch-Pruning's default ``tp.importance.GroupMagnitudeImportance()``
#: (``p=2``, ``group_reduction='mean'``, ``normalizer='mean'``, ``bias=False``).
#: Override single entries for other TP settings, e.g.
#: ``dict(TORCH_PRUNING_DEFAULTS, p=1)`` for ``GroupMagnitudeImportance(p=1)``.
#:
#: >>> import jaxprune as jp
#: >>> jp.TORCH_PRUNING_DEFAULTS
#: {'method': 'magnitude', 'p': 2, 'bias': False, 'reduce': 'mean', 'normalize': 'mean'}
TORCH_PRUNING_DEFAULTS = {"method": "magnitude", "p": 2, "bias": False, "reduce": "mean", "normalize": "mean"}

_STATS = re.compile(r"(^|/)(batch_stats|mean|var|running_mean|running_var|num_batches_tracked)(/|$)")
_SCALE = re.compile(r"(^|/)(scale|weight|gamma)$")
_BIAS = re.compile(r"(^|/)bias$")
_SENTINEL = re.compile(r"^sentinel_([0-9]*\.?[0-9]+)$")


def _axis_sum(elem: np.ndarray, axis: int) -> np.ndarray:
    """``elem`` summed (in float64) over every axis but ``axis``: one value per index of ``axis``."""
    axes = tuple(a for a in range(elem.ndim) if a != axis)
    return elem.sum(axis=axes, dtype=np.float64) if axes else elem.astype(np.float64)


def _replicated(x: jax.Array) -> jax.sharding.Sharding:
    """A fully replicated sharding on ``x``'s devices (every process can read such a result)."""
    sh = x.sharding
    if isinstance(sh, NamedSharding):
        return NamedSharding(sh.mesh, PartitionSpec())
    devices = sorted(sh.device_set, key=lambda d: d.id)  # type: ignore[attr-defined]  # same order everywhere
    return NamedSharding(jax.sharding.Mesh(np.array(devices), ("all",)), PartitionSpec())


def _device_axis_sums(w: jax.Array, e: Any, power: float | None, axes: tuple[int, ...]) -> dict[int, jax.Array]:
    """The elementwise score (``|w|**power``, else ``e``) summed over every axis but each of ``axes`` (float32)."""
    if power is not None:
        if not jnp.issubdtype(w.dtype, jnp.floating) or jnp.dtype(w.dtype).itemsize < 4:
            w = w.astype(jnp.float32)
        e = w * w if power == 2.0 else jnp.abs(w) if power == 1.0 else jnp.abs(w) ** power
    return {a: jnp.sum(e, axis=tuple(d for d in range(e.ndim) if d != a)) for a in axes}


@functools.lru_cache(maxsize=64)
def _axis_sums_fn(rep: jax.sharding.Sharding, power: float | None, axes: tuple[int, ...]) -> Callable[..., Any]:
    return jax.jit(functools.partial(_device_axis_sums, power=power, axes=axes), out_shardings=rep)


@functools.lru_cache(maxsize=16)
def _nan_probe_fn(rep: jax.sharding.Sharding) -> Callable[..., Any]:
    return jax.jit(lambda a: jnp.where(jnp.isnan(a).any(), jnp.nan, 0.0).astype(jnp.float32), out_shardings=rep)


def device_axis_vectors(
    w: jax.Array, e: jax.Array | None, power: float | None, axes: list[int]
) -> dict[int, np.ndarray]:
    """Per-axis score vectors of a global (multi-process) array, reduced on its devices with collectives.

    Only the small per-axis vectors (one value per index of each axis) leave
    the devices, as fully replicated arrays every process can read; the
    weights themselves are never transferred. ``e`` (the elementwise score, for
    ``'taylor'`` / ``'custom'``) is used when ``power`` is ``None``. Sums run in
    float32 on device (the host path sums in float64).
    """
    out = _axis_sums_fn(_replicated(w), power, tuple(axes))(w, e)
    return {a: np.asarray(v).astype(np.float64) for a, v in out.items()}


def nan_probe(x: Any) -> Any:
    """``x`` itself, or, for a global array spanning several processes, a replicated float32 scalar that is
    NaN iff ``x`` holds a NaN (reduced on device): ``np.isnan(np.asarray(nan_probe(x))).any()`` works in every
    process without transferring ``x``.

    >>> nan_probe(np.ones(2)).shape
    (2,)
    """
    if not is_multiprocess_array(x) or not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return _nan_probe_fn(_replicated(x))(x)


def _check_normalize(how: str | None) -> None:
    if how is None or how == "none" or how in NORMALIZERS:
        return
    m = _SENTINEL.match(how) if isinstance(how, str) else None
    if m and 0.0 <= float(m.group(1)) < 1.0:
        return
    raise ValueError(f"normalize must be one of {NORMALIZERS}, 'sentinel_<q>' (0 <= q < 1) or None, got {how!r}")


def _lamp(v: np.ndarray) -> np.ndarray:
    """LAMP: each score divided by the sum of the scores not smaller than it (ties in stable index order)."""
    order = np.argsort(v, kind="stable")
    s = v[order]
    tail = np.cumsum(s[::-1])[::-1]  # tail[i] = s[i] + s[i+1] + ...
    out = np.empty_like(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[order] = s / tail
    return out


def normalize_scores(v: np.ndarray, how: str | None) -> np.ndarray:
    """Rescales one group's score vector (see the module docstring).

    >>> import numpy as np
    >>> v = np.array([1., 2., 3., 6.])
    >>> [normalize_scores(v, how).round(4).tolist() for how in ('mean', 'minmax', 'lamp', 'sentinel_0.5')]
    [[0.3333, 0.6667, 1.0, 2.0], [0.0, 0.2, 0.4, 1.0], [0.0833, 0.1818, 0.3333, 1.0], [0.3333, 0.6667, 1.0, 2.0]]
    """
    _check_normalize(how)
    if how is None or how == "none" or v.size == 0:
        return v
    if how == "mean":
        d = v.mean()
    elif how == "max":
        d = v.max()
    elif how == "sum":
        d = v.sum()
    elif how == "standardize":
        return (v - v.mean()) / (v.std() + 1e-12)
    elif how == "gaussian":  # TP: torch.std is the unbiased (n - 1) standard deviation
        return (v - v.mean()) / ((v.std(ddof=1) if v.size > 1 else 0.0) + 1e-8)
    elif how in ("minmax", "standarization"):
        return (v - v.min()) / (v.max() - v.min() + 1e-8)
    elif how == "lamp":
        return _lamp(v)
    else:  # sentinel_<q>: divide by the k-th smallest score, k = int(q * n)
        m = _SENTINEL.match(how)
        assert m is not None  # _check_normalize accepted `how`
        k = int(float(m.group(1)) * v.size)
        return v / (np.sort(v, kind="stable")[k] + 1e-8)
    return v / d if d > 0 else v


def _resolve_p(method: str, p: float | None) -> float | None:
    """The magnitude exponent of ``method`` (``None`` for non-magnitude methods)."""
    implied = {"l1": 1, "l2": 2}.get(method)
    if method == "magnitude":
        p = 2 if p is None else p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0 or not np.isfinite(p):
            raise ValueError(f"p must be a positive number, got {p!r}")
        return float(p)
    if p is None or p == implied:
        return implied
    if implied is not None:
        raise ValueError(f"method={method!r} means p={implied}; got p={p!r} (use method='magnitude' for other p)")
    raise ValueError(f"p= applies to the magnitude methods ('l1', 'l2', 'magnitude'), not method={method!r}")


def group_scores(
    params: Any,
    graph: DependencyGraph,
    method: str = "l1",
    *,
    grads: Any = None,
    key: jax.Array | None = None,
    scores: Any = None,
    reduce: str = "mean",
    normalize: str | None = "mean",
    only_prunable: bool = True,
    p: float | None = None,
    bias: bool = True,
) -> dict[int, np.ndarray]:
    """Per-unit score of each group: ``{group.id: float array of shape (group.size,)}``.

    Args:
      params: the params pytree the graph was traced on.
      graph: from :func:`trace_groups`.
      method: ``'l1'`` (``|w|``), ``'l2'`` (``w**2``: a sum of squares, not a
        norm, like Torch-Pruning's ``p=2``), ``'magnitude'`` (``|w|**p``),
        ``'taylor'`` (needs ``grads``, a pytree like params), ``'bn_scale'``
        (``|scale|`` of the norm layers in the group; falls back to ``'l1'``
        for groups without one), ``'random'`` (needs ``key``) or ``'custom'``
        (needs ``scores``, a pytree like params, e.g. vote scores from earlier
        tasks; ``None`` leaves contribute nothing).
      reduce: how members' vectors combine: ``'mean'``, ``'sum'``, ``'max'``,
        ``'prod'`` or ``'first'`` (only the group's first root member, the one
        that names the group, like Torch-Pruning's ``'first'``).
      normalize: per-group rescaling, see the module docstring.
      p: the exponent of ``method='magnitude'`` (default 2). ``'l1'`` is
        ``p=1`` and ``'l2'`` is ``p=2``; a conflicting ``p`` raises.
      bias: whether bias leaves (last path component ``bias``) count as group
        members. ``True`` (the default) keeps the historical behaviour;
        Torch-Pruning's default is ``False``. If a group has nothing but
        biases (and statistics), its biases are used anyway.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import trace_groups
      >>> p = {'a': jnp.arange(6.).reshape(2, 3), 'b': jnp.ones((3, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> group_scores(p, g, 'l1', normalize=None)[g.prunable[0].id].tolist()
      [2.0, 3.0, 4.0]
      >>> group_scores(p, g, 'magnitude', p=3, reduce='first', normalize=None)[g.prunable[0].id].tolist()
      [27.0, 65.0, 133.0]

      A bias member counts unless ``bias=False``:

      >>> q = {'w': jnp.ones((2, 2)), 'bias': jnp.array([10., 0.]), 'v': jnp.ones((2, 1))}
      >>> g = trace_groups(lambda q, x: (x @ q['w'] + q['bias']) @ q['v'], q, jnp.ones((1, 2)))
      >>> gid = g.prunable[0].id
      >>> group_scores(q, g, normalize=None)[gid].tolist(), group_scores(q, g, normalize=None, bias=False)[gid].tolist()
      ([4.333333333333333, 1.0], [1.5, 1.5])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    _check_normalize(normalize)
    if scores is not None and method == "l1" and p in (None, 1):
        method = "custom"
    power = _resolve_p(method, p)
    if method == "bn_scale":
        power = 1.0
    leaves = dict(leaves_with_paths(params))
    extra = None
    if method == "taylor":
        if grads is None:
            raise ValueError("method='taylor' needs grads= (a pytree like params)")
        extra = dict(leaves_with_paths(grads))
    elif method == "custom":
        if scores is None:
            raise ValueError("method='custom' needs scores= (a pytree like params)")
        extra = dict(leaves_with_paths(scores, is_leaf=lambda x: x is None))
    elif method == "random" and key is None:
        raise ValueError("method='random' needs key=")
    # Per-(leaf, axis) score vectors, computed once per leaf. The elementwise scores
    # (|w|, w**2, ...) are transient: keeping them all alive would double the params'
    # memory and cost page faults (~0.3 s for a ViT-B/16); vectors are tiny.
    axes_of: dict[str, set[int]] = {}
    for g in graph.groups:
        if only_prunable and not g.prunable:
            continue
        for m in g.members:
            axes_of.setdefault(m.path, set()).add(m.axis)
    vec_cache: dict[str, dict[int, np.ndarray] | None] = {}

    def elem(path: str) -> np.ndarray | None:
        if path not in leaves:
            raise ValueError(f"graph leaf {path!r} is not in params; trace the graph on these params")
        w = np.asarray(leaves[path])  # fully addressable here (global arrays take device_vectors)
        if not np.issubdtype(w.dtype, np.floating) or w.dtype.itemsize < 4:
            w = w.astype(np.float32)
        if power is not None:
            e = np.abs(w)
            if power == 2.0:
                e = w * w
            elif power != 1.0:
                e = e**power
        elif method == "taylor":
            assert extra is not None  # the grads' leaves, set above
            if path not in extra:
                raise ValueError(f"grads has no leaf {path!r}")
            e = np.abs(w * np.asarray(extra[path], dtype=w.dtype))
        else:
            assert extra is not None  # method == 'custom': the scores' leaves, set above
            e = extra.get(path)
            e = None if e is None else np.asarray(e, dtype=np.float32)
            if e is not None and e.shape != w.shape:
                raise ValueError(f"scores leaf {path!r} has shape {e.shape}, expected {w.shape}")
        return e

    def device_vectors(path: str) -> dict[int, np.ndarray] | None:
        """Multi-process: the leaf is a global array; reduce it on its devices (collectives), read the vectors."""
        w = leaves[path]
        e = None
        if power is None:
            assert extra is not None  # taylor / custom, set above
            if method == "taylor" and path not in extra:
                raise ValueError(f"grads has no leaf {path!r}")
            src = extra.get(path)
            if src is None:
                return None
            if tuple(np.shape(src)) != tuple(w.shape):
                raise ValueError(f"scores leaf {path!r} has shape {tuple(np.shape(src))}, expected {tuple(w.shape)}")
            if not is_multiprocess_array(src):  # a host copy (the same in every process): onto w's devices
                src = put_global(np.asarray(src), w.sharding)
            wf = (
                w
                if jnp.issubdtype(w.dtype, jnp.floating) and jnp.dtype(w.dtype).itemsize >= 4
                else w.astype(jnp.float32)
            )
            e = jnp.abs(wf * src.astype(wf.dtype)) if method == "taylor" else src.astype(jnp.float32)
        return device_axis_vectors(w, e, power, sorted(axes_of[path]))

    def axis_vector(path: str, axis: int) -> np.ndarray | None:
        """Per-index score along ``axis`` of leaf ``path`` (summed over the other axes)."""
        if path not in vec_cache and path in leaves and is_multiprocess_array(leaves[path]):
            vec_cache[path] = device_vectors(path)
        if path not in vec_cache:
            e = elem(path)
            vec_cache[path] = None if e is None else {a: _axis_sum(e, a) for a in sorted(axes_of[path])}
        vecs = vec_cache[path]
        return None if vecs is None else vecs[axis]

    out: dict[int, np.ndarray] = {}
    for gi, g in enumerate(graph.groups):
        if only_prunable and not g.prunable:
            continue
        if method == "random":
            assert key is not None  # checked above
            v = np.asarray(jax.random.uniform(jax.random.fold_in(key, g.id), (g.size,)), dtype=np.float64)
            out[g.id] = normalize_scores(v, normalize)
            continue
        out[g.id] = normalize_scores(_group_vector(g, axis_vector, leaves, method, reduce, bias), normalize)
    return out


def _group_vector(g: Group, axis_vector, leaves, method: str, reduce: str, bias: bool = True) -> np.ndarray:
    members = [m for m in g.members if not _STATS.search(m.path)] or list(g.members)
    if not bias:
        members = [m for m in members if not _BIAS.search(m.path)] or members
    if method == "bn_scale":
        scales = [
            m
            for m in members
            if _SCALE.search(m.path) and m.index_map.shape[1] >= 1 and np.ndim(leaves.get(m.path)) == 1
        ]
        members = scales or members
    # a unit's indices in one member (index_map row: one channel, a head's block, a flattened
    # channel's positions) are summed, as Torch-Pruning's scatter_add does for 'mean' and 'sum'
    scored = [(m, v[m.index_map].sum(axis=1)) for m in members if (v := axis_vector(m.path, m.axis)) is not None]
    if reduce == "first":  # the first scored root (the member that names the group), else the first member
        scored = [mv for mv in scored if mv[0].role == "root"][:1] or scored[:1]
    if not scored:
        return np.zeros(g.size)
    stack = np.stack([v for _, v in scored])
    reducers: dict[str, Callable[..., np.ndarray]] = {
        "sum": stack.sum,
        "mean": stack.mean,
        "max": stack.max,
        "prod": stack.prod,
        "first": stack.sum,
    }
    return reducers[reduce](axis=0)
