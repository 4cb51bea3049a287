"""Hugging Face BERT-style encoders (``BertModel`` state dicts / safetensors) -> :class:`jaxprune.models.BertEncoder`.

Name mapping (HF -> Flax), ``D`` hidden, ``H`` heads, ``Dh = D / H``:

=================================================  ============================================
``embeddings.{word,position,token_type}_embeddings``  ``embeddings/{...}/embedding``
``embeddings.LayerNorm``                           ``embeddings/LayerNorm``
``encoder.layer.{i}.attention.self.{query,key,value}.weight`` (D, D)
                                                   ``layer_{i}/attention/{...}/kernel`` (D, H, Dh)
``... .bias`` (D,)                                 ``layer_{i}/attention/{...}/bias`` (H, Dh)
``encoder.layer.{i}.attention.output.dense.weight``  ``layer_{i}/attention/out/kernel`` (H, Dh, D)
``encoder.layer.{i}.attention.output.LayerNorm``   ``layer_{i}/attention_norm``
``encoder.layer.{i}.intermediate.dense``           ``layer_{i}/mlp/fc1``
``encoder.layer.{i}.output.dense``                 ``layer_{i}/mlp/fc2``
``encoder.layer.{i}.output.LayerNorm``             ``layer_{i}/output_norm``
``pooler.dense``                                   ``pooler``
=================================================  ============================================

A ``bert.`` prefix (``BertFor...`` checkpoints) is stripped; old-style
LayerNorm names ``gamma``/``beta`` are accepted; the ``embeddings.position_ids``
buffer is ignored, and so are task heads under ``cls.`` (pass ``ignore=()``
to be strict). The number of heads comes from the HF ``config.json``
(``num_attention_heads``); without a config it defaults to ``hidden / 64``.

Example:
  >>> import jax
  >>> from jaxprune.models import bert_tiny_test
  >>> m = bert_tiny_test()
  >>> sd = flax_to_hf_bert(m.init(jax.random.key(0), m.example_input(1)))
  >>> convert_hf_bert(sd, m)['params']['layer_0']['attention']['query']['kernel'].shape
  (32, 4, 8)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxprune._src.convert.common import (
    Entry,
    assemble,
    attn_out_kernel,
    count_layers,
    dense_entries,
    layer_norm_entries,
    linear_kernel,
    model_shapes,
    to_numpy,
)
from jaxprune._src.tree import leaves_with_paths

__all__ = ["hf_bert_config", "convert_hf_bert", "from_hf_bert", "flax_to_hf_bert", "normalize_hf_bert_keys"]

DEFAULT_IGNORE = (r"(^|\.)position_ids$", r"^cls\.")

_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)


def normalize_hf_bert_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strips a ``bert.`` prefix and renames LayerNorm ``gamma``/``beta`` to ``weight``/``bias``.

    >>> sorted(normalize_hf_bert_keys({'bert.embeddings.LayerNorm.gamma': 0, 'cls.x': 1}))
    ['cls.x', 'embeddings.LayerNorm.weight']
    """
    out = {}
    for k, v in state_dict.items():
        k2 = k[len("bert.") :] if k.startswith("bert.") else k
        k2 = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k2)
        k2 = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k2)
        if k2 in out:
            raise ValueError(f"HF BERT state dict: keys {k!r} and another both normalise to {k2!r}")
        out[k2] = v
    return out


def _heads_kernel(heads: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(w: np.ndarray) -> np.ndarray:  # (H*Dh, D) -> (D, H, Dh)
        if w.ndim != 2 or w.shape[0] % heads:
            raise ValueError(f"expected a (H*Dh, D) projection weight with H={heads}, got shape {w.shape}")
        return w.T.reshape(w.shape[1], heads, w.shape[0] // heads)

    return fn


def _heads_bias(heads: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(b: np.ndarray) -> np.ndarray:  # (H*Dh,) -> (H, Dh)
        if b.ndim != 1 or b.shape[0] % heads:
            raise ValueError(f"expected a (H*Dh,) projection bias with H={heads}, got shape {b.shape}")
        return b.reshape(heads, b.shape[0] // heads)

    return fn


def hf_bert_config(state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None, **overrides: Any) -> dict:
    """Keyword arguments of :class:`jaxprune.models.BertEncoder` from a state dict and an optional HF config dict.

    Values in ``config`` (a parsed ``config.json``) win over shapes; ``overrides`` win over both.
    Raises ``ValueError`` if the config contradicts the tensor shapes, or if it
    asks for something the reference model does not implement (non-GELU
    activation, relative position embeddings).

    >>> import numpy as np
    >>> sd = {'embeddings.word_embeddings.weight': np.zeros((100, 128)),
    ...       'embeddings.position_embeddings.weight': np.zeros((16, 128)),
    ...       'embeddings.token_type_embeddings.weight': np.zeros((2, 128)),
    ...       'encoder.layer.0.intermediate.dense.weight': np.zeros((512, 128))}
    >>> hf_bert_config(sd)['num_attention_heads']
    2
    """
    sd = normalize_hf_bert_keys(state_dict)
    need = (
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "encoder.layer.0.intermediate.dense.weight",
    )
    for k in need:
        if k not in sd:
            raise ValueError(f"HF BERT: missing key {k!r} (is this a BertModel state dict?)")
    shape = lambda k: tuple(np.shape(to_numpy(sd[k], k)))  # noqa: E731
    vocab, d = shape(need[0])
    cfg = dict(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=count_layers(sd, r"encoder\.layer", "HF BERT"),
        num_attention_heads=max(1, d // 64),
        intermediate_size=shape(need[3])[0],
        max_position_embeddings=shape(need[1])[0],
        type_vocab_size=shape(need[2])[0],
        layer_norm_eps=1e-12,
    )
    if config is not None:
        act = config.get("hidden_act", "gelu")
        if act not in ("gelu",):
            raise ValueError(f"HF BERT config: hidden_act={act!r} is not supported (only exact 'gelu')")
        pe = config.get("position_embedding_type", "absolute")
        if pe != "absolute":
            raise ValueError(f"HF BERT config: position_embedding_type={pe!r} is not supported (only 'absolute')")
        for f in _CONFIG_FIELDS:
            if f in config:
                if f != "num_attention_heads" and f != "layer_norm_eps" and config[f] != cfg[f]:
                    raise ValueError(f"HF BERT: config {f}={config[f]} but the tensors give {cfg[f]}")
                cfg[f] = config[f]
    cfg.update(overrides)
    return cfg


def _entries(num_layers: int, heads: int, pooler: bool) -> list[Entry]:
    e = "embeddings"
    entries = [
        Entry(f"params/{e}/{n}/embedding", f"{e}.{n}.weight")
        for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    entries += layer_norm_entries(f"{e}/LayerNorm", f"{e}.LayerNorm")
    for i in range(num_layers):
        t, f = f"encoder.layer.{i}", f"layer_{i}"
        for n in ("query", "key", "value"):
            entries += [
                Entry(f"params/{f}/attention/{n}/kernel", f"{t}.attention.self.{n}.weight", _heads_kernel(heads)),
                Entry(f"params/{f}/attention/{n}/bias", f"{t}.attention.self.{n}.bias", _heads_bias(heads)),
            ]
        entries += [
            Entry(f"params/{f}/attention/out/kernel", f"{t}.attention.output.dense.weight", attn_out_kernel(heads)),
            Entry(f"params/{f}/attention/out/bias", f"{t}.attention.output.dense.bias"),
        ]
        entries += layer_norm_entries(f"{f}/attention_norm", f"{t}.attention.output.LayerNorm")
        entries += dense_entries(f"{f}/mlp/fc1", f"{t}.intermediate.dense") + dense_entries(
            f"{f}/mlp/fc2", f"{t}.output.dense"
        )
        entries += layer_norm_entries(f"{f}/output_norm", f"{t}.output.LayerNorm")
    if pooler:
        entries += dense_entries("pooler", "pooler.dense")
    return entries


def convert_hf_bert(
    state_dict: Mapping[str, Any],
    model: Any = None,
    *,
    config: Mapping[str, Any] | None = None,
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> dict:
    """Flax variables ``{'params': ...}`` for a :class:`~jaxprune.models.BertEncoder` from a HF BERT state dict.

    ``model`` defaults to the encoder described by :func:`hf_bert_config`
    (pass the parsed ``config.json`` as ``config`` to get the right number of
    heads). Raises ``ValueError`` naming any missing, unexpected (not matched by
    ``ignore``) or mis-shaped key.
    """
    if model is None:
        from jaxprune.models import BertEncoder

        model = BertEncoder(**hf_bert_config(state_dict, config))
    sd = normalize_hf_bert_keys(state_dict)
    entries = _entries(model.num_hidden_layers, model.num_attention_heads, pooler=True)
    return assemble(sd, entries, lambda: model_shapes(model), ignore=ignore, what="HF BERT state dict")


def from_hf_bert(
    state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None, **overrides: Any
) -> tuple[Any, dict]:
    """``(model, variables)`` for a HF BERT state dict (e.g. ``safetensors.numpy.load_file('model.safetensors')``).

    ``model.apply(variables, input_ids, attention_mask)`` returns
    ``(last_hidden_state, pooled_output)`` like ``transformers.BertModel``.
    """
    from jaxprune.models import BertEncoder

    model = BertEncoder(**hf_bert_config(state_dict, config, **overrides))
    return model, convert_hf_bert(state_dict, model)


def flax_to_hf_bert(variables: Any) -> dict[str, np.ndarray]:
    """The inverse mapping: a HF ``BertModel``-style state dict (NumPy) from :class:`BertEncoder` variables."""
    flat = {p: np.asarray(x) for p, x in leaves_with_paths(variables)}
    n = len({m.group(1) for p in flat if (m := re.match(r"params/layer_(\d+)/", p))})
    out = {}
    for e in _entries(n, 1, pooler="params/pooler/kernel" in flat):
        x = flat[e.dst]
        if re.search(r"attention\.self\.\w+\.weight$", e.src):
            x = x.reshape(x.shape[0], -1).T
        elif re.search(r"attention\.self\.\w+\.bias$", e.src):
            x = x.reshape(-1)
        elif e.src.endswith("attention.output.dense.weight"):
            x = x.reshape(-1, x.shape[-1]).T
        elif e.fn is linear_kernel:
            x = x.T
        out[e.src] = np.ascontiguousarray(x)
    return out
