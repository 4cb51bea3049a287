"""Tests for the orbax checkpoints: compact masks, round trips, resume, atomicity, safety, fresh-process restore."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune import magnitude_pruner, polynomial, prune, sparse_optimizer
from jaxprune import models as M
from jaxprune._src.checkpoint.api import (
    Checkpoint,
    CheckpointError,
    SparseCheckpointer,
    checkpoint_steps,
    restore_checkpoint,
    restore_shrunk_model,
    save_checkpoint,
)
from jaxprune._src.checkpoint.sparse_format import (
    compact_sparse,
    dense_from_compact,
    pack_mask,
    pack_masks,
    unpack_mask,
    unpack_masks,
)
from jaxprune._src.tree import leaves_with_paths, map_with_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tiny_models import TINY  # noqa: E402

_CACHE: dict = {}


def tiny(name):
    """(model, variables, input): variables of the model's shapes filled by numpy (no XLA compilation)."""
    if name not in _CACHE:
        model = TINY[name]()
        x = model.example_input(2)
        rng = np.random.default_rng(0)
        if name == "BertEncoder":
            x = jnp.asarray(rng.integers(0, model.vocab_size, x.shape), x.dtype)
        else:
            x = jnp.asarray(rng.normal(size=x.shape).astype(x.dtype))
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        fill = lambda p, s: jnp.asarray(
            (np.abs if p.endswith("var") else np.asarray)(  # noqa: E731
                rng.normal(size=s.shape) * 0.5
            ).astype(s.dtype)
        )
        _CACHE[name] = (model, map_with_path(fill, shapes), x)
    return _CACHE[name]


def np_prune(tree, sparsity):
    """Layerwise magnitude masks computed in numpy (no XLA compilations): (pruned, masks)."""

    def mask(path, x):
        if np.ndim(x) < 2 or path.endswith("bias"):
            return None
        a = np.abs(np.asarray(x))
        return jnp.asarray(a > np.quantile(a, sparsity))

    masks = map_with_path(mask, tree)
    pruned = jax.tree.map(
        lambda x, m: x if m is None else jnp.asarray(np.where(np.asarray(m), np.asarray(x), 0).astype(x.dtype)),
        tree,
        masks,
        is_leaf=lambda x: x is None,
    )
    return pruned, masks


def shrunk(name):
    """(model, variables, shrunk model, shrunk variables, plan, x) via the structured engine."""
    key = ("shrunk", name)
    if key not in _CACHE:
        structured = pytest.importorskip("jaxprune._src.structured")
        model, v, x = tiny(name)
        graph = structured.trace_groups(lambda v, x: model.apply(v, x), v, x)
        plan = structured.make_plan(v, graph, 0.5)
        small = structured.shrink(v, plan)
        _CACHE[key] = (model, v, M.rebuild(model, small), small, plan, x)
    return _CACHE[key]


def assert_trees_equal(a, b):
    la, lb = leaves_with_paths(a), leaves_with_paths(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.shape(x) == np.shape(y), p
        assert np.asarray(x).dtype == np.asarray(y).dtype, p
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=p)


def snapshot(directory):
    """{relative file path: sha256} of everything under directory."""
    out = {}
    for dirpath, _, files in os.walk(directory):
        for f in files:
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def run_python(code, *args, env=None, timeout=240):
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


# --------------------------------------------------------------------------- packed bits / compact format
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=0, max_size=3), st.integers(0, 2**31 - 1))
def test_pack_unpack_mask_round_trip(shape, seed):
    m = np.random.default_rng(seed).random(shape) < 0.3
    bits = pack_mask(m)
    assert bits.dtype == np.uint8 and bits.shape == ((m.size + 7) // 8,)
    np.testing.assert_array_equal(unpack_mask(bits, shape), m)


def test_pack_mask_layout_is_c_order_little_bit_order():
    m = np.zeros((2, 5), bool)
    m[0, 0] = m[1, 2] = True  # flat indices 0 and 7 -> byte 0 bits 0 and 7
    m[1, 4] = True  # flat index 9 -> byte 1 bit 1
    np.testing.assert_array_equal(pack_mask(m), np.array([0b10000001, 0b00000010], np.uint8))
    with pytest.raises(ValueError, match="bytes"):
        unpack_mask(np.zeros(3, np.uint8), (2, 5))
    with pytest.raises(TypeError, match="bool"):
        pack_mask(np.ones(3))


def test_pack_masks_tree_keeps_none_and_structure():
    masks = {"a": {"kernel": np.eye(3, dtype=bool), "bias": None}, "l": [np.ones((2, 9), bool)]}
    packed = pack_masks(masks)
    assert packed.bits["a"]["bias"] is None and packed.shapes == {"a/kernel": (3, 3), "l/0": (2, 9)}
    back = unpack_masks(packed)
    assert back["a"]["bias"] is None
    np.testing.assert_array_equal(back["a"]["kernel"], masks["a"]["kernel"])
    np.testing.assert_array_equal(back["l"][0], masks["l"][0])


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 0.99), st.integers(0, 1000))
def test_compact_sparse_round_trip_and_size(sparsity, seed):
    w = np.random.default_rng(seed).normal(size=(16, 12)).astype(np.float32)
    params, masks = prune({"w": jnp.asarray(w), "b": jnp.ones(12)}, sparsity)
    c = compact_sparse(params, masks)
    kept = int(np.asarray(masks["w"]).sum())
    assert c.values["w"].shape == (kept,)
    assert c.nbytes() == kept * 4 + (16 * 12 + 7) // 8 + 12 * 4
    back = dense_from_compact(c)
    np.testing.assert_array_equal(back["w"], np.asarray(params["w"]))
    np.testing.assert_array_equal(back["b"], np.asarray(params["b"]))


def test_compact_sparse_refuses_lossy_input():
    w = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="'w'.*non-zero"):
        compact_sparse({"w": w}, {"w": np.eye(2, dtype=bool)})
    lossy = compact_sparse({"w": w}, {"w": np.eye(2, dtype=bool)}, strict=False)
    np.testing.assert_array_equal(dense_from_compact(lossy)["w"], np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="structure"):
        compact_sparse({"w": w}, {"v": np.eye(2, dtype=bool)})


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", sorted(TINY))
def test_round_trip_dense_and_masked_every_model(tmp_path, name):
    _, v, _ = tiny(name)
    pruned, masks = np_prune(v, 0.9)
    save_checkpoint(tmp_path, 0, params=v)
    save_checkpoint(tmp_path, 1, params=pruned, masks=masks)
    dense = restore_checkpoint(tmp_path, 0, template=Checkpoint(params=v))
    assert_trees_equal(dense.params, v)
    sparse = restore_checkpoint(tmp_path, 1, template=Checkpoint(params=v))
    assert_trees_equal(sparse.params, pruned)
    assert_trees_equal(sparse.masks, masks)  # masks come back in the params' structure, None included
    # compact storage really is used for every masked leaf, and is smaller
    entries = sparse.manifest["items"]["params"]
    masked = {p for p, m in leaves_with_paths(masks) if m is not None}
    assert masked and {p for p, e in entries.items() if e["enc"] == "compact"} == masked
    assert all(
        e["stored_shape"] == [int(np.asarray(m).sum())]
        for p, e in entries.items()
        for q, m in leaves_with_paths(masks)
        if p == q and m is not None
    )
    # without a template: nested dicts, same leaves
    raw = restore_checkpoint(tmp_path, 1)
    assert_trees_equal(raw.params, jax.tree.map(lambda x: x, pruned))


@pytest.mark.parametrize("name", sorted(TINY))
def test_round_trip_shrunk_every_model(tmp_path, name):
    model, v, small_model, small, plan, x = shrunk(name)
    save_checkpoint(
        tmp_path, 3, params=v, shrunk_params=small, plan=plan, model_config=small_model, data_state={"epoch": 1}
    )
    ckpt = restore_checkpoint(tmp_path, template=Checkpoint(params=v, shrunk_params=small))
    assert ckpt.step == 3 and ckpt.data_state == {"epoch": 1}
    assert_trees_equal(ckpt.params, v)
    assert_trees_equal(ckpt.shrunk_params, small)
    assert ckpt.plan == plan.to_dict() and ckpt.model_config == M.get_config(small_model)
    rebuilt, params, plan2 = restore_shrunk_model(tmp_path)
    assert rebuilt == small_model and rebuilt != model and plan2 == plan
    assert_trees_equal(params, jax.tree.map(lambda a: a, small))
    if name == "MLP":  # same config + same params: the same outputs (checked for every model by the equalities)
        np.testing.assert_array_equal(rebuilt.apply(params, x), small_model.apply(small, x))


def test_round_trip_sparse_optimizer_state_with_key_and_counters(tmp_path):
    params = {
        "dense": {"kernel": jax.random.normal(jax.random.key(0), (6, 5)), "bias": jnp.ones(5)},
        "layers": [jnp.arange(12.0).reshape(3, 4)],
    }
    opt = sparse_optimizer(optax.adamw(1e-2), magnitude_pruner(polynomial(0.8, begin=0, end=4, every=2)), key=3)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(opt.update)
    for _ in range(3):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    save_checkpoint(tmp_path, 3, params=params, opt_state=state)
    template = Checkpoint(params=params, opt_state=jax.eval_shape(opt.init, params))
    ckpt = restore_checkpoint(tmp_path, template=template)
    assert jax.tree.structure(ckpt.opt_state) == jax.tree.structure(state)
    assert_trees_equal(ckpt.opt_state, state)
    assert_trees_equal(ckpt.params, params)
    assert int(ckpt.opt_state.count) == 3 and ckpt.opt_state.masks["dense"]["bias"] is None
    enc = {p: e["enc"] for p, e in ckpt.manifest["items"]["opt_state"].items()}
    assert enc["key"] == "key" and enc["masks/dense/kernel"] == "bits" and enc["count"] == "dense"
    # the masks default to the optimizer's, stored packed
    assert_trees_equal(ckpt.masks, state.masks)
    # the restored state keeps training exactly like the original
    u1, s1 = update(grads, state, params)
    u2, s2 = update(grads, ckpt.opt_state, ckpt.params)
    assert_trees_equal((u1, s1), (u2, s2))


def test_round_trip_nnx_state_and_frozendict(tmp_path):
    from flax import nnx
    from flax.core import FrozenDict

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.layers = nnx.List([nnx.Linear(8, 2, rngs=rngs)])

    model = Net(nnx.Rngs(0))
    state = nnx.state(model)
    pruned, masks = np_prune(state, 0.5)
    save_checkpoint(tmp_path, 1, params=pruned, masks=masks)
    ckpt = restore_checkpoint(tmp_path, template=Checkpoint(params=state))
    assert isinstance(ckpt.params, nnx.State) and isinstance(ckpt.masks, nnx.State)
    assert_trees_equal(ckpt.params, pruned)
    merged = nnx.merge(nnx.graphdef(model), ckpt.params)
    np.testing.assert_array_equal(merged.l1.kernel[...], np.asarray(pruned["l1"]["kernel"][...]))
    # without a template: plain dicts (an nnx Variable comes back as {'value': array}), same values
    raw = restore_checkpoint(tmp_path)
    np.testing.assert_array_equal(raw.params["l1"]["kernel"]["value"], np.asarray(pruned["l1"]["kernel"][...]))
    frozen = FrozenDict({"a": {"w": jnp.arange(6.0).reshape(2, 3)}})
    save_checkpoint(tmp_path, 2, params=frozen)
    back = restore_checkpoint(tmp_path, 2, template=Checkpoint(params=frozen)).params
    assert isinstance(back, FrozenDict)
    assert_trees_equal(back, frozen)


def test_masked_leaf_with_nonzero_pruned_values_is_stored_dense(tmp_path):
    params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
    masks = {"w": params["w"] > 8}  # STE-style: dense weights under a mask
    save_checkpoint(tmp_path, 0, params=params, masks=masks)
    ckpt = restore_checkpoint(tmp_path)
    assert ckpt.manifest["items"]["params"]["w"]["enc"] == "dense"
    assert_trees_equal(ckpt.params, params)


def test_json_items_round_trip_and_partial_restore(tmp_path):
    plan = {"shapes": {"w": [[4, 4], [4, 2]]}, "leaf_shapes": {"w": [4, 4]}, "groups": [], "leaves": {}}
    save_checkpoint(
        tmp_path,
        9,
        params={"w": jnp.ones((4, 4))},
        shrunk_params={"w": jnp.ones((4, 2))},
        plan=json.dumps(plan),
        data_state={"epoch": 2, "step": 9, "seed": 0, "order": [3, 1]},
    )
    ckpt = restore_checkpoint(tmp_path, items=["plan", "data_state"])
    assert ckpt.plan == plan and ckpt.data_state["order"] == [3, 1] and ckpt.params is None
    with pytest.raises(CheckpointError, match="no item 'model_config'"):
        restore_checkpoint(tmp_path, items=["model_config"])
    with pytest.raises(TypeError, match="data_state"):
        save_checkpoint(tmp_path, 10, data_state={"x": object()})
    assert checkpoint_steps(tmp_path) == [9]


# --------------------------------------------------------------------------- async, atomic commit
def test_async_saves_and_incomplete_steps_are_never_latest(tmp_path):
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    with SparseCheckpointer(tmp_path, async_=True, max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, params=jax.tree.map(lambda x: x + step, params), data_state={"step": step})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]  # max_to_keep
        # a save that never finished: orbax's temporary directory, and a step whose commit marker is missing
        shutil.copytree(tmp_path / "3", tmp_path / "5.orbax-checkpoint-tmp-1234")
        shutil.copytree(tmp_path / "3", tmp_path / "4")
        os.remove(tmp_path / "4" / "commit_success.txt")
        assert ckpt.latest_step() == 3
        assert ckpt.restore().data_state == {"step": 3}
        with pytest.raises(CheckpointError, match="step 4 .*incomplete"):
            ckpt.restore(4)
        with pytest.raises(CheckpointError, match="no checkpoint step 5"):
            ckpt.restore(5)
        # saving over the incomplete step is refused too
        with pytest.raises(CheckpointError, match="incomplete checkpoint of step 4"):
            ckpt.save(4, params=params)
    assert restore_checkpoint(tmp_path).step == 3
    assert checkpoint_steps(tmp_path, committed=False) == [2, 3, 4]


def test_existing_step_is_refused_and_overwrite_replaces_it(tmp_path):
    save_checkpoint(tmp_path, 1, params={"w": jnp.zeros(3)})
    save_checkpoint(tmp_path, 2, params={"w": jnp.ones(3)})
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="already holds a complete checkpoint of step 2.*overwrite=True"):
        save_checkpoint(tmp_path, 2, params={"w": jnp.full(3, 7.0)})
    assert snapshot(tmp_path) == before
    save_checkpoint(tmp_path, 2, params={"w": jnp.full(3, 7.0)}, overwrite=True)
    assert restore_checkpoint(tmp_path, 2).params["w"].tolist() == [7.0, 7.0, 7.0]
    assert restore_checkpoint(tmp_path, 1).params["w"].tolist() == [0.0, 0.0, 0.0]
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # the replaced step's backup is gone


# --------------------------------------------------------------------------- safety
def _big_sparse(tmp_path):
    params = {"enc": {"kernel": jax.random.normal(jax.random.key(0), (64, 64))}, "head": {"bias": jnp.ones(8)}}
    pruned, masks = prune(params, 0.5)
    save_checkpoint(tmp_path, 1, params=params)
    save_checkpoint(tmp_path, 2, params=pruned, masks=masks)
    return params, pruned, masks


def _largest_file(directory):
    files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax: un-awaited coroutine
@pytest.mark.parametrize("damage", ["flip", "truncate", "remove_item", "manifest"])
def test_damaged_checkpoint_fails_clearly_and_others_survive(tmp_path, damage):
    params, pruned, masks = _big_sparse(tmp_path)
    step1 = snapshot(tmp_path / "1")
    if damage == "manifest":
        (tmp_path / "2" / "jaxprune_manifest" / "metadata").write_text('{"format": "jaxprune.checkpoint", "ite')
        match = "manifest"
    elif damage == "remove_item":
        shutil.rmtree(tmp_path / "2" / "masks")
        match = "item 'masks' .*missing.*truncated"
    else:
        target = _largest_file(tmp_path / "2" / "params")
        data = bytearray(open(target, "rb").read())
        if damage == "flip":
            for i in range(len(data) // 3, len(data) // 3 + 64):
                data[i] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        open(target, "wb").write(bytes(data))
        match = "item 'params'"
    with pytest.raises(CheckpointError, match=match):
        restore_checkpoint(tmp_path, 2, template=Checkpoint(params=params))
    # the damaged step is not deleted or rewritten by the failed restore, the other step is intact
    assert os.path.isdir(tmp_path / "2") and snapshot(tmp_path / "1") == step1
    assert_trees_equal(restore_checkpoint(tmp_path, 1, template=Checkpoint(params=params)).params, params)


def test_sparse_or_shrunk_checkpoint_into_wrong_template_names_the_leaf(tmp_path):
    params = {"a": {"kernel": jnp.ones((8, 4))}, "b": {"kernel": jnp.ones((4, 2))}}
    small = {"a": {"kernel": jnp.ones((8, 2))}, "b": {"kernel": jnp.ones((2, 2))}}
    save_checkpoint(tmp_path, 1, params=small)
    with pytest.raises(CheckpointError, match=r"'a/kernel'.*\(8, 2\).*\(8, 4\).*shrunk checkpoint"):
        restore_checkpoint(tmp_path, template=Checkpoint(params=params))
    with pytest.raises(CheckpointError, match=r"not in the template \['b/kernel'\]"):
        restore_checkpoint(tmp_path, template=Checkpoint(params={"a": small["a"]}))
    with pytest.raises(TypeError, match="template"):
        restore_checkpoint(tmp_path, template={"weights": params})
    pruned, masks = prune(params, 0.5)
    save_checkpoint(tmp_path, 2, params=pruned, masks=masks)
    with pytest.raises(CheckpointError, match="'a/kernel'"):
        restore_checkpoint(tmp_path, 2, template=Checkpoint(params=jax.tree.map(lambda x: x[:, :1], params)))


def test_plan_that_does_not_match_params_is_refused(tmp_path):
    params = {"a": {"kernel": jnp.ones((8, 4))}}
    small = {"a": {"kernel": jnp.ones((8, 2))}}
    plan = {"shapes": {"a/kernel": [[8, 4], [8, 2]]}, "leaf_shapes": {"a/kernel": [8, 4]}}
    bad = {"shapes": {"a/kernel": [[8, 4], [8, 3]]}, "leaf_shapes": {"a/kernel": [8, 4]}}
    with pytest.raises(CheckpointError, match=r"plan does not match shrunk_params: leaf 'a/kernel'.*\(8, 3\)"):
        save_checkpoint(tmp_path, 1, params=params, shrunk_params=small, plan=bad)
    with pytest.raises(CheckpointError, match="plan does not match params.*'a/kernel'"):
        save_checkpoint(tmp_path, 1, params=small, plan=plan)
    assert not os.path.exists(tmp_path / "1")  # nothing written
    save_checkpoint(tmp_path, 1, params=params, shrunk_params=small, plan=plan)
    # a tampered plan in the checkpoint is caught on restore
    (tmp_path / "1" / "plan" / "metadata").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="plan does not match shrunk_params"):
        restore_checkpoint(tmp_path)


def test_wrong_model_config_is_refused(tmp_path):
    model, v, small_model, small, plan, _ = shrunk("SmallCNN")
    with pytest.raises(CheckpointError, match=r"wrong model config: SmallCNN built from it has leaf '[^']+' of shape"):
        save_checkpoint(tmp_path, 1, shrunk_params=small, model_config=model)  # the dense model's config
    with pytest.raises(CheckpointError, match="wrong model config: .*unknown model class 'NoSuchNet'"):
        save_checkpoint(tmp_path, 1, shrunk_params=small, model_config={"class": "NoSuchNet", "config": {}})
    assert not os.path.exists(tmp_path / "1")
    save_checkpoint(tmp_path, 1, shrunk_params=small, model_config=small_model, plan=plan)
    before = snapshot(tmp_path)
    (tmp_path / "1" / "model_config" / "metadata").write_text(json.dumps(M.get_config(model)))
    with pytest.raises(CheckpointError, match="wrong model config"):
        restore_shrunk_model(tmp_path)
    assert set(snapshot(tmp_path)) == set(before)
    save_checkpoint(tmp_path, 2, params=v)
    with pytest.raises(CheckpointError, match=r"lacks \['shrunk_params', 'model_config'\]"):
        restore_shrunk_model(tmp_path)


# --------------------------------------------------------------------------- fresh process
def test_shrunk_model_restores_in_a_fresh_process(tmp_path):
    _, _, small_model, small, plan, x = shrunk("ViT")
    ckpt = tmp_path / "ckpt"
    # the shrunk model ships alone: no dense params in this checkpoint
    save_checkpoint(ckpt, 7, shrunk_params=small, plan=plan, model_config=small_model)
    np.save(tmp_path / "x.npy", np.asarray(x))
    code = textwrap.dedent("""
        import sys, numpy as np, jax, jaxprune
        from jaxprune._src.checkpoint.api import restore_shrunk_model
        model, variables, plan = restore_shrunk_model(sys.argv[1])
        y = jax.jit(model.apply)(variables, np.load(sys.argv[2]))
        np.save(sys.argv[3], np.asarray(y))
        print(type(model).__name__, dict(model.widths), len(plan.groups))
    """)
    res = run_python(code, ckpt, tmp_path / "x.npy", tmp_path / "y.npy")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ViT")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.asarray(jax.jit(small_model.apply)(small, x)))


# --------------------------------------------------------------------------- bit-identical resume
RESUME_SCRIPT = textwrap.dedent("""
    import os, sys, json
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxprune
    from jaxprune._src.checkpoint.api import Checkpoint, SparseCheckpointer

    mode, ckpt_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    STEPS, SEED = 20, 0
    opt = jaxprune.sparse_optimizer(
        optax.adam(3e-2), jaxprune.magnitude_pruner(jaxprune.polynomial(0.8, begin=2, end=14, every=2)), key=1)
    w_true = jax.random.normal(jax.random.key(42), (8, 4))

    def init_params():
        k1, k2 = jax.random.split(jax.random.key(SEED))
        return {"l1": {"kernel": jax.random.normal(k1, (8, 16)) * 0.3, "bias": jnp.zeros(16)},
                "l2": {"kernel": jax.random.normal(k2, (16, 4)) * 0.3}}

    def batch(step):  # the data position: batch i is a function of (seed, step)
        x = jax.random.normal(jax.random.fold_in(jax.random.key(SEED + 1), step), (32, 8))
        return x, jnp.tanh(x @ w_true)

    def loss_fn(p, x, y):
        h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return jnp.mean((h @ p["l2"]["kernel"] - y) ** 2)

    @jax.jit
    def train_step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    params = init_params()
    state = opt.init(params)
    start, losses = 0, []
    ckpt = SparseCheckpointer(ckpt_dir, async_=True) if mode != "full" else None
    if mode == "resume":
        template = Checkpoint(params=params, opt_state=jax.eval_shape(opt.init, params))
        restored = ckpt.restore(template=template)
        params, state = restored.params, restored.opt_state
        start, losses = restored.data_state["step"], restored.data_state["losses"]
        assert restored.data_state["seed"] == SEED
        print("resumed from", restored.step)
    for step in range(start, STEPS):
        params, state, loss = train_step(params, state, *batch(step))
        losses.append(float(loss))
        if mode == "interrupt" and (step + 1) % 4 == 0:
            ckpt.save(step + 1, params=params, opt_state=state,
                      data_state={"step": step + 1, "epoch": 0, "seed": SEED, "losses": losses})
            if step + 1 == 12:
                os._exit(17)  # killed right after starting an async save: it may or may not be committed
    leaves = {"p/" + k: np.asarray(v) for k, v in jaxprune.leaves_with_paths(params)}
    leaves.update({"m/" + k: np.asarray(v) for k, v in jaxprune.leaves_with_paths(jaxprune.get_masks(state))})
    np.savez(out, losses=np.asarray(losses, np.float64), **leaves)
    print("done")
""")


def test_resume_after_kill_is_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT)
    code = f"import runpy, sys; sys.argv = ['train.py'] + sys.argv[1:]; runpy.run_path({str(script)!r})"
    ckpt = tmp_path / "ckpt"
    full = run_python(code, "full", ckpt, tmp_path / "full.npz")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_python(code, "interrupt", ckpt, tmp_path / "never.npz")
    assert killed.returncode == 17, killed.stderr[-3000:]
    latest = restore_checkpoint(ckpt, items=["data_state"])
    assert latest.step in (8, 12) and latest.data_state["step"] == latest.step
    resumed = run_python(code, "resume", ckpt, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files) and "m/l1/kernel" in a.files
    assert len(a["losses"]) == 20
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert 0.75 < 1 - a["m/l2/kernel"].mean() < 0.85  # the schedule reached its final sparsity
