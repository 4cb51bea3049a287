"""XLA FLOPs, parameter counts and bytes, and the before/after table."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune._src.flops import compare_models, flops, model_stats, param_bytes, param_count


def test_matmul_and_conv_flops_match_the_formula():
    assert flops(lambda a, b: a @ b, jnp.ones((4, 8)), jnp.ones((8, 2))) == 2 * 4 * 8 * 2
    conv = lambda x, k: lax.conv_general_dilated(
        x,
        k,
        (1, 1),
        "VALID",  # noqa: E731
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x, k = jax.ShapeDtypeStruct((1, 6, 6, 3), jnp.float32), jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
    assert flops(conv, x, k) == 2 * 4 * 4 * 4 * 3 * 3 * 3


def test_static_args_and_kwargs():
    def f(x, *, scale, train):
        return x * scale if train else x @ x.T

    x = np.ones((3, 5), np.float32)
    assert flops(f, x, scale=2.0, train=False) == 2 * 3 * 3 * 5
    assert flops(lambda x, n: jnp.tile(x, n).sum(), x, 2) >= 0


def test_param_count_and_bytes_on_mixed_trees():
    tree = {"a": [jnp.ones((2, 3)), np.zeros(4, np.float16)], "b": {"c": jnp.ones((), jnp.bfloat16)}}
    assert param_count(tree) == 6 + 4 + 1
    assert param_bytes(tree) == 6 * 4 + 4 * 2 + 2


def test_compare_models_table():
    f = lambda p, x: x @ p  # noqa: E731
    x = jnp.ones((1, 8))
    table = compare_models((f, jnp.ones((8, 4))), (f, jnp.ones((8, 2))), x)
    rows = table.splitlines()
    assert rows[0].split()[:3] == ["metric", "before", "after"]
    assert rows[1].startswith("FLOPs") and rows[1].split()[-1] == "2.00x"
    stats = model_stats(f, jnp.ones((8, 4)), x)
    assert stats == {"flops": 64.0, "params": 32, "bytes": 128}


def test_scanned_layers_count_every_iteration():
    """XLA counts a loop body once; flops() unrolls scans, so a scanned stack costs what the unrolled one does."""
    from jax import lax

    w = jnp.ones((5, 16, 16))
    x = jnp.ones((4, 16))

    def scanned(w, x):
        h, _ = lax.scan(lambda c, wi: (c @ wi, None), x, w)
        return h

    def unrolled(w, x):
        for i in range(w.shape[0]):
            x = x @ w[i]
        return x

    def nested(w, x):  # a jitted function holding the scan, scanned twice over (reverse too)
        inner = jax.jit(scanned)
        h, _ = lax.scan(lambda c, _: (inner(w, c), None), x, None, length=3, reverse=True)
        return h

    per_layer = 2 * 4 * 16 * 16
    assert flops(unrolled, w, x) == 5 * per_layer
    assert flops(scanned, w, x) == 5 * per_layer
    assert flops(nested, w, x) == 15 * per_layer
    np.testing.assert_allclose(jax.jit(nested)(w, x), unrolled(w, unrolled(w, unrolled(w, x))))

    from jaxprune.models.llama import llama_tiny_test

    tok = jnp.ones((2, 8), jnp.int32)
    costs = []
    for scan in (False, True):
        m = llama_tiny_test(num_layers=3, scan_layers=scan)
        costs.append(flops(m.apply, m.init(jax.random.key(0), tok), tok))
    assert costs[0] == costs[1]
