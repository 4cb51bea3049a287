"""Tests for jaxprune.models: shapes, BN modes, widths, rebuild, configs, Linen vs NNX."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import TINY  # noqa: E402  (tests/ is on sys.path under pytest)

from jaxprune import models as M
from jaxprune._src.tree import leaves_with_paths, map_with_path

HAS_BN = {"SmallCNN", "CifarResNet", "ResNet", "MobileNetBlockNet", "ConcatNet"}

_CACHE: dict[str, tuple] = {}


def tiny(name):
    """(model, variables, input) for a tiny config, initialised once per session."""
    if name not in _CACHE:
        model = TINY[name]()
        x = model.example_input(2)
        if name == "BertEncoder":
            x = jax.random.randint(jax.random.key(1), x.shape, 0, model.vocab_size)
        else:
            x = jax.random.normal(jax.random.key(1), x.shape)
        _CACHE[name] = (model, model.init(jax.random.key(0), x), x)
    return _CACHE[name]


def slice_leaves(variables, rules):
    """rules: {(layer path suffix, leaf name): (axis, kept indices)}; keeps those indices of matching leaves."""

    def fn(path, leaf):
        for (layer, leaf_name), (axis, keep) in rules.items():
            if path.endswith(f"{layer}/{leaf_name}"):
                return jnp.take(leaf, jnp.asarray(keep), axis=axis)
        return leaf

    return map_with_path(fn, variables)


def zero_leaves(variables, rules):
    """Zeroes the entries *not* kept (same rule format as slice_leaves)."""

    def fn(path, leaf):
        for (layer, leaf_name), (axis, keep) in rules.items():
            if path.endswith(f"{layer}/{leaf_name}"):
                m = np.zeros(leaf.shape[axis], bool)
                m[np.asarray(keep)] = True
                shape = [1] * leaf.ndim
                shape[axis] = -1
                return leaf * jnp.asarray(m).reshape(shape)
        return leaf

    return map_with_path(fn, variables)


# --------------------------------------------------------------------------- shapes and BN modes
@pytest.mark.parametrize("name", sorted(TINY))
def test_init_apply_shapes_and_batch_stats(name):
    model, v, x = tiny(name)
    if name == "BertEncoder":
        hidden, pooled = model.apply(v, x)
        assert hidden.shape == (2, x.shape[1], model.hidden_size) and pooled.shape == (2, model.hidden_size)
        assert "batch_stats" not in v
        return
    y = model.apply(v, x)
    assert y.shape == (2, 3)
    assert bool(jnp.all(jnp.isfinite(y)))
    if name in HAS_BN:
        y_train, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
        assert y_train.shape == (2, 3)
        old = dict(leaves_with_paths(v["batch_stats"]))
        new = dict(leaves_with_paths(updates["batch_stats"]))
        assert old.keys() == new.keys()
        assert all(old[k].shape == new[k].shape for k in old)
        assert any(not np.allclose(old[k], new[k]) for k in old), "train mode must update batch_stats"
        assert not np.allclose(y_train, y), "train mode (batch stats) and eval mode should differ"
    else:
        assert "batch_stats" not in v


def test_torchvision_like_names():
    _, v, _ = tiny("ResNet")
    paths = {p for p, _ in leaves_with_paths(v["params"])}
    for p in [
        "conv1/kernel",
        "bn1/scale",
        "layer1_0/conv1/kernel",
        "layer1_0/conv3/kernel",
        "layer1_0/bn3/bias",
        "layer1_0/downsample_conv/kernel",
        "layer1_0/downsample_bn/scale",
        "layer2_0/conv2/kernel",
        "fc/kernel",
        "fc/bias",
    ]:
        assert p in paths, p
    # stride on the 3x3 conv (v1.5): layer2_0/conv2 is 3x3, conv1/conv3 are 1x1
    assert v["params"]["layer2_0"]["conv2"]["kernel"].shape[:2] == (3, 3)
    assert v["params"]["layer2_0"]["conv1"]["kernel"].shape[:2] == (1, 1)
    _, vv, _ = tiny("ViT")
    p = vv["params"]
    d, h = 32, 4
    assert p["encoder_0"]["attn"]["query"]["kernel"].shape == (d, h, d // h)
    assert p["encoder_0"]["attn"]["query"]["bias"].shape == (h, d // h)
    assert p["encoder_0"]["attn"]["out"]["kernel"].shape == (h, d // h, d)
    assert p["encoder_0"]["mlp"]["fc1"]["kernel"].shape == (d, 64)
    assert p["pos_embedding"].shape == (1, 1 + (8 // 4) ** 2, d)


def test_full_size_configs_shapes():
    """Param counts of the standard configs (abstract init only, no compilation)."""

    def count(model):
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), model.example_input(1)))
        return sum(int(np.prod(s.shape)) for _, s in leaves_with_paths(shapes["params"]))

    assert count(M.resnet18()) == 11_689_512  # torchvision resnet18
    assert count(M.resnet50()) == 25_557_032  # torchvision resnet50
    assert count(M.vit_b16(image_size=224)) == 86_567_656  # timm vit_base_patch16_224
    # all-MiniLM-L6-v2 has 22.7M float params (its pooler included)
    assert count(M.minilm_l6_config()) == 22_713_216
    assert count(M.cifar_resnet20()) > 0.26e6


def test_bert_attention_mask_ignores_padding():
    model, v, ids = tiny("BertEncoder")
    mask = jnp.array([[1] * 5 + [0] * 3, [1] * 8])
    h1, _ = model.apply(v, ids, attention_mask=mask)
    ids2 = ids.at[0, 5:].set((ids[0, 5:] + 7) % model.vocab_size)
    h2, _ = model.apply(v, ids2, attention_mask=mask)
    np.testing.assert_allclose(h1[0, :5], h2[0, :5], atol=1e-5)
    np.testing.assert_allclose(h1[1], h2[1], atol=1e-6)
    assert not np.allclose(h1[0, 5:], h2[0, 5:])
    h3, _ = model.apply(v, ids, attention_mask=mask, token_type_ids=jnp.ones_like(ids))
    assert not np.allclose(h1, h3)


# --------------------------------------------------------------------------- widths
def test_widths_override_changes_shapes():
    model = M.SmallCNN(channels=(4, 8), num_classes=3, image_size=8, widths=(("conv_0", 2), ("head", 5)))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), model.example_input(1)))
    p = shapes["params"]
    assert p["conv_0"]["kernel"].shape == (3, 3, 3, 2)
    assert p["bn_0"]["scale"].shape == (2,)
    assert shapes["batch_stats"]["bn_0"]["mean"].shape == (2,)
    assert p["conv_1"]["kernel"].shape == (3, 3, 2, 8)
    assert p["head"]["kernel"].shape == (8, 5)
    vit = M.vit_tiny_test(widths=(("encoder_1/attn", 2), ("encoder_0/mlp/fc1", 10)))
    p = jax.eval_shape(lambda: vit.init(jax.random.key(0), vit.example_input(1)))["params"]
    assert p["encoder_1"]["attn"]["key"]["kernel"].shape == (32, 2, 8)
    assert p["encoder_1"]["attn"]["out"]["kernel"].shape == (2, 8, 32)
    assert p["encoder_0"]["attn"]["key"]["kernel"].shape == (32, 4, 8)
    assert p["encoder_0"]["mlp"]["fc2"]["kernel"].shape == (10, 32)


@given(st.lists(st.tuples(st.sampled_from(["conv_0", "conv_1", "head", "a/b"]), st.integers(1, 64)), max_size=4))
@settings(max_examples=25, deadline=None)
def test_width_helpers(entries):
    widths = tuple(entries)
    for path in ["conv_0", "conv_1", "head"]:
        expected = next((w for k, w in widths if k == path), 7)
        assert M.width(widths, path, 7) == expected
    assert M.sub_widths(widths, "a") == tuple(("b", w) for k, w in widths if k == "a/b")


def test_width_rejects_bad_values():
    with pytest.raises(ValueError, match="conv_0"):
        M.width((("conv_0", 0),), "conv_0", 4)


# --------------------------------------------------------------------------- rebuild
def test_rebuild_smallcnn_equals_zeroed_dense():
    model, v, x = tiny("SmallCNN")
    keep = [0, 2]
    rules = {
        ("conv_0", "kernel"): (3, keep),
        ("bn_0", "scale"): (0, keep),
        ("bn_0", "bias"): (0, keep),
        ("bn_0", "mean"): (0, keep),
        ("bn_0", "var"): (0, keep),
        ("conv_1", "kernel"): (2, keep),
    }
    small = slice_leaves(v, rules)
    rebuilt = M.rebuild(model, small)
    assert rebuilt.widths == (("conv_0", 2),)
    y_small = rebuilt.apply(small, x)
    # dense model with the dropped channels zeroed after BN (scale and bias 0 -> relu(0) = 0)
    zero_rules = {("bn_0", "scale"): (0, keep), ("bn_0", "bias"): (0, keep)}
    y_dense = model.apply(zero_leaves(v, zero_rules), x)
    assert y_small.shape == (2, 3)
    np.testing.assert_allclose(y_small, y_dense, rtol=1e-5, atol=1e-5)
    # the shrunk model is rebuilt from the JSON config alone
    again = M.from_config(json.loads(json.dumps(M.get_config(rebuilt))))
    np.testing.assert_allclose(again.apply(small, x), y_small, atol=1e-6)
    # the dense params give back the dense model
    assert M.rebuild(model, v).widths == ()
    # a bare params dict works too
    assert M.rebuild(model, small["params"]).widths == (("conv_0", 2),)


def test_rebuild_vit_heads_and_mlp_units_equal_zeroed_dense():
    model, v, x = tiny("ViT")
    heads, units = [0, 3], list(range(0, 64, 2))
    a, m = "encoder_0/attn", "encoder_0/mlp"
    rules = {(f"{a}/{q}", "kernel"): (1, heads) for q in ("query", "key", "value")}
    rules.update({(f"{a}/{q}", "bias"): (0, heads) for q in ("query", "key", "value")})
    rules[(f"{a}/out", "kernel")] = (0, heads)
    rules.update(
        {(f"{m}/fc1", "kernel"): (1, units), (f"{m}/fc1", "bias"): (0, units), (f"{m}/fc2", "kernel"): (0, units)}
    )
    small = slice_leaves(v, rules)
    rebuilt = M.rebuild(model, small)
    assert dict(rebuilt.widths) == {a: 2, f"{m}/fc1": 32}
    zero_rules = {(f"{a}/out", "kernel"): (0, heads), (f"{m}/fc2", "kernel"): (0, units)}
    np.testing.assert_allclose(
        rebuilt.apply(small, x), model.apply(zero_leaves(v, zero_rules), x), rtol=1e-5, atol=1e-5
    )


def test_rebuild_resnet_inner_channels_and_residual_error():
    model, v, x = tiny("CifarResNet")
    keep = [1, 3]
    rules = {("layer1_0/conv1", "kernel"): (3, keep), ("layer1_0/conv2", "kernel"): (2, keep)}
    rules.update({("layer1_0/bn1", k): (0, keep) for k in ("scale", "bias", "mean", "var")})
    small = slice_leaves(v, rules)
    rebuilt = M.rebuild(model, small)
    assert rebuilt.widths == (("layer1_0/conv1", 2),)
    zero_rules = {("layer1_0/bn1", "scale"): (0, keep), ("layer1_0/bn1", "bias"): (0, keep)}
    np.testing.assert_allclose(
        rebuilt.apply(small, x), model.apply(zero_leaves(v, zero_rules), x), rtol=1e-5, atol=1e-5
    )
    # shrinking only the residual branch output (not the stem / shortcut) is inconsistent
    bad = {("layer1_0/conv2", "kernel"): (3, keep)}
    bad.update({("layer1_0/bn2", k): (0, keep) for k in ("scale", "bias", "mean", "var")})
    with pytest.raises(ValueError, match="layer1_0"):
        M.rebuild(model, slice_leaves(v, bad))


def test_rebuild_bert_mobilenet_concat():
    # BERT heads + intermediate units
    model, v, ids = tiny("BertEncoder")
    a = "layer_0/attention"
    rules = {(f"{a}/{q}", "kernel"): (1, [1, 2]) for q in ("query", "key", "value")}
    rules.update({(f"{a}/{q}", "bias"): (0, [1, 2]) for q in ("query", "key", "value")})
    rules.update(
        {
            (f"{a}/out", "kernel"): (0, [1, 2]),
            ("layer_0/mlp/fc1", "kernel"): (1, list(range(10))),
            ("layer_0/mlp/fc1", "bias"): (0, list(range(10))),
            ("layer_0/mlp/fc2", "kernel"): (0, list(range(10))),
        }
    )
    small = slice_leaves(v, rules)
    rebuilt = M.rebuild(model, small)
    assert dict(rebuilt.widths) == {a: 2, "layer_0/mlp/fc1": 10}
    hidden, pooled = rebuilt.apply(small, ids)
    assert hidden.shape == (2, 8, 32) and pooled.shape == (2, 32)
    # MobileNet: expanded (depthwise) channels of block_1, coupled through the depthwise conv
    model, v, x = tiny("MobileNetBlockNet")
    keep = [0, 1, 5]
    b = "block_1"
    rules = {
        (f"{b}/expand_conv", "kernel"): (3, keep),
        (f"{b}/dw_conv", "kernel"): (3, keep),
        (f"{b}/project_conv", "kernel"): (2, keep),
    }
    rules.update(
        {(f"{b}/{bn}", k): (0, keep) for bn in ("expand_bn", "dw_bn") for k in ("scale", "bias", "mean", "var")}
    )
    rebuilt = M.rebuild(model, slice_leaves(v, rules))
    assert dict(rebuilt.widths) == {f"{b}/expand_conv": 3, f"{b}/dw_conv": 3}
    assert rebuilt.apply(slice_leaves(v, rules), x).shape == (2, 3)
    # ConcatNet: channels of one branch change the concat offsets of everything after it
    model, v, x = tiny("ConcatNet")
    keep = [0, 2]
    rules = {("branch3_conv", "kernel"): (3, keep)}
    rules.update({("branch3_bn", k): (0, keep) for k in ("scale", "bias", "mean", "var")})
    in_keep = [0, 1] + [2 + k for k in keep]  # concat [branch1 (2), branch3 (3)]
    rules[("dense_0_conv", "kernel")] = (2, in_keep)
    rules[("dense_1_conv", "kernel")] = (2, in_keep + [5, 6])
    rules[("transition_conv", "kernel")] = (2, in_keep + [5, 6, 7, 8])
    small = slice_leaves(v, rules)
    rebuilt = M.rebuild(model, small)
    assert rebuilt.widths == (("branch3_conv", 2),)
    zero_rules = {("branch3_bn", "scale"): (0, keep), ("branch3_bn", "bias"): (0, keep)}
    np.testing.assert_allclose(
        rebuilt.apply(small, x), model.apply(zero_leaves(v, zero_rules), x), rtol=1e-5, atol=1e-5
    )


def test_rebuild_errors_name_the_leaf():
    model, v, _ = tiny("ViT")
    # pruning head_dim cannot be expressed by output widths
    bad = slice_leaves(v, {("encoder_0/attn/query", "kernel"): (2, [0, 1, 2, 3])})
    with pytest.raises(ValueError, match="encoder_0/attn/query"):
        M.rebuild(model, bad)
    # q and k with different numbers of heads
    bad = slice_leaves(v, {("encoder_0/attn/key", "kernel"): (1, [0, 1])})
    with pytest.raises(ValueError, match="encoder_0/attn"):
        M.rebuild(model, bad)
    # a missing leaf
    params = jax.tree.map(lambda a: a, v["params"])
    del params["head"]
    with pytest.raises(ValueError, match="head"):
        M.rebuild(model, {"params": params})
    with pytest.raises(TypeError):
        M.rebuild(object(), v)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(TINY))
def test_config_json_round_trip(name):
    model = TINY[name]()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), model.example_input(1)))
    head = next(k for k in ("head", "fc", "pooler") if k in M.layer_widths(shapes["params"]))
    model = model.clone(widths=((head, 2),))
    cfg = json.loads(json.dumps(M.get_config(model)))
    assert cfg["class"] == type(model).__name__
    again = M.from_config(cfg)
    assert again == model and type(again) is type(model)


def test_config_errors():
    with pytest.raises(ValueError, match="Nope"):
        M.from_config({"class": "Nope", "config": {}})
    with pytest.raises(ValueError, match="bogus"):
        M.from_config({"class": "SmallCNN", "config": {"bogus": 1}})
    assert {"SmallCNN", "ViT", "BertEncoder", "ResNet", "CifarResNet"} <= set(M.registered_models())
    # a typo in widths is caught before it silently builds a default-width layer
    cfg = M.get_config(M.SmallCNN(channels=(4, 8)))
    cfg["config"]["widths"] = [["conv0", 2]]
    with pytest.raises(ValueError, match="conv0"):
        M.from_config(cfg)
    with pytest.raises(ValueError, match="layer1_0"):  # residual branch narrower than its shortcut
        M.check_widths(M.CifarResNet(stage_sizes=(1,), stage_widths=(4,), widths=(("layer1_0/conv2", 2),)))
    with pytest.raises(TypeError, match="widths"):
        M.get_config(M.SmallCNN(widths=(("conv_0",),)))


# --------------------------------------------------------------------------- NNX
def test_linen_and_nnx_give_same_outputs():
    model, v, x = tiny("SmallCNN")
    n = M.NnxSmallCNN(channels=(4, 8), num_classes=3, rngs=nnx.Rngs(3))
    n = M.load_linen_variables(n, v)
    np.testing.assert_allclose(n(x), model.apply(v, x), rtol=1e-5, atol=1e-5)
    y_train, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(n(x, train=True), y_train, rtol=1e-5, atol=1e-5)

    model, v, x = tiny("CifarResNet")
    n = M.NnxCifarResNet(stage_sizes=(1, 1), stage_widths=(4, 8), num_classes=3, rngs=nnx.Rngs(3))
    np.testing.assert_allclose(M.load_linen_variables(n, v)(x), model.apply(v, x), rtol=1e-5, atol=1e-5)

    model, v, x = tiny("ViT")
    n = M.NnxViT(
        image_size=8,
        patch_size=4,
        hidden_size=32,
        num_layers=1,
        num_heads=4,
        mlp_dim=64,
        num_classes=3,
        rngs=nnx.Rngs(3),
    )
    np.testing.assert_allclose(M.load_linen_variables(n, v)(x), model.apply(v, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head"):
        M.load_linen_variables(n, {"params": {k: val for k, val in v["params"].items() if k != "head"}})


def test_nnx_rebuild_shrunk_smallcnn_and_vit():
    n = M.NnxSmallCNN(channels=(4, 8), num_classes=3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    keep = [0, 3]
    rules = {("conv_0", "kernel"): (3, keep), ("conv_1", "kernel"): (2, keep)}
    rules.update({("bn_0", k): (0, keep) for k in ("scale", "bias", "mean", "var")})
    graphdef, state = nnx.split(n)
    small = M.nnx_rebuild(graphdef, slice_leaves(state, rules))
    assert small.conv_0.out_features == 2 and small.bn_0.num_features == 2 and small.conv_1.in_features == 2
    zeroed = M.nnx_rebuild(n, zero_leaves(state, {("bn_0", "scale"): (0, keep), ("bn_0", "bias"): (0, keep)}))
    np.testing.assert_allclose(small(x), zeroed(x), rtol=1e-5, atol=1e-5)
    assert n.conv_0.out_features == 4, "the input module is left untouched"

    vit = M.NnxViT(
        image_size=8,
        patch_size=4,
        hidden_size=32,
        num_layers=1,
        num_heads=4,
        mlp_dim=64,
        num_classes=3,
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    a = "encoder_0/attn"
    rules = {(f"{a}/{q}", "kernel"): (1, [0]) for q in ("query", "key", "value")}  # drop heads 1..
    rules.update({(f"{a}/{q}", "bias"): (0, [0]) for q in ("query", "key", "value")})
    rules[(f"{a}/out", "kernel")] = (0, [0])
    rules.update(
        {
            ("encoder_0/mlp/fc1", "kernel"): (1, [0, 1, 2]),
            ("encoder_0/mlp/fc1", "bias"): (0, [0, 1, 2]),
            ("encoder_0/mlp/fc2", "kernel"): (0, [0, 1, 2]),
        }
    )
    graphdef, state = nnx.split(vit)
    small = M.nnx_rebuild(graphdef, slice_leaves(state, rules))
    assert small.encoder_0.mlp.fc1.out_features == 3
    zeroed = M.nnx_rebuild(
        graphdef,
        zero_leaves(state, {(f"{a}/out", "kernel"): (0, [0]), ("encoder_0/mlp/fc2", "kernel"): (0, [0, 1, 2])}),
    )
    np.testing.assert_allclose(small(x), zeroed(x), rtol=1e-5, atol=1e-5)
