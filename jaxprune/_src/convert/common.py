"""Checked assembly of Flax variables from a name -> array mapping (a PyTorch-style state dict).

A converter describes the conversion as a list of :class:`Entry` objects:
"the Flax leaf ``params/layer1_0/conv1/kernel`` is ``conv_kernel(sd['layer1.0.conv1.weight'])``".
:func:`assemble` then does all the checking in one place:

* every source key an entry needs must exist (else ``KeyError``-like
  ``ValueError`` listing the *missing* keys by their source names);
* every source key must be used or match an ``ignore`` regex (else
  ``ValueError`` listing the *unexpected* keys);
* every converted array must have the shape the Flax model expects (else
  ``ValueError`` naming the source key, the Flax path, the source shape, the
  converted shape and the expected shape);
* every variable of the Flax model must be produced.

Arrays may be NumPy arrays, JAX arrays or torch tensors (converted with
``.detach().cpu().numpy()``; torch itself is never imported here).

Example:
  >>> import numpy as np
  >>> sd = {'fc.weight': np.ones((3, 4)), 'fc.bias': np.zeros(3)}
  >>> entries = [Entry('params/fc/kernel', 'fc.weight', linear_kernel), Entry('params/fc/bias', 'fc.bias')]
  >>> v = assemble(sd, entries, {'params/fc/kernel': (4, 3), 'params/fc/bias': (3,)})
  >>> v['params']['fc']['kernel'].shape
  (4, 3)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from jaxprune._src.tree import leaves_with_paths

__all__ = [
    "Entry",
    "assemble",
    "to_numpy",
    "state_dict_to_numpy",
    "expected_shapes",
    "model_shapes",
    "conv_kernel",
    "linear_kernel",
    "identity",
    "strip_prefix",
]

StateDict = Mapping[str, Any]


def to_numpy(x: Any, name: str = "<array>") -> np.ndarray:
    """A NumPy array from a NumPy / JAX array or a torch tensor (no torch import needed).

    >>> to_numpy([1.0, 2.0]).dtype
    dtype('float64')
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to a NumPy array: {e}") from e


def state_dict_to_numpy(state_dict: StateDict) -> dict[str, np.ndarray]:
    """``{name: np.ndarray}`` from a mapping of arrays or torch tensors (a torch ``state_dict()``).

    >>> state_dict_to_numpy({'w': [[1, 2]]})['w'].shape
    (1, 2)
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}")
    out = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise TypeError(f"state_dict keys must be str, got {k!r} ({type(k).__name__})")
        out[k] = to_numpy(v, k)
    return out


def strip_prefix(state_dict: StateDict, prefix: str) -> dict[str, Any]:
    """Keys starting with ``prefix`` with it removed; other keys unchanged.

    >>> strip_prefix({'bert.a': 1, 'cls.b': 2}, 'bert.')
    {'a': 1, 'cls.b': 2}
    """
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


# ----------------------------------------------------------------------------- transforms
def identity(x: np.ndarray) -> np.ndarray:
    """No change (biases, norm scales, embeddings)."""
    return x


def conv_kernel(x: np.ndarray) -> np.ndarray:
    """PyTorch conv weight ``(out, in, kh, kw)`` -> Flax kernel ``(kh, kw, in, out)``.

    >>> conv_kernel(np.zeros((8, 3, 5, 5))).shape
    (5, 5, 3, 8)
    """
    if x.ndim != 4:
        raise ValueError(f"expected a 4-d conv weight (out, in, kh, kw), got shape {x.shape}")
    return np.transpose(x, (2, 3, 1, 0))


def linear_kernel(x: np.ndarray) -> np.ndarray:
    """PyTorch linear weight ``(out, in)`` -> Flax kernel ``(in, out)``.

    >>> linear_kernel(np.zeros((8, 3))).shape
    (3, 8)
    """
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d linear weight (out, in), got shape {x.shape}")
    return np.transpose(x)


# ----------------------------------------------------------------------------- assembly
@dataclasses.dataclass(frozen=True)
class Entry:
    """One Flax leaf: ``dst`` ("collection/a/b/leaf") = ``fn(source[src])``."""

    dst: str
    src: str
    fn: Callable[[np.ndarray], np.ndarray] = identity


def expected_shapes(variables: Any) -> dict[str, tuple[int, ...]]:
    """``{"collection/path": shape}`` of a Linen variables dict (arrays or ``ShapeDtypeStruct``).

    >>> expected_shapes({'params': {'fc': {'bias': np.zeros(3)}}})
    {'params/fc/bias': (3,)}
    """
    return {p: tuple(np.shape(x)) for p, x in leaves_with_paths(variables)}


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _set(tree: dict, path: str, value: Any) -> None:
    parts = path.split("/")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"converter bug: {path!r} nests under a leaf")
    if parts[-1] in node:
        raise ValueError(f"converter bug: two entries write {path!r}")
    node[parts[-1]] = value


def _check_weight(raw: np.ndarray, key: str, dst: str, what: str) -> None:
    """Raises naming ``key`` if a used source array is not floating point or holds NaN/inf."""
    if not jax.numpy.issubdtype(raw.dtype, jax.numpy.floating):  # (bfloat16 counts as floating)
        raise TypeError(
            f"{what}: key {key!r} (for {dst}) has dtype {raw.dtype}; weights must be floating "
            "point (an integer/bool tensor here is a wrong or quantized checkpoint)"
        )
    if raw.size and not np.isfinite(raw).all():
        n_nan, n_inf = int(np.isnan(raw).sum()), int(np.isinf(raw).sum())
        raise ValueError(
            f"{what}: key {key!r} (for {dst}) holds {n_nan} NaN and {n_inf} inf value(s); "
            "the checkpoint is corrupted or diverged"
        )


def assemble(
    source: StateDict,
    entries: Iterable[Entry],
    expected: Mapping[str, tuple[int, ...]] | Callable[[], Mapping[str, tuple[int, ...]]] | None = None,
    *,
    ignore: Sequence[str] = (),
    what: str = "checkpoint",
    dtype: Any = None,
) -> dict:
    """Builds a nested Flax variables dict from ``source`` according to ``entries``, with full checking.

    Args:
      source: name -> array (NumPy, JAX, or torch tensors).
      entries: the conversion, one :class:`Entry` per Flax leaf (one source key may feed several).
      expected: ``{"collection/path": shape}`` of the target model (see :func:`expected_shapes`),
        or a function returning it (called only after the key checks passed); ``None`` skips the
        shape / completeness check against a model.
      ignore: regexes (``re.search``) of source keys that may be left unused (buffers such as
        ``num_batches_tracked`` or ``position_ids``).
      what: a name for the source used in error messages.
      dtype: cast every array to this dtype (default: keep, but float64 -> float32).

    Raises:
      ValueError: naming the missing, unexpected or mis-shaped keys, or a used key holding NaN/inf.
      TypeError: naming a used key whose array is not floating point (e.g. int64).
    """
    entries = list(entries)
    missing = sorted({e.src for e in entries if e.src not in source})
    if missing:
        needed_by = {e.src: e.dst for e in entries}
        detail = "; ".join(f"{k!r} (for {needed_by[k]})" for k in missing[:6])
        raise ValueError(f"{what}: missing {len(missing)} key(s): {_listing(missing)}. First: {detail}")
    used = {e.src for e in entries}
    ig = [re.compile(r) for r in ignore]
    unexpected = sorted(k for k in source if k not in used and not any(r.search(k) for r in ig))
    if unexpected:
        raise ValueError(
            f"{what}: {len(unexpected)} unexpected key(s) not used by the converter: {_listing(unexpected)}"
        )
    if callable(expected):
        expected = expected()
    out: dict = {}
    for e in entries:
        raw = to_numpy(source[e.src], e.src)
        _check_weight(raw, e.src, e.dst, what)
        try:
            arr = np.asarray(e.fn(raw))
        except Exception as err:
            raise ValueError(
                f"{what}: key {e.src!r} with shape {raw.shape} cannot be converted to {e.dst}: {err}"
            ) from None
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if expected is not None:
            if e.dst not in expected:
                raise ValueError(f"{what}: key {e.src!r} maps to {e.dst}, which the target model does not have")
            if tuple(arr.shape) != tuple(expected[e.dst]):
                raise ValueError(
                    f"{what}: key {e.src!r} has shape {tuple(raw.shape)} -> {tuple(arr.shape)} for {e.dst}, "
                    f"but the model expects {tuple(expected[e.dst])}"
                )
        _set(out, e.dst, np.ascontiguousarray(arr))
    if expected is not None:
        produced = {e.dst for e in entries}
        absent = sorted(set(expected) - produced)
        if absent:
            raise ValueError(f"{what}: the converter produced no value for model variable(s) {_listing(absent)}")
    return out


def model_shapes(model: Any, *args: Any, **kwargs: Any) -> dict[str, tuple[int, ...]]:
    """Expected variable shapes of a Linen ``model`` (abstract init on ``model.example_input(1)``)."""
    if not args:
        args = (model.example_input(1),)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
    return expected_shapes(shapes)


def attn_out_kernel(heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Converter of an attention output weight ``(D, H*Dh)`` (torch layout) to ``(H, Dh, D)``."""

    def fn(w: np.ndarray) -> np.ndarray:
        if w.ndim != 2 or w.shape[1] % heads:
            raise ValueError(f"expected an attention output weight (D, H*Dh) with H={heads}, got shape {w.shape}")
        return w.T.reshape(heads, w.shape[1] // heads, w.shape[0])

    return fn


def layer_norm_entries(flax: str, torch: str) -> list[Entry]:
    """LayerNorm ``weight``/``bias`` -> ``scale``/``bias``."""
    return [Entry(f"params/{flax}/scale", f"{torch}.weight"), Entry(f"params/{flax}/bias", f"{torch}.bias")]


def dense_entries(flax: str, torch: str) -> list[Entry]:
    """torch Linear ``weight (out, in)``/``bias`` -> Flax Dense ``kernel (in, out)``/``bias``."""
    return [
        Entry(f"params/{flax}/kernel", f"{torch}.weight", linear_kernel),
        Entry(f"params/{flax}/bias", f"{torch}.bias"),
    ]


def count_layers(state_dict: Mapping[str, Any], prefix: str, what: str) -> int:
    """Number of layers ``{prefix}.{i}.*`` (``prefix`` a regex), checking the indices are contiguous."""
    idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^{prefix}\.(\d+)\.", k))}
    if idx != set(range(len(idx))):
        raise ValueError(f"{what}: layer indices are not contiguous: {sorted(idx)}")
    return len(idx)
