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
