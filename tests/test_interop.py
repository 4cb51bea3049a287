"""Interop with the ecosystem: full masks for jax/optax/chex, dense exports, loud typos and bad arguments."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune._src import algorithms as alg
from jaxprune._src.checkpoint.export import export_dense
from jaxprune._src.mask_interop import full_masks, pruned_leaves


def _params():
    k = jax.random.split(jax.random.key(0), 3)
    return {
        "body": {"kernel": jax.random.normal(k[0], (6, 8)), "bias": jnp.linspace(-1.0, 1.0, 8)},
        "head": {"kernel": jax.random.normal(k[1], (8, 4)), "bias": jnp.zeros(4)},
        "blocks": [{"kernel": jax.random.normal(k[2], (4, 4))}, {"scale": jnp.ones(4)}],
    }


# ------------------------------------------------------------------------------------ full masks
def test_full_masks_fit_jax_tree_map_and_chex():
    params = _params()
    pruned, masks = jp.prune(params, 0.5)
    assert masks["body"]["bias"] is None
    with pytest.raises(Exception):  # the problem being solved: None leaves break tree.map
        jax.tree.map(lambda p, m: p * m, params, masks)
    full = full_masks(params, masks)
    chex.assert_trees_all_equal_structs(params, full)
    chex.assert_trees_all_equal_shapes(params, full)
    assert all(leaf.dtype == jnp.bool_ for leaf in jax.tree.leaves(full))
    assert bool(full["body"]["bias"].all()) and bool(full["blocks"][1]["scale"].all())
    np.testing.assert_array_equal(full["body"]["kernel"], masks["body"]["kernel"])
    chex.assert_trees_all_equal(jax.tree.map(lambda p, m: p * m, params, full), pruned)
    chex.assert_trees_all_equal(jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, full), pruned)
    # fill=False: unpruned leaves all False; jit gives the same result
    empty = full_masks(params, masks, fill=False)
    assert not bool(empty["head"]["bias"].any())
    chex.assert_trees_all_equal(jax.jit(full_masks)(params, masks), full)
    # masks=None: nothing pruned
    assert all(bool(m.all()) for m in jax.tree.leaves(full_masks(params, None)))


def test_full_masks_refuse_mismatched_masks():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="'w'.*shape"):
        full_masks(params, {"w": jnp.ones(3, bool), "b": None})
    with pytest.raises(TypeError, match="'w'.*boolean"):
        full_masks(params, {"w": jnp.ones((2, 2)), "b": None})
    with pytest.raises(ValueError, match="missing paths"):
        full_masks(params, {"w": jnp.ones((2, 2), bool)})
    with pytest.raises(TypeError, match="fill"):
        full_masks(params, {"w": None, "b": None}, fill=1)
    with pytest.raises(TypeError, match="'w'"):
        pruned_leaves({"w": jnp.ones((2, 2)), "b": None})


def test_pruned_leaves_drive_optax_masked_weight_decay():
    params = _params()
    pruned, masks = jp.prune(params, 0.5)
    sel = pruned_leaves(masks)
    assert sel["body"] == {"bias": False, "kernel": True} and sel["blocks"][1] == {"scale": False}
    chex.assert_trees_all_equal_structs(params, sel)
    opt = optax.masked(optax.add_decayed_weights(0.5), sel)
    zeros = jax.tree.map(jnp.zeros_like, pruned)
    updates, _ = opt.update(zeros, opt.init(pruned), pruned)
    np.testing.assert_allclose(updates["body"]["kernel"], 0.5 * pruned["body"]["kernel"])
    np.testing.assert_array_equal(updates["body"]["bias"], 0.0)  # not pruned: not decayed
    np.testing.assert_array_equal(updates["blocks"][1]["scale"], 0.0)
    # and it composes with the masks of a sparse optimizer's state
    opt = jp.sparse_optimizer(optax.sgd(0.1), jp.magnitude_pruner(jp.one_shot(0.5)))
    state = opt.init(params)
    state_masks = jp.get_masks(state)
    chex.assert_trees_all_equal_shapes(params, full_masks(params, state_masks))
    assert pruned_leaves(state_masks) == sel


# --------------------------------------------------------------------------------------- export
_LOADER = textwrap.dedent(
    """
    import os, pickle, sys
    import numpy as np
    import orbax.checkpoint as ocp
    from safetensors.numpy import load_file

    def flat(tree, prefix=""):
        if isinstance(tree, dict):
            out = {}
            for k, v in tree.items():
                out.update(flat(v, f"{prefix}{k}/"))
            return out
        if isinstance(tree, (list, tuple)):
            out = {}
            for i, v in enumerate(tree):
                out.update(flat(v, f"{prefix}{i}/"))
            return out
        return {prefix[:-1]: np.asarray(tree)}

    out_dir, result = sys.argv[1], sys.argv[2]
    restored = ocp.StandardCheckpointer().restore(os.path.join(out_dir, "orbax"))
    tensors = load_file(os.path.join(out_dir, "model.safetensors"))
    assert "jaxprune" not in sys.modules, sorted(m for m in sys.modules if "jaxprune" in m)
    with open(result, "wb") as f:
        pickle.dump({"orbax": flat(restored), "safetensors": dict(tensors)}, f)
    """
)


def _expected(ckpt):
    out = {}
    for item, tree in (("params", ckpt.params), ("shrunk_params", ckpt.shrunk_params)):
        if tree is not None:
            out.update({f"{item}/{p}": np.asarray(x) for p, x in jp.leaves_with_paths(tree)})
    if ckpt.masks is not None:
        full = full_masks(ckpt.params, ckpt.masks)
        out.update({f"masks/{p}": np.asarray(x) for p, x in jp.leaves_with_paths(full)})
    return out


def _assert_bitwise_equal(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def test_export_is_readable_without_jaxprune(tmp_path):
    params = _params()
    params["body"]["step"] = jnp.array([3, 1], jnp.int32)
    pruned, masks = jp.prune(params, 0.75)
    ckpt_dir, out_dir = str(tmp_path / "ckpt"), str(tmp_path / "export")
    jp.save_checkpoint(ckpt_dir, 1, params=params, data_state={"epoch": 0})  # dense, older step
    jp.save_checkpoint(ckpt_dir, 5, params=pruned, masks=masks, shrunk_params={"dense": {"kernel": jnp.ones((3, 2))}})
    manifest = jp.restore_checkpoint(ckpt_dir, items=[]).manifest
    assert manifest["items"]["params"]["body/kernel"]["enc"] == "compact"  # the jaxprune-only encoding

    written = export_dense(ckpt_dir, out_dir, format=["orbax", "safetensors"])
    assert written == {
        "orbax": os.path.join(out_dir, "orbax"),
        "safetensors": os.path.join(out_dir, "model.safetensors"),
    }
    assert sorted(os.listdir(out_dir)) == ["model.safetensors", "orbax"]  # no temporary leftovers

    result = str(tmp_path / "loaded.pkl")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, out_dir, result], cwd=str(tmp_path), env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(result, "rb") as f:
        loaded = pickle.load(f)
    want = _expected(jp.restore_checkpoint(ckpt_dir))
    assert want["masks/body/bias"].all() and not want["masks/body/kernel"].all()
    _assert_bitwise_equal(loaded["orbax"], want)
    _assert_bitwise_equal(loaded["safetensors"], want)

    # step=, overwrite and format checks
    with pytest.raises(FileExistsError, match="overwrite"):
        export_dense(ckpt_dir, out_dir, format="safetensors")
    export_dense(ckpt_dir, out_dir, step=1, format=("safetensors", "orbax"), overwrite=True)
    assert sorted(os.listdir(out_dir)) == ["model.safetensors", "orbax"]
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(os.path.join(out_dir, "model.safetensors"), "np") as f:
        assert f.metadata()["step"] == "1"
    _assert_bitwise_equal(
        load_file(os.path.join(out_dir, "model.safetensors")), _expected(jp.restore_checkpoint(ckpt_dir, 1))
    )
    with pytest.raises(ValueError, match="format must be one of"):
        export_dense(ckpt_dir, out_dir, format="npz")
    with pytest.raises(jp.CheckpointError):
        export_dense(str(tmp_path / "nothing"), out_dir)


def test_export_masks_only_checkpoint(tmp_path):
    _, masks = jp.prune(_params(), 0.5)
    jp.save_checkpoint(tmp_path / "c", 0, masks=masks, data_state={"a": 1})
    path = export_dense(tmp_path / "c", tmp_path / "o", format="safetensors")["safetensors"]
    from safetensors.numpy import load_file

    got = load_file(path)
    assert sorted(got) == ["masks/blocks/0/kernel", "masks/body/kernel", "masks/head/kernel"]
    np.testing.assert_array_equal(got["masks/body/kernel"], np.asarray(masks["body"]["kernel"]))
    jp.save_checkpoint(tmp_path / "d", 0, data_state={"a": 1})
    with pytest.raises(jp.CheckpointError, match="nothing to export"):
        export_dense(tmp_path / "d", tmp_path / "o2")


# ------------------------------------------------------------------------------ unmatched rules
def _two_layers():
    return {"body": {"kernel": jnp.arange(16.0).reshape(4, 4)}, "head": {"kernel": jnp.arange(16.0).reshape(4, 4)}}


@pytest.mark.parametrize(
    "kwargs,regex",
    [
        ({"rules": [("hed", None)]}, "hed"),
        ({"prunable": [("hed", False)]}, "hed"),
        ({"rules": [("head", None), ("bdy", 0.2)]}, "bdy"),
    ],
)
def test_unmatched_rule_warns_once_by_default_and_raises_when_strict(kwargs, regex):
    params = _two_layers()
    with pytest.warns(UserWarning, match=rf"regex \['{regex}'\] matched no") as record:
        jp.prune(params, 0.5, **kwargs)
    ours = [w for w in record if "matched no" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert ours[0].filename == __file__  # attributed to the caller's line
    assert "head/kernel" in str(ours[0].message)  # lists the available paths
    with pytest.raises(ValueError, match=regex):
        jp.prune(params, 0.5, strict=True, **kwargs)


def test_matched_rules_do_not_warn_and_other_entry_points_warn():
    params = _two_layers()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, masks = jp.prune(params, 0.5, rules=[("head", None)], prunable=[("body", True)])
        jp.layer_sparsities(params, 0.5, rules=[("head", None)])
    assert masks["head"]["kernel"] is None
    with pytest.warns(UserWarning, match="hed"):
        jp.layer_sparsities(params, 0.5, rules=[("hed", None)])
    with pytest.warns(UserWarning, match="hed"):
        jp.prunable_tree(params, rules=[("hed", False)])
    with pytest.warns(UserWarning, match="hed"):
        jp.rule_tree(params, [("hed", 1)])
    with pytest.warns(UserWarning, match="hed"):  # a pruner whose spec has a typo warns at init
        jp.magnitude_pruner(jp.one_shot(0.5), jp.MaskSpec(rules=[("hed", None)])).init(params, jax.random.key(0))
    with pytest.raises(ValueError, match="hed"):
        jp.magnitude_pruner(jp.one_shot(0.5), jp.MaskSpec(rules=[("hed", None)], strict=True)).init(
            params, jax.random.key(0)
        )


# ----------------------------------------------------------------------------- factory arguments
_ONE = jp.one_shot(0.5)
BAD_FACTORY_ARGS = [
    (lambda: jp.magnitude_pruner(0.5), TypeError, r"magnitude_pruner expects a Schedule.*jp\.one_shot.*got float 0\.5"),
    (lambda: jp.magnitude_pruner(_ONE, "global"), TypeError, r"magnitude_pruner expects a MaskSpec.*`spec`.*str"),
    (lambda: jp.scored_pruner("magnitude", 0.9), TypeError, r"scored_pruner expects a Schedule.*got float"),
    (lambda: jp.scored_pruner(0.5, _ONE), TypeError, r"scored_pruner expects a score name.*`score`"),
    (lambda: jp.scored_pruner("magnitud", _ONE), ValueError, r"unknown score method"),
    (lambda: jp.scored_pruner("magnitude", _ONE, {"scope": "global"}), TypeError, r"scored_pruner.*MaskSpec.*dict"),
    (lambda: alg.fixed_mask_pruner(0.5), TypeError, r"fixed_mask_pruner expects a pytree of boolean masks.*float"),
    (lambda: alg.fixed_mask_pruner(None), TypeError, r"fixed_mask_pruner expects a pytree"),
    (lambda: alg.fixed_mask_pruner({"w": 0.5}), TypeError, r"fixed_mask_pruner: mask leaf 'w'"),
    (lambda: alg.gmp_pruner(_ONE, begin=0, end=4, every=1), TypeError, r"gmp_pruner expects a float in \[0, 1\)"),
    (lambda: alg.gmp_pruner(1.0, begin=0, end=4, every=1), ValueError, r"gmp_pruner: sparsity must be in \[0, 1\)"),
    (lambda: alg.gmp_pruner("0.9", begin=0, end=4, every=1), TypeError, r"gmp_pruner: sparsity must be a number"),
    (lambda: alg.gmp_pruner(0.9, begin=0, end=4, every=1, spec="global"), TypeError, r"gmp_pruner expects a MaskSpec"),
    (lambda: alg.gmp_pruner(0.9, begin=0, end=4, every=1, score=3), TypeError, r"gmp_pruner expects a score name"),
    (
        lambda: alg.gmp_pruner(0.9, begin=0, end=4, every=1, initial_sparsity=2),
        ValueError,
        r"gmp_pruner: initial_sparsity",
    ),
    (lambda: alg.rigl_pruner(_ONE, end=10), TypeError, r"rigl_pruner expects a float"),
    (lambda: alg.rigl_pruner(1.5, end=10), ValueError, r"rigl_pruner: sparsity must be in"),
    (lambda: alg.set_pruner(None, end=10), TypeError, r"set_pruner: sparsity must be a number"),
    (lambda: alg.drop_grow_pruner(_ONE, grow="random", every=1, end=5), TypeError, r"drop_grow_pruner expects a float"),
    (
        lambda: alg.drop_grow_pruner(0.5, grow="random", every=1, end=5, spec=0),
        TypeError,
        r"drop_grow_pruner.*MaskSpec",
    ),
    (lambda: alg.ste_pruner(0.5), TypeError, r"ste_pruner expects a Schedule.*one_shot\(0\.5\)"),
    (lambda: alg.ste_pruner(_ONE, "nm"), TypeError, r"ste_pruner expects a MaskSpec"),
    (lambda: alg.ste_pruner(_ONE, score=None), TypeError, r"ste_pruner expects a score name"),
    (
        lambda: alg.acdc_pruner(_ONE, warmup=1, compressed_steps=1, dense_steps=1, final_begin=4),
        TypeError,
        r"acdc_pruner expects a float",
    ),
    (
        lambda: alg.acdc_pruner(0.5, warmup=1, compressed_steps=1, dense_steps=1, final_begin=4, spec=None),
        TypeError,
        r"acdc_pruner expects a MaskSpec",
    ),
    (lambda: alg.woodfisher_pruner(-0.1, begin=0, end=4, every=1), ValueError, r"woodfisher_pruner: sparsity"),
    (lambda: alg.woodfisher_pruner(_ONE, begin=0, end=4, every=1), TypeError, r"woodfisher_pruner expects a float"),
    (
        lambda: alg.woodfisher_pruner(0.5, begin=0, end=4, every=1, spec="global"),
        TypeError,
        r"woodfisher_pruner expects a MaskSpec",
    ),
]


@pytest.mark.parametrize("i", range(len(BAD_FACTORY_ARGS)))
def test_pruner_factories_check_arguments_up_front(i):
    fn, exc, pattern = BAD_FACTORY_ARGS[i]
    with pytest.raises(exc, match=pattern):
        fn()


def test_good_factory_arguments_still_work():
    params = {"w": jnp.arange(16.0).reshape(4, 4)}
    for p in (
        jp.magnitude_pruner(_ONE),
        jp.scored_pruner(lambda params, grads=None, key=None: params, _ONE),
        alg.gmp_pruner(0.5, begin=0, end=4, every=1, spec=jp.MaskSpec(scope="global")),
        alg.rigl_pruner(0.5, every=1, end=4, distribution="uniform"),
        alg.set_pruner(0.5, every=1, end=4, distribution="uniform"),
        alg.ste_pruner(_ONE, score="magnitude"),
        alg.acdc_pruner(0.5, warmup=1, compressed_steps=1, dense_steps=1, final_begin=4),
        alg.woodfisher_pruner(0.5, begin=0, end=4, every=1, block_size=4),
        alg.fixed_mask_pruner({"w": jnp.eye(4, dtype=bool)}),
    ):
        masks, _ = p.init(params, jax.random.key(0))
        assert masks["w"].shape == (4, 4)
    json.dumps(pruned_leaves({"w": None}))  # plain Python bools
