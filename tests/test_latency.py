"""Latency-aware planning: the budget logic on synthetic latency tables, the cache, bad inputs, a measurement smoke run.

No timing is asserted: synthetic tables give exact expectations, and the measured table is
only checked for structure and for what holds by construction (the calibration).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import make_plan, models, trace_groups
from jaxprune._src.structured.budget import latency_budget
from jaxprune._src.structured.latency import LatencyTable, measure_latency, validate_latency

P = {
    "a": jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32),
    "b": jnp.ones((8, 3)),
    "c": jnp.asarray(np.random.default_rng(1).normal(size=(4, 8)), jnp.float32),
    "d": jnp.ones((8, 3)),
}


def _f(p, x):
    return jnp.tanh(x @ p["a"]) @ p["b"] + jnp.tanh(x @ p["c"]) @ p["d"]


G = trace_groups(_f, P, jnp.ones((2, 4)))
A, C = (g.name for g in G.prunable)  # 'a[1]', 'c[1]'
GID = {g.name: g.id for g in G.prunable}
ONES = {A: np.ones(8), C: np.ones(8)}  # equal importance


def _table(prof_a, prof_c) -> LatencyTable:
    """A synthetic table: one op per group, time = profile[width - 1] (widths 1..8 probed)."""
    probes = [
        {"op": "dot_general", "full_s": float(pr[-1]), "factors": [{"widths": list(range(1, 9)), "times": list(pr)}]}
        for pr in (prof_a, prof_c)
    ]
    sites = [
        {"probe": 0, "groups": [A], "out_elems": 16, "out_groups": [A]},
        {"probe": 1, "groups": [C], "out_elems": 16, "out_groups": [C]},
    ]
    return LatencyTable(key={}, groups={A: 8, C: 8}, probes=probes, sites=sites)


LINEAR = _table([2.0 * w for w in range(1, 9)], [1.0 * w for w in range(1, 9)])  # A: 2 s/unit, C: 1 s/unit


def _kept(plan, name):
    k = plan.kept(GID[name])
    return 8 if k is None else len(k)


@pytest.mark.parametrize("target", [0.9, 0.75, 0.5, 0.3])
def test_plan_meets_the_budget(target):
    plan = make_plan(P, G, budget=latency_budget(target, table=LINEAR))
    dense = LINEAR.predict_widths({})
    assert LINEAR.predict(plan) <= target * dense + 1e-9
    assert plan.meta["budget"] == "latency" and plan.meta["cost"] == pytest.approx(LINEAR.predict(plan))
    # absolute seconds
    plan_s = make_plan(P, G, budget=latency_budget(target * dense, relative=False, table=LINEAR))
    assert LINEAR.predict(plan_s) <= target * dense + 1e-9


def test_equal_importance_cuts_the_slower_per_unit_group_first():
    plan = make_plan(P, G, budget=latency_budget(18 / 24, table=LINEAR), unit_scores=ONES)
    assert (_kept(plan, A), _kept(plan, C)) == (5, 8)  # 3 units of A save 6 s: 24 -> 18
    swapped = _table([1.0 * w for w in range(1, 9)], [2.0 * w for w in range(1, 9)])
    plan = make_plan(P, G, budget=latency_budget(18 / 24, table=swapped), unit_scores=ONES)
    assert (_kept(plan, A), _kept(plan, C)) == (8, 5)


def test_importance_still_counts():
    # A saves 2 s per unit and C 1 s, but A's units are 4x as important (raw scores): C is cut instead
    plan = make_plan(
        P,
        G,
        budget=latency_budget(20 / 24, table=LINEAR),
        unit_scores={A: 4 * np.ones(8), C: np.ones(8)},
        normalize=None,
    )
    assert _kept(plan, A) == 8 and _kept(plan, C) == 4


def test_a_step_shaped_table_picks_the_width_at_the_step():
    step = _table([1, 1, 1, 1, 2, 2, 2, 2], [0.05 * w for w in range(1, 9)])  # A: 5..8 cost as much as 8
    dense = step.predict_widths({})
    plan = make_plan(P, G, budget=latency_budget((dense - 0.5) / dense, table=step), unit_scores=ONES)
    assert _kept(plan, A) == 4  # cutting to 5, 6 or 7 saves nothing; 4 is the step
    assert _kept(plan, C) == 8


def test_min_keep_max_ratio_round_to_and_ignore_are_honoured():
    plan = make_plan(P, G, budget=latency_budget(0.5, table=LINEAR), unit_scores=ONES, max_ratio=0.5, round_to=2)
    for name in (A, C):
        assert _kept(plan, name) >= 4 and _kept(plan, name) % 2 == 0
    plan = make_plan(P, G, budget=latency_budget(0.8, table=LINEAR), unit_scores=ONES, min_keep=6)
    assert min(_kept(plan, A), _kept(plan, C)) >= 6
    plan = make_plan(P, G, budget=latency_budget(0.8, table=LINEAR), ignore=["^a$"])
    assert _kept(plan, A) == 8 and _kept(plan, C) < 8
    with pytest.raises(ValueError, match="unreachable"):
        make_plan(P, G, budget=latency_budget(0.2, table=LINEAR), max_ratio=0.5)


def test_an_op_of_two_groups_reads_their_interaction_on_the_diagonal():
    probe = {
        "op": "dot_general",
        "full_s": 2.0,
        "factors": [{"widths": [4, 8], "times": [1.0, 2.0]}, {"widths": [4, 8], "times": [1.0, 2.0]}],
        "diag": [1.5, 2.0],  # both at 4: 1.5 s, not the product's 0.5 s
    }
    t = LatencyTable({}, {A: 8, C: 8}, [probe], [{"probe": 0, "groups": [A, C], "out_elems": 1, "out_groups": []}])
    assert t.predict_widths({}) == 2.0
    assert t.predict_widths({A: 4}) == t.predict_widths({C: 4}) == 1.0  # one group cut: its own profile
    assert t.predict_widths({A: 4, C: 4}) == pytest.approx(1.5)  # both cut: the diagonal
    assert t.predict_widths({A: 3, C: 4}) == pytest.approx(1.5)  # step function: 3 costs what 4 costs
    assert LatencyTable.from_dict(json.loads(json.dumps(t.to_dict()))).predict_widths({A: 4, C: 4}) == 1.5


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="target"):
        latency_budget("half")
    with pytest.raises(ValueError, match="target"):
        latency_budget(0.0)
    with pytest.raises(ValueError, match="target"):
        latency_budget(1.5)
    with pytest.raises(TypeError, match="table"):
        latency_budget(0.5, table={"not": "a table"})
    with pytest.raises(TypeError, match="plan"):
        LINEAR.predict({"groups": []})
    with pytest.raises(ValueError, match="nope"):
        LINEAR.predict_widths({"nope": 3})
    with pytest.raises(ValueError, match="fractions"):
        measure_latency(P, G, fractions=[0.5, 1.5])
    with pytest.raises(ValueError, match="reps"):
        measure_latency(P, G, reps=0)
    with pytest.raises(TypeError, match="graph"):
        measure_latency(P, "graph")
    other = dict(LINEAR.to_dict(), key={"graph_hash": "0" * 16})
    with pytest.raises(ValueError, match="another model"):
        make_plan(P, G, budget=latency_budget(0.5, table=LatencyTable.from_dict(other)))
    with pytest.raises(ValueError, match="LatencyTable"):
        LatencyTable.from_dict({"groups": {}})


def test_cache_round_trip_and_key_mismatch(tmp_path):
    path = tmp_path / "lat.json"
    t = measure_latency(P, G, coarse=True, reps=1, warmup=0, cache=path)
    assert set(t.key) >= {"backend", "device_kind", "dtype", "batch", "graph_hash"}
    assert t.key["batch"] == 2 and t.key["dtype"] == "float32"
    again = measure_latency(P, G, coarse=True, reps=1, warmup=0, cache=path)
    assert again.to_dict() == t.to_dict()  # read from the cache, not re-measured
    assert LatencyTable.load(path, t.key).to_dict() == json.loads(path.read_text())
    with pytest.raises(ValueError, match="batch"):
        LatencyTable.load(path, dict(t.key, batch=64))
    finer = measure_latency(P, G, fractions=[0.5], reps=1, warmup=0, cache=path)  # other key: re-measured
    assert finer.key["fractions"] == [0.5] and LatencyTable.load(path).key["fractions"] == [0.5]
    assert [p.name for p in tmp_path.iterdir()] == ["lat.json"]  # no temporary file left


def test_quick_measurement_on_a_tiny_cnn():
    model = models.SmallCNN(channels=(8, 16), num_classes=3, image_size=8)
    v = model.init(jax.random.key(0), model.example_input(2))
    g = trace_groups(lambda v, x: model.apply(v, x, train=False), v, model.example_input(2))
    t = measure_latency(v, g, coarse=True, reps=1, warmup=0)
    assert t.dense_s > 0 and len(t.sites) >= 3 and t.meta["probes"] <= len(t.sites)
    assert t.predict_widths({}) == pytest.approx(t.dense_s)  # calibrated on the dense model by construction
    for s in t.sites:
        for f in t.probes[s["probe"]]["factors"]:
            assert f["widths"] == sorted(f["widths"]) and len(f["times"]) == len(f["widths"])
    # A model this small is dispatch-bound: whether 0.6x is reachable depends on the measured times, so
    # either the plan meets the budget or the documented "unreachable" error names the floor (the budget
    # logic itself is tested on synthetic tables above; timings are never asserted).
    try:
        plan = make_plan(v, g, budget=latency_budget(0.6, table=t))
        assert t.predict(plan) <= 0.6 * t.dense_s + 1e-12
    except ValueError as e:
        assert "unreachable" in str(e) and "narrowest" in str(e), e
        plan = make_plan(v, g, 0.5)
    rows = validate_latency(v, g, t, {"planned": plan}, reps=1, warmup=0)
    assert [r["name"] for r in rows] == ["dense", "planned"]
    assert all(r["measured_s"] > 0 and np.isfinite(r["error"]) for r in rows)
