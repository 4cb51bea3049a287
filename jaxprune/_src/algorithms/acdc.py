"""AC/DC: alternating compressed / decompressed training (Peste et al. 2021).

Timeline (steps): ``[0, warmup)`` dense; then cycles of ``compressed_steps``
compressed followed by ``dense_steps`` dense; from ``final_begin`` on,
compressed until the end. At the start of each compressed phase the masks are
the magnitude top-k masks at the target sparsity; during dense phases the
masks are all True (really dense: every weight trains, pruned ones restart
from 0). The last compressed phase gives the sparse model.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxprune._src.algorithms.common import check_int, check_spec
from jaxprune._src.distributions import check_sparsity
from jaxprune._src.pruner import MaskSpec, Pruner, check_mask_spec, check_sparsity_arg, scored_pruner
from jaxprune._src.schedules import Schedule

__all__ = ["acdc_pruner", "acdc_schedule"]


def acdc_schedule(
    sparsity: float, *, warmup: int, compressed_steps: int, dense_steps: int, final_begin: int
) -> Schedule:
    """Schedule with sparsity ``sparsity`` in compressed phases and 0 in dense ones.

    ``is_update`` is True at every phase change (and at ``final_begin``).

    >>> s = acdc_schedule(0.9, warmup=2, compressed_steps=2, dense_steps=1, final_begin=8)
    >>> [round(float(s.sparsity(t)), 1) for t in range(10)]
    [0.0, 0.0, 0.9, 0.9, 0.0, 0.9, 0.9, 0.0, 0.9, 0.9]
    >>> [int(s.is_update(t)) for t in range(10)]
    [0, 0, 1, 0, 1, 1, 0, 1, 1, 0]
    """
    sparsity = check_sparsity(sparsity)
    warmup = check_int(warmup, "warmup")
    compressed_steps = check_int(compressed_steps, "compressed_steps", 1)
    dense_steps = check_int(dense_steps, "dense_steps", 1)
    final_begin = check_int(final_begin, "final_begin")
    if final_begin < warmup:
        raise ValueError(f"final_begin ({final_begin}) must be >= warmup ({warmup})")
    period = compressed_steps + dense_steps

    def compressed(t):
        t = jnp.asarray(t)
        in_cycle = (jnp.maximum(t - warmup, 0) % period) < compressed_steps
        return (t >= final_begin) | ((t >= warmup) & in_cycle)

    def is_update(t):
        t = jnp.asarray(t)
        return (t > 0) & (compressed(t) != compressed(t - 1))

    def sparsity_fn(t):
        return jnp.where(compressed(t), sparsity, 0.0).astype(jnp.float32)

    return Schedule(sparsity_fn, is_update, sparsity)


def acdc_pruner(
    sparsity: float,
    *,
    warmup: int,
    compressed_steps: int,
    dense_steps: int,
    final_begin: int,
    spec: MaskSpec = MaskSpec(),
) -> Pruner:
    """AC/DC pruner: magnitude top-k in compressed phases, all-True masks in dense phases.

    Paper recipe (100 epochs): ``warmup`` 10 epochs, 5 compressed / 5 dense,
    ``final_begin`` at epoch 90.

    >>> import jax, jax.numpy as jnp
    >>> p = acdc_pruner(0.5, warmup=1, compressed_steps=1, dense_steps=1, final_begin=4)
    >>> masks, _ = p.init({'w': jnp.arange(4.).reshape(2, 2)}, jax.random.key(0))
    >>> bool(masks['w'].all())
    True
    """
    check_sparsity_arg(sparsity, "acdc_pruner")
    check_mask_spec(spec, "acdc_pruner")
    check_spec(spec, "acdc", structures=("unstructured", "block", "channel"))  # N:M has no dense phase
    schedule = acdc_schedule(
        sparsity, warmup=warmup, compressed_steps=compressed_steps, dense_steps=dense_steps, final_begin=final_begin
    )
    # Entering a dense phase the sparsity is 0, so the top-k masks are all True.
    return scored_pruner("magnitude", schedule, spec)
