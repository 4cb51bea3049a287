"""Reference models for jaxprune (Flax Linen and NNX), all rebuildable from shrunk params.

Every Linen model is a flax dataclass with a ``widths`` field (layer path ->
output width, or number of heads for attention layers) and an
``example_input(batch)`` method. :func:`rebuild` reads the widths from shrunk
variables; :func:`get_config` / :func:`from_config` serialize a model (widths
included) to JSON and back. NNX versions of ``SmallCNN``, ``CifarResNet`` and
``ViT`` use the same parameter names; :func:`nnx_rebuild` merges a shrunk state
and fixes the modules' width attributes.

Example:
  >>> import jax
  >>> from jaxprune import models
  >>> m = models.vit_tiny_test(num_classes=3)
  >>> v = m.init(jax.random.key(0), m.example_input(1))
  >>> models.from_config(models.get_config(m)) == m
  True
"""

from jaxprune.models.bert import BertEncoder, bert_base_config, bert_tiny_test, minilm_l6_config
from jaxprune.models.core import (
    check_widths,
    from_config,
    get_config,
    layer_widths,
    rebuild,
    register_model,
    registered_models,
    sub_widths,
    width,
)
from jaxprune.models.efficientnet import (
    EfficientNetLite,
    MBConvBlock,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
)
from jaxprune.models.layers import Mlp, MultiHeadAttention
from jaxprune.models.llama import LlamaBlock, LlamaDecoder, llama_rebuild, llama_small, llama_tiny_test
from jaxprune.models.nnx_models import (
    NnxCifarResNet,
    NnxSmallCNN,
    NnxViT,
    load_linen_variables,
    nnx_rebuild,
)
from jaxprune.models.resnet import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    ResNet,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet34,
    cifar_resnet56,
    resnet18,
    resnet34,
    resnet50,
)
from jaxprune.models.small import MLP, ConcatNet, InvertedResidual, MobileNetBlockNet, SmallCNN
from jaxprune.models.vit import ViT, vit_b16, vit_s16, vit_ti16, vit_tiny_test

__all__ = [
    # Linen models
    "MLP",
    "SmallCNN",
    "MobileNetBlockNet",
    "InvertedResidual",
    "ConcatNet",
    "CifarResNet",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "ViT",
    "BertEncoder",
    "MultiHeadAttention",
    "Mlp",
    "EfficientNetLite",
    "MBConvBlock",
    "LlamaDecoder",
    "LlamaBlock",
    "llama_tiny_test",
    "llama_small",
    "llama_rebuild",  # decoder LM
    # configs
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet34",
    "resnet18",
    "resnet34",
    "resnet50",
    "vit_tiny_test",
    "vit_ti16",
    "vit_s16",
    "vit_b16",
    "bert_tiny_test",
    "minilm_l6_config",
    "bert_base_config",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    # widths / configs
    "rebuild",
    "get_config",
    "from_config",
    "register_model",
    "registered_models",
    "layer_widths",
    "check_widths",
    "width",
    "sub_widths",
    # NNX
    "NnxSmallCNN",
    "NnxCifarResNet",
    "NnxViT",
    "nnx_rebuild",
    "load_linen_variables",
]
