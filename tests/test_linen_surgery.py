"""``shrunk_linen_apply``: user Linen modules run with shrunk variables == the masked dense model.

Every model is traced at one input shape, planned at ratio 0.5 and shrunk; the
shrunk model (the unchanged module run through ``shrunk_linen_apply``) must
compute what the masked dense model computes, under ``jax.jit``, at the traced
shape and at other batch sizes and spatial sizes / sequence lengths; gradients
are finite and a few SGD steps lower a regression loss.
"""

import doctest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp

DIFFS: dict[str, float] = {}  # max |shrunk - masked| per model (printed with -s)


def _random_like(shapes, seed=0):
    """Numpy variables from abstract shapes: fan-in scaled kernels, non-trivial norm scales and statistics."""
    rng = np.random.default_rng(seed)

    def f(path, s):
        shape, dtype = tuple(s.shape), np.dtype(s.dtype)
        if not np.issubdtype(dtype, np.floating):
            return np.zeros(shape, dtype)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        x = rng.normal(size=shape) / np.sqrt(max(fan_in, 1))
        if path.endswith("var"):
            x = np.abs(x) + 0.5
        elif path.endswith(("scale", "gamma")):
            x = 1.0 + 0.2 * x
        return x.astype(dtype)

    return jp.map_with_path(f, shapes)


def _images(*shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _tokens(*shape, vocab=20, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def _setup(model, x, kinds=jp.DEFAULT_KINDS, **kw):
    """Random variables, the traced graph, a ratio-0.5 plan, the shrunk and the masked variables."""
    v = _random_like(jax.eval_shape(lambda k, x: model.init(k, x, **kw), jax.random.key(0), x))
    graph = jp.trace_groups(lambda v, x: model.apply(v, x, **kw), v, x)
    plan = jp.make_plan(v, graph, 0.5, kinds=kinds)
    return v, graph, plan, jp.shrink(v, plan), jp.apply_masks(v, jp.plan_to_masks(v, plan))


def _close(name, got, want, tol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    diff, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    DIFFS[name] = max(DIFFS.get(name, 0.0), diff)
    assert diff <= tol * max(scale, 1e-3), (name, diff, scale)


def _check(name, model, plan, small, masked, inputs, *, eager=False, fixes=None, **kw):
    """Shrunk == masked at every input, under jit (the first input also eagerly when ``eager``)."""
    assert plan.groups, "nothing was pruned"
    run = jp.shrunk_linen_apply(model, plan, fixes=fixes)
    both = jax.jit(lambda s, m, x: (run(s, x, **kw), model.apply(m, x, **kw)))  # one compile per input shape
    for x in inputs:
        _close(name, *both(small, masked, x))
    if eager:
        _close(name, run(small, inputs[0], **kw), both(small, masked, inputs[0])[1])


def _sgd_lowers_loss(model, plan, small, x, fixes=None, **kw):
    """Finite gradients through the shrunk model; 5 SGD steps on a random regression target lower the loss."""
    run = jp.shrunk_linen_apply(model, plan, fixes=fixes)
    rest = {k: c for k, c in small.items() if k != "params"}

    @jax.jit
    def value_and_grad(p):
        def loss(p):
            out = run({"params": p, **rest}, x, **kw)
            return jnp.mean((out - jax.random.normal(jax.random.key(3), out.shape)) ** 2)

        return jax.value_and_grad(loss)(p)

    params = small["params"]
    loss0, grads = value_and_grad(params)
    assert np.isfinite(float(loss0))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
    # a fixed learning rate of a tenth of the Polyak step
    tx = optax.sgd(0.1 * float(loss0) / sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(grads)))
    opt = tx.init(params)
    for _ in range(5):
        _, grads = value_and_grad(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
    final, _ = value_and_grad(params)
    assert float(final) < float(loss0), (float(loss0), float(final))


# ------------------------------------------------------------------------------------ flaxmodels
def test_flaxmodels_resnet18():
    flaxmodels = pytest.importorskip("flaxmodels")
    model = flaxmodels.ResNet18(output="logits", pretrained=None, num_classes=10)
    x = _images(8, 64, 64, 3)
    _, _, plan, small, masked = _setup(model, x, train=False)
    assert small["params"]["BasicBlock_0"]["Conv_0"]["kernel"].shape[-1] == 32
    _check(
        "flaxmodels.ResNet18",
        model,
        plan,
        small,
        masked,
        [x, _images(1, 32, 32, 3), _images(3, 96, 96, 3)],
        train=False,
    )
    _sgd_lowers_loss(model, plan, small, _images(1, 32, 32, 3), train=False)


def test_flaxmodels_vgg16_features():
    # include_head=True requires 224x224 inputs and a 25088x4096 Dense: the convolutional trunk only
    flaxmodels = pytest.importorskip("flaxmodels")
    model = flaxmodels.VGG16(output="logits", pretrained=None, num_classes=10, include_head=False)
    x = _images(3, 32, 32, 3)
    _, _, plan, small, masked = _setup(model, x, train=False)
    assert small["params"]["conv4_1"]["kernel"].shape == (3, 3, 128, 256)
    _check(
        "flaxmodels.VGG16(include_head=False)", model, plan, small, masked, [x, _images(1, 48, 48, 3)], train=False
    )  # (fine-tuning: same layers as ResNet18, not repeated)


# ------------------------------------------------------------------------------- user-style models
class ResBlockNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda: nn.BatchNorm(use_running_average=not train)
        x = nn.relu(bn()(nn.Conv(8, (3, 3), use_bias=False)(x)))
        for width, stride in ((8, 1), (16, 2)):
            y = nn.relu(bn()(nn.Conv(width, (3, 3), strides=stride, use_bias=False)(x)))
            y = bn()(nn.Conv(width, (3, 3), use_bias=False)(y))
            if stride != 1:  # decided by the config: `x.shape[-1] != width` would change with pruning
                x = bn()(nn.Conv(width, (1, 1), strides=stride, use_bias=False)(x))
            x = nn.relu(x + y)
        return nn.Dense(5)(x.mean((1, 2)))


def test_residual_block_with_batchnorm():
    model, x = ResBlockNet(), _images(8, 12, 12, 3)
    _, _, plan, small, masked = _setup(model, x)
    _check(
        "ResBlockNet (Conv+BatchNorm)", model, plan, small, masked, [x, _images(1, 12, 12, 3), _images(3, 20, 20, 3)]
    )
    # train mode: batch statistics of the shrunk widths come back through mutable=
    run = jp.shrunk_linen_apply(model, plan)
    _, new = jax.jit(lambda s, x: run(s, x, train=True, mutable=["batch_stats"]))(small, x)
    assert jax.tree.map(np.shape, new["batch_stats"]) == jax.tree.map(np.shape, small["batch_stats"])
    _sgd_lowers_loss(model, plan, small, x)


class TransformerBlock(nn.Module):
    qkv_features: int | None = 32

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(50, 32)(tokens)
        y = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=self.qkv_features)(
            nn.LayerNorm()(x), mask=nn.make_causal_mask(tokens)
        )
        x = x + y
        y = nn.Dense(32)(nn.gelu(nn.Dense(64)(nn.LayerNorm()(x))))
        return nn.Dense(5)((x + y).mean(1))


@pytest.mark.parametrize("qkv,kinds", [(32, "default"), (32, "all"), (None, "all")])
def test_transformer_attention(qkv, kinds):
    model, x = TransformerBlock(qkv_features=qkv), _tokens(8, 7, vocab=50)
    _, _, plan, small, masked = _setup(model, x, kinds=jp.DEFAULT_KINDS if kinds == "default" else None)
    q = small["params"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    assert q.shape == ((32, 2, 8) if kinds == "default" else (32, 2, 4))  # heads (and head_dim) pruned
    assert small["params"]["Dense_0"]["kernel"].shape == (32, 32)
    _check(
        f"Transformer (MHDPA, qkv_features={qkv}, kinds={kinds})",
        model,
        plan,
        small,
        masked,
        [x, _tokens(1, 7, vocab=50), _tokens(3, 12, vocab=50)],
    )
    if kinds == "default":
        _sgd_lowers_loss(model, plan, small, x)


class RMSNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16)(x)
        h = h + nn.Dense(16)(nn.relu(nn.Dense(32)(nn.RMSNorm()(h))))
        return nn.Dense(3)(nn.LayerNorm()(h))


@pytest.mark.parametrize("make", [TransformerBlock, RMSNet])
def test_norms_infer_their_width_through_norms(make):
    # through_norms=True prunes the residual width that LayerNorm / RMSNorm normalize: the shrunk model
    # normalizes over the kept channels, which is not the masked model: compare with the jaxpr re-evaluation
    model, x = make(), (_tokens(8, 7, vocab=50) if make is TransformerBlock else _images(8, 6))
    v = _random_like(jax.eval_shape(model.init, jax.random.key(0), x))
    graph = jp.trace_groups(lambda v, x: model.apply(v, x), v, x, through_norms=True)
    plan = jp.make_plan(v, graph, 0.5)
    assert plan.meta.get("through_norms") == ["params/Dense_0/kernel[1]"]
    small = jp.shrink(v, plan)
    assert small["params"]["LayerNorm_0"]["scale"].shape == ((16,) if make is TransformerBlock else (8,))
    run = jax.jit(jp.shrunk_linen_apply(model, plan))
    _close(
        f"{make.__name__} through_norms (vs shrunk_fn_from_graph)",
        run(small, x),
        jax.jit(jp.shrunk_fn_from_graph(graph, plan))(small, x),
    )
    other = _tokens(3, 12, vocab=50) if make is TransformerBlock else _images(1, 6)
    assert np.all(np.isfinite(np.asarray(run(small, other))))


class ConcatGroupNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.concatenate([nn.Conv(16, (3, 3))(x), nn.Conv(16, (1, 1))(x)], axis=-1)
        h = nn.relu(nn.GroupNorm(num_groups=4)(h))  # 4 groups of 8: two per branch
        return nn.Dense(5)(nn.relu(nn.Conv(8, (3, 3))(h)).mean((1, 2)))


class ConvGroupNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(32, (3, 3))(x)))
        return nn.Dense(5)(nn.relu(nn.Conv(8, (3, 3))(h)).mean((1, 2)))


def test_groupnorm_after_concat():
    model, x = ConcatGroupNorm(), _images(8, 8, 8, 3)
    _, _, plan, small, masked = _setup(model, x)
    # each branch's 16 channels are 2 whole norm groups of 8: the tracer prunes whole groups per branch (older
    # tracers found the concat [16, 16] incompatible with the norm's product [4, 8] and pruned nothing before it)
    width = small["params"]["GroupNorm_0"]["scale"].shape[0]
    branches = [small["params"][c]["kernel"].shape[-1] for c in ("Conv_0", "Conv_1")]
    assert width == sum(branches) and all(b in (8, 16) for b in branches)
    _check(
        f"Concat+GroupNorm (GroupNorm width 32 -> {width})",
        model,
        plan,
        small,
        masked,
        [x, _images(1, 8, 8, 3), _images(3, 11, 11, 3)],
    )


def test_groupnorm_whole_groups_pruned():
    model, x = ConvGroupNorm(), _images(8, 8, 8, 3)
    _, _, plan, small, masked = _setup(model, x)
    assert small["params"]["GroupNorm_0"]["scale"].shape == (16,)  # 2 of 4 groups of 8 kept
    _check(
        "Conv+GroupNorm (num_groups 4 -> 2)",
        model,
        plan,
        small,
        masked,
        [x, _images(1, 8, 8, 3), _images(3, 13, 13, 3)],
    )
    _sgd_lowers_loss(model, plan, small, x)
    with pytest.raises(ValueError, match=r"GroupNorm\.num_groups at module 'GroupNorm_0'.*no plan"):
        jp.shrunk_linen_apply(model)(small, x)


class ConvNeXtBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (2, 2), strides=2)(x)  # stem
        c = x.shape[-1]
        y = nn.Conv(c, (7, 7), feature_group_count=c)(x)  # depthwise
        y = nn.Dense(4 * c)(nn.LayerNorm()(y))
        y = nn.Dense(c)(nn.gelu(y))
        gamma = self.param("gamma", nn.initializers.constant(0.1), (c,))  # layer scale
        x = x + gamma * y
        return nn.Dense(5)(nn.LayerNorm()(x.mean((1, 2))))


def test_convnext_block():
    model, x = ConvNeXtBlock(), _images(8, 16, 16, 3)
    _, _, plan, small, masked = _setup(model, x)
    assert small["params"]["Dense_0"]["kernel"].shape == (16, 32)  # the expansion; the LayerNorm'd stream stays
    _check(
        "ConvNeXt block (depthwise 7x7, LayerNorm, gamma)",
        model,
        plan,
        small,
        masked,
        [x, _images(1, 16, 16, 3), _images(3, 24, 24, 3)],
    )
    _sgd_lowers_loss(model, plan, small, x)


class GroupedConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(32, (1, 1))(x))
        h = nn.relu(nn.Conv(32, (3, 3), feature_group_count=32)(h))  # depthwise
        h = nn.relu(nn.Conv(32, (3, 3), feature_group_count=4)(h))  # grouped, 8 channels per group
        return nn.Dense(5)(nn.Conv(16, (1, 1))(h).mean((1, 2)))


def test_depthwise_and_grouped_conv():
    model, x = GroupedConvNet(), _images(8, 8, 8, 3)
    _, _, plan, small, masked = _setup(model, x)
    p = small["params"]
    assert p["Conv_1"]["kernel"].shape[-2:] == (1, 8)  # depthwise over 8 channels
    assert p["Conv_2"]["kernel"].shape[-2:] == (4, 8)  # 2 groups of 4 -> 8
    _check("depthwise + grouped Conv", model, plan, small, masked, [x, _images(1, 8, 8, 3), _images(3, 12, 12, 3)])
    _sgd_lowers_loss(model, plan, small, x)


class TransposedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(16, (3, 3))(x))
        h = nn.relu(nn.ConvTranspose(8, (2, 2), strides=(2, 2))(h))
        h = nn.relu(nn.ConvTranspose(6, (3, 3), strides=(2, 2), transpose_kernel=True)(h))
        return nn.Conv(4, (1, 1))(h)


def test_conv_transpose():
    model, x = TransposedNet(), _images(8, 6, 6, 3)
    _, graph, plan, small, masked = _setup(model, x)
    # the tracer follows `rev` (lax.conv_transpose flips the window axes): ConvTranspose outputs are pruned too
    assert [g for g in graph.prunable if any("ConvTranspose" in m.path for m in g.roots)]
    assert small["params"]["ConvTranspose_0"]["kernel"].shape[-2:] == (8, 4)
    _check(
        "ConvTranspose (both sides, from the plan)",
        model,
        plan,
        small,
        masked,
        [x, _images(1, 6, 6, 3), _images(3, 9, 9, 3)],
    )
    _sgd_lowers_loss(model, plan, small, x)
    # output channels of both ConvTransposes sliced by hand (kept: every other channel)
    v = _random_like(jax.eval_shape(model.init, jax.random.key(0), x))
    p = v["params"]
    k0, k1 = np.arange(0, 8, 2), np.arange(0, 6, 2)
    small = {
        "params": {
            "Conv_0": p["Conv_0"],
            "ConvTranspose_0": {
                "kernel": p["ConvTranspose_0"]["kernel"][..., k0],
                "bias": p["ConvTranspose_0"]["bias"][k0],
            },
            # transpose_kernel=True: kernel is (..., features, in_features)
            "ConvTranspose_1": {
                "kernel": p["ConvTranspose_1"]["kernel"][:, :, k1][..., k0],
                "bias": p["ConvTranspose_1"]["bias"][k1],
            },
            "Conv_1": {"kernel": p["Conv_1"]["kernel"][:, :, k1], "bias": p["Conv_1"]["bias"]},
        }
    }
    m0, m1 = np.isin(np.arange(8), k0), np.isin(np.arange(6), k1)
    masked = jax.tree.map(np.copy, v)
    q = masked["params"]
    q["ConvTranspose_0"]["kernel"][..., ~m0] = 0
    q["ConvTranspose_0"]["bias"][~m0] = 0
    q["ConvTranspose_1"]["kernel"][:, :, ~m1] = 0
    q["ConvTranspose_1"]["bias"][~m1] = 0
    for shape in ((2, 6, 6, 3), (3, 5, 5, 3)):
        _close(
            "ConvTranspose (output channels, by hand)",
            jax.jit(jp.shrunk_linen_apply(model))(small, _images(*shape)),
            model.apply(masked, _images(*shape)),
        )


class DenseGeneralNet(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(20, 16)(tokens)
        h = nn.relu(nn.DenseGeneral((4, 6))(h))
        h = nn.relu(nn.DenseGeneral(8, axis=(-2, -1))(h))
        h = nn.relu(nn.Einsum((8, 6), "bi,ij->bj")(h.mean(1)))
        return nn.Dense(3)(h)


def test_dense_general_embed_einsum():
    model, x = DenseGeneralNet(), _tokens(8, 5)
    _, _, plan, small, masked = _setup(model, x)
    p = small["params"]
    assert p["Embed_0"]["embedding"].shape == (20, 8)
    assert p["DenseGeneral_0"]["kernel"].shape == (8, 2, 3) and p["DenseGeneral_1"]["kernel"].shape == (2, 3, 4)
    assert p["Einsum_0"]["kernel"].shape == (4, 3)
    _check("DenseGeneral + Embed + Einsum", model, plan, small, masked, [x, _tokens(1, 5), _tokens(3, 9)])
    _sgd_lowers_loss(model, plan, small, x)


# --------------------------------------------------------------------------- modules needing a fix
class Gain(nn.Module):
    """Reads its width from an attribute: jaxprune cannot derive it."""

    width: int

    @nn.compact
    def __call__(self, x):
        return x * self.param("w", nn.initializers.ones, (self.width,))


class SetupGain(nn.Module):
    width: int

    def setup(self):
        self.w = self.param("w", nn.initializers.ones, (self.width,))

    def __call__(self, x):
        return x * self.w


class GainNet(nn.Module):
    gain: type = Gain

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(16)(x))
        return nn.Dense(3)(self.gain(width=16, name="gain")(h))


def _width_fix(module, variables, args, kwargs):
    return {"width": variables["params"]["w"].shape[0]}


@pytest.mark.parametrize("gain", [Gain, SetupGain])
def test_custom_module_needs_a_fix(gain):
    model, x = GainNet(gain=gain), _images(8, 6)
    _, _, plan, small, masked = _setup(model, x)
    assert small["params"]["gain"]["w"].shape == (8,)
    with pytest.raises(ValueError, match=rf"{gain.__name__} at module 'gain'.*fixes=\{{{gain.__name__}: fn\}}"):
        jp.shrunk_linen_apply(model, plan)(small, x)
    _check(
        f"custom {gain.__name__} via fixes=",
        model,
        plan,
        small,
        masked,
        [x, _images(1, 6), _images(3, 6)],
        eager=True,
        fixes={gain: _width_fix},
    )
    _sgd_lowers_loss(model, plan, small, x, fixes={gain: _width_fix})


def test_register_linen_fix_and_model_unchanged():
    class Gain2(Gain):
        pass

    jp.register_linen_fix(Gain2, _width_fix)
    model = Gain2(width=4)
    small = {"params": {"w": jnp.arange(2.0)}}
    np.testing.assert_allclose(jax.jit(jp.shrunk_linen_apply(model))(small, jnp.ones((3, 2))), [[0.0, 1.0]] * 3)
    assert model.width == 4  # the bound copy was changed, not the user's module
    with pytest.raises(TypeError):
        jp.register_linen_fix(int, _width_fix)
    with pytest.raises(TypeError):
        jp.shrunk_linen_apply(model, fixes={Gain2: 3})
    with pytest.raises(ValueError, match="unknown attribute 'widht'"):
        jp.shrunk_linen_apply(model, fixes={Gain2: lambda *a: {"widht": 2}})(small, jnp.ones((1, 2)))


class SetupNet(nn.Module):
    """Submodules built in ``setup``; a second method."""

    def setup(self):
        self.body = nn.Dense(16)
        self.head = nn.Dense(3)

    def __call__(self, x):
        return self.head(self.features(x))

    def features(self, x):
        return nn.relu(self.body(x))


def test_setup_submodules_and_method():
    model, x = SetupNet(), _images(8, 6)
    _, _, plan, small, masked = _setup(model, x)
    assert small["params"]["body"]["kernel"].shape == (6, 8)
    _check("SetupNet", model, plan, small, masked, [x, _images(1, 6), _images(3, 6)])
    kept = np.asarray(plan.leaves["params/body/kernel"][1])
    feats = jax.jit(jp.shrunk_linen_apply(model, plan, method="features"))(small, x)
    _close("SetupNet", feats, model.apply(masked, x, method=SetupNet.features)[:, kept])


def test_module_called_twice_is_fixed_each_time():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            gn = nn.GroupNorm(num_groups=4)
            return gn(nn.Conv(32, (3, 3))(x)) + gn(nn.Conv(32, (1, 1))(x))

    model, x = Twice(), _images(2, 6, 6, 3)
    v = _random_like(jax.eval_shape(model.init, jax.random.key(0), x))
    keep = np.arange(16)  # the first 2 of 4 groups of 8 channels
    small = jax.tree.map(lambda a: a[..., keep], v)
    masked = jax.tree.map(lambda a: np.where(np.arange(32) < 16, a, 0).astype(a.dtype), v)
    leaf_shapes = {path: np.shape(a) for path, a in jp.leaves_with_paths(v)}  # all a GroupNorm needs
    plan = jp.PrunePlan(groups=(), leaves={}, shapes={}, leaf_shapes=leaf_shapes)
    _close(
        "GroupNorm called twice",
        jax.jit(jp.shrunk_linen_apply(model, plan))(small, x),
        jax.jit(model.apply)(masked, x)[..., :16],
    )


def test_doctests():
    from jaxprune._src.structured import linen_surgery

    assert doctest.testmod(linen_surgery).failed == 0
