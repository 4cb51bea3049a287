"""Transfer-learning protocols of the three studies (``import jaxprune.transfer``).

* Study A -- zero-shot structured pruning for compute-optimal transfer
  (:func:`run_study_a`, :func:`short_study_a`, :func:`zero_shot_prune`, ...).
* Study B -- transfer of sparse upstream models: linear probing on cached frozen
  features and fixed-mask full finetuning (:func:`transfer`, :func:`linear_finetune`,
  :func:`full_finetune`, :func:`run_study_b`, ...).
* Study C -- one-shot pruning from the masks of similar tasks (mask vote) to a
  memory budget (:func:`run_study_c`; the library functions themselves --
  ``MaskLibrary``, ``vote_scores``, ``vote_plan``, ... -- live in ``jaxprune``).

Kept out of ``import jaxprune`` because it imports tensorflow-datasets. Names that
studies share (``quick_config``, ``write_outputs``, ...) are study A's; study C's
are on the :mod:`study_c` submodule (``jaxprune.transfer.study_c.quick_config``).
"""

from jaxprune._src.transfer import *  # noqa: F401,F403
from jaxprune._src.transfer import __all__ as _study_a_all
from jaxprune._src.transfer import study_c  # noqa: F401
from jaxprune._src.transfer.sparse_transfer import *  # noqa: F401,F403
from jaxprune._src.transfer.sparse_transfer import __all__ as _study_b_all
from jaxprune._src.transfer.study_c import StudyCConfig, penultimate_features, ridge_head, run_study_c

__all__ = list(_study_a_all) + list(_study_b_all) + ["study_c", "StudyCConfig", "penultimate_features",
                                                      "ridge_head", "run_study_c"]
