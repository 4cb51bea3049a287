"""Pretrained-weight converters (torchvision ResNet, timm ViT, Hugging Face BERT) and the offline MiniLM.

``import jaxprune.convert``; see :mod:`jaxprune._src.convert` for details.
"""

from jaxprune._src.convert import *  # noqa: F401,F403
from jaxprune._src.convert import __all__ as _convert_all
from jaxprune._src.minilm import (SentenceEncoder, l2_normalize, load_minilm, mean_pool, minilm_model_dir,
                                  sentence_embeddings, tokenize)

__all__ = list(_convert_all) + ["SentenceEncoder", "l2_normalize", "load_minilm", "mean_pool", "minilm_model_dir",
                                "sentence_embeddings", "tokenize"]
