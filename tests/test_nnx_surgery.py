"""``jp.shrink_nnx``: width attributes of shrunk NNX modules, verification against the masked dense model."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp

ATOL = 1e-5


def _normal(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def _trace_plan(net, x, ratio=0.5, **kw):
    graphdef, state = nnx.split(net)
    graph = jp.trace_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    return graph, jp.make_plan(state, graph, ratio, **kw)


def _dense(net, plan):
    """The masked dense model that the shrunk one must equal."""
    graphdef, state = nnx.split(net)
    return nnx.merge(graphdef, jp.apply_masks(state, jp.plan_to_masks(state, plan)))


@nnx.jit
def _fwd(model, x):  # jitted: eager op-by-op dispatch is slow on small CPUs
    return model(x)


def _max_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


# ------------------------------------------------------------------------------------ GroupNorm
class GNNet(nnx.Module):
    def __init__(self, by_size, rngs):
        self.c1 = nnx.Conv(3, 32, (3, 3), rngs=rngs)
        gn = {"num_groups": None, "group_size": 8} if by_size else {"num_groups": 4}
        self.gn = nnx.GroupNorm(32, **gn, rngs=rngs)
        self.c2 = nnx.Conv(32, 5, (3, 3), rngs=rngs)

    def __call__(self, x):
        return self.c2(jax.nn.relu(self.gn(self.c1(x))))


@pytest.mark.parametrize("by_size", [False, True])
def test_group_norm(by_size):
    net = GNNet(by_size, nnx.Rngs(0))
    x = _normal((2, 8, 8, 3))
    graph, plan = _trace_plan(net, x)
    (g,) = [g for g in graph.prunable if any(m.path == "gn/scale" for m in g.members)]
    assert g.size == 4  # whole norm groups of 8 channels
    small = jp.shrink_nnx(net, plan, x)
    assert (small.gn.num_groups, small.gn.group_size) == (2, 8)
    assert small.c1.out_features == small.c2.in_features == 16
    assert (net.gn.num_groups, net.c1.out_features) == (4, 32)  # the input module is untouched
    for xx in (x, _normal((5, 6, 6, 3), seed=2)):  # another batch and spatial size
        d = _max_diff(_fwd(small, xx), _fwd(_dense(net, plan), xx))
        print("group norm max abs diff", d)
        assert d < ATOL


# ----------------------------------------------------------------------- nnx.MultiHeadAttention
class MHABlock(nnx.Module):
    def __init__(self, rngs, d=16, heads=4):
        self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(d, 2 * d, rngs=rngs), nnx.Linear(2 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))
        return self.head(x)


def test_multi_head_attention_block():
    net = MHABlock(nnx.Rngs(0))
    x = _normal((2, 5, 16))
    _, plan = _trace_plan(net, x)
    assert {(g["kind"], g["size"], len(g["kept"])) for g in plan.groups} >= {("heads", 4, 2), ("units", 32, 16)}
    small = jp.shrink_nnx(net, plan, x)
    a = small.attn
    assert (a.num_heads, a.head_dim, a.qkv_features, a.in_features, a.out_features) == (2, 4, 8, 16, 16)
    assert (a.num_kv_heads, a.in_kv_features, a.out.in_features) == (2, 16, (2, 4))
    for xx in (x, _normal((3, 7, 16), seed=2)):  # another batch and sequence length
        d = _max_diff(_fwd(small, xx), _fwd(_dense(net, plan), xx))
        print("mha max abs diff", d)
        assert d < ATOL


def test_mha_head_dim_pruning_is_caught_and_through_norms_relaxes_it():
    """Pruning qk ``head_dim`` changes the attention scale: not the masked model, so it must raise."""
    net = nnx.MultiHeadAttention(4, 16, decode=False, rngs=nnx.Rngs(0))
    x = _normal((2, 5, 16))
    _, plan = _trace_plan(net, x, kinds=("head_dim",))
    with pytest.raises(ValueError, match="head_dim"):
        jp.shrink_nnx(net, plan, x)
    relaxed = jp.PrunePlan.from_dict(dict(plan.to_dict(), meta=dict(plan.meta, through_norms=True)))
    small = jp.shrink_nnx(net, relaxed, x)  # only shapes and dtypes are checked
    assert small(x).shape == x.shape and small.head_dim == 2


# ---------------------------------------------------------------- a user's fused-qkv attention
class FusedAttention(nnx.Module):
    """timm-style: one ``qkv`` projection reshaped with ``self.num_heads``."""

    def __init__(self, dim, num_heads, rngs, store_head_dim=True):
        self.num_heads, self.store_head_dim = num_heads, store_head_dim
        if store_head_dim:
            self.head_dim = dim // num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        B, N, C = x.shape
        hd = self.head_dim if self.store_head_dim else C // self.num_heads
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = jax.nn.softmax(q @ k.swapaxes(-1, -2) * hd**-0.5, axis=-1)
        return self.proj((attn @ v).transpose(0, 2, 1, 3).reshape(B, N, self.num_heads * hd))


class FusedBlock(nnx.Module):
    def __init__(self, rngs, store_head_dim=True):
        self.ln = nnx.LayerNorm(16, rngs=rngs)
        self.attn = FusedAttention(16, 4, rngs, store_head_dim)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(x + self.attn(self.ln(x)))


def test_fused_qkv_attention_generic_num_heads_rule():
    net = FusedBlock(nnx.Rngs(0))
    x = _normal((2, 5, 16))
    graph, plan = _trace_plan(net, x)
    print(graph.describe())
    heads = [g for g in graph.prunable if g.kind == "heads"]
    assert [(g.size, g.name) for g in heads] == [(4, "attn/qkv/kernel[1]")]
    assert {m.path for m in heads[0].members} == {"attn/qkv/kernel", "attn/qkv/bias", "attn/proj/kernel"}
    assert [(g["kind"], len(g["kept"])) for g in plan.groups] == [("heads", 2)]
    small = jp.shrink_nnx(net, plan, x)  # no fixes: the generic num_heads rule
    assert (small.attn.num_heads, small.attn.head_dim) == (2, 4)
    for xx in (x, _normal((3, 9, 16), seed=2)):
        d = _max_diff(_fwd(small, xx), _fwd(_dense(net, plan), xx))
        print("fused qkv max abs diff", d)
        assert d < ATOL


def test_fused_qkv_with_head_dim_from_input_width_is_refused():
    """``head_dim = C // num_heads`` with ``C`` the input width cannot survive head pruning: refused, named."""
    net = FusedBlock(nnx.Rngs(0), store_head_dim=False)
    x = _normal((2, 5, 16))
    _, plan = _trace_plan(net, x)
    with pytest.raises(ValueError, match=r"'attn' \(FusedAttention\).*num_heads 4->2") as e:
        jp.shrink_nnx(net, plan, x)
    assert "fixes=" in str(e.value) and isinstance(e.value.__cause__, TypeError)


# ------------------------------------------------------------ a module the surgery cannot fix
class Wide(nnx.Module):
    def __init__(self, rngs):
        self.width = 32
        self.a, self.b = nnx.Linear(4, 32, rngs=rngs), nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.a(x)).reshape(-1, self.width)
        return self.b(h + jnp.zeros((1, self.width)))


class WideNet(nnx.Module):
    def __init__(self, rngs):
        self.inner = nnx.Linear(4, 4, rngs=rngs)
        self.blk = Wide(rngs)

    def __call__(self, x):
        return self.blk(self.inner(x))


def test_unfixable_module_is_named_and_fixes_hook_works():
    net = WideNet(nnx.Rngs(0))
    x = _normal((2, 4))
    _, plan = _trace_plan(net, x)
    with pytest.raises(ValueError, match=r"'blk' \(Wide\): width=32") as e:
        jp.shrink_nnx(net, plan, x)
    assert "fixes={ModuleType" in str(e.value)
    seen = []

    def fix_wide(module, path, plan_):
        seen.append(path)
        module.width = module.a.out_features

    small = jp.shrink_nnx(net, plan, x, fixes={Wide: fix_wide})
    assert seen == ["blk"] and small.blk.width == 16 and net.blk.width == 32
    d = _max_diff(_fwd(small, x), _fwd(_dense(net, plan), x))
    print("fixes hook max abs diff", d)
    assert d < ATOL
    small = jp.shrink_nnx(net, plan, x, fix=lambda root: setattr(root.blk, "width", 16))  # the old hook
    assert small.blk.width == 16


def test_no_example_args_warns_but_fixes_attributes():
    net = GNNet(False, nnx.Rngs(0))
    x = _normal((2, 8, 8, 3))
    _, plan = _trace_plan(net, x)
    with pytest.warns(UserWarning, match="not verified"):
        small = jp.shrink_nnx(net, plan)
    assert small.gn.num_groups == 2
    assert _max_diff(_fwd(small, x), _fwd(_dense(net, plan), x)) < ATOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jp.shrink_nnx(net, plan, x)  # verified: no warning


def test_fix_nnx_attributes_exported():
    net = MHABlock(nnx.Rngs(0))
    x = _normal((2, 5, 16))
    _, plan = _trace_plan(net, x)
    graphdef, state = nnx.split(net)
    small = nnx.merge(graphdef, jp.shrink(state, plan))
    assert small.attn.num_heads == 4  # nnx.merge keeps the old attributes
    assert jp.fix_nnx_attributes(small, plan) == {}
    assert small.attn.num_heads == 2 and _max_diff(_fwd(small, x), _fwd(_dense(net, plan), x)) < ATOL


# ------------------------------------------------------------------------------- jit and grad
def test_jit_grad_and_sgd_on_shrunk_module():
    net = MHABlock(nnx.Rngs(0))
    x, y = _normal((4, 5, 16)), _normal((4, 5, 3), seed=3)
    _, plan = _trace_plan(net, x)
    small = jp.shrink_nnx(net, plan, x)

    @nnx.jit
    def step(model, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads))
        return loss

    losses = [float(step(small, x, y)) for _ in range(5)]
    print("nnx.jit SGD losses", losses)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]

    graphdef, params, rest = nnx.split(small, nnx.Param, ...)  # the functional route
    loss_fn = lambda p: jnp.mean((nnx.merge(graphdef, p, rest)(x) - y) ** 2)
    vg = jax.jit(jax.value_and_grad(loss_fn))
    l0, grads = vg(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    for _ in range(3):
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
        l1, grads = vg(params)
    assert float(l1) < float(l0)
