"""Pruning large pretrained transformers with calibration data: SparseGPT, Wanda, FLAP-style width, depth.

``import jaxprune.llm``. Run the model on a few calibration batches
(:func:`calibrate`: per-kernel input second moments ``X^T X`` found in the
function's jaxpr, accumulated batch by batch), then

* unstructured / N:M masks without weight updates: :func:`wanda_masks`,
* layer-wise OBS reconstruction: :func:`sparsegpt` (one shot) or
  :func:`sparsegpt_sequential` (each stage calibrated on the pruned previous ones),
* width pruning that really shrinks (heads / kv groups / MLP channels through the
  structured engine) with FLAP's bias compensation: :func:`flap_prune`,
* depth pruning: :func:`block_influence` / :func:`ablation_scores` ->
  :func:`remove_blocks`,

and evaluate with :func:`perplexity` (decoders) or :func:`embedding_fidelity`
(encoders). :mod:`jaxprune.models.llama` is a Llama-style decoder to try it on;
:func:`token_splits` gives offline real English text (Python's own docs).
``scripts/prune_llm.py`` and ``scripts/prune_minilm_sparse.py`` run the whole
comparison; the recipe format is :func:`recipe_from_dict`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxprune.llm as jl
  >>> w = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (8, 4))}}
  >>> fn = lambda p, x: x @ p["dense"]["kernel"]
  >>> stats = jl.calibrate(fn, w, [jax.random.normal(jax.random.key(1), (16, 8))])
  >>> stats["dense/kernel"].xtx.shape, stats["dense/kernel"].count
  ((8, 8), 16)
  >>> masks = jl.wanda_masks(w, stats, 0.5, structure="2:4")
  >>> int(masks["dense"]["kernel"].sum())
  16
"""

from jaxprune._src.llm.calibration import (
    LayerStats,
    calibrate,
    from_matrix,
    kernel_in_axes,
    kernel_matrix,
    reconstruction_error,
)
from jaxprune._src.llm.depth import (
    ablation_scores,
    block_influence,
    blocks_to_remove,
    remove_blocks,
    remove_blocks_params,
)
from jaxprune._src.llm.perplexity import embedding_fidelity, finetune_lm, lm_loss, perplexity
from jaxprune._src.llm.recipe import LLM_METHODS, load_llm_recipe, recipe_from_dict
from jaxprune._src.llm.sparsegpt import sparsegpt, sparsegpt_sequential
from jaxprune._src.llm.structured_calib import (
    DEFAULT_COMPENSATE,
    InputMoments,
    calibrated_unit_scores,
    compensate_biases,
    flap_prune,
    input_moments,
    within_kv_groups,
)
from jaxprune._src.llm.text_data import (
    BYTE_VOCAB,
    decode,
    encode,
    lm_batches,
    sequences,
    stdlib_docstrings,
    text_splits,
    token_splits,
)
from jaxprune._src.llm.wanda import wanda_masks

__all__ = [
    # calibration
    "LayerStats",
    "calibrate",
    "kernel_matrix",
    "from_matrix",
    "kernel_in_axes",
    "reconstruction_error",
    # unstructured / N:M
    "wanda_masks",
    "sparsegpt",
    "sparsegpt_sequential",
    # width (structured) with compensation
    "InputMoments",
    "input_moments",
    "calibrated_unit_scores",
    "compensate_biases",
    "flap_prune",
    "within_kv_groups",
    "DEFAULT_COMPENSATE",
    # depth
    "block_influence",
    "ablation_scores",
    "blocks_to_remove",
    "remove_blocks",
    "remove_blocks_params",
    # evaluation
    "lm_loss",
    "perplexity",
    "finetune_lm",
    "embedding_fidelity",
    # text data
    "BYTE_VOCAB",
    "text_splits",
    "encode",
    "decode",
    "token_splits",
    "stdlib_docstrings",
    "lm_batches",
    "sequences",
    # recipes
    "LLM_METHODS",
    "recipe_from_dict",
    "load_llm_recipe",
]
