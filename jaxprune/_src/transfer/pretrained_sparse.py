"""Sparse versions of a *real* pretrained model (ImageNet EfficientNet-Lite), made here without ImageNet.

Study B's upstreams for ``--config effnet``: one-shot global / uniform magnitude,
WoodFisher/OBS and a short distilled GMP of the pretrained weights (see
:class:`PretrainedSparseConfig`). The trained-from-scratch sparse upstreams of the
small config live in :mod:`jaxprune._src.transfer.sparse_upstream`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import masks as masks_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.pruner import MaskSpec
from jaxprune._src.transfer.sparse_upstream import SparseUpstream, prunable_sparsity
from jaxprune._src.types import PyTree

__all__ = ["PRETRAINED_METHODS", "LITE_PRUNABLE", "PretrainedSparseConfig", "sparse_pretrained_upstreams"]

#: How the sparse versions of a *real* pretrained model are made (:func:`sparse_pretrained_upstreams`).
PRETRAINED_METHODS = ("dense", "magnitude_global", "magnitude_uniform", "woodfisher", "gmp_distill")

#: Prunable leaves of EfficientNet-Lite: every conv kernel except the stem; the classifier stays dense.
LITE_PRUNABLE = ((r"^stem_conv/", False), (r"^fc/", False), (r"kernel$", True))


@dataclasses.dataclass(frozen=True)
class PretrainedSparseConfig:
    """Sparse versions of the ImageNet-pretrained EfficientNet-Lite, made here without ImageNet.

    The paper's sparse upstreams are *trained* sparse on ImageNet (GMP, AC/DC,
    RigL, ... for ~100 epochs); that needs ImageNet and accelerator time that
    this offline 2-core setting does not have. What can be real here: one-shot
    pruning of the real pretrained weights -- ``magnitude_global`` (one
    threshold), ``magnitude_uniform`` (each layer at the target), ``woodfisher``
    (one-shot OBS with a block-diagonal empirical Fisher from
    ``fisher_samples`` per-sample gradients on offline ``proxy`` images,
    labelled by the dense model's own top-1 prediction, with the OBS weight
    update) -- and short gradual pruning: ``gmp_distill``, ``gmp_steps`` of
    masked SGD on the ``proxy`` images distilling the dense model's 1000-class
    logits (temperature ``temperature``), masks from layerwise magnitude on a
    cubic schedule reaching the target at ``gmp_end_fraction`` of the steps.
    Prunable: every conv kernel but the stem (depthwise included), ``fc`` dense.
    """

    variant: str = "lite0"
    image_size: int = 32
    sparsities: tuple = (0.5, 0.7, 0.9)
    methods: tuple = PRETRAINED_METHODS
    proxy: str = "shapes_offline/upstream"
    proxy_examples: int = 1000
    fisher_samples: int = 16  # memory: the Fisher outer products are N x (prunable params) x block
    woodfisher_block: int = 16
    woodfisher_damp: float = 1e-4
    gmp_steps: int = 30
    gmp_every: int = 10
    gmp_end_fraction: float = 0.75
    batch_size: int = 32
    learning_rate: float = 0.001  # 0.01 collapses the pretrained Lite0 (measured)
    temperature: float = 2.0
    freeze: str | None = "dw_conv/kernel"  # not trained during GMP (still pruned by magnitude)
    seed: int = 0

    def __post_init__(self):
        bad = [m for m in self.methods if m not in PRETRAINED_METHODS]
        if bad:
            raise ValueError(
                f"PretrainedSparseConfig.methods: unknown {bad}; expected a subset of {PRETRAINED_METHODS}"
            )
        for s in self.sparsities:
            if not 0.0 < float(s) < 1.0:
                raise ValueError(f"PretrainedSparseConfig.sparsities must be in (0, 1), got {s!r}")


def _lite_proxy_images(cfg: PretrainedSparseConfig, n: int) -> np.ndarray:
    """``n`` offline proxy images in the Lite input scale (RGB [0, 1] -> (x*255 - 127.5) / 128)."""
    from jaxprune._src import data as data_lib
    from jaxprune._src import data_builders as builders

    name = cfg.proxy.split("/", 1)[1] if cfg.proxy.startswith("shapes_offline/") else None
    if name in builders.UPSTREAM_TASKS:
        images, _ = builders.generate_shapes(builders.UPSTREAM_TASKS[name], "train")
        x = data_lib.resize_images(images[:n].astype(np.float32) / 255.0, cfg.image_size)
    else:
        ds = data_lib.load_dataset(cfg.proxy, "train", image_size=cfg.image_size, normalize=None, max_examples=n)
        x = ds.images
    return ((x * 255.0 - 127.5) / 128.0).astype(np.float32)


def _all_masks(params: PyTree, masks: PyTree) -> PyTree:
    return jax.tree.map(
        lambda p, m: np.ones(np.shape(p), bool) if m is None else np.asarray(m, bool),
        params,
        masks,
        is_leaf=tree_lib.is_none,
    )


def _pseudo_label_grads(model, variables, x: np.ndarray, chunk: int = 8) -> PyTree:
    """Per-sample gradients of the cross-entropy to the model's own top-1 class, leading axis ``len(x)``."""
    from jaxprune._src.train import cross_entropy

    def one(p, xi):
        logits = model.apply(dict(variables, params=p), xi[None], train=False)
        return jax.grad(
            lambda q: cross_entropy(
                model.apply(dict(variables, params=q), xi[None], train=False),
                jnp.argmax(jax.lax.stop_gradient(logits), -1),
            )
        )(p)

    fn = jax.jit(jax.vmap(one, in_axes=(None, 0)))
    parts = [jax.tree.map(np.asarray, fn(variables["params"], x[i : i + chunk])) for i in range(0, len(x), chunk)]
    return jax.tree.map(lambda *a: np.concatenate(a), *parts)


def sparse_pretrained_upstreams(
    cfg: PretrainedSparseConfig = PretrainedSparseConfig(), *, up=None, log=print
) -> list[SparseUpstream]:
    """The dense pretrained EfficientNet-Lite and its sparse versions, one per method x sparsity.

    ``up``: an :class:`~jaxprune._src.transfer.upstream.Upstream` to use (default
    :func:`~jaxprune._src.transfer.upstream.pretrained_upstream` of ``cfg.variant``,
    offline from its wheel). Each result's ``stats`` has ``sparsity`` (over the
    prunable kernels), ``seconds`` and ``agreement`` (top-1 agreement with the dense
    model's ImageNet predictions on held-out proxy images: how much of the
    pretrained function survives).

    >>> ups = sparse_pretrained_upstreams(PretrainedSparseConfig(methods=('dense',)))  # doctest: +SKIP
    """
    from jaxprune._src.algorithms.obs import fisher_inverse, obs_prune
    from jaxprune._src.data import Dataset
    from jaxprune._src.transfer.study_c_probe import masked_finetune
    from jaxprune._src.transfer.upstream import pretrained_upstream

    if up is None:
        up = pretrained_upstream(cfg.variant, image_size=cfg.image_size)
    model, dense = up.model, jax.tree.map(np.asarray, up.variables)
    params = dense["params"]
    ok = tree_lib.prunable_tree(params, LITE_PRUNABLE)
    spec = MaskSpec(scope="global", prunable=LITE_PRUNABLE)
    n_eval = 256
    x_all = _lite_proxy_images(cfg, cfg.proxy_examples + n_eval)
    x_train, x_eval = x_all[: cfg.proxy_examples], x_all[cfg.proxy_examples :]
    fwd = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), -1))

    def top1(v):
        return np.concatenate([np.asarray(fwd(v, x_eval[i : i + 64])) for i in range(0, len(x_eval), 64)])

    dense_top1 = top1(dense)
    out: list[SparseUpstream] = []

    def add(method, s, v, masks, t0, **extra):
        stats = {
            "sparsity": float(prunable_sparsity(v["params"], masks)) if masks is not None else 0.0,
            "agreement": float(np.mean(top1(v) == dense_top1)),
            "seconds": time.perf_counter() - t0,
            **extra,
        }
        out.append(SparseUpstream(model, v, masks, method, float(s), stats))
        log(
            f"[upstream] {method:>17} s={s:.2f}: sparsity {stats['sparsity']:.3f}, "
            f"ImageNet top-1 agreement with dense {stats['agreement']:.3f} ({stats['seconds']:.0f} s)"
        )

    if "dense" in cfg.methods:
        add("dense", 0.0, dense, None, time.perf_counter())
    scores = jax.tree.map(np.abs, params)
    for method in ("magnitude_global", "magnitude_uniform"):
        if method not in cfg.methods:
            continue
        for s in cfg.sparsities:
            t0 = time.perf_counter()
            fn = masks_lib.global_masks if method == "magnitude_global" else masks_lib.layerwise_masks
            masks = fn(scores, float(s), prunable=ok)
            v = dict(dense, params=masks_lib.apply_masks(params, masks))
            add(method, s, jax.tree.map(np.asarray, v), masks, t0)
    if "woodfisher" in cfg.methods:
        t0 = time.perf_counter()
        grads = _pseudo_label_grads(model, dense, x_train[: cfg.fisher_samples])
        finv = jax.jit(
            lambda p, g: fisher_inverse(p, g, block_size=cfg.woodfisher_block, damp=cfg.woodfisher_damp, prunable=ok)
        )(params, grads)
        del grads
        prune = jax.jit(lambda p, f, s: obs_prune(p, f, s, spec), static_argnums=2)  # sparsity: a Python float
        t_fisher = time.perf_counter() - t0
        for s in cfg.sparsities:
            t0 = time.perf_counter()
            new, masks = prune(params, finv, float(s))
            masks = jax.tree.map(lambda m: None if m is None else np.asarray(m), masks, is_leaf=tree_lib.is_none)
            add("woodfisher", s, dict(dense, params=jax.tree.map(np.asarray, new)), masks, t0, fisher_seconds=t_fisher)
        del finv
    if "gmp_distill" in cfg.methods:
        proxy = Dataset(x_train, np.zeros(len(x_train), np.int32), 1, cfg.proxy, "train", (0.5,) * 3, (128 / 255,) * 3)
        end = max(int(cfg.gmp_end_fraction * cfg.gmp_steps), 1)
        for s in cfg.sparsities:
            t0 = time.perf_counter()
            v, masks, step = dense, None, 0
            while step < cfg.gmp_steps:
                frac = min(step / end, 1.0)
                cur = float(s) * (1.0 - (1.0 - frac) ** 3)  # cubic, Zhu & Gupta
                if step <= end and cur > 0:
                    masks = masks_lib.layerwise_masks(jax.tree.map(np.abs, v["params"]), cur, prunable=ok)
                seg = min(cfg.gmp_every if step < end else cfg.gmp_steps - step, cfg.gmp_steps - step)
                full = (
                    _all_masks(v["params"], masks)
                    if masks is not None
                    else jax.tree.map(lambda p: np.ones(np.shape(p), bool), v["params"])
                )
                v = masked_finetune(
                    model,
                    v,
                    full,
                    proxy,
                    steps=seg,
                    batch_size=cfg.batch_size,
                    learning_rate=cfg.learning_rate,
                    weight_decay=0.0,
                    seed=cfg.seed + step,
                    freeze=cfg.freeze,
                    schedule="constant" if step < end else "cosine",
                    teacher=dense,
                    temperature=cfg.temperature,
                )
                step += seg
            add("gmp_distill", s, v, masks, t0, steps=cfg.gmp_steps)
    return out
