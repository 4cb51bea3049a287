"""Datasets: tfds by real name, offline tfds builders (no network), batching.

``import jaxprune.data`` (kept out of ``import jaxprune`` because importing
tensorflow-datasets takes a moment). See :func:`load_dataset`.
"""

from jaxprune._src.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    augment,
    batches,
    list_offline_tasks,
    load_dataset,
    resize_images,
    task_stream,
)
from jaxprune._src.data_builders import SHAPES_TASKS, ShapesTask, default_data_dir, generate_shapes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dataset",
    "augment",
    "batches",
    "list_offline_tasks",
    "load_dataset",
    "resize_images",
    "task_stream",
    "SHAPES_TASKS",
    "ShapesTask",
    "default_data_dir",
    "generate_shapes",
]
