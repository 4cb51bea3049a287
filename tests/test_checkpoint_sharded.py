"""Sharded checkpoints: save arrays sharded on a 1x8 mesh, restore onto a 2x4 mesh (8 fake CPU devices).

XLA_FLAGS must be set before jax is imported, so the check runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxprune._src.checkpoint.api import Checkpoint, restore_checkpoint, save_checkpoint

    assert jax.device_count() == 8, jax.devices()
    directory = sys.argv[1]
    devs = np.array(jax.devices())
    mesh_a = Mesh(devs.reshape(1, 8), ("data", "model"))
    mesh_b = Mesh(devs.reshape(2, 4), ("data", "model"))

    rng = np.random.default_rng(0)
    host = {"enc": {"kernel": rng.normal(size=(16, 32)).astype(np.float32),
                    "bias": rng.normal(size=(32,)).astype(np.float32)},
            "head": [rng.normal(size=(32, 8)).astype(np.float32)]}
    host["enc"]["kernel"][np.abs(host["enc"]["kernel"]) < 0.8] = 0.0
    specs_a = {"enc": {"kernel": P("data", "model"), "bias": P("model")}, "head": [P("model", None)]}
    specs_b = {"enc": {"kernel": P("data", "model"), "bias": P("model")}, "head": [P("data", "model")]}
    put = lambda tree, mesh, specs: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)
    params = put(host, mesh_a, specs_a)
    assert len(params["enc"]["kernel"].sharding.device_set) == 8
    masks = {"enc": {"kernel": params["enc"]["kernel"] != 0, "bias": None}, "head": [None]}

    save_checkpoint(directory, 1, params=params, compact=False)              # dense, sharded arrays
    save_checkpoint(directory, 2, params=params, masks=masks, compact=True)  # compact + packed masks

    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh_b, s)),
                          host, specs_b)
    for step in (1, 2):
        ckpt = restore_checkpoint(directory, step, template=Checkpoint(params=target))
        for (path, got), want, tgt in zip(jax.tree_util.tree_flatten_with_path(ckpt.params)[0],
                                           jax.tree.leaves(host), jax.tree.leaves(target)):
            assert got.sharding == tgt.sharding, (step, path, got.sharding)
            assert got.sharding.mesh.devices.shape == (2, 4)
            np.testing.assert_array_equal(np.asarray(got), want)
            # every shard holds its slice of the global array
            for shard in got.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])
    enc = ckpt.manifest["items"]["params"]
    assert enc["enc/kernel"]["enc"] == "compact" and enc["head/0"]["enc"] == "dense"
    np.testing.assert_array_equal(np.asarray(ckpt.masks["enc"]["kernel"]), host["enc"]["kernel"] != 0)
    assert ckpt.masks["enc"]["kernel"].sharding == target["enc"]["kernel"].sharding
    print("SHARDED_OK")
""")


def test_save_on_1x8_mesh_restore_on_2x4_mesh(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "SHARDED_OK" in res.stdout
