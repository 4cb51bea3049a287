"""Task similarity and mask voting: one-shot structured pruning from similar tasks (Zhao & Long 2023).

Given a :class:`~jaxprune._src.transfer.mask_library.MaskLibrary` of earlier pruning
runs (one :class:`~jaxprune._src.transfer.mask_library.TaskRecord` per task), a new
task is pruned once, without training on it:

1. :func:`task_embedding` describes it from features of the *pretrained*
   model (no pruning, no training on the new task);
2. :func:`nearest_tasks` finds the ``k`` most similar library tasks
   (:func:`task_similarity`: cosine by default, or any callable);
3. :func:`neighbor_weights` weighs them (``'uniform'``, ``'similarity'`` or
   ``'softmax'`` with a temperature);
4. :func:`vote_scores` gives every unit ``score_u = sum_t w_t * m_t[u]``;
5. :func:`vote_plan` prunes the pretrained model once to a parameter-bytes or
   FLOPs budget, ranking all units of all eligible groups together by their
   vote (ties broken by a tiny magnitude term), and returns a
   :class:`~jaxprune._src.structured.PrunePlan` for ``shrink``.

**Task embedding, the choice.** The default (``method='mean'``) is the mean
penultimate feature of the pretrained model over the task's examples: cheap,
needs no labels, and two tasks whose inputs excite the same channels get
similar vectors -- which is what matters for *which units to keep*, since a
unit that is silent on a task's inputs is a unit that task can lose.
``method='prototypes'`` uses labels: the concatenation of the mean and the
per-dimension spread (std) of the class prototypes (class-mean features), so
it is invariant to the order and number of classes and also reflects which
feature directions *separate* the task's classes. Both are compared with
cosine similarity; pass any ``similarity(target, embeddings) -> (n,)``
callable to :func:`nearest_tasks` to change it.

Example:
  >>> from jaxprune.vote import MaskLibrary, TaskRecord
  >>> r1 = TaskRecord('a', np.array([1., 0.]), {'g': np.array([True, False])})
  >>> r2 = TaskRecord('b', np.array([0., 1.]), {'g': np.array([True, True])})
  >>> lib = MaskLibrary((r1, r2))
  >>> idx, sims = nearest_tasks(lib, np.array([1., 0.1]), k=1)
  >>> lib.records[idx[0]].name
  'a'
  >>> vote_scores([r1.keep, r2.keep], np.array([0.5, 0.5]))['g'].tolist()
  [1.0, 0.5]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # only for annotations
    from jaxprune._src.transfer.mask_library import MaskLibrary

__all__ = [
    "task_embedding",
    "cosine_similarity",
    "task_similarity",
    "nearest_tasks",
    "neighbor_weights",
    "vote_scores",
    "vote_plan",
    "WEIGHT_SCHEMES",
]

WEIGHT_SCHEMES = ("uniform", "similarity", "softmax")


# ------------------------------------------------------------------------- similarity / kNN
def task_embedding(features: Any, labels: Any = None, *, method: str = "mean") -> np.ndarray:
    """A task's embedding from pretrained features ``(n, d)`` of its examples.

    ``'mean'``: mean feature (``(d,)``, labels unused). ``'prototypes'``: the
    class-mean features' mean and per-dimension std, concatenated (``(2d,)``;
    needs ``labels``; invariant to class order and count). See the module
    docstring for why.

    >>> task_embedding(np.array([[1., 0.], [3., 2.]])).tolist()
    [2.0, 1.0]
    >>> task_embedding(np.array([[1., 0.], [3., 2.]]), [0, 1], method='prototypes').tolist()
    [2.0, 1.0, 1.0, 1.0]
    """
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"task_embedding: features must be a non-empty (n, d) array, got shape {f.shape}")
    if method == "mean":
        return f.mean(0).astype(np.float32)
    if method == "prototypes":
        if labels is None:
            raise ValueError("task_embedding(method='prototypes') needs labels")
        y = np.asarray(labels)
        if y.shape != (f.shape[0],):
            raise ValueError(f"task_embedding: labels must have shape ({f.shape[0]},), got {y.shape}")
        protos = np.stack([f[y == c].mean(0) for c in np.unique(y)])
        return np.concatenate([protos.mean(0), protos.std(0)]).astype(np.float32)
    raise ValueError(f"task_embedding: method must be 'mean' or 'prototypes', got {method!r}")


def cosine_similarity(target: Any, embeddings: Any) -> np.ndarray:
    """Cosine similarity of a ``(d,)`` target to each row of ``(n, d)`` embeddings.

    >>> cosine_similarity([1., 0.], [[2., 0.], [0., 1.]]).tolist()
    [1.0, 0.0]
    """
    t = np.asarray(target, np.float64)
    e = np.asarray(embeddings, np.float64)
    if t.ndim != 1 or e.ndim != 2 or e.shape[1] != t.shape[0]:
        raise ValueError(f"cosine_similarity: target must be (d,) and embeddings (n, d); got {t.shape} and {e.shape}")
    den = np.linalg.norm(e, axis=1) * np.linalg.norm(t)
    return np.where(den > 0, e @ t / np.maximum(den, 1e-300), 0.0)


def task_similarity(target: Any, embeddings: Any, similarity: str | Callable = "cosine") -> np.ndarray:
    """Similarity of the target embedding to each library embedding: ``'cosine'``, ``'neg_euclidean'`` or a callable.

    >>> task_similarity([0., 1.], [[0., 2.], [3., 0.]], 'neg_euclidean').tolist()
    [-1.0, -3.1622776601683795]
    """
    if callable(similarity):
        s = np.asarray(similarity(np.asarray(target), np.asarray(embeddings)), np.float64)
        n = np.shape(embeddings)[0]
        if s.shape != (n,):
            raise ValueError(f"task_similarity: the similarity callable returned shape {s.shape}, expected ({n},)")
        return s
    if similarity == "cosine":
        return cosine_similarity(target, embeddings)
    if similarity == "neg_euclidean":
        t, e = np.asarray(target, np.float64), np.asarray(embeddings, np.float64)
        cosine_similarity(t, e)  # shape checks
        return -np.linalg.norm(e - t, axis=1)
    raise ValueError(f"similarity must be 'cosine', 'neg_euclidean' or a callable, got {similarity!r}")


def nearest_tasks(
    library: "MaskLibrary",
    target_embedding: Any,
    k: int,
    *,
    similarity: str | Callable = "cosine",
    exclude: Sequence[str] = (),
    center: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` most similar records (most similar first) and their similarities.

    ``exclude``: task names never returned (e.g. the target itself). Ties keep
    library order. ``center=True`` subtracts the candidates' mean embedding
    from every embedding (and the target) first: mean post-ReLU features are
    all positive, so raw cosines crowd near 1; centred ones spread over
    ``[-1, 1]`` and make ``'similarity'``/``'softmax'`` weights informative.

    >>> from jaxprune.vote import MaskLibrary, TaskRecord
    >>> lib = MaskLibrary(tuple(TaskRecord(n, e, {'g': np.ones(2, bool)}) for n, e in
    ...                         [('a', [1., 0.]), ('b', [0., 1.]), ('c', [1., 1.])]))
    >>> nearest_tasks(lib, [0.9, 0.1], k=2)[0].tolist()
    [0, 2]
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"nearest_tasks: k must be a positive int, got {k!r}")
    cand = [i for i, r in enumerate(library.records) if r.name not in set(exclude)]
    if not cand:
        raise ValueError(f"nearest_tasks: the library has no records (after excluding {list(exclude)})")
    emb = library.embeddings()[cand]
    tgt = np.asarray(target_embedding, np.float32)
    if center:
        mu = emb.mean(0)
        if tgt.shape != mu.shape:
            raise ValueError(f"nearest_tasks: target embedding has shape {tgt.shape}, library's are {mu.shape}")
        emb, tgt = emb - mu, tgt - mu
    sims = task_similarity(tgt, emb, similarity)
    order = np.argsort(-sims, kind="stable")[:k]
    return np.asarray(cand)[order], sims[order]


def neighbor_weights(similarities: Any, scheme: str = "similarity", *, temperature: float = 0.1) -> np.ndarray:
    """Vote weights of the neighbours, summing to 1.

    ``'uniform'``: ``1/k``; ``'similarity'``: proportional to ``max(sim, 0)``
    (uniform if all are <= 0); ``'softmax'``: ``softmax(sim / temperature)``.

    >>> neighbor_weights([0.9, 0.3], 'similarity').round(2).tolist()
    [0.75, 0.25]
    >>> neighbor_weights([0.9, 0.3], 'uniform').tolist()
    [0.5, 0.5]
    """
    s = np.asarray(similarities, np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"neighbor_weights: similarities must be a non-empty 1-D vector, got shape {s.shape}")
    if scheme == "uniform":
        return np.full(s.size, 1.0 / s.size)
    if scheme == "similarity":
        w = np.maximum(s, 0.0)
        return w / w.sum() if w.sum() > 0 else np.full(s.size, 1.0 / s.size)
    if scheme == "softmax":
        if not temperature > 0:
            raise ValueError(f"neighbor_weights: temperature must be > 0, got {temperature!r}")
        z = (s - s.max()) / temperature
        e = np.exp(z)
        return e / e.sum()
    raise ValueError(f"neighbor_weights: scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")


def vote_scores(masks: Sequence[Mapping[str, Any]], weights: Any) -> dict[str, np.ndarray]:
    """``{group: score vector}`` with ``score_u = sum_t weights[t] * masks[t][group][u]``.

    ``masks``: the neighbours' keep-mask dicts (``TaskRecord.keep``), all with
    the same groups and sizes.

    >>> vote_scores([{'g': [1, 0, 1]}, {'g': [1, 1, 0]}], [0.75, 0.25])['g'].tolist()
    [1.0, 0.25, 0.75]
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or w.size != len(masks) or w.size == 0:
        raise ValueError(f"vote_scores: need one weight per mask ({len(masks)} masks), got weights of shape {w.shape}")
    ref = {g: np.shape(m) for g, m in masks[0].items()}
    out = {g: np.zeros(s, np.float64) for g, s in ref.items()}
    for t, (m, wt) in enumerate(zip(masks, w)):
        if set(m) != set(ref):
            raise ValueError(
                f"vote_scores: mask {t} has groups {sorted(set(m) ^ set(ref))[:4]} that mask 0 does not share"
            )
        for g, v in m.items():
            v = np.asarray(v, np.float64)
            if v.shape != ref[g]:
                raise ValueError(f"vote_scores: mask {t} group {g!r} has shape {v.shape}, expected {ref[g]}")
            out[g] += wt * v
    return out


# ------------------------------------------------------------------------------ the plan
_PLAN_META = ("method", "scope", "round_to", "min_keep", "max_ratio", "reduce", "normalize")


def vote_plan(
    params: Any,
    graph,
    scores: Mapping[str, Any],
    *,
    budget=None,
    ratio: float | None = None,
    kinds: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    round_to: int = 1,
    min_keep: int = 1,
    max_ratio: float = 1.0,
    tie_break: float = 1e-3,
):
    """A :class:`PrunePlan` ranking units by their vote scores, to a budget (or a global ratio).

    All units of the eligible groups are ranked together on ``score +
    tie_break * m`` where ``m`` is the unit's L1 magnitude divided by its
    group's largest (so ``0 <= m <= 1``): the vote decides, and among units
    with the same vote (frequent: with ``k`` neighbours and uniform weights a
    vote takes only ``k + 1`` values) the larger-magnitude unit is kept.
    Votes are *not* renormalised per group -- a vote is the weighted fraction
    of similar tasks that kept the unit, comparable across layers. Then, like
    :func:`~jaxprune._src.structured.make_plan` with a ``budget``, the number
    of pruned units is bisected so that the shrunk model's cost (``budget``:
    :func:`param_bytes_budget` or :func:`flops_budget`) is at or under target;
    ``ratio`` instead prunes that fraction of the eligible units. Eligible
    groups without a score (``kinds``/``ignore`` select them; ``kinds=None``:
    ``make_plan``'s default kinds) are kept whole. This is ``make_plan(...,
    scope='global', unit_scores=vote + tie-break, normalize=None)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import trace_groups, param_bytes_budget
      >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> name = g.prunable[0].name
      >>> vote_plan(p, g, {name: [1., 0., .5, 1.]}, ratio=0.5).groups[0]['kept']
      (0, 3)
    """
    import dataclasses

    from jaxprune._src.structured import DEFAULT_KINDS, group_scores, make_plan

    if (budget is None) == (ratio is None):
        raise ValueError("vote_plan: pass exactly one of budget= or ratio=")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"vote_plan: round_to must be a positive int, got {round_to!r}")
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"vote_plan: ratio must be in [0, 1], got {ratio!r}")
    unit = {name: np.asarray(v, np.float64) for name, v in scores.items()}
    if tie_break:
        mag = group_scores(params, graph, "l1", normalize="max")
        by_name = {g.name: g for g in graph.groups}
        for name, v in unit.items():  # unknown names / bad shapes are left for make_plan to report
            g = by_name.get(name)
            if g is not None and g.id in mag and v.shape == mag[g.id].shape:
                unit[name] = v + tie_break * mag[g.id]
    plan = make_plan(
        params,
        graph,
        0.0 if ratio is None else float(ratio),
        scope="global",
        unit_scores=unit,
        normalize=None,
        round_to=round_to,
        min_keep=min_keep,
        max_ratio=max_ratio,
        ignore=ignore,
        kinds=DEFAULT_KINDS if kinds is None else kinds,
        budget=budget,
    )
    meta = dict(
        method="vote", scope="global", round_to=round_to, min_keep=min_keep, max_ratio=max_ratio, tie_break=tie_break
    )
    meta.update((k, v) for k, v in plan.meta.items() if k not in _PLAN_META)
    return dataclasses.replace(plan, meta=meta)
