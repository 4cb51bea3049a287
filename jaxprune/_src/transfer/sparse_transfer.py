"""Study B transfer protocols: linear finetuning on frozen features and fixed-mask full finetuning.

Iofinova et al. (CVPR 2022) transfer sparse upstream models two ways; both run
through one data path (:func:`load_transfer_data`) and one evaluation
(:func:`jaxprune._src.train.evaluate` on the test images, top-1):

* **linear** (:func:`linear_finetune`): the backbone's penultimate features are
  extracted ONCE (:func:`extract_features`), cached as arrays, and a new linear
  head is trained on them (SGD + momentum, lr 0.01 by default, cosine decay, one
  jitted ``lax.scan`` per epoch, best-dev epoch kept). The backbone never enters
  the training graph, so it is frozen by construction; the feature function also
  applies ``stop_gradient``. The trained head is written into a copy of the model
  with ``num_classes`` outputs, and that full model is evaluated on raw images.
* **full** (:func:`full_finetune`): every weight trains with the upstream sparsity
  mask fixed (``fit(..., masks=...)``: pruned weights start at 0 and stay exactly 0),
  new head dense. Paper lr 0.001 for long schedules; small-scale default 0.01 (a few
  hundred steps instead of ~150 epochs, see :class:`TransferConfig`).

**Features.** The reference models end with ``mean-pool -> Dense`` named ``head``
(SmallCNN, MLP, ...) or ``fc`` (ResNets). :func:`feature_fn` applies the model
inside ``flax.linen.intercept_methods`` with an interceptor that replaces the
classifier's ``__call__`` by the identity, so the model returns the classifier's
input: the penultimate features, with no change to the model code and no copy of
its forward pass.

Example:
  >>> data = load_transfer_data('digits_offline', TransferConfig(image_size=16))       # doctest: +SKIP
  >>> res = transfer(up.model, up.variables, up.masks, data, 'linear', TransferConfig())  # doctest: +SKIP
  >>> res.test_accuracy                                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jaxprune._src import tree as tree_lib
from jaxprune._src.types import PyTree

__all__ = [
    "TransferConfig",
    "TransferData",
    "TransferResult",
    "PAPER_DATASETS",
    "find_head",
    "feature_fn",
    "extract_features",
    "with_fresh_head",
    "load_transfer_data",
    "train_linear_head",
    "linear_finetune",
    "full_finetune",
    "transfer",
    "MODES",
    "SMALL_DATASETS",
    "resolve_datasets",
    "run_study_b",
    "study_b_tables",
    "write_study_b",
]

#: Small-scale downstream tasks (offline): the real digits plus shapes tasks other than the upstream one.
SMALL_DATASETS = ("digits_offline", "shapes_offline/task_02", "shapes_offline/task_08", "shapes_offline/task_13")

MODES = ("linear", "full")
_HEAD_NAMES = ("head", "fc", "classifier")

#: The paper's 12 downstream datasets -> tfds name (None: not in tensorflow-datasets 4.9).
PAPER_DATASETS: dict[str, str | None] = {
    "aircraft": None,  # FGVC-Aircraft: not in tfds (only community 'fgvc_aircraft' builds)
    "birdsnap": None,  # Birdsnap: not in tfds
    "caltech101": "caltech101",
    "caltech256": None,  # Caltech-256: not in tfds
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "dtd": "dtd",
    "flowers": "oxford_flowers102",
    "food": "food101",
    "pets": "oxford_iiit_pet",
    "cars": "cars196",
    "sun397": "sun397",
}


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Hyper-parameters of both transfer modes (small-scale defaults; paper values in comments).

    linear: ``linear_lr`` 0.01 (paper), ``linear_epochs`` (paper 150), SGD momentum 0.9,
    ``linear_weight_decay``; ``augment`` in linear mode extracts ``augment_views`` augmented
    copies of the train set once (features stay cached).
    full: ``full_lr`` (paper 0.001 for ~150 epochs; 0.01 here for a few hundred steps),
    ``full_steps``, SGDW (momentum 0.9, Nesterov, decay 1e-4), warm-up + cosine, best dev.
    ``head_init``: new head ``'random'`` (lecun-normal), ``'zeros'`` or ``'linear'`` (full
    mode starts from the linear-probe head: LP-FT). ``label_smoothing`` and ``augment``
    (random crop pad 4 + flip) apply to both modes.
    """

    image_size: int = 16
    linear_lr: float = 0.01
    linear_epochs: int = 100
    linear_batch_size: int = 64
    linear_weight_decay: float = 0.0
    full_lr: float = 0.01
    full_steps: int = 300
    full_batch_size: int = 64
    full_weight_decay: float = 1e-4
    full_warmup_steps: int = 20
    head_init: str = "zeros"
    label_smoothing: float = 0.0
    augment: bool = False
    augment_views: int = 2
    max_train_examples: int | None = None
    feature_batch_size: int = 256
    seed: int = 0
    normalize: str = "imagenet"  # 'imagenet' mean/std, or 'lite': EfficientNet-Lite's (x*255 - 127.5) / 128
    max_eval_examples: int | None = None  # cap on the dev and test splits
    full_freeze_batch_stats: bool = False  # full mode: BatchNorm in inference mode (TrainConfig.freeze_batch_stats)

    def __post_init__(self):
        if self.head_init not in ("random", "zeros", "linear"):
            raise ValueError(f"TransferConfig.head_init must be 'random', 'zeros' or 'linear', got {self.head_init!r}")
        if self.normalize not in ("imagenet", "lite"):
            raise ValueError(f"TransferConfig.normalize must be 'imagenet' or 'lite', got {self.normalize!r}")
        for name in ("linear_epochs", "linear_batch_size", "full_steps", "full_batch_size", "augment_views"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TransferConfig.{name} must be a positive int, got {v!r}")


class TransferData(NamedTuple):
    """The three splits of one downstream task (:class:`jaxprune.data.Dataset`)."""

    name: str
    train: Any
    dev: Any
    test: Any

    @property
    def num_classes(self) -> int:
        return int(self.train.num_classes)


@dataclasses.dataclass
class TransferResult:
    """Outcome of one transfer run; ``variables`` is the downstream model (backbone + new head)."""

    mode: str
    dataset: str
    test_accuracy: float
    dev_accuracy: float
    test_top5: float
    seconds: float
    model: Any = None
    variables: PyTree = None
    masks: PyTree = None
    extra: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "dataset": self.dataset,
            "test_accuracy": self.test_accuracy,
            "dev_accuracy": self.dev_accuracy,
            "test_top5": self.test_top5,
            "seconds": self.seconds,
            **self.extra,
        }


# ------------------------------------------------------------------------------------------ model surgery
def find_head(params: PyTree) -> str:
    """Name of the top-level classifier (``'head'``, ``'fc'`` or ``'classifier'``) in ``params``.

    >>> find_head({'conv': {}, 'fc': {'kernel': 0, 'bias': 0}})
    'fc'
    """
    for name in _HEAD_NAMES:
        if name in params and isinstance(params[name], dict) and "kernel" in params[name]:
            return name
    raise ValueError(
        f"no top-level classifier among {_HEAD_NAMES} in params (keys {sorted(params)}); "
        "feature extraction needs the final Dense layer under one of these names"
    )


def feature_fn(model, head: str):
    """``f(variables, images) -> features``: the input of the classifier ``head`` (stop-gradient).

    Runs the model unchanged except that the top-level submodule ``head`` returns its input.
    """

    def interceptor(next_fun, args, kwargs, context):
        if (
            context.method_name == "__call__"
            and context.module.scope is not None
            and tuple(context.module.scope.path) == (head,)
        ):
            return args[0]
        return next_fun(*args, **kwargs)

    def features(variables, images):
        with nn.intercept_methods(interceptor):
            out = model.apply(variables, images, train=False)
        return jax.lax.stop_gradient(out)

    return features


@functools.lru_cache(maxsize=32)
def _jit_features(model, head):
    return jax.jit(feature_fn(model, head))


def extract_features(model, variables: PyTree, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Penultimate features of ``images`` (float32 ``(N, D)``), batched, one compilation."""
    head = find_head(variables["params"])
    try:
        fn = _jit_features(model, head)
    except TypeError:  # unhashable model
        fn = jax.jit(feature_fn(model, head))
    n = len(images)
    bs = min(batch_size, n)
    out = []
    for i in range(0, n, bs):
        x = images[i : i + bs]
        pad = bs - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        out.append(np.asarray(fn(variables, x))[: bs - pad])
    return np.concatenate(out).astype(np.float32)


def with_fresh_head(
    model, variables: PyTree, masks: PyTree, num_classes: int, key: jax.Array, head_init: str = "random"
):
    """``(model, variables, masks)`` with a new dense classifier of ``num_classes`` outputs.

    The model is rebuilt from its config (``jaxprune.models.get_config``) with the new
    ``num_classes``; every other variable is kept; masks get ``None`` at the new head.
    """
    from jaxprune import models

    head = find_head(variables["params"])
    full = models.get_config(model)
    cfg = dict(full.get("config", {}))
    if "num_classes" not in cfg:
        raise ValueError(f"{type(model).__name__} has no num_classes field; cannot give it a new head")
    cfg["num_classes"] = int(num_classes)
    if "widths" in cfg:
        cfg["widths"] = [w for w in cfg["widths"] if w[0] != head]
    new_model = models.from_config(dict(full, config=cfg))
    fresh = jax.eval_shape(new_model.init, key, new_model.example_input(1))["params"][head]
    d = np.shape(variables["params"][head]["kernel"])[0]
    if fresh["kernel"].shape[0] != d:
        raise ValueError(f"new head input width {fresh['kernel'].shape[0]} != backbone feature width {d}")
    if head_init == "random":
        kernel = nn.initializers.lecun_normal()(key, (d, num_classes), jnp.float32)
    else:
        kernel = jnp.zeros((d, num_classes), jnp.float32)
    new_head = {"kernel": np.asarray(kernel), "bias": np.zeros((num_classes,), np.float32)}
    new_vars = dict(variables, params=dict(variables["params"], **{head: new_head}))
    new_masks = None
    if masks is not None:
        new_masks = dict(masks, **{head: {"kernel": None, "bias": None}})
    return new_model, new_vars, new_masks


# ------------------------------------------------------------------------------------------ data
def load_transfer_data(
    name: str, cfg: TransferConfig = TransferConfig(), *, data_dir: str | None = None
) -> TransferData:
    """Train / dev / test of one downstream task, resized to ``cfg.image_size`` (shared by both modes).

    A task without a ``validation`` split gets a deterministic 10% of ``train`` as dev. Missing
    tfds datasets raise the data layer's error (how to prepare them; never downloaded).
    """
    from jaxprune._src.data import Dataset, load_dataset

    norm: Any = ((0.5,) * 3, (128 / 255,) * 3) if cfg.normalize == "lite" else "imagenet"
    kw: dict[str, Any] = dict(image_size=cfg.image_size, data_dir=data_dir, normalize=norm)
    train = load_dataset(name, "train", max_examples=cfg.max_train_examples, **kw)
    try:
        dev = load_dataset(name, "validation", max_examples=cfg.max_eval_examples, **kw)
    except ValueError:
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        k = max(len(train) // 10, 1)
        pick = lambda idx, split: Dataset(
            train.images[idx],
            train.labels[idx],
            train.num_classes,
            name,
            split,  # noqa: E731
            train.mean,
            train.std,
            train.class_names,
        )
        train, dev = pick(np.sort(order[k:]), "train"), pick(np.sort(order[:k]), "validation")
    test = load_dataset(name, "test", max_examples=cfg.max_eval_examples, **kw)
    return TransferData(name, train, dev, test)


# ------------------------------------------------------------------------------------------ linear
@functools.partial(jax.jit, static_argnames=("epochs", "batch_size", "label_smoothing"))
def train_linear_head(
    feats: jax.Array,
    labels: jax.Array,
    dev_feats: jax.Array,
    dev_labels: jax.Array,
    w0: jax.Array,
    b0: jax.Array,
    key: jax.Array,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
):
    """SGD (momentum 0.9, cosine-decayed ``lr``) on cached features; keeps the best-dev epoch.

    Returns ``(w, b, best_dev_accuracy, best_epoch)``; the whole run is one jitted function.

    >>> f = jnp.eye(4); y = jnp.arange(4)
    >>> w, b, acc, _ = train_linear_head(f, y, f, y, jnp.zeros((4, 4)), jnp.zeros(4), jax.random.key(0),
    ...                                  epochs=30, batch_size=4, lr=0.5)
    >>> float(acc)
    1.0
    """
    n, c = feats.shape[0], w0.shape[1]
    bs = min(batch_size, n)
    nb = n // bs
    total = epochs * nb
    sched = optax.cosine_decay_schedule(lr, max(total, 1))
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask={"w": True, "b": False}), optax.sgd(sched, momentum=0.9)
    )

    def loss_fn(p, x, y):
        onehot = optax.smooth_labels(jax.nn.one_hot(y, c), label_smoothing)
        return optax.softmax_cross_entropy(x @ p["w"] + p["b"], onehot).mean()

    def dev_acc(p):
        return jnp.mean(jnp.argmax(dev_feats @ p["w"] + p["b"], -1) == dev_labels)

    def epoch(carry, k):
        p, opt, best_p, best_acc, best_ep, ep = carry
        idx = jax.random.permutation(k, n)[: nb * bs].reshape(nb, bs)

        def step(c2, i):
            p, opt = c2
            g = jax.grad(loss_fn)(p, feats[i], labels[i])
            u, opt = tx.update(g, opt, p)
            return (optax.apply_updates(p, u), opt), None

        (p, opt), _ = jax.lax.scan(step, (p, opt), idx)
        acc = dev_acc(p)
        better = acc > best_acc
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
        return (p, opt, best_p, jnp.where(better, acc, best_acc), jnp.where(better, ep, best_ep), ep + 1), None

    p0 = {"w": w0.astype(jnp.float32), "b": b0.astype(jnp.float32)}
    init = (p0, tx.init(p0), p0, dev_acc(p0), jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32))
    (_, _, best, acc, ep, _), _ = jax.lax.scan(epoch, init, jax.random.split(key, epochs))
    return best["w"], best["b"], acc, ep


def _train_features(model, variables, data: TransferData, cfg: TransferConfig):
    from jaxprune._src.data import augment

    x, y = data.train.images, data.train.labels
    if cfg.augment:  # cached features of a few augmented views (extraction stays one-off)
        views = [x] + [augment(x, [cfg.seed, v], crop_padding=4, flip=True) for v in range(1, cfg.augment_views)]
        x, y = np.concatenate(views), np.tile(y, len(views))
    return extract_features(model, variables, x, batch_size=cfg.feature_batch_size), y


def linear_finetune(
    model, variables: PyTree, data: TransferData, cfg: TransferConfig = TransferConfig(), masks: PyTree = None
) -> TransferResult:
    """Linear finetuning: frozen backbone features (extracted once) + a new linear head.

    The backbone variables of the returned model are the input ones, unchanged.
    """
    from jaxprune._src.train import evaluate

    t0 = time.perf_counter()
    key = jax.random.key(cfg.seed)
    feats, labels = _train_features(model, variables, data, cfg)
    dev_feats = extract_features(model, variables, data.dev.images, batch_size=cfg.feature_batch_size)
    t_feat = time.perf_counter() - t0
    init = "random" if cfg.head_init == "random" else "zeros"
    new_model, new_vars, new_masks = with_fresh_head(model, variables, masks, data.num_classes, key, init)
    head = find_head(new_vars["params"])
    w0, b0 = new_vars["params"][head]["kernel"], new_vars["params"][head]["bias"]
    w, b, dev_acc, ep = train_linear_head(
        jnp.asarray(feats),
        jnp.asarray(labels),
        jnp.asarray(dev_feats),
        jnp.asarray(data.dev.labels),
        w0,
        b0,
        jax.random.fold_in(key, 1),
        epochs=cfg.linear_epochs,
        batch_size=cfg.linear_batch_size,
        lr=cfg.linear_lr,
        weight_decay=cfg.linear_weight_decay,
        label_smoothing=cfg.label_smoothing,
    )
    new_vars = dict(
        new_vars, params=dict(new_vars["params"], **{head: {"kernel": np.asarray(w), "bias": np.asarray(b)}})
    )
    test = evaluate(new_model, new_vars, data.test)
    return TransferResult(
        "linear",
        data.name,
        float(test["accuracy"]),
        float(dev_acc),
        float(test["top5"]),
        time.perf_counter() - t0,
        new_model,
        new_vars,
        new_masks,
        {"best_epoch": int(ep), "feature_seconds": t_feat, "feature_dim": int(feats.shape[1])},
    )


# ------------------------------------------------------------------------------------------ full
def full_finetune(
    model, variables: PyTree, masks: PyTree, data: TransferData, cfg: TransferConfig = TransferConfig()
) -> TransferResult:
    """Full finetuning with the upstream masks fixed (``masks=None``: dense model, no mask)."""
    from jaxprune._src.train import TrainConfig, evaluate, fit

    t0 = time.perf_counter()
    key = jax.random.key(cfg.seed)
    if cfg.head_init == "linear":  # LP-FT: start from the linear probe's head
        lin = linear_finetune(model, variables, data, cfg, masks)
        new_model, new_vars, new_masks = lin.model, lin.variables, lin.masks
    else:
        new_model, new_vars, new_masks = with_fresh_head(model, variables, masks, data.num_classes, key, cfg.head_init)
    if new_masks is not None:
        new_masks = jax.tree.map(
            lambda m: None if m is None else jnp.asarray(m, bool), new_masks, is_leaf=tree_lib.is_none
        )
        if all(bool(jnp.all(m)) for m in jax.tree.leaves(new_masks)):
            new_masks = None  # dense upstream: no fixed mask needed
    tc = TrainConfig(
        steps=cfg.full_steps,
        batch_size=min(cfg.full_batch_size, len(data.train)),
        learning_rate=cfg.full_lr,
        weight_decay=cfg.full_weight_decay,
        warmup_steps=cfg.full_warmup_steps,
        label_smoothing=cfg.label_smoothing,
        eval_every=max(cfg.full_steps // 5, 1),
        augment=cfg.augment,
        seed=cfg.seed,
        freeze_batch_stats=cfg.full_freeze_batch_stats,
    )
    res = fit(
        new_model, new_vars, data.train, tc, eval_ds=data.dev, masks=new_masks, progress=False, desc=f"full/{data.name}"
    )
    assert res.best_accuracy is not None  # fit evaluates eval_ds at least at its last step
    test = evaluate(new_model, res.variables, data.test)
    return TransferResult(
        "full",
        data.name,
        float(test["accuracy"]),
        float(res.best_accuracy),
        float(test["top5"]),
        time.perf_counter() - t0,
        new_model,
        res.variables,
        new_masks,
        {"best_step": int(res.best_step), "steps": int(res.steps_run)},
    )


def transfer(
    model,
    variables: PyTree,
    masks: PyTree,
    data: TransferData | str,
    mode: str,
    cfg: TransferConfig = TransferConfig(),
    *,
    data_dir: str | None = None,
) -> TransferResult:
    """Runs one transfer (``mode`` ``'linear'`` or ``'full'``) of an upstream model to ``data``.

    ``data`` is a :class:`TransferData` or a dataset name (loaded by :func:`load_transfer_data`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(data, str):
        data = load_transfer_data(data, cfg, data_dir=data_dir)
    if mode == "linear":
        return linear_finetune(model, variables, data, cfg, masks)
    return full_finetune(model, variables, masks, data, cfg)


# ------------------------------------------------------------------------------------------ study driver
def resolve_datasets(names, *, data_dir: str | None = None, log=print) -> list[str]:
    """Maps paper names (``PAPER_DATASETS`` keys) to tfds names; drops, with a message, those that are
    not in tfds or not prepared in ``data_dir``. Offline tasks always resolve."""
    from jaxprune._src.data import get_builder, is_offline

    out = []
    for name in names:
        tfds_name = PAPER_DATASETS.get(name, name)
        if tfds_name is None:
            log(f"skipping {name!r}: not available in tensorflow-datasets")
            continue
        if not is_offline(tfds_name):
            try:
                get_builder(tfds_name, data_dir)
            except (ValueError, RuntimeError) as e:
                log(f"skipping {name!r} ({tfds_name}): {str(e).splitlines()[0]}")
                continue
        out.append(tfds_name)
    return out


def run_study_b(
    upstreams, datasets, cfg: TransferConfig = TransferConfig(), *, modes=MODES, data_dir: str | None = None, log=print
) -> dict:
    """Transfers every upstream (:class:`SparseUpstream`-like: ``model, variables, masks, method,
    sparsity, stats``) to every dataset in every mode. Returns ``{'runs': [...], 'config': ...}``."""
    runs = []
    for name in datasets:
        data = load_transfer_data(name, cfg, data_dir=data_dir)
        for up in upstreams:
            for mode in modes:
                r = transfer(up.model, up.variables, up.masks, data, mode, cfg)
                runs.append(
                    {
                        "method": up.method,
                        "sparsity": float(up.sparsity),
                        "upstream_sparsity": float(up.stats.get("sparsity", up.sparsity)),
                        **r.summary(),
                    }
                )
                log(f"{name:>24} {mode:>6} {up.method:>10} s={up.sparsity:.2f}: top-1 {r.test_accuracy:.3f}")
    return {
        "config": dataclasses.asdict(cfg),
        "datasets": list(datasets),
        "runs": runs,
        "backend": jax.default_backend(),
    }


def study_b_tables(result: dict) -> dict[str, dict]:
    """Per mode: ``{'rows': [(method, sparsity)], 'datasets': [...], 'acc': {(m, s): {ds: acc}},
    'mean_delta': {(m, s): mean over datasets of acc - dense acc}}`` (accuracies in %)."""
    tables = {}
    for mode in dict.fromkeys(r["mode"] for r in result["runs"]):
        rs = [r for r in result["runs"] if r["mode"] == mode]
        ds = list(dict.fromkeys(r["dataset"] for r in rs))
        rows = list(dict.fromkeys((r["method"], r["sparsity"]) for r in rs))
        acc: dict[tuple[Any, Any], dict[str, float]] = {row: {} for row in rows}
        for r in rs:
            acc[(r["method"], r["sparsity"])][r["dataset"]] = 100 * r["test_accuracy"]
        dense = next((acc[row] for row in rows if row[0] == "dense"), None)
        delta = {
            row: (
                float(np.mean([acc[row][d] - dense[d] for d in ds if d in acc[row] and d in dense]))
                if dense
                else float("nan")
            )
            for row in rows
        }
        tables[mode] = {"rows": rows, "datasets": ds, "acc": acc, "mean_delta": delta}
    return tables


def _short(name: str) -> str:
    return name.split("/")[-1]


def write_study_b(out_dir: str, result: dict) -> str:
    """Writes ``results.json``, ``results.md`` (the paper's table shape per mode) and ``results.png``;
    returns the Markdown."""
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    tables = study_b_tables(result)
    md = []
    for mode, t in tables.items():
        md.append(f"### {mode} finetuning (test top-1 %)\n")
        md.append(
            "| method | sparsity | " + " | ".join(_short(d) for d in t["datasets"]) + " | mean | mean Δ vs dense |"
        )
        md.append("|---|---|" + "---|" * (len(t["datasets"]) + 2))
        for row in t["rows"]:
            vals = [t["acc"][row].get(d, float("nan")) for d in t["datasets"]]
            md.append(
                f"| {row[0]} | {100 * row[1]:.0f}% | "
                + " | ".join(f"{v:.2f}" for v in vals)
                + f" | {np.nanmean(vals):.2f} | {t['mean_delta'][row]:+.2f} |"
            )
        md.append("")
    text = "\n".join(md)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    try:
        from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend
    except ImportError:  # pragma: no cover
        return text
    fig = Figure(figsize=(5 * len(tables), 4))
    axes = fig.subplots(1, len(tables), squeeze=False)
    for ax, (mode, t) in zip(axes[0], tables.items()):
        for m in dict.fromkeys(r[0] for r in t["rows"] if r[0] != "dense"):
            rows = [r for r in t["rows"] if r[0] == m]
            ax.plot([100 * r[1] for r in rows], [t["mean_delta"][r] for r in rows], "o-", label=m)
        ax.axhline(0.0, color="k", ls="--", lw=1)
        ax.set_title(f"{mode} finetuning")
        ax.set_xlabel("upstream sparsity (%)")
        ax.set_ylabel("mean Δ top-1 vs dense (points)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "results.png"), dpi=100)
    return text
