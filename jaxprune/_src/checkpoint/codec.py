"""What a jaxprune checkpoint step holds and how its leaves are stored, decoded and checked.

The format half of :mod:`jaxprune._src.checkpoint` (no orbax calls here): item
names and manifest constants, the :class:`Checkpoint` record, per-leaf encoding
and decoding, restore targets built from a template or from orbax metadata, and
the checks of plan and model-config metadata against leaf shapes.

Every leaf of an array item is recorded in the manifest with an encoding:
``dense`` (the array as is, sharding kept), ``compact`` (kept values of a masked
weight; needs the ``masks`` item), ``bits`` (a bool array, packed) or ``key``
(a typed PRNG key as ``jax.random.key_data`` + its implementation name).
Manifest entries also hold the logical shape/dtype, the stored shape/dtype and
a CRC-32 of the stored array; empty arrays are stored as a 1-byte placeholder.
Since format version 2 the manifest records a SHA-256 of its own content
(``sha256``: dtypes, shapes, encodings, layout, CRCs) and of every JSON item
(``json_sha256``), checked on restore, so hand edits are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.checkpoint import sparse_format as sf
from jaxprune._src.sharding import is_multiprocess_array, put_global
from jaxprune._src.types import PyTree

FORMAT = "jaxprune.checkpoint"
VERSION = 2  # 2: manifest and JSON items carry SHA-256 digests (version 1 is still read)
MANIFEST = "jaxprune_manifest"
ARRAY_ITEMS = ("masks", "params", "opt_state", "shrunk_params")  # masks first: compact params need them
JSON_ITEMS = ("plan", "model_config", "data_state")
COMMIT_MARKER = "commit_success.txt"


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


def json_digest(value: Any) -> str:
    """SHA-256 (hex) of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a manifest's content without its own ``sha256`` field."""
    return json_digest({k: v for k, v in manifest.items() if k != "sha256"})


def _same_dtype(a: Any, b: Any) -> bool:
    try:
        return jnp.dtype(a) == jnp.dtype(b)
    except TypeError:
        return str(a) == str(b)


# --------------------------------------------------------------------------------- encoding
def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _crc(x: Any) -> int | None:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return sf.crc32(x)


def _compact(path: str, x: Any, m: Any) -> Any:
    """Kept values of ``x`` under ``m`` (None if lossy); on device for multi-process global arrays."""
    if is_multiprocess_array(x) or is_multiprocess_array(m):
        return sf.compact_leaf_global(path, x, m, strict=False)
    return sf.compact_leaf(path, x, m, strict=False)


def encode_tree(tree: PyTree, item: str, masks: PyTree = None, checksums: bool = True) -> tuple[PyTree, dict]:
    """Storable tree + manifest entries ``{path: {...}}`` (see the module docstring)."""
    mask_at = (
        {p: m for p, m in tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none)} if masks is not None else {}
    )
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
        elif m is not None and (stored := _compact(f"{item}/{path}", x, m)) is not None:
            entry.update(enc="compact", dtype=str(np.dtype(x.dtype)), nnz=int(stored.size))
        elif x.dtype == np.bool_:
            stored = sf.pack_mask_global(x) if is_multiprocess_array(x) else sf.pack_mask(x)
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


def decode_leaf(
    item: str, path: str, stored: Any, entry: dict, mask_at: Mapping[str, Any], verify: bool, target: Any = None
) -> Any:
    where = f"item {item!r} leaf {path!r}"
    if entry.get("empty"):
        stored = np.zeros(tuple(entry["stored_shape"]), np.dtype(entry["stored_dtype"]))
    if tuple(np.shape(stored)) != tuple(entry["stored_shape"]):
        raise CheckpointError(
            f"{where}: stored array has shape {tuple(np.shape(stored))}, the manifest says "
            f"{tuple(entry['stored_shape'])} (checkpoint corrupted)"
        )
    if hasattr(stored, "dtype") and not entry.get("empty") and not _same_dtype(stored.dtype, entry["stored_dtype"]):
        raise CheckpointError(
            f"{where}: stored array has dtype {stored.dtype}, the manifest says "
            f"{entry['stored_dtype']} (checkpoint corrupted or edited)"
        )
    if verify and entry.get("crc32") is not None:
        got = _crc(stored)
        if got is not None and got != entry["crc32"]:
            raise CheckpointError(
                f"{where}: data fails its CRC-32 check (stored {entry['crc32']}, read {got}); "
                "the checkpoint file is corrupted"
            )
    enc = entry["enc"]
    shape = tuple(entry["shape"])
    if enc == "dense":
        out = stored
    elif enc == "bits":
        out = jnp.asarray(sf.unpack_mask(np.asarray(stored), shape))
    elif enc == "compact":
        m = mask_at.get(path)
        if m is None:
            raise CheckpointError(
                f"{where} is stored compactly but the checkpoint has no mask for it "
                "(the 'masks' item is missing or incomplete)"
            )
        try:
            out = jnp.asarray(sf.scatter_values(np.asarray(stored), sf.host_copy(m), np.dtype(entry["dtype"])))
        except ValueError as e:
            raise CheckpointError(f"{where}: {e} (checkpoint corrupted)") from None
    elif enc == "key":
        out = jax.random.wrap_key_data(jnp.asarray(stored), impl=entry["impl"])
    else:
        raise CheckpointError(f"{where}: unknown encoding {enc!r} (written by a newer jaxprune?)")
    if target is not None:
        if enc != "key" and hasattr(target, "dtype") and not _same_dtype(out.dtype, target.dtype):
            raise CheckpointError(
                f"{where}: the checkpoint stores dtype {out.dtype}, the template expects "
                f"{target.dtype}; refusing to cast (restore without a template and cast explicitly)"
            )
        sharding = getattr(target, "sharding", None)
        if sharding is not None and enc != "dense":
            out = put_global(out, sharding)  # also onto a mesh spanning several processes
    return out


def _check_template(item: str, template: PyTree, entries: Mapping[str, dict]) -> list[tuple[str, Any]]:
    leaves = tree_lib.leaves_with_paths(template)
    have = [p for p, _ in leaves]
    missing = sorted(set(entries) - set(have))
    extra = sorted(set(have) - set(entries))
    if missing or extra:
        raise CheckpointError(
            f"item {item!r}: the template does not have the checkpoint's structure: leaves in the checkpoint "
            f"but not in the template {missing[:10]}, in the template but not in the checkpoint {extra[:10]}"
        )
    for path, leaf in leaves:
        want = tuple(np.shape(leaf))
        got = tuple(entries[path]["shape"])
        if want != got:
            hint = ""
            if int(np.prod(got)) < int(np.prod(want)):
                hint = " (is this a shrunk checkpoint restored into a dense template?)"
            raise CheckpointError(
                f"item {item!r} leaf {path!r}: the checkpoint holds shape {got}, the template expects {want}{hint}"
            )
        stored_dtype = entries[path].get("dtype")
        if (
            hasattr(leaf, "dtype")
            and stored_dtype not in (None, "key")
            and not _is_key(leaf)
            and not _same_dtype(leaf.dtype, stored_dtype)
        ):
            raise CheckpointError(
                f"item {item!r} leaf {path!r}: the checkpoint stores dtype {stored_dtype}, the "
                f"template expects {np.dtype(leaf.dtype) if not _is_key(leaf) else leaf.dtype}; "
                "refusing to cast (restore without a template and cast explicitly)"
            )
    return leaves


def abstract_for(item: str, template: PyTree, entries: Mapping[str, dict]) -> PyTree:
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


def abstract_from_metadata(meta_tree: PyTree) -> PyTree:
    """Restore target from orbax's stored metadata: every array on this process's first device."""
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    is_meta = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")  # noqa: E731
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=dev) if is_meta(m) else m,
        meta_tree,
        is_leaf=is_meta,
    )


# --------------------------------------------------------------------------------- JSON metadata
def json_dict(value: Any, name: str) -> dict | None:
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
        raise TypeError(f"{name} must be a dict, a JSON string or an object with to_json(), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} is not JSON-serializable: {e}") from None


def model_config_dict(model_config: Any) -> dict | None:
    if model_config is None:
        return None
    try:
        from flax import linen as nn

        if isinstance(model_config, nn.Module):
            from jaxprune import models

            return json_dict(models.get_config(model_config), "model_config")
    except ImportError:  # pragma: no cover
        pass
    return json_dict(model_config, "model_config")


def shapes_of(tree: PyTree) -> dict[str, tuple[int, ...]]:
    return {p: tuple(int(d) for d in np.shape(x)) for p, x in tree_lib.leaves_with_paths(tree)}


def entry_shapes(entries: Mapping[str, dict]) -> dict[str, tuple[int, ...]]:
    return {p: tuple(e["shape"]) for p, e in entries.items()}


def check_plan_shapes(
    plan: Mapping[str, Any], dense: Mapping[str, tuple] | None, shrunk: Mapping[str, tuple] | None
) -> None:
    """Checks dense / shrunk leaf shapes (``{path: shape}``) against a plan dict (``PrunePlan.to_dict()``)."""
    if not isinstance(plan.get("shapes"), Mapping):
        raise CheckpointError(
            f"plan: expected a PrunePlan dict with a 'shapes' entry {{path: [original, new]}}, got keys {sorted(plan)}"
        )
    changed = {p: (tuple(o), tuple(n)) for p, (o, n) in plan["shapes"].items()}
    original = {p: tuple(s) for p, s in plan.get("leaf_shapes", {}).items()} or {p: o for p, (o, _) in changed.items()}
    for name, have, pick in (("params", dense, 0), ("shrunk_params", shrunk, 1)):
        if have is None:
            continue
        want = {p: (changed[p][pick] if p in changed else s) for p, s in original.items()}
        for path, shape in want.items():
            if path not in have:
                raise CheckpointError(
                    f"the plan does not match {name}: the plan names leaf {path!r} "
                    f"(shape {shape}), which {name} lack; {name} leaves: {sorted(have)[:10]}"
                )
            if have[path] != shape:
                raise CheckpointError(
                    f"the plan does not match {name}: leaf {path!r} has shape {have[path]}, the plan expects {shape}"
                )
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
        raise CheckpointError(
            f"wrong model config: {config.get('class')} cannot be initialized: {type(e).__name__}: {e}"
        ) from None
    candidates = [shapes_of(variables)]
    if isinstance(variables, Mapping) and "params" in variables:
        candidates.append(shapes_of(variables["params"]))
    for want in candidates:
        if set(want) == set(shapes):
            for path in want:
                if want[path] != shapes[path]:
                    raise CheckpointError(
                        f"wrong model config: {config.get('class')} built from it has leaf {path!r} of shape "
                        f"{want[path]}, but the checkpoint's {what} hold {shapes[path]}"
                    )
            return model
    want = candidates[-1]
    raise CheckpointError(
        f"wrong model config: the variables of {config.get('class')} do not have the paths of the checkpoint's "
        f"{what}: missing {sorted(set(want) - set(shapes))[:10]}, unexpected {sorted(set(shapes) - set(want))[:10]}"
    )


# --------------------------------------------------------------------------------- restore templates
def canonical_tree(path: str, entries: Mapping[str, Any]) -> str:
    """Without a template, orbax gives back an nnx Variable as ``{'value': array}``: same leaf, path + '/value'."""
    if path not in entries and path.endswith("/value") and path[: -len("/value")] in entries:
        return path[: -len("/value")]
    return path


def masks_like(params_template: PyTree, entries: Mapping[str, dict]) -> PyTree:
    return tree_lib.map_with_path(
        lambda p, x: (
            jax.ShapeDtypeStruct(np.shape(x), np.bool_, sharding=getattr(x, "sharding", None)) if p in entries else None
        ),
        params_template,
    )


def template_fields(template: Checkpoint | Mapping[str, Any] | None) -> dict[str, Any]:
    if template is None:
        return {}
    if isinstance(template, Checkpoint):
        return {k: getattr(template, k) for k in ARRAY_ITEMS}
    if isinstance(template, Mapping) and set(template) <= set(ARRAY_ITEMS):
        return dict(template)
    raise TypeError(
        "template must be a jaxprune Checkpoint or a dict with keys among "
        f"{ARRAY_ITEMS}, got {type(template).__name__}"
        + (f" with keys {sorted(template)}" if isinstance(template, Mapping) else "")
    )
