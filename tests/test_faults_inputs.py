"""Fault injection on inputs and on the mask library: every bad input ends in a named error.

Each test is one case of the reliability issue "masks, rules and the mask library":
data loss in ``save_library`` (overwrite guard, failed save, kill -9 mid-save,
corrupted files), rules reaching non-prunable leaves, unchecked sparsities, axes,
masks and garbage inputs, and unclear errors (scalar leaves, ``None`` leaves,
grads of another structure, truncated / garbage weight files).
"""

from __future__ import annotations

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

import jaxprune as jp
import jaxprune.convert as cv

try:  # the mask library's home (its names on ``jaxprune`` itself are deprecated aliases)
    import jaxprune.vote as vote
except ImportError:  # pragma: no cover - older layout
    vote = jp
_magnitude = getattr(jp, "magnitude_scores", None) or jp.magnitude  # (jp.magnitude: deprecated alias)


def _params():
    k = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    return {
        "conv": {"kernel": k, "bias": jnp.arange(1.0, 9.0)},
        "norm": {"scale": jnp.arange(1.0, 9.0)},
        "dense": {"kernel": jnp.arange(1.0, 33.0).reshape(8, 4), "bias": jnp.ones(4)},
    }


# ------------------------------------------------------------------------------------ mask library
def _lib(name="a", seed=0, note=1.0):
    rng = np.random.default_rng(seed)
    rec = vote.TaskRecord(
        name, rng.normal(size=4), {"g0": rng.random(6) < 0.5, "g1": rng.random(3) < 0.5}, {"budget": 0.5, "note": note}
    )
    return vote.MaskLibrary((rec,), {"arch": "toy"})


def _same(a, b):
    assert a.names == b.names and a.meta == b.meta
    for x, y in zip(a.records, b.records):
        np.testing.assert_array_equal(x.embedding, y.embedding)
        assert list(x.keep) == list(y.keep) and x.meta == y.meta
        for g in x.keep:
            np.testing.assert_array_equal(x.keep[g], y.keep[g])


def _save(path, lib, **kw):
    try:
        return vote.save_library(path, lib, **kw)
    except TypeError as e:  # the code before the fix had no overwrite=: save anyway
        if "overwrite" not in str(e):
            raise
        return vote.save_library(path, lib)


def test_library_save_over_existing_library_is_refused_by_default(tmp_path):
    path = vote.save_library(tmp_path / "lib", _lib("a"))
    with pytest.raises(ValueError, match=r"already holds a mask library.*overwrite=True"):
        vote.save_library(path, _lib("b", seed=1))
    _same(vote.load_library(path), _lib("a"))
    vote.save_library(path, _lib("b", seed=1), overwrite=True)
    _same(vote.load_library(path), _lib("b", seed=1))
    assert sorted(n for n in os.listdir(path) if n.startswith("arrays")).__len__() == 1  # old arrays removed


def test_library_failed_save_keeps_previous_library(tmp_path):
    path = vote.save_library(tmp_path / "lib", _lib("a"))
    bad = _lib("b", note=object())  # metadata that is not JSON-serializable
    with pytest.raises(TypeError, match="JSON"):
        _save(path, bad, overwrite=True)
    _same(vote.load_library(path), _lib("a"))
    with pytest.raises(ValueError, match="JSON"):  # NaN metadata: not valid JSON either
        _save(path, _lib("b", note=float("nan")), overwrite=True)
    _same(vote.load_library(path), _lib("a"))


_KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    try:
        import jaxprune.vote as vote
    except ImportError:
        import jaxprune as vote
    path, n_kill = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(7)
    lib = vote.MaskLibrary((vote.TaskRecord("new", rng.normal(size=4), {"g0": rng.random(6) < 0.5}),))
    calls = [0]
    def wrap(fn):
        def inner(*a, **k):
            calls[0] += 1
            if calls[0] == n_kill:
                os.kill(os.getpid(), 9)
            return fn(*a, **k)
        return inner
    os.replace, os.rename = wrap(os.replace), wrap(os.rename)
    try:
        vote.save_library(path, lib, overwrite=True)
    except TypeError as e:  # the code before the fix had no overwrite=
        if "overwrite" not in str(e):
            raise
        vote.save_library(path, lib)
    print("CALLS", calls[0])
""")


def test_library_kill9_mid_save_keeps_previous_library(tmp_path):
    path = vote.save_library(tmp_path / "lib", _lib("a"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    killed = 0
    for n in range(1, 9):  # kill at the n-th rename/replace until a save runs through
        proc = subprocess.run(
            [sys.executable, "-c", _KILL_SCRIPT, path, str(n)], env=env, capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            assert "CALLS" in proc.stdout
            break
        assert proc.returncode == -9, proc.stderr[-2000:]
        killed += 1
        _same(vote.load_library(path), _lib("a"))  # the previous library, unchanged
    else:
        pytest.fail("save never completed")
    assert killed >= 2  # killed inside orbax's own rename and at the library.json commit
    assert vote.load_library(path).names == ["new"]  # and a later save still works over the leftovers
    assert len([n for n in os.listdir(path) if n.startswith("arrays")]) == 1  # leftovers cleaned up


def test_library_bit_flipped_or_truncated_files_are_refused(tmp_path):
    path = vote.save_library(tmp_path / "lib", _lib("abcdef"))
    meta_path = os.path.join(path, "library.json")
    good = open(meta_path, "rb").read()
    # one bit flipped inside the record name: still valid JSON, different content
    i = good.index(b'"abcdef"') + 3
    flipped = good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1 :]
    open(meta_path, "wb").write(flipped)
    with pytest.raises(ValueError, match="library.json.*SHA-256"):
        vote.load_library(path)
    open(meta_path, "wb").write(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="library.json.*not valid JSON"):
        vote.load_library(path)
    open(meta_path, "wb").write(good)
    _same(vote.load_library(path), _lib("abcdef"))
    # array data that orbax reads without complaint but that is not what was saved: another library's
    # arrays (same shapes, other values) swapped in under this library's arrays directory
    other = vote.save_library(tmp_path / "other", _lib("abcdef", seed=5))
    (mine,) = [n for n in os.listdir(path) if n.startswith("arrays")]
    (theirs,) = [n for n in os.listdir(other) if n.startswith("arrays")]
    shutil.rmtree(os.path.join(path, mine))
    shutil.copytree(os.path.join(other, theirs), os.path.join(path, mine))
    with pytest.raises(ValueError, match=r"record 0 \('abcdef'\).*SHA-256"):
        vote.load_library(path)
    # a bit flipped in the largest stored array file (orbax's metadata): refused, naming the library
    shutil.rmtree(os.path.join(path, mine))
    shutil.copytree(os.path.join(tmp_path / "other", theirs), os.path.join(path, mine))
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(path, mine)) for f in fs]
    big = max(files, key=os.path.getsize)
    data = bytearray(open(big, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(big, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=str(tmp_path)):
        vote.load_library(path)


# -------------------------------------------------------------------------- rules vs prunable leaves
def test_rules_only_reach_prunable_leaves():
    params = _params()
    rules = [("conv", 0.8), ("norm", 0.5)]
    pruned, masks = jp.prune(params, 0.5, rules=rules)
    assert masks["conv"]["bias"] is None and masks["norm"]["scale"] is None
    np.testing.assert_array_equal(pruned["conv"]["bias"], params["conv"]["bias"])
    np.testing.assert_array_equal(pruned["norm"]["scale"], params["norm"]["scale"])
    assert int((~masks["conv"]["kernel"]).sum()) == round(0.8 * params["conv"]["kernel"].size)
    sp = jp.layer_sparsities(params, 0.5, rules=rules)
    assert sp["conv"]["bias"] is None and sp["norm"]["scale"] is None and sp["conv"]["kernel"] == 0.8
    assert jp.rule_tree(params, rules, prunable=True)["conv"]["bias"] is None
    # a leaf the user marks prunable does get the rule
    _, masks = jp.prune(params, 0.5, rules=rules, prunable=[("conv/bias", True)])
    assert int((~masks["conv"]["bias"]).sum()) == round(0.8 * 8)


# ---------------------------------------------------------------------------- array / traced sparsity
@pytest.mark.parametrize("fn", ["layerwise", "global"])
@pytest.mark.parametrize("value", [1.5, float("nan"), -0.5])
def test_concrete_array_sparsity_is_checked(fn, value):
    scores = _magnitude(_params())
    f = jp.layerwise_masks if fn == "layerwise" else jp.global_masks
    with pytest.raises(ValueError, match=r"sparsit\w* must be in \[0, 1\)"):
        f(scores, jnp.array(value))
    with pytest.raises(ValueError, match=r"sparsit\w* must be in \[0, 1\)"):
        f(scores, np.float32(value))


@pytest.mark.parametrize("value,pruned", [(1.5, "all"), (float("nan"), "none"), (-0.5, "none"), (0.25, "quarter")])
def test_traced_sparsity_is_clipped(value, pruned):
    """Documented: a traced sparsity is clipped to [0, 1], NaN counts as 0 (no host check under jit)."""
    scores = {"w": jnp.arange(16.0).reshape(4, 4)}
    for f in (jp.layerwise_masks, jp.global_masks):
        m = jax.jit(lambda s: f(scores, s))(jnp.float32(value))["w"]
        n_pruned = int((~m).sum())
        assert n_pruned == {"all": 16, "none": 0, "quarter": 4}[pruned]


# ---------------------------------------------------------------------------------------- axes
def test_axis_out_of_range_is_named():
    scores = {"dense": {"kernel": jnp.arange(32.0).reshape(8, 4)}}
    with pytest.raises(ValueError, match=r"dense/kernel.*axis 5.*ndim 2"):
        jp.nm_masks(scores, 2, 4, axis=5)
    with pytest.raises(ValueError, match=r"dense/kernel.*axis 3.*ndim 2"):
        jp.channel_masks(scores, 0.5, axis=3)
    with pytest.raises(ValueError, match=r"dense/kernel.*axis -3.*ndim 2"):
        jp.channel_masks(scores, 0.5, axis=-3)
    # in-range negative axes stay valid
    assert jp.channel_masks(scores, 0.5, axis=-2)["dense"]["kernel"].shape == (8, 4)
    assert jp.nm_masks(scores, 2, 4, axis=-2)["dense"]["kernel"].shape == (8, 4)


# --------------------------------------------------------------------------------------- masks
def test_non_boolean_masks_are_refused():
    params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2)}
    with pytest.raises(TypeError, match=r"masks leaf 'w'.*float32.*boolean"):
        jp.apply_masks(params, {"w": jnp.full((2, 2), 0.3)})
    with pytest.raises(TypeError, match=r"masks leaf 'w'.*int32.*boolean"):
        jp.prune(params, 0.25, masks={"w": jnp.array([[2, 0], [1, 1]], jnp.int32)})
    with pytest.raises(TypeError, match=r"masks leaf 'w'"):  # also under jit
        jax.jit(jp.apply_masks)(params, {"w": jnp.ones((2, 2))})
    out, m = jp.prune(params, 0.5, masks={"w": jnp.array([[True, False], [True, True]])})
    assert m["w"].dtype == jnp.bool_ and int((~m["w"]).sum()) == 2 and float(out["w"][0, 1]) == 0.0


# ------------------------------------------------------------------------------- garbage accepted
@pytest.mark.parametrize("call", ["prune", "layerwise", "global", "layer_sparsities"])
def test_string_sparsity_is_a_type_error(call):
    params = _params()
    with pytest.raises(TypeError, match=r"sparsit\w* must be a number"):
        {
            "prune": lambda: jp.prune(params, "0.5"),
            "layerwise": lambda: jp.layerwise_masks(_magnitude(params), "0.5"),
            "global": lambda: jp.global_masks(_magnitude(params), "0.5"),
            "layer_sparsities": lambda: jp.layer_sparsities(params, "0.5"),
        }[call]()


def test_boolean_params_are_not_pruned():
    params = {"dense": {"kernel": jnp.arange(1.0, 17.0).reshape(4, 4)}, "flags": jnp.ones((4, 4), bool)}
    pruned, masks = jp.prune(params, 0.5)
    assert masks["flags"] is None and bool(pruned["flags"].all())
    assert int((~masks["dense"]["kernel"]).sum()) == 8
    with pytest.raises(TypeError, match=r"'flags'.*boolean"):
        jp.prune(params, 0.5, prunable=[("flags", True)])


def test_no_prunable_leaf_raises_in_prune_and_warns_in_masks():
    params = {"dense": {"bias": jnp.ones(4)}, "norm": {"scale": jnp.ones(4)}}
    with pytest.raises(ValueError, match=r"no prunable leaf.*dense/bias.*prunable="):
        jp.prune(params, 0.5)
    with pytest.warns(UserWarning, match="no prunable leaf"):
        m = jp.layerwise_masks(params, 0.5)
    assert all(x is None for x in jax.tree.leaves(m, is_leaf=lambda x: x is None))


@pytest.mark.parametrize(
    "bad,err,msg",
    [
        (np.arange(12, dtype=np.int64).reshape(3, 4), TypeError, r"'fc\.weight'.*int64.*floating"),
        (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), ValueError, r"'fc\.weight'.*1 NaN"),
        (np.array([[1.0, np.inf]], np.float32), ValueError, r"'fc\.weight'.*inf"),
    ],
)
def test_converter_refuses_integer_or_nan_weights(bad, err, msg):
    sd = {"fc.weight": bad, "fc.bias": np.zeros(3, np.float32)}
    entries = [cv.Entry("params/fc/kernel", "fc.weight", cv.linear_kernel), cv.Entry("params/fc/bias", "fc.bias")]
    with pytest.raises(err, match=msg):
        cv.assemble(sd, entries, what="toy checkpoint")
    good = dict(sd, **{"fc.weight": np.ones((3, 4), np.float32)})
    assert cv.assemble(good, entries)["params"]["fc"]["kernel"].shape == (4, 3)


# ----------------------------------------------------------------------------------- unclear errors
def test_scalar_leaf_in_channel_masks_is_named():
    scores = {"s": jnp.array(3.0), "w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match=r"leaf 's'.*scalar"):
        jp.channel_masks(scores, 0.5, prunable=[("s", True)])


def test_none_leaf_in_params_is_named():
    params = {"dense": {"kernel": jnp.ones((4, 4)), "bias": None}}
    with pytest.raises(ValueError, match=r"params leaf 'dense/bias' is None") as e:
        jp.prune(params, 0.5)
    assert "sparsities" not in str(e.value)
    with pytest.raises(ValueError, match=r"leaf 'dense/bias' is None"):
        jp.layerwise_masks(params, 0.5)


def test_sparse_optimizer_grads_of_other_structure_name_the_path():
    params = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((4, 2))}}
    opt = jp.sparse_optimizer(optax.sgd(0.1), jp.magnitude_pruner(jp.one_shot(0.5)))
    state = opt.init(params)
    grads = {"a": {"kernel": jnp.ones((4, 4))}, "c": {"kernel": jnp.ones((4, 2))}}
    with pytest.raises(ValueError, match=r"grads.*first difference: path 'b/kernel' vs 'c/kernel'"):
        opt.update(grads, state, params)
    with pytest.raises(ValueError, match=r"grads leaf 'b/kernel' has shape \(2, 4\)"):
        opt.update({"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((2, 4))}}, state, params)


def test_truncated_safetensors_and_garbage_bin_name_the_file(tmp_path):
    st = str(tmp_path / "w.safetensors")
    cv.save_safetensors({"fc.weight": np.ones((64, 64), np.float32)}, st)
    data = open(st, "rb").read()
    open(st, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"w\.safetensors.*not a valid \.safetensors"):
        cv.load_state_dict(st)
    pytest.importorskip("torch")
    bin_path = str(tmp_path / "model.bin")
    open(bin_path, "wb").write(b"this is not a torch checkpoint" * 10)
    with pytest.raises(ValueError, match=r"model\.bin.*not a readable torch checkpoint"):
        cv.load_state_dict(bin_path)
