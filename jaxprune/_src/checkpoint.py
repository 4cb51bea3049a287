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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxprune._src import sparse_format as sf
from jaxprune._src import tree as tree_lib

PyTree = Any

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

FORMAT = "jaxprune.checkpoint"
VERSION = 1
MANIFEST = "jaxprune_manifest"
ARRAY_ITEMS = ("masks", "params", "opt_state", "shrunk_params")  # masks first: compact params need them
JSON_ITEMS = ("plan", "model_config", "data_state")
COMMIT_MARKER = "commit_success.txt"
_BACKUP_SUFFIX = ".jaxprune-replaced"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not match what it is restored into."""


@dataclasses.dataclass
class Checkpoint:
    """Contents of one checkpoint step (fields not saved are ``None``).

    Also used as a restore ``template``: give the fields you want restored into a
    given structure (arrays or ``jax.ShapeDtypeStruct``, with shardings).
    """

    step: int | None = None
    params: PyTree = None
    masks: PyTree = None
    opt_state: PyTree = None
    shrunk_params: PyTree = None
    plan: dict | None = None
    model_config: dict | None = None
    data_state: dict | None = None
    manifest: dict | None = None


# --------------------------------------------------------------------------------- encoding
def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _crc(x: Any) -> int | None:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return sf.crc32(x)


def _encode(tree: PyTree, item: str, masks: PyTree = None, checksums: bool = True) -> tuple[PyTree, dict]:
    """Storable tree + manifest entries ``{path: {...}}`` (see the module docstring)."""
    mask_at = {p: m for p, m in tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none)} if masks is not None \
        else {}
    entries: dict[str, dict] = {}

    def enc(path, x):
        if path in entries:
            raise ValueError(f"{item}: two leaves share the path {path!r}; checkpoints address leaves by path")
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        entry = {"shape": [int(d) for d in x.shape]}
        m = mask_at.get(path)
        if _is_key(x):
            stored = np.asarray(jax.random.key_data(x))
            entry.update(enc="key", dtype="key", impl=str(jax.random.key_impl(x)))
        elif m is not None and (stored := sf.compact_leaf(f"{item}/{path}", x, m, strict=False)) is not None:
            entry.update(enc="compact", dtype=str(np.dtype(x.dtype)), nnz=int(stored.size))
        elif x.dtype == np.bool_:
            stored = sf.pack_mask(x)
            entry.update(enc="bits", dtype="bool")
        else:
            stored = x
            entry.update(enc="dense", dtype=str(np.dtype(x.dtype)))
            if m is not None:
                entry["note"] = "stored dense: pruned coordinates hold non-zero values"
        entry["stored_shape"] = [int(d) for d in stored.shape]
        entry["stored_dtype"] = str(np.dtype(stored.dtype))
        entry["crc32"] = _crc(stored) if checksums else None
        entries[path] = entry
        if stored.size == 0:  # orbax cannot save empty arrays: a 1-byte placeholder, rebuilt from the manifest
            entry["empty"] = True
            return np.zeros((1,), np.uint8)
        return stored

    return tree_lib.map_with_path(enc, tree), entries


def _decode_leaf(item: str, path: str, stored: Any, entry: dict, mask_at: Mapping[str, Any], verify: bool,
                 target: Any = None) -> Any:
    where = f"item {item!r} leaf {path!r}"
    if entry.get("empty"):
        stored = np.zeros(tuple(entry["stored_shape"]), np.dtype(entry["stored_dtype"]))
    if tuple(np.shape(stored)) != tuple(entry["stored_shape"]):
        raise CheckpointError(f"{where}: stored array has shape {tuple(np.shape(stored))}, the manifest says "
                              f"{tuple(entry['stored_shape'])} (checkpoint corrupted)")
    if verify and entry.get("crc32") is not None:
        got = _crc(stored)
        if got is not None and got != entry["crc32"]:
            raise CheckpointError(f"{where}: data fails its CRC-32 check (stored {entry['crc32']}, read {got}); "
                                  "the checkpoint file is corrupted")
    enc = entry["enc"]
    shape = tuple(entry["shape"])
    if enc == "dense":
        out = stored
    elif enc == "bits":
        out = jnp.asarray(sf.unpack_mask(np.asarray(stored), shape))
    elif enc == "compact":
        m = mask_at.get(path)
        if m is None:
            raise CheckpointError(f"{where} is stored compactly but the checkpoint has no mask for it "
                                  "(the 'masks' item is missing or incomplete)")
        try:
            out = jnp.asarray(sf.scatter_values(np.asarray(stored), np.asarray(m), np.dtype(entry["dtype"])))
        except ValueError as e:
            raise CheckpointError(f"{where}: {e} (checkpoint corrupted)") from None
    elif enc == "key":
        out = jax.random.wrap_key_data(jnp.asarray(stored), impl=entry["impl"])
    else:
        raise CheckpointError(f"{where}: unknown encoding {enc!r} (written by a newer jaxprune?)")
    if target is not None:
        if enc != "key" and hasattr(target, "dtype") and out.dtype != target.dtype:
            out = out.astype(target.dtype)
        sharding = getattr(target, "sharding", None)
        if sharding is not None and enc != "dense":
            out = jax.device_put(out, sharding)
    return out


def _check_template(item: str, template: PyTree, entries: Mapping[str, dict]) -> list[tuple[str, Any]]:
    leaves = tree_lib.leaves_with_paths(template)
    have = [p for p, _ in leaves]
    missing = sorted(set(entries) - set(have))
    extra = sorted(set(have) - set(entries))
    if missing or extra:
        raise CheckpointError(
            f"item {item!r}: the template does not have the checkpoint's structure: leaves in the checkpoint "
            f"but not in the template {missing[:10]}, in the template but not in the checkpoint {extra[:10]}")
    for path, leaf in leaves:
        want = tuple(np.shape(leaf))
        got = tuple(entries[path]["shape"])
        if want != got:
            hint = ""
            if int(np.prod(got)) < int(np.prod(want)):
                hint = " (is this a shrunk checkpoint restored into a dense template?)"
            raise CheckpointError(f"item {item!r} leaf {path!r}: the checkpoint holds shape {got}, "
                                  f"the template expects {want}{hint}")
    return leaves


def _abstract_for(item: str, template: PyTree, entries: Mapping[str, dict]) -> PyTree:
    """Restore target of the *stored* arrays, in the template's structure."""
    _check_template(item, template, entries)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(path, leaf):
        e = entries[path]
        if e.get("empty"):
            return jax.ShapeDtypeStruct((1,), np.uint8, sharding=dev)
        sharding = getattr(leaf, "sharding", None) if e["enc"] == "dense" else None
        return jax.ShapeDtypeStruct(tuple(e["stored_shape"]), np.dtype(e["stored_dtype"]), sharding=sharding or dev)

    return tree_lib.map_with_path(target, template)


def _abstract_from_metadata(meta_tree: PyTree) -> PyTree:
    """Restore target from orbax's stored metadata: every array on this process's first device."""
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    is_meta = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=dev) if is_meta(m) else m,
                        meta_tree, is_leaf=is_meta)


# --------------------------------------------------------------------------------- JSON metadata
def _json_dict(value: Any, name: str) -> dict:
    if value is None:
        return None
    if hasattr(value, "to_dict") and callable(value.to_dict) and not isinstance(value, Mapping):
        value = value.to_dict()
    elif hasattr(value, "to_json") and callable(value.to_json):
        value = value.to_json()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON: {e}") from None
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, a JSON string or an object with to_json(), "
                        f"got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} is not JSON-serializable: {e}") from None


def _model_config_dict(model_config: Any) -> dict | None:
    if model_config is None:
        return None
    try:
        from flax import linen as nn
        if isinstance(model_config, nn.Module):
            from jaxprune import models
            return _json_dict(models.get_config(model_config), "model_config")
    except ImportError:  # pragma: no cover
        pass
    return _json_dict(model_config, "model_config")


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    return {p: tuple(int(d) for d in np.shape(x)) for p, x in tree_lib.leaves_with_paths(tree)}


def _entry_shapes(entries: Mapping[str, dict]) -> dict[str, tuple[int, ...]]:
    return {p: tuple(e["shape"]) for p, e in entries.items()}


def check_plan_shapes(plan: Mapping[str, Any], dense: Mapping[str, tuple] | None,
                      shrunk: Mapping[str, tuple] | None) -> None:
    """Checks dense / shrunk leaf shapes (``{path: shape}``) against a plan dict (``PrunePlan.to_dict()``)."""
    if not isinstance(plan.get("shapes"), Mapping):
        raise CheckpointError("plan: expected a PrunePlan dict with a 'shapes' entry {path: [original, new]}, "
                              f"got keys {sorted(plan)}")
    changed = {p: (tuple(o), tuple(n)) for p, (o, n) in plan["shapes"].items()}
    original = {p: tuple(s) for p, s in plan.get("leaf_shapes", {}).items()} or {p: o for p, (o, _) in changed.items()}
    for name, have, pick in (("params", dense, 0), ("shrunk_params", shrunk, 1)):
        if have is None:
            continue
        want = {p: (changed[p][pick] if p in changed else s) for p, s in original.items()}
        for path, shape in want.items():
            if path not in have:
                raise CheckpointError(f"the plan does not match {name}: the plan names leaf {path!r} "
                                      f"(shape {shape}), which {name} lack; {name} leaves: {sorted(have)[:10]}")
            if have[path] != shape:
                raise CheckpointError(f"the plan does not match {name}: leaf {path!r} has shape {have[path]}, "
                                      f"the plan expects {shape}")
        if plan.get("leaf_shapes"):
            extra = sorted(set(have) - set(original))
            if extra:
                raise CheckpointError(f"the plan does not match {name}: leaves unknown to the plan {extra[:10]}")


def check_model_config(config: Mapping[str, Any], shapes: Mapping[str, tuple], what: str) -> Any:
    """Builds the model of ``config`` and checks that ``shapes`` (``{path: shape}``) are its variables'.

    Returns the model. Raises :class:`CheckpointError` naming the first mismatching leaf.
    """
    try:
        from jaxprune import models
    except ImportError as e:  # pragma: no cover
        raise CheckpointError(f"model_config: jaxprune.models is not importable ({e})") from None
    try:
        model = models.from_config(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"wrong model config: {e}") from None
    try:
        variables = jax.eval_shape(model.init, jax.random.key(0), model.example_input(1))
    except Exception as e:  # noqa: BLE001 - any failure to build the model is a bad config
        raise CheckpointError(f"wrong model config: {config.get('class')} cannot be initialized: "
                              f"{type(e).__name__}: {e}") from None
    candidates = [_shapes(variables)]
    if isinstance(variables, Mapping) and "params" in variables:
        candidates.append(_shapes(variables["params"]))
    for want in candidates:
        if set(want) == set(shapes):
            for path in want:
                if want[path] != shapes[path]:
                    raise CheckpointError(
                        f"wrong model config: {config.get('class')} built from it has leaf {path!r} of shape "
                        f"{want[path]}, but the checkpoint's {what} hold {shapes[path]}")
            return model
    want = candidates[-1]
    raise CheckpointError(
        f"wrong model config: the variables of {config.get('class')} do not have the paths of the checkpoint's "
        f"{what}: missing {sorted(set(want) - set(shapes))[:10]}, unexpected {sorted(set(shapes) - set(want))[:10]}")


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


def _canon(path: str, entries: Mapping[str, Any]) -> str:
    """Without a template, orbax gives back an nnx Variable as ``{'value': array}``: same leaf, path + '/value'."""
    if path not in entries and path.endswith("/value") and path[: -len("/value")] in entries:
        return path[: -len("/value")]
    return path


def _masks_of_opt_state(opt_state: PyTree) -> PyTree:
    from jaxprune._src.sparse_optax import find_sparse_state
    try:
        return find_sparse_state(opt_state).masks
    except ValueError:
        return None


def _masks_like(params_template: PyTree, entries: Mapping[str, dict]) -> PyTree:
    return tree_lib.map_with_path(
        lambda p, x: jax.ShapeDtypeStruct(np.shape(x), np.bool_, sharding=getattr(x, "sharding", None))
        if p in entries else None, params_template)


def _template_fields(template: Checkpoint | Mapping[str, Any] | None) -> dict[str, Any]:
    if template is None:
        return {}
    if isinstance(template, Checkpoint):
        return {k: getattr(template, k) for k in ARRAY_ITEMS}
    if isinstance(template, Mapping) and set(template) <= set(ARRAY_ITEMS):
        return dict(template)
    raise TypeError("template must be a jaxprune Checkpoint or a dict with keys among "
                    f"{ARRAY_ITEMS}, got {type(template).__name__}"
                    + (f" with keys {sorted(template)}" if isinstance(template, Mapping) else ""))


# --------------------------------------------------------------------------------- functional API
def save_checkpoint(directory: str | os.PathLike, step: int, *, params: PyTree = None, masks: PyTree = None,
                    opt_state: PyTree = None, shrunk_params: PyTree = None, plan: Any = None,
                    model_config: Any = None, data_state: Mapping[str, Any] | None = None, compact: bool = True,
                    overwrite: bool = False, validate: bool = True, checksums: bool = True) -> None:
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
        ckpt.save(step, params=params, masks=masks, opt_state=opt_state, shrunk_params=shrunk_params, plan=plan,
                  model_config=model_config, data_state=data_state, overwrite=overwrite, validate=validate)


def restore_checkpoint(directory: str | os.PathLike, step: int | None = None, *,
                       template: Checkpoint | Mapping[str, Any] | None = None, items: Sequence[str] | None = None,
                       verify: bool = True) -> Checkpoint:
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
      verify: check CRC-32s and the plan against the stored shapes.

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
    mngr = SparseCheckpointer.__new__(SparseCheckpointer)
    mngr.directory = os.path.abspath(directory)
    mngr._pending_backup = None
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False,
                                           save_interval_steps=0)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns "Given directory is read only" on every read-only manager
    try:
        mngr._mngr = ocp.CheckpointManager(mngr.directory, options=options, item_handlers=_item_handlers())
    finally:
        absl_logger.setLevel(level)
    try:
        return mngr.restore(step, template=template, items=items, verify=verify)
    finally:
        mngr._mngr.close()


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
    have = list(head.manifest["items"]) + list(head.manifest["json_items"])
    missing = [n for n in ("shrunk_params", "model_config") if n not in have]
    if missing:
        raise CheckpointError(f"step {head.step} in {directory} cannot rebuild a shrunk model: it lacks "
                              f"{missing} (it holds {have})")
    wanted = ["shrunk_params", "model_config"] + (["plan"] if "plan" in have else [])
    ckpt = restore_checkpoint(directory, head.step, items=wanted)
    model = check_model_config(ckpt.model_config, _entry_shapes(ckpt.manifest["items"]["shrunk_params"]),
                               "shrunk_params")
    plan = ckpt.plan
    if plan is not None:
        try:
            from jaxprune._src.structured.plan import PrunePlan
            plan = PrunePlan.from_dict(plan)
        except ImportError:  # pragma: no cover - plan stays a dict
            pass
        except ValueError as e:
            raise CheckpointError(f"step {head.step}: the stored plan is not a PrunePlan: {e}") from None
    return ShrunkModel(model, ckpt.shrunk_params, plan)
