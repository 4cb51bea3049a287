"""Reading and writing name -> array checkpoints: safetensors (NumPy API, no torch) and torch files.

``load_state_dict(path)`` dispatches on the extension: ``.safetensors`` is read
with ``safetensors.numpy.load_file``; ``.pt``/``.pth``/``.bin`` with
jaxprune's own reader of both ``torch.save`` layouts (no torch needed; only
tensors and plain containers are accepted, like ``torch.load(weights_only=True)``). Both return ``{name: np.ndarray}``.

Example:
  >>> import numpy as np, tempfile, os
  >>> path = os.path.join(tempfile.mkdtemp(), 'w.safetensors')
  >>> save_safetensors({'fc.weight': np.ones((2, 3), np.float32)}, path)
  >>> load_state_dict(path)['fc.weight'].shape
  (2, 3)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jaxprune._src.convert.common import state_dict_to_numpy
from jaxprune._src.convert.torch_pickle import read_torch_file

__all__ = ["load_safetensors", "save_safetensors", "load_torch_state_dict", "load_state_dict"]


def _require_safetensors():
    try:
        import safetensors.numpy as stn
    except ImportError as e:  # pragma: no cover - safetensors ships with flax's deps here
        raise ImportError("reading .safetensors needs the 'safetensors' package: pip install safetensors") from e
    return stn


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: np.ndarray}`` from a ``.safetensors`` file (no torch needed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no safetensors file at {path!r}")
    stn = _require_safetensors()
    try:
        return dict(stn.load_file(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError on bad files
        size = os.path.getsize(path)
        raise ValueError(
            f"{path!r} ({size} bytes) is not a valid .safetensors file (truncated or corrupted?): "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from None


def save_safetensors(
    tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Writes ``{name: array}`` (NumPy / JAX arrays or torch tensors) to a ``.safetensors`` file."""
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict_to_numpy(tensors).items()}
    _require_safetensors().save_file(arrays, os.fspath(path), metadata=dict(metadata) if metadata else None)


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: np.ndarray}`` from a torch checkpoint (``torch.save(model.state_dict())``), read without torch.

    Both ``torch.save`` layouts (zip and the pre-1.6 legacy pickle) are read by
    :func:`jaxprune._src.convert.torch_pickle.read_torch_file`, which accepts only
    tensors and plain containers. A checkpoint dict holding the weights under
    ``'state_dict'`` or ``'model'`` is unwrapped.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no torch checkpoint at {p!r}")
    try:
        obj = read_torch_file(p)
    except ValueError as e:
        raise ValueError(
            f"{p!r} ({os.path.getsize(p)} bytes) is not a readable torch checkpoint (truncated, "
            f"corrupted, or not a state dict saved with torch.save): {str(e).splitlines()[0][:300]}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{p!r} does not hold a state dict (got {type(obj).__name__})")
    return state_dict_to_numpy(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: np.ndarray}`` from a ``.safetensors`` or torch (``.pt``, ``.pth``, ``.bin``) checkpoint."""
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    if ext == ".safetensors":
        return load_safetensors(p)
    if ext in (".pt", ".pth", ".bin", ".ckpt"):
        return load_torch_state_dict(p)
    raise ValueError(
        f"load_state_dict: unknown checkpoint extension {ext!r} of {p!r} "
        "(expected .safetensors, .pt, .pth, .bin or .ckpt)"
    )
