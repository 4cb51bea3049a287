"""The activation rows a convolution kernel multiplies: im2col patches, in the kernel's input-axis order.

A convolution ``y = conv(x, W)`` is, at every output position, a matrix product
of the input patch under the window with the kernel: ``y[n, p, :] = patch(n, p)
@ W_matrix`` where ``W_matrix`` is the kernel viewed as ``(d_in, d_out)`` with
``d_in = in_features x window``. :func:`conv_rows` returns those patches as
rows ``(N * positions, d_in)``, flattened in the *kernel leaf's* order of its
input axes (sorted leaf axes: ``(0, 1, 2)`` = ``(kh, kw, c_in)`` for a Flax HWIO
kernel), so that ``rows.T @ rows`` is the ``X^T X`` that SparseGPT and Wanda
need for the :func:`~jaxprune._src.llm.calibration.kernel_matrix` view of the
kernel. Grouped / depthwise convolutions (``feature_group_count > 1``) are not
a single matrix product and are refused.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["conv_kernel_in_axes", "conv_rows"]


def conv_kernel_in_axes(params: dict, perm: Sequence[int]) -> tuple[tuple[int, ...], str | None]:
    """``(leaf input axes, reason it is unsupported or None)`` of a conv's kernel operand.

    ``perm`` maps the kernel *operand*'s axes to the kernel *leaf*'s axes (transposes in between).
    """
    if params.get("feature_group_count", 1) != 1 or params.get("batch_group_count", 1) != 1:
        return (), "is a grouped/depthwise convolution kernel (feature_group_count > 1: not one matrix product)"
    rhs_spec = params["dimension_numbers"].rhs_spec
    in_op = (rhs_spec[1], *rhs_spec[2:])  # operand axes: in-features, window
    return tuple(sorted(int(perm[a]) for a in in_op)), None


def conv_rows(x: jax.Array, kernel_shape: Sequence[int], params: dict, perm: Sequence[int]) -> jax.Array:
    """Patches of the conv input ``x`` under each output position, ``(rows, d_in)`` in the leaf's axis order.

    ``kernel_shape`` is the kernel *operand*'s shape, ``params`` the ``conv_general_dilated``
    equation's parameters, ``perm`` as in :func:`conv_kernel_in_axes`.

    >>> x = jnp.arange(8.0).reshape(1, 4, 2)       # (N, W, C), a 1-d conv, window 3, VALID
    >>> dn = jax.lax.conv_dimension_numbers(x.shape, (3, 2, 5), ("NWC", "WIO", "NWC"))
    >>> p = dict(dimension_numbers=dn, window_strides=(1,), padding=((0, 0),), lhs_dilation=(1,),
    ...          rhs_dilation=(1,), feature_group_count=1, batch_group_count=1)
    >>> conv_rows(x, (3, 2, 5), p, (0, 1, 2)).tolist()[0]   # window positions 0..2, each (c0, c1)
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec = dn.lhs_spec, dn.rhs_spec
    nsp = len(lhs_spec) - 2
    window = tuple(int(kernel_shape[a]) for a in rhs_spec[2:])
    # canonical layout (N, C, spatial...) for conv_general_dilated_patches
    xc = jnp.transpose(x, (lhs_spec[0], lhs_spec[1], *lhs_spec[2:]))
    canon = jax.lax.ConvDimensionNumbers(tuple(range(nsp + 2)), tuple(range(nsp + 2)), (0, nsp + 1, *range(1, nsp + 1)))
    patches = jax.lax.conv_general_dilated_patches(
        xc,
        window,
        params["window_strides"],
        params["padding"],
        lhs_dilation=params["lhs_dilation"],
        rhs_dilation=params["rhs_dilation"],
        dimension_numbers=canon,
        precision=jax.lax.Precision.HIGHEST,
    )  # (N, out spatial..., C * prod(window)), features ordered (C, window...)
    c = xc.shape[1]
    rows = patches.reshape(-1, c, *window)  # feature axes: operand in-feature axis, then window axes
    leaf_of = [int(perm[rhs_spec[1]])] + [int(perm[a]) for a in rhs_spec[2:]]
    order = np.argsort(leaf_of)  # feature axes in increasing leaf-axis order
    rows = jnp.transpose(rows, (0, *(1 + int(i) for i in order)))
    return rows.reshape(rows.shape[0], -1)
