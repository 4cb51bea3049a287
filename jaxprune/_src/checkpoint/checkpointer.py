"""SparseCheckpointer: orbax ``CheckpointManager`` steps of jaxprune states (save, restore, list).

Saves validate everything before writing, overwrite a step only on request and
can run asynchronously; restores check the manifest (and its SHA-256), decode
every leaf and verify CRC-32s (see :mod:`jaxprune._src.checkpoint` for the
directory layout and :mod:`jaxprune._src.checkpoint.codec` for the leaf encodings).

Crash safety (what survives ``kill -9`` at any point of a save):

* a new step is written by orbax into ``<step>.orbax-checkpoint-tmp*`` and renamed
  to ``<step>`` when complete; leftovers of killed saves are removed when a
  writer next opens the directory;
* an overwrite writes the new step completely into ``<step>.jaxprune-staging/<step>``
  while the old ``<step>`` stays in place, then swaps: ``<step>`` ->
  ``<step>.jaxprune-replaced``, staged -> ``<step>``, then deletes the backup.
  :func:`recover_directory` (run when a writer opens the directory and before every
  restore) finishes an interrupted swap if the new step is complete, or puts the
  old step back otherwise; so the old or the new step always restores;
* one writer per directory: a :class:`SparseCheckpointer` holds an exclusive
  ``flock`` on the directory while open (released by the OS if the process dies);
  a second writer, in this or another process, is refused with :class:`CheckpointError`.

Multi-process jobs (``jax.process_count() > 1``, e.g. a TPU pod): opening, saving,
restoring and closing are *collective*: every process calls them, in the same
order, with the same arguments (global arrays; each process writes only its
shards through orbax). Process 0 alone holds the writer lock, recovers
interrupted saves and does the directory moves/deletions (overwrite swaps,
retention, clean-up); the others wait for it at a barrier.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from typing import Any, Mapping, Sequence

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxprune._src import tree as tree_lib
from jaxprune._src.checkpoint.codec import (
    ARRAY_ITEMS,
    COMMIT_MARKER,
    FORMAT,
    JSON_ITEMS,
    MANIFEST,
    VERSION,
    Checkpoint,
    CheckpointError,
    abstract_for,
    abstract_from_metadata,
    canonical_tree,
    check_model_config,
    check_plan_shapes,
    decode_leaf,
    encode_tree,
    entry_shapes,
    json_dict,
    json_digest,
    manifest_digest,
    masks_like,
    model_config_dict,
    shapes_of,
    template_fields,
)
from jaxprune._src.checkpoint.diagnostics import QuietFailedSave, save_error, structure_diff, wrap_error
from jaxprune._src.checkpoint.directory import (
    BACKUP_SUFFIX,
    ORBAX_TMP,
    STAGING_SUFFIX,
    DirLock,
    SharedWriter,
    agree,
    checkpoint_steps,
    committed,
    interrupted_replaces,
    primary,
    recover_directory,
    recovery_hint,
    rmtree_settled,
    step_dir,
    sync,
    try_lock,
)
from jaxprune._src.types import PyTree


def item_handlers() -> dict[str, Any]:
    handlers = {name: ocp.StandardCheckpointHandler() for name in ARRAY_ITEMS}
    handlers.update({name: ocp.JsonCheckpointHandler() for name in JSON_ITEMS + (MANIFEST,)})
    return handlers


# --------------------------------------------------------------------------------- the checkpointer
class SparseCheckpointer:
    """Thin wrapper around ``orbax.checkpoint.CheckpointManager`` for jaxprune states.

    Args:
      directory: root directory; steps are sub-directories.
      max_to_keep: keep only the newest ``max_to_keep`` steps *by step number*
        (older ones are deleted after a save); ``None`` keeps all. With a limit, a
        save of a new step older than the newest committed one is refused
        (:class:`CheckpointError`) instead of deleting newer steps.
      async_: save in a background thread (orbax async checkpointing); call
        :meth:`wait` (or :meth:`close`) before reading the checkpoint.
      compact: store masked weights as kept values + packed masks.
      checksums: record a CRC-32 per stored array (checked on restore).

    Thread safety: one instance may be shared by threads; :meth:`save`,
    :meth:`wait`, :meth:`restore` and :meth:`close` are serialized by an internal
    lock (a save waits for the previous async save to commit first).

    One writer per directory: while open, the instance holds an exclusive lock
    (``flock``) on ``directory``; opening a second ``SparseCheckpointer`` on it, in
    this or another process, raises :class:`CheckpointError`. Reading with
    :func:`jaxprune.restore_checkpoint` needs no lock. Opening the directory also
    finishes or rolls back an overwrite interrupted by a crash and deletes the
    temporary folders of killed saves (see :func:`recover_directory`).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> with SparseCheckpointer(tempfile.mkdtemp(), async_=True) as ckpt:
      ...     ckpt.save(5, params={'w': jnp.ones(3)}, data_state={'step': 5})
      ...     ckpt.wait()
      ...     ckpt.latest_step(), ckpt.restore().data_state
      (5, {'step': 5})
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        async_: bool = True,
        compact: bool = True,
        checksums: bool = True,
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        self.compact = compact
        self.checksums = checksums
        self.max_to_keep = max_to_keep
        self.async_ = async_
        self._lock = threading.RLock()
        self._pending: dict | None = None  # the save in flight: step, kind, staging manager
        self._dir_lock: DirLock | SharedWriter | None = None
        self._mngr: ocp.CheckpointManager | None = None
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create checkpoint directory {self.directory}: {e.strerror or e}") from None
        lock: DirLock | SharedWriter | None = SharedWriter()
        if primary():
            lock = try_lock(self.directory)
        if not agree(lock is not None):
            raise CheckpointError(
                f"{self.directory} is already open for writing by another SparseCheckpointer (in this or another "
                "process); a checkpoint directory has one writer at a time: close the other one first"
            ) from None
        assert lock is not None
        self._dir_lock = lock
        try:
            self.recovered = recover_directory(self.directory) if primary() else []
            sync("recovered")
            for msg in self.recovered:
                logging.getLogger(__name__).warning("%s: %s", self.directory, msg)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_, create=True
            )
            self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=item_handlers())
        except BaseException:
            self._dir_lock.release()
            raise
        self._log_filter: QuietFailedSave | None = QuietFailedSave(self.directory)
        logging.getLogger("absl").addFilter(self._log_filter)

    @classmethod
    def _reader(cls, directory: str) -> "SparseCheckpointer":
        """A read-only instance (no writer lock; used by :func:`restore_checkpoint`)."""
        self = cls.__new__(cls)
        self.directory = os.path.abspath(directory)
        self.compact = self.checksums = True
        self.max_to_keep = None
        self.async_ = False
        self._lock = threading.RLock()
        self._pending = None
        self._dir_lock = None
        options = ocp.CheckpointManagerOptions(
            read_only=True, create=False, enable_async_checkpointing=False, save_interval_steps=0
        )
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)  # orbax warns "Given directory is read only" on every read-only manager
        try:
            self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=item_handlers())
        finally:
            absl_logger.setLevel(level)
        return self

    def __del__(self):  # an instance dropped without close(): free the directory for other writers
        lock = getattr(self, "_dir_lock", None)
        if lock is not None:
            with contextlib.suppress(Exception):
                lock.release()

    @property
    def _manager(self) -> ocp.CheckpointManager:
        """The orbax manager; ``__init__`` and ``_reader`` create it before returning."""
        assert self._mngr is not None, "SparseCheckpointer has no orbax manager (not fully constructed)"
        return self._mngr

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "SparseCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending saves, releases orbax's resources and the directory's writer lock."""
        with self._lock:
            try:
                self.wait()
            finally:
                if self._mngr is not None:
                    self._mngr.close()
                if self._dir_lock is not None:
                    self._dir_lock.release()
                    self._dir_lock = None
                log_filter = getattr(self, "_log_filter", None)  # absent on _reader instances
                if log_filter is not None:
                    logging.getLogger("absl").removeFilter(log_filter)
                    self._log_filter = None

    def wait(self) -> None:
        """Blocks until an async save is committed (and an overwrite swapped in).

        Raises :class:`CheckpointError` if the save failed (e.g. disk full); the
        partial write is removed and the previous steps stay as they were.
        """
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                self._manager.wait_until_finished()
                return
            self._finish(pending)

    def _finish(self, pending: dict) -> None:
        step = pending["step"]
        step_path = step_dir(self.directory, step)
        staging = step_path + STAGING_SUFFIX
        mngr = pending.get("staging_mngr") or self._manager
        try:
            mngr.wait_until_finished()
        except BaseException as e:  # background write failed (or interrupted): clean up, keep the old state
            self._cleanup_failed(step, pending)
            if not isinstance(e, Exception):
                raise
            raise save_error(e, step, self.directory) from None
        sync(f"saved:{step}")  # every process's shards written and the step committed by process 0
        if pending["kind"] == "new":
            if not committed(step_path):
                self._cleanup_failed(step, pending)
                raise CheckpointError(
                    f"saving step {step} to {self.directory} did not commit (no {COMMIT_MARKER}); "
                    "nothing was written, the previous steps are unchanged"
                )
            self._apply_retention()
            return
        # overwrite: the new step is complete in staging; swap it in
        with contextlib.suppress(Exception):
            pending["staging_mngr"].close()
        staged = os.path.join(staging, str(step))
        if not committed(staged):
            self._cleanup_failed(step, pending)
            raise CheckpointError(
                f"overwriting step {step} in {self.directory} did not commit; the previous "
                f"version of step {step} is unchanged"
            )
        backup = step_path + BACKUP_SUFFIX
        if primary():
            os.rename(step_path, backup)
            os.rename(staged, step_path)
            shutil.rmtree(backup)
            shutil.rmtree(staging)
        sync(f"swapped:{step}")
        self._manager.reload()

    def _cleanup_failed(self, step: int, pending: dict) -> None:
        step_path = step_dir(self.directory, step)
        # let orbax's other background writers of this save stop before deleting their folders
        with contextlib.suppress(Exception):
            (pending.get("staging_mngr") or self._manager).wait_until_finished()
        if pending["kind"] == "overwrite":
            with contextlib.suppress(Exception):
                pending["staging_mngr"].close()
            if primary():
                rmtree_settled(step_path + STAGING_SUFFIX)
        elif primary():
            if os.path.isdir(step_path) and not committed(step_path):
                shutil.rmtree(step_path, ignore_errors=True)
        for name in os.listdir(self.directory) if primary() else []:
            if name.startswith(f"{step}{ORBAX_TMP}"):
                rmtree_settled(os.path.join(self.directory, name))
        with contextlib.suppress(Exception):
            self._manager.reload()

    def _apply_retention(self) -> None:
        if self.max_to_keep is None:
            return
        steps = checkpoint_steps(self.directory)
        extra = steps[: max(0, len(steps) - self.max_to_keep)]
        for old in extra if primary() else []:  # the oldest by step number; orbax normally did this already
            shutil.rmtree(step_dir(self.directory, old), ignore_errors=True)
        if extra:
            sync("retention")
            self._manager.reload()

    # -- steps -------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        return checkpoint_steps(self.directory)

    def latest_step(self) -> int | None:
        """The newest committed step (incomplete saves are ignored), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save --------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        params: PyTree = None,
        masks: PyTree = None,
        opt_state: PyTree = None,
        shrunk_params: PyTree = None,
        plan: Any = None,
        model_config: Any = None,
        data_state: Mapping[str, Any] | None = None,
        compact: bool | None = None,
        overwrite: bool = False,
        validate: bool = True,
    ) -> None:
        """Saves the given items as step ``step`` (see :func:`save_checkpoint` for the arguments).

        Everything is validated before anything is written. A step that already
        exists (complete or not) is refused unless ``overwrite=True``; the new
        version is then written completely beside the old one and swapped in only
        once committed, so a crash leaves the old or the new step (never neither).
        A failed write (e.g. disk full) raises :class:`CheckpointError` (at once, or
        from :meth:`wait` for an async save) and leaves the previous steps intact.
        """
        with self._lock:
            self._save(
                step,
                params=params,
                masks=masks,
                opt_state=opt_state,
                shrunk_params=shrunk_params,
                plan=plan,
                model_config=model_config,
                data_state=data_state,
                compact=compact,
                overwrite=overwrite,
                validate=validate,
            )

    def _save(
        self,
        step: int,
        *,
        params: PyTree = None,
        masks: PyTree = None,
        opt_state: PyTree = None,
        shrunk_params: PyTree = None,
        plan: Any = None,
        model_config: Any = None,
        data_state: Mapping[str, Any] | None = None,
        compact: bool | None = None,
        overwrite: bool = False,
        validate: bool = True,
    ) -> None:
        """:meth:`save`, called with ``self._lock`` held."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise TypeError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        compact = self.compact if compact is None else compact
        if masks is None and opt_state is not None:
            masks = _masks_of_opt_state(opt_state)
        if masks is not None and params is not None:
            tree_lib.check_same_structure(params, masks, what="masks")
        given = {"params": params, "masks": masks, "opt_state": opt_state, "shrunk_params": shrunk_params}
        if all(v is None for v in given.values()) and plan is None and model_config is None and data_state is None:
            raise ValueError(
                "save: nothing to save (give params, masks, opt_state, shrunk_params, plan, model_config or data_state)"
            )
        plan_d = json_dict(plan, "plan")
        config_d = model_config_dict(model_config)
        if data_state is not None and not isinstance(data_state, Mapping):
            raise TypeError(f"data_state must be a dict (epoch, step, seed, ...), got {type(data_state).__name__}")
        data_d = json_dict(data_state, "data_state")

        if validate:
            if plan_d is not None and (params is not None or shrunk_params is not None):
                check_plan_shapes(
                    plan_d,
                    None if params is None else shapes_of(params),
                    None if shrunk_params is None else shapes_of(shrunk_params),
                )
            if config_d is not None:
                target = shrunk_params if shrunk_params is not None else params
                if target is not None:
                    check_model_config(
                        config_d, shapes_of(target), "shrunk_params" if shrunk_params is not None else "params"
                    )

        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "items": {},
            "mask_layout": "np.packbits(mask.reshape(-1), bitorder='little'), C order",
            "json_items": [],
        }
        args: dict[str, Any] = {}
        for name in ARRAY_ITEMS:
            tree = given[name]
            if tree is None:
                continue
            stored, entries = encode_tree(
                tree, name, masks=masks if (name == "params" and compact) else None, checksums=self.checksums
            )
            manifest["items"][name] = entries
            args[name] = ocp.args.StandardSave(stored)
        for name, value in (("plan", plan_d), ("model_config", config_d), ("data_state", data_d)):
            if value is not None:
                manifest["json_items"].append(name)
                manifest.setdefault("json_sha256", {})[name] = json_digest(value)
                args[name] = ocp.args.JsonSave(value)
        manifest["sha256"] = manifest_digest(manifest)  # over dtypes, shapes, layout, CRCs: catches hand edits
        args[MANIFEST] = ocp.args.JsonSave(manifest)

        if self._dir_lock is None:
            raise CheckpointError(
                f"this SparseCheckpointer of {self.directory} is closed or read-only; open a new one to save"
            )
        self.wait()  # one save at a time; finishes (or reports the failure of) the previous async save
        sync(f"save:{step}")  # every process sees the same directory before deciding
        step_path = step_dir(self.directory, step)
        committed = self.all_steps()
        exists = os.path.exists(step_path)
        if exists and not overwrite:
            state = "a complete" if step in committed else "an incomplete"
            raise CheckpointError(
                f"{step_path} already holds {state} checkpoint of step {step}; refusing to "
                "overwrite it (pass overwrite=True to replace it)"
            )
        if self.max_to_keep is not None and not exists and committed and step < committed[-1]:
            raise CheckpointError(
                f"refusing to save step {step} in {self.directory}: it is older than the newest step {committed[-1]} "
                f"and max_to_keep={self.max_to_keep} keeps the newest steps by step number, so it would be deleted "
                "at once (or delete newer steps); save steps in increasing order, or use max_to_keep=None"
            )
        if not os.access(self.directory, os.W_OK):
            raise CheckpointError(f"cannot save step {step}: checkpoint directory {self.directory} is not writable")
        if exists:  # overwrite: write the whole new step aside, swap it in once committed
            if os.path.isdir(step_path) and step not in committed:
                if primary():
                    shutil.rmtree(step_path)  # an incomplete step: nothing to keep
                sync(f"removed-incomplete:{step}")
                self._manager.reload()
                exists = False
        if exists:
            staging = step_path + STAGING_SUFFIX
            if primary():
                shutil.rmtree(staging, ignore_errors=True)
            sync(f"staging:{step}")
            options = ocp.CheckpointManagerOptions(enable_async_checkpointing=self.async_, create=True)
            pending = {
                "step": step,
                "kind": "overwrite",
                "staging_mngr": ocp.CheckpointManager(staging, options=options, item_handlers=item_handlers()),
            }
            mngr = pending["staging_mngr"]
        else:
            pending = {"step": step, "kind": "new"}
            mngr = self._manager
        try:
            saved = mngr.save(step, args=ocp.args.Composite(**args), force=True)
        except BaseException as e:  # noqa: BLE001 - a failed write (e.g. disk full): clean up, keep the old state
            self._cleanup_failed(step, pending)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise save_error(e, step, self.directory) from None
        if not saved:
            self._cleanup_failed(step, pending)
            raise CheckpointError(f"orbax refused to save step {step} in {self.directory}")
        self._pending = pending
        if not self.async_:
            self.wait()

    # -- restore -----------------------------------------------------------------------------------
    def restore(
        self,
        step: int | None = None,
        *,
        template: Checkpoint | Mapping[str, Any] | None = None,
        items: Sequence[str] | None = None,
        verify: bool = True,
    ) -> Checkpoint:
        """Restores step ``step`` (default: the latest committed one); see :func:`restore_checkpoint`."""
        with self._lock:
            return self._restore(step, template=template, items=items, verify=verify)

    def _restore(self, step: int | None, *, template: Any, items: Sequence[str] | None, verify: bool) -> Checkpoint:
        self.wait()
        side = interrupted_replaces(self.directory)
        if step is None:
            step = self.latest_step()
            if step is None:
                hints = " ".join(recovery_hint(self.directory, s) for s in side)
                raise CheckpointError(
                    f"no complete checkpoint in {self.directory} "
                    f"(incomplete steps: {checkpoint_steps(self.directory, committed=False)})"
                    + (f"; {hints}" if hints.strip() else "")
                )
        step_path = step_dir(self.directory, step)
        if step not in self.all_steps():
            hint = recovery_hint(self.directory, step)
            hint = f"; {hint}" if hint else ""
            if os.path.isdir(step_path):
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is incomplete (no "
                    f"{COMMIT_MARKER}: its save did not finish); complete steps: {self.all_steps()}" + hint
                )
            raise CheckpointError(
                f"no checkpoint step {step} in {self.directory}; complete steps: {self.all_steps()}" + hint
            )
        templates = template_fields(template)
        manifest = self._restore_json(step, MANIFEST, "manifest")
        if not isinstance(manifest, Mapping) or manifest.get("format") != FORMAT:
            raise CheckpointError(
                f"step {step}: {MANIFEST} is not a jaxprune manifest (checkpoint corrupted, or not written by jaxprune)"
            )
        if manifest.get("version", 0) > VERSION:
            raise CheckpointError(
                f"step {step}: written by format version {manifest['version']}, this jaxprune reads up to {VERSION}"
            )
        manifest_file = os.path.join(step_path, MANIFEST, "metadata")
        if manifest.get("version", 0) >= 2 or "sha256" in manifest:
            want = manifest.get("sha256")
            got = manifest_digest(manifest)
            if want != got:
                raise CheckpointError(
                    f"{manifest_file}: the manifest fails its SHA-256 check (recorded {want}, "
                    f"computed {got}): it was edited or corrupted; refusing to restore step {step}"
                )
        if manifest.get("step", step) != step:
            raise CheckpointError(
                f"{manifest_file}: the manifest is of step {manifest.get('step')}, not {step} "
                "(folder renamed or copied by hand?)"
            )
        stored_items = list(manifest["items"]) + list(manifest["json_items"])
        wanted = stored_items if items is None else list(items)
        for name in wanted:
            if name not in ARRAY_ITEMS + JSON_ITEMS:
                raise ValueError(f"unknown item {name!r}; items are {ARRAY_ITEMS + JSON_ITEMS}")
        for name in wanted:
            if name not in stored_items:
                raise CheckpointError(f"step {step} has no item {name!r}; it holds {stored_items}")
            if not os.path.isdir(os.path.join(step_path, name)):
                raise CheckpointError(
                    f"step {step}: item {name!r} is listed in the manifest but its directory "
                    f"is missing from {step_path} (checkpoint truncated)"
                )
        out = Checkpoint(step=step, manifest=dict(manifest))
        mask_at: dict[str, Any] = {}
        if "masks" in manifest["items"] and (
            "masks" in wanted
            or ("params" in wanted and any(e["enc"] == "compact" for e in manifest["items"]["params"].values()))
        ):
            masks_template = templates.get("masks")
            if masks_template is None and templates.get("params") is not None:
                masks_template = masks_like(templates["params"], manifest["items"]["masks"])
            masks = self._restore_array(step, "masks", manifest["items"]["masks"], masks_template, {}, verify)
            mask_at = {canonical_tree(p, manifest["items"]["masks"]): m for p, m in tree_lib.leaves_with_paths(masks)}
            if "masks" in wanted:
                out.masks = masks
        for name in ("params", "opt_state", "shrunk_params"):
            if name in wanted:
                setattr(
                    out,
                    name,
                    self._restore_array(step, name, manifest["items"][name], templates.get(name), mask_at, verify),
                )
        edited = []
        for name in JSON_ITEMS:
            if name in wanted:
                value = self._restore_json(step, name, name)
                want = manifest.get("json_sha256", {}).get(name)
                if verify and want is not None and json_digest(value) != want:
                    edited.append(name)
                setattr(out, name, value)
        if verify and out.plan is not None:
            check_plan_shapes(
                out.plan,
                entry_shapes(manifest["items"]["params"]) if "params" in manifest["items"] else None,
                entry_shapes(manifest["items"]["shrunk_params"]) if "shrunk_params" in manifest["items"] else None,
            )
        if edited:  # after the plan and model-config checks, whose messages are more specific
            if "model_config" in edited and isinstance(out.model_config, Mapping):
                which = "shrunk_params" if "shrunk_params" in manifest["items"] else "params"
                if which in manifest["items"]:
                    check_model_config(out.model_config, entry_shapes(manifest["items"][which]), which)
            name = edited[0]
            raise CheckpointError(
                f"{os.path.join(step_path, name, 'metadata')}: item {name!r} fails its SHA-256 "
                "check (edited or corrupted); refusing to restore it"
            )
        return out

    def _restore_json(self, step: int, name: str, what: str) -> Any:
        try:
            res = self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
        except Exception as e:  # noqa: BLE001 - orbax/json raise many types; name the item
            raise wrap_error(e, f"step {step}: cannot read {what}") from e
        return res[name]

    def _restore_array(
        self, step: int, name: str, entries: dict, template: PyTree, mask_at: Mapping[str, Any], verify: bool
    ) -> PyTree:
        item_dir = os.path.join(step_dir(self.directory, step), name)

        def metadata():
            try:  # this item's metadata only (the manager's item_metadata reads every item's)
                meta = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
            except Exception as e:  # noqa: BLE001
                raise wrap_error(e, f"step {step}: cannot read the metadata of item {name!r} ({item_dir})") from e
            return getattr(meta, "tree", meta)

        if template is not None:
            target = abstract_for(name, template, entries)
        else:
            target = abstract_from_metadata(metadata())
        try:
            res = self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(target)}))
        except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many types; name the item
            if template is not None and "tree structures do not match" in str(e):
                diff = structure_diff(metadata(), template) or "(containers differ; leaf paths are equal)"
                raise CheckpointError(
                    f"step {step} item {name!r}: the template's tree structure does not match the checkpoint's: {diff}"
                ) from None
            raise wrap_error(e, f"step {step}: cannot read item {name!r} ({item_dir})") from e
        stored = res[name]
        canon = lambda p: canonical_tree(p, entries)  # noqa: E731
        found = {canon(p) for p, _ in tree_lib.leaves_with_paths(stored)}
        if found != set(entries):
            raise CheckpointError(
                f"step {step} item {name!r}: stored leaves differ from the manifest: missing "
                f"{sorted(set(entries) - found)[:10]}, unexpected {sorted(found - set(entries))[:10]}"
                " (checkpoint corrupted)"
            )
        targets = dict(tree_lib.leaves_with_paths(template)) if template is not None else {}
        return tree_lib.map_with_path(
            lambda p, x: decode_leaf(name, canon(p), x, entries[canon(p)], mask_at, verify, targets.get(p)), stored
        )


def _masks_of_opt_state(opt_state: PyTree) -> PyTree:
    from jaxprune._src.sparse_optax import find_sparse_state

    try:
        return find_sparse_state(opt_state).masks
    except ValueError:
        return None
