"""Shared pieces of the command line: models by name, checkpoints in and out, data, output folders.

Everything here is a plain function the subcommands (and tests) call; bad
input raises :class:`CliError`, which :func:`jaxprune.cli.main` prints on
stderr with a non-zero exit status. Validation happens before any output
folder is created, so a refused command writes nothing.

Layout of a run folder written by ``jaxprune prune|finetune``::

  <out>/checkpoint/<step>/   the resulting model (orbax; see jaxprune.save_checkpoint)
  <out>/train_state/<step>/  finetune only: params + optimizer state + position, for resuming
  <out>/summary.json, summary.md

Anywhere a checkpoint is expected, either such a run folder or an orbax
checkpoint root (a folder of step folders) may be given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import tree as tree_lib
from jaxprune._src.checkpoint.api import (
    CheckpointError,
    check_model_config,
    checkpoint_steps,
    restore_checkpoint,
    restore_shrunk_model,
)
from jaxprune._src.types import PyTree

CHECKPOINT = "checkpoint"
TRAIN_STATE = "train_state"


class CliError(Exception):
    """Bad command-line input: printed as ``jaxprune <command>: error: <message>``, exit status 2."""


# ------------------------------------------------------------------------------------------ models by name
def _model_table() -> dict[str, Callable[..., Any]]:
    from jaxprune import models

    return {
        "small_cnn": models.SmallCNN,
        "mlp": models.MLP,
        "mobilenet_block_net": models.MobileNetBlockNet,
        "concat_net": models.ConcatNet,
        "cifar_resnet20": models.cifar_resnet20,
        "cifar_resnet32": models.cifar_resnet32,
        "cifar_resnet56": models.cifar_resnet56,
        "cifar_resnet34": models.cifar_resnet34,
        "resnet18": models.resnet18,
        "resnet34": models.resnet34,
        "resnet50": models.resnet50,
        "vit_tiny_test": models.vit_tiny_test,
        "vit_ti16": models.vit_ti16,
        "vit_s16": models.vit_s16,
        "vit_b16": models.vit_b16,
    }


MODEL_NAMES = (
    "small_cnn",
    "mlp",
    "mobilenet_block_net",
    "concat_net",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet34",
    "resnet18",
    "resnet34",
    "resnet50",
    "vit_tiny_test",
    "vit_ti16",
    "vit_s16",
    "vit_b16",
)


def build_model(name: str, num_classes: int, image_size: int | None = None, **kwargs: Any):
    """A registered ``jaxprune.models`` image classifier by its command-line name (see ``MODEL_NAMES``).

    >>> build_model("small_cnn", 10, 16).image_size
    16
    """
    table = _model_table()
    if name not in table:
        raise CliError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    kw = dict(kwargs, num_classes=num_classes)
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise CliError(f"--image-size expects an int >= 1, got {image_size!r}")
        kw["image_size"] = int(image_size)
    try:
        model = table[name](**kw)
    except (TypeError, ValueError) as e:
        raise CliError(f"cannot build model {name!r} with {kw}: {e}") from None
    check_model_args(model, kwargs)
    return model


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a (simple) type annotation; unknown annotations accept anything."""
    import collections.abc
    import types
    import typing

    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args)))
    if origin in (list, collections.abc.Sequence):
        return (
            isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
            if args
            else isinstance(value, (list, tuple))
        )
    return True


def check_model_args(model: Any, kwargs: dict) -> None:
    """Raises :class:`CliError` naming a ``--model-arg`` whose value does not fit the model's field type.

    Ints must be >= 0; lists stand for tuples. Fields with annotations other than
    plain types, tuples, sequences and unions are not checked.
    """
    import typing

    try:
        hints = typing.get_type_hints(type(model))
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
        return
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is not None and not _fits(value, hint):
            what = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
            what = what or str(hint).replace("typing.", "")
            raise CliError(
                f"model argument {key!r} of {type(model).__name__} expects {what} "
                f"(ints >= 0; a JSON list for a tuple), got {value!r}"
            )


def apply_fn(model) -> Callable[[PyTree, jax.Array], jax.Array]:
    """``(variables, images) -> logits`` in eval mode."""
    return lambda v, x: model.apply(v, x, train=False)


def input_size(model) -> int:
    """Image side length the model expects (from ``model.example_input``)."""
    return int(model.example_input(1).shape[1])


# ------------------------------------------------------------------------------------------ loaded models
@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: ``kind`` is ``'dense'``, ``'sparse'`` (masks) or ``'shrunk'`` (structured)."""

    model: Any
    variables: PyTree  # Linen variables {'params': ..., 'batch_stats': ...}
    kind: str
    source: str
    masks: PyTree = None  # like variables, None at unpruned leaves (sparse only)
    plan: Any = None  # PrunePlan (shrunk only, if saved)
    step: int | None = None

    @property
    def model_config(self) -> dict:
        from jaxprune import models

        return models.get_config(self.model)


def _as_variables(tree: PyTree) -> PyTree:
    if isinstance(tree, dict) and "params" in tree:
        return tree
    return {"params": tree}


def resolve_checkpoint(path: str) -> str:
    """The orbax checkpoint root behind ``path`` (a run folder with ``checkpoint/``, or a root itself)."""
    if not os.path.exists(path):
        raise CliError(f"checkpoint {path!r} does not exist")
    for candidate in (path, os.path.join(path, CHECKPOINT)):
        if checkpoint_steps(candidate):
            return candidate
    raise CliError(
        f"{path!r} holds no complete checkpoint (expected an orbax checkpoint folder with step "
        f"folders, or a jaxprune run folder with a '{CHECKPOINT}/' inside)"
    )


def load_checkpoint_model(path: str, model_name: str | None = None) -> LoadedModel:
    """Loads a dense, sparse or shrunk checkpoint and the model it belongs to.

    The model comes from the checkpoint's ``model_config``; for checkpoints without
    one (e.g. converted weights), ``model_name`` names a registered model whose
    layer widths are then read from the params' shapes (``jaxprune.models.rebuild``).
    """
    from jaxprune import models

    root = resolve_checkpoint(path)
    try:
        head = restore_checkpoint(root, items=[])
        assert head.manifest is not None  # restore_checkpoint always sets it
        items = set(head.manifest["items"]) | set(head.manifest["json_items"])
        if "shrunk_params" in items and "model_config" in items:
            model, variables, plan = restore_shrunk_model(root, head.step)
            return LoadedModel(model, _as_variables(variables), "shrunk", root, plan=plan, step=head.step)
        if "params" not in items:
            raise CliError(f"checkpoint {root!r} (step {head.step}) holds no params (it holds {sorted(items)})")
        wanted = ["params"] + [i for i in ("masks", "model_config") if i in items]
        ckpt = restore_checkpoint(root, head.step, items=wanted)
    except CheckpointError as e:
        raise CliError(f"cannot read checkpoint {root!r}: {e}") from None
    variables = _as_variables(ckpt.params)
    masks = None
    if ckpt.masks is not None:
        bare = not (isinstance(ckpt.params, dict) and "params" in ckpt.params)
        masks = _fill_masks(variables, {"params": ckpt.masks} if bare else ckpt.masks)
    if ckpt.model_config is not None:
        shapes = {p: tuple(np.shape(x)) for p, x in tree_lib.leaves_with_paths(variables)}
        try:
            model = check_model_config(ckpt.model_config, shapes, "params")
        except CheckpointError as e:
            raise CliError(f"checkpoint {root!r}: {e}") from None
    elif model_name is not None:
        probe = build_model(model_name, 10)
        try:
            model = models.rebuild(probe, variables)
        except (ValueError, TypeError) as e:
            raise CliError(f"checkpoint {root!r} does not fit model {model_name!r}: {e}") from None
    else:
        raise CliError(
            f"checkpoint {root!r} has no model_config (it was saved without "
            f"model_config=); pass --model NAME to say which model the weights belong to "
            f"(one of {', '.join(MODEL_NAMES)})"
        )
    kind = "sparse" if masks is not None else "dense"
    return LoadedModel(model, variables, kind, root, masks=masks, step=ckpt.step)


def _fill_masks(variables: PyTree, masks: PyTree) -> PyTree:
    """Masks in the exact structure of ``variables`` (``None`` where the checkpoint has no mask)."""
    at = {p: m for p, m in tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none) if m is not None}
    return tree_lib.map_with_path(lambda p, x: None if p not in at else jnp.asarray(at[p], bool), variables)


def init_model(
    name: str, num_classes: int, image_size: int | None, seed: int = 0, model_args: dict | None = None
) -> LoadedModel:
    """A freshly initialised registered model (a dense starting point, no checkpoint needed)."""
    model = build_model(name, num_classes, image_size, **(model_args or {}))
    try:
        variables = model.init(jax.random.key(seed), model.example_input(1), train=False)
    except Exception as e:  # noqa: BLE001 - any failure is a bad model argument
        raise CliError(f"cannot initialise model {name!r}: {type(e).__name__}: {e}") from None
    return LoadedModel(model, dict(variables), "dense", f"init:{name}", step=0)


def save_model(
    directory: str, step: int, loaded: LoadedModel, data_state: dict | None = None, overwrite: bool = False
) -> None:
    """Writes ``loaded`` as one checkpoint step (params+masks, or shrunk params+plan) with its model config."""
    from jaxprune._src.checkpoint.api import SparseCheckpointer

    with SparseCheckpointer(directory, max_to_keep=1, async_=False) as ckpt:
        if loaded.kind == "shrunk":
            ckpt.save(
                step,
                shrunk_params=loaded.variables,
                plan=loaded.plan,
                model_config=loaded.model,
                data_state=data_state,
                overwrite=overwrite,
            )
        else:
            ckpt.save(
                step,
                params=loaded.variables,
                masks=loaded.masks,
                model_config=loaded.model,
                data_state=data_state,
                overwrite=overwrite,
            )


# ------------------------------------------------------------------------------------------ data
def load_data(name: str, split: str, image_size: int, *, data_dir: str | None = None, max_examples: int | None = None):
    """``jaxprune.data.load_dataset`` with errors turned into :class:`CliError`."""
    from jaxprune._src.data import load_dataset

    try:
        return load_dataset(name, split, image_size=image_size, data_dir=data_dir, max_examples=max_examples)
    except (ValueError, RuntimeError) as e:
        raise CliError(f"dataset {name!r} split {split!r}: {e}") from None


def check_dataset_name(name: str, data_dir: str | None = None) -> None:
    """Fails fast (before any work) on a dataset name that is neither offline nor in tensorflow-datasets."""
    from jaxprune._src.data import get_builder

    try:
        get_builder(name, data_dir)
    except (ValueError, RuntimeError) as e:
        raise CliError(str(e)) from None


def check_classes(loaded: LoadedModel, num_classes: int, dataset: str) -> None:
    out = jax.eval_shape(apply_fn(loaded.model), loaded.variables, loaded.model.example_input(1))
    if out.shape[-1] != num_classes:
        raise CliError(f"the model has {out.shape[-1]} outputs but dataset {dataset!r} has {num_classes} classes")


# ------------------------------------------------------------------------------------------ stats
def model_stats(loaded: LoadedModel) -> dict:
    """XLA FLOPs of one forward pass (batch 1), parameter count/bytes, zeros among prunable weights."""
    from jaxprune._src.flops import flops, param_bytes, param_count

    params = loaded.variables["params"]
    if loaded.masks is not None:
        pm = loaded.masks["params"]
        total = sum(int(np.size(m)) for m in jax.tree.leaves(pm))
        zeros = sum(
            int(np.sum(np.asarray(w) == 0))
            for w, m in zip(*(jax.tree.leaves(t, is_leaf=tree_lib.is_none) for t in (params, pm)))
            if m is not None
        )
    else:
        kern = [
            np.asarray(x)
            for x in jax.tree.leaves(
                tree_lib.map_with_path(lambda p, x, ok: x if ok else None, params, tree_lib.prunable_tree(params))
            )
        ]
        total, zeros = sum(k.size for k in kern), sum(int(np.sum(k == 0)) for k in kern)
    n = param_count(params)
    return {
        "flops": flops(apply_fn(loaded.model), loaded.variables, loaded.model.example_input(1)),
        "params": n,
        "nonzero_params": n - zeros,
        "param_bytes": param_bytes(params),
        "sparsity": zeros / total if total else 0.0,
    }


# ------------------------------------------------------------------------------------------ output folders
def holds_checkpoint(out: str) -> bool:
    return any(
        checkpoint_steps(d, committed=False)
        for d in (out, os.path.join(out, CHECKPOINT), os.path.join(out, TRAIN_STATE))
    )


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuses an output folder that already holds a checkpoint (unless ``overwrite``)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out {out!r} exists and is not a folder")
    if holds_checkpoint(out) and not overwrite:
        raise CliError(
            f"--out {out!r} already holds a checkpoint; pass --overwrite to replace it, or choose another folder"
        )


def prepare_out_dir(out: str, overwrite: bool) -> None:
    """Creates ``out``; with ``overwrite``, removes the checkpoints a previous run left there."""
    check_out_dir(out, overwrite)
    if overwrite:
        for sub in (CHECKPOINT, TRAIN_STATE):
            shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)


def write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_count(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"
