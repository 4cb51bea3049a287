"""Orbax checkpoints of dense, sparse and shrunk states; resumable, portable, checked.

One checkpoint step is an orbax ``CheckpointManager`` step directory holding a
composite of items (only those given are written)::

  <directory>/<step>/
    jaxprune_manifest/   JSON: format version, per-leaf shape/dtype/encoding/CRC-32 of every array item
    params/              dense params; masked leaves stored compactly (kept values, see sparse_format)
    masks/               masks as packed bits (1-D uint8, C order, little bit order; None = unpruned)
    opt_state/           optimizer state: bool leaves (SparseState masks) packed, PRNG keys as key_data
    shrunk_params/       params of the structurally pruned model
    plan/                JSON: PrunePlan.to_dict() (kept indices, original and new shapes per leaf)
    model_config/        JSON: jaxprune.models.get_config(model)
    data_state/          JSON: free-form resume position (epoch, step, rng seed, ...)
    commit_success.txt   written by orbax when the step is complete

Arrays go through ``ocp.args.StandardSave``, JSON through ``ocp.args.JsonSave``.
Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it when
complete (and writes ``commit_success.txt``); a step without that marker is
never picked as latest and restoring it raises :class:`CheckpointError`.

Reliability promises (tested by ``tests/test_faults_checkpoint.py``):

* atomic steps: a save killed at any point leaves the previous steps intact and
  the new step either absent/refused or complete; an overwrite (``overwrite=True``)
  writes ``<step>.jaxprune-staging/<step>`` and swaps it in, and the next writer
  or restore finishes or rolls back a swap cut by a crash (so the old or the new
  version of the step restores, never neither);
* integrity: per-array CRC-32s, a SHA-256 of the manifest's own content and of
  every JSON item; restore refuses a mismatch naming the file, and never casts
  into a template of another dtype;
* retention by step number (``max_to_keep``), refusing out-of-order saves;
* one writer per directory (``flock``), thread-safe :class:`SparseCheckpointer`;
* a failed write (e.g. disk full) raises :class:`CheckpointError` and removes its
  partial folders.

Every leaf of an array item is recorded in the manifest with an encoding:
``dense`` (the array as is, sharding kept), ``compact`` (kept values of a masked
weight; needs the ``masks`` item), ``bits`` (a bool array, packed) or ``key``
(a typed PRNG key as ``jax.random.key_data`` + its implementation name).

Example:
  >>> import tempfile, jax.numpy as jnp, numpy as np
  >>> d = tempfile.mkdtemp()
  >>> params = {'w': jnp.array([[1., 0.], [0., 2.]])}
  >>> save_checkpoint(d, 1, params=params, masks={'w': params['w'] != 0}, data_state={'epoch': 3})
  >>> ckpt = restore_checkpoint(d)
  >>> ckpt.step, ckpt.data_state, np.asarray(ckpt.params['w']).tolist()
  (1, {'epoch': 3}, [[1.0, 0.0], [0.0, 2.0]])

This module is the functional API; the format (items, encodings, checks) lives in
``checkpoint_codec`` and the orbax manager (:class:`SparseCheckpointer`) in ``checkpointer``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax

from jaxprune._src.checkpoint.checkpointer import SparseCheckpointer, item_handlers  # noqa: F401
from jaxprune._src.checkpoint.codec import (  # noqa: F401
    ARRAY_ITEMS,
    COMMIT_MARKER,
    FORMAT,
    JSON_ITEMS,
    MANIFEST,
    VERSION,
    Checkpoint,
    CheckpointError,
    check_model_config,
    check_plan_shapes,
    entry_shapes,
)
from jaxprune._src.checkpoint.directory import (  # noqa: F401
    checkpoint_size_bytes,
    checkpoint_steps,
    recover_directory,
    try_lock,
)
from jaxprune._src.types import PyTree

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "SparseCheckpointer",
    "save_checkpoint",
    "restore_checkpoint",
    "restore_shrunk_model",
    "checkpoint_steps",
    "checkpoint_size_bytes",
    "ShrunkModel",
]


# --------------------------------------------------------------------------------- functional API
def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    *,
    params: PyTree = None,
    masks: PyTree = None,
    opt_state: PyTree = None,
    shrunk_params: PyTree = None,
    plan: Any = None,
    model_config: Any = None,
    data_state: Mapping[str, Any] | None = None,
    compact: bool = True,
    overwrite: bool = False,
    validate: bool = True,
    checksums: bool = True,
) -> None:
    """Saves one checkpoint step synchronously (for async saves use :class:`SparseCheckpointer`).

    Args:
      directory: checkpoint root (created if missing); the step goes to ``directory/step``.
      step: non-negative int.
      params: dense (possibly masked) parameter pytree.
      masks: bool masks (``None`` at unpruned leaves); default: those of a
        :class:`jaxprune.SparseState` inside ``opt_state``.
      opt_state: optimizer state (e.g. of :func:`jaxprune.sparse_optimizer`).
      shrunk_params: params of the structurally pruned model.
      plan: a ``PrunePlan`` (or its dict / JSON).
      model_config: a registered ``jaxprune.models`` model or its ``get_config`` dict,
        describing ``shrunk_params`` if given, else ``params``.
      data_state: JSON-able resume position (epoch, step, seed, ...).
      compact: store masked leaves of ``params`` as kept values + packed bits
        (leaves whose pruned coordinates are not all zero are stored dense: lossless).
      overwrite: replace an existing step (refused otherwise).
      validate: check plan and model config against the params before writing.
      checksums: record a CRC-32 per stored array.

    >>> import tempfile, jax.numpy as jnp
    >>> d = tempfile.mkdtemp()
    >>> save_checkpoint(d, 0, params={'w': jnp.ones(2)})
    >>> checkpoint_steps(d)
    [0]
    """
    with SparseCheckpointer(directory, async_=False, compact=compact, checksums=checksums) as ckpt:
        ckpt.save(
            step,
            params=params,
            masks=masks,
            opt_state=opt_state,
            shrunk_params=shrunk_params,
            plan=plan,
            model_config=model_config,
            data_state=data_state,
            overwrite=overwrite,
            validate=validate,
        )


def restore_checkpoint(
    directory: str | os.PathLike,
    step: int | None = None,
    *,
    template: Checkpoint | Mapping[str, Any] | None = None,
    items: Sequence[str] | None = None,
    verify: bool = True,
) -> Checkpoint:
    """Restores a checkpoint step (default: the latest complete one).

    Args:
      directory: checkpoint root.
      step: step to restore; incomplete steps raise :class:`CheckpointError`.
      template: a :class:`Checkpoint` (or dict) whose ``params`` / ``masks`` /
        ``opt_state`` / ``shrunk_params`` give the structure, dtype and sharding to
        restore into (arrays or ``jax.ShapeDtypeStruct``; e.g.
        ``jax.eval_shape(opt.init, params)`` for an optimizer state). Without a
        template, trees come back as nested dicts/lists of arrays on one device.
        Shapes must match the checkpoint's exactly (else :class:`CheckpointError`).
      items: restore only these items (default: all saved ones).
      verify: check CRC-32s, the JSON items' SHA-256s and the plan against the stored shapes
        (the manifest's own SHA-256 is always checked).

    Unless another writer holds the directory, an overwrite interrupted by a crash
    is first finished or rolled back (see ``SparseCheckpointer``); otherwise the
    error names the backup folder and the command that restores it.

    Returns:
      A :class:`Checkpoint`; masked leaves of compact params come back dense (zeros at pruned coordinates).

    >>> import tempfile, jax, jax.numpy as jnp
    >>> d = tempfile.mkdtemp()
    >>> save_checkpoint(d, 2, params={'w': jnp.ones(2)})
    >>> t = Checkpoint(params={'w': jax.ShapeDtypeStruct((2,), jnp.float32)})
    >>> restore_checkpoint(d, template=t).params['w'].tolist()
    [1.0, 1.0]
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint directory {directory}")
    # no other writer: finish or roll back an interrupted overwrite first (process 0 of a multi-process job)
    lock = try_lock(directory) if jax.process_index() == 0 else None
    if lock is not None:
        try:
            recover_directory(directory, tmp=False)
        except OSError:  # read-only: restore reports the interrupted replace with its recovery steps
            pass
        finally:
            lock.release()
    if jax.process_count() > 1:  # collective: the others wait for process 0's recovery
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxprune_checkpoint:restore")
    mngr = SparseCheckpointer._reader(directory)
    try:
        return mngr.restore(step, template=template, items=items, verify=verify)
    finally:
        mngr._manager.close()


class ShrunkModel(tuple):
    """``(model, params, plan)`` as returned by :func:`restore_shrunk_model`."""

    def __new__(cls, model: Any, params: PyTree, plan: Any):
        return super().__new__(cls, (model, params, plan))

    model = property(lambda self: self[0])
    params = property(lambda self: self[1])
    plan = property(lambda self: self[2])


def restore_shrunk_model(directory: str | os.PathLike, step: int | None = None) -> ShrunkModel:
    """Rebuilds a structurally pruned model from a checkpoint alone.

    Needs the ``shrunk_params`` and ``model_config`` items (``plan`` optional); no
    dense params and none of the code that made the plan.

    Returns:
      ``(model, params, plan)``: the Linen model built by
      ``jaxprune.models.from_config`` (checked against the params' shapes), the
      shrunk variables, and the ``PrunePlan`` (or its dict if the structured
      module is unavailable; None if not saved).

    >>> # model, variables, plan = restore_shrunk_model('/ckpt'); model.apply(variables, x)
    """
    directory = os.fspath(directory)
    head = restore_checkpoint(directory, step, items=[])
    assert head.manifest is not None  # restore always fills in the manifest
    have = list(head.manifest["items"]) + list(head.manifest["json_items"])
    missing = [n for n in ("shrunk_params", "model_config") if n not in have]
    if missing:
        raise CheckpointError(
            f"step {head.step} in {directory} cannot rebuild a shrunk model: it lacks {missing} (it holds {have})"
        )
    wanted = ["shrunk_params", "model_config"] + (["plan"] if "plan" in have else [])
    ckpt = restore_checkpoint(directory, head.step, items=wanted)
    assert ckpt.manifest is not None and ckpt.model_config is not None  # both checked present above
    model = check_model_config(
        ckpt.model_config, entry_shapes(ckpt.manifest["items"]["shrunk_params"]), "shrunk_params"
    )
    plan: Any = ckpt.plan  # becomes a PrunePlan below (stays a dict if the structured module is unavailable)
    if plan is not None:
        try:
            from jaxprune._src.structured.plan import PrunePlan

            plan = PrunePlan.from_dict(plan)
        except ImportError:  # pragma: no cover - plan stays a dict
            pass
        except ValueError as e:
            raise CheckpointError(f"step {head.step}: the stored plan is not a PrunePlan: {e}") from None
    return ShrunkModel(model, ckpt.shrunk_params, plan)
