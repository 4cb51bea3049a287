"""ERK closed form, uniform/override rules, and schedule values."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

SHAPES = {"conv1": (3, 3, 3, 16), "conv2": (3, 3, 16, 32), "conv3": (3, 3, 32, 64), "fc": (64, 10)}


def _params():
    return {name: {"kernel": jnp.zeros(shape), "bias": jnp.zeros(shape[-1])} for name, shape in SHAPES.items()}


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("distribution", ["erk", "er"])
def test_erk_matches_closed_form(sparsity, distribution):
    sp = jp.layer_sparsities(_params(), sparsity, distribution=distribution)
    dens = {k: 1.0 - sp[k]["kernel"] for k in SHAPES}
    sizes = {k: float(np.prod(s)) for k, s in SHAPES.items()}
    # Total kept weights equal (1 - s) N.
    kept = sum(dens[k] * sizes[k] for k in SHAPES)
    assert kept == pytest.approx((1 - sparsity) * sum(sizes.values()), rel=1e-9)
    # Closed form: non-dense layers have density eps * raw with one shared eps.
    dims = {k: (s if distribution == "erk" else s[-2:]) for k, s in SHAPES.items()}
    raw = {k: sum(d) / np.prod(d) for k, d in dims.items()}
    free = [k for k in SHAPES if dens[k] < 1.0]
    eps = {dens[k] / raw[k] for k in free}
    assert max(eps) == pytest.approx(min(eps), rel=1e-9)
    dense = [k for k in SHAPES if dens[k] == 1.0]
    # Dense-forced layers are exactly those the shared eps would push above 1.
    e = eps.pop() if eps else 0.0
    assert all(e * raw[k] >= 1.0 - 1e-9 for k in dense)
    assert all(e * raw[k] < 1.0 for k in free)
    assert all(sp[k]["bias"] is None for k in SHAPES)


def test_erk_forces_small_layers_dense_at_low_sparsity():
    sp = jp.layer_sparsities(_params(), 0.5, distribution="erk")
    assert sp["conv1"]["kernel"] == 0.0  # 432 weights, high raw density -> dense
    assert sp["conv3"]["kernel"] > 0.5


def test_uniform_and_override_rules():
    sp = jp.layer_sparsities(_params(), 0.7, rules=[("fc", None), ("conv1", 0.2)])
    assert sp["fc"]["kernel"] is None and sp["conv1"]["kernel"] == 0.2 and sp["conv2"]["kernel"] == 0.7


def test_prunable_rules_first_match_wins():
    ok = jp.prunable_tree(_params(), rules=[("conv2/kernel", False), ("conv", True), ("bias", True)])
    assert ok["conv2"]["kernel"] is False and ok["conv1"]["kernel"] is True and ok["fc"]["bias"] is True
    assert ok["fc"]["kernel"] is True  # default: ndim >= 2


def test_polynomial_schedule_is_cubic_gmp():
    s = jp.polynomial(0.9, begin=10, end=110, every=10, initial_sparsity=0.1)
    steps = np.arange(0, 130)
    vals = np.asarray([float(s.sparsity(t)) for t in steps])
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(0.1)
    for t in range(10, 111, 10):
        expect = 0.9 + (0.1 - 0.9) * (1 - (t - 10) / 100) ** 3
        assert vals[t] == pytest.approx(expect, abs=1e-6)
        assert vals[t + 5] == pytest.approx(expect, abs=1e-6)  # held between updates
    assert vals[-1] == pytest.approx(0.9)
    upd = [t for t in steps if bool(s.is_update(t))]
    assert upd == list(range(10, 111, 10))


def test_one_shot_and_periodic_update_steps():
    o = jp.one_shot(0.8, step=5)
    assert [t for t in range(20) if bool(o.is_update(t))] == [5]
    assert float(o.sparsity(4)) == 0.0 and float(o.sparsity(6)) == pytest.approx(0.8)
    p = jp.periodic(0.9, every=4, begin=2, end=15)
    assert [t for t in range(20) if bool(p.is_update(t))] == [2, 6, 10, 14]
    assert not bool(jp.no_update(0.5).is_update(0))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity_is_rejected_with_its_name(bad):
    with pytest.raises(ValueError, match="sparsity"):
        jp.layer_sparsities(_params(), bad)
    with pytest.raises(ValueError, match="sparsity"):
        jp.prune(_params(), bad)
    with pytest.raises(ValueError, match="final_sparsity"):
        jp.polynomial(bad, begin=0, end=10, every=1)


def test_bad_schedule_steps():
    with pytest.raises(ValueError, match="end"):
        jp.polynomial(0.5, begin=10, end=10, every=1)
    with pytest.raises(ValueError, match="every"):
        jp.periodic(0.5, every=0)
