"""Study C: one-shot pruning from the pruned models of similar tasks (Zhao & Long 2023).

Keep a library of masks found by pruning the pretrained model on earlier tasks
(:mod:`jaxprune.vote`), vote for a new task from its nearest neighbours, prune
once to a memory budget and finetune a few steps; compared with magnitude,
random and Taylor pruning at the same budget.

Same shape as the other studies: :class:`Config`, :func:`quick_config` /
:func:`default_config` / :func:`full_config`, :func:`run`, :func:`summarize`,
:func:`write_outputs`.

Example:
  >>> from jaxprune.transfer import study_c
  >>> study_c.METHODS[0]
  'vote'
"""

from jaxprune._src.transfer.study_c import StudyCConfig as Config
from jaxprune._src.transfer.study_c import (
    default_config,
    effnet_config,
    effnet_quick_config,
    full_config,
    quick_config,
)
from jaxprune._src.transfer.study_c import run_study_c as run
from jaxprune._src.transfer.study_c_probe import penultimate_features, ridge_head
from jaxprune._src.transfer.study_c_report import METHODS, summarize, write_outputs

__all__ = [
    "Config",
    "quick_config",
    "default_config",
    "full_config",
    "effnet_config",
    "effnet_quick_config",
    "run",
    "summarize",
    "write_outputs",
    "METHODS",
    "penultimate_features",
    "ridge_head",
]
