"""Study C's tools: mask libraries of earlier tasks, task similarity and the mask vote.

``import jaxprune.vote``. Keep the pruning masks (kept units per group) of the
pretrained model found on earlier tasks in a :class:`MaskLibrary`; for a new
task, embed it (:func:`task_embedding`), find the most similar earlier tasks
(:func:`nearest_tasks`), weight them (:func:`neighbor_weights`), and prune once
to a budget from the weighted vote of their masks (:func:`vote_scores`,
:func:`vote_plan`). The study protocol itself is :mod:`jaxprune.transfer.study_c`.

Example:
  >>> import numpy as np
  >>> import jaxprune.vote as jv
  >>> np.round(jv.cosine_similarity(np.array([1.0, 0.0]), np.array([[1.0, 1.0], [0.0, 1.0]])), 4).tolist()
  [0.7071, 0.0]
"""

from jaxprune._src.transfer.mask_library import (
    MaskLibrary,
    TaskRecord,
    add_record,
    keep_vectors,
    load_library,
    record_from_plan,
    save_library,
    validate_library,
)
from jaxprune._src.transfer.task_vote import (
    WEIGHT_SCHEMES,
    cosine_similarity,
    nearest_tasks,
    neighbor_weights,
    task_embedding,
    task_similarity,
    vote_plan,
    vote_scores,
)

__all__ = [
    "MaskLibrary",
    "TaskRecord",
    "add_record",
    "keep_vectors",
    "record_from_plan",
    "save_library",
    "load_library",
    "validate_library",
    "task_embedding",
    "cosine_similarity",
    "task_similarity",
    "nearest_tasks",
    "neighbor_weights",
    "vote_scores",
    "vote_plan",
    "WEIGHT_SCHEMES",
]
