"""Export a jaxprune checkpoint to plain dense files that load without jaxprune.

**On-disk layout of a jaxprune checkpoint** (see :mod:`jaxprune._src.checkpoint.api`
for the full description). A step is an orbax ``CheckpointManager`` step folder
``<directory>/<step>/`` holding one sub-folder per saved *item*:

* ``jaxprune_manifest`` (JSON): format name and version, and for every leaf of every
  array item its path, shape, dtype, *encoding* and CRC-32, plus SHA-256s of the
  JSON items and of the manifest itself;
* array items (orbax ``StandardSave``): ``params``, ``masks``, ``opt_state``,
  ``shrunk_params``; JSON items: ``plan``, ``model_config``, ``data_state``;
* ``commit_success.txt`` once the step is complete.

Leaf encodings: ``dense`` (the array as is); ``bits`` (a bool array packed with
``np.packbits(m.reshape(-1), bitorder='little')`` into 1-D ``uint8``; ``None`` mask
leaves are not stored); ``compact`` (the default for a masked weight whose pruned
coordinates are zero, i.e. ``save_checkpoint(..., compact=True)``: only the kept
values ``w.reshape(-1)[m.reshape(-1)]`` as a 1-D array, scattered back into zeros
of the recorded shape at restore, which needs the ``masks`` item); ``key`` (a PRNG
key as its ``key_data``). So the raw orbax arrays of a compact checkpoint are not
the model's weights: read it with :func:`jaxprune.restore_checkpoint`, or export it.

**Export** (:func:`export_dense`) restores a step with jaxprune and writes, for
tools that do not have jaxprune:

* ``format='orbax'``: ``<out_dir>/orbax/``, a plain ``ocp.StandardCheckpointer``
  checkpoint of one dict ``{'params': ..., 'masks': ..., 'shrunk_params': ...}``
  (only the items the step holds). Params are dense with pruned weights as zeros;
  masks are bool arrays shaped like the params at *every* leaf (all ``True`` where
  jaxprune stores ``None``, see :func:`jaxprune.full_masks`) -- or, if the step has
  masks but no params, only the pruned leaves. Load it with
  ``ocp.StandardCheckpointer().restore(path)``.
* ``format='safetensors'``: ``<out_dir>/model.safetensors``, the same arrays
  flattened to keys ``'<item>/<leaf path>'`` (e.g. ``'params/dense/kernel'``,
  ``'masks/dense/kernel'``); the file's metadata holds ``step`` and ``format``.
  Load it with ``safetensors.numpy.load_file(path)``.

The optimizer state and the JSON items (plan, model config, data state) are not
exported. Each output is written under a temporary name in ``out_dir`` and renamed
into place when complete, so a crash never leaves a half-written export under the
final name.

Example:
  >>> import tempfile, jax.numpy as jnp, numpy as np
  >>> import jaxprune as jp
  >>> from safetensors.numpy import load_file
  >>> ckpt, out = tempfile.mkdtemp(), tempfile.mkdtemp()
  >>> pruned, masks = jp.prune({'w': jnp.arange(1., 5.).reshape(2, 2), 'b': jnp.ones(2)}, 0.5)
  >>> jp.save_checkpoint(ckpt, 7, params=pruned, masks=masks)
  >>> paths = jp.export_dense(ckpt, out, format='safetensors')
  >>> tensors = load_file(paths['safetensors'])
  >>> sorted(tensors), tensors['params/w'].tolist(), tensors['masks/b'].tolist()
  (['masks/b', 'masks/w', 'params/b', 'params/w'], [[0.0, 0.0], [3.0, 4.0]], [True, True])
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, Sequence

import jax
import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.checkpoint.api import restore_checkpoint
from jaxprune._src.checkpoint.codec import CheckpointError
from jaxprune._src.types import PyTree

__all__ = ["export_dense", "EXPORT_FORMATS", "ORBAX_DIRNAME", "SAFETENSORS_FILENAME"]

EXPORT_FORMATS = ("orbax", "safetensors")
ORBAX_DIRNAME = "orbax"
SAFETENSORS_FILENAME = "model.safetensors"
_ITEMS = ("params", "masks", "shrunk_params")


def _formats(format: str | Sequence[str]) -> tuple[str, ...]:
    names = (format,) if isinstance(format, str) else tuple(format)
    if not names or any(not isinstance(f, str) or f not in EXPORT_FORMATS for f in names):
        raise ValueError(f"format must be one of {EXPORT_FORMATS} or a sequence of them, got {format!r}")
    return tuple(dict.fromkeys(names))


def _host_tree(tree: PyTree) -> PyTree:
    """numpy copies of every leaf (``None`` leaves dropped by ``jax.tree``)."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _dense_tree(ckpt: Any) -> dict[str, PyTree]:
    from jaxprune._src.mask_interop import full_masks

    out: dict[str, PyTree] = {}
    if ckpt.params is not None:
        out["params"] = _host_tree(ckpt.params)
    if ckpt.masks is not None:
        if ckpt.params is not None:
            out["masks"] = _host_tree(full_masks(ckpt.params, ckpt.masks))
        else:  # no params to take the unpruned shapes from: the pruned leaves only
            kept = {p: m for p, m in tree_lib.leaves_with_paths(ckpt.masks, is_leaf=tree_lib.is_none) if m is not None}
            out["masks"] = {p: np.asarray(m) for p, m in kept.items()}
    if ckpt.shrunk_params is not None:
        out["shrunk_params"] = _host_tree(ckpt.shrunk_params)
    return out


def _tmp_name(out_dir: str, final: str) -> str:
    return os.path.join(out_dir, f".{os.path.basename(final)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _install(tmp: str, final: str, overwrite: bool) -> None:
    """Renames ``tmp`` to ``final``; an existing ``final`` is replaced only with ``overwrite``."""
    if os.path.lexists(final):
        if not overwrite:
            _remove(tmp)
            raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
        old = _tmp_name(os.path.dirname(final), final + ".old")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        _remove(old)
    else:
        os.rename(tmp, final)


def _write_orbax(tree: dict[str, PyTree], final: str, overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    tmp = _tmp_name(os.path.dirname(final), final)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp, tree)
            ckptr.wait_until_finished()
        _install(tmp, final, overwrite)
    except BaseException:
        _remove(tmp)
        raise


def _write_safetensors(tree: dict[str, PyTree], final: str, step: int, overwrite: bool) -> None:
    from safetensors.numpy import save_file

    flat: dict[str, np.ndarray] = {}
    for item, sub in tree.items():
        for path, leaf in tree_lib.leaves_with_paths(sub):
            key = f"{item}/{path}"
            if key in flat:
                raise ValueError(f"export_dense: two leaves share the safetensors key {key!r}")
            flat[key] = np.ascontiguousarray(leaf)
    tmp = _tmp_name(os.path.dirname(final), final)
    try:
        save_file(flat, tmp, metadata={"step": str(step), "format": "jaxprune.export_dense"})
        _install(tmp, final, overwrite)
    except BaseException:
        _remove(tmp)
        raise


def export_dense(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    step: int | None = None,
    format: str | Sequence[str] = "orbax",
    overwrite: bool = False,
) -> dict[str, str]:
    """Writes a jaxprune checkpoint step as plain dense files readable without jaxprune.

    Args:
      checkpoint_dir: a jaxprune checkpoint root (as given to :func:`jaxprune.save_checkpoint`).
      out_dir: folder for the export (created if missing).
      step: the step to export (default: the latest complete one).
      format: ``'orbax'``, ``'safetensors'``, or a sequence of both.
      overwrite: replace existing outputs (else ``FileExistsError``).

    Returns:
      ``{format: path}`` of what was written: ``<out_dir>/orbax`` (a
      ``ocp.StandardCheckpointer`` directory) and/or ``<out_dir>/model.safetensors``.
      See the module docstring for the layout.

    Raises:
      ValueError for an unknown format; :class:`jaxprune.CheckpointError` if the step
      is missing, incomplete, corrupted, or holds none of params / masks / shrunk params;
      ``FileExistsError`` if an output exists and not ``overwrite``.

    Loading the export (no jaxprune needed)::

      import orbax.checkpoint as ocp
      from safetensors.numpy import load_file
      tree = ocp.StandardCheckpointer().restore(os.path.abspath(f'{out_dir}/orbax'))
      params, masks = tree['params'], tree['masks']
      tensors = load_file(f'{out_dir}/model.safetensors')   # {'params/dense/kernel': ...}

    >>> import tempfile, jax.numpy as jnp
    >>> import jaxprune as jp
    >>> ckpt, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> jp.save_checkpoint(ckpt, 1, params={'w': jnp.ones((2, 2))})
    >>> sorted(jp.export_dense(ckpt, out, format=('orbax', 'safetensors')))
    ['orbax', 'safetensors']
    """
    formats = _formats(format)
    if not isinstance(overwrite, bool):
        raise TypeError(f"export_dense: overwrite must be True or False, got {overwrite!r}")
    checkpoint_dir = os.fspath(checkpoint_dir)
    head = restore_checkpoint(checkpoint_dir, step, items=[])
    assert head.manifest is not None and head.step is not None  # restore_checkpoint always sets both
    have = [name for name in _ITEMS if name in head.manifest["items"]]
    if not have:
        raise CheckpointError(
            f"step {head.step} in {checkpoint_dir} holds none of {list(_ITEMS)} "
            f"(it holds {sorted(head.manifest['items'])}); nothing to export"
        )
    ckpt = restore_checkpoint(checkpoint_dir, head.step, items=have)
    tree = _dense_tree(ckpt)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, str] = {}
    for fmt in formats:
        if fmt == "orbax":
            final = os.path.join(out_dir, ORBAX_DIRNAME)
            _write_orbax(tree, final, overwrite)
        else:
            final = os.path.join(out_dir, SAFETENSORS_FILENAME)
            _write_safetensors(tree, final, head.step, overwrite)
        written[fmt] = final
    return written
