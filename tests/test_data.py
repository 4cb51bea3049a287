"""Tests of the data layer: offline tfds builders, load_dataset, batches, augmentation."""

import dataclasses
import io
import itertools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune._src import data as D
from jaxprune._src import data_builders as B


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _bytes_set(images):
    return {im.tobytes() for im in images}


# ---------------------------------------------------------------- task lists


def test_offline_task_list_and_stream():
    tasks = D.list_offline_tasks()
    assert len(tasks) >= 10 and len(set(tasks)) == len(tasks)
    assert tasks[0] == "digits_offline" and "shapes_offline/task_03" in tasks
    s1 = D.task_stream(10, seed=0)
    assert len(set(s1)) == 10 and set(s1) <= set(tasks)
    assert D.task_stream(10, seed=0) == s1
    assert D.task_stream(len(tasks), seed=1) != D.task_stream(len(tasks), seed=2)
    with pytest.raises(ValueError, match="task_stream"):
        D.task_stream(len(tasks) + 1)


def test_task_configs_are_distinct():
    tasks = list(B.SHAPES_TASKS.values())
    keys = {(t.factor, t.classes, t.background, t.noise, t.rotation, t.brightness) for t in tasks}
    assert len(keys) == len(tasks)
    factors = {t.factor for t in tasks}
    assert {"shape", "colour", "texture", "shape_colour", "size", "position"} <= factors


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("name", ["task_02", "task_09", "task_12"])
def test_shapes_splits_shapes_balance_disjoint(name):
    task = B.SHAPES_TASKS[name]
    seen = set()
    for split, size in B.SPLIT_SIZES.items():
        x, y = B.generate_shapes(task, split)
        assert x.shape == (size, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
        counts = np.bincount(y, minlength=len(task.classes))
        assert len(counts) == len(task.classes) and counts.max() - counts.min() <= 1
        current = _bytes_set(x)
        assert len(current) == size  # no duplicates inside a split
        assert not (current & seen), f"{name}/{split} shares images with an earlier split"
        seen |= current


def test_shapes_deterministic_and_tasks_differ():
    t0, t4 = B.SHAPES_TASKS["task_00"], B.SHAPES_TASKS["task_04"]
    a = B._render(t0, np.random.default_rng(5), 64)
    b = B._render(t0, np.random.default_rng(5), 64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = B._render(t0, np.random.default_rng(6), 64)
    assert not np.array_equal(a[0], c[0])
    x0, y0 = B.generate_shapes(t0, "train", 200)
    x4, y4 = B.generate_shapes(t4, "train", 200)
    assert not np.array_equal(x0, x4) and not np.array_equal(y0, y4)
    assert y0.max() == 1 and y4.max() == 2


def test_colour_labels_mean_what_they_say():
    task = B.SHAPES_TASKS["task_04"]  # red / green / blue on black
    x, y = B.generate_shapes(task, "train")
    for label, channel in enumerate([0, 1, 2]):
        pix = x[y == label].reshape(-1, 3).astype(np.float64)
        fg = pix[pix.max(1) > 40]  # foreground pixels (background is black)
        assert np.argmax(fg.mean(0)) == channel


def test_size_and_position_labels_mean_what_they_say():
    size_task = dataclasses.replace(B.SHAPES_TASKS["task_11"], background="black")
    xs, ys = B._render(size_task, np.random.default_rng(0), 600)
    area = (xs.max(-1) > 0).sum((1, 2))
    means = [area[ys == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]
    pos_task = dataclasses.replace(B.SHAPES_TASKS["task_12"], background="black")
    xp, yp = B._render(pos_task, np.random.default_rng(0), 200)
    fg = xp.max(-1) > 0
    rows, cols = np.arange(32)[None, :, None], np.arange(32)[None, None, :]
    cy = (fg * rows).sum((1, 2)) / fg.sum((1, 2))
    cx = (fg * cols).sum((1, 2)) / fg.sum((1, 2))
    np.testing.assert_array_equal(yp % 2, (cx >= 16).astype(int))  # right half
    np.testing.assert_array_equal(yp >= 2, cy >= 16)  # bottom half


def test_digits_arrays_splits():
    images, labels, split = B.digits_arrays()
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey replicated to RGB
    assert np.bincount(split).tolist() == [1259, 179, 359]
    for s in range(3):
        assert np.bincount(labels[split == s], minlength=10).min() >= 15  # stratified
    assert not (_bytes_set(images[split == 0]) & _bytes_set(images[split == 2]))
    assert not (_bytes_set(images[split == 1]) & _bytes_set(images[split == 2]))


# ---------------------------------------------------------------- load_dataset (tfds)


def test_load_digits_through_tfds_roundtrip(data_dir):
    ds = D.load_dataset("digits_offline", "test", data_dir=data_dir)
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
    assert ds.images.shape == (359, 32, 32, 3) and ds.num_classes == 10 and len(ds) == 359
    assert ds.mean == D.IMAGENET_MEAN and ds.class_names[3] == "3"
    images, labels, split = B.digits_arrays()
    raw = ds.images * np.float32(D.IMAGENET_STD) + np.float32(D.IMAGENET_MEAN)
    np.testing.assert_allclose(raw, images[split == 2] / 255.0, atol=1e-5)
    np.testing.assert_array_equal(ds.labels, labels[split == 2])
    again = D.load_dataset("digits_offline", "test", data_dir=data_dir)
    np.testing.assert_array_equal(again.images, ds.images)


def test_load_shapes_task_and_normalisation(data_dir):
    name = "shapes_offline/task_07"
    tr = D.load_dataset(name, "train", data_dir=data_dir, normalize="dataset")
    assert tr.images.shape == (2000, 32, 32, 3) and tr.num_classes == 4
    flat = tr.images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)
    te = D.load_dataset(name, "test", data_dir=data_dir, normalize="dataset", image_size=16)
    assert te.images.shape == (1000, 16, 16, 3)
    np.testing.assert_allclose(te.mean, tr.mean, atol=1e-6)  # train stats (area resize keeps the mean)
    x, y = B.generate_shapes(B.SHAPES_TASKS["task_07"], "test")
    np.testing.assert_array_equal(te.labels, y)
    raw = D.load_dataset(name, "validation", data_dir=data_dir, normalize=None)
    assert 0.0 <= raw.images.min() and raw.images.max() <= 1.0 and raw.mean == (0.0, 0.0, 0.0)
    explicit = D.load_dataset(name, "validation", data_dir=data_dir, normalize=((0.5,) * 3, (0.25,) * 3))
    np.testing.assert_allclose(explicit.images, (raw.images - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        D.load_dataset(name, "validation", data_dir=data_dir, normalize="bogus")
    with pytest.raises(ValueError, match="no split"):
        D.load_dataset(name, "nope", data_dir=data_dir)


def test_unknown_names_raise_clear_errors(data_dir):
    with pytest.raises(ValueError, match="shapes_offline/task_99"):
        D.load_dataset("shapes_offline/task_99", data_dir=data_dir)
    with pytest.raises(ValueError, match="not_a_dataset_xyz"):
        D.load_dataset("not_a_dataset_xyz", data_dir=data_dir)


def test_upstream_pretraining_set_loads_by_name():
    # The 100-class upstream set is not a downstream task, but load_dataset accepts its name
    # (cached under JAXPRUNE_DATA_DIR like the other offline builders).
    ds = D.load_dataset("shapes_offline/upstream", "validation[:16]")
    assert ds.num_classes == 100 and len(ds) == 16
    assert "shapes_offline/upstream" not in D.list_offline_tasks()


def test_missing_real_dataset_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download or prepare was attempted")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    for name in ["cifar10", "dtd"]:
        with pytest.raises(RuntimeError, match=rf"(?s){name}.*not prepared.*tfds build {name}"):
            D.load_dataset(name, "train", data_dir=tmp_path, image_size=32)
    assert not any(tmp_path.rglob("*.array_record*"))


class FakeRealImages(tfds.core.GeneratorBasedBuilder):
    """Stands in for a real tfds dataset: Image feature, ClassLabel, varied sizes, grey."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(12):
            h, w = (10, 14) if i % 2 else (12, 12)
            yield i, {"image": np.full((h, w, 1), 20 * i, np.uint8), "label": i % 3}


def test_real_tfds_path_decodes_image_features(tmp_path, monkeypatch):
    from PIL import Image

    def png_encode(self, array):  # tfds needs TensorFlow to encode; PIL does it here
        buf = io.BytesIO()
        Image.fromarray(np.asarray(array)[..., 0]).save(buf, format="PNG")
        return buf.getvalue()

    monkeypatch.setattr(tfds.features.Image, "encode_example", png_encode)
    FakeRealImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ds = D.load_dataset("fake_real_images", "train", data_dir=tmp_path, image_size=8, normalize=None)
    assert ds.images.shape == (12, 8, 8, 3) and ds.num_classes == 3
    order = np.argsort(ds.images[:, 0, 0, 0])  # each image is one constant grey level
    np.testing.assert_allclose(ds.images[order, 4, 4, 1], 20 * np.arange(12) / 255.0, atol=1e-6)
    grey = D.load_dataset(
        "fake_real_images", "train", data_dir=tmp_path, image_size=8, normalize=None, grayscale_to_rgb=False
    )
    assert grey.images.shape == (12, 8, 8, 1)
    with pytest.raises(ValueError, match="different sizes"):
        D.load_dataset("fake_real_images", "train", data_dir=tmp_path, center_crop=False)


# ---------------------------------------------------------------- resize


def test_resize_area_and_bilinear():
    x = np.random.default_rng(0).random((3, 8, 8, 2)).astype(np.float32)
    small = D.resize_images(x, 4, "area")
    np.testing.assert_allclose(small, x.reshape(3, 4, 2, 4, 2, 2).mean((2, 4)), atol=1e-6)
    odd = D.resize_images(x, (5, 3), "area")
    assert odd.shape == (3, 5, 3, 2)
    np.testing.assert_allclose(odd.mean((1, 2)), x.mean((1, 2)), atol=1e-5)  # area preserves mass
    bil = D.resize_images(np.ones((1, 8, 8, 3), np.float32), 12, "bilinear")
    np.testing.assert_allclose(bil, 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="resize method"):
        D.resize_images(x, 4, "cubic")


# ---------------------------------------------------------------- batches / augment


def _toy(n=10):
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 3), np.float32)
    return D.Dataset(images, np.arange(n, dtype=np.int32), n, "toy")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), bs=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_batches_cover_each_epoch_exactly(n, bs, seed):
    ds = _toy(n)
    full = list(D.batches(ds, bs, seed=seed, epochs=2, drop_remainder=False))
    assert len(full) == 2 * -(-n // bs)
    per_epoch = len(full) // 2
    for e in range(2):
        labels = np.concatenate([b["label"] for b in full[e * per_epoch : (e + 1) * per_epoch]])
        assert sorted(labels.tolist()) == list(range(n))
    if n >= bs:
        dropped = list(D.batches(ds, bs, seed=seed, epochs=1))
        assert len(dropped) == n // bs and all(b["image"].shape == (bs, 4, 4, 3) for b in dropped)
        labels = np.concatenate([b["label"] for b in dropped])
        assert len(set(labels.tolist())) == len(labels)


def test_batches_deterministic_by_seed_and_key():
    ds = _toy(32)
    first = lambda s: np.concatenate([b["label"] for b in D.batches(ds, 8, seed=s, epochs=1)])
    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(3), first(4))
    key = jax.random.key(7)
    np.testing.assert_array_equal(first(key), first(jax.random.key(7)))
    e = [b["label"] for b in D.batches(ds, 32, seed=0, epochs=2)]
    assert not np.array_equal(e[0], e[1])  # a new permutation every epoch
    ordered = next(D.batches(ds, 32, shuffle=False))
    np.testing.assert_array_equal(ordered["label"], np.arange(32))
    np.testing.assert_array_equal(ordered["image"][:, 0, 0, 0], np.arange(32))  # pairs stay together
    endless = D.batches(ds, 8, seed=0, epochs=None)
    assert len(list(itertools.islice(endless, 50))) == 50
    with pytest.raises(ValueError, match="batch_size"):
        next(D.batches(ds, 64, epochs=1))


def test_augment_crop_and_flip():
    rng = np.random.default_rng(0)
    x = rng.random((16, 6, 6, 3)).astype(np.float32)
    flipped = D.augment(x, 1, flip=True)
    same = [np.array_equal(f, i) for f, i in zip(flipped, x)]
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    np.testing.assert_array_equal(D.augment(x, 1, flip=True), flipped)
    ones = np.ones((64, 6, 6, 1), np.float32)
    crops = D.augment(ones, 2, crop_padding=2)
    assert crops.shape == ones.shape
    assert (crops[:, 2:4, 2:4] == 1).all()  # the centre always stays inside the image
    assert (crops == 0).any() and set(np.unique(crops).tolist()) <= {0.0, 1.0}
    b = next(D.batches(_toy(16), 16, seed=0, crop_padding=1, flip=True))
    b2 = next(D.batches(_toy(16), 16, seed=0, crop_padding=1, flip=True))
    np.testing.assert_array_equal(b["image"], b2["image"])


def test_tfds_split_expressions(data_dir, capsys):
    train = D.load_dataset("digits_offline", "train", data_dir=data_dir, image_size=8)
    val = D.load_dataset("digits_offline", "validation", data_dir=data_dir, image_size=8)
    both = D.load_dataset("digits_offline", "train+validation", data_dir=data_dir, image_size=8)
    np.testing.assert_array_equal(both.labels, np.concatenate([train.labels, val.labels]))
    mixed = D.load_dataset("digits_offline", "train[:50%]+validation[50%:]", data_dir=data_dir, image_size=8)
    half = D.load_dataset("digits_offline", "train[:50%]", data_dir=data_dir, image_size=8)
    np.testing.assert_array_equal(mixed.labels[: len(half)], half.labels)
    assert len(half) < len(mixed) < len(both)
    capped = D.load_dataset("digits_offline", "train+validation", data_dir=data_dir, image_size=8, max_examples=1300)
    assert len(capped) == 1300
    with pytest.raises(ValueError, match=r"no split 'valid' \(in 'train\+valid'\)"):
        D.load_dataset("digits_offline", "train+valid", data_dir=data_dir)
    with pytest.raises(ValueError, match="not a tfds split expression"):
        D.load_dataset("digits_offline", "train[:abc]", data_dir=data_dir)
    out = capsys.readouterr().out
    assert "Downloading" not in out and "dataset_info" not in out  # offline builders stay quiet
