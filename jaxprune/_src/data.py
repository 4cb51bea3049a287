"""Datasets for training and transfer: tfds by real name, offline builders, batches.

``load_dataset(name, split)`` returns a fully materialised :class:`Dataset`
(numpy float32 NHWC images, normalised; int32 labels). ``name`` is either

* an offline task (``list_offline_tasks()``: ``digits_offline`` and
  ``shapes_offline/task_00`` .. ``task_15``), built on first use into
  ``data_dir`` (default ``$JAXPRUNE_DATA_DIR`` or ``~/.cache/jaxprune/tfds``),
  with no network and no TensorFlow; or
* any tensorflow-datasets name (``cifar10``, ``dtd``, ``oxford_flowers102``,
  ``mnist``, ...) that the user has *already prepared* in ``data_dir``
  (default: tfds' own, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
  jaxprune never downloads. Without TensorFlow the data must be stored as
  ``array_record`` (``tfds build NAME --file_format=array_record`` on a
  machine with network and TensorFlow); it is read by random access through
  ``builder.as_data_source()`` and images are decoded with PIL. Datasets in
  the default TFRecord format are read through ``tf.data`` if TensorFlow is
  installed, otherwise a clear ``RuntimeError`` says what to do.

Normalisation (per channel, on images scaled to [0, 1]):
``'imagenet'`` (mean 0.485/0.456/0.406, std 0.229/0.224/0.225, the default,
what torchvision/timm-pretrained weights expect), ``'dataset'`` (mean/std of
the dataset's *train* split, first 10,000 images), ``None`` (just [0, 1]), or
an explicit ``(mean, std)`` pair.

Example:
  >>> ds = load_dataset('shapes_offline/task_00', 'test', data_dir=tmp)  # doctest: +SKIP
  >>> for batch in batches(ds, 128, seed=0, epochs=1):  # doctest: +SKIP
  ...   batch['image'].shape, batch['label'].dtype  # (128, 32, 32, 3), int32
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np

from jaxprune._src import data_builders as _builders

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATS_EXAMPLES = 10_000
_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A materialised image-classification split.

    ``images``: float32 (N, H, W, C), normalised with ``mean``/``std`` (per
    channel, applied to images in [0, 1]); ``labels``: int32 (N,).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    split: str = ""
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    class_names: tuple = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"Dataset {self.name!r}: images must be (N, H, W, C) with N == "
                f"len(labels); got images {self.images.shape}, labels {self.labels.shape}"
            )


def list_offline_tasks() -> list[str]:
    """Names of all offline tasks: ``digits_offline`` then ``shapes_offline/task_NN``.

    Example:
      >>> list_offline_tasks()[:2]
      ['digits_offline', 'shapes_offline/task_00']
    """
    return ["digits_offline"] + [f"shapes_offline/{t}" for t in _builders.SHAPES_TASKS]


def task_stream(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct offline task names in a seed-determined order.

    Example:
      >>> len(set(task_stream(10, seed=1)))
      10
    """
    tasks = list_offline_tasks()
    if not 1 <= n <= len(tasks):
        raise ValueError(f"task_stream: n must be in [1, {len(tasks)}] (offline tasks available), got {n}")
    order = np.random.default_rng(seed).permutation(len(tasks))[:n]
    return [tasks[i] for i in order]


def is_offline(name: str) -> bool:
    return name.split("/")[0].split(":")[0] in _builders.OFFLINE_BUILDERS


@contextlib.contextmanager
def _quiet_tfds():
    """Silences tfds' stdout prints and absl INFO/WARNING logs (offline builders only)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def get_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    if is_offline(name):
        config = name.split("/", 1)[1].split(":")[0] if "/" in name else None
        if config is not None and config not in _builders.SHAPES_TASKS and config not in _builders.UPSTREAM_TASKS:
            raise ValueError(
                f"unknown offline task {name!r}; available: {list_offline_tasks()} "
                f"(and the upstream pretraining set shapes_offline/upstream)"
            )
        with _quiet_tfds():  # no "Downloading and preparing" lines or absl warnings for a local build
            builder = tfds.builder(name, data_dir=data_dir or _builders.default_data_dir())
            if not builder.is_prepared():  # offline: generated locally, a few seconds
                from tensorflow_datasets.core.utils import tqdm_utils

                shown = getattr(tqdm_utils, "_active", True)
                tfds.display_progress_bar(False)
                try:
                    builder.download_and_prepare()
                finally:
                    tfds.display_progress_bar(shown)
        return builder
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"dataset {name!r} is neither a jaxprune offline task "
            f"({list_offline_tasks()[:3]}...) nor a tensorflow-datasets name"
        ) from e
    if not builder.is_prepared():
        raise RuntimeError(
            f"dataset {name!r} is not prepared (looked in {builder.data_dir!r}) and jaxprune never "
            f"downloads. On a machine with network and TensorFlow run\n"
            f"  tfds build {name} --data_dir=DIR --file_format=array_record\n"
            f"copy DIR here and pass data_dir=DIR (or set TFDS_DATA_DIR=DIR). "
            f"Offline alternatives: {list_offline_tasks()[:2]}..."
        )
    return builder


def _read_split(
    builder, name: str, split: str, max_examples: int | None, image_key: str, label_key: str
) -> Iterator[tuple[list, np.ndarray]]:
    """Yields chunks (list of uint8 HWC images, int labels) of a prepared split."""
    import tensorflow_datasets as tfds

    fmt = builder.info.file_format
    fmt = str(getattr(fmt, "value", fmt) or "tfrecord").lower()
    if "array_record" in fmt or "parquet" in fmt:
        try:
            source = builder.as_data_source(split=split)
        except (KeyError, ValueError) as e:
            raise ValueError(f"dataset {name!r} has no split {split!r}; splits: {list(builder.info.splits)}") from e
        n = len(source) if max_examples is None else min(len(source), max_examples)
        for start in range(0, n, _CHUNK):
            rows = source.__getitems__(list(range(start, min(n, start + _CHUNK))))
            yield [np.asarray(r[image_key]) for r in rows], np.array([r[label_key] for r in rows])
        return
    try:
        import tensorflow  # noqa: F401  pylint: disable=unused-import
    except ImportError:
        raise RuntimeError(
            f"dataset {name!r} in {builder.data_dir!r} is stored as {fmt}, which needs "
            f"TensorFlow to read. Either `pip install tensorflow-cpu`, or re-prepare it as "
            f"array_record: `tfds build {name} --data_dir=DIR --file_format=array_record` "
            f"(or `tfds convert_format`) and pass data_dir=DIR."
        ) from None
    ds = builder.as_dataset(split=split)
    if max_examples is not None:
        ds = ds.take(max_examples)
    imgs, labs = [], []
    for ex in tfds.as_numpy(ds):
        imgs.append(ex[image_key])
        labs.append(ex[label_key])
        if len(imgs) == _CHUNK:
            yield imgs, np.array(labs)
            imgs, labs = [], []
    if imgs:
        yield imgs, np.array(labs)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: each output pixel averages the input interval it covers."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def resize_images(images: np.ndarray, size: int | Sequence[int], method: str = "area") -> np.ndarray:
    """Resizes float (N, H, W, C) images to ``size`` (int or (h, w)).

    ``method='area'``: exact box/area averaging (best for downsampling; equals
    nearest neighbour for integer upsampling). ``'bilinear'``: ``jax.image.resize``
    with ``'linear'`` and antialiasing.

    Example:
      >>> resize_images(np.ones((2, 8, 8, 3), np.float32), 4).shape
      (2, 4, 4, 3)
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    images = np.asarray(images, np.float32)
    if images.shape[1:3] == (h, w):
        return images
    if method == "area":
        mh, mw = _area_matrix(images.shape[1], h), _area_matrix(images.shape[2], w)
        return np.einsum("oh,nhwc,pw->nopc", mh, images, mw, optimize=True)
    if method == "bilinear":
        import jax

        shape = (images.shape[0], h, w, images.shape[3])
        return np.asarray(jax.image.resize(images, shape, "linear", antialias=True))
    raise ValueError(f"resize method must be 'area' or 'bilinear', got {method!r}")


def _prepare(imgs: list, image_size, resize_method: str, center_crop: bool, to_rgb: bool, name: str) -> np.ndarray:
    """uint8 images of any sizes -> float32 [0, 1] (n, h, w, 3|C) of one size."""
    out = []
    for im in imgs:
        im = np.asarray(im)
        if im.ndim == 2:
            im = im[..., None]
        if im.ndim != 3:
            raise ValueError(f"dataset {name!r}: expected HWC images, got shape {im.shape}")
        if center_crop and im.shape[0] != im.shape[1]:
            s = min(im.shape[:2])
            top, left = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
            im = im[top : top + s, left : left + s]
        out.append(im)
    scale = 1.0 / 255.0 if out[0].dtype == np.uint8 else 1.0
    if image_size is None:
        if len({o.shape for o in out}) > 1:
            raise ValueError(f"dataset {name!r} has images of different sizes; pass image_size=")
        batch = np.stack(out).astype(np.float32) * scale
    else:
        groups: dict[tuple, list[int]] = {}
        for i, o in enumerate(out):
            groups.setdefault(o.shape, []).append(i)
        first = resize_images(out[0][None].astype(np.float32) * scale, image_size, resize_method)
        batch = np.empty((len(out),) + first.shape[1:], np.float32)
        for idx in groups.values():
            stack = np.stack([out[i] for i in idx]).astype(np.float32) * scale
            batch[idx] = resize_images(stack, image_size, resize_method)
    if to_rgb and batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return batch


def split_parts(split: str, available: Sequence[str], name: str = "dataset") -> list[str]:
    """The parts of a tfds split expression (``'train+validation'``, ``'train[:80%]'``, ``'test[10:20]'``).

    Validated with tfds' own parser; every split named must exist.

    >>> split_parts('train+validation[:10%]', ['train', 'validation'])
    ['train', 'validation[:10%]']
    """
    import tensorflow_datasets as tfds

    if not isinstance(split, str) or not split.strip():
        raise TypeError(f'split must be a tfds split expression such as "train" or "train[:80%]", got {split!r}')
    parts = [p.strip() for p in split.split("+")]
    for p in parts:
        try:
            tfds.core.ReadInstruction.from_spec(p)
        except (ValueError, AssertionError) as e:
            raise ValueError(f"split {split!r} is not a tfds split expression ({p!r}: {e})") from None
        if p.split("[")[0] not in available:
            raise ValueError(
                f"dataset {name!r} has no split {p.split('[')[0]!r} (in {split!r}); splits: {list(available)}"
            )
    return parts


def load_dataset(
    name: str,
    split: str = "train",
    *,
    image_size: int | Sequence[int] | None = None,
    data_dir: str | os.PathLike | None = None,
    normalize: Any = "imagenet",
    grayscale_to_rgb: bool = True,
    resize_method: str = "area",
    center_crop: bool = True,
    max_examples: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> Dataset:
    """Loads a split as a materialised, resized, normalised :class:`Dataset`.

    Offline tasks (``list_offline_tasks()``) are built on first use; real tfds
    datasets must already be prepared in ``data_dir`` (never downloaded).
    Non-square images are centre-cropped to a square when ``center_crop``.

    Example:
      >>> ds = load_dataset('digits_offline', 'test', image_size=16)  # doctest: +SKIP
      >>> ds.images.shape, ds.num_classes  # ((360, 16, 16, 3), 10)  # doctest: +SKIP
    """
    data_dir = None if data_dir is None else os.fspath(data_dir)
    builder = get_builder(name, data_dir)
    parts = split_parts(split, list(builder.info.splits), name)
    feats = builder.info.features
    if image_key not in feats or label_key not in feats:
        raise ValueError(
            f"dataset {name!r} has features {list(feats)}; expected image_key={image_key!r} and label_key={label_key!r}"
        )
    label_feat = feats[label_key]
    num_classes = int(getattr(label_feat, "num_classes", 0) or 0)
    chunks: list[np.ndarray] = []
    label_chunks: list[np.ndarray] = []
    for part in parts:  # 'train+validation[:10%]': each part read as tfds reads it, then concatenated
        left = None if max_examples is None else max_examples - sum(len(x) for x in label_chunks)
        if left is not None and left <= 0:
            break
        for imgs, labs in _read_split(builder, name, part, left, image_key, label_key):
            chunks.append(_prepare(imgs, image_size, resize_method, center_crop, grayscale_to_rgb, name))
            label_chunks.append(labs)
    if not chunks:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    images, labels = np.concatenate(chunks), np.concatenate(label_chunks).astype(np.int32)
    num_classes = num_classes or int(labels.max()) + 1
    mean, std = _norm_stats(
        normalize,
        images,
        name,
        split,
        image_size=image_size,
        data_dir=data_dir,
        grayscale_to_rgb=grayscale_to_rgb,
        resize_method=resize_method,
        center_crop=center_crop,
        image_key=image_key,
        label_key=label_key,
    )
    if images.shape[-1] != len(mean):
        raise ValueError(
            f"dataset {name!r}: images have {images.shape[-1]} channels but the "
            f"normalisation has {len(mean)}; use grayscale_to_rgb or explicit stats"
        )
    images -= np.asarray(mean, np.float32)
    images /= np.asarray(std, np.float32)
    names = tuple(getattr(label_feat, "names", ()) or ())
    return Dataset(images, labels, num_classes, name, split, tuple(mean), tuple(std), names)


def _norm_stats(normalize, images, name, split, **load_kw):
    if normalize is None:
        c = images.shape[-1]
        return (0.0,) * c, (1.0,) * c
    if isinstance(normalize, str):
        if normalize == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if normalize == "dataset":
            if split != "train":
                ref = load_dataset(name, "train", normalize=None, max_examples=_STATS_EXAMPLES, **load_kw)
                images = ref.images
            flat = images[:_STATS_EXAMPLES].reshape(-1, images.shape[-1]).astype(np.float64)
            return (tuple(float(v) for v in flat.mean(0)), tuple(float(v) for v in np.maximum(flat.std(0), 1e-6)))
        raise ValueError(f"normalize must be 'imagenet', 'dataset', None or (mean, std); got {normalize!r}")
    mean, std = normalize
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _entropy(seed) -> list[int]:
    """An int seed or a jax PRNG key -> entropy for ``np.random.default_rng``."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed)]
    if isinstance(seed, (list, tuple)):
        return [int(v) for v in seed]
    import jax

    arr = seed
    if jax.dtypes.issubdtype(getattr(seed, "dtype", None), jax.dtypes.prng_key):
        arr = jax.random.key_data(seed)
    return [int(v) for v in np.asarray(arr, np.uint32).ravel()]


def augment(images: np.ndarray, seed, *, crop_padding: int = 0, flip: bool = False) -> np.ndarray:
    """Random crop after zero-padding ``crop_padding`` pixels, and random horizontal flip.

    ``seed`` (int or jax PRNG key) fully determines the result. Padding uses
    zeros in normalised space, i.e. the dataset mean colour.

    Example:
      >>> augment(np.zeros((2, 8, 8, 3), np.float32), 0, crop_padding=2, flip=True).shape
      (2, 8, 8, 3)
    """
    rng = np.random.default_rng(_entropy(seed))
    n, h, w, _ = images.shape
    out = images
    if crop_padding:
        p = int(crop_padding)
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        dy, dx = rng.integers(0, 2 * p + 1, (2, n))
        rows = dy[:, None] + np.arange(h)[None]
        cols = dx[:, None] + np.arange(w)[None]
        out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        do = rng.random((n,)) < 0.5
        out = np.where(do[:, None, None, None], out[:, :, ::-1], out)
    return out


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed=0,
    shuffle: bool = True,
    epochs: int | None = None,
    drop_remainder: bool = True,
    crop_padding: int = 0,
    flip: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{'image': float32 (B, H, W, C), 'label': int32 (B,)}`` batches.

    Each epoch is a fresh permutation drawn from ``(seed, epoch)`` (``seed`` an
    int or a jax PRNG key); ``epochs=None`` repeats forever. With
    ``drop_remainder=False`` the last batch of an epoch may be smaller.
    ``crop_padding``/``flip`` apply :func:`augment` per batch.

    Example:
      >>> ds = Dataset(np.zeros((10, 4, 4, 3), np.float32), np.arange(10, dtype=np.int32), 10, 'toy')
      >>> [b['label'].shape[0] for b in batches(ds, 4, epochs=1, drop_remainder=False)]
      [4, 4, 2]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(ds)
    if drop_remainder and n < batch_size:
        raise ValueError(
            f"dataset {ds.name!r} ({n} examples) is smaller than batch_size={batch_size} "
            "with drop_remainder=True: no batch would be produced"
        )
    base = _entropy(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = np.random.default_rng(base + [epoch]).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_remainder else n
        for b, start in enumerate(range(0, stop, batch_size)):
            idx = order[start : start + batch_size]
            images = ds.images[idx]
            if crop_padding or flip:
                images = augment(images, base + [epoch, b, 1], crop_padding=crop_padding, flip=flip)
            yield {"image": images, "label": ds.labels[idx]}
        epoch += 1
