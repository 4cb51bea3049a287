"""Your model, smaller: the generic shrunk function on models jaxprune did not write.

For each model: trace at one input shape, plan at ratio 0.5, shrink; the
shrunk function (``jp.make_shrunk_fn``) must equal the masked dense model at
the traced shape *and* at other batch sizes and spatial sizes / sequence
lengths, under ``jax.jit``, with finite gradients, and a few SGD steps on it
must lower a loss. Through-norm pruning (``through_norms=True``) is checked
against a reference that normalizes over the kept channels only.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from decoder_models import LinenDecoder, NNXDecoder
from flax import nnx

import jaxprune as jp


def _rel_close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max()) / scale
    assert err < tol, f"max abs difference {err * scale:.3g} (relative {err:.3g})"
    return err


def _perturb(tree, seed=0, scale=0.1):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [
        x + scale * jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        for x, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_any_shape(apply, variables, example, others, *, ratio=0.5, loss_target=None, **trace_kw):
    """Shrunk == masked at the example and at ``others``; jit, grad and a short finetune work."""
    graph = jp.trace_groups(apply, variables, example, **trace_kw)
    plan = jp.make_plan(variables, graph, ratio)
    assert plan.groups, "nothing pruned"
    small = jp.shrink(variables, plan)
    fn = jp.make_shrunk_fn(apply, variables, plan, example)
    masked = jp.apply_masks(variables, jp.plan_to_masks(variables, plan))
    jfn, japply = jax.jit(fn), jax.jit(apply)
    errs = [_rel_close(jfn(small, x), japply(masked, x)) for x in [example, *others]]
    _finetune_lowers_loss(fn, small, example)
    return graph, plan, small, max(errs)


def _finetune_lowers_loss(fn, small, x, steps=5, lr=1e-3):
    """A few Adam steps on the float leaves (integer state such as Haiku's EMA counters stays)."""
    leaves, treedef = jax.tree_util.tree_flatten(small)
    is_float = [jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) for v in leaves]
    floats = [v for v, f in zip(leaves, is_float) if f]

    def full(fl):
        it = iter(fl)
        return jax.tree_util.tree_unflatten(treedef, [next(it) if f else v for v, f in zip(leaves, is_float)])

    target = jnp.ones_like(fn(small, x))

    def loss(fl):
        out = fn(full(fl), x)
        return jnp.mean((out / (1.0 + jax.lax.stop_gradient(jnp.abs(out).max())) - target) ** 2)

    opt = optax.adam(lr)
    state = opt.init(floats)

    @jax.jit
    def step(fl, s):
        val, g = jax.value_and_grad(loss)(fl)
        u, s = opt.update(g, s, fl)
        return optax.apply_updates(fl, u), s, val, g

    fl, first = floats, None
    for _ in range(steps):
        fl, state, val, g = step(fl, state)
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in g), "non-finite gradient"
        first = val if first is None else first
    assert float(loss(fl)) < float(first), "finetuning the shrunk model did not lower the loss"


def _images(*shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ------------------------------------------------------------------------------- third-party models
def test_flaxmodels_resnet18_any_shape():
    flaxmodels = pytest.importorskip("flaxmodels")
    model = flaxmodels.ResNet18(output="logits", pretrained=None, num_classes=10)
    x = _images(2, 32, 32, 3)
    v = _perturb(jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x))
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    others = [_images(1, 32, 32, 3), _images(3, 32, 32, 3), _images(8, 32, 32, 3), _images(2, 48, 48, 3)]
    _, plan, _, err = _check_any_shape(apply, v, x, others)
    assert len(plan.groups) >= 8


def test_flaxmodels_vgg16_other_batch_sizes():
    flaxmodels = pytest.importorskip("flaxmodels")
    model = flaxmodels.VGG16(output="logits", pretrained=None, num_classes=10, include_head=False)
    x = _images(2, 32, 32, 3)
    v = _perturb(jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x), scale=0.02)
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    _check_any_shape(apply, v, x, [_images(1, 32, 32, 3), _images(3, 64, 64, 3)])


def test_haiku_resnet50_any_shape():
    hk = pytest.importorskip("haiku")

    def forward(x, is_training):
        return hk.nets.ResNet50(num_classes=10)(x, is_training=is_training)

    f = hk.transform_with_state(forward)
    x = _images(2, 32, 32, 3)
    params, state = jax.jit(functools.partial(f.init, is_training=True))(jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def trained_looking(path, a):  # BN statistics of a trained net, not of one 2-image batch
        if "var_ema" in path and a.dtype == jnp.float32:
            return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
        if "mean_ema" in path and a.dtype == jnp.float32:
            return jnp.asarray(0.1 * rng.normal(size=a.shape), a.dtype)
        return a

    state = jp.map_with_path(trained_looking, state)
    v = {"params": _perturb(params, scale=0.02), "state": state}  # Haiku zero-inits the last BN scales

    def apply(v, x):
        return f.apply(v["params"], v["state"], None, x, is_training=False)[0]

    others = [_images(1, 32, 32, 3), _images(3, 32, 32, 3), _images(8, 32, 32, 3), _images(2, 48, 48, 3)]
    graph, plan, _, _ = _check_any_shape(apply, v, x, others)
    assert jp.flops(apply, v, x) / jp.shrunk_flops(v, graph, plan) > 3.0


def test_haiku_multihead_attention_block_any_length():
    hk = pytest.importorskip("haiku")

    def forward(x):
        h = hk.LayerNorm(-1, True, True)(x)
        h = hk.MultiHeadAttention(num_heads=4, key_size=8, w_init=hk.initializers.VarianceScaling(1.0))(h, h, h)
        x = x + h
        h = hk.LayerNorm(-1, True, True)(x)
        return x + hk.Linear(32)(jax.nn.gelu(hk.Linear(64)(h)))

    f = hk.without_apply_rng(hk.transform(forward))
    x = _images(2, 6, 32)
    params = _perturb(f.init(jax.random.key(0), x))
    graph, plan, _, _ = _check_any_shape(f.apply, params, x, [_images(1, 6, 32), _images(3, 9, 32), _images(8, 2, 32)])
    assert {g["kind"] for g in plan.groups} == {"heads", "units"}


# ------------------------------------------------------------------------- Llama-style decoder (GQA)
def _decoder_linen():
    m = LinenDecoder()
    tok = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 6)))
    v = _perturb(m.init(jax.random.key(0), tok))
    return m, (lambda v, t: m.apply(v, t)), v, tok


def _tokens(b, s, seed=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 50, (b, s)))


def test_gqa_groups_rope_and_gated_mlp():
    _, apply, v, tok = _decoder_linen()
    g = jp.trace_groups(apply, v, tok)
    by_root = {(m.path, m.axis): grp for grp in g for m in grp.roots}
    kv = by_root[("params/block_0/k/kernel", 1)]
    assert kv.prunable and kv.kind == "heads" and kv.size == 2
    q_member = next(m for m in kv.members if m.path == "params/block_0/q/kernel")
    # each kv head owns its whole query group (2 query heads per kv head), the same for v
    np.testing.assert_array_equal(q_member.index_map, [[0, 1], [2, 3]])
    assert ("params/block_0/v/kernel", 1) in {(m.path, m.axis) for m in kv.roots}
    within = [grp for grp in g.groups_of("params/block_0/q/kernel") if grp is not kv and grp.kind == "heads"]
    assert len(within) == 1 and within[0].prunable  # query heads within a group
    rope_dim = by_root[("params/block_0/k/kernel", 2)]
    assert not rope_dim.prunable and "iota" in rope_dim.reason  # RoPE keeps head_dim
    gate = by_root[("params/block_0/gate/kernel", 1)]
    assert gate.prunable and ("params/block_0/up/kernel", 1) in {(m.path, m.axis) for m in gate.roots}
    width = by_root[("params/embed/embedding", 1)]  # residual width: blocked by RMSNorm by default
    assert not width.prunable and "reduced over" in width.reason


def test_gqa_decoder_linen_exact_any_length():
    _, apply, v, tok = _decoder_linen()
    _, plan, _, _ = _check_any_shape(apply, v, tok, [_tokens(1, 6), _tokens(3, 9), _tokens(8, 2)])
    assert "through_norms" not in plan.meta
    kinds = {g["kind"] for g in plan.groups}
    assert kinds == {"heads", "units"}


def test_gqa_decoder_nnx_exact_any_length():
    model = NNXDecoder(rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    state = _perturb(state)
    apply = lambda s, t: nnx.merge(graphdef, s)(t)  # noqa: E731
    tok = _tokens(2, 6, seed=0)
    _, plan, _, _ = _check_any_shape(apply, state, tok, [_tokens(1, 6), _tokens(3, 9)])
    small_model = jp.shrink_nnx(nnx.merge(graphdef, state), plan, tok)  # verified against the masked model
    masked = jp.apply_masks(state, jp.plan_to_masks(state, plan))
    _rel_close(small_model(_tokens(3, 9)), apply(masked, _tokens(3, 9)))


# ------------------------------------------------------------------------------ through the norms
def _layer_norm(x, scale, bias, eps=1e-6):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.var(x, -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def _rms_norm(x, scale, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def _plain_vit(p, img):
    """A ViT in plain jax.numpy: every width comes from the params, so calling it on shrunk params *is* the
    reference that normalizes over the kept channels only."""
    b = img.shape[0]
    x = jax.lax.conv_general_dilated(img, p["patch"], (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(p["cls"], (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], 1) + p["pos"][:, : x.shape[1] + 1]
    for blk in p["blocks"]:
        h = _layer_norm(x, blk["ln1_s"], blk["ln1_b"])
        q, k, vv = (jnp.einsum("bsd,dhk->bshk", h, blk[n]) for n in ("wq", "wk", "wv"))
        a = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1]), -1)
        x = x + jnp.einsum("bqhk,hkd->bqd", jnp.einsum("bhqs,bshk->bqhk", a, vv), blk["wo"])
        h = _rms_norm(x, blk["ln2_s"])
        x = x + jax.nn.gelu(h @ blk["w1"]) @ blk["w2"]
    return _layer_norm(x[:, 0], p["lnf_s"], p["lnf_b"]) @ p["head"]


def _plain_vit_params(d=32, heads=4, hd=8, hidden=64, layers=2, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0] if len(s) > 1 else 1), jnp.float32)  # noqa
    blocks = [
        dict(
            ln1_s=1 + 0.2 * n(d),
            ln1_b=0.1 * n(d),
            wq=n(d, heads, hd),
            wk=n(d, heads, hd),
            wv=n(d, heads, hd),
            wo=n(heads, hd, d),
            ln2_s=1 + 0.2 * n(d),
            w1=n(d, hidden),
            w2=n(hidden, d),
        )
        for _ in range(layers)
    ]
    return dict(
        patch=n(4, 4, 3, d) / 4,
        cls=n(1, 1, d),
        pos=0.1 * n(1, 65, d),
        blocks=blocks,
        lnf_s=1 + 0.2 * n(d),
        lnf_b=0.1 * n(d),
        head=n(d, classes),
    )


def test_through_norms_equals_kept_channel_reference():
    p = _plain_vit_params()
    x = _images(2, 16, 16, 3)
    exact = jp.trace_groups(_plain_vit, p, x)
    width = [g for g in exact if any(m.path == "patch" and m.axis == 3 for m in g.roots)][0]
    assert not width.prunable and "through_norms=True" in width.reason
    graph = jp.trace_groups(_plain_vit, p, x, through_norms=True)
    width = [g for g in graph if any(m.path == "patch" and m.axis == 3 for m in g.roots)][0]
    assert width.prunable and width.through_norm
    member_paths = {m.path for m in width.members}
    assert {"cls", "pos", "lnf_s", "head", "blocks/0/ln1_s", "blocks/1/w2"} <= member_paths
    plan = jp.make_plan(p, graph, 0.5)
    assert width.name in plan.meta["through_norms"]
    small = jp.shrink(p, plan)
    assert small["patch"].shape[-1] == 16 and small["head"].shape[0] == 16
    fn = jax.jit(jp.make_shrunk_fn(_plain_vit, p, plan, x))
    for xs in (x, _images(1, 16, 16, 3), _images(3, 32, 32, 3)):
        _rel_close(fn(small, xs), _plain_vit(small, xs))  # statistics over the kept channels only
    dense = _plain_vit(p, x)
    gap = float(jnp.abs(fn(small, x) - dense).max() / jnp.abs(dense).max())
    assert gap > 1e-3  # approximate by definition: it is not the masked dense model
    _finetune_lowers_loss(jp.make_shrunk_fn(_plain_vit, p, plan, x), small, x)


def test_through_norms_linen_vit_and_decoder_match_rebuilt_models():
    from jaxprune import models as M

    model = M.vit_tiny_test(num_classes=5)
    x = _images(*model.example_input(2).shape)
    v = _perturb(model.init(jax.random.key(0), x))
    apply = lambda v, x: model.apply(v, x)  # noqa: E731
    graph = jp.trace_groups(apply, v, x, through_norms=True)
    plan = jp.make_plan(v, graph, 0.5)
    small = jp.shrink(v, plan)
    _rel_close(jp.make_shrunk_fn(apply, v, plan, x)(small, x), M.rebuild(model, small).apply(small, x))
    assert jp.flops(apply, v, x) / jp.shrunk_flops(v, graph, plan) > 2.5

    m, apply, v, tok = _decoder_linen()  # RMSNorm, tied embeddings: width 32 -> 16 everywhere
    graph = jp.trace_groups(apply, v, tok, through_norms=True)
    plan = jp.make_plan(v, graph, 0.5)
    small = jp.shrink(v, plan)
    assert small["params"]["embed"]["embedding"].shape == (50, 16)
    ref = LinenDecoder(dim=16, heads=1, kv_heads=1, head_dim=8, hidden=24)
    for t in (tok, _tokens(3, 9)):
        _rel_close(jp.make_shrunk_fn(apply, v, plan, tok)(small, t), ref.apply(small, t))


def test_timm_vit_b16_width_through_norms_flops():
    """ViT-B/16 from timm (random init): heads + MLP + embedding width at 0.5 -> >= 3.7x fewer XLA FLOPs
    (Torch-Pruning's own example: 3.81x MACs)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    import jaxprune.convert as cv

    net = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    del net
    model, v = cv.from_timm_vit(sd)
    x = jnp.zeros((1, 224, 224, 3), jnp.float32)
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    graph = jp.trace_groups(apply, v, x, through_norms=True)
    plan = jp.make_plan(v, graph, 0.5, kinds=("heads", "units", "channels"))
    assert {g["kind"] for g in plan.groups} == {"heads", "units", "channels"}
    widths = {g["name"]: (g["size"], len(g["kept"])) for g in plan.groups if g["kind"] == "channels"}
    assert list(widths.values()) == [(768, 384)], widths  # one residual width through all 12 blocks
    ratio = jp.flops(apply, v, x) / jp.shrunk_flops(v, graph, plan)
    print(f"ViT-B/16 heads+MLP+width 0.5: XLA FLOPs x{ratio:.2f}")
    assert ratio >= 3.7
    del torch


def test_config_driven_linen_attention_runs_through_the_generic_path():
    """Widths read from a config dataclass (``x.reshape(b, s, cfg.heads, -1)``): no attribute to fix, but the
    generic shrunk function runs it at any shape."""
    import dataclasses

    import flax.linen as nn

    @dataclasses.dataclass(frozen=True)
    class Config:
        dim: int = 32
        heads: int = 4

    class Attention(nn.Module):
        cfg: Config

        @nn.compact
        def __call__(self, x):
            b, s, _ = x.shape
            qkv = nn.Dense(3 * self.cfg.dim, name="qkv")(x).reshape(b, s, 3, self.cfg.heads, -1)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 8.0, -1)
            out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, s, -1)
            return x + nn.Dense(self.cfg.dim, name="proj")(out)

    m = Attention(Config())
    x = _images(2, 5, 32)
    v = _perturb(m.init(jax.random.key(0), x))
    _, plan, _, _ = _check_any_shape(lambda v, x: m.apply(v, x), v, x, [_images(1, 5, 32), _images(3, 8, 32)])
    assert [g["kind"] for g in plan.groups] == ["heads"]


# ------------------------------------------------------------------------------ scanned layer stacks
def _stacked_roots(plan_or_graph):
    return {(m.path, m.axis) for g in plan_or_graph.groups if g.prunable for m in g.roots}


def test_linen_scanned_blocks_prune_the_same_units_in_every_layer():
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return h + nn.Dense(16, name="down")(nn.relu(nn.Dense(40, name="up")(nn.RMSNorm()(h)))), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(16)(x)
            scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            h, _ = scanned(name="blocks")(h, None)
            return nn.Dense(2)(h)

    m = Net()
    x = _images(4, 10)
    v = _perturb(m.init(jax.random.key(0), x))
    graph, plan, small, _ = _check_any_shape(m.apply, v, x, [_images(1, 10), _images(9, 10)])
    # the hidden width of the stacked MLP is one group (rooted at the stacked kernel's output axis), cut
    # to the same units in all three layers; the scanned (layer) axis itself is never pruned
    assert ("params/blocks/up/kernel", 2) in _stacked_roots(graph)
    assert small["params"]["blocks"]["up"]["kernel"].shape == (3, 16, 20)
    assert small["params"]["blocks"]["down"]["kernel"].shape == (3, 20, 16)


def test_scanned_llama_decoder_prunes_heads_and_mlp_like_the_unrolled_one():
    from jaxprune.models.llama import llama_rebuild, llama_tiny_test

    tok = _tokens(2, 6, seed=0)
    kinds = {}
    for scan in (False, True):
        m = llama_tiny_test(num_layers=3, scan_layers=scan)
        v = _perturb(m.init(jax.random.key(0), tok), scale=0.02)
        graph, plan, small, _ = _check_any_shape(m.apply, v, tok, [_tokens(1, 6), _tokens(3, 9)])
        kinds[scan] = sorted(g["kind"] for g in plan.groups)
        if scan:
            stacked = [k for k in jax.tree.leaves(jax.tree.map(jnp.shape, small["params"]["blocks"]))]
            assert stacked and all(isinstance(n, int) for n in stacked)
            rebuilt = llama_rebuild(m, small)  # widths read from the shrunk stacked params
            masked = jp.apply_masks(v, jp.plan_to_masks(v, plan))
            _rel_close(rebuilt.apply(small, _tokens(3, 9)), m.apply(masked, _tokens(3, 9)))
    # one group per kind for the whole scanned stack, one per kind and layer when unrolled
    assert set(kinds[True]) == set(kinds[False]) and len(kinds[False]) == 3 * len(kinds[True])


def test_nnx_scanned_blocks_prune_width():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm = nnx.RMSNorm(16, rngs=rngs)
            self.up = nnx.Linear(16, 40, rngs=rngs)
            self.down = nnx.Linear(40, 16, rngs=rngs)

        def __call__(self, h):
            return h + self.down(nnx.relu(self.up(self.norm(h))))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(8, 16, rngs=rngs)

            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(rngs):
                return Block(rngs)

            self.blocks = make(rngs)
            self.out = nnx.Linear(16, 2, rngs=rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def body(h, blk):
                return blk(h)

            return self.out(body(self.inp(x), self.blocks))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    state = _perturb(state)
    apply = lambda s, x: nnx.merge(graphdef, s)(x)  # noqa: E731
    graph, plan, small, _ = _check_any_shape(apply, state, _images(4, 8), [_images(7, 8)])
    assert ("blocks/up/kernel", 2) in _stacked_roots(graph)
    assert jax.tree.leaves(small["blocks"]["up"]["kernel"])[0].shape == (3, 16, 20)
