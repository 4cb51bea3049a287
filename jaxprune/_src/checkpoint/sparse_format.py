"""Compact storage of masks and masked weights: packed bits + kept values.

Layout (the same in memory and in checkpoints; stable, version 1):

* **Packed mask** of a bool array of shape ``S`` (``n = prod(S)`` elements):
  the mask is flattened in C (row-major) order and packed with
  ``np.packbits(flat, bitorder="little")``: element ``i`` is bit ``i % 8``
  (least significant bit first) of byte ``i // 8``. The result is a 1-D
  ``uint8`` array of ``ceil(n / 8)`` bytes; the padding bits of the last byte
  are zero. The shape ``S`` is stored beside it (it cannot be recovered from
  the bytes).
* **Compact leaf** of a weight ``w`` with mask ``m``: the 1-D array
  ``w.reshape(-1)[m.reshape(-1)]`` (kept values in C order, dtype kept) plus the
  packed mask. Decoding scatters the values back into zeros of shape ``S``.
  The encoding is exact when every pruned coordinate of ``w`` is zero (which
  :func:`jaxprune.sparse_optimizer` guarantees); :func:`compact_sparse` refuses
  lossy input unless ``strict=False``.

Bytes per weight: dense ``itemsize``; compact ``(1 - s) * itemsize + 1/8`` at
sparsity ``s`` (float32 at 90%: 0.525 instead of 4, i.e. 13%).

Example:
  >>> import numpy as np
  >>> m = np.array([[True, False, False], [False, True, True]])
  >>> bits = pack_mask(m)
  >>> bits, bits.dtype
  (array([49], dtype=uint8), dtype('uint8'))
  >>> bool((unpack_mask(bits, (2, 3)) == m).all())
  True
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Sequence

import jax
import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

__all__ = [
    "pack_mask",
    "unpack_mask",
    "PackedMasks",
    "pack_masks",
    "unpack_masks",
    "CompactSparse",
    "compact_sparse",
    "dense_from_compact",
    "crc32",
    "pack_mask_global",
    "compact_leaf_global",
    "host_copy",
]


def _host(x: Any, what: str) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        raise ValueError(
            f"{what}: array is not fully addressable from this process (multi-host sharding); "
            "compact encoding needs the whole array on the host"
        )
    return np.asarray(x)


def pack_mask(mask: Any) -> np.ndarray:
    """Packs a bool mask into ``ceil(size / 8)`` bytes (C order, little bit order).

    >>> pack_mask(np.array([True, True, False, False, False, False, False, False, True]))
    array([3, 1], dtype=uint8)
    """
    m = _host(mask, "pack_mask")
    if m.dtype != np.bool_:
        raise TypeError(f"pack_mask: mask must be bool, got dtype {m.dtype}")
    return np.packbits(m.reshape(-1), bitorder="little")


def unpack_mask(bits: Any, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pack_mask`: bool array of ``shape``.

    >>> unpack_mask(np.array([3, 1], np.uint8), (9,)).astype(int)
    array([1, 1, 0, 0, 0, 0, 0, 0, 1])
    """
    b = np.asarray(bits)
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    if b.dtype != np.uint8 or b.ndim != 1:
        raise TypeError(f"unpack_mask: bits must be a 1-D uint8 array, got {b.dtype}{list(b.shape)}")
    if b.size != (n + 7) // 8:
        raise ValueError(
            f"unpack_mask: {b.size} bytes cannot hold a mask of shape {shape} (expected {(n + 7) // 8} bytes)"
        )
    return np.unpackbits(b, count=n, bitorder="little").astype(bool).reshape(shape)


@dataclasses.dataclass(frozen=True)
class PackedMasks:
    """Masks packed with :func:`pack_mask`.

    Attributes:
      bits: pytree with the masks' structure: 1-D ``uint8`` arrays, ``None`` at unpruned leaves.
      shapes: leaf path -> original mask shape.
    """

    bits: PyTree
    shapes: dict[str, tuple[int, ...]]


def pack_masks(masks: PyTree) -> PackedMasks:
    """Packs every mask of a masks pytree (``None`` leaves stay ``None``).

    >>> pm = pack_masks({'w': np.ones((4, 4), bool), 'b': None})
    >>> pm.bits['w'].shape, pm.shapes
    ((2,), {'w': (4, 4)})
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def pack(path, m):
        if m is None:
            return None
        shapes[path] = tuple(np.shape(m))
        try:
            return pack_mask(m)
        except TypeError as e:
            raise TypeError(f"mask leaf {path!r}: {e}") from None

    bits = tree_lib.map_with_path(pack, masks, is_leaf=tree_lib.is_none)
    return PackedMasks(bits, shapes)


def unpack_masks(packed: PackedMasks) -> PyTree:
    """Inverse of :func:`pack_masks`: bool numpy masks, ``None`` at unpruned leaves."""

    def unpack(path, b):
        if b is None:
            return None
        if path not in packed.shapes:
            raise ValueError(f"packed mask leaf {path!r} has no recorded shape")
        return unpack_mask(b, packed.shapes[path])

    return tree_lib.map_with_path(unpack, packed.bits, is_leaf=tree_lib.is_none)


@dataclasses.dataclass(frozen=True)
class CompactSparse:
    """A masked parameter tree in compact form (see the module docstring).

    Attributes:
      values: params' structure; at masked leaves the 1-D kept values, elsewhere the dense leaf.
      masks: :class:`PackedMasks` of the masks (``None`` at unmasked leaves).
    """

    values: PyTree
    masks: PackedMasks

    def nbytes(self) -> int:
        """Bytes of values plus packed bits (what a checkpoint stores, without file overhead)."""
        leaves = jax.tree.leaves(self.values) + jax.tree.leaves(self.masks.bits)
        return int(sum(np.asarray(x).nbytes for x in leaves))


def compact_leaf(path: str, w: Any, m: Any, *, strict: bool = True) -> np.ndarray | None:
    """Kept values of ``w`` under ``m``, or None if lossy and not ``strict``."""
    w = _host(w, f"leaf {path!r}")
    m = _host(m, f"mask {path!r}")
    if m.shape != w.shape:
        raise ValueError(f"leaf {path!r}: mask shape {m.shape} differs from the param's shape {w.shape}")
    if m.dtype != np.bool_:
        raise TypeError(f"mask leaf {path!r} must be bool, got {m.dtype}")
    dropped = w[~m]
    if dropped.size and np.any(dropped != 0):
        if strict:
            raise ValueError(
                f"leaf {path!r}: {int(np.count_nonzero(dropped))} pruned coordinates hold non-zero values, "
                "so the compact form would lose them (apply the masks first, or pass strict=False)"
            )
        return None
    return np.ascontiguousarray(w.reshape(-1)[m.reshape(-1)])


def compact_sparse(params: PyTree, masks: PyTree, *, strict: bool = True) -> CompactSparse:
    """Compact form of masked ``params``: kept values + packed masks.

    Args:
      params: parameter pytree.
      masks: bool masks with the params' structure (``None`` at dense leaves).
      strict: raise ``ValueError`` if a pruned coordinate holds a non-zero value
        (the compact form would drop it). With ``strict=False`` such values are
        zeroed (lossy).

    >>> w = np.array([[1., 0.], [0., 2.]], np.float32)
    >>> c = compact_sparse({'w': w}, {'w': w != 0})
    >>> c.values['w']
    array([1., 2.], dtype=float32)
    >>> bool((dense_from_compact(c)['w'] == w).all())
    True
    """
    tree_lib.check_same_structure(params, masks, what="masks")
    packed = pack_masks(masks)

    def enc(path, w, m):
        if m is None:
            return w
        out = compact_leaf(path, w, m, strict=strict)
        if out is None:
            h = np.asarray(w)
            out = np.ascontiguousarray(h.reshape(-1)[np.asarray(m).reshape(-1)])
        return out

    values = tree_lib.map_with_path(enc, params, masks, is_leaf=tree_lib.is_none)
    return CompactSparse(values, packed)


def scatter_values(values: Any, mask: np.ndarray, dtype: Any = None) -> np.ndarray:
    """Zeros of ``mask.shape`` with ``values`` written at the True coordinates (C order)."""
    v = np.asarray(values)
    n_kept = int(np.count_nonzero(mask))
    if v.ndim != 1 or v.size != n_kept:
        raise ValueError(f"{v.size} stored values for a mask that keeps {n_kept}")
    out = np.zeros(mask.size, dtype=dtype or v.dtype)
    out[mask.reshape(-1)] = v
    return out.reshape(mask.shape)


def dense_from_compact(compact: CompactSparse) -> PyTree:
    """Inverse of :func:`compact_sparse`: dense numpy params (zeros at pruned coordinates)."""
    masks = unpack_masks(compact.masks)

    def dec(path, v, m):
        if m is None:
            return v
        try:
            return scatter_values(v, m)
        except ValueError as e:
            raise ValueError(f"compact leaf {path!r}: {e}") from None

    is_leaf = lambda x: x is None or isinstance(x, (np.ndarray, jax.Array))  # noqa: E731
    return tree_lib.map_with_path(dec, compact.values, masks, is_leaf=is_leaf)


# ------------------------------------------------------------------ global arrays of a multi-process job
def _stored_sharding(x: jax.Array, n: int) -> jax.sharding.Sharding:
    """Sharding of a 1-D stored array of length ``n`` made from ``x``: split over every device of ``x``'s
    mesh when ``n`` divides evenly (each process then writes only its part), else replicated."""
    sh = x.sharding
    if isinstance(sh, jax.sharding.NamedSharding):
        mesh = sh.mesh
    else:
        devices = sorted(sh.device_set, key=lambda d: d.id)  # type: ignore[attr-defined]  # same order everywhere
        mesh = jax.sharding.Mesh(np.array(devices), ("all",))
    names = tuple(mesh.axis_names)
    spec = jax.sharding.PartitionSpec(names) if n and n % mesh.size == 0 else jax.sharding.PartitionSpec()
    return jax.sharding.NamedSharding(mesh, spec)


def _replicated_like(x: jax.Array) -> jax.sharding.Sharding:
    return _stored_sharding(x, 0)  # length 0: replicated


def _pack_bits(m: jax.Array) -> jax.Array:
    import jax.numpy as jnp

    flat = m.reshape(-1).astype(jnp.uint8)
    pad = (-flat.size) % 8
    flat = jnp.pad(flat, (0, pad)).reshape(-1, 8)
    return jnp.sum(flat << jnp.arange(8, dtype=jnp.uint8), axis=1, dtype=jnp.uint8)


def pack_mask_global(mask: jax.Array) -> jax.Array:
    """:func:`pack_mask` of a multi-process global array, computed on its devices.

    The same bytes as :func:`pack_mask` of the whole mask, as a global 1-D
    ``uint8`` array (sharded over the mask's devices when its length divides
    evenly); nothing is transferred to the host.
    """
    if mask.dtype != np.bool_:
        raise TypeError(f"pack_mask: mask must be bool, got dtype {mask.dtype}")
    n = (int(np.prod(mask.shape)) + 7) // 8
    return jax.jit(_pack_bits, out_shardings=_stored_sharding(mask, n))(mask)


def compact_leaf_global(path: str, w: jax.Array, m: jax.Array, *, strict: bool = True) -> jax.Array | None:
    """:func:`compact_leaf` of multi-process global arrays: the kept values, gathered on device.

    Two small replicated reductions (kept count, any non-zero pruned value) are
    read on the host; the values come back as a global 1-D array. Collective:
    every process must call it with the same leaves.
    """
    import jax.numpy as jnp

    if tuple(m.shape) != tuple(w.shape):
        raise ValueError(f"leaf {path!r}: mask shape {tuple(m.shape)} differs from the param's shape {tuple(w.shape)}")
    if m.dtype != np.bool_:
        raise TypeError(f"mask leaf {path!r} must be bool, got {m.dtype}")
    rep = _replicated_like(w)
    nnz, lossy = jax.jit(
        lambda w, m: (jnp.sum(m, dtype=jnp.int32), jnp.any(jnp.where(m, jnp.zeros_like(w), w) != 0)),
        out_shardings=(rep, rep),
    )(w, m)
    nnz, lossy = int(np.asarray(nnz)), bool(np.asarray(lossy))
    if lossy:
        if strict:
            raise ValueError(
                f"leaf {path!r}: pruned coordinates hold non-zero values, so the compact form would lose them "
                "(apply the masks first, or pass strict=False)"
            )
        return None

    def take(w, m):
        (idx,) = jnp.nonzero(m.reshape(-1), size=nnz)
        return w.reshape(-1)[idx]

    return jax.jit(take, out_shardings=_stored_sharding(w, nnz))(w, m)


def host_copy(x: Any) -> np.ndarray:
    """The whole array on this host; a multi-process global array is gathered (collective: every process calls it)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def crc32(x: Any) -> int:
    """CRC-32 of an array's raw bytes (C order); used to detect corrupted checkpoint files."""
    return zlib.crc32(np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8).data) & 0xFFFFFFFF
