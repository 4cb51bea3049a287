"""The optax wrapper in a jit-compiled training step on real Flax models (Linen and NNX)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), name="conv")(x)
        x = nn.LayerNorm(name="norm")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        x = nn.Dense(16, name="hidden")(x)
        return nn.Dense(3, name="head")(nn.relu(x))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 8, (3, 3), rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm(self.conv(x))).mean(axis=(1, 2))
        return self.head(nnx.relu(self.hidden(x)))


def _data(n=32):
    x = jax.random.normal(jax.random.key(1), (n, 6, 6, 2))
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(jnp.int32) + (x[..., 0].mean(axis=(1, 2)) > 0.2)
    return x, y


def _loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train(apply_fn, params, opt, steps, x, y):
    traces = []

    def step(params, state):
        traces.append(1)  # runs only while tracing
        loss, grads = jax.value_and_grad(lambda p: _loss(apply_fn(p, x), y))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(step)
    state = opt.init(params)
    losses, mask_history = [], []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
        mask_history.append(jp.get_masks(state))
    return params, state, losses, mask_history, len(traces)


def _gmp_opt(**spec):
    sched = jp.polynomial(0.8, begin=5, end=25, every=5)
    return jp.sparse_optimizer(optax.adam(1e-2), jp.magnitude_pruner(sched, jp.MaskSpec(**spec)))


@pytest.mark.parametrize("spec", [{}, {"scope": "global"}, {"distribution": "erk"}])
def test_linen_training_prunes_on_schedule_and_compiles_once(spec):
    model = LinenNet()
    x, y = _data()
    params = model.init(jax.random.key(0), x)
    params, state, losses, masks, n_traces = _train(model.apply, params, _gmp_opt(**spec), 50, x, y)
    assert n_traces == 1
    assert losses[-1] < losses[0]
    kern = lambda m: np.asarray(m["params"]["hidden"]["kernel"])
    # Masks change only at update steps (sparsity is still 0 at the first one, step 5).
    changed = [t for t in range(1, 50) if not np.array_equal(kern(masks[t]), kern(masks[t - 1]))]
    assert set(changed) <= {10, 15, 20, 25} and 25 in changed
    final = jp.get_masks(state)
    s = jp.sparsity_summary(final)
    assert s.total_sparsity == pytest.approx(0.8, abs=0.01)
    # Pruned weights are exactly zero after 50 steps; biases / norms untouched by masks.
    for path, m in jp.leaves_with_paths(final, is_leaf=jp.is_none):
        if m is not None:
            w = dict(jp.leaves_with_paths(params))[path]
            assert (np.asarray(w)[~np.asarray(m)] == 0).all(), path
    assert final["params"]["hidden"]["bias"] is None and final["params"]["norm"]["scale"] is None


def test_update_steps_only_at_schedule_for_layerwise():
    model = LinenNet()
    x, y = _data()
    params = model.init(jax.random.key(0), x)
    _, _, _, masks, _ = _train(model.apply, params, _gmp_opt(), 30, x, y)
    kern = lambda m: np.asarray(m["params"]["conv"]["kernel"])
    changed = [t for t in range(1, 30) if not np.array_equal(kern(masks[t]), kern(masks[t - 1]))]
    assert changed == [10, 15, 20, 25]  # step 5 is the schedule's begin, at sparsity 0


def test_nnx_and_linen_give_identical_results():
    x, y = _data()
    lin = LinenNet()
    lp = lin.init(jax.random.key(0), x)
    nmodel = NNXNet(nnx.Rngs(0))
    graphdef, nstate = nnx.split(nmodel)
    # Copy the Linen weights into the NNX state.
    for name in ("conv", "norm", "hidden", "head"):
        for leaf, value in lp["params"][name].items():
            nstate[name][leaf][...] = value
    nnx_apply = lambda st, inp: nnx.merge(graphdef, st)(inp)
    np.testing.assert_allclose(nnx_apply(nstate, x), lin.apply(lp, x), atol=1e-5)
    lp2, _, l_losses, _, _ = _train(lin.apply, lp, _gmp_opt(), 30, x, y)
    np2, _, n_losses, _, _ = _train(nnx_apply, nstate, _gmp_opt(), 30, x, y)
    np.testing.assert_allclose(l_losses, n_losses, rtol=1e-5)
    for name in ("conv", "hidden", "head"):
        np.testing.assert_array_equal(
            np.asarray(np2[name]["kernel"][...]) == 0, np.asarray(lp2["params"][name]["kernel"]) == 0
        )
    # And the one-shot API agrees too.
    _, lm = jp.prune(lp, 0.6, scope="global")
    _, nm = jp.prune(nstate, 0.6, scope="global")
    for name in ("conv", "hidden", "head"):
        np.testing.assert_array_equal(nm[name]["kernel"][...], lm["params"][name]["kernel"])


def test_composes_with_chain_multisteps_and_inject_hyperparams():
    model = LinenNet()
    x, y = _data()
    params = model.init(jax.random.key(0), x)
    pruner = jp.magnitude_pruner(jp.one_shot(0.5, step=0))
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
    opt = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), jp.sparse_optimizer(inner, pruner)), 2)
    params, state, losses, _, n_traces = _train(model.apply, params, opt, 10, x, y)
    assert n_traces == 1 and losses[-1] < losses[0]
    sparse_state = jp.find_sparse_state(state)
    assert int(sparse_state.count) == 5  # MultiSteps(every 2): the inner update ran 5 times
    assert float(sparse_state.inner_state.hyperparams["learning_rate"]) == pytest.approx(0.05)
    k = np.asarray(params["params"]["hidden"]["kernel"])
    assert (k == 0).mean() == pytest.approx(0.5)


def test_pruned_updates_make_weights_exactly_zero_with_weight_decay_and_momentum():
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4), "b": jnp.ones(4)}
    opt = jp.sparse_optimizer(
        optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9)), jp.magnitude_pruner(jp.one_shot(0.5))
    )
    state = opt.init(params)
    for _ in range(5):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
        updates, state = jax.jit(opt.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    w = np.asarray(params["w"])
    assert (w[:2] == 0).all() and (w[2:] != 0).all()


def test_wrapper_rejects_missing_params_and_bad_pruner():
    opt = jp.sparse_optimizer(optax.sgd(0.1), jp.magnitude_pruner(jp.one_shot(0.5)))
    params = {"w": jnp.ones((4, 4))}
    state = opt.init(params)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(params, state)
    with pytest.raises(TypeError, match="Pruner"):
        jp.sparse_optimizer(optax.sgd(0.1), "magnitude")
