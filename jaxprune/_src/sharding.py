"""Pruning sharded models: keep masks and shrunk params sharded on their ``Mesh``.

Mask functions (:func:`jaxprune.layerwise_masks`, :func:`jaxprune.global_masks`,
:func:`jaxprune.nm_masks`, ERK sparsities) already work on arrays sharded with a
``NamedSharding``: they use only elementwise ops and full reductions, so each
mask comes out with the sharding of its scores and a global threshold costs
per-shard partial counts plus an all-reduce (see ``docs/sharding.md``).

This module holds what structured shrinking and checkpoints need on a mesh:

* :func:`mesh_round_to`: the ``round_to`` for :func:`jaxprune.make_plan` that
  makes every kept size divisible by the shard count of its sharded axis.
* :func:`shrink_sharded`: :func:`jaxprune.shrink` on device, the shrunk leaves
  re-put with their original ``PartitionSpec``. A kept size that a mesh axis
  does not divide is *replicated along that mesh axis* (with a warning naming
  the leaf) rather than padded or rejected.
* :func:`shard_like`, :func:`shardings_of`, :func:`abstract_like`: put a tree
  (masks, shrunk params) with the shardings of another, read shardings, and
  build ``ShapeDtypeStruct`` templates for restoring onto another mesh.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

__all__ = [
    "shardings_of",
    "shard_like",
    "spec_for_shape",
    "abstract_like",
    "mesh_round_to",
    "shrink_sharded",
    "put_global",
    "is_multiprocess_array",
]


def is_multiprocess_array(x: Any) -> bool:
    """True for a concrete ``jax.Array`` of which this process holds only some shards (a multi-process job).

    Such an array cannot be read on the host (``np.asarray`` raises); reduce it on
    device to a replicated result first.

    >>> is_multiprocess_array(jnp.ones(2)), is_multiprocess_array(np.ones(2))
    (False, False)
    """
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.is_fully_addressable


def put_global(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``jax.device_put(x, sharding)`` that also works when ``sharding`` spans several processes.

    ``x`` is a value every process holds in full (NumPy, a process-local
    ``jax.Array`` or a typed PRNG key). ``device_put`` refuses a process-local
    array onto a multi-process sharding; this builds the global array from each
    process's own copy instead (``jax.make_array_from_callback``), so every
    process must pass the same value.

    >>> put_global(np.arange(3), jnp.zeros(3).sharding).tolist()
    [0, 1, 2]
    """
    if sharding.is_fully_addressable or isinstance(x, jax.core.Tracer):
        return jax.device_put(x, sharding)
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = put_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if is_multiprocess_array(x):
        return jax.device_put(x, sharding)  # global -> global: a reshard on device
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _entries(spec: PartitionSpec, ndim: int) -> list[Any]:
    ent = list(spec) + [None] * (ndim - len(spec))
    if len(ent) > ndim:
        raise ValueError(f"PartitionSpec {spec} has more entries than the array has dims ({ndim})")
    return ent


def _names(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def axis_shards(sharding: Any, ndim: int) -> tuple[int, ...]:
    """Number of shards along each array dim for a ``NamedSharding`` (1 for other shardings)."""
    if not isinstance(sharding, NamedSharding):
        return (1,) * ndim
    return tuple(math.prod(sharding.mesh.shape[n] for n in _names(e)) for e in _entries(sharding.spec, ndim))


def shardings_of(tree: PyTree) -> PyTree:
    """The ``.sharding`` of every array leaf (``None`` where a leaf is ``None`` or has none).

    >>> shardings_of({'w': jnp.ones(2), 'm': None})['m'] is None
    True
    """
    return jax.tree.map(lambda x: getattr(x, "sharding", None), tree, is_leaf=tree_lib.is_none)


def spec_for_shape(
    sharding: NamedSharding, shape: tuple[int, ...], *, path: str = "", warn: bool = True
) -> NamedSharding:
    """``sharding`` adapted to ``shape``: dims its mesh axes do not divide become replicated.

    A warning names the leaf (``path``), the dim, its size and the mesh axes dropped.

    >>> import numpy as np
    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
    >>> spec_for_shape(NamedSharding(mesh, PartitionSpec(None, 'model')), (4, 3)).spec == PartitionSpec(None, 'model')
    True
    """
    ent = _entries(sharding.spec, len(shape))
    shards = axis_shards(sharding, len(shape))
    new = list(ent)
    for d, (e, n) in enumerate(zip(ent, shards)):
        if n > 1 and shape[d] % n:
            new[d] = None
            if warn:
                warnings.warn(
                    f"leaf {path!r}: dim {d} has size {shape[d]}, not divisible by its {n} shards "
                    f"(mesh axes {_names(e)}); that dim is replicated instead. Plan with "
                    f"round_to=jaxprune.mesh_round_to(graph, shardings) to keep it sharded.",
                    stacklevel=3,
                )
    while new and new[-1] is None:
        new.pop()
    return NamedSharding(sharding.mesh, PartitionSpec(*new))


def shard_like(tree: PyTree, like: PyTree, *, warn: bool = True) -> PyTree:
    """Puts every array of ``tree`` with the sharding of the matching leaf of ``like``.

    ``like`` holds arrays (their ``.sharding`` is used) or shardings. Shapes may
    differ (e.g. shrunk params): dims that no longer divide evenly are
    replicated along their mesh axes (see :func:`spec_for_shape`). ``None``
    leaves of ``tree`` (unpruned masks) stay ``None``.

    >>> m = shard_like({'w': jnp.ones(2) > 0}, {'w': jnp.zeros(2)})
    >>> m['w'].sharding == jnp.zeros(2).sharding
    True
    """
    tree_lib.check_same_structure(like, tree, what="shard_like tree", check_shapes=False)

    def put(path, x, ref):
        if x is None:
            return None
        sh = ref if isinstance(ref, jax.sharding.Sharding) else getattr(ref, "sharding", None)
        if sh is None:
            return x
        if isinstance(sh, NamedSharding):
            sh = spec_for_shape(sh, tuple(np.shape(x)), path=path, warn=warn)
        return jax.device_put(x, sh)

    return tree_lib.map_with_path(put, tree, like, is_leaf=tree_lib.is_none)


def abstract_like(tree: PyTree, shardings: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` templates of ``tree`` carrying ``shardings`` (for restoring onto a mesh).

    ``shardings`` is a matching tree of ``Sharding``s (``None`` = default
    device); ``None`` leaves of ``tree`` stay ``None``.

    >>> t = abstract_like({'w': jnp.ones((2, 3))}, {'w': None})
    >>> t['w'].shape
    (2, 3)
    """

    def one(path, x, sh):
        if x is None:
            return None
        if isinstance(sh, NamedSharding):
            sh = spec_for_shape(sh, tuple(np.shape(x)), path=path)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh)

    return tree_lib.map_with_path(one, tree, shardings, is_leaf=tree_lib.is_none)


def mesh_round_to(graph: Any, shardings: PyTree) -> int:
    """``round_to`` for :func:`jaxprune.make_plan` keeping every pruned sharded axis divisible.

    For each prunable group and each member leaf whose pruned axis is split
    into ``n`` shards, a unit spans ``u`` indices of that axis, so the kept
    unit count must be a multiple of ``n / gcd(n, u)``; the result is the lcm
    over all of them (1 when nothing pruned is sharded). ``shardings`` is a
    tree like the params holding arrays or ``Sharding``s.

    >>> from jaxprune import trace_groups
    >>> p = {'a': jnp.ones((2, 8)), 'b': jnp.ones((8, 1))}
    >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
    >>> mesh_round_to(g, p)
    1
    """
    by_path = {}
    for path, x in tree_lib.leaves_with_paths(shardings, is_leaf=tree_lib.is_none):
        sh = x if isinstance(x, jax.sharding.Sharding) else getattr(x, "sharding", None)
        by_path[path] = sh
    out = 1
    for g in graph.groups:
        if not g.prunable:
            continue
        for m in g.members:
            if m.path not in by_path:
                raise ValueError(f"mesh_round_to: no sharding for leaf {m.path!r} of group {g.name!r}")
            shape = graph.leaf_shapes[m.path]
            n = axis_shards(by_path[m.path], len(shape))[m.axis]
            per_unit = max(1, int(np.size(m.index_map)) // max(1, g.size))
            out = math.lcm(out, n // math.gcd(n, per_unit))
    return out


def shrink_sharded(params: PyTree, plan: Any) -> PyTree:
    """:func:`jaxprune.shrink` on device: shrunk leaves keep their ``PartitionSpec``.

    All affected leaves are sliced in one jitted call whose ``out_shardings``
    are the inputs' specs adapted to the new shapes (a dim whose kept size its
    mesh axes no longer divide is replicated, with a warning naming the leaf).
    Unaffected leaves are returned as they are. Results equal
    ``shrink(params, plan)`` exactly.

    >>> from jaxprune import trace_groups, make_plan
    >>> p = {'a': jnp.ones((2, 4)), 'b': jnp.ones((4, 1))}
    >>> g = trace_groups(lambda p, x: (x @ p['a']) @ p['b'], p, jnp.ones((1, 2)))
    >>> jax.tree.map(jnp.shape, shrink_sharded(p, make_plan(p, g, 0.5)))
    {'a': (2, 2), 'b': (2, 1)}
    """
    from jaxprune._src.structured.shrink import check_plan  # structured imports are heavier

    check_plan(params, plan)
    leaves = tree_lib.leaves_with_paths(params)
    todo = {p: jnp.asarray(x) for p, x in leaves if p in plan.leaves}
    out_sh = {}
    for p, x in todo.items():
        sh = x.sharding
        new_shape = tuple(plan.shapes[p][1])
        out_sh[p] = spec_for_shape(sh, new_shape, path=p) if isinstance(sh, NamedSharding) else sh

    kept = {p: {a: np.asarray(k, np.int32) for a, k in plan.leaves[p].items()} for p in todo}
    key = tuple((p, tuple(sorted(kept[p]))) for p in sorted(todo))
    shrunk = _take_fn(key, tuple(out_sh[p] for p, _ in key))(todo, kept) if todo else {}
    return tree_lib.map_with_path(lambda path, x: shrunk.get(path, x), params)


@functools.lru_cache(maxsize=32)
def _take_fn(key: tuple, out_sh: tuple) -> Any:
    """One jitted gather of every affected leaf (kept indices are arguments: reused across plans)."""

    def take_all(arrays, kept):
        res = {}
        for p, axes in key:
            x = arrays[p]
            for axis in axes:
                x = jnp.take(x, kept[p][axis], axis=axis)
            res[p] = x
        return res

    return jax.jit(take_all, out_shardings={p: sh for (p, _), sh in zip(key, out_sh)})
