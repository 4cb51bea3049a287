"""Sparse upstream models for study B: one method, one sparsity, one shared training path.

:func:`train_sparse_upstream` trains a reference CNN on the upstream task with
one sparse-training method and returns its variables, masks and statistics.
Every method runs through the same code (:func:`jaxprune._src.train.fit` with
SGDW + warm-up + cosine); the method only decides three things (:func:`recipe`):

* the **pruner** run inside the optimizer (GMP, AC/DC, RigL, SET, STE, WoodFisher),
* a **reparameterisation** of the weights (STR: ``sign(w) relu(|w| - sigmoid(s))``),
* the **rounds** of training (LTH: prune-rewind rounds with fixed masks).

=============  ====================================================================
method         what it is (``T`` = ``cfg.steps``)
=============  ====================================================================
``dense``      no pruning (the baseline)
``gmp``        cubic gradual magnitude pruning from 0.1T to 0.7T, layerwise uniform
``acdc``       AC/DC: dense warm-up 0.1T, alternating 0.05T compressed / dense
               phases, final compressed phase from 0.85T; global magnitude
``rigl1x``     RigL, ERK, drop fraction 0.3 cosine-decayed, updates until 0.75T
``rigl5x``     the same for 5T steps
``set``        SET (random regrowth), ERK, like rigl1x
``ste``        straight-through estimator on the GMP schedule
``str``        STR, learnable per-layer thresholds; the sparsity is *learned* (the
               per-target threshold decay of :data:`STR_DECAY` aims at the target)
``woodfisher`` gradual WoodFisher (block-diagonal empirical Fisher, OBS update),
               GMP schedule, global
``lth``        lottery ticket with rewinding to 0.05T, ``lth_rounds`` rounds of
               T steps (``1 + lth_rounds`` trainings), global magnitude
=============  ====================================================================

The first conv (``conv1`` / ``conv_0``) and the classifier stay dense for every
method (the classifier is replaced downstream anyway); sparsities are over the
other kernels. Models are checkpointed with :func:`save_sparse_upstream`
(orbax, via :mod:`jaxprune._src.checkpoint`: variables, masks, model config and
the run's metadata) and restored without any code of the run by
:func:`load_sparse_upstream`.

Example:
  >>> cfg = SparseUpstreamConfig(steps=200, train_examples=2000)             # doctest: +SKIP
  >>> up = train_sparse_upstream('gmp', 0.9, cfg)                              # doctest: +SKIP
  >>> up.stats['test_accuracy'], up.stats['sparsity']                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._src import algorithms as alg
from jaxprune._src import masks as masks_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.pruner import MaskSpec, Pruner
from jaxprune._src.schedules import polynomial
from jaxprune._src.types import PyTree

__all__ = [
    "METHODS",
    "STR_DECAY",
    "SparseUpstreamConfig",
    "SparseUpstream",
    "Recipe",
    "recipe",
    "full_upstream_config",
    "build_upstream_model",
    "load_upstream_splits",
    "train_sparse_upstream",
    "save_sparse_upstream",
    "load_sparse_upstream",
    "run_name",
    "prunable_sparsity",
    "run_sparse_upstream",
    "DEFAULT_METHODS",
    "write_upstream_report",
]

#: Methods run by default: every method of the study (plus SET and STE).
DEFAULT_METHODS = ("dense", "gmp", "acdc", "rigl1x", "rigl5x", "set", "ste", "str", "woodfisher", "lth")

METHODS = ("dense", "gmp", "acdc", "rigl1x", "rigl5x", "set", "ste", "str", "woodfisher", "lth")

#: STR threshold weight decay per target sparsity (small-scale calibration; STR's sparsity is learned).
STR_DECAY = {0.8: 0.07, 0.9: 0.2, 0.95: 0.5}  # measured at 600 steps: 0.02->49%, 0.08->82%


@dataclasses.dataclass(frozen=True)
class SparseUpstreamConfig:
    """Upstream model, data and training length shared by all methods.

    ``arch``: ``'cifar_resnet'``, ``'small_cnn'``, ``'resnet18'``/``'resnet34'`` (small input)
    or ``'resnet50'`` (ImageNet layout). ``dataset``: ``'shapes_offline/upstream'`` (offline,
    100 classes) or any :func:`jaxprune.data.load_dataset` name (``'imagenet2012'`` at full
    scale; splits ``train_split``/``dev_split``/``test_split``). ``prune_every``: steps between
    mask updates (GMP, WoodFisher, RigL, SET, STE).
    """

    arch: str = "cifar_resnet"
    stage_sizes: tuple = (1, 1, 1)
    stage_widths: tuple = (16, 32, 64)
    image_size: int = 16
    dataset: str = "shapes_offline/upstream"
    train_split: str = "train"
    dev_split: str = "validation"
    test_split: str = "test"
    train_examples: int | None = None
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    augment: bool = False
    prune_every: int = 50
    lth_rounds: int = 3
    woodfisher_block: int = 64
    woodfisher_damp: float = 1e-6
    str_init_threshold: float = -6.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "prune_every", "lth_rounds", "woodfisher_block"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SparseUpstreamConfig.{name} must be a positive int, got {v!r}")
        if self.steps < 20:
            raise ValueError(f"SparseUpstreamConfig.steps must be >= 20 (schedules need room), got {self.steps}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SparseUpstreamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"SparseUpstreamConfig: unknown fields {sorted(set(d) - known)}")
        # JSON values: field names are checked above, the types by __post_init__ and use
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})  # type: ignore[arg-type]


def full_upstream_config(**overrides: Any) -> SparseUpstreamConfig:
    """The paper's scale: ResNet-50 on ImageNet (tfds ``imagenet2012``), 100 epochs at batch 256.

    100 epochs x 1,281,167 / 256 = 500k steps, lr 0.1 x (256/256) with 5 warm-up epochs,
    weight decay 1e-4, mask updates every epoch-ish (5k steps), WoodFisher blocks of 128.
    Needs ``imagenet2012`` prepared locally (jaxprune never downloads).

    >>> full_upstream_config().arch, full_upstream_config().steps
    ('resnet50', 500000)
    """
    base: dict[str, Any] = dict(
        arch="resnet50",
        stage_sizes=(3, 4, 6, 3),
        stage_widths=(64, 128, 256, 512),
        image_size=224,
        dataset="imagenet2012",
        dev_split="validation[:10000]",
        test_split="validation",
        steps=500_000,
        batch_size=256,
        learning_rate=0.1,
        weight_decay=1e-4,
        warmup_steps=25_000,
        augment=True,
        prune_every=5_000,
        woodfisher_block=128,
        lth_rounds=3,
    )
    base.update(overrides)
    return SparseUpstreamConfig(**base)


class Recipe(NamedTuple):
    """What a method changes in the shared training path."""

    steps: int  # training length of one round
    pruner: Callable[[], Pruner] | None = None  # built inside the run (fresh per call)
    reparam: str | None = None  # 'str' or None
    rounds: int = 0  # LTH prune-rewind rounds
    rewind_step: int = 0


def _spec(model_first: str, scope: str = "layerwise", distribution: str = "uniform") -> MaskSpec:
    rules = ((rf"^{model_first}/kernel$", None), (r"^(head|fc)/kernel$", None))
    return MaskSpec(scope=scope, distribution=distribution, rules=rules)


def _first_layer(arch: str) -> str:
    return "conv_0" if arch == "small_cnn" else "conv1"


def recipe(method: str, sparsity: float, cfg: SparseUpstreamConfig) -> Recipe:
    """The :class:`Recipe` of ``method`` at ``sparsity`` (see the module table).

    >>> recipe('rigl5x', 0.9, SparseUpstreamConfig(steps=100)).steps
    500
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "dense" and not 0.0 < float(sparsity) < 1.0:
        raise ValueError(f"sparsity of method {method!r} must be in (0, 1), got {sparsity!r}")
    t, every, first = cfg.steps, cfg.prune_every, _first_layer(cfg.arch)
    begin, end = int(0.1 * t), int(0.7 * t)
    s = float(sparsity)
    if method == "dense":
        return Recipe(t)
    if method == "gmp":
        return Recipe(t, lambda: alg.gmp_pruner(s, begin=begin, end=end, every=every, spec=_spec(first)))
    if method == "ste":
        return Recipe(t, lambda: alg.ste_pruner(polynomial(s, begin=begin, end=end, every=every), _spec(first)))
    if method == "woodfisher":
        return Recipe(
            t,
            lambda: alg.woodfisher_pruner(
                s,
                begin=begin,
                end=end,
                every=every,
                block_size=cfg.woodfisher_block,
                damp=cfg.woodfisher_damp,
                spec=_spec(first, "global"),
            ),
        )
    if method == "acdc":
        phase = max(int(0.05 * t), 1)
        return Recipe(
            t,
            lambda: alg.acdc_pruner(
                s,
                warmup=begin,
                compressed_steps=phase,
                dense_steps=phase,
                final_begin=int(0.85 * t),
                spec=_spec(first, "global"),
            ),
        )
    if method in ("rigl1x", "rigl5x", "set"):
        rc = alg.rigl_config(t, 5 if method == "rigl5x" else 1, every=every)
        factory = alg.set_pruner if method == "set" else alg.rigl_pruner
        return Recipe(
            int(rc["total_steps"]),
            lambda: factory(
                s,
                every=int(rc["every"]),
                end=int(rc["end"]),
                drop_fraction=rc["drop_fraction"],
                spec=_spec(first, distribution="erk"),
            ),
        )
    if method == "str":
        return Recipe(t, reparam="str")
    return Recipe(t, rounds=cfg.lth_rounds, rewind_step=max(int(0.05 * t), 1))  # lth


# ------------------------------------------------------------------------------------------ model and data
def build_upstream_model(cfg: SparseUpstreamConfig, num_classes: int):
    """The Linen model of ``cfg`` (a registered ``jaxprune.models`` class, so it has a JSON config)."""
    from jaxprune import models
    from jaxprune._src.transfer.upstream import build_model

    if cfg.arch == "small_cnn":
        return models.SmallCNN(channels=tuple(cfg.stage_widths), num_classes=num_classes, image_size=cfg.image_size)
    if cfg.arch == "resnet50":
        return models.resnet50(num_classes=num_classes, image_size=cfg.image_size)
    return build_model(cfg.arch, num_classes, cfg.image_size, cfg.stage_sizes, cfg.stage_widths)


def load_upstream_splits(cfg: SparseUpstreamConfig, data_dir: str | None = None) -> tuple:
    """``(train, dev, test)`` :class:`jaxprune.data.Dataset` of the upstream task.

    Real tfds names must be prepared locally; otherwise the data layer's error says how.
    """
    from jaxprune._src.data import load_dataset
    from jaxprune._src.transfer.upstream import UpstreamConfig, load_upstream_data

    if cfg.dataset.startswith("shapes_offline/upstream"):
        ucfg = UpstreamConfig(dataset=cfg.dataset, image_size=cfg.image_size, train_examples=cfg.train_examples)
        return tuple(load_upstream_data(ucfg, split, data_dir) for split in ("train", "validation", "test"))
    return tuple(
        load_dataset(
            cfg.dataset,
            split,
            image_size=cfg.image_size,
            data_dir=data_dir,
            max_examples=cfg.train_examples if split == cfg.train_split else None,
        )
        for split in (cfg.train_split, cfg.dev_split, cfg.test_split)
    )


# ------------------------------------------------------------------------------------------ training
@dataclasses.dataclass(frozen=True)
class _Reparam:
    """Duck-typed model for :func:`fit`: applies ``transform`` to the params, then ``model``."""

    model: Any
    transform: Callable[[PyTree], PyTree]

    def apply(self, variables, x, **kw):
        v = dict(variables)
        v["params"] = self.transform(v["params"])
        return self.model.apply(v, x, **kw)


def _tx(
    cfg: SparseUpstreamConfig,
    params: PyTree,
    total: int,
    start: int = 0,
    extra_decay: PyTree = None,
    extra_rate: float = 0.0,
) -> optax.GradientTransformation:
    """SGDW (momentum 0.9, Nesterov, decay on ndim>1 leaves), warm-up + cosine over ``total``
    steps, starting at step ``start`` (LTH rewinding restarts mid-schedule)."""
    from jaxprune._src.train import warmup_cosine

    decay_mask = jax.tree.map(lambda p: jnp.ndim(p) > 1, params)
    parts = [optax.trace(decay=0.9, nesterov=True), optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask)]
    if extra_decay is not None:
        parts.append(optax.add_decayed_weights(extra_rate, mask=extra_decay))
    lr = lambda c: -warmup_cosine(c + start, cfg.learning_rate, cfg.warmup_steps, total)  # noqa: E731
    parts.append(optax.scale_by_schedule(lr))
    return optax.chain(*parts)


def _fit(
    model,
    variables,
    data,
    cfg,
    steps,
    *,
    total,
    start=0,
    pruner=None,
    masks=None,
    tx=None,
    desc="train",
    progress=False,
):
    from jaxprune._src.train import TrainConfig, fit

    tc = TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        augment=cfg.augment,
        seed=cfg.seed + start,
    )
    tx = _tx(cfg, variables["params"], total, start) if tx is None else tx
    return fit(model, variables, data[0], tc, tx=tx, pruner=pruner, masks=masks, progress=progress, desc=desc)


def prunable_sparsity(params: PyTree, masks: PyTree) -> float:
    """Fraction of exact zeros among the entries of ``params`` at masked (non-None) leaves.

    >>> prunable_sparsity({'w': jnp.array([0., 1.]), 'b': jnp.ones(2)}, {'w': jnp.array([False, True]), 'b': None})
    0.5
    """
    zeros = total = 0
    for (_, m), (_, p) in zip(
        tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none), tree_lib.leaves_with_paths(params)
    ):
        if m is not None:
            zeros += int(np.sum(np.asarray(p) == 0))
            total += int(np.size(p))
    return zeros / total if total else 0.0


@dataclasses.dataclass
class SparseUpstream:
    """A trained upstream model: Linen ``model``, ``variables``, bool ``masks`` over ``variables['params']``
    (``None`` at dense leaves; all-True for the dense method) and ``stats``."""

    model: Any
    variables: PyTree
    masks: PyTree
    method: str
    sparsity: float
    stats: dict
    config: SparseUpstreamConfig | None = None


def run_name(method: str, sparsity: float) -> str:
    """Directory name of one run: ``'gmp_s90'``, ``'dense_s0'``.

    >>> run_name('rigl1x', 0.95)
    'rigl1x_s95'
    """
    return f"{method}_s{int(round(100 * float(sparsity)))}"


def train_sparse_upstream(
    method: str,
    sparsity: float,
    cfg: SparseUpstreamConfig = SparseUpstreamConfig(),
    *,
    data: tuple | None = None,
    data_dir: str | None = None,
    progress: bool = False,
) -> SparseUpstream:
    """Trains the upstream model of ``cfg`` with ``method`` at ``sparsity`` (0 for ``'dense'``).

    Returns a :class:`SparseUpstream` whose ``stats`` hold ``test_accuracy``, ``dev_accuracy``
    (top-1), ``sparsity`` (fraction of zeros over the prunable kernels), ``mask_sparsity``,
    ``steps`` (all rounds), ``seconds`` and, for STR, ``str_learned_sparsity``.

    >>> up = train_sparse_upstream('gmp', 0.9, SparseUpstreamConfig(steps=100, train_examples=500))  # doctest: +SKIP
    """
    from jaxprune._src.train import evaluate

    sparsity = 0.0 if method == "dense" else float(sparsity)
    rec = recipe(method, sparsity, cfg)
    data = load_upstream_splits(cfg, data_dir) if data is None else data
    model = build_upstream_model(cfg, data[0].num_classes)
    variables = model.init(jax.random.key(cfg.seed), model.example_input(1))
    first = _first_layer(cfg.arch)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    steps_run = 0
    if rec.reparam == "str":  # STR: train {'weights', 'thresholds'} through the reparameterised model
        sp = alg.str_init(
            variables["params"],
            init_threshold=cfg.str_init_threshold,
            prunable=((rf"^{first}/kernel$", False), (r"^(head|fc)/kernel$", False)),
        )
        decay = STR_DECAY.get(round(sparsity, 2), 0.05)
        thr_mask = {
            "weights": jax.tree.map(lambda _: False, sp["weights"]),
            "thresholds": jax.tree.map(lambda _: True, sp["thresholds"]),
        }
        tx = _tx(cfg, sp, rec.steps, extra_decay=thr_mask, extra_rate=decay)
        res = _fit(
            _Reparam(model, alg.str_effective),
            dict(variables, params=sp),
            data,
            cfg,
            rec.steps,
            total=rec.steps,
            tx=tx,
            desc=f"{method}-{sparsity}",
            progress=progress,
        )
        params, masks = alg.str_finalize(res.variables["params"])
        variables = dict(res.variables, params=params)
        extra["str_learned_sparsity"] = float(alg.str_sparsity(res.variables["params"]))
        extra["str_threshold_decay"] = decay
        steps_run = res.steps_run
    elif rec.rounds:  # LTH: prune-rewind rounds, each trained with fixed masks
        spec = _spec(first, "global")
        assert spec.rules is not None  # _spec always sets rules

        def train_fn(v, m, start, num):
            nonlocal steps_run
            pm = m["params"] if m is not None else None
            r = _fit(
                model, v, data, cfg, num, total=rec.steps, start=start, masks=pm, desc=f"lth@{start}", progress=progress
            )
            steps_run += r.steps_run
            return r.variables

        full_spec = dataclasses.replace(spec, rules=tuple((f"^params/{p.lstrip('^')}", s) for p, s in spec.rules))
        lt = alg.lottery_ticket(
            train_fn,
            variables,
            sparsity=sparsity,
            rounds=rec.rounds,
            round_steps=rec.steps,
            rewind_step=rec.rewind_step,
            spec=full_spec,
        )
        variables, masks = lt.params, lt.masks["params"]
        extra["lth_round_sparsities"] = [float(s) for s in lt.sparsities]
    else:  # dense and every pruner-driven method
        pruner = rec.pruner() if rec.pruner is not None else None
        res = _fit(
            model,
            variables,
            data,
            cfg,
            rec.steps,
            total=rec.steps,
            pruner=pruner,
            desc=f"{method}-{sparsity}",
            progress=progress,
        )
        variables, masks = res.variables, res.masks
        steps_run = res.steps_run
        if masks is None:  # dense: all-True masks over the would-be prunable kernels
            from jaxprune._src.pruner import dense_masks

            masks = dense_masks(variables["params"], _spec(first))
        elif pruner is not None and pruner.straight_through:  # STE keeps dense weights; the model is the masked one
            variables = dict(variables, params=masks_lib.apply_masks(variables["params"], masks))
    seconds = time.perf_counter() - t0
    variables = jax.tree.map(np.asarray, variables)
    masks = jax.tree.map(lambda m: None if m is None else np.asarray(m, bool), masks, is_leaf=tree_lib.is_none)
    dev = evaluate(model, variables, data[1])
    test = evaluate(model, variables, data[2])
    stats = {
        "method": method,
        "target_sparsity": sparsity,
        "test_accuracy": float(test["accuracy"]),
        "test_top5": float(test["top5"]),
        "dev_accuracy": float(dev["accuracy"]),
        "sparsity": prunable_sparsity(variables["params"], masks),
        "mask_sparsity": float(alg.sparsity_of_masks(masks)),
        "steps": int(steps_run),
        "seconds": seconds,
        "num_classes": int(data[0].num_classes),
        "backend": jax.default_backend(),
        **extra,
    }
    return SparseUpstream(model, variables, masks, method, sparsity, stats, cfg)


# ------------------------------------------------------------------------------------------ checkpoints
def save_sparse_upstream(directory: str, up: SparseUpstream, *, overwrite: bool = True) -> str:
    """Writes ``up`` as an orbax checkpoint (step = steps run) under ``directory``.

    Items: ``params`` = the whole Linen variables (params + batch_stats; pruned kernels
    stored compactly), ``masks`` (packed bits), ``model_config`` and ``data_state`` =
    ``{'method', 'sparsity', 'stats', 'config'}``. Returns ``directory``.
    """
    from jaxprune._src.checkpoint.api import save_checkpoint

    var_masks = {k: (up.masks if k == "params" else jax.tree.map(lambda _: None, v)) for k, v in up.variables.items()}
    meta = {
        "method": up.method,
        "sparsity": up.sparsity,
        "stats": up.stats,
        "config": None if up.config is None else up.config.to_dict(),
    }
    save_checkpoint(
        directory,
        int(up.stats.get("steps", 0)),
        params=up.variables,
        masks=var_masks,
        model_config=up.model,
        data_state=json.loads(json.dumps(meta)),
        overwrite=overwrite,
    )
    return directory


def load_sparse_upstream(directory: str) -> SparseUpstream:
    """Restores a :class:`SparseUpstream` written by :func:`save_sparse_upstream` (latest step)."""
    from jaxprune import models
    from jaxprune._src.checkpoint.api import restore_checkpoint

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no sparse upstream checkpoint directory {directory!r}")
    ck = restore_checkpoint(directory)
    if ck.model_config is None or ck.data_state is None or "method" not in ck.data_state:
        raise ValueError(
            f"{directory!r} is not a sparse upstream checkpoint (needs model_config and a data_state "
            f"with 'method'); got data_state {ck.data_state!r}"
        )
    model = models.from_config(ck.model_config)
    variables = jax.tree.map(np.asarray, ck.params)
    masks = ck.masks["params"] if ck.masks is not None else None
    meta = ck.data_state
    cfg = SparseUpstreamConfig.from_dict(meta["config"]) if meta.get("config") else None
    return SparseUpstream(model, variables, masks, meta["method"], float(meta["sparsity"]), meta["stats"], cfg)


# ------------------------------------------------------------------------------------------ driver
def run_sparse_upstream(
    out_dir: str,
    cfg: SparseUpstreamConfig,
    methods=DEFAULT_METHODS,
    sparsities=(0.8, 0.9, 0.95),
    *,
    data_dir: str | None = None,
    progress: bool = False,
    log=print,
) -> dict:
    """Trains every method x sparsity (dense once), checkpoints each under ``out_dir/checkpoints/<run>``
    and writes ``results.json``, ``results.md`` and ``results.png``. Returns the JSON dict."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; methods are {METHODS}")
    os.makedirs(out_dir, exist_ok=True)
    data = load_upstream_splits(cfg, data_dir)
    runs = []
    for m in methods:
        for s in (0.0,) if m == "dense" else tuple(sparsities):
            up = train_sparse_upstream(m, s, cfg, data=data, progress=progress)
            path = save_sparse_upstream(os.path.join(os.path.abspath(out_dir), "checkpoints", run_name(m, s)), up)
            runs.append({**up.stats, "run": run_name(m, s), "checkpoint": path})
            log(
                f"{run_name(m, s):>16}: top-1 {up.stats['test_accuracy']:.3f}  sparsity {up.stats['sparsity']:.3f}"
                f"  {up.stats['seconds']:.0f}s"
            )
    result = {"config": cfg.to_dict(), "runs": runs, "backend": jax.default_backend()}
    write_upstream_report(out_dir, result)
    return result


def write_upstream_report(out_dir: str, result: dict) -> None:
    """``results.json``, ``results.md`` (method x sparsity table) and ``results.png`` in ``out_dir``."""
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "| method | target sparsity | achieved sparsity | top-1 (%) | train time (s) | steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['method']} | {100 * r['target_sparsity']:.0f}% | {100 * r['sparsity']:.1f}% | "
            f"{100 * r['test_accuracy']:.2f} | {r['seconds']:.1f} | {r['steps']} |"
        )
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        from matplotlib.figure import Figure  # no pyplot: never touches the caller's backend
    except ImportError:  # pragma: no cover
        return
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    dense = [r for r in result["runs"] if r["method"] == "dense"]
    for m in dict.fromkeys(r["method"] for r in result["runs"] if r["method"] != "dense"):
        rs = [r for r in result["runs"] if r["method"] == m]
        ax.plot([100 * r["sparsity"] for r in rs], [100 * r["test_accuracy"] for r in rs], "o-", label=m)
    if dense:
        ax.axhline(100 * dense[0]["test_accuracy"], color="k", ls="--", label="dense")
    ax.set_xlabel("achieved sparsity (%)")
    ax.set_ylabel("upstream test top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "results.png"), dpi=100)
