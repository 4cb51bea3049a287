"""Group importance and planning: ratios, rounding, global ranking, ignore rules, budgets."""

import jax
import numpy as np
import pytest
from jax import lax

from jaxprune._src.flops import param_bytes
from jaxprune._src.structured import (
    flops_budget,
    group_scores,
    make_plan,
    param_bytes_budget,
    plan_from_kept,
    shrink,
    shrunk_flops,
    trace_groups,
)


def conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cnn(p, x):
    h = jax.nn.relu(conv(x, p["c1"]["kernel"]) * p["bn1"]["scale"] + p["bn1"]["bias"])
    h = jax.nn.relu(conv(h, p["c2"]["kernel"]) * p["bn2"]["scale"] + p["bn2"]["bias"])
    h = jax.nn.relu(conv(h, p["c3"]["kernel"]))
    return h.mean((1, 2)) @ p["fc"]


def params(seed=0, widths=(16, 32, 24)):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    a, b, c = widths
    return {
        "c1": {"kernel": f(3, 3, 3, a)},
        "bn1": {"scale": f(a), "bias": f(a)},
        "c2": {"kernel": f(3, 3, a, b)},
        "bn2": {"scale": f(b), "bias": f(b)},
        "c3": {"kernel": f(3, 3, b, c)},
        "fc": f(c, 5),
    }


X = np.random.default_rng(1).normal(size=(1, 8, 8, 3)).astype(np.float32)
P = params()
G = trace_groups(cnn, P, X)


def _sizes(plan):
    return {g["name"]: len(g["kept"]) for g in plan.groups}


def test_scores_l1_are_sum_over_members_of_gathered_slices():
    sc = group_scores(P, G, "l1", reduce="sum", normalize=None)
    g1 = next(g for g in G.groups if g.name == "c1/kernel[3]")
    want = (
        np.abs(P["c1"]["kernel"]).sum((0, 1, 2))
        + np.abs(P["bn1"]["scale"])
        + np.abs(P["bn1"]["bias"])
        + np.abs(P["c2"]["kernel"]).sum((0, 1, 3))
    )
    np.testing.assert_allclose(sc[g1.id], want, rtol=1e-5)
    mean = group_scores(P, G, "l1", reduce="mean", normalize="mean")[g1.id]
    assert mean.shape == (16,) and np.isclose(mean.mean(), 1.0)
    mx = group_scores(P, G, "l1", reduce="max", normalize="max")[g1.id]
    assert np.isclose(mx.max(), 1.0)


def test_other_methods():
    g1 = next(g for g in G.groups if g.name == "c1/kernel[3]")
    bn = group_scores(P, G, "bn_scale", normalize=None)[g1.id]
    np.testing.assert_allclose(bn, np.abs(P["bn1"]["scale"]), rtol=1e-6)
    grads = jax.tree.map(np.ones_like, P)
    tay = group_scores(P, G, "taylor", grads=grads, reduce="sum", normalize=None)[g1.id]
    np.testing.assert_allclose(tay, group_scores(P, G, "l1", reduce="sum", normalize=None)[g1.id], rtol=1e-6)
    r1 = group_scores(P, G, "random", key=jax.random.key(0))[g1.id]
    r2 = group_scores(P, G, "random", key=jax.random.key(0))[g1.id]
    np.testing.assert_array_equal(r1, r2)
    custom = jax.tree.map(lambda a: None, P, is_leaf=lambda x: isinstance(x, np.ndarray))
    custom["c1"]["kernel"] = np.broadcast_to(np.arange(16.0), (3, 3, 3, 16))
    sc = group_scores(P, G, scores=custom, normalize=None)[g1.id]
    assert np.all(np.diff(sc) > 0)  # the user's scores decide
    plan = make_plan(P, G, rules=[("c1", 0.5)], scores=custom)
    assert plan.kept(g1.id) == tuple(range(8, 16))
    for bad in (dict(method="taylor"), dict(method="random"), dict(method="nope")):
        with pytest.raises(ValueError, match="taylor|random|method"):
            group_scores(P, G, **bad)


def test_layerwise_ratio_rules_round_to_min_keep_and_ignore():
    plan = make_plan(P, G, 0.5)
    assert _sizes(plan) == {"c1/kernel[3]": 8, "c2/kernel[3]": 16, "c3/kernel[3]": 12}
    plan = make_plan(P, G, rules=[(r"^c2/", 0.25), (r"^c1/", 0.9)])
    with pytest.warns(DeprecationWarning, match="rules="):  # the pre-v1 spelling still works
        assert make_plan(P, G, [(r"^c2/", 0.25), (r"^c1/", 0.9)]) == plan
    assert _sizes(plan) == {"c1/kernel[3]": 2, "c2/kernel[3]": 24}
    plan = make_plan(P, G, 0.6, round_to=8)
    assert all(n % 8 == 0 for n in _sizes(plan).values())
    assert _sizes(plan)["c3/kernel[3]"] == 16  # 24 - 14 = 10 kept, rounded up to 16
    plan = make_plan(P, G, 0.99, min_keep=3)
    assert min(_sizes(plan).values()) == 3
    plan = make_plan(P, G, 0.5, ignore=[r"^c2/"])
    assert "c2/kernel[3]" not in _sizes(plan)
    # the kept units are the highest-scoring ones
    sc = group_scores(P, G)
    for g in plan.groups:
        kept = np.asarray(g["kept"])
        dropped = np.setdiff1d(np.arange(g["size"]), kept)
        assert sc[g["id"]][kept].min() >= sc[g["id"]][dropped].max()


def test_global_ranking_uses_normalized_scores():
    # scale c2's weights by 100: raw magnitudes would protect all of c2, normalised ones do not
    p = jax.tree.map(lambda a: a, P)
    p["c2"]["kernel"] = P["c2"]["kernel"] * 100
    p["bn2"] = {k: v * 100 for k, v in P["bn2"].items()}
    plan = make_plan(p, G, 0.5, scope="global")
    sizes = _sizes(plan)
    assert sizes["c2/kernel[3]"] < 32
    total = sum(g.size for g in G.prunable)
    assert sum(g["size"] - len(g["kept"]) for g in plan.groups) == total // 2
    raw = make_plan(p, G, 0.5, scope="global", normalize=None)
    assert "c2/kernel[3]" not in _sizes(raw) or _sizes(raw)["c2/kernel[3]"] > sizes["c2/kernel[3]"]
    with pytest.raises(ValueError, match="global"):
        make_plan(P, G, rules=[("c1", 0.5)], scope="global")


def test_plan_from_kept_validates():
    g1 = next(g for g in G.groups if g.name == "c1/kernel[3]")
    with pytest.raises(ValueError, match="kept indices"):
        plan_from_kept(G, {g1.id: [0, 99]})
    with pytest.raises(ValueError, match="keeping 0 units"):
        plan_from_kept(G, {g1.id: []})
    with pytest.raises(ValueError, match="not in the graph"):
        plan_from_kept(G, {999: [0]})


@pytest.mark.parametrize("round_to", [1, 4])
def test_flops_budget_hits_target_within_one_round_to_step(round_to):
    p = params(widths=(16, 16, 16))
    g = trace_groups(cnn, p, X)
    dense = shrunk_flops(p, g, plan_from_kept(g, {}))
    plan = make_plan(p, g, budget=flops_budget(0.5, relative=True), round_to=round_to)
    got = shrunk_flops(p, g, plan)
    assert got <= 0.5 * dense
    assert plan.meta["cost"] == got
    # pruning one round_to step less (in the right group) exceeds the target: the cut is tight
    sizes = {g_["id"]: len(g_["kept"]) for g_ in plan.groups}
    assert sizes, "the budget needs some pruning"
    sc = group_scores(p, g)
    worse = []
    for gid, n in sizes.items():
        bigger = {k: v for k, v in sizes.items()}
        bigger[gid] = min(n + round_to, g.groups[gid].size)
        kept = {k: np.sort(np.argsort(-sc[k], kind="stable")[:v]) for k, v in bigger.items()}
        worse.append(shrunk_flops(p, g, plan_from_kept(g, kept)))
    assert max(worse) > 0.5 * dense
    assert all(n % round_to == 0 for n in sizes.values())


def test_param_bytes_budget():
    target = 0.4 * param_bytes(P)
    plan = make_plan(P, G, budget=param_bytes_budget(target))
    assert param_bytes(shrink(P, plan)) <= target
    with pytest.raises(ValueError, match="unreachable"):
        make_plan(P, G, budget=param_bytes_budget(10))


def test_unit_scores_rank_units_and_unscored_groups_stay_whole():
    rng = np.random.default_rng(5)
    g1, g2 = (next(g for g in G.groups if g.name == n) for n in ("c1/kernel[3]", "c2/kernel[3]"))
    us = {g1.name: rng.permutation(g1.size).astype(float), g2.name: rng.random(g2.size)}
    plan = make_plan(P, G, 0.5, unit_scores=us)  # layerwise: each scored group keeps its top half
    assert _sizes(plan) == {g1.name: 8, g2.name: 16}  # c3 has no entry: kept whole
    for g in plan.groups:
        kept = np.zeros(g["size"], bool)
        kept[list(g["kept"])] = True
        assert us[g["name"]][kept].min() > us[g["name"]][~kept].max()
    assert plan.meta["method"] == "unit_scores"
    # global, no normalisation: the lowest raw scores over both groups go first
    us = {g1.name: np.arange(g1.size) + 100.0, g2.name: np.arange(g2.size, dtype=float)}
    plan = make_plan(P, G, 0.5, scope="global", normalize=None, unit_scores=us)
    assert _sizes(plan) == {g2.name: g2.size - (g1.size + g2.size) // 2}
    assert plan.kept(g2.id) == tuple(range(g2.size - len(plan.kept(g2.id)), g2.size))


def test_unit_scores_meet_a_budget():
    us = {g.name: np.random.default_rng(g.id).random(g.size) for g in G.prunable}
    target = 0.5 * param_bytes(P)
    plan = make_plan(P, G, budget=param_bytes_budget(target), unit_scores=us)
    assert param_bytes(shrink(P, plan)) <= target == plan.meta["target"]
    assert plan.meta["method"] == "unit_scores" and plan.meta["pruned_units"] >= 1


def test_unit_scores_bad_input():
    name = next(g.name for g in G.prunable)
    with pytest.raises(ValueError, match="'nope' is not in the traced model"):
        make_plan(P, G, 0.5, unit_scores={"nope": np.ones(3)})
    with pytest.raises(ValueError, match=r"has shape \(3,\), group has 16 units"):
        make_plan(P, G, 0.5, unit_scores={"c1/kernel[3]": np.ones(3)})
    with pytest.raises(ValueError, match="not both"):
        make_plan(P, G, 0.5, unit_scores={name: np.ones(16)}, scores=P)
    with pytest.raises(TypeError, match="mapping"):
        make_plan(P, G, 0.5, unit_scores=[np.ones(16)])
