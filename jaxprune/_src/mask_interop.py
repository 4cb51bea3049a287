"""Masks in the shapes the rest of the JAX ecosystem expects.

jaxprune masks mirror the params and hold ``None`` at leaves that are not
pruned (biases, norm scales, excluded layers). JAX treats ``None`` as an empty
subtree, so such masks do *not* have the params' structure:
``jax.tree.map(lambda p, m: p * m, params, masks)`` raises, and
``optax.masked(opt, masks)`` or ``chex.assert_trees_all_equal_structs(params, masks)``
fail. Two helpers convert them, depending on what the consumer wants:

* :func:`full_masks` -- **one boolean per weight**: a bool array with the
  param's shape at *every* leaf (``True`` = kept; leaves that were ``None``
  become all-``True``). Same structure, shapes as the params: use it with
  ``jax.tree.map``, ``chex.assert_trees_all_equal_shapes``, or to multiply /
  ``jnp.where`` weights, gradients and updates.
* :func:`pruned_leaves` -- **one boolean per leaf**: a Python ``bool`` at every
  leaf, ``True`` where the leaf has a mask (it is pruned), ``False`` where the
  mask is ``None``. This is what ``optax.masked`` wants (its mask selects whole
  leaves, not elements), e.g. to apply weight decay only to the pruned kernels.

Both keep the container types of the masks (dicts, ``FrozenDict``, lists,
``nnx.State``, ...), and :func:`full_masks` works under ``jax.jit``.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> import jaxprune as jp
  >>> params = {'dense': {'kernel': jnp.arange(1., 9.).reshape(4, 2), 'bias': jnp.ones(2)}}
  >>> pruned, masks = jp.prune(params, 0.5)
  >>> masks['dense']['bias'] is None
  True
  >>> full = jp.full_masks(params, masks)
  >>> full['dense']['bias'].tolist()
  [True, True]
  >>> jax.tree.map(lambda p, m: p * m, params, full)['dense']['kernel'].tolist()
  [[0.0, 0.0], [0.0, 0.0], [5.0, 6.0], [7.0, 8.0]]
  >>> jp.pruned_leaves(masks)
  {'dense': {'bias': False, 'kernel': True}}
  >>> opt = optax.masked(optax.add_decayed_weights(0.1), jp.pruned_leaves(masks))
  >>> updates, _ = opt.update(jax.tree.map(jnp.zeros_like, pruned), opt.init(pruned), pruned)
  >>> updates['dense']['bias'].tolist()  # not decayed: the bias is not pruned
  [0.0, 0.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src import masks as masks_lib
from jaxprune._src import tree as tree_lib
from jaxprune._src.masks import check_boolean_masks
from jaxprune._src.types import PyTree

__all__ = ["full_masks", "pruned_leaves"]


def full_masks(params: PyTree, masks: PyTree, *, fill: bool = True) -> PyTree:
    """Elementwise boolean masks with exactly the structure and shapes of ``params``.

    Args:
      params: the params the masks belong to (only shapes are read; arrays or
        ``jax.ShapeDtypeStruct``).
      masks: jaxprune masks: a bool array (``True`` = kept) or ``None`` per leaf,
        as returned by :func:`jaxprune.prune` or kept in a :class:`jaxprune.SparseState`.
        ``None`` for the whole tree means "nothing pruned".
      fill: value of the arrays created for ``None`` (unpruned) leaves.
        ``True`` (default) keeps them, so ``p * m`` or ``jnp.where(m, p, 0)`` leaves
        them unchanged; ``False`` gives masks of "what was pruned-and-kept" only.

    Returns:
      A pytree with the params' structure holding a ``bool`` array of the
      param's shape at every leaf: the mask where there is one, else
      ``jnp.full(shape, fill)``. Mask leaves are returned as given (``jnp`` arrays).

    Raises:
      ValueError / TypeError naming the leaf if ``masks`` does not have the params'
      structure, a mask has another shape, or a mask is not boolean.

    Works under ``jax.jit`` (shapes are static).

    >>> import jax, jax.numpy as jnp, chex
    >>> import jaxprune as jp
    >>> params = {'conv': {'kernel': jnp.ones((2, 2)), 'bias': jnp.zeros(2)}}
    >>> masks = {'conv': {'kernel': jnp.eye(2, dtype=bool), 'bias': None}}
    >>> full = jp.full_masks(params, masks)
    >>> chex.assert_trees_all_equal_shapes(params, full)
    >>> full['conv']['bias'].tolist(), full['conv']['kernel'].dtype
    ([True, True], dtype('bool'))
    >>> jp.full_masks(params, masks, fill=False)['conv']['bias'].tolist()
    [False, False]
    """
    if not isinstance(fill, (bool, np.bool_)):
        raise TypeError(f"full_masks: fill must be True or False, got {fill!r}")
    if masks is None:
        masks = jax.tree.map(lambda _: None, params)
    masks_lib.check_masks(params, masks, what="masks")

    def one(m, p):
        if m is None:
            return jnp.full(np.shape(p), bool(fill), dtype=jnp.bool_)
        return jnp.asarray(m)

    return jax.tree.map(one, masks, params, is_leaf=tree_lib.is_none)


def pruned_leaves(masks: PyTree) -> PyTree:
    """One Python ``bool`` per leaf: ``True`` where the leaf has a mask, ``False`` where it is ``None``.

    The result has the structure of the params (``None`` leaves become
    ``False`` leaves), which is what ``optax.masked`` and
    ``optax.multi_transform``-style per-leaf selections expect: ``optax.masked``
    selects whole leaves, so pass this, not the elementwise masks.
    An all-``True`` mask still counts as pruned (the leaf is managed by the pruner).

    >>> import jax.numpy as jnp, optax
    >>> import jaxprune as jp
    >>> masks = {'dense': {'kernel': jnp.ones((2, 2), bool), 'bias': None}}
    >>> jp.pruned_leaves(masks)
    {'dense': {'bias': False, 'kernel': True}}
    >>> decay_pruned_only = optax.masked(optax.add_decayed_weights(1e-4), jp.pruned_leaves(masks))
    """
    check_boolean_masks(masks, "pruned_leaves: masks")
    return jax.tree.map(lambda m: m is not None, masks, is_leaf=tree_lib.is_none)
