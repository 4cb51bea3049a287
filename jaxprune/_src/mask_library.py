"""Mask libraries for one-shot pruning from similar tasks (mask vote; Zhao & Long 2023).

A :class:`MaskLibrary` holds one :class:`TaskRecord` per earlier pruning run:
the task's name, its *embedding* (a vector describing the task, see below),
and the structured keep-masks of the pruned model -- one boolean vector per
coupled group of the traced model (conv filters, attention heads, MLP hidden
units), ``True`` = unit kept -- plus metadata (number of examples, pruning
method, budget, ...). For a new task:

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

Records are keyed by *group name* (``params/layer1_0/conv1/kernel[3]``,
stable across heads of different class counts), and checked against the
traced graph (names and sizes) before use.

Example:
  >>> import numpy as np
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

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["TaskRecord", "MaskLibrary", "keep_vectors", "record_from_plan", "add_record", "save_library",
           "load_library", "validate_library", "task_embedding", "cosine_similarity", "task_similarity",
           "nearest_tasks", "neighbor_weights", "vote_scores", "vote_plan", "WEIGHT_SCHEMES"]

_FORMAT = "jaxprune.mask_library"
_VERSION = 1
WEIGHT_SCHEMES = ("uniform", "similarity", "softmax")


@dataclasses.dataclass(frozen=True, eq=False)
class TaskRecord:
    """One library entry: a task, its embedding and its structured keep-masks.

    Attributes:
      name: task name.
      embedding: 1-D float vector (see :func:`task_embedding`).
      keep: ``{group name: bool vector of the group's size}``, ``True`` = kept.
      meta: JSON-able metadata (``num_examples``, ``method``, ``budget``, ...).
    """

    name: str
    embedding: np.ndarray
    keep: Mapping[str, np.ndarray]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"TaskRecord.name must be a non-empty str, got {self.name!r}")
        emb = np.asarray(self.embedding, np.float32)
        if emb.ndim != 1 or emb.size == 0 or not np.all(np.isfinite(emb)):
            raise ValueError(f"TaskRecord {self.name!r}: embedding must be a finite non-empty 1-D vector, got "
                             f"shape {emb.shape}")
        keep = {}
        for g, m in dict(self.keep).items():
            m = np.asarray(m)
            if m.ndim != 1 or m.dtype != np.bool_:
                raise ValueError(f"TaskRecord {self.name!r}: keep[{g!r}] must be a 1-D bool vector, got "
                                 f"{m.dtype} {m.shape}")
            keep[str(g)] = m
        object.__setattr__(self, "embedding", emb)
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "meta", dict(self.meta))

    def kept_fraction(self) -> float:
        """Fraction of all units (over every group) that this record keeps."""
        n = sum(m.size for m in self.keep.values())
        return float(sum(int(m.sum()) for m in self.keep.values()) / max(n, 1))


@dataclasses.dataclass(frozen=True, eq=False)
class MaskLibrary:
    """An immutable collection of :class:`TaskRecord` (add with :func:`add_record`)."""

    records: tuple[TaskRecord, ...] = ()
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "meta", dict(self.meta))
        for i, r in enumerate(self.records):
            if not isinstance(r, TaskRecord):
                raise TypeError(f"MaskLibrary.records[{i}] must be a TaskRecord, got {type(r).__name__}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def embeddings(self) -> np.ndarray:
        """``(n, d)`` matrix of the records' embeddings."""
        validate_library(self)
        return np.stack([r.embedding for r in self.records]) if self.records else np.zeros((0, 0), np.float32)

    def select(self, **meta: Any) -> "MaskLibrary":
        """The records whose metadata has all the given ``key=value`` pairs (e.g. ``budget=0.5``)."""
        return MaskLibrary(tuple(r for r in self.records if all(r.meta.get(k) == v for k, v in meta.items())),
                           self.meta)


# ----------------------------------------------------------------------------------- records
def _eligible_groups(graph, kinds: Sequence[str] | None, ignore: Sequence[str] | None):
    from jaxprune._src.structured.plan import DEFAULT_KINDS, _eligible

    return _eligible(graph, DEFAULT_KINDS if kinds is None else kinds, ignore)


def keep_vectors(plan, graph, *, kinds: Sequence[str] | None = None,
                 ignore: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{group name: bool keep vector}`` of a plan, for every eligible group of ``graph``.

    Groups the plan does not prune get all-``True`` vectors. ``kinds``/``ignore``
    select groups as in :func:`~jaxprune._src.structured.make_plan`
    (``kinds=None``: its default kinds).
    """
    by_id = {g["id"]: g for g in plan.groups}
    out = {}
    for g in _eligible_groups(graph, kinds, ignore):
        m = np.ones(g.size, bool)
        if g.id in by_id:
            if by_id[g.id]["name"] != g.name or by_id[g.id]["size"] != g.size:
                raise ValueError(f"keep_vectors: plan group {g.id} is {by_id[g.id]['name']} "
                                 f"({by_id[g.id]['size']} units), the graph has {g.name} ({g.size})")
            m[:] = False
            m[list(by_id[g.id]["kept"])] = True
        out[g.name] = m
    return out


def record_from_plan(name: str, plan, graph, embedding: Any, *, kinds: Sequence[str] | None = None,
                     ignore: Sequence[str] | None = None, **meta: Any) -> TaskRecord:
    """A :class:`TaskRecord` from a task's :class:`PrunePlan` (see :func:`keep_vectors`).

    ``meta``: free JSON-able metadata, e.g. ``num_examples=2000, method='taylor', budget=0.5``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.structured import trace_groups, make_plan
      >>> p = {'a': jnp.arange(8.).reshape(2, 4), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> r = record_from_plan('t', make_plan(p, g, 0.5), g, [1.0, 2.0], method='l1')
      >>> list(r.keep.values())[0].tolist()
      [False, False, True, True]
    """
    return TaskRecord(name, np.asarray(embedding, np.float32),
                      keep_vectors(plan, graph, kinds=kinds, ignore=ignore), meta)


def add_record(library: MaskLibrary, record: TaskRecord) -> MaskLibrary:
    """A new library with ``record`` appended (checked against the existing records)."""
    out = MaskLibrary(library.records + (record,), library.meta)
    validate_library(out)
    return out


def validate_library(library: MaskLibrary, graph=None) -> None:
    """Raises ``ValueError`` if records disagree (embedding size, group names/sizes) or don't fit ``graph``.

    With ``graph`` (a traced :class:`DependencyGraph`), every record's group
    names must exist in it as prunable groups of the same size.
    """
    if not isinstance(library, MaskLibrary):
        raise TypeError(f"expected a MaskLibrary, got {type(library).__name__}")
    if not library.records:
        return
    ref = library.records[0]
    ref_sizes = {g: m.size for g, m in ref.keep.items()}
    for r in library.records[1:]:
        if r.embedding.shape != ref.embedding.shape:
            raise ValueError(f"record {r.name!r}: embedding has shape {r.embedding.shape}, record "
                             f"{ref.name!r} has {ref.embedding.shape}")
        sizes = {g: m.size for g, m in r.keep.items()}
        if sizes != ref_sizes:
            diff = sorted(set(sizes.items()) ^ set(ref_sizes.items()))[:4]
            raise ValueError(f"record {r.name!r}: groups/sizes differ from record {ref.name!r}: {diff}")
    if graph is not None:
        by_name = {g.name: g for g in graph.groups}
        for gname, size in ref_sizes.items():
            g = by_name.get(gname)
            if g is None:
                raise ValueError(f"library group {gname!r} is not in the traced model "
                                 f"(prunable groups: {[x.name for x in graph.prunable][:6]}...)")
            if g.size != size or not g.prunable:
                raise ValueError(f"library group {gname!r} has {size} units; the traced model's has {g.size}"
                                 + ("" if g.prunable else f" and is not prunable ({g.reason})"))


# -------------------------------------------------------------------------------- save/load
def save_library(path: str | os.PathLike, library: MaskLibrary) -> str:
    """Writes ``library`` to the directory ``path`` (orbax arrays + ``library.json``); returns the path.

    Layout: ``arrays/`` (an orbax ``StandardCheckpointer`` pytree:
    ``{'r0': {'embedding': f32, 'keep': [uint8 vectors]}, ...}``) and
    ``library.json`` (format, version, names, group names per record,
    metadata), written last so an interrupted save never looks complete.

    Example:
      >>> lib = MaskLibrary((TaskRecord('a', np.ones(3), {'g': np.array([True, False])}),))
      >>> load_library(save_library(tmp, lib)).names   # doctest: +SKIP
      ['a']
    """
    import orbax.checkpoint as ocp

    validate_library(library)
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, "library.json")):
        os.remove(os.path.join(path, "library.json"))
    arrays = {f"r{i}": {"embedding": r.embedding, "keep": [m.astype(np.uint8) for m in r.keep.values()]}
              for i, r in enumerate(library.records)}
    if arrays:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(path, "arrays"), arrays, force=True)
    meta = {"format": _FORMAT, "version": _VERSION, "meta": library.meta,
            "records": [{"name": r.name, "groups": list(r.keep), "sizes": [int(m.size) for m in r.keep.values()],
                         "embedding_dim": int(r.embedding.size), "meta": r.meta} for r in library.records]}
    tmp = os.path.join(path, "library.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, default=_json_default)
    os.replace(tmp, os.path.join(path, "library.json"))
    return path


def _json_default(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"metadata value of type {type(x).__name__} is not JSON-serializable")


def load_library(path: str | os.PathLike, graph=None) -> MaskLibrary:
    """Restores a library written by :func:`save_library`, validating it (and against ``graph`` if given).

    Raises ``FileNotFoundError`` if ``path`` holds no library and ``ValueError``
    naming the record and group when the stored data are inconsistent.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    meta_path = os.path.join(path, "library.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"no mask library at {path!r} (missing library.json)")
    with open(meta_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{meta_path}: format must be {_FORMAT!r}, got "
                         f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
    if meta.get("version") != _VERSION:
        raise ValueError(f"{meta_path}: unsupported version {meta.get('version')!r} (expected {_VERSION})")
    recs = meta.get("records")
    if not isinstance(recs, list):
        raise ValueError(f"{meta_path}: 'records' must be a list")
    records = []
    if recs:
        abstract = {f"r{i}": {"embedding": np.zeros(int(r["embedding_dim"]), np.float32),
                              "keep": [np.zeros(int(s), np.uint8) for s in r["sizes"]]}
                    for i, r in enumerate(recs)}
        try:
            with ocp.StandardCheckpointer() as ckptr:
                arrays = ckptr.restore(os.path.join(path, "arrays"), abstract)
        except Exception as e:  # orbax raises several types for missing/mismatched data
            raise ValueError(f"{path}: stored arrays do not match library.json ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300]})") from None
        for i, r in enumerate(recs):
            a = arrays[f"r{i}"]
            if len(r["groups"]) != len(r["sizes"]) or len(a["keep"]) != len(r["groups"]):
                raise ValueError(f"{path}: record {i} ({r.get('name')!r}) lists {len(r['groups'])} groups, "
                                 f"{len(r['sizes'])} sizes and {len(a['keep'])} stored masks")
            keep = {}
            for g, s, m in zip(r["groups"], r["sizes"], a["keep"]):
                m = np.asarray(m)
                if m.shape != (int(s),) or (m.size and m.max() > 1):
                    raise ValueError(f"{path}: record {r['name']!r} group {g!r}: expected a 0/1 vector of "
                                     f"{s} units, got shape {m.shape} max {m.max() if m.size else None}")
                keep[g] = m.astype(bool)
            records.append(TaskRecord(r["name"], np.asarray(a["embedding"]), keep, r.get("meta", {})))
    lib = MaskLibrary(tuple(records), meta.get("meta", {}))
    validate_library(lib, graph)
    return lib


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


def nearest_tasks(library: MaskLibrary, target_embedding: Any, k: int, *, similarity: str | Callable = "cosine",
                  exclude: Sequence[str] = (), center: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` most similar records (most similar first) and their similarities.

    ``exclude``: task names never returned (e.g. the target itself). Ties keep
    library order. ``center=True`` subtracts the candidates' mean embedding
    from every embedding (and the target) first: mean post-ReLU features are
    all positive, so raw cosines crowd near 1; centred ones spread over
    ``[-1, 1]`` and make ``'similarity'``/``'softmax'`` weights informative.

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
            raise ValueError(f"vote_scores: mask {t} has groups {sorted(set(m) ^ set(ref))[:4]} that mask 0 "
                             "does not share")
        for g, v in m.items():
            v = np.asarray(v, np.float64)
            if v.shape != ref[g]:
                raise ValueError(f"vote_scores: mask {t} group {g!r} has shape {v.shape}, expected {ref[g]}")
            out[g] += wt * v
    return out


# ------------------------------------------------------------------------------ the plan
def vote_plan(params: Any, graph, scores: Mapping[str, Any], *, budget=None, ratio: float | None = None,
              kinds: Sequence[str] | None = None, ignore: Sequence[str] | None = None, round_to: int = 1,
              min_keep: int = 1, max_ratio: float = 1.0, tie_break: float = 1e-3):
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
    groups without a score (``kinds``/``ignore`` select them) are kept whole.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune._src.structured import trace_groups, param_bytes_budget
      >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> name = g.prunable[0].name
      >>> vote_plan(p, g, {name: [1., 0., .5, 1.]}, ratio=0.5).groups[0]['kept']
      (0, 3)
    """
    import dataclasses as dc
    import math

    from jaxprune._src.structured.importance import group_scores
    from jaxprune._src.structured.plan import _check_params, _keep_count, _plan_for_budget, plan_from_kept

    if (budget is None) == (ratio is None):
        raise ValueError("vote_plan: pass exactly one of budget= or ratio=")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"vote_plan: round_to must be a positive int, got {round_to!r}")
    _check_params(params, graph)
    eligible = [g for g in _eligible_groups(graph, kinds, ignore) if g.name in scores]
    known = {g.name: g for g in graph.groups}
    for name, v in scores.items():
        g = known.get(name)
        if g is None:
            raise ValueError(f"vote_plan: scored group {name!r} is not in the traced model")
        if np.shape(v) != (g.size,):
            raise ValueError(f"vote_plan: scores[{name!r}] has shape {np.shape(v)}, group has {g.size} units")
    mag = group_scores(params, graph, "l1", normalize="max") if tie_break else {}
    sc = {g.id: np.asarray(scores[g.name], np.float64) + (tie_break * mag[g.id] if tie_break else 0.0)
          for g in eligible}
    meta = dict(method="vote", scope="global", round_to=round_to, min_keep=min_keep, max_ratio=max_ratio,
                tie_break=tie_break)
    if eligible:
        gidx = np.concatenate([np.full(g.size, i) for i, g in enumerate(eligible)])
        allsc = np.concatenate([sc[g.id] for g in eligible])
        ranked = gidx[np.lexsort((np.arange(allsc.size), allsc))]
    else:
        ranked = np.zeros(0, np.int64)

    def plan_for(k: int):
        counts = np.bincount(ranked[:k], minlength=len(eligible))
        kept = {}
        for g, c in zip(eligible, counts):
            n = _keep_count(g.size, int(c), min_keep, max_ratio, round_to)
            kept[g.id] = np.sort(np.argsort(-sc[g.id], kind="stable")[:n])
        return plan_from_kept(graph, kept, meta)

    if budget is None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"vote_plan: ratio must be in [0, 1], got {ratio!r}")
        plan = plan_for(int(math.floor(ranked.size * ratio + 1e-9)))
        return dc.replace(plan, meta=dict(plan.meta, ratio=float(ratio)))
    return _plan_for_budget(params, graph, budget, plan_for, ranked.size, meta)
