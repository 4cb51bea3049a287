"""Calibration of convolution kernels: im2col rows in the kernel's input-axis order, X^T X, Wanda/SparseGPT on convs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune._src.llm.calibration import kernel_matrix
from jaxprune._src.llm.conv_rows import conv_kernel_in_axes, conv_rows


def _conv_params(x_shape, k_shape, specs, strides, padding, rhs_dil, lhs_dil=None):
    dn = jax.lax.conv_dimension_numbers(x_shape, k_shape, specs)
    nsp = len(x_shape) - 2
    return dict(
        dimension_numbers=dn,
        window_strides=tuple(strides),
        padding=padding,
        lhs_dilation=tuple(lhs_dil or (1,) * nsp),
        rhs_dilation=tuple(rhs_dil),
        feature_group_count=1,
        batch_group_count=1,
    )


@settings(max_examples=12, deadline=None)
@given(
    layout=st.sampled_from([("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW"), ("NHWC", "OHWI", "NHWC")]),
    stride=st.sampled_from([1, 2]),
    dil=st.sampled_from([1, 2]),
    pad=st.sampled_from(["SAME", "VALID", ((1, 0), (2, 1))]),
    k=st.sampled_from([1, 3]),
)
def test_rows_times_kernel_matrix_is_the_convolution(layout, stride, dil, pad, k):
    rng = np.random.default_rng(0)
    n, h, w, c, o = 2, 7, 6, 3, 4
    lhs_spec, rhs_spec, _ = layout
    x_nhwc = rng.standard_normal((n, h, w, c)).astype(np.float32)
    w_hwio = rng.standard_normal((k, k, c, o)).astype(np.float32)
    x = x_nhwc if lhs_spec == "NHWC" else x_nhwc.transpose(0, 3, 1, 2)
    kern = {"HWIO": w_hwio, "OIHW": w_hwio.transpose(3, 2, 0, 1), "OHWI": w_hwio.transpose(3, 0, 1, 2)}[rhs_spec]
    params = _conv_params(x.shape, kern.shape, layout, (stride, stride), pad, (dil, dil))
    if isinstance(pad, str):
        params["padding"] = jax.lax.padtype_to_pads((h, w), [(k - 1) * dil + 1] * 2, (stride, stride), pad)
    y = jax.lax.conv_general_dilated(
        x,
        kern,
        params["window_strides"],
        params["padding"],
        rhs_dilation=params["rhs_dilation"],
        dimension_numbers=params["dimension_numbers"],
        precision=jax.lax.Precision.HIGHEST,
    )
    perm = tuple(range(4))  # the kernel leaf is the operand itself
    in_axes, why = conv_kernel_in_axes(params, perm)
    assert why is None
    rows = conv_rows(jnp.asarray(x), kern.shape, params, perm)
    got = rows @ kernel_matrix(jnp.asarray(kern), in_axes)
    out_spec = params["dimension_numbers"].out_spec
    want = jnp.transpose(y, (out_spec[0], *out_spec[2:], out_spec[1])).reshape(-1, o)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_grouped_convolutions_are_refused():
    params = _conv_params((1, 4, 4, 4), (3, 3, 1, 4), ("NHWC", "HWIO", "NHWC"), (1, 1), ((1, 1), (1, 1)), (1, 1))
    params["feature_group_count"] = 4
    axes, why = conv_kernel_in_axes(params, (0, 1, 2, 3))
    assert axes == () and "depthwise" in why


class _ConvNet:
    """A small Linen CNN: conv 3x3 SAME -> relu -> conv 3x3 stride 2 -> mean pool -> dense."""

    @staticmethod
    def make():
        import flax.linen as nn

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="c1")(x))
                x = nn.relu(nn.Conv(12, (3, 3), strides=(2, 2), padding="SAME", name="c2")(x))
                return nn.Dense(5, name="head")(x.mean((1, 2)))

        return Net()


def _im2col_same_3x3(x):
    """Explicit loops: rows (n*h*w, 3*3*c) ordered (kh, kw, c) for a stride-1 SAME 3x3 window."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [xp[b, i : i + 3, j : j + 3, :].reshape(-1) for b in range(n) for i in range(h) for j in range(w)]
    return np.asarray(rows, np.float64)


def test_calibrate_conv_kernels_and_prune_them():
    import jaxprune.llm as jl

    net = _ConvNet.make()
    rng = np.random.default_rng(1)
    batches = [jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32) for _ in range(3)]
    v = net.init(jax.random.key(0), batches[0])
    stats = jl.calibrate(lambda p, x: net.apply(p, x), v, batches)
    assert set(stats) == {"params/c1/kernel", "params/c2/kernel", "params/head/kernel"}
    s1 = stats["params/c1/kernel"]
    rows = np.concatenate([_im2col_same_3x3(np.asarray(b, np.float64)) for b in batches])
    np.testing.assert_allclose(np.asarray(s1.xtx), rows.T @ rows, rtol=1e-4, atol=1e-3)
    assert s1.count == rows.shape[0] and s1.in_axes == (0, 1, 2)
    assert stats["params/c2/kernel"].count == 3 * 4 * 4 * 4  # stride 2: 4x4 output positions per image
    assert stats["params/c2/kernel"].xtx.shape == (3 * 3 * 8,) * 2
    import jaxprune as jp

    magnitude = jp.apply_masks(v, jax.tree.map(lambda w: None if w.ndim < 2 else jp.topk_mask(jnp.abs(w), 0.5), v))
    errs = {
        "magnitude": jl.reconstruction_error(v, magnitude, stats),
        "wanda": jl.reconstruction_error(v, jp.apply_masks(v, jl.wanda_masks(v, stats, 0.5)), stats),
        "sparsegpt": jl.reconstruction_error(v, jl.sparsegpt(v, stats, 0.5)[0], stats),
    }
    for leaf in ("params/c1/kernel", "params/c2/kernel"):
        assert errs["sparsegpt"][leaf] < errs["wanda"][leaf] and errs["sparsegpt"][leaf] < errs["magnitude"][leaf]
    _, m24 = jl.sparsegpt(v, stats, 0.5, structure="2:4", rules=[("c1/", False)])  # c1: 27 inputs, not 4k
    k = np.asarray(m24["params"]["c2"]["kernel"]).reshape(-1, 12)  # rows in (kh, kw, c_in) order
    assert (k.reshape(-1, 4, 12).sum(1) == 2).all()  # 2 of every 4 consecutive inputs kept, per output


def test_depthwise_conv_kernels_are_refused_by_name():
    import flax.linen as nn

    import jaxprune.llm as jl

    net = nn.Conv(4, (3, 3), feature_group_count=4)
    x = jnp.ones((1, 5, 5, 4))
    v = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="kernel.*depthwise"):
        jl.calibrate(lambda p, b: net.apply(p, b), v, [x])
