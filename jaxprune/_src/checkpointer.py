"""SparseCheckpointer: orbax ``CheckpointManager`` steps of jaxprune states (save, restore, list).

Saves validate everything before writing, overwrite a step only on request (the
old step is moved aside until the new one is committed) and can run
asynchronously; restores check the manifest, decode every leaf and verify
CRC-32s (see :mod:`jaxprune._src.checkpoint` for the directory layout and
:mod:`jaxprune._src.checkpoint_codec` for the leaf encodings).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np
import orbax.checkpoint as ocp

from jaxprune._src import tree as tree_lib
from jaxprune._src.checkpoint_codec import (ARRAY_ITEMS, COMMIT_MARKER, FORMAT, JSON_ITEMS, MANIFEST, VERSION,
                                            Checkpoint, CheckpointError, _abstract_for, _abstract_from_metadata,
                                            _canon, _decode_leaf, _encode, _entry_shapes, _json_dict, _masks_like,
                                            _model_config_dict, _shapes, _template_fields, check_model_config,
                                            check_plan_shapes)

PyTree = Any

_BACKUP_SUFFIX = ".jaxprune-replaced"


# --------------------------------------------------------------------------------- directory helpers
def _step_dir(directory: str, step: int) -> str:
    return os.path.join(directory, str(step))


def checkpoint_steps(directory: str | os.PathLike, *, committed: bool = True) -> list[int]:
    """Step numbers in ``directory``; with ``committed=True`` only complete ones (orbax commit marker present).

    Orbax's temporary directories (``<step>.orbax-checkpoint-tmp-*``) are never listed.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        if name.isdigit() and os.path.isdir(os.path.join(directory, name)):
            if not committed or os.path.exists(os.path.join(directory, name, COMMIT_MARKER)):
                steps.append(int(name))
    return sorted(steps)


def checkpoint_size_bytes(directory: str | os.PathLike, step: int | None = None) -> int:
    """Total bytes of the files under ``directory`` (or under its step ``step``)."""
    root = os.fspath(directory) if step is None else _step_dir(os.fspath(directory), step)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no checkpoint directory {root}")
    total = 0
    for dirpath, _, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def _item_handlers() -> dict[str, Any]:
    handlers = {name: ocp.StandardCheckpointHandler() for name in ARRAY_ITEMS}
    handlers.update({name: ocp.JsonCheckpointHandler() for name in JSON_ITEMS + (MANIFEST,)})
    return handlers


def _wrap(e: Exception, what: str) -> CheckpointError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return CheckpointError(f"{what}: {type(e).__name__}: {msg[:500]} (checkpoint truncated or corrupted?)")


# --------------------------------------------------------------------------------- the checkpointer
class SparseCheckpointer:
    """Thin wrapper around ``orbax.checkpoint.CheckpointManager`` for jaxprune states.

    Args:
      directory: root directory; steps are sub-directories.
      max_to_keep: keep only the newest ``max_to_keep`` steps (orbax deletes older
        ones after a save); ``None`` keeps all.
      async_: save in a background thread (orbax async checkpointing); call
        :meth:`wait` (or :meth:`close`) before reading the checkpoint.
      compact: store masked weights as kept values + packed masks.
      checksums: record a CRC-32 per stored array (checked on restore).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> with SparseCheckpointer(tempfile.mkdtemp(), async_=True) as ckpt:
      ...     ckpt.save(5, params={'w': jnp.ones(3)}, data_state={'step': 5})
      ...     ckpt.wait()
      ...     ckpt.latest_step(), ckpt.restore().data_state
      (5, {'step': 5})
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None, async_: bool = True,
                 compact: bool = True, checksums: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.compact = compact
        self.checksums = checksums
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_,
                                               create=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=_item_handlers())
        self._pending_backup: str | None = None

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "SparseCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self.wait()
        self._mngr.close()

    def wait(self) -> None:
        """Blocks until an async save is committed."""
        self._mngr.wait_until_finished()
        if self._pending_backup is not None:
            shutil.rmtree(self._pending_backup, ignore_errors=True)
            self._pending_backup = None

    # -- steps -------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        return checkpoint_steps(self.directory)

    def latest_step(self) -> int | None:
        """The newest committed step (incomplete saves are ignored), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save --------------------------------------------------------------------------------------
    def save(self, step: int, *, params: PyTree = None, masks: PyTree = None, opt_state: PyTree = None,
             shrunk_params: PyTree = None, plan: Any = None, model_config: Any = None,
             data_state: Mapping[str, Any] | None = None, compact: bool | None = None, overwrite: bool = False,
             validate: bool = True) -> None:
        """Saves the given items as step ``step`` (see :func:`save_checkpoint` for the arguments).

        Everything is validated before anything is written. A step that already
        exists (complete or not) is refused unless ``overwrite=True``; the old step
        is then moved aside and only deleted once the new one is committed.
        """
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
            raise ValueError("save: nothing to save (give params, masks, opt_state, shrunk_params, plan, "
                             "model_config or data_state)")
        plan_d = _json_dict(plan, "plan")
        config_d = _model_config_dict(model_config)
        if data_state is not None and not isinstance(data_state, Mapping):
            raise TypeError(f"data_state must be a dict (epoch, step, seed, ...), got {type(data_state).__name__}")
        data_d = _json_dict(data_state, "data_state")

        if validate:
            if plan_d is not None and (params is not None or shrunk_params is not None):
                check_plan_shapes(plan_d, None if params is None else _shapes(params),
                                  None if shrunk_params is None else _shapes(shrunk_params))
            if config_d is not None:
                target = shrunk_params if shrunk_params is not None else params
                if target is not None:
                    check_model_config(config_d, _shapes(target),
                                       "shrunk_params" if shrunk_params is not None else "params")

        manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "step": step, "items": {},
                                    "mask_layout": "np.packbits(mask.reshape(-1), bitorder='little'), C order",
                                    "json_items": []}
        args: dict[str, Any] = {}
        for name in ARRAY_ITEMS:
            tree = given[name]
            if tree is None:
                continue
            stored, entries = _encode(tree, name, masks=masks if (name == "params" and compact) else None,
                                      checksums=self.checksums)
            manifest["items"][name] = entries
            args[name] = ocp.args.StandardSave(stored)
        for name, value in (("plan", plan_d), ("model_config", config_d), ("data_state", data_d)):
            if value is not None:
                manifest["json_items"].append(name)
                args[name] = ocp.args.JsonSave(value)
        args[MANIFEST] = ocp.args.JsonSave(manifest)

        self.wait()  # one save at a time; finishes a pending overwrite
        step_path = _step_dir(self.directory, step)
        backup = None
        if os.path.exists(step_path):
            if not overwrite:
                state = "a complete" if step in self.all_steps() else "an incomplete"
                raise CheckpointError(f"{step_path} already holds {state} checkpoint of step {step}; refusing to "
                                      "overwrite it (pass overwrite=True to replace it)")
            backup = step_path + _BACKUP_SUFFIX
            if os.path.exists(backup):
                raise CheckpointError(f"{backup} exists (left by an interrupted overwrite); move it away first")
            os.rename(step_path, backup)
            self._mngr.reload()
        try:
            saved = self._mngr.save(step, args=ocp.args.Composite(**args), force=True)
            if not saved:
                raise CheckpointError(f"orbax refused to save step {step} in {self.directory}")
            if backup is not None:
                self._mngr.wait_until_finished()
        except BaseException:
            if backup is not None and not os.path.exists(step_path):
                os.rename(backup, step_path)
                self._mngr.reload()
            raise
        self._pending_backup = backup
        if backup is not None:
            self.wait()

    # -- restore -----------------------------------------------------------------------------------
    def restore(self, step: int | None = None, *, template: Checkpoint | Mapping[str, Any] | None = None,
                items: Sequence[str] | None = None, verify: bool = True) -> Checkpoint:
        """Restores step ``step`` (default: the latest committed one); see :func:`restore_checkpoint`."""
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no complete checkpoint in {self.directory} "
                                      f"(incomplete steps: {checkpoint_steps(self.directory, committed=False)})")
        step_path = _step_dir(self.directory, step)
        if step not in self.all_steps():
            if os.path.isdir(step_path):
                raise CheckpointError(f"checkpoint step {step} in {self.directory} is incomplete (no "
                                      f"{COMMIT_MARKER}: its save did not finish); complete steps: {self.all_steps()}")
            raise CheckpointError(f"no checkpoint step {step} in {self.directory}; complete steps: {self.all_steps()}")
        templates = _template_fields(template)
        manifest = self._restore_json(step, MANIFEST, "manifest")
        if not isinstance(manifest, Mapping) or manifest.get("format") != FORMAT:
            raise CheckpointError(f"step {step}: {MANIFEST} is not a jaxprune manifest (checkpoint corrupted, "
                                  "or not written by jaxprune)")
        if manifest.get("version", 0) > VERSION:
            raise CheckpointError(f"step {step}: written by format version {manifest['version']}, this jaxprune "
                                  f"reads up to {VERSION}")
        stored_items = list(manifest["items"]) + list(manifest["json_items"])
        wanted = stored_items if items is None else list(items)
        for name in wanted:
            if name not in ARRAY_ITEMS + JSON_ITEMS:
                raise ValueError(f"unknown item {name!r}; items are {ARRAY_ITEMS + JSON_ITEMS}")
        for name in wanted:
            if name not in stored_items:
                raise CheckpointError(f"step {step} has no item {name!r}; it holds {stored_items}")
            if not os.path.isdir(os.path.join(step_path, name)):
                raise CheckpointError(f"step {step}: item {name!r} is listed in the manifest but its directory "
                                      f"is missing from {step_path} (checkpoint truncated)")
        out = Checkpoint(step=step, manifest=dict(manifest))
        mask_at: dict[str, Any] = {}
        if "masks" in manifest["items"] and ("masks" in wanted or (
                "params" in wanted and any(e["enc"] == "compact" for e in manifest["items"]["params"].values()))):
            masks_template = templates.get("masks")
            if masks_template is None and templates.get("params") is not None:
                masks_template = _masks_like(templates["params"], manifest["items"]["masks"])
            masks = self._restore_array(step, "masks", manifest["items"]["masks"], masks_template, {}, verify)
            mask_at = {_canon(p, manifest["items"]["masks"]): m for p, m in tree_lib.leaves_with_paths(masks)}
            if "masks" in wanted:
                out.masks = masks
        for name in ("params", "opt_state", "shrunk_params"):
            if name in wanted:
                setattr(out, name, self._restore_array(step, name, manifest["items"][name], templates.get(name),
                                                       mask_at, verify))
        for name in JSON_ITEMS:
            if name in wanted:
                setattr(out, name, self._restore_json(step, name, name))
        if verify and out.plan is not None:
            check_plan_shapes(out.plan, _entry_shapes(manifest["items"]["params"]) if "params" in manifest["items"]
                              else None,
                              _entry_shapes(manifest["items"]["shrunk_params"]) if "shrunk_params" in
                              manifest["items"] else None)
        return out

    def _restore_json(self, step: int, name: str, what: str) -> Any:
        try:
            res = self._mngr.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
        except Exception as e:  # noqa: BLE001 - orbax/json raise many types; name the item
            raise _wrap(e, f"step {step}: cannot read {what}") from e
        return res[name]

    def _restore_array(self, step: int, name: str, entries: dict, template: PyTree, mask_at: Mapping[str, Any],
                       verify: bool) -> PyTree:
        if template is not None:
            target = _abstract_for(name, template, entries)
        else:
            try:
                meta = self._mngr.item_metadata(step)[name]
            except Exception as e:  # noqa: BLE001
                raise _wrap(e, f"step {step}: cannot read the metadata of item {name!r}") from e
            target = _abstract_from_metadata(getattr(meta, "tree", meta))
        try:
            res = self._mngr.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(target)}))
        except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many types; name the item
            raise _wrap(e, f"step {step}: cannot read item {name!r}") from e
        stored = res[name]
        canon = lambda p: _canon(p, entries)  # noqa: E731
        found = {canon(p) for p, _ in tree_lib.leaves_with_paths(stored)}
        if found != set(entries):
            raise CheckpointError(f"step {step} item {name!r}: stored leaves differ from the manifest: missing "
                                  f"{sorted(set(entries) - found)[:10]}, unexpected {sorted(found - set(entries))[:10]}"
                                  " (checkpoint corrupted)")
        targets = dict(tree_lib.leaves_with_paths(template)) if template is not None else {}
        return tree_lib.map_with_path(
            lambda p, x: _decode_leaf(name, canon(p), x, entries[canon(p)], mask_at, verify, targets.get(p)), stored)


def _masks_of_opt_state(opt_state: PyTree) -> PyTree:
    from jaxprune._src.sparse_optax import find_sparse_state
    try:
        return find_sparse_state(opt_state).masks
    except ValueError:
        return None
