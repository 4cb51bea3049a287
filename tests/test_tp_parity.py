"""Torch-Pruning parity of the group importance options (``p``, ``bias``, ``reduce``, ``normalize``).

The unit tests at the top use a tiny traced pytree with hand-computed scores
and need no torch. The ResNet-18 tests prune a torchvision ResNet-18 (BatchNorm
affine parameters and running statistics randomised to look trained, conv
weights perturbed) with Torch-Pruning 1.6's ``MetaPruner`` and
``GroupMagnitudeImportance``, read which channels every layer kept by matching
the pruned weights against the originals, and check that ``make_plan`` with the
same settings on the converted (unpruned) model keeps exactly the same channels
in all 61 pruned parameter leaves (20 conv kernels, 20 BN scales, 20 BN
biases, the fc kernel's input axis).
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune._src.structured.importance import NORMALIZERS, REDUCTIONS, group_scores, normalize_scores


# ------------------------------------------------------------------------------------ tiny pytree
def _tiny():
    """dense (2 -> 3, with bias) -> BN-like affine with running stats -> tanh -> out (3 -> 1).

    Per unit (hand-computed), |.| summed over the non-unit axes:
      dense/kernel [5, 2, 4]   dense/bias [0.5, 5, 1]   norm/scale [2, 1, 1]
      norm/bias    [1, 1, 2]   out/kernel [1, 2, 2]     (batch_stats: never counted)
    """
    v = {
        "params": {
            "dense": {"kernel": jnp.array([[1.0, -2.0, 3.0], [4.0, 0.0, -1.0]]), "bias": jnp.array([0.5, -5.0, 1.0])},
            "norm": {"scale": jnp.array([2.0, 1.0, -1.0]), "bias": jnp.array([1.0, 1.0, 2.0])},
            "out": {"kernel": jnp.array([[1.0], [2.0], [-2.0]])},
        },
        "batch_stats": {"norm": {"mean": jnp.array([100.0, 0.0, 0.0]), "var": jnp.array([1.0, 1.0, 50.0])}},
    }

    def f(v, x):
        p, s = v["params"], v["batch_stats"]
        h = x @ p["dense"]["kernel"] + p["dense"]["bias"]
        h = (h - s["norm"]["mean"]) / jnp.sqrt(s["norm"]["var"] + 1e-5) * p["norm"]["scale"] + p["norm"]["bias"]
        return jnp.tanh(h) @ p["out"]["kernel"]

    g = jp.trace_groups(f, v, jnp.ones((1, 2)))
    (grp,) = g.prunable
    return v, g, grp.id


def _sc(v, g, gid, **kw):
    return group_scores(v, g, normalize=kw.pop("normalize", None), **kw)[gid]


def test_tiny_group_members():
    v, g, gid = _tiny()
    (grp,) = g.prunable
    assert grp.size == 3 and grp.roots[0].path == "params/dense/kernel"
    assert {m.path for m in grp.members} >= {"params/dense/bias", "params/norm/bias", "batch_stats/norm/mean"}


def test_bias_option_hand_computed():
    v, g, gid = _tiny()
    # bias=True (default, unchanged): mean of 5 members
    np.testing.assert_allclose(
        _sc(v, g, gid), [(5 + 0.5 + 2 + 1 + 1) / 5, (2 + 5 + 1 + 1 + 2) / 5, (4 + 1 + 1 + 2 + 2) / 5]
    )
    # bias=False: kernel, scale, out only (Torch-Pruning's default)
    np.testing.assert_allclose(_sc(v, g, gid, bias=False), [8 / 3, 5 / 3, 7 / 3])
    # the choice matters: at ratio 1/3 the pruned unit differs
    assert jp.make_plan(v, g, 1 / 3).groups[0]["kept"] == (1, 2)  # [1.9, 2.2, 2.0]: unit 0 goes
    assert jp.make_plan(v, g, 1 / 3, bias=False).groups[0]["kept"] == (0, 2)  # unit 1 goes
    np.testing.assert_allclose(_sc(v, g, gid, reduce="max"), [5, 5, 4])
    np.testing.assert_allclose(_sc(v, g, gid, reduce="max", bias=False), [5, 2, 4])


def test_running_stats_never_count():
    v, g, gid = _tiny()
    w = copy.deepcopy(v)
    w["batch_stats"]["norm"]["mean"] = jnp.array([-7.0, 1e6, 3.0])
    w["batch_stats"]["norm"]["var"] = jnp.array([9.0, 9.0, 1e-3])
    for kw in (dict(), dict(bias=False), dict(method="l2", reduce="max"), dict(method="magnitude", p=3)):
        np.testing.assert_array_equal(_sc(v, g, gid, **kw), _sc(w, g, gid, **kw))


def test_magnitude_p_hand_computed():
    v, g, gid = _tiny()
    # p=2 is a sum of squares (Torch-Pruning's p=2), not a norm: kernel [17, 4, 10], scale [4, 1, 1], out [1, 4, 4]
    want2 = [22 / 3, 9 / 3, 15 / 3]
    np.testing.assert_allclose(_sc(v, g, gid, method="l2", bias=False), want2)
    np.testing.assert_allclose(_sc(v, g, gid, method="magnitude", bias=False), want2)  # default p=2
    np.testing.assert_allclose(_sc(v, g, gid, method="magnitude", p=2, bias=False), want2)
    np.testing.assert_allclose(
        _sc(v, g, gid, method="magnitude", p=1, bias=False), _sc(v, g, gid, method="l1", bias=False)
    )
    np.testing.assert_allclose(_sc(v, g, gid, method="l1", p=1, bias=False), [8 / 3, 5 / 3, 7 / 3])
    # p=3: kernel [1+64, 8, 27+1], scale [8, 1, 1], out [1, 8, 8]
    np.testing.assert_allclose(_sc(v, g, gid, method="magnitude", p=3, bias=False), [74 / 3, 17 / 3, 37 / 3])
    # p=0.5 with biases: kernel [1+2, 1.414.., 1.732..+1], dense bias sqrt, scale sqrt, norm bias sqrt, out sqrt
    r = np.sqrt
    want = np.array([1 + 2 + r(0.5) + r(2) + 1 + 1, r(2) + r(5) + 1 + 1 + r(2), r(3) + 1 + 1 + 1 + r(2) + r(2)]) / 5
    np.testing.assert_allclose(_sc(v, g, gid, method="magnitude", p=0.5), want)


@pytest.mark.parametrize(
    "reduce,want",
    [
        ("mean", [8 / 3, 5 / 3, 7 / 3]),
        ("sum", [8, 5, 7]),
        ("max", [5, 2, 4]),
        ("prod", [5 * 2 * 1, 2 * 1 * 2, 4 * 1 * 2]),
        ("first", [5, 2, 4]),
    ],
)
def test_reductions_hand_computed(reduce, want):
    v, g, gid = _tiny()
    np.testing.assert_allclose(_sc(v, g, gid, bias=False, reduce=reduce), want)


def test_first_is_the_first_root_even_with_biases():
    v, g, gid = _tiny()
    np.testing.assert_allclose(_sc(v, g, gid, reduce="first"), [5, 2, 4])  # dense/kernel, not a bias or scale


def test_multi_index_member_sums_its_indices():
    # a (1, 2, C) map flattened into a dense layer: each channel owns 2 rows of `b`, which are summed
    # within the member (Torch-Pruning's scatter_add for 'mean'/'sum') before the members are reduced
    p = {"a": jnp.array([[1.0, 2.0], [3.0, -4.0]]), "b": jnp.array([[1.0], [10.0], [2.0], [20.0]])}
    g = jp.trace_groups(lambda p, x: (x @ p["a"]).reshape(1, -1) @ p["b"], p, jnp.ones((1, 2, 2)))
    (grp,) = g.prunable
    assert {m.path: m.index_map.shape[1] for m in grp.members} == {"a": 1, "b": 2}
    # unit 0: a col [1, 3] -> 4; b rows 0, 2 -> 3. unit 1: a col [2, -4] -> 6; b rows 1, 3 -> 30
    s = lambda **kw: group_scores(p, g, normalize=None, **kw)[grp.id].tolist()  # noqa: E731
    assert s() == [3.5, 18.0] and s(reduce="sum") == [7.0, 36.0] and s(reduce="max") == [4.0, 30.0]
    assert s(method="l2") == [(10 + 5) / 2, (20 + 500) / 2]


def test_normalizers_hand_computed():
    x = np.array([1.0, 2.0, 3.0, 6.0])
    close = np.testing.assert_allclose
    close(normalize_scores(x, "mean"), x / 3)
    close(normalize_scores(x, "max"), x / 6)
    close(normalize_scores(x, "sum"), x / 12)
    close(normalize_scores(x, "standardize"), (x - 3) / np.sqrt(3.5), rtol=1e-9)  # population std sqrt(14/4)
    close(normalize_scores(x, "gaussian"), (x - 3) / (np.sqrt(14 / 3) + 1e-8))  # TP: unbiased std
    close(normalize_scores(x, "minmax"), [0, 0.2, 0.4, 1.0], atol=1e-8)
    close(normalize_scores(x, "standarization"), normalize_scores(x, "minmax"))  # TP's name for min-max
    close(normalize_scores(x, "lamp"), [1 / 12, 2 / 11, 3 / 9, 6 / 6])
    close(normalize_scores(x[::-1].copy(), "lamp"), [1.0, 3 / 9, 2 / 11, 1 / 12])
    close(normalize_scores(x, "sentinel_0.5"), x / (3 + 1e-8))  # k = int(0.5 * 4) = 2: the 3rd smallest
    close(normalize_scores(x, "sentinel_0"), x / (1 + 1e-8))
    assert normalize_scores(x, None) is x and normalize_scores(x, "none") is x


def test_bad_options_raise():
    v, g, gid = _tiny()
    with pytest.raises(ValueError, match="reduce"):
        group_scores(v, g, reduce="gate")
    for bad in ("standardise", "sentinel_1.5", "sentinel_x"):
        with pytest.raises(ValueError, match="normalize"):
            group_scores(v, g, normalize=bad)
    with pytest.raises(ValueError, match="p=1"):
        group_scores(v, g, "l1", p=2)
    with pytest.raises(ValueError, match="magnitude methods"):
        group_scores(v, g, "bn_scale", p=2)
    for p in (0, -1, float("nan"), "2", True):
        with pytest.raises(ValueError, match="positive"):
            group_scores(v, g, "magnitude", p=p)
    with pytest.raises(ValueError, match="reduce"):
        jp.make_plan(v, g, 0.5, reduce="gate")


def test_preset_exposed_and_recorded():
    assert jp.TORCH_PRUNING_DEFAULTS == {
        "method": "magnitude",
        "p": 2,
        "bias": False,
        "reduce": "mean",
        "normalize": "mean",
    }
    assert "TORCH_PRUNING_DEFAULTS" in jp.__all__
    assert set(REDUCTIONS) >= {"mean", "sum", "max", "prod", "first"}
    assert set(NORMALIZERS) >= {"mean", "max", "sum", "gaussian", "standarization", "lamp"}
    v, g, gid = _tiny()
    plan = jp.make_plan(v, g, 1 / 3, **jp.TORCH_PRUNING_DEFAULTS)
    assert plan.meta["p"] == 2 and plan.meta["bias"] is False and plan.meta["method"] == "magnitude"
    assert plan.groups[0]["kept"] == (0, 2)  # scores [22/3, 3, 5]
    assert "p" not in jp.make_plan(v, g, 1 / 3).meta  # default options: meta as before


def test_normalizers_and_reductions_match_torch_pruning_functions():
    torch = pytest.importorskip("torch")
    tp = pytest.importorskip("torch_pruning")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 5.0, size=37)
    imp = tp.importance.GroupMagnitudeImportance()
    for name in ("mean", "max", "sum", "gaussian", "standarization", "lamp", "sentinel_0.25", None):
        want = imp._normalize(torch.tensor(x, dtype=torch.float32), name).numpy()  # TP scores are float32
        np.testing.assert_allclose(normalize_scores(x, name), want, rtol=2e-5, atol=1e-6, err_msg=str(name))
    # reductions over members mapping one index per unit (TP's root_idxs = arange)
    vecs = [rng.uniform(0.1, 2.0, size=8) for _ in range(4)]
    for red in ("mean", "sum", "max", "prod", "first"):
        want = (
            tp.importance.GroupMagnitudeImportance(group_reduction=red)
            ._reduce([torch.tensor(u, dtype=torch.float32) for u in vecs], [list(range(8))] * 4)
            .numpy()
        )
        got = {"mean": np.mean, "sum": np.sum, "max": np.max, "prod": np.prod, "first": lambda s, axis: s[0]}[red](
            np.stack(vecs), axis=0
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=red)


# -------------------------------------------------------------------------------- ResNet-18 vs TP
def _flax_name(n: str) -> str:
    n = n.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
    parts = n.split(".")
    if parts[0].startswith("layer") and len(parts) > 2:
        return f"{parts[0]}_{parts[1]}/" + "/".join(parts[2:])
    return "/".join(parts)


def _match(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Index in ``old`` of each row of ``new``: rows compared exactly, each must occur once."""
    lut: dict[bytes, list[int]] = {}
    for i, r in enumerate(old):
        lut.setdefault(r.tobytes(), []).append(i)
    idx = [lut.get(r.tobytes(), []) for r in new]
    assert all(len(c) == 1 for c in idx), "pruned rows are not unique rows of the original"
    return np.array([c[0] for c in idx])


@pytest.fixture(scope="module")
def resnet():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    tp = pytest.importorskip("torch_pruning")
    from jaxprune._src.convert.torchvision import from_torchvision_resnet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # look trained: BN affine and statistics away from (1, 0, 0, 1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
                m.running_mean.normal_(0.0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=gen))
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    model, variables = from_torchvision_resnet(sd)
    graph = jp.trace_groups(lambda v, x: model.apply(v, x), variables, jnp.ones((1, 64, 64, 3)))
    return dict(
        torch=torch,
        tp=tp,
        net=net,
        sd={k: v.numpy() for k, v in sd.items()},
        variables=variables,
        graph=graph,
        cache={},
    )


def _tp_kept(r, ratio: float = 0.5, global_pruning: bool = False, **imp_kw) -> dict[str, dict[int, tuple]]:
    """Run TP's MetaPruner on a copy; ``{flax leaf path: {axis: kept indices}}`` read from the pruned weights."""
    key = (ratio, global_pruning, tuple(sorted(imp_kw.items())))
    if key in r["cache"]:
        return r["cache"][key]
    torch, tp, sd = r["torch"], r["tp"], r["sd"]
    m = copy.deepcopy(r["net"])
    tp.pruner.MetaPruner(
        m,
        torch.randn(1, 3, 64, 64),
        importance=tp.importance.GroupMagnitudeImportance(**imp_kw),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=[m.fc],
    ).step()
    mods = dict(m.named_modules())
    out: dict[str, dict[int, tuple]] = {}
    for n, mod in mods.items():  # BN: weights are distinct values; check bias and running stats follow
        if isinstance(mod, torch.nn.BatchNorm2d):
            k = _match(mod.weight.detach().numpy()[:, None], sd[n + ".weight"][:, None])
            for t in ("weight", "bias", "running_mean", "running_var"):
                np.testing.assert_array_equal(getattr(mod, t).detach().numpy(), sd[f"{n}.{t}"][k])
            out[f"params/{_flax_name(n)}/scale"] = out[f"params/{_flax_name(n)}/bias"] = {0: tuple(k.tolist())}
    for n, mod in mods.items():
        if isinstance(mod, torch.nn.Conv2d):  # out channels = its BN's; in channels by matching, then exact check
            bn = n[:-1] + "1" if n.endswith("downsample.0") else n.replace("conv", "bn")
            outs = np.array(out[f"params/{_flax_name(bn)}/scale"][0])
            w0, w = sd[n + ".weight"][outs], mod.weight.detach().numpy()
            ins = _match(
                w.transpose(1, 0, 2, 3).reshape(w.shape[1], -1), w0.transpose(1, 0, 2, 3).reshape(w0.shape[1], -1)
            )
            np.testing.assert_array_equal(w, w0[:, ins])
            out[f"params/{_flax_name(n)}/kernel"] = {3: tuple(outs.tolist()), 2: tuple(ins.tolist())}
        elif isinstance(mod, torch.nn.Linear):
            k = _match(mod.weight.detach().numpy().T, sd[n + ".weight"].T)
            np.testing.assert_array_equal(mod.weight.detach().numpy(), sd[n + ".weight"][:, k])
            out[f"params/{_flax_name(n)}/kernel"] = {0: tuple(k.tolist())}
    r["cache"][key] = out
    return out


def _compare(r, tp_leaves, plan) -> tuple[int, int, list[str]]:
    """(matching leaves, leaves pruned by either, mismatching paths) over the params leaves."""
    shapes = r["graph"].leaf_shapes
    ours = {p: ax for p, ax in plan.leaves.items() if p.startswith("params/")}
    paths = sorted(set(tp_leaves) | set(ours))
    bad = [
        p for p in paths if {a: k for a, k in tp_leaves.get(p, {}).items() if len(k) != shapes[p][a]} != ours.get(p, {})
    ]
    # running statistics follow their BN's scale in the plan
    for p, ax in plan.leaves.items():
        if p.startswith("batch_stats/"):
            assert ax == plan.leaves["params/" + p.split("/", 1)[1].rsplit("/", 1)[0] + "/scale"]
    return len(paths) - len(bad), len(paths), bad


TP = jp.TORCH_PRUNING_DEFAULTS


@pytest.mark.parametrize(
    "tp_kw,jp_kw",
    [
        (dict(p=1), dict(TP, p=1)),  # GroupMagnitudeImportance(p=1)
        (dict(), dict(TP)),  # GroupMagnitudeImportance(): the preset as is
        (dict(p=1, group_reduction="max"), dict(TP, p=1, reduce="max")),
        (dict(p=2, group_reduction="sum"), dict(TP, reduce="sum")),
        (dict(p=1, group_reduction="prod"), dict(TP, p=1, reduce="prod")),
        (dict(p=1, bias=True), dict(TP, p=1, bias=True)),
    ],
    ids=["p1", "preset_p2", "p1_max", "p2_sum", "p1_prod", "p1_bias"],
)
def test_resnet18_layerwise_matches_torch_pruning(resnet, tp_kw, jp_kw):
    plan = jp.make_plan(resnet["variables"], resnet["graph"], 0.5, **jp_kw)
    ok, n, bad = _compare(resnet, _tp_kept(resnet, **tp_kw), plan)
    assert (ok, n) == (61, 61), bad


@pytest.mark.parametrize("normalizer", ["mean", "standarization", "gaussian", "lamp", "sentinel_0.5"])
def test_resnet18_global_normalizers_match_torch_pruning(resnet, normalizer):
    # global ranking is where normalizers matter (layerwise, every one of them keeps the order)
    plan = jp.make_plan(resnet["variables"], resnet["graph"], 0.5, scope="global", **dict(TP, normalize=normalizer))
    ok, n, bad = _compare(resnet, _tp_kept(resnet, global_pruning=True, normalizer=normalizer), plan)
    assert (ok, n) == (61, 61), bad


def test_resnet18_old_default_differs_from_torch_pruning(resnet):
    # the historical default (biases counted) picks other channels in (almost) every layer
    tp_leaves = _tp_kept(resnet, p=1)
    ok, n, bad = _compare(resnet, tp_leaves, jp.make_plan(resnet["variables"], resnet["graph"], 0.5, method="l1"))
    assert n == 61 and ok <= 10, (ok, n)
    ok, n, _ = _compare(
        resnet, tp_leaves, jp.make_plan(resnet["variables"], resnet["graph"], 0.5, method="l1", bias=False)
    )
    assert (ok, n) == (61, 61)  # l1 with bias=False is the same as the preset with p=1


def test_resnet18_first_reduction_differs_only_where_tp_roots_elsewhere(resnet):
    """'first' scores a group by one layer; TP's first layer of a residual stage group is its downsample conv
    (its dependency graph's module order), jaxprune's is the group's first root by path (``layerX_0/conv2``).
    The other 9 groups agree, and scoring the 3 stage groups by their downsample conv gives 61/61."""
    r = resnet
    v, graph = r["variables"], r["graph"]
    tp_leaves = _tp_kept(r, p=1, group_reduction="first")
    stage = [g for g in graph.prunable if any("downsample_conv" in m.path for m in g.roots)]
    assert len(stage) == 3 and all(g.roots[0].path.endswith("_0/conv2/kernel") for g in stage)
    touched = {m.path for g in stage for m in g.members if m.path.startswith("params/")}
    ok, n, bad = _compare(r, tp_leaves, jp.make_plan(v, graph, 0.5, **dict(TP, p=1, reduce="first")))
    assert bad and set(bad) <= touched and ok == 61 - len(bad)
    # the same rule with TP's choice of first layer
    leaves = dict(jp.leaves_with_paths(v))
    unit = {}
    for g in graph.prunable:
        m = next((m for m in g.roots if "downsample_conv" in m.path), g.roots[0])
        w = np.abs(np.asarray(leaves[m.path], np.float64))
        unit[g.name] = w.sum(axis=tuple(a for a in range(w.ndim) if a != m.axis))
    ok, n, bad = _compare(r, tp_leaves, jp.make_plan(v, graph, 0.5, unit_scores=unit))
    assert (ok, n) == (61, 61), bad


def test_resnet18_count_rounding_differs_from_torch_pruning(resnet):
    """Same ranking, different kept count when ``size * ratio`` is not an integer: TP keeps
    ``int(size * (1 - ratio))``, ``make_plan`` prunes ``floor(size * ratio)``, so at ratio 0.3 it keeps one
    unit more per group (45 of 64 vs TP's 44) and TP's kept channels are a subset of ours."""
    r = resnet
    tp_leaves = _tp_kept(r, ratio=0.3, p=1)
    plan = jp.make_plan(r["variables"], r["graph"], 0.3, **dict(TP, p=1))
    for path, axes in tp_leaves.items():
        for a, theirs in axes.items():
            size = r["graph"].leaf_shapes[path][a]
            if path == "params/conv1/kernel" and a == 2:
                continue  # image channels
            ours = plan.leaves[path][a]
            assert len(theirs) == int(size * 0.7) and len(ours) == size - int(np.floor(size * 0.3 + 1e-9))
            assert len(ours) == len(theirs) + 1 and set(theirs) < set(ours), path
