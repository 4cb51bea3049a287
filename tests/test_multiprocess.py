"""jaxprune on JAX's own multi-process runtime: 2 processes x 2 CPU devices and 2 x 4, gloo collectives.

Each job (tests/multiprocess_harness.py) starts real worker processes joined by
``jax.distributed.initialize`` on localhost; they build *global* arrays of
which each holds only its shards, run jaxprune on them and return their
addressable shards (no gather). Here, in the single-process test process, the
same calls run on the host arrays (the reference), each job's global arrays
are rebuilt from every process's shards (replicas must agree, every element
must be covered) and compared with the reference bit for bit (the shrunk
forward and trained params, whose sharded matmuls add in another order, to
1e-5). Worker launches are shared: one job checks masks, planning, shrinking,
training and checkpoints together.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import multiprocess_workers as W
import numpy as np
import pytest
from multiprocess_harness import MultiprocessUnavailable, WorkerResult, run_workers

import jaxprune
from jaxprune._src.tree import leaves_with_paths

TIMEOUT = 240.0


def _job(task: str, nproc: int, ndev: int, timeout: float = TIMEOUT, **kw) -> list[WorkerResult]:
    try:
        return run_workers(task, num_processes=nproc, devices_per_process=ndev, timeout=timeout, **kw)
    except MultiprocessUnavailable as e:
        pytest.skip(f"multi-process JAX (gloo CPU collectives, jax.distributed on localhost) unavailable here: {e}")


def assemble(results: list[WorkerResult], prefix: str) -> dict[str, np.ndarray]:
    """``{leaf path: global array}`` rebuilt from every process's shards under ``prefix``."""
    shapes: dict[str, tuple] = {}
    shards: dict[str, list] = {}
    for r in results:
        for key, v in r.arrays.items():
            kind, _, rest = key.partition("|")
            if kind == "shape" and rest.startswith(prefix + "/"):
                shapes[rest[len(prefix) + 1 :]] = tuple(int(d) for d in v)
            elif kind == "shard" and rest.startswith(prefix + "/"):
                name, _, idx = rest.rpartition("|")
                name = name.rpartition("|")[0][len(prefix) + 1 :]
                shards.setdefault(name, []).append((r.process_id, json.loads(idx), v))
    assert shapes, f"no arrays saved under {prefix!r}"
    out = {}
    for path, shape in shapes.items():
        full = None
        covered = np.zeros(shape, bool)
        procs = set()
        for pid, idx, data in shards[path]:
            sl = tuple(slice(a, b) for a, b in idx)
            if full is None:
                full = np.zeros(shape, data.dtype)
            seen = covered[sl]
            np.testing.assert_array_equal(  # replicas held by different devices / processes agree
                np.where(seen, full[sl], data), data, err_msg=f"{prefix}/{path}: replicas differ"
            )
            full[sl] = data
            covered[sl] = True
            procs.add(pid)
        assert covered.all(), f"{prefix}/{path}: shards do not cover the array"
        assert procs == {r.process_id for r in results}, f"{prefix}/{path}: not every process holds a shard"
        out[path] = full
    return out


def same_as(results, prefix: str, ref, exact: bool = True) -> None:
    got = assemble(results, prefix)
    want = {p: np.asarray(x) for p, x in W.flat(ref).items()}
    assert set(got) == set(want), (prefix, sorted(got), sorted(want))
    for p, w in want.items():
        if exact:
            np.testing.assert_array_equal(got[p], w, err_msg=f"{prefix}/{p}")
        else:
            np.testing.assert_allclose(got[p], w, rtol=1e-5, atol=1e-6, err_msg=f"{prefix}/{p}")


def all_equal(results, key) -> object:
    vals = [key(r.result) for r in results]
    assert all(v == vals[0] for v in vals), f"processes disagree: {vals}"
    return vals[0]


# ----------------------------------------------------------------------------------- the jobs (shared)
@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    """A checkpoint written by this (single) process: compact masked params, restored by the 2 x 4 job."""
    d = str(tmp_path_factory.mktemp("single") / "ck")
    st = W.ckpt_states()
    jaxprune.save_checkpoint(d, 2, params=st["pruned"], masks=st["masks"])
    return d


@pytest.fixture(scope="module")
def job_2x2(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("mp2x2") / "ck")
    args = {"mesh": [2, 2], "mesh_b": [4, 1], "dir": d, "parts": ["masks", "structured", "train", "checkpoint"]}
    return _job("all", 2, 2, args=args), d


@pytest.fixture(scope="module")
def job_2x4(tmp_path_factory, single_dir):
    d = str(tmp_path_factory.mktemp("mp2x4") / "ck")
    args = {
        "mesh": [2, 4],
        "mesh_b": [4, 2],
        "dir": d,
        "single_dir": single_dir,
        "parts": ["masks", "structured", "train", "checkpoint"],
        "mask_names": ["layerwise", "global", "block"],
        "jit_masks": [],
        "plans": ["global_l2"],
    }
    return _job("all", 2, 4, args=args), d


JOBS = ["job_2x2", "job_2x4"]


# ----------------------------------------------------------------------------------- checks
@pytest.mark.parametrize("job", JOBS)
def test_masks_equal_single_process(job, request):
    results, _ = request.getfixturevalue(job)
    host = W.host_params()
    scores = jaxprune.magnitude_scores(host)
    calls = W.mask_calls()
    res = [r.result["masks"] for r in results]
    names = list(res[0]["specs"])
    assert names, "no mask function ran"
    for name in names:
        same_as(results, f"eager/{name}", calls[name](scores, host))
    for name in res[0]["jit"]:
        same_as(results, f"jit/{name}", calls[name](scores, host))
    for r in res:
        assert not r["params_fully_addressable"], "params were not global multi-process arrays"
        assert not any(r["addressable"].values()), "a mask came back process-local"
        assert r["host_calls"] == [], "the NumPy top-k ran on a global array"
        # masks keep the params' sharding (block / channel too)
        for name, specs in r["specs"].items():
            assert specs == {p: s for p, s in r["param_specs"].items() if p in specs}, (name, specs)
    all_equal(results, lambda x: x["masks"]["specs"])


@pytest.mark.parametrize("job", JOBS)
def test_structured_plan_shrink_forward(job, request):
    results, _ = request.getfixturevalue(job)
    host = W.mlp_params()
    x, y = W.mlp_batch()
    graph = jaxprune.trace_groups(W.mlp_apply, host, x)
    r0 = results[0].result["structured"]
    assert r0["round_to"] == all_equal(results, lambda r: r["structured"]["round_to"]) > 1
    assert not r0["grads_addressable"]
    for name, kw in W.structured_calls().items():
        if name not in r0["plans"]:
            continue
        plan_json = all_equal(results, lambda r: r["structured"]["plans"][name])  # the same plan everywhere
        kw = dict(kw, grads=W.mlp_grads(host, x, y)) if kw.get("grads") else kw
        ref = jaxprune.make_plan(host, graph, round_to=r0["round_to"], **kw)
        assert plan_json == ref.to_json(), name  # ... and the single-process plan
        small = jaxprune.shrink(host, ref)
        same_as(results, f"shrunk/{name}", small)
        for p, spec in r0["specs"][name].items():
            assert spec == r0["input_specs"][p], (name, p, spec)  # kept sizes divisible: specs kept
        same_as(results, f"forward/{name}", {"y": W.mlp_apply(small, x)}, exact=False)


@pytest.mark.parametrize("job", JOBS)
def test_sparse_training_step(job, request):
    results, _ = request.getfixturevalue(job)
    r0 = results[0].result["train"]
    assert all_equal(results, lambda r: (r["train"]["traces"], r["train"]["compiles"])) == (1, 1)
    assert r0["param_specs"] == r0["input_specs"] and r0["count"] == W.TRAIN_STEPS
    assert {p: s for p, s in r0["param_specs"].items() if p in r0["mask_specs"]} == r0["mask_specs"]
    opt, step = W.make_train()
    params = jax.tree.map(jnp.asarray, W.mlp_params())
    state = opt.init(params)
    x, y = W.mlp_batch()
    pruned = []
    for i in range(W.TRAIN_STEPS):
        params, state = step(params, state, x, y)
        masks = jaxprune.get_masks(state)
        same_as(results, f"train/masks/{i}", masks)  # masks on schedule, as on one device
        pruned.append(float(sum(int((~m).sum()) for m in jax.tree.leaves(masks))))
    assert all_equal(results, lambda r: r["train"]["pruned_per_step"]) == pruned
    assert pruned[0] == 0 and pruned[-1] > pruned[-2] > 0  # the schedule prunes gradually
    same_as(results, "train/params", params, exact=False)
    # the optimizer state (masks, momenta, count, PRNG key) saved by both processes restores identically
    assert all_equal(results, lambda r: r["train"]["opt_state_checkpoint_equal"]) is True


@pytest.mark.parametrize("job", JOBS)
def test_checkpoints_across_processes(job, request):
    results, d = request.getfixturevalue(job)
    r0 = results[0].result["checkpoint"]
    assert all_equal(results, lambda r: r["checkpoint"]["steps"]) == [1, 2, 3]
    st = W.ckpt_states()
    # restored by the same processes onto another mesh layout
    same_as(results, "restored/1/params", st["params"])
    same_as(results, "restored/2/params", st["pruned"])
    same_as(results, "restored/2/masks", st["masks"])
    specs_b = leaves_with_paths(W.other_specs(W.param_specs()), is_leaf=lambda v: isinstance(v, tuple))
    assert r0["restored_specs"] == {p: str(jax.sharding.PartitionSpec(*s)) for p, s in specs_b}
    plan = jaxprune.PrunePlan.from_json(r0["plan"])
    small = jaxprune.shrink(W.mlp_params(), plan)
    same_as(results, "restored/3/shrunk", small)
    assert json.dumps(r0["restored_plan"], sort_keys=True) == json.dumps(json.loads(r0["plan"]), sort_keys=True)
    # restored onto ONE process (this one), no template and with one
    ck = jaxprune.restore_checkpoint(d, 2)
    for p, w in W.flat(st["pruned"]).items():
        np.testing.assert_array_equal(np.asarray(W.flat(ck.params)[p]), w, err_msg=p)
    for p, w in W.flat(st["masks"]).items():
        np.testing.assert_array_equal(np.asarray(W.flat(ck.masks)[p]), w, err_msg=p)
    manifest = ck.manifest["items"]["params"]
    assert {e["enc"] for p, e in manifest.items() if p.endswith("kernel")} == {"compact"}
    ck1 = jaxprune.restore_checkpoint(d, 1, template=jaxprune.Checkpoint(params=W.host_params()))
    for p, w in W.flat(st["params"]).items():
        np.testing.assert_array_equal(np.asarray(W.flat(ck1.params)[p]), w, err_msg=p)
    ck3 = jaxprune.restore_checkpoint(d, 3)
    for p, w in W.flat(small).items():
        np.testing.assert_array_equal(np.asarray(W.flat(ck3.shrunk_params)[p]), w, err_msg=p)
    assert ck3.data_state == {"epoch": 1}
    if "from_single_addressable" in r0:  # written by one process, restored onto the multi-process mesh
        assert not r0["from_single_addressable"]
        same_as(results, "from_single/params", st["pruned"])
        same_as(results, "from_single/masks", st["masks"])


def test_save_interrupted_when_one_process_is_killed(tmp_path):
    d = str(tmp_path / "ck")
    args = {"mesh": [2, 2], "dir": d, "victim": 1}
    results = _job("interrupted", 2, 2, timeout=120, args=args, expect_failure=True, grace=10)
    assert results[1].exit_code == -9, results[1].error  # killed inside orbax while writing step 2
    assert not results[0].result, "the surviving process reported a successful save"
    assert "step 2" in results[0].error or results[0].exit_code < 0
    # the previous good state is intact and is what restores
    assert jaxprune.checkpoint_steps(d) == [1]
    ck = jaxprune.restore_checkpoint(d)
    assert ck.step == 1
    st = W.ckpt_states()
    for p, w in W.flat(st["pruned"]).items():
        np.testing.assert_array_equal(np.asarray(W.flat(ck.params)[p]), w, err_msg=p)
    # a writer opening the directory removes what the killed save left, and saving step 2 again works
    with jaxprune.SparseCheckpointer(d, async_=False) as ckpt:
        ckpt.save(2, params=st["pruned"], masks=st["masks"])
    assert jaxprune.checkpoint_steps(d) == [1, 2]
    assert not [n for n in os.listdir(d) if "tmp" in n]
