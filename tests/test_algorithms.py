"""Sparse-training algorithms: one contract list run over every algorithm, then method-specific tests.

Every algorithm runs on two models that have unpruned leaves (masks hold None there):
a Flax Linen CNN with BatchNorm (conv kernels without bias, head with bias) and a plain
nested dict holding a list of layers plus a norm.
"""

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune._src import algorithms as alg
from jaxprune.models import SmallCNN

S = 0.75  # target sparsity of the contract runs
T = 12  # training steps of the contract runs
LR = 0.05


# ----------------------------------------------------------------------------- models


class Ctx:
    """A tiny model: params (trainable), extra state, a batch, a loss and an eval apply."""

    def __init__(self, name):
        self.name = name
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        if name == "cnn":
            self.model = SmallCNN(channels=(4, 8), num_classes=3, in_channels=1, image_size=8)
            self.x = jax.random.normal(k1, (16, 8, 8, 1))
            v = self.model.init(k2, self.x)
            self.params, self.state = v["params"], v["batch_stats"]
        else:
            self.model = None
            self.x = jax.random.normal(k1, (16, 6))
            ka, kb = jax.random.split(k2)
            self.params = {
                "layers": [
                    {"kernel": jax.random.normal(ka, (6, 16)) * 0.4, "bias": jnp.zeros(16)},
                    {"kernel": jax.random.normal(kb, (16, 3)) * 0.3, "bias": jnp.zeros(3)},
                ],
                "norm": {"scale": jnp.ones(16), "bias": jnp.zeros(16)},
            }
            self.state = None
        self.y = jax.random.randint(k3, (16,), 0, 3)
        self.input_shape = (1,) + self.x.shape[1:]

    def logits(self, params, state, x, train=True):
        if self.model is not None:
            if train:
                out, upd = self.model.apply(
                    {"params": params, "batch_stats": state}, x, train=True, mutable=["batch_stats"]
                )
                return out, upd["batch_stats"]
            return self.model.apply({"params": params, "batch_stats": state}, x, train=False), state
        h = x @ params["layers"][0]["kernel"] + params["layers"][0]["bias"]
        h = (h - h.mean(-1, keepdims=True)) / (h.std(-1, keepdims=True) + 1e-5)
        h = jax.nn.relu(h * params["norm"]["scale"] + params["norm"]["bias"])
        return h @ params["layers"][1]["kernel"] + params["layers"][1]["bias"], state

    def loss(self, params, state, x, y):
        logits, new_state = self.logits(params, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    def batch_loss(self, params, batch):
        return self.loss(params, self.state, *batch)[0]

    def apply_eval(self, params, x):
        return self.logits(params, self.state, x, train=False)[0]

    def wanda_norms(self):
        if self.model is not None:
            return alg.activation_norms(self.model, {"params": self.params, "batch_stats": self.state}, self.x)
        h = self.x @ self.params["layers"][0]["kernel"]
        h = jax.nn.relu((h - h.mean(-1, keepdims=True)) / (h.std(-1, keepdims=True) + 1e-5))
        return {"layers/0": jnp.linalg.norm(self.x, axis=0), "layers/1": jnp.linalg.norm(h, axis=0)}


@functools.cache
def ctx(name):
    return Ctx(name)


MODELS = ["cnn", "nested"]


# ----------------------------------------------------------------------------- training loop


def make_step(c, opt, straight_through=False):
    traces = [0]

    @jax.jit
    def step(params, state, opt_state):
        traces[0] += 1
        masks = jp.get_masks(opt_state)

        def loss(p):
            fwd = alg.straight_through_masks(p, masks) if straight_through else p
            return c.loss(fwd, state, c.x, c.y)

        (lval, new_state), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, lval

    return step, traces


_STEPS = {}


def train(c, pruner, *, params=None, steps=T, key=0, record=False, step_key=None):
    """Runs ``steps`` steps of optax.chain(clip, sparse_optimizer(sgd, pruner)); returns a dict.

    The jitted step is shared by every run with the same ``step_key`` (e.g. all fixed-mask runs, or
    re-runs of one algorithm with another key): masks and keys are data in the optimizer state, so
    sharing must not retrace -- ``traces`` counts compilations over all those runs.
    """
    opt = optax.chain(optax.clip_by_global_norm(1.0), jp.sparse_optimizer(optax.sgd(LR, momentum=0.9), pruner, key=key))
    cache = (c.name, id(pruner) if step_key is None else step_key)
    if cache not in _STEPS:
        _STEPS[cache] = make_step(c, opt, pruner.straight_through)
    step, traces = _STEPS[cache]
    params = c.params if params is None else params
    opt_state = opt.init(params)
    if not pruner.straight_through:
        params = jp.apply_masks(params, jp.get_masks(opt_state))
    state, history = c.state, []
    for _ in range(steps):
        params, state, opt_state, _ = step(params, state, opt_state)
        if record:
            history.append((params, jp.get_masks(opt_state)))
    return {
        "params": params,
        "masks": jp.get_masks(opt_state),
        "traces": traces[0],
        "history": history,
        "opt_state": opt_state,
    }


def fixed(masks):
    return alg.fixed_mask_pruner(masks)


def _lth(c):
    def train_fn(params, masks, start, n):
        return train(c, fixed(masks), params=params, steps=n, step_key="fixed")["params"]

    res = alg.lottery_ticket(train_fn, c.params, sparsity=S, rounds=2, round_steps=4, rewind_step=1)
    return fixed(res.masks), res.params


def _per_sample_grads(c):
    def one(p, x, y):
        return c.loss(p, c.state, x[None], y[None])[0]

    return jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))(c.params, c.x, c.y)


def _oneshot(scores_fn, spec=jp.MaskSpec()):
    def build(c):
        _, masks = jp.prune(c.params, S, method=alg.fixed_scores(scores_fn(c)), scope=spec.scope)
        return fixed(masks), None

    return build


def _wf_oneshot(c):
    new, masks = alg.woodfisher_prune(c.params, _per_sample_grads(c), S, block_size=16, damp=1e-3)
    return fixed(masks), new


def _synflow(c):
    _, masks = alg.synflow_prune(c.apply_eval, c.params, S, c.input_shape, rounds=20)
    return fixed(masks), None


def _str(c):
    sp = alg.str_init(c.params, init_threshold=-1.0)
    params, masks = alg.str_finalize(sp)
    return fixed(masks), params


# name -> build(ctx) -> (pruner, start params or None). Every algorithm of the package is here.
ALGOS = {
    "gmp": lambda c: (alg.gmp_pruner(S, begin=0, end=8, every=2), None),
    "gmp_global_erk": lambda c: (alg.gmp_pruner(S, begin=2, end=8, every=3, scope="global"), None),
    "gmp_erk": lambda c: (alg.gmp_pruner(S, begin=2, end=8, every=3, distribution="erk"), None),
    "rigl": lambda c: (alg.rigl_pruner(S, every=3, end=10), None),
    "set": lambda c: (alg.set_pruner(S, every=3, end=10, distribution="uniform"), None),
    "ste": lambda c: (alg.ste_pruner(jp.polynomial(S, begin=0, end=8, every=2)), None),
    "acdc": lambda c: (alg.acdc_pruner(S, warmup=2, compressed_steps=2, dense_steps=2, final_begin=8), None),
    "woodfisher": lambda c: (alg.woodfisher_pruner(S, begin=2, end=8, every=3, block_size=16, damp=1e-3), None),
    "woodfisher_oneshot": _wf_oneshot,
    "lth_rewind": _lth,
    "str": _str,
    "snip": _oneshot(lambda c: alg.snip_scores(c.batch_loss, c.params, (c.x, c.y))),
    "grasp": _oneshot(lambda c: alg.grasp_scores(c.batch_loss, c.params, (c.x, c.y))),
    "synflow": _synflow,
    "wanda": _oneshot(lambda c: alg.wanda_scores(c.params, c.wanda_norms())),
}
# Mask-update steps inside the T training steps (contract: >= 2 for the in-training pruners).
IN_TRAINING = {"gmp", "gmp_global_erk", "gmp_erk", "rigl", "set", "ste", "acdc", "woodfisher"}
LEARNED_SPARSITY = {"str"}  # the sparsity is learned and reported, not set


@functools.cache
def run(name, model, key=0):
    c = ctx(model)
    pruner, start = ALGOS[name](c)
    out = train(c, pruner, params=start, key=key, record=True, step_key="fixed" if name not in IN_TRAINING else name)
    out["pruner"] = pruner
    return out


CASES = list(itertools.product(sorted(ALGOS), MODELS))


def _prunable_sparsity(masks, params):
    kept = sum(int(jnp.sum(m)) for m in jax.tree.leaves(masks))
    total = sum(int(m.size) for m in jax.tree.leaves(masks))
    return 1.0 - kept / total


# ----------------------------------------------------------------------------- the contract list


@pytest.mark.parametrize("name,model", CASES)
def test_contract_jit_compiles_once(name, model):
    out = run(name, model)
    assert out["traces"] == 1
    if name in IN_TRAINING:
        is_update = out["pruner"].schedule.is_update
        assert sum(bool(is_update(t)) for t in range(T)) >= 2


@pytest.mark.parametrize("name,model", CASES)
def test_contract_reaches_target_sparsity(name, model):
    out = run(name, model)
    achieved = _prunable_sparsity(out["masks"], out["params"])
    if name in LEARNED_SPARSITY:
        sp = alg.str_init(ctx(model).params, init_threshold=-1.0)
        assert achieved == pytest.approx(float(alg.str_sparsity(sp)), abs=1e-6)
        assert 0.0 < achieved < 1.0
    else:
        assert achieved == pytest.approx(S, abs=0.01)
    # masks keep None at leaves that are not pruned (biases, norms)
    jp.check_same_structure(ctx(model).params, out["masks"])
    for path, m in jp.leaves_with_paths(out["masks"], is_leaf=jp.is_none):
        assert (m is None) == bool(re.search(r"(bias|scale)$", path)), path


@pytest.mark.parametrize("name,model", CASES)
def test_contract_pruned_weights_are_zero(name, model):
    out = run(name, model)
    params = out["params"]
    if out["pruner"].straight_through:  # STE: dense weights, the sparse model is the masked one
        params = jp.apply_masks(params, out["masks"])
    for m, p in zip(
        jax.tree.leaves(out["masks"]),
        jax.tree.leaves(jax.tree.map(lambda m, p: None if m is None else p, out["masks"], params, is_leaf=jp.is_none)),
    ):
        assert not bool(jnp.any(jnp.where(m, 0.0, p) != 0))
    # and the model still trained: finite params
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name,model", CASES)
def test_contract_deterministic_given_key(name, model):
    a = run(name, model)
    c = ctx(model)
    pruner, start = ALGOS[name](c)  # rebuilt: one-shot methods recompute their masks
    again = train(c, pruner, params=start, key=0, step_key="fixed" if name not in IN_TRAINING else name)
    for x, y in zip(jax.tree.leaves((a["params"], a["masks"])), jax.tree.leaves((again["params"], again["masks"]))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_contract_randomized_pruners_depend_on_key(name):
    a, b = run(name, "nested", 0), run(name, "nested", 1)
    assert any(bool(jnp.any(x != y)) for x, y in zip(jax.tree.leaves(a["masks"]), jax.tree.leaves(b["masks"])))


BAD_CONFIGS = [
    (lambda: alg.gmp_pruner(1.5, begin=0, end=10, every=1), ValueError, "sparsity"),
    (lambda: alg.gmp_pruner(0.5, begin=5, end=5, every=1), ValueError, "end"),
    (lambda: alg.gmp_pruner(0.5, begin=0, end=5, every=1, spec="global"), TypeError, "MaskSpec"),
    (lambda: alg.rigl_pruner(0.9, every=0, end=10), ValueError, "every"),
    (lambda: alg.rigl_pruner(0.9, every=10, end=5), ValueError, "end"),
    (lambda: alg.rigl_pruner(0.9, every=2, end=10, drop_fraction=1.5), ValueError, "drop_fraction"),
    (lambda: alg.rigl_pruner(0.9, every=2, end=10, spec=jp.MaskSpec(scope="global")), ValueError, "scope"),
    (lambda: alg.drop_grow_pruner(0.9, grow="magnitude", every=2, end=10), ValueError, "grow"),
    (lambda: alg.set_pruner(-0.1, every=2, end=10), ValueError, "sparsity"),
    (lambda: alg.ste_pruner(0.5), TypeError, "Schedule"),
    (
        lambda: alg.acdc_pruner(0.9, warmup=5, compressed_steps=0, dense_steps=1, final_begin=9),
        ValueError,
        "compressed_steps",
    ),
    (
        lambda: alg.acdc_pruner(0.9, warmup=5, compressed_steps=1, dense_steps=1, final_begin=2),
        ValueError,
        "final_begin",
    ),
    (
        lambda: alg.acdc_pruner(
            0.9, warmup=1, compressed_steps=1, dense_steps=1, final_begin=2, spec=jp.MaskSpec(structure="nm")
        ),
        ValueError,
        "structure",
    ),
    (lambda: alg.woodfisher_pruner(0.9, begin=0, end=4, every=1, damp=0.0), ValueError, "damp"),
    (lambda: alg.woodfisher_pruner(0.9, begin=0, end=4, every=1, block_size=0), ValueError, "block_size"),
    (
        lambda: alg.woodfisher_prune({"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2))}, 0.5),
        ValueError,
        "leading sample axis",
    ),
    (
        lambda: alg.lottery_ticket(
            lambda *a: a[0], {"w": jnp.ones((2, 2))}, sparsity=0.5, rounds=1, round_steps=3, rewind_step=3
        ),
        ValueError,
        "rewind_step",
    ),
    (
        lambda: alg.lottery_ticket(None, {"w": jnp.ones((2, 2))}, sparsity=0.5, rounds=1, round_steps=3, rewind_step=1),
        TypeError,
        "train_fn",
    ),
    (lambda: alg.lth_sparsities(0.9, 0), ValueError, "rounds"),
    (lambda: alg.str_init({"b": jnp.ones(3)}), ValueError, "no prunable leaf"),
    (lambda: alg.str_sparsity({"w": jnp.ones((2, 2))}), TypeError, "str_init"),
    (lambda: alg.synflow_prune(lambda p, x: x, {"w": jnp.ones((2, 2))}, 0.5, (1, 2), rounds=0), ValueError, "rounds"),
    (lambda: alg.snip_scores("loss", {"w": jnp.ones((2, 2))}, None), TypeError, "loss_fn"),
    (lambda: jp.prune({"w": jnp.ones((2, 2))}, 0.5, method="snip"), ValueError, "grads"),
    (lambda: alg.fixed_mask_pruner({"w": jnp.ones((2, 2))}), TypeError, "bool"),
    (lambda: alg.rigl_config(100, 0), ValueError, "multiplier"),
]


@pytest.mark.parametrize("i", range(len(BAD_CONFIGS)))
def test_contract_bad_config_raises_clear_error(i):
    fn, exc, pattern = BAD_CONFIGS[i]
    with pytest.raises(exc, match=pattern):
        fn()


# ----------------------------------------------------------------------------- method-specific


def _nnz(masks):
    return [int(m.sum()) for m in jax.tree.leaves(masks)]


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_drop_grow_keeps_nnz_per_layer_constant_and_grows_from_zero(name):
    out = run(name, "cnn")
    c = ctx("cnn")
    init_masks = jp.get_masks(jp.sparse_optimizer(optax.sgd(LR), out["pruner"], key=0).init(c.params))
    prev_params, prev_masks = jp.apply_masks(c.params, init_masks), init_masks
    changed = 0
    for params, masks in out["history"]:
        assert _nnz(masks) == _nnz(init_masks)  # every layer, every step
        for m0, m1, p0 in zip(
            jax.tree.leaves(prev_masks),
            jax.tree.leaves(masks),
            jax.tree.leaves(
                jax.tree.map(lambda m, p: None if m is None else p, prev_masks, prev_params, is_leaf=jp.is_none)
            ),
        ):
            grown = m1 & ~m0
            changed += int(grown.sum())
            assert not bool(jnp.any(jnp.where(grown, p0, 0.0) != 0))  # grown weights were exactly 0
        prev_params, prev_masks = params, masks
    assert changed > 0  # masks really moved


def test_rigl_resets_optimizer_moments_of_regrown_weights():
    params = {"d": {"kernel": jax.random.normal(jax.random.key(1), (8, 8)), "bias": jnp.ones(8)}}
    pruner = alg.rigl_pruner(0.5, every=1, end=10, drop_fraction=0.5, distribution="uniform")
    opt = jp.sparse_optimizer(optax.adam(0.1), pruner, key=3)
    state = opt.init(params)
    params = jp.apply_masks(params, state.masks)
    # pretend every coordinate has history: first moments all 1
    inner = optax.tree_utils.tree_map_params(
        optax.adam(0.1), jnp.ones_like, state.inner_state, transform_non_params=lambda x: x
    )
    state = state._replace(inner_state=inner, count=jnp.int32(1))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    old = state.masks["d"]["kernel"]
    _, new_state = jax.jit(opt.update)(grads, state, params)
    new = new_state.masks["d"]["kernel"]
    mu = new_state.inner_state[0].mu["d"]["kernel"]
    regrown, kept = new & ~old, new & old
    assert int(regrown.sum()) > 0 and int(new.sum()) == int(old.sum())
    np.testing.assert_allclose(mu[regrown], 0.1 * 2.0, rtol=1e-6)  # (1 - b1) g: history reset
    np.testing.assert_allclose(mu[kept], 0.9 * 1.0 + 0.1 * 2.0, rtol=1e-6)  # history kept


def test_rigl_config_1x_5x_and_cosine_drop_fraction():
    one, five = alg.rigl_config(1000, 1), alg.rigl_config(1000, 5)
    assert (one["total_steps"], five["total_steps"]) == (1000, 5000)
    assert (one["end"], five["end"]) == (750, 3750)
    f = [float(alg.cosine_drop_fraction(t, 0.3, 100)) for t in (0, 25, 50, 100, 150)]
    assert f[0] == pytest.approx(0.3) and f[2] == pytest.approx(0.15) and f[3] == pytest.approx(0.0, abs=1e-7)
    assert f[1] == pytest.approx(0.15 * (1 + np.cos(np.pi / 4))) and f[4] == pytest.approx(0.0, abs=1e-7)


def test_ste_trains_pruned_weights_unlike_normal_mode():
    c = ctx("nested")
    sched = jp.one_shot(0.5)
    normal = train(c, alg.gmp_pruner(0.5, begin=0, end=1, every=1, power=1.0), steps=6)
    st = train(c, alg.ste_pruner(sched), steps=6)
    for mode, out in (("normal", normal), ("ste", st)):
        pruned_vals = [
            p[~m]
            for m, p in zip(
                jax.tree.leaves(out["masks"]),
                jax.tree.leaves(
                    jax.tree.map(lambda m, p: None if m is None else p, out["masks"], out["params"], is_leaf=jp.is_none)
                ),
            )
        ]
        moved = any(bool(jnp.any(v != 0)) for v in pruned_vals)
        assert moved == (mode == "ste")  # STE: dense weights keep learning under the mask
    # but the forward of both uses masked weights: the masked STE model has exact zeros
    masked = jp.apply_masks(st["params"], st["masks"])
    assert _prunable_sparsity(st["masks"], masked) == pytest.approx(0.5, abs=0.01)


def test_acdc_dense_phases_are_really_dense():
    out = run("acdc", "cnn")
    sched = out["pruner"].schedule
    saw_dense_after_sparse = False
    for t, (params, masks) in enumerate(out["history"]):
        leaves = jax.tree.leaves(masks)
        s = float(sched.sparsity(t))
        if s == 0.0:
            assert all(bool(m.all()) for m in leaves), t
            if t >= 4:  # a dense phase after a compressed one: previously pruned weights train again
                saw_dense_after_sparse = True
                kern = [
                    p
                    for p, _ in zip(
                        jax.tree.leaves(
                            jax.tree.map(lambda m, p: None if m is None else p, masks, params, is_leaf=jp.is_none)
                        ),
                        leaves,
                    )
                ]
                assert all(float(jnp.mean(k == 0)) < 0.05 for k in kern)
        else:
            assert _prunable_sparsity(masks, params) == pytest.approx(S, abs=0.01), t
    assert saw_dense_after_sparse


def test_lth_rewinds_to_the_saved_step():
    calls = []

    def train_fn(params, masks, start, n):
        calls.append((params, masks, start, n))
        # deterministic fake training: kept weights move by (start + n)
        return jax.tree.map(
            lambda p, m: p + (start + n) if m is None else jnp.where(m, p + start + n, 0.0),
            params,
            masks,
            is_leaf=jp.is_none,
        )

    p0 = ctx("nested").params
    res = alg.lottery_ticket(train_fn, p0, sparsity=0.875, rounds=3, round_steps=5, rewind_step=2)
    assert [c[2:] for c in calls] == [(0, 2)] + [(2, 3)] * 4
    # the rewind point is the weights after k=2 steps
    for a, b in zip(jax.tree.leaves(res.rewind_params), jax.tree.leaves(jax.tree.map(lambda p: p + 2, p0))):
        np.testing.assert_allclose(a, b)
    # every later round starts from the rewind point with the new masks applied
    for params, masks, _, _ in calls[2:]:
        expect = jp.apply_masks(res.rewind_params, masks)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expect)):
            np.testing.assert_array_equal(a, b)
    assert res.sparsities == pytest.approx([0.5, 0.75, 0.875], abs=0.01)
    # masks are nested: a pruned weight never comes back
    for (_, m1, _, _), (_, m2, _, _) in zip(calls[2:], calls[3:]):
        assert all(not bool(jnp.any(b & ~a)) for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)))


def _quadratic(d=6, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    h = a @ a.T + 0.5 * np.eye(d)
    return h, rng.normal(size=d)


def _constrained_optimum(h, wstar, q):
    """argmin 1/2 (w - w*)^T H (w - w*) subject to w_q = 0, by solving the reduced system."""
    free = [i for i in range(len(wstar)) if i not in q]
    w = np.zeros(len(wstar))
    w[free] = np.linalg.solve(h[np.ix_(free, free)], (h @ wstar)[free])
    return w


@pytest.mark.parametrize("n_prune", [1, 3])
def test_obs_matches_closed_form_on_quadratic(n_prune):
    d = 6
    h, wstar = _quadratic(d)
    hinv = np.linalg.inv(h)
    loss = lambda w: 0.5 * (w - wstar) @ h @ (w - wstar)  # noqa: E731
    params = {"w": jnp.asarray(wstar.reshape(2, 3), jnp.float32)}
    new, masks = alg.obs_prune(params, {"w": jnp.asarray(hinv[None], jnp.float32)}, n_prune / d)
    q = tuple(np.flatnonzero(~np.asarray(masks["w"]).reshape(-1)))
    assert len(q) == n_prune
    w_new = np.asarray(new["w"], np.float64).reshape(-1)
    # the update is the exact constrained optimum for the removed set
    np.testing.assert_allclose(w_new, _constrained_optimum(h, wstar, q), atol=1e-4)
    # the removed set is the lowest OBS saliencies w^2 / (2 [H^-1]_ii)
    sal = wstar**2 / (2 * np.diag(hinv))
    assert set(q) == set(np.argsort(sal)[:n_prune])
    if n_prune == 1:  # single weight: closed form update and the globally optimal choice
        i = q[0]
        np.testing.assert_allclose(w_new, wstar - wstar[i] / hinv[i, i] * hinv[:, i], atol=1e-4)
        best = min(range(d), key=lambda j: loss(_constrained_optimum(h, wstar, (j,))))
        assert i == best
        assert loss(w_new) == pytest.approx(sal[i], rel=1e-3)


def test_obs_block_diagonal_fisher_and_padding():
    # Fisher blocks of a (3, 3) leaf with block 4: 3 blocks, the last one padded and decoupled
    g = jax.random.normal(jax.random.key(0), (32, 3, 3))
    finv = alg.fisher_inverse({"w": jnp.ones((3, 3))}, {"w": g}, block_size=4, damp=0.1)["w"]
    assert finv.shape == (3, 4, 4)
    flat = np.asarray(g).reshape(32, 9)
    f0 = flat[:, :4].T @ flat[:, :4] / 32 + 0.1 * np.eye(4)
    np.testing.assert_allclose(np.asarray(finv[0]), np.linalg.inv(f0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(finv[2])[1:, 1:], np.eye(3) / 0.1, rtol=1e-5)  # padding


def test_woodfisher_gradual_applies_obs_update_to_kept_weights():
    """Inside sparse_optimizer (lr 0, so only the pruner moves weights), the update step equals
    one-shot OBS with the Fisher of the gradients observed since the previous update."""
    params = {"d": {"kernel": jax.random.normal(jax.random.key(0), (4, 3)), "bias": jnp.ones(3)}}
    pruner = alg.woodfisher_pruner(0.5, begin=1, end=2, every=1, block_size=4, damp=0.1)
    opt = jp.sparse_optimizer(optax.sgd(0.0), pruner)
    state = opt.init(params)
    update = jax.jit(opt.update)
    gs = [jax.tree.map(lambda p, k=k: jax.random.normal(jax.random.key(k), p.shape), params) for k in (1, 2, 3)]
    for g in gs:  # t=0 observe, t=1 update at sparsity 0 (no-op, Fisher reset), t=2 update at 0.5
        u, state = update(g, state, params)
        params_new = optax.apply_updates(params, u)
        if g is not gs[-1]:
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_new)):
                np.testing.assert_allclose(a, b, atol=1e-6)
        else:
            finv = alg.fisher_inverse(params, jax.tree.map(lambda x: x[None], g), block_size=4, damp=0.1)
            expect, masks = alg.obs_prune(params, finv, 0.5, jp.MaskSpec(scope="global"))
            np.testing.assert_array_equal(state.masks["d"]["kernel"], masks["d"]["kernel"])
            np.testing.assert_allclose(params_new["d"]["kernel"], expect["d"]["kernel"], atol=1e-4)
            kept = masks["d"]["kernel"]
            assert bool(jnp.any(params_new["d"]["kernel"][kept] != params["d"]["kernel"][kept]))
        params = params_new


def test_synflow_is_data_free_and_conserves_flow():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    p = {"a": jax.random.normal(k1, (5, 7)), "b": jax.random.normal(k2, (7, 4)), "c": jax.random.normal(k3, (4, 3))}
    f = lambda p, x: jax.nn.relu(jax.nn.relu(x @ p["a"]) @ p["b"]) @ p["c"]  # noqa: E731
    s = alg.synflow_scores(f, p, (1, 5))
    sums = [float(s[k].sum()) for k in "abc"]
    r = float(jnp.sum(f(jax.tree.map(jnp.abs, p), jnp.ones((1, 5)))))
    np.testing.assert_allclose(sums, [r] * 3, rtol=1e-4)  # synaptic flow is conserved per layer
    calls = []
    spy = lambda p, x: (calls.append(x), f(p, x))[1]  # noqa: E731
    _, m = alg.synflow_prune(spy, p, 0.8, (1, 5), rounds=10)
    assert all(bool(jnp.all(x == 1)) for x in calls if not isinstance(x, jax.core.Tracer)) and calls
    assert _prunable_sparsity(m, p) == pytest.approx(0.8, abs=0.01)


def test_grasp_uses_the_hessian_gradient_product():
    k1, k2 = jax.random.split(jax.random.key(0))
    p = {"w": jax.random.normal(k1, (3, 2))}
    x = jax.random.normal(k2, (4, 3))
    loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"]) ** 2)  # noqa: E731
    flat = lambda w: loss({"w": w.reshape(3, 2)}, x)  # noqa: E731
    h = jax.hessian(flat)(p["w"].reshape(-1))
    g = jax.grad(flat)(p["w"].reshape(-1))
    expect = p["w"].reshape(-1) * (h @ g)
    np.testing.assert_allclose(alg.grasp_scores(loss, p, x)["w"].reshape(-1), expect, rtol=1e-4, atol=1e-6)


def test_wanda_activation_norms_and_per_output_masks():
    c = ctx("cnn")
    norms = c.wanda_norms()
    assert set(norms) == {"conv_0", "conv_1", "head"}
    assert norms["head"].shape == (8,) and norms["conv_0"].shape == (1,)
    np.testing.assert_allclose(norms["conv_0"], jnp.linalg.norm(c.x.reshape(-1)), rtol=1e-5)  # input layer
    sc = alg.wanda_scores(c.params, norms)
    np.testing.assert_allclose(sc["head"]["kernel"], jnp.abs(c.params["head"]["kernel"]) * norms["head"][:, None])
    m = alg.per_output_masks(sc, 0.5)
    assert m["head"]["bias"] is None
    assert (np.asarray(m["head"]["kernel"]).sum(0) == 4).all()  # each output unit keeps half its inputs


def test_str_learns_sparsity_in_jit_and_it_rises_with_decay_and_init():
    c = ctx("nested")

    def run_str(init_threshold, wd, steps=30):
        sp = alg.str_init(c.params, init_threshold=init_threshold)
        opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(0.1))
        traces = [0]

        @jax.jit
        def step(sp, opt_state):
            traces[0] += 1
            loss = lambda sp: c.loss(alg.str_effective(sp), None, c.x, c.y)[0]  # noqa: E731
            g = jax.grad(loss)(sp)
            u, opt_state = opt.update(g, opt_state, sp)
            return optax.apply_updates(sp, u), opt_state, alg.str_sparsity(sp)

        st = opt.init(sp)
        for _ in range(steps):
            sp, st, _ = step(sp, st)
        assert traces[0] == 1
        return float(alg.str_sparsity(sp)), sp

    low, _ = run_str(-4.0, 0.0)
    decayed, sp = run_str(-4.0, 0.5)
    high_init, _ = run_str(-1.5, 0.0)
    assert decayed > low and high_init > low
    params, masks = alg.str_finalize(sp)
    assert _prunable_sparsity(masks, params) == pytest.approx(decayed)
    for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(params["layers"][0]["kernel"])):
        assert not bool(jnp.any(jnp.where(m, 0.0, p) != 0))


def test_scores_are_pytrees_shaped_like_params():
    c = ctx("cnn")
    for s in (
        alg.snip_scores(c.batch_loss, c.params, (c.x, c.y)),
        alg.wanda_scores(c.params, c.wanda_norms()),
        alg.synflow_scores(c.apply_eval, c.params, c.input_shape),
        alg.woodfisher_scores(c.params, _per_sample_grads(c), block_size=16),
    ):
        jp.check_same_structure(c.params, s, what="scores")
    assert "snip" in jp.SCORE_FNS
