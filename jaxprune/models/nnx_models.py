"""Flax NNX versions of ``SmallCNN``, ``CifarResNet`` and ``ViT`` with the Linen parameter names.

NNX modules hold their width attributes (``in_features``, ``out_features``,
``num_features``) next to their params. After structured pruning shrinks a
state, :func:`nnx_rebuild` merges it into the graph and sets those attributes
from the new shapes. The attention here derives its number of heads from the
``query`` kernel shape ``(D, heads, head_dim)``, so head pruning needs no fix-up.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> model = NnxSmallCNN(channels=(8, 16), num_classes=3, rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 16, 16, 3))).shape
  (2, 3)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune._src.tree import path_str
from jaxprune.models.layers import BN_EPS, BN_MOMENTUM

__all__ = ["NnxSmallCNN", "NnxCifarResNet", "NnxViT", "NnxHeadAttention", "nnx_rebuild", "load_linen_variables"]


def _conv(cin: int, cout: int, k: int, strides: int = 1, *, rngs: nnx.Rngs, padding: int | None = None) -> nnx.Conv:
    p = k // 2 if padding is None else padding
    return nnx.Conv(cin, cout, (k, k), strides=(strides, strides), padding=((p, p), (p, p)), use_bias=False, rngs=rngs)


def _bn(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)


class NnxSmallCNN(nnx.Module):
    """NNX twin of :class:`jaxprune.models.SmallCNN` (``conv_{i}``, ``bn_{i}``, ``head``)."""

    def __init__(
        self, channels: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_channels: int = 3, *, rngs: nnx.Rngs
    ):
        self.num_layers = len(channels)
        cin = in_channels
        for i, c in enumerate(channels):
            setattr(self, f"conv_{i}", _conv(cin, c, 3, 1 if i == 0 else 2, rngs=rngs))
            setattr(self, f"bn_{i}", _bn(c, rngs))
            cin = c
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.num_layers):
            x = getattr(self, f"conv_{i}")(x)
            x = nnx.relu(getattr(self, f"bn_{i}")(x, use_running_average=not train))
        return self.head(jnp.mean(x, axis=(1, 2)))


class _NnxBasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, strides: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, strides, rngs=rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, rngs=rngs)
        self.bn2 = _bn(cout, rngs)
        self.downsample = strides != 1 or cin != cout
        if self.downsample:
            self.downsample_conv = _conv(cin, cout, 1, strides, rngs=rngs, padding=0)
            self.downsample_bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        r = self.downsample_bn(self.downsample_conv(x), use_running_average=ura) if self.downsample else x
        if r.shape[-1] != y.shape[-1]:
            raise ValueError(
                f"NnxCifarResNet block: shortcut width {r.shape[-1]} != residual branch width "
                f"{y.shape[-1]}; residual channels must be pruned together"
            )
        return nnx.relu(y + r)


class NnxCifarResNet(nnx.Module):
    """NNX twin of :class:`jaxprune.models.CifarResNet` (basic blocks, same parameter names)."""

    def __init__(
        self,
        stage_sizes: tuple[int, ...] = (3, 3, 3),
        stage_widths: tuple[int, ...] = (16, 32, 64),
        width_multiplier: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        rngs: nnx.Rngs,
    ):
        widths = tuple(max(1, int(round(w * width_multiplier))) for w in stage_widths)
        self.conv1 = _conv(in_channels, widths[0], 3, rngs=rngs)
        self.bn1 = _bn(widths[0], rngs)
        block_names: list[str] = []
        cin = widths[0]
        for s, (n, c) in enumerate(zip(stage_sizes, widths)):
            for b in range(n):
                name = f"layer{s + 1}_{b}"
                setattr(self, name, _NnxBasicBlock(cin, c, 2 if (s > 0 and b == 0) else 1, rngs=rngs))
                block_names.append(name)
                cin = c
        self.block_names = tuple(block_names)
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        for name in self.block_names:
            x = getattr(self, name)(x, train)
        return self.fc(jnp.mean(x, axis=(1, 2)))


class _HeadProj(nnx.Module):
    """Head-shaped projection.

    ``"in"``: kernel ``(D, H, Dh)`` + bias ``(H, Dh)``; ``"out"``: ``(H, Dh, D)`` + ``(D,)``.
    """

    def __init__(self, shape: tuple[int, ...], bias_shape: tuple[int, ...], fan_in: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), shape) / jnp.sqrt(fan_in))
        self.bias = nnx.Param(jnp.zeros(bias_shape))

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel[...]
        if k.ndim == 3 and self.bias.shape == k.shape[1:]:  # (D, H, Dh): split into heads
            return jnp.einsum("...d,dhk->...hk", x, k) + self.bias[...]
        return jnp.einsum("...hk,hkd->...d", x, k) + self.bias[...]


class NnxHeadAttention(nnx.Module):
    """Multi-head attention whose number of heads is read from the ``query`` kernel shape."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs):
        self.query = _HeadProj((dim, num_heads, head_dim), (num_heads, head_dim), dim, rngs=rngs)
        self.key = _HeadProj((dim, num_heads, head_dim), (num_heads, head_dim), dim, rngs=rngs)
        self.value = _HeadProj((dim, num_heads, head_dim), (num_heads, head_dim), dim, rngs=rngs)
        self.out = _HeadProj((num_heads, head_dim, dim), (dim,), num_heads * head_dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        q, k, v = self.query(x), self.key(x), self.value(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
        if mask is not None:
            logits = jnp.where(jnp.asarray(mask).astype(bool)[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v))


class _NnxMlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.gelu(self.fc1(x), approximate=False))


class _NnxEncoderBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, eps: float, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, epsilon=eps, rngs=rngs)
        self.attn = NnxHeadAttention(dim, heads, head_dim, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, epsilon=eps, rngs=rngs)
        self.mlp = _NnxMlp(dim, mlp_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class NnxViT(nnx.Module):
    """NNX twin of :class:`jaxprune.models.ViT` (same parameter names and shapes)."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        head_dim: int = 0,
        num_classes: int = 1000,
        in_channels: int = 3,
        layer_norm_eps: float = 1e-6,
        *,
        rngs: nnx.Rngs,
    ):
        if image_size % patch_size:
            raise ValueError(f"NnxViT: image_size {image_size} is not divisible by patch_size {patch_size}")
        head_dim = head_dim or hidden_size // num_heads
        p = patch_size
        self.patch_embed = nnx.Conv(in_channels, hidden_size, (p, p), strides=(p, p), padding="VALID", rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, hidden_size)))
        n = (image_size // p) ** 2 + 1
        self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, n, hidden_size)))
        self.num_layers = num_layers
        for i in range(num_layers):
            setattr(
                self,
                f"encoder_{i}",
                _NnxEncoderBlock(hidden_size, num_heads, head_dim, mlp_dim, layer_norm_eps, rngs=rngs),
            )
        self.norm = nnx.LayerNorm(hidden_size, epsilon=layer_norm_eps, rngs=rngs)
        self.head = nnx.Linear(hidden_size, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = self.patch_embed(x)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (b, 1, d)), x], axis=1)
        x = x + self.pos_embedding[...]
        for i in range(self.num_layers):
            x = getattr(self, f"encoder_{i}")(x)
        return self.head(self.norm(x)[:, 0])


# --------------------------------------------------------------------------- surgery
def _fix_attributes(module: nnx.Module) -> None:
    """Sets width attributes of standard NNX layers from their (possibly shrunk) param shapes."""
    for _, m in nnx.iter_modules(module):
        if isinstance(m, nnx.Conv):
            k = m.kernel.shape
            m.kernel_shape = tuple(k)
            m.out_features = k[-1]
            m.in_features = k[-2] * m.feature_group_count
        elif isinstance(m, nnx.Linear):
            m.in_features, m.out_features = m.kernel.shape
        elif isinstance(m, nnx.LinearGeneral):
            k = m.kernel.shape
            n_in = len(m.in_features)
            m.in_features = tuple(k[len(k) - len(m.out_features) - n_in : len(k) - len(m.out_features)])
            m.out_features = tuple(k[len(k) - len(m.out_features) :])
        elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm)):
            ref = m.scale if getattr(m, "scale", None) is not None else getattr(m, "mean", None)
            if ref is not None:
                m.num_features = ref.shape[-1]
        elif isinstance(m, nnx.Embed):
            m.num_embeddings, m.features = m.embedding.shape
        elif isinstance(m, nnx.MultiHeadAttention):
            qk = m.query.kernel.shape  # (in, heads, head_dim)
            m.num_heads, m.head_dim = qk[-2], qk[-1]
            m.qkv_features = m.num_heads * m.head_dim
            m.in_features = qk[0]
            m.out_features = m.out.kernel.shape[-1]


def nnx_rebuild(module_or_graphdef: Any, state: Any) -> nnx.Module:
    """Merges a (possibly shrunk) ``state`` into the module's graph and fixes width attributes.

    ``module_or_graphdef`` is an NNX module or the graphdef from ``nnx.split``;
    ``state`` is the full state (params and batch stats) with the same paths.
    Standard layers (``nnx.Conv``, ``Linear``, ``LinearGeneral``, ``BatchNorm``,
    ``LayerNorm``, ``Embed``, ``MultiHeadAttention``) get their ``in_features``,
    ``out_features``, ``num_features``, ``num_heads`` ... from the new shapes.
    The input module is not modified.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> m = NnxSmallCNN(channels=(4,), num_classes=2, rngs=nnx.Rngs(0))
    >>> g, s = nnx.split(m)
    >>> s = jax.tree_util.tree_map_with_path(lambda p, a: a[..., :2] if 'conv_0' in str(p) or 'bn_0' in str(p)
    ...                                      else (a[:2] if 'head' in str(p) and a.ndim == 2 else a), s)
    >>> nnx_rebuild(g, s)(jnp.zeros((1, 8, 8, 3))).shape
    (1, 2)
    """
    if isinstance(module_or_graphdef, nnx.Module):
        graphdef, _ = nnx.split(module_or_graphdef)
    else:
        graphdef = module_or_graphdef
    try:
        model = nnx.merge(graphdef, state)
    except Exception as e:
        raise ValueError(f"nnx_rebuild: the state does not fit the module's graph: {e}") from e
    _fix_attributes(model)
    return model


def load_linen_variables(module: nnx.Module, variables: Any) -> nnx.Module:
    """Copy of ``module`` holding the Linen ``variables`` (matched by path: ``params``, ``batch_stats``).

    Shapes may differ from the module's (e.g. shrunk Linen weights): widths are fixed as in
    :func:`nnx_rebuild`. Raises ``ValueError`` naming a path present in one tree but not the other.
    """
    flat: dict[str, Any] = {}
    for coll in ("params", "batch_stats"):
        if coll in variables:
            for p, leaf in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
                flat[path_str(p)] = leaf
    graphdef, state = nnx.split(module)
    used = set()

    def pick(p, leaf):
        path = path_str(p)
        if path not in flat:
            raise ValueError(
                f"load_linen_variables: NNX leaf {path!r} has no Linen counterpart; Linen paths: {sorted(flat)[:20]}"
            )
        used.add(path)
        return jnp.asarray(flat[path])

    new_state = jax.tree_util.tree_map_with_path(pick, state)
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"load_linen_variables: Linen leaves {unused[:10]} have no NNX counterpart")
    return nnx_rebuild(graphdef, new_state)
