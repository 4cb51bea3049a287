"""Pretrained-weight converters: torchvision ResNets, timm ViTs, EfficientNet-Lite, HF BERT (safetensors) -> Flax.

Every converter is a pure function from a ``{name: array}`` mapping (NumPy,
JAX or torch tensors) to a Linen variables dict for a :mod:`jaxprune.models`
reference model, checked key by key (missing / unexpected / mis-shaped keys
raise ``ValueError`` naming the key). ``from_*`` functions also build the
matching model from the checkpoint's shapes.
"""

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
from jaxprune._src.convert.efficientnet import (
    convert_efficientnet_lite,
    efficientnet_lite_variant,
    efficientnet_lite_weights_path,
    flax_to_efficientnet_lite,
    from_efficientnet_lite,
    load_efficientnet_lite,
)
from jaxprune._src.convert.hf_bert import (
    convert_hf_bert,
    flax_to_hf_bert,
    from_hf_bert,
    hf_bert_config,
    normalize_hf_bert_keys,
)
from jaxprune._src.convert.safetensors_io import (
    load_safetensors,
    load_state_dict,
    load_torch_state_dict,
    save_safetensors,
)
from jaxprune._src.convert.timm import (
    STANDARD_VIT_HEADS,
    convert_timm_vit,
    flax_to_timm_vit,
    from_timm_vit,
    timm_vit_config,
)
from jaxprune._src.convert.torchvision import (
    convert_torchvision_resnet,
    flax_to_torchvision_resnet,
    from_torchvision_resnet,
    torchvision_resnet_config,
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
    "load_safetensors",
    "save_safetensors",
    "load_torch_state_dict",
    "load_state_dict",
]
