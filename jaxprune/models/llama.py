"""A Llama/Gemma-style decoder (Linen): RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, tied embeddings.

Parameter names: ``embed/embedding`` (tied: also the output projection),
per block ``block_{i}/attn_norm/scale``, ``block_{i}/attn/{q,k,v}/kernel``
(``(d_model, heads, head_dim)``; ``k``/``v`` have ``num_kv_heads`` heads),
``block_{i}/attn/o/kernel`` (``(heads, head_dim, d_model)``),
``block_{i}/mlp_norm/scale``, ``block_{i}/mlp/{gate,up}/kernel`` (``(d_model, mlp_dim)``),
``block_{i}/mlp/down/kernel`` and ``final_norm/scale``. Layers named in
``biases`` (``attn/o`` and ``mlp/down`` only) carry a ``bias`` (what FLAP-style
compensation adds). With ``scan_layers=True`` the blocks are one ``nn.scan`` named
``blocks`` whose params have a leading layer axis.

Blocks are separate modules so that depth pruning can drop some; structured
pruning shrinks heads, query groups, MLP channels and the embedding width.
:func:`llama_rebuild` reads every width (and the number of blocks) back from
shrunk params; ``widths`` keys are ``block_{i}/attn/q`` (query heads),
``block_{i}/attn/k`` (kv heads), ``block_{i}/mlp/gate`` (MLP width) and
``embed`` (d_model).

Example:
  >>> import jax, jax.numpy as jnp
  >>> m = llama_tiny_test()
  >>> v = m.init(jax.random.key(0), m.example_input(2))
  >>> m.apply(v, jnp.zeros((2, 5), jnp.int32)).shape
  (2, 5, 64)
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxprune._src.tree import leaves_with_paths
from jaxprune.models.core import Widths, register_model, width

__all__ = ["LlamaDecoder", "LlamaBlock", "llama_tiny_test", "llama_small", "llama_rebuild", "rope"]

_INIT = nn.initializers.normal(0.02)


def rope(x: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half form) on ``x`` of shape ``(batch, seq, heads, head_dim)``.

    >>> rope(jnp.ones((1, 3, 2, 4))).shape
    (1, 3, 2, 4)
    """
    seq, dim = x.shape[1], x.shape[-1]
    inv = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    ang = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv[None, :]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[None, :, None, :].astype(x.dtype)
    sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[None, :, None, :].astype(x.dtype)
    half = dim // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def _gqa(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal grouped-query attention; q ``(b, s, hq, d)``, k/v ``(b, s, hkv, d)`` -> ``(b, s, hq, d)``."""
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, s, hkv, hq // hkv, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k) / jnp.sqrt(jnp.float32(d)).astype(q.dtype)
    causal = jnp.tril(jnp.ones((s, s), bool))
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", w, v).reshape(b, s, hq, d)


class LlamaBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    attn_bias: bool = False
    mlp_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{self.name}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        h = nn.RMSNorm(epsilon=self.norm_eps, name="attn_norm")(x)
        x = x + _Attention(
            self.num_heads, self.num_kv_heads, self.head_dim, self.d_model, self.rope_base, self.attn_bias, name="attn"
        )(h)
        h = nn.RMSNorm(epsilon=self.norm_eps, name="mlp_norm")(x)
        return x + _GatedMlp(self.mlp_dim, self.d_model, self.mlp_bias, name="mlp")(h)


class _Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_model: int
    rope_base: float
    out_bias: bool

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        def proj(n: int, name: str) -> jax.Array:
            return nn.DenseGeneral((n, self.head_dim), use_bias=False, kernel_init=_INIT, name=name)(h)

        q = rope(proj(self.num_heads, "q"), self.rope_base)
        k = rope(proj(self.num_kv_heads, "k"), self.rope_base)
        a = _gqa(q, k, proj(self.num_kv_heads, "v"))
        return nn.DenseGeneral(self.d_model, axis=(-2, -1), use_bias=self.out_bias, kernel_init=_INIT, name="o")(a)


class _GatedMlp(nn.Module):
    mlp_dim: int
    d_model: int
    out_bias: bool

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        gate = nn.Dense(self.mlp_dim, use_bias=False, kernel_init=_INIT, name="gate")(h)
        up = nn.Dense(self.mlp_dim, use_bias=False, kernel_init=_INIT, name="up")(h)
        return nn.Dense(self.d_model, use_bias=self.out_bias, kernel_init=_INIT, name="down")(nn.silu(gate) * up)


class _ScanBody(nn.Module):
    """One scanned step: the block, or the identity where ``keep`` is 0."""

    cfg: dict

    @nn.compact
    def __call__(self, x: jax.Array, keep: jax.Array):
        y = LlamaBlock(**self.cfg, name="block")(x)
        y = jnp.where(keep > 0, y, x)
        return y, y


@register_model
class LlamaDecoder(nn.Module):
    """Decoder-only LM; ``__call__(tokens) -> logits (batch, seq, vocab_size)``.

    Attributes:
      vocab_size, num_layers, d_model, num_heads, num_kv_heads, head_dim, mlp_dim: the architecture.
      rope_base, norm_eps: RoPE base and RMSNorm epsilon.
      biases: layer paths (``block_{i}/attn/o``, ``block_{i}/mlp/down``; scanned: ``blocks/block/...``) that
        have an output bias (added by compensation; :func:`llama_rebuild` reads them from the params).
      scan_layers: one ``nn.scan`` over identical blocks (params stacked on a leading axis) instead of
        ``num_layers`` modules ``block_{i}``.
      widths: per-block pruned widths (see the module docstring); read from params by :func:`llama_rebuild`.
    """

    vocab_size: int = 256
    num_layers: int = 4
    d_model: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    mlp_dim: int = 384
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    biases: tuple[str, ...] = ()
    scan_layers: bool = False
    widths: Widths = ()

    def example_input(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, 8), jnp.int32)

    def block_config(self, prefix: str) -> dict:
        """Keyword arguments of the :class:`LlamaBlock` at ``prefix`` (``"block_{i}"``, or ``"blocks/block"``)."""
        w = self.widths
        return dict(
            d_model=width(w, "embed", self.d_model),
            num_heads=width(w, f"{prefix}/attn/q", self.num_heads),
            num_kv_heads=width(w, f"{prefix}/attn/k", self.num_kv_heads),
            head_dim=self.head_dim,
            mlp_dim=width(w, f"{prefix}/mlp/gate", self.mlp_dim),
            rope_base=self.rope_base,
            norm_eps=self.norm_eps,
            attn_bias=f"{prefix}/attn/o" in self.biases,
            mlp_bias=f"{prefix}/mlp/down" in self.biases,
        )

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        train: bool = False,
        *,
        skip: Sequence[int] = (),
        return_hidden: bool = False,
    ) -> Any:
        """Logits of ``tokens`` (int, ``(batch, seq)``).

        Args:
          train: unused (no dropout); accepted for the reference-model contract.
          skip: block indices replaced by the identity (depth-pruning ablations).
          return_hidden: also return the residual stream before block 0 and after every block, a list of
            ``num_layers + 1`` arrays ``(batch, seq, d_model)`` (stacked into one array when scanned).
        """
        del train
        skip = tuple(int(i) for i in skip)
        for i in skip:
            if not 0 <= i < self.num_layers:
                raise ValueError(f"LlamaDecoder: skip index {i} out of range for {self.num_layers} blocks")
        embed = nn.Embed(self.vocab_size, width(self.widths, "embed", self.d_model), embedding_init=_INIT, name="embed")
        x = embed(tokens)
        hidden: Any = [x]
        if self.scan_layers:
            keep = jnp.asarray([0 if i in skip else 1 for i in range(self.num_layers)], jnp.int32)
            scan = nn.scan(
                _ScanBody,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=0,
                length=self.num_layers,
            )
            x, ys = scan(self.block_config("blocks/block"), name="blocks")(x, keep)
            hidden = jnp.concatenate([hidden[0][None], ys], 0)
        else:
            for i in range(self.num_layers):
                blk = LlamaBlock(**self.block_config(f"block_{i}"), name=f"block_{i}")
                if i not in skip or self.is_initializing():
                    y = blk(x)
                    x = x if i in skip else y
                hidden.append(x)
        logits = embed.attend(nn.RMSNorm(epsilon=self.norm_eps, name="final_norm")(x))
        return (logits, hidden) if return_hidden else logits


def llama_tiny_test(**kw: Any) -> LlamaDecoder:
    """A tiny decoder for tests (vocab 64, 2 blocks, d_model 32, 4 query / 2 kv heads of 8, MLP 48)."""
    cfg = dict(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48)
    cfg.update(kw)
    return LlamaDecoder(**cfg)  # type: ignore[arg-type]


def llama_small(**kw: Any) -> LlamaDecoder:
    """The byte-level decoder trained by ``scripts/prune_llm.py`` (4 blocks, d_model 128, 8/4 heads of 16, MLP 384)."""
    cfg = dict(vocab_size=256, num_layers=4, d_model=128, num_heads=8, num_kv_heads=4, head_dim=16, mlp_dim=384)
    cfg.update(kw)
    return LlamaDecoder(**cfg)  # type: ignore[arg-type]


_BLOCK_RX = re.compile(r"^block_(\d+)$")


def llama_rebuild(model: LlamaDecoder, variables: Any) -> LlamaDecoder:
    """``model`` with ``num_layers``, ``biases`` and every width read from (shrunk) ``variables``.

    Works after structured pruning (heads, kv heads, MLP width, embedding width),
    depth pruning (fewer ``block_{i}``, or a shorter scanned stack) and
    compensation (biases added). Raises ``ValueError`` naming the leaf when a
    shape cannot be explained (e.g. a pruned ``head_dim``).

    >>> import jax
    >>> m = llama_tiny_test()
    >>> v = m.init(jax.random.key(0), m.example_input(1))
    >>> p = dict(v['params']); p['block_0'] = dict(p['block_0'])
    >>> mlp = dict(p['block_0']['mlp'])
    >>> mlp['gate'] = {'kernel': mlp['gate']['kernel'][:, :8]}; mlp['up'] = {'kernel': mlp['up']['kernel'][:, :8]}
    >>> mlp['down'] = {'kernel': mlp['down']['kernel'][:8]}; p['block_0']['mlp'] = mlp
    >>> llama_rebuild(m, {'params': p}).widths
    (('block_0/mlp/gate', 8),)
    """
    if not isinstance(model, LlamaDecoder):
        raise TypeError(f"llama_rebuild: expected a LlamaDecoder, got {type(model).__name__}")
    params = variables["params"] if "params" in variables else variables
    shapes = {p: tuple(np.shape(x)) for p, x in leaves_with_paths(params)}
    if "embed/embedding" not in shapes:
        raise ValueError("llama_rebuild: params have no leaf 'embed/embedding'")
    vocab, d_model = shapes["embed/embedding"]
    scan = any(p.startswith("blocks/") for p in shapes)
    widths: list[tuple[str, int]] = []
    if d_model != model.d_model:
        widths.append(("embed", int(d_model)))
    biases = tuple(sorted(p[: -len("/bias")] for p in shapes if p.endswith(("attn/o/bias", "mlp/down/bias"))))
    if scan:
        q = shapes.get("blocks/block/attn/q/kernel")
        if q is None:
            raise ValueError("llama_rebuild: scanned params have no leaf 'blocks/block/attn/q/kernel'")
        num_layers = q[0]
        prefixes = [("blocks/block", "blocks/block", 1)]
    else:
        idx = sorted({int(m.group(1)) for p in shapes if (m := _BLOCK_RX.match(p.split("/")[0]))})
        if idx != list(range(len(idx))):
            raise ValueError(f"llama_rebuild: blocks must be numbered block_0..block_{{L-1}}, got indices {idx}")
        num_layers = len(idx)
        prefixes = [(f"block_{i}", f"block_{i}", 0) for i in idx]
    for pre, key, lead in prefixes:
        try:
            heads = shapes[f"{pre}/attn/q/kernel"][lead + 1]
            kv = shapes[f"{pre}/attn/k/kernel"][lead + 1]
            hd = shapes[f"{pre}/attn/q/kernel"][lead + 2]
            mlp = shapes[f"{pre}/mlp/gate/kernel"][lead + 1]
        except KeyError as e:
            raise ValueError(f"llama_rebuild: params have no leaf {e.args[0]!r}") from None
        if hd != model.head_dim:
            raise ValueError(
                f"llama_rebuild: leaf {pre}/attn/q/kernel has head_dim {hd}, the model has {model.head_dim} "
                "(head_dim is never pruned: RoPE needs it)"
            )
        for name, value, default in (
            (f"{key}/attn/q", heads, model.num_heads),
            (f"{key}/attn/k", kv, model.num_kv_heads),
            (f"{key}/mlp/gate", mlp, model.mlp_dim),
        ):
            if value != default:
                widths.append((name, int(value)))
    new = model.clone(
        vocab_size=int(vocab), num_layers=int(num_layers), biases=biases, scan_layers=scan, widths=tuple(widths)
    )
    expected = jax.eval_shape(lambda: new.init(jax.random.key(0), new.example_input(1)))
    exp = {p: tuple(x.shape) for p, x in leaves_with_paths(expected["params"])}
    for path, shape in shapes.items():
        if path not in exp:
            raise ValueError(f"llama_rebuild: leaf {path!r} is not a parameter of the rebuilt model")
        if exp[path] != shape:
            raise ValueError(f"llama_rebuild: leaf {path!r} has shape {shape}, the rebuilt model expects {exp[path]}")
    missing = sorted(set(exp) - set(shapes))
    if missing:
        raise ValueError(f"llama_rebuild: params lack leaves {missing[:6]} of the rebuilt model")
    return new
