"""Shrunk model == masked dense model, for every reference model, ratio and ranking scope.

Three ways to run a shrunk model are checked against the masked dense model:
``jaxprune.models.rebuild`` (Linen), ``make_shrunk_fn`` (generic jaxpr
re-evaluation) and ``shrink_nnx`` (NNX).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune import models as M
from jaxprune._src.structured import (
    PrunePlan,
    make_plan,
    plan_to_masks,
    shrink,
    shrink_nnx,
    shrunk_fn_from_graph,
    trace_groups,
)
from jaxprune._src.structured.shrink import apply_plan_masks
from jaxprune._src.tree import leaves_with_paths, map_with_path

MODELS = {
    "cifar_resnet20": lambda: M.cifar_resnet20(num_classes=5),
    "bottleneck_resnet": lambda: M.ResNet(
        stage_sizes=(1, 1),
        block="bottleneck",
        stage_widths=(8, 16),
        stem_width=8,
        num_classes=5,
        small_input=True,
        image_size=16,
    ),
    "mobilenet_dw": lambda: M.MobileNetBlockNet(),
    "concat": lambda: M.ConcatNet(),
    "vit": lambda: M.vit_tiny_test(num_classes=5),
    "bert": lambda: M.bert_tiny_test(),
}


def _random_like(shapes, seed=0):
    """Numpy params from abstract shapes (no init compile): fan-in scaled kernels, positive variances."""
    rng = np.random.default_rng(seed)

    def f(path, s):
        shape, dtype = tuple(s.shape), np.dtype(s.dtype)
        if not np.issubdtype(dtype, np.floating):
            return np.zeros(shape, dtype)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        x = rng.normal(size=shape) / np.sqrt(max(fan_in, 1))
        if path.endswith("var"):
            x = np.abs(x) + 0.5
        elif path.endswith("scale"):
            x = 1.0 + 0.2 * x
        return x.astype(dtype)

    return map_with_path(f, shapes)


def _input(model, batch=2):
    x = model.example_input(batch)
    if isinstance(x, tuple):
        x = x[0]
    if np.issubdtype(x.dtype, np.integer):
        return np.asarray(np.random.default_rng(1).integers(0, 20, size=x.shape), x.dtype)
    return np.random.default_rng(1).normal(size=x.shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _setup(name):
    model = MODELS[name]()
    x = _input(model)
    v = _random_like(jax.eval_shape(model.init, jax.random.key(0), x))
    apply = lambda v, x: model.apply(v, x)  # noqa: E731
    graph = trace_groups(apply, v, x)
    return model, v, x, apply, graph, jax.jit(apply)


def _close(a, b, atol=2e-5):
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(w), atol=atol, rtol=1e-4)


CASES = (
    [(name, 0.3, "layerwise") for name in MODELS]
    + [(name, 0.6, "global") for name in MODELS]
    + [(name, r, s) for name in ("cifar_resnet20", "vit") for r, s in ((0.6, "layerwise"), (0.3, "global"))]
)


@pytest.mark.parametrize("name,ratio,scope", CASES)
def test_shrunk_equals_masked(name, ratio, scope):
    model, v, x, apply, graph, japply = _setup(name)
    assert graph.prunable, graph.describe()
    plan = make_plan(v, graph, ratio, scope=scope, round_to=2 if scope == "global" else 1)
    assert plan.groups, "nothing was pruned"
    small = shrink(v, plan)
    # shapes exactly as planned, untouched leaves untouched
    for path, leaf in leaves_with_paths(small):
        want = plan.shapes[path][1] if path in plan.shapes else plan.leaf_shapes[path]
        assert tuple(np.shape(leaf)) == tuple(want), path
    ref = japply(apply_plan_masks(v, plan_to_masks(v, plan)), x)
    _close(jax.jit(M.rebuild(model, small).apply)(small, x), ref)
    _close(jax.jit(shrunk_fn_from_graph(graph, plan))(small, x), ref)
    if scope == "layerwise":  # other batch sizes: re-traced, still equal to the masked model
        masked = apply_plan_masks(v, plan_to_masks(v, plan))
        fn = shrunk_fn_from_graph(graph, plan)
        for batch in (1, 3):
            xb = jnp.concatenate([x] * 3)[:batch]
            _close(jax.jit(fn)(small, xb), japply(masked, xb))
    if scope == "global":
        sizes = [len(g["kept"]) for g in plan.groups]
        assert all(s % 2 == 0 or s == g["size"] for s, g in zip(sizes, plan.groups))


@pytest.mark.parametrize("name", ["cifar_resnet20", "vit"])
def test_plan_json_round_trip_and_reapply(name):
    _, v, _, _, graph, _ = _setup(name)
    plan = make_plan(v, graph, 0.5, scope="global")
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan
    a, b = shrink(v, plan), shrink(v, again)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_mismatched_params_raise_naming_the_leaf():
    _, v, _, _, graph, _ = _setup("cifar_resnet20")
    plan = make_plan(v, graph, 0.5)
    small = shrink(v, plan)
    with pytest.raises(ValueError, match=r"params leaf '.*' has shape .* plan expects .*already shrunk"):
        shrink(small, plan)
    _, v2, _, _, _, _ = _setup("vit")
    with pytest.raises(ValueError, match="plan"):
        shrink(v2, plan)
    with pytest.raises(ValueError, match="masks|plan"):
        plan_to_masks(small, plan)
    _, _, _, _, graph_vit, _ = _setup("vit")
    with pytest.raises(ValueError, match="another model|plan expects|does not match the traced model"):
        shrunk_fn_from_graph(graph_vit, plan)


def test_masks_are_none_at_unaffected_leaves_and_true_where_kept():
    _, v, _, _, graph, _ = _setup("vit")
    plan = make_plan(v, graph, 0.5)
    masks = plan_to_masks(v, plan)
    flat = dict(leaves_with_paths(masks, is_leaf=lambda m: m is None))
    for path, m in flat.items():
        if path not in plan.leaves:
            assert m is None, path
        else:
            assert m.dtype == jnp.bool_ and int(m.sum()) == int(np.prod(plan.shapes[path][1]))


def test_shrunk_model_finetunes_under_jit_with_optax():
    model, v, x, apply, graph, _ = _setup("cifar_resnet20")
    plan = make_plan(v, graph, 0.5, scope="global")
    small = shrink(v, plan)
    small_model = M.rebuild(model, small)
    params, stats = small["params"], small["batch_stats"]
    y = jnp.array([1, 3])
    tx = optax.sgd(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss_fn(p):
            logits = small_model.apply({"params": p, "batch_stats": stats}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt, loss, grads

    params2, opt, loss0, grads = step(params, opt)
    _, _, loss1, _ = step(params2, opt)
    assert np.isfinite(loss0) and np.isfinite(loss1)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads) if g.ndim > 1)
    assert loss1 < loss0
    # the generic fallback is differentiable too
    fn = shrunk_fn_from_graph(graph, plan)
    g2 = jax.jit(jax.grad(lambda s: fn(s, x).sum()))(small)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(g2))


@pytest.mark.parametrize("kind", ["cnn", "resnet", "vit"])
def test_shrink_nnx_matches_masked(kind):
    make = {
        "cnn": lambda: M.NnxSmallCNN(channels=(8, 16), num_classes=3, rngs=nnx.Rngs(0)),
        "resnet": lambda: M.NnxCifarResNet(stage_sizes=(1, 1), stage_widths=(8, 16), num_classes=3, rngs=nnx.Rngs(0)),
        "vit": lambda: M.NnxViT(
            image_size=8,
            patch_size=4,
            hidden_size=16,
            num_layers=1,
            num_heads=4,
            mlp_dim=32,
            num_classes=3,
            rngs=nnx.Rngs(0),
        ),
    }[kind]
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    net = nnx.merge(graphdef, _random_like(abstract))
    graphdef, state = nnx.split(net)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    f = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    graph = trace_groups(f, state, x)
    plan = make_plan(state, graph, 0.5)
    assert plan.groups
    ref = jax.jit(f)(apply_plan_masks(state, plan_to_masks(state, plan)), x)
    small = shrink_nnx(net, plan, x)
    _close(small(x), ref)
    _close(shrunk_fn_from_graph(graph, plan)(nnx.split(small)[1], x), ref)
