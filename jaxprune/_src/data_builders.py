"""Offline image-classification datasets as tfds builders (no network, no TensorFlow).

Two registered ``tfds.core.GeneratorBasedBuilder`` families, stored as
``array_record`` with ``tfds.features.Tensor`` images (uint8, 32x32x3) and
``ClassLabel`` labels, so they build and read without TensorFlow:

* ``digits_offline`` -- the real 8x8 scikit-learn ``load_digits`` set (1,797
  images, 10 classes), grey levels 0..16 scaled to 0..255, bilinearly upsampled
  to 32x32 and replicated to RGB. Splits are stratified by class with a fixed
  seed: ~70% ``train`` (1,259), ~10% ``validation`` (178), ~20% ``test`` (360).
* ``shapes_offline/task_NN`` -- a procedural family of 32x32 RGB images
  (shape, colour, fill texture, size, position, background, pixel noise,
  rotation). Each builder config is a *task*: which factor is the label, which
  classes, which background and which shift. ``SHAPES_TASKS`` lists them;
  ``shapes_offline/task_00`` .. ``task_15``. Splits ``train`` (2,000),
  ``validation`` (500), ``test`` (1,000), classes exactly balanced, no image
  of a later split is byte-identical to one of an earlier split.
* ``shapes_offline/upstream`` -- the pretraining task of the small-scale
  transfer studies (``UPSTREAM_TASKS``): shape x colour (100 classes), mixed
  backgrounds, 12,000 / 1,000 / 2,000 images; not in ``SHAPES_TASKS``, so never
  part of a downstream task stream.

Generation is vectorised numpy and deterministic (``generate_shapes``).
Builders default to ``default_data_dir()``: ``$JAXPRUNE_DATA_DIR`` or
``~/.cache/jaxprune/tfds``.

Example:
  >>> images, labels = generate_shapes(SHAPES_TASKS['task_02'], 'test', 8)
  >>> images.shape, images.dtype, labels.dtype
  ((8, 32, 32, 3), dtype('uint8'), dtype('int64'))
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "ellipse", "x", "semicircle")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "cyan": (0.1, 0.85, 0.9),
    "magenta": (0.9, 0.15, 0.85),
    "orange": (1.0, 0.55, 0.05),
    "purple": (0.5, 0.15, 0.7),
    "white": (0.97, 0.97, 0.97),
    "gray": (0.6, 0.6, 0.6),
}
TEXTURES = ("solid", "hstripes", "vstripes", "diagonal", "checker", "dots")
SIZES = ("small", "medium", "large")
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right")
FACTORS = {"shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES, "size": SIZES, "position": POSITIONS}
BACKGROUNDS = ("black", "plain", "gradient", "noise", "clutter", "mixed")
SPLIT_SIZES = {"train": 2000, "validation": 500, "test": 1000}
_SPLIT_INDEX = {"train": 0, "validation": 1, "test": 2}
_SIZE_RANGES = ((3.0, 5.0), (6.5, 8.5), (10.0, 12.0))
_RADIUS = (5.0, 11.0)


def default_data_dir() -> str:
    """Where offline builders write: ``$JAXPRUNE_DATA_DIR`` or ``~/.cache/jaxprune/tfds``.

    Example:
      >>> isinstance(default_data_dir(), str)
      True
    """
    env = os.environ.get("JAXPRUNE_DATA_DIR")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "jaxprune", "tfds")


@dataclasses.dataclass(frozen=True)
class ShapesTask:
    """One task of the shapes family.

    ``factor`` is the labelled factor: 'shape', 'colour', 'texture', 'size',
    'position' or 'shape_colour'; ``classes`` are names from that factor's
    vocabulary (``FACTORS``), or ``(shape, colour)`` pairs for 'shape_colour'.
    Nuisance factors are drawn uniformly from their full vocabulary.
    ``brightness`` scales the foreground colour, ``noise`` is the std of
    additive Gaussian pixel noise (images in [0, 1]), ``rotation`` the largest
    random rotation in degrees.
    """

    name: str
    factor: str
    classes: tuple
    background: str = "black"
    noise: float = 0.0
    rotation: float = 0.0
    brightness: float = 1.0
    seed: int = 0
    split_sizes: tuple = ()  # ((split, n), ...) overriding SPLIT_SIZES (the upstream task)

    def split_size(self, split: str) -> int:
        return dict(self.split_sizes).get(split, SPLIT_SIZES[split])

    @property
    def class_names(self) -> list[str]:
        return ["_".join(c) if isinstance(c, tuple) else c for c in self.classes]


def _task(i, factor, classes, background="black", noise=0.0, rotation=0.0, brightness=1.0):
    name = f"task_{i:02d}"
    return name, ShapesTask(name, factor, tuple(classes), background, noise, rotation, brightness, seed=1000 + i)


SHAPES_TASKS: dict[str, ShapesTask] = dict(
    [
        _task(0, "shape", ("circle", "square")),
        _task(1, "shape", ("circle", "square", "triangle", "cross"), "plain"),
        _task(2, "shape", SHAPES),
        _task(3, "shape", ("ring", "diamond", "bar", "ellipse", "x"), "noise", noise=0.08),
        _task(4, "colour", ("red", "green", "blue")),
        _task(5, "colour", ("red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple"), "gradient"),
        _task(6, "colour", tuple(COLOURS), "clutter"),
        _task(7, "texture", ("solid", "hstripes", "vstripes", "checker"), "plain"),
        _task(8, "texture", TEXTURES, "noise", noise=0.03),
        _task(9, "shape_colour", [(s, c) for s in ("circle", "square") for c in ("red", "blue")]),
        _task(
            10,
            "shape_colour",
            [(s, c) for s in ("triangle", "cross", "ring") for c in ("green", "yellow", "magenta")],
            "gradient",
        ),
        _task(11, "size", SIZES, "clutter"),
        _task(12, "position", POSITIONS, "noise"),
        _task(13, "shape", SHAPES[:6], "clutter", noise=0.1, rotation=45.0),
        _task(14, "colour", ("red", "green", "blue", "yellow", "white"), "plain", noise=0.05, brightness=0.55),
        _task(15, "shape", ("triangle", "semicircle", "x"), "gradient", rotation=180.0),
    ]
)


#: Upstream (pretraining) task of the small-scale transfer studies: shape x colour, 100 classes,
#: every background, mild noise and rotation, a larger train split. Kept out of ``SHAPES_TASKS``
#: (and so out of ``list_offline_tasks``/``task_stream``): it is not a downstream task.
UPSTREAM_TASKS: dict[str, ShapesTask] = {
    "upstream": ShapesTask(
        "upstream",
        "shape_colour",
        tuple((s, c) for s in SHAPES for c in COLOURS),
        "mixed",
        noise=0.03,
        rotation=30.0,
        seed=999,
        split_sizes=(("train", 12000), ("validation", 1000), ("test", 2000)),
    ),
}


def _shape_mask(shape: str, dx, dy, r):
    """Boolean mask of one shape; dx, dy (N, H, W) offsets from the centre, r (N, 1, 1)."""
    ax, ay, d = np.abs(dx), np.abs(dy), np.sqrt(dx * dx + dy * dy)
    if shape == "circle":
        return d <= r
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "triangle":
        return (dy >= -r) & (dy <= 0.8 * r) & (ax <= 0.55 * (dy + r))
    if shape == "cross":
        return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))
    if shape == "ring":
        return (d <= r) & (d >= 0.55 * r)
    if shape == "diamond":
        return ax + ay <= r
    if shape == "bar":
        return (ax <= r) & (ay <= 0.4 * r)
    if shape == "ellipse":
        return (dx / (0.5 * r)) ** 2 + (dy / r) ** 2 <= 1.0
    if shape == "x":
        return (np.maximum(ax, ay) <= 0.85 * r) & (np.minimum(np.abs(dx - dy), np.abs(dx + dy)) <= 0.4 * r)
    if shape == "semicircle":
        return (d <= r) & (dy >= -0.15 * r)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(texture: str, x, y, period, phase):
    """Fill pattern in {0, 1}; x, y (1, H, W) pixel grids, period/phase (N, 1, 1)."""
    if texture == "solid":
        return np.ones(np.broadcast_shapes(x.shape, period.shape), np.float32)
    if texture == "hstripes":
        return ((y + phase) % period < period / 2).astype(np.float32)
    if texture == "vstripes":
        return ((x + phase) % period < period / 2).astype(np.float32)
    if texture == "diagonal":
        return ((x + y + phase) % period < period / 2).astype(np.float32)
    if texture == "checker":
        half = period / 2
        return (((x + phase) // half + (y + phase) // half) % 2).astype(np.float32)
    if texture == "dots":
        return (((x + phase) % period < 2) & ((y + phase) % period < 2)).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def _background(kind: str, rng: np.random.Generator, n: int, x, y) -> np.ndarray:
    s = IMAGE_SIZE
    if kind == "mixed":  # each image gets one of the other kinds (the upstream task)
        kinds = BACKGROUNDS[:-1]
        pick = rng.integers(0, len(kinds), n)
        out = np.empty((n, s, s, 3), np.float32)
        for i, k in enumerate(kinds):
            sel = np.nonzero(pick == i)[0]
            if sel.size:
                out[sel] = _background(k, rng, sel.size, x, y)
        return out
    if kind == "black":
        return np.zeros((n, s, s, 3), np.float32)
    if kind in ("plain", "clutter"):
        bg = np.broadcast_to(rng.uniform(0.0, 0.3, (n, 1, 1, 3)), (n, s, s, 3)).astype(np.float32)
        if kind == "clutter":  # 4 small distractor squares of random colours per image
            bg = bg.copy()
            for _ in range(4):
                cx, cy = rng.integers(0, s - 3, (2, n, 1, 1))
                w = rng.integers(2, 4, (n, 1, 1))
                m = (x >= cx) & (x < cx + w) & (y >= cy) & (y < cy + w)
                bg = np.where(m[..., None], rng.uniform(0.2, 0.8, (n, 1, 1, 3)), bg)
        return bg.astype(np.float32)
    if kind == "gradient":
        a, b = rng.uniform(0.0, 0.4, (2, n, 1, 1, 3))
        theta = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        t = ((x - s / 2) * np.cos(theta) + (y - s / 2) * np.sin(theta)) / s + 0.5
        t = np.clip(t, 0, 1)[..., None]
        return (a * (1 - t) + b * t).astype(np.float32)
    if kind == "noise":
        return rng.uniform(0.0, 0.45, (n, s, s, 3)).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")


def _render(task: ShapesTask, rng: np.random.Generator, n: int):
    """Draws n images (uint8 NHWC) and balanced labels (int64) of ``task``."""
    s, k = IMAGE_SIZE, len(task.classes)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    # Nuisance factors, then overwrite the labelled one(s).
    shape_id = rng.integers(0, len(SHAPES), n)
    colour_id = rng.integers(0, len(COLOURS), n)
    texture_id = rng.integers(0, len(TEXTURES), n)
    r = rng.uniform(*_RADIUS, n)
    if task.factor == "shape_colour":
        pairs = np.array([(SHAPES.index(a), tuple(COLOURS).index(b)) for a, b in task.classes])
        shape_id, colour_id = pairs[labels, 0], pairs[labels, 1]
    elif task.factor == "shape":
        shape_id = np.array([SHAPES.index(c) for c in task.classes])[labels]
    elif task.factor == "colour":
        colour_id = np.array([tuple(COLOURS).index(c) for c in task.classes])[labels]
    elif task.factor == "texture":
        texture_id = np.array([TEXTURES.index(c) for c in task.classes])[labels]
    elif task.factor == "size":
        lo_hi = np.array([_SIZE_RANGES[SIZES.index(c)] for c in task.classes])[labels]
        r = rng.uniform(lo_hi[:, 0], lo_hi[:, 1])
    elif task.factor != "position":
        raise ValueError(
            f"task {task.name}: unknown factor {task.factor!r}; expected one of {tuple(FACTORS) + ('shape_colour',)}"
        )
    if task.factor == "texture":
        r = np.maximum(r, 8.0)  # textures need room to be visible
    # Centres keep the shape inside the image (position tasks: inside a quadrant).
    margin = r + 1.0
    cx, cy = rng.uniform(margin, s - margin), rng.uniform(margin, s - margin)
    if task.factor == "position":
        r = rng.uniform(3.0, 6.0, n)
        quad = np.array([POSITIONS.index(c) for c in task.classes])[labels]
        lo_x, lo_y = np.where(quad % 2 == 1, s / 2, 0.0), np.where(quad >= 2, s / 2, 0.0)
        cx = lo_x + rng.uniform(r + 1, s / 2 - r - 1)
        cy = lo_y + rng.uniform(r + 1, s / 2 - r - 1)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    x, y = x[None] + 0.5, y[None] + 0.5
    theta = np.deg2rad(rng.uniform(-task.rotation, task.rotation, n))[:, None, None]
    ddx, ddy = x - cx[:, None, None], y - cy[:, None, None]
    dx = ddx * np.cos(theta) + ddy * np.sin(theta)
    dy = -ddx * np.sin(theta) + ddy * np.cos(theta)
    rr = r[:, None, None]
    mask = np.zeros((n, s, s), bool)
    for i, name in enumerate(SHAPES):
        sel = np.nonzero(shape_id == i)[0]
        if sel.size:
            mask[sel] = _shape_mask(name, dx[sel], dy[sel], rr[sel])
    period = rng.integers(4, 7, n)[:, None, None].astype(np.float32)
    phase = rng.integers(0, 6, n)[:, None, None].astype(np.float32)
    fill = np.ones((n, s, s), np.float32)
    for i, name in enumerate(TEXTURES):
        sel = np.nonzero(texture_id == i)[0]
        if sel.size:
            fill[sel] = _texture(name, x, y, period[sel], phase[sel])
    palette = np.array(list(COLOURS.values()), np.float32)
    colour = palette[colour_id] + rng.normal(0.0, 0.03, (n, 3))
    colour = np.clip(colour * task.brightness, 0, 1)[:, None, None, :]
    fg = colour * (0.3 + 0.7 * fill[..., None])  # texture: dark/bright version of the colour
    img = np.where(mask[..., None], fg, _background(task.background, rng, n, x, y))
    if task.noise > 0:
        img = img + rng.normal(0.0, task.noise, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), labels


def generate_shapes(task: ShapesTask, split: str, n: int | None = None):
    """Images (n, 32, 32, 3) uint8 and labels (n,) int64 of one split of ``task``.

    Deterministic in ``task.seed``; ``n`` (default: the full split size,
    ``SPLIT_SIZES``) takes the first n. Images byte-identical to one of an
    earlier split (train < validation < test) are redrawn, so splits are disjoint.

    Example:
      >>> x, y = generate_shapes(SHAPES_TASKS['task_00'], 'train', 4)
      >>> x.shape, y.dtype
      ((4, 32, 32, 3), dtype('int64'))
    """
    if split not in _SPLIT_INDEX:
        raise ValueError(f"split must be one of {tuple(_SPLIT_INDEX)}, got {split!r}")
    images, labels = _all_splits(task)[split]
    return images[:n].copy(), labels[:n].copy()


@functools.lru_cache(maxsize=4)
def _all_splits(task: ShapesTask) -> dict:
    seen: set[bytes] = set()
    out = {}
    for split, index in _SPLIT_INDEX.items():
        rng = np.random.default_rng([task.seed, index])
        images, labels = _render(task, rng, task.split_size(split))
        for _ in range(100):  # redraw (rare) collisions with earlier splits
            dup = np.array([im.tobytes() in seen for im in images])
            if not dup.any():
                break
            images[dup] = _rerender_like(task, rng, labels[dup])
        seen.update(im.tobytes() for im in images)
        out[split] = (images, labels)
    return out


def _rerender_like(task: ShapesTask, rng: np.random.Generator, labels: np.ndarray):
    """New images with the given labels (used to replace cross-split duplicates)."""
    k = len(task.classes)
    imgs, labs = _render(task, rng, (len(labels) + 1) * k)
    out = np.empty((len(labels),) + imgs.shape[1:], np.uint8)
    for c in np.unique(labels):
        dst = np.nonzero(labels == c)[0]
        out[dst] = imgs[np.nonzero(labs == c)[0][: len(dst)]]
    return out


@functools.lru_cache(maxsize=1)
def digits_arrays():
    """All 1,797 sklearn digits as (N, 32, 32, 3) uint8 images, (N,) int64 labels, split ids.

    Split ids: 0 train, 1 validation, 2 test (stratified, fixed seed).
    """
    import jax
    from sklearn.datasets import load_digits

    d = load_digits()
    small = d.images.astype(np.float32)[..., None] * (255.0 / 16.0)
    big = np.asarray(jax.image.resize(small, (len(small), IMAGE_SIZE, IMAGE_SIZE, 1), "linear"))
    images = np.repeat(np.round(np.clip(big, 0, 255)).astype(np.uint8), 3, axis=-1)
    labels = d.target.astype(np.int64)
    split = np.zeros(len(labels), np.int64)
    rng = np.random.default_rng(0)
    for c in range(10):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        n_test, n_val = round(0.2 * len(idx)), round(0.1 * len(idx))
        split[idx[:n_test]], split[idx[n_test : n_test + n_val]] = 2, 1
    for a in (images, labels, split):
        a.setflags(write=False)
    return images, labels, split


_FEATURES = lambda names: tfds.features.FeaturesDict(
    {  # noqa: E731
        "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=names),
    }
)


# tfds is untyped (Any base): mypy checks skip_registration against object.__init_subclass__
class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """Defaults: array_record files under ``default_data_dir()``."""

    def __init__(self, *, data_dir=None, file_format=None, **kwargs):
        super().__init__(data_dir=data_dir or default_data_dir(), file_format=file_format or "array_record", **kwargs)

    # tfds derives a checksums path from the defining package through
    # `importlib_resources`, which is not installed on Python >= 3.9 (tfds 4.9.10):
    # these builders download nothing, so they have no code path / checksums.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def _split_generators(self, dl_manager):
        del dl_manager
        return {s: self._generate_examples(s) for s in _SPLIT_INDEX}


class DigitsOffline(_OfflineBuilder):
    """scikit-learn 8x8 digits, upsampled to 32x32 RGB uint8 (bilinear), stratified splits."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_FEATURES([str(i) for i in range(10)]),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _generate_examples(self, split):
        images, labels, ids = digits_arrays()
        for i in np.nonzero(ids == _SPLIT_INDEX[split])[0]:
            yield int(i), {"image": images[i], "label": int(labels[i])}


class ShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, task: ShapesTask):
        super().__init__(
            name=task.name,
            description=f"{task.factor}: {', '.join(task.class_names)}; "
            f"background={task.background}, noise={task.noise}, "
            f"rotation={task.rotation}, brightness={task.brightness}",
        )
        self.task = task


class ShapesOffline(_OfflineBuilder):
    """Procedural 32x32 RGB shapes; one builder config per task (``SHAPES_TASKS``)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [ShapesConfig(t) for t in list(SHAPES_TASKS.values()) + list(UPSTREAM_TASKS.values())]

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.__doc__} {self.builder_config.description}",
            features=_FEATURES(self.builder_config.task.class_names),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _generate_examples(self, split):
        images, labels = generate_shapes(self.builder_config.task, split)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}


OFFLINE_BUILDERS = {"digits_offline": DigitsOffline, "shapes_offline": ShapesOffline}
