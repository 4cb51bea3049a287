"""Dependency tracing: which leaf axes are coupled, and what is refused (with a reason)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprune._src.structured import make_plan, plan_to_masks, shrink, trace_groups
from jaxprune._src.structured.run import shrunk_fn_from_graph
from jaxprune._src.structured.shrink import apply_plan_masks


def conv(x, k, groups=1, strides=1):
    return lax.conv_general_dilated(
        x, k, (strides, strides), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )


def bn(x, p):
    return (x - p["mean"]) * lax.rsqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]


def bn_params(c, rng):
    f = lambda a: a.astype(np.float32)  # noqa: E731
    return {
        "scale": f(1 + 0.1 * rng.normal(size=c)),
        "bias": f(0.1 * rng.normal(size=c)),
        "mean": f(0.1 * rng.normal(size=c)),
        "var": f(1 + rng.uniform(size=c)),
    }


def plain_net(p, x):
    """conv-BN-relu, a residual block, a depthwise conv, a flatten and a dense head (plain jnp)."""
    h = jax.nn.relu(bn(conv(x, p["c1"]), p["bn1"]))
    r = h
    h = jax.nn.relu(bn(conv(h, p["c2"]), p["bn2"]))
    h = bn(conv(h, p["c3"]), p["bn3"])
    h = jax.nn.relu(h + r)
    h = conv(h, p["dw"], groups=h.shape[-1], strides=2)
    h = h.reshape(h.shape[0], -1)
    return h @ p["fc"]["w"] + p["fc"]["b"]


def plain_params(seed=0):
    """Numpy params (no eager JAX ops: fast on a busy 2-core machine)."""
    rng = np.random.default_rng(seed)
    n = lambda *s: (rng.normal(size=s) / np.sqrt(np.prod(s[:-1]))).astype(np.float32)  # noqa: E731
    return {
        "c1": n(3, 3, 3, 8),
        "bn1": bn_params(8, rng),
        "c2": n(3, 3, 8, 6),
        "bn2": bn_params(6, rng),
        "c3": n(3, 3, 6, 8),
        "bn3": bn_params(8, rng),
        "dw": n(3, 3, 1, 8),
        "fc": {"w": n(2 * 2 * 8, 4), "b": np.zeros(4, np.float32)},
    }


X = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)


def _group_with(graph, path, axis):
    hits = [g for g in graph.groups if any(m.path == path and m.axis == axis for m in g.members)]
    assert len(hits) == 1, (path, axis, hits)
    return hits[0]


def test_residual_bn_depthwise_flatten_groups():
    p = plain_params()
    g = trace_groups(plain_net, p, X)
    res = _group_with(g, "c1", 3)
    paths = {(m.path, m.axis) for m in res.members}
    # residual couples c1 and c3 outputs, both BNs, c2's input, the depthwise conv and the flattened head
    for leaf in ("bn1/scale", "bn1/bias", "bn1/mean", "bn1/var", "bn3/scale", "bn3/var"):
        assert (leaf, 0) in paths
    assert {("c3", 3), ("c2", 2), ("dw", 3), ("fc/w", 0)} <= paths
    assert res.prunable and res.size == 8 and res.kind == "channels"
    assert {m.path for m in res.roots} == {"c1", "c3", "dw"}
    fc = next(m for m in res.members if m.path == "fc/w")
    # channel c of the flattened (2, 2, 8) map sits at positions c, 8 + c, 16 + c, 24 + c
    np.testing.assert_array_equal(fc.index_map[3], [3, 11, 19, 27])
    inner = _group_with(g, "c2", 3)
    assert inner.prunable and {(m.path, m.axis) for m in inner.members} >= {("bn2/mean", 0), ("c3", 2)}
    assert not _group_with(g, "c1", 2).prunable and "input" in _group_with(g, "c1", 2).reason
    assert not _group_with(g, "fc/w", 1).prunable and "output" in _group_with(g, "fc/w", 1).reason
    assert "prunable" in g.describe() and "c1" in str(res)


@pytest.mark.parametrize(
    "op,needle",
    [
        (lambda h: jnp.sort(h, axis=-1), "sort"),
        (lambda h: jnp.fft.fft(h, axis=-1).real, "fft"),
        (lambda h: jnp.cumsum(h, axis=-1), "cum"),
    ],
)
def test_unfollowable_op_makes_group_unprunable(op, needle):
    p = {"a": np.ones((3, 8), np.float32), "b": np.ones((8, 2), np.float32)}
    g = trace_groups(lambda p, x: op(jnp.tanh(x @ p["a"])) @ p["b"], p, jnp.ones((1, 3)))
    grp = _group_with(g, "a", 1)
    assert not grp.prunable and needle in grp.reason and "unsupported op" in grp.reason
    with pytest.raises(ValueError, match="not prunable"):
        from jaxprune._src.structured import plan_from_kept

        plan_from_kept(g, {grp.id: [0, 1]})
    assert make_plan(p, g, 0.5).groups == ()


def test_channels_reaching_the_output_are_kept():
    p = {"a": np.ones((3, 8), np.float32), "b": np.ones((8, 2), np.float32)}
    g = trace_groups(lambda p, x: (jnp.tanh(x @ p["a"]), x @ p["a"] @ p["b"]), p, jnp.ones((1, 3)))
    grp = _group_with(g, "a", 1)
    assert not grp.prunable and "output" in grp.reason


def test_layernorm_axis_is_unprunable_but_mlp_hidden_is():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(6, name="inp")(x)
            x = nn.LayerNorm(name="ln")(x)
            return nn.Dense(2, name="out")(nn.relu(nn.Dense(10, name="fc1")(x)))

    m = Block()
    x = jnp.ones((2, 3))
    v = jax.jit(m.init)(jax.random.key(0), x)
    g = trace_groups(m.apply, v, x)
    ln = _group_with(g, "params/ln/scale", 0)
    assert not ln.prunable and "reduce_sum" in ln.reason
    hid = _group_with(g, "params/fc1/kernel", 1)
    assert hid.prunable and hid.kind == "units"


def test_attention_heads_from_reshape_and_fused_qkv_split():
    d, h, dh = 12, 3, 4

    def attn(p, x):
        b, t, _ = x.shape
        qkv = x @ p["qkv"]  # (b, t, 3 * d), fused q/k/v projection
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k, v = (a.reshape(b, t, h, dh) for a in (q, k, v))
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)
        return (o @ p["proj"]).sum(1)

    rng = np.random.default_rng(0)
    p = {"qkv": rng.normal(size=(d, 3 * d)).astype(np.float32), "proj": rng.normal(size=(d, 5)).astype(np.float32)}
    x = rng.normal(size=(2, 7, d)).astype(np.float32)
    g = trace_groups(attn, p, x)
    heads = [grp for grp in g.prunable if grp.kind == "heads"]
    assert len(heads) == 1 and heads[0].size == h
    qkv_member = [m for m in heads[0].members if m.path == "qkv"][0]
    # head 1 owns q columns 4..7, k columns 16..19, v columns 28..31
    np.testing.assert_array_equal(
        np.sort(qkv_member.index_map[1]), list(range(4, 8)) + list(range(16, 20)) + list(range(28, 32))
    )
    plan = make_plan(p, g, 0.34)
    assert plan.shapes["qkv"][1] == (d, 3 * (d - dh)) and plan.shapes["proj"][1] == (d - dh, 5)
    out = shrunk_fn_from_graph(g, plan)(shrink(p, plan), x)
    ref = attn(apply_plan_masks(p, plan_to_masks(p, plan)), x)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_sub_jaxprs_are_followed():
    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, gr: (2 * gr,))

    def f(p, x):
        h = jax.checkpoint(lambda z: jax.nn.relu(z @ p["a"]))(x)
        h = jax.jit(lambda z: z + p["bias"])(h)
        h = double(h)
        h = lax.cond(x.sum() > 0, lambda z: z * 2, lambda z: z - 1, h)
        h, _ = lax.scan(lambda c, w: (jnp.tanh(c @ w), None), h, p["stack"])
        return h @ p["b"]

    rng = np.random.default_rng(0)
    p = {
        "a": rng.normal(size=(3, 8)).astype(np.float32),
        "bias": np.zeros(8, np.float32),
        "stack": rng.normal(size=(2, 8, 8)).astype(np.float32) / 3,
        "b": rng.normal(size=(8, 2)).astype(np.float32),
    }
    g = trace_groups(f, p, jnp.ones((1, 3)))
    grp = _group_with(g, "a", 1)
    assert grp.prunable
    assert {(m.path, m.axis) for m in grp.members} == {("a", 1), ("bias", 0), ("stack", 1), ("stack", 2), ("b", 0)}
    plan = make_plan(p, g, 0.5)
    x = jnp.ones((1, 3))
    np.testing.assert_allclose(
        shrunk_fn_from_graph(g, plan)(shrink(p, plan), x), f(apply_plan_masks(p, plan_to_masks(p, plan)), x), atol=1e-5
    )


def test_ignore_and_prunable_filters():
    p = plain_params()
    g = trace_groups(plain_net, p, X, ignore=[r"^c2$"])
    grp = _group_with(g, "c2", 3)
    assert not grp.prunable and "ignored" in grp.reason
    assert _group_with(g, "c1", 3).prunable
    g2 = trace_groups(plain_net, p, X, prunable=[r"^c2$"])
    assert _group_with(g2, "c2", 3).prunable and not _group_with(g2, "c1", 3).prunable


def test_nnx_state_traces_with_same_paths():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
            self.head = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.head(jax.nn.relu(self.bn(self.conv(x))).mean((1, 2)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    g = trace_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, X)
    grp = _group_with(g, "conv/kernel", 3)
    assert {m.path for m in grp.members} == {
        "conv/kernel",
        "conv/bias",
        "bn/scale",
        "bn/bias",
        "bn/mean",
        "bn/var",
        "head/kernel",
    }
    # mean over spatial axes is fine; the channel axis is not reduced
    assert grp.prunable


def test_overlapping_slices_and_concat_are_refined():
    """A channel split by slicing (GLU-style) next to a concat with other boundaries."""

    def f(p, x):
        h = x @ p["a"]  # 12 channels
        left, right = h[:, :5], h[:, 5:]
        gated = jnp.tanh(left[:, :4]) * jax.nn.sigmoid(right[:, 3:])  # channels 0..3 and 8..11
        mixed = jnp.concatenate([h[:, :2], h[:, 2:]], axis=1)  # other boundaries on the same axis
        return gated @ p["b"] + mixed @ p["c"]

    rng = np.random.default_rng(0)
    p = {
        "a": rng.normal(size=(3, 12)).astype(np.float32),
        "b": rng.normal(size=(4, 2)).astype(np.float32),
        "c": rng.normal(size=(12, 2)).astype(np.float32),
    }
    x = rng.normal(size=(2, 3)).astype(np.float32)
    g = trace_groups(f, p, x)
    a_groups = [grp for grp in g.groups if any(m.path == "a" and m.axis == 1 for m in grp.members)]
    assert all(grp.prunable for grp in a_groups) and sum(grp.size for grp in a_groups) <= 12
    plan = make_plan(p, g, 0.5)
    assert plan.shapes["a"][1][1] < 12
    out = shrunk_fn_from_graph(g, plan)(shrink(p, plan), x)
    np.testing.assert_allclose(out, f(apply_plan_masks(p, plan_to_masks(p, plan)), x), atol=1e-5)


def test_concat_then_groupnorm_prunes_whole_norm_groups_per_branch():
    import flax.linen as nn

    import jaxprune as jp

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.Conv(16, (3, 3), name="a")(x)
            b = nn.Conv(16, (3, 3), name="b")(x)
            h = nn.GroupNorm(num_groups=4, name="gn")(jnp.concatenate([a, b], -1))  # groups of 8: 2 per branch
            return nn.Conv(8, (1, 1), name="out")(nn.relu(h)).mean((1, 2))

    m = Net()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    v = jax.tree.map(lambda a: a + 0.1, m.init(jax.random.key(0), x))
    apply = lambda v, x: m.apply(v, x)  # noqa: E731
    g = jp.trace_groups(apply, v, x)
    groups = {grp.roots[0].path: grp for grp in g.prunable}
    assert set(groups) == {"params/a/kernel", "params/b/kernel"}
    for path, grp in groups.items():  # 2 norm groups per branch, each owning 8 channels of conv and norm
        assert grp.size == 2
        gn = next(mm for mm in grp.members if mm.path == "params/gn/scale")
        offset = 0 if path == "params/a/kernel" else 16
        np.testing.assert_array_equal(gn.index_map, offset + np.arange(16).reshape(2, 8))
    plan = jp.make_plan(v, g, 0.5)
    small = jp.shrink(v, plan)
    assert small["params"]["gn"]["scale"].shape == (16,)
    masked = jp.apply_masks(v, jp.plan_to_masks(v, plan))
    np.testing.assert_allclose(jp.make_shrunk_fn(apply, v, plan, x)(small, x), apply(masked, x), atol=1e-5)


def test_every_distinct_blocker_is_listed():
    import jaxprune as jp

    p = {"a": jnp.ones((3, 8)), "b": jnp.ones((8, 2))}

    def f(p, x):
        h = x @ p["a"]
        h = h / jnp.sum(h, -1, keepdims=True)  # blocker 1: a reduction over the units
        return h @ p["b"], jnp.cumsum(h, -1)  # blocker 2: an op the tracer cannot follow

    g = jp.trace_groups(f, p, jnp.ones((1, 3)))
    grp = next(x for x in g.groups_of("a") if any(m.path == "a" and m.axis == 1 for m in x.members))
    assert not grp.prunable and len(grp.reasons) == 2, grp.reasons
    text = " | ".join(grp.reasons)
    assert "reduced over" in text and "cumsum" in text
    assert all(f"blocker: {r}" in grp.describe() for r in grp.reasons)


@pytest.mark.parametrize("layout", ["torch (out, in) used as .T", "bf16 params cast to the f32 input"])
def test_layers_through_param_views_are_roots(layout):
    """A kernel used through a view (transpose of a PyTorch-layout weight, a dtype cast) still produces units."""
    rng = np.random.default_rng(0)
    if layout.startswith("torch"):
        p = {"w1": rng.normal(size=(32, 8)), "b1": np.zeros(32), "w2": rng.normal(size=(4, 32))}
        p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}

        def f(p, x):
            return jax.nn.relu(x @ p["w1"].T + p["b1"]) @ p["w2"].T

        produced = ("w1", 0)
    else:
        model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)])
        p = jax.tree.map(lambda a: a.astype(jnp.bfloat16), model.init(jax.random.key(0), jnp.ones((1, 8))))
        f = model.apply
        produced = ("params/layers_0/kernel", 1)
    x = jnp.asarray(rng.normal(size=(2, 8)), jnp.float32)
    g = trace_groups(f, p, x)
    grp = _group_with(g, *produced)
    assert grp.prunable and {(m.path, m.axis) for m in grp.roots} == {produced}
    plan = make_plan(p, g, 0.5)
    assert plan.shapes[produced[0]][1][produced[1]] == 16
    x5 = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)
    out = shrunk_fn_from_graph(trace_groups(f, p, x5), plan)(shrink(p, plan), x5)
    ref = f(apply_plan_masks(p, plan_to_masks(p, plan)), x5)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=1e-2, atol=1e-2)
