"""Mask libraries for one-shot pruning from similar tasks (mask vote; Zhao & Long 2023).

A :class:`MaskLibrary` holds one :class:`TaskRecord` per earlier pruning run:
the task's name, its *embedding* (a vector describing the task, see
:func:`~jaxprune._src.transfer.task_vote.task_embedding`), and the structured
keep-masks of the pruned model -- one boolean vector per coupled group of the
traced model (conv filters, attention heads, MLP hidden units), ``True`` =
unit kept -- plus metadata (number of examples, pruning method, budget, ...).
Records are made from a task's plan (:func:`record_from_plan`), added with
:func:`add_record`, stored with orbax (:func:`save_library`,
:func:`load_library`) and checked with :func:`validate_library`.

Records are keyed by *group name* (``params/layer1_0/conv1/kernel[3]``,
stable across heads of different class counts), and checked against the
traced graph (names and sizes) before use.

Using a library for a new task (task embedding, kNN, vote, :func:`vote_plan`)
is :mod:`jaxprune._src.transfer.task_vote`; its names are re-exported here.

Example:
  >>> import numpy as np
  >>> r1 = TaskRecord('a', np.array([1., 0.]), {'g': np.array([True, False])})
  >>> lib = add_record(MaskLibrary(), r1)
  >>> lib.names, lib.records[0].kept_fraction()
  (['a'], 0.5)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "TaskRecord",
    "MaskLibrary",
    "keep_vectors",
    "record_from_plan",
    "add_record",
    "save_library",
    "load_library",
    "validate_library",
]

_FORMAT = "jaxprune.mask_library"
_VERSION = 1


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
            raise ValueError(
                f"TaskRecord {self.name!r}: embedding must be a finite non-empty 1-D vector, got shape {emb.shape}"
            )
        keep = {}
        for g, m in dict(self.keep).items():
            m = np.asarray(m)
            if m.ndim != 1 or m.dtype != np.bool_:
                raise ValueError(
                    f"TaskRecord {self.name!r}: keep[{g!r}] must be a 1-D bool vector, got {m.dtype} {m.shape}"
                )
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
        return MaskLibrary(
            tuple(r for r in self.records if all(r.meta.get(k) == v for k, v in meta.items())), self.meta
        )


# ----------------------------------------------------------------------------------- records
def _eligible_groups(graph, kinds: Sequence[str] | None, ignore: Sequence[str] | None):
    from jaxprune._src.structured.plan import DEFAULT_KINDS, eligible_groups

    return eligible_groups(graph, DEFAULT_KINDS if kinds is None else kinds, ignore)


def keep_vectors(
    plan, graph, *, kinds: Sequence[str] | None = None, ignore: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
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
                raise ValueError(
                    f"keep_vectors: plan group {g.id} is {by_id[g.id]['name']} "
                    f"({by_id[g.id]['size']} units), the graph has {g.name} ({g.size})"
                )
            m[:] = False
            m[list(by_id[g.id]["kept"])] = True
        out[g.name] = m
    return out


def record_from_plan(
    name: str,
    plan,
    graph,
    embedding: Any,
    *,
    kinds: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    **meta: Any,
) -> TaskRecord:
    """A :class:`TaskRecord` from a task's :class:`PrunePlan` (see :func:`keep_vectors`).

    ``meta``: free JSON-able metadata, e.g. ``num_examples=2000, method='taylor', budget=0.5``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import trace_groups, make_plan
      >>> p = {'a': jnp.arange(8.).reshape(2, 4), 'b': jnp.ones((4, 1))}
      >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
      >>> r = record_from_plan('t', make_plan(p, g, 0.5), g, [1.0, 2.0], method='l1')
      >>> list(r.keep.values())[0].tolist()
      [False, False, True, True]
    """
    return TaskRecord(
        name, np.asarray(embedding, np.float32), keep_vectors(plan, graph, kinds=kinds, ignore=ignore), meta
    )


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
            raise ValueError(
                f"record {r.name!r}: embedding has shape {r.embedding.shape}, record "
                f"{ref.name!r} has {ref.embedding.shape}"
            )
        sizes = {g: m.size for g, m in r.keep.items()}
        if sizes != ref_sizes:
            diff = sorted(set(sizes.items()) ^ set(ref_sizes.items()))[:4]
            raise ValueError(f"record {r.name!r}: groups/sizes differ from record {ref.name!r}: {diff}")
    if graph is not None:
        by_name = {g.name: g for g in graph.groups}
        for gname, size in ref_sizes.items():
            g = by_name.get(gname)
            if g is None:
                raise ValueError(
                    f"library group {gname!r} is not in the traced model "
                    f"(prunable groups: {[x.name for x in graph.prunable][:6]}...)"
                )
            if g.size != size or not g.prunable:
                raise ValueError(
                    f"library group {gname!r} has {size} units; the traced model's has {g.size}"
                    + ("" if g.prunable else f" and is not prunable ({g.reason})")
                )


# -------------------------------------------------------------------------------- save/load
_META_FILE = "library.json"
_ARRAYS_PREFIX = "arrays"


def _record_digest(embedding: np.ndarray, keep: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256(np.ascontiguousarray(embedding, np.float32).tobytes())
    for m in keep:
        h.update(np.ascontiguousarray(m, np.uint8).tobytes())
    return h.hexdigest()


def _json_digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _holds_library(path: str) -> bool:
    return os.path.isfile(os.path.join(path, _META_FILE))


def save_library(path: str | os.PathLike, library: MaskLibrary, *, overwrite: bool = False) -> str:
    """Writes ``library`` to the directory ``path`` (orbax arrays + ``library.json``); returns the path.

    Layout: ``arrays-<id>/`` (an orbax ``StandardCheckpointer`` pytree:
    ``{'r0': {'embedding': f32, 'keep': [uint8 vectors]}, ...}``) and
    ``library.json`` (format, version, the arrays directory, names, group names
    per record, metadata, a SHA-256 per record and one over the JSON itself).

    Safety: the library and its metadata are validated (JSON-serializable,
    finite) *before* anything on disk changes; a path that already holds a
    library is refused (``ValueError``) unless ``overwrite=True``. The save is
    atomic: new arrays go to a fresh ``arrays-<id>/`` and the new
    ``library.json`` is written to a temp file then ``os.replace``-d over the old
    one (the commit point), after which the old arrays are removed. A save that
    fails or is killed at any point leaves the previous library loadable as it
    was (leftovers of an interrupted save are removed by the next save).

    Example:
      >>> lib = MaskLibrary((TaskRecord('a', np.ones(3), {'g': np.array([True, False])}),))
      >>> load_library(save_library(tmp, lib)).names   # doctest: +SKIP
      ['a']
    """
    import orbax.checkpoint as ocp

    validate_library(library)
    if not isinstance(overwrite, bool):
        raise TypeError(f"save_library: overwrite must be a bool, got {overwrite!r}")
    path = os.path.abspath(os.fspath(path))
    arrays_name = f"{_ARRAYS_PREFIX}-{uuid.uuid4().hex[:12]}"
    records = [
        {
            "name": r.name,
            "groups": list(r.keep),
            "sizes": [int(m.size) for m in r.keep.values()],
            "embedding_dim": int(r.embedding.size),
            "meta": r.meta,
            "sha256": _record_digest(r.embedding, list(r.keep.values())),
        }
        for r in library.records
    ]
    body = {
        "format": _FORMAT,
        "version": _VERSION,
        "arrays": arrays_name if records else None,
        "meta": library.meta,
        "records": records,
    }
    try:  # everything is checked before the disk is touched
        body = json.loads(json.dumps(body, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise type(e)(
            f"save_library({path!r}): library metadata cannot be saved as JSON: {e}; nothing was written"
        ) from None
    body["sha256"] = _json_digest(body)
    text = json.dumps(body, indent=1)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"save_library: {path!r} exists and is not a directory")
    if _holds_library(path) and not overwrite:
        raise ValueError(
            f"save_library: {path!r} already holds a mask library; refusing to replace it "
            "(pass overwrite=True to replace it)"
        )
    os.makedirs(path, exist_ok=True)
    arrays = {
        f"r{i}": {"embedding": r.embedding, "keep": [m.astype(np.uint8) for m in r.keep.values()]}
        for i, r in enumerate(library.records)
    }
    tmp = os.path.join(path, f"{_META_FILE}.tmp-{arrays_name}")
    try:
        if arrays:
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(os.path.join(path, arrays_name), arrays)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, _META_FILE))  # the commit point
    except BaseException:  # the previous library.json and its arrays are untouched: drop the new files
        shutil.rmtree(os.path.join(path, arrays_name), ignore_errors=True)
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _remove_stale(path, keep=arrays_name)
    return path


def _remove_stale(path: str, keep: str | None) -> None:
    """Removes arrays directories / temp files of earlier (replaced or interrupted) saves."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        stale_arrays = (name == _ARRAYS_PREFIX or name.startswith(_ARRAYS_PREFIX + "-")) and name != keep
        if stale_arrays and os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        elif name.startswith(f"{_META_FILE}.tmp"):
            os.remove(full)


def _json_default(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"metadata value of type {type(x).__name__} is not JSON-serializable")


def _bad(meta_path: str, what: str) -> ValueError:
    return ValueError(f"{meta_path}: {what} (library file corrupted or not written by jaxprune)")


def load_library(path: str | os.PathLike, graph=None) -> MaskLibrary:
    """Restores a library written by :func:`save_library`, validating it (and against ``graph`` if given).

    Raises ``FileNotFoundError`` if ``path`` holds no library and ``ValueError``
    naming the file (and record/group) when the stored data are inconsistent,
    truncated or bit-flipped (checked against the SHA-256 sums written by
    :func:`save_library`; libraries written before these sums existed load
    without that check).
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    meta_path = os.path.join(path, _META_FILE)
    if not os.path.exists(meta_path):
        hint = ""
        if os.path.isdir(path) and any(
            n.startswith(_ARRAYS_PREFIX) or n.startswith(_META_FILE + ".tmp") for n in os.listdir(path)
        ):
            hint = " (it holds leftovers of a save that never completed: the first save was interrupted)"
        raise FileNotFoundError(f"no mask library at {path!r} (missing library.json){hint}")
    with open(meta_path, "rb") as f:
        raw = f.read()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e}; {len(raw)} bytes: truncated or corrupted?)") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(
            f"{meta_path}: format must be {_FORMAT!r}, got "
            f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}"
        )
    if meta.get("version") != _VERSION:
        raise ValueError(f"{meta_path}: unsupported version {meta.get('version')!r} (expected {_VERSION})")
    recs = meta.get("records")
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise ValueError(f"{meta_path}: 'records' must be a list of objects")
    arrays_name = meta.get("arrays", _ARRAYS_PREFIX)  # libraries without the key: the old fixed name
    if recs and (
        not isinstance(arrays_name, str) or os.sep in arrays_name or not arrays_name.startswith(_ARRAYS_PREFIX)
    ):
        raise _bad(meta_path, f"'arrays' must name an arrays directory, got {arrays_name!r}")
    records = []
    if recs:
        try:
            abstract = {
                f"r{i}": {
                    "embedding": np.zeros(int(r["embedding_dim"]), np.float32),
                    "keep": [np.zeros(int(s), np.uint8) for s in r["sizes"]],
                }
                for i, r in enumerate(recs)
            }
        except (KeyError, TypeError, ValueError) as e:
            raise _bad(meta_path, f"a record lacks a valid embedding_dim/sizes ({type(e).__name__}: {e})") from None
        arrays_dir = os.path.join(path, arrays_name)
        if not os.path.isdir(arrays_dir):
            raise ValueError(
                f"{path}: library.json refers to {arrays_name}/, which is missing (library truncated or partly deleted)"
            )
        try:
            with ocp.StandardCheckpointer() as ckptr:
                arrays = ckptr.restore(arrays_dir, abstract)
        except Exception as e:  # orbax raises several types for missing/mismatched data
            raise ValueError(
                f"{path}: stored arrays do not match library.json ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300] if str(e) else ''})"
            ) from None
        for i, r in enumerate(recs):
            a = arrays[f"r{i}"]
            if len(r["groups"]) != len(r["sizes"]) or len(a["keep"]) != len(r["groups"]):
                raise ValueError(
                    f"{path}: record {i} ({r.get('name')!r}) lists {len(r['groups'])} groups, "
                    f"{len(r['sizes'])} sizes and {len(a['keep'])} stored masks"
                )
            keep = {}
            for g, s, m in zip(r["groups"], r["sizes"], a["keep"]):
                m = np.asarray(m)
                if m.shape != (int(s),) or (m.size and m.max() > 1):
                    raise ValueError(
                        f"{path}: record {r['name']!r} group {g!r}: expected a 0/1 vector of "
                        f"{s} units, got shape {m.shape} max {m.max() if m.size else None}"
                    )
                keep[g] = m.astype(bool)
            if "sha256" in r and _record_digest(np.asarray(a["embedding"]), list(keep.values())) != r["sha256"]:
                raise ValueError(
                    f"{arrays_dir}: the stored arrays of record {i} ({r.get('name')!r}) do not match "
                    "their SHA-256 in library.json (arrays file corrupted)"
                )
            records.append(TaskRecord(r["name"], np.asarray(a["embedding"]), keep, r.get("meta", {})))
    if "sha256" in meta:
        body = {k: v for k, v in meta.items() if k != "sha256"}
        if _json_digest(body) != meta["sha256"]:
            raise _bad(meta_path, "content does not match its SHA-256 (edited or bit-flipped)")
    lib = MaskLibrary(tuple(records), meta.get("meta", {}))
    validate_library(lib, graph)
    return lib
