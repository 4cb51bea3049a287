"""Reading ``torch.save``'d state dicts into NumPy without PyTorch.

``torch.save`` writes one of two layouts, both read here:

* **zip** (torch >= 1.6): an archive ``<name>/data.pkl`` (the pickled object,
  whose tensors are ``persistent_id`` references to storages) plus one raw file
  ``<name>/data/<key>`` per storage (little-endian unless ``<name>/byteorder``
  says otherwise).
* **legacy** (torch < 1.6): a sequence of pickles — magic number, protocol
  version, system info, the object, the list of storage keys — followed by each
  storage as an int64 element count and its raw bytes.

The object pickle is read with a restricted unpickler: only plain containers,
``OrderedDict``, torch's tensor-rebuild functions and storage *type names*
resolve; any other global raises (the same safety idea as
``torch.load(weights_only=True)``). Each tensor becomes a ``np.ndarray`` view
built from its storage, offset, size and stride (a copy is returned, so the
arrays own their memory).

Example:
  >>> import io
  >>> read_torch_file(io.BytesIO(b"not a checkpoint"))
  Traceback (most recent call last):
  ...
  ValueError: not a torch.save file: neither a zip archive nor the legacy pickle layout (UnpicklingError: ...)
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import IO, Any, Callable

import ml_dtypes
import numpy as np

__all__ = ["read_torch_file", "TORCH_STORAGE_DTYPES"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage type names (as pickled by torch) -> NumPy dtypes.
TORCH_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. inside the pickle: only its dtype matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, TORCH_STORAGE_DTYPES[name]


class _Storage:
    """A storage's flat array, filled in once the raw bytes are read (legacy layout reads them last)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.array: np.ndarray | None = None


class _Tensor:
    """A tensor waiting for its storage's bytes: materialized by :func:`_materialize`."""

    def __init__(self, storage: Any, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


_TENSOR_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], load_storage: Callable[[tuple], Any]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in _TENSOR_FUNCTIONS:
            return _TENSOR_FUNCTIONS[name]
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only tensors, storages and plain containers are read "
            "(a state dict saved with torch.save(model.state_dict()))"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        return self._load_storage(pid[1:])


def _storage_dtype(storage_type: Any) -> np.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r:.80}")


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        st = obj.storage
        base = st.array if isinstance(st, _Storage) else None
        if base is None:
            raise ValueError("a tensor's storage bytes are missing (truncated file?)")
        need = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1 if all(obj.size) else 0
        if need > base.size:
            raise ValueError(f"a tensor of size {obj.size} needs {need} elements, its storage has {base.size}")
        strides = tuple(s * base.itemsize for s in obj.stride)
        view = np.lib.stride_tricks.as_strided(base[obj.offset :], shape=obj.size, strides=strides, writeable=False)
        return np.array(view)  # own the memory, C order
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_zip(f: IO[bytes]) -> Any:
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"zip archive without exactly one data.pkl (found {len(pkl)}): not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        big = prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() == b"big"
        storages: dict[str, _Storage] = {}

        def load_storage(args: tuple) -> _Storage:
            storage_type, key, _location, numel = args[:4]
            key = str(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type)
                st = _Storage(dtype, int(numel))
                raw = z.read(f"{prefix}data/{key}")
                st.array = np.frombuffer(raw, dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype)
                storages[key] = st
            return storages[key]

        return _Unpickler(io.BytesIO(z.read(pkl[0])), load_storage).load()


def _read_legacy(f: IO[bytes]) -> Any:
    if pickle.load(f) != LEGACY_MAGIC:  # noqa: S301 - an int, checked before anything else is read
        raise pickle.UnpicklingError("bad magic number")
    if pickle.load(f) != LEGACY_PROTOCOL:  # noqa: S301
        raise pickle.UnpicklingError("unsupported legacy protocol version")
    sys_info = pickle.load(f)  # noqa: S301 - a dict of ints/bools
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    storages: dict[str, _Storage] = {}
    views: list[tuple[_Storage, _Storage, int, int]] = []

    def load_storage(args: tuple) -> _Storage:
        storage_type, key, _location, numel, view = (list(args) + [None])[:5]
        key = str(key)
        if key not in storages:
            storages[key] = _Storage(_storage_dtype(storage_type), int(numel))
        if view is not None:
            view_key, offset, view_size = view
            v = _Storage(storages[key].dtype, int(view_size))
            views.append((v, storages[key], int(offset), int(view_size)))
            return v
        return storages[key]

    obj = _Unpickler(f, load_storage).load()
    keys = pickle.load(f)  # noqa: S301 - a list of str
    for key in keys:
        st = storages[str(key)]
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = st.dtype.newbyteorder("<" if little else ">") if st.dtype.itemsize > 1 else st.dtype
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"storage {key!r}: expected {numel * dtype.itemsize} bytes, file ends after {len(raw)}")
        st.array = np.frombuffer(raw, dtype)
    for v, base, offset, size in views:
        if base.array is not None:
            v.array = base.array[offset : offset + size]
    return obj


def read_torch_file(file: str | IO[bytes]) -> Any:
    """The object ``torch.save`` wrote (tensors as ``np.ndarray``), read without importing torch.

    Raises ``ValueError`` for a file that is neither layout, is truncated, or
    holds objects other than tensors and plain containers.
    """
    f: IO[bytes]
    f = open(file, "rb") if isinstance(file, str) else file  # noqa: SIM115 - closed below
    try:
        is_zip = zipfile.is_zipfile(f)
        f.seek(0)
        try:
            obj = _read_zip(f) if is_zip else _read_legacy(f)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, struct.error, KeyError, TypeError) as e:
            layout = "zip layout" if is_zip else "neither a zip archive nor the legacy pickle layout"
            raise ValueError(f"not a torch.save file: {layout} ({type(e).__name__}: {str(e)[:200]})") from None
        return _materialize(obj)
    finally:
        if isinstance(file, str):
            f.close()
