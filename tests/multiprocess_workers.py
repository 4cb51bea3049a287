"""Worker entry points for tests/multiprocess_harness.py (one process of a multi-process JAX job).

Run as ``python tests/multiprocess_workers.py TASK PROCESS_ID NUM_PROCESSES DEVICES PORT WORKDIR``.
The harness sets ``XLA_FLAGS`` (device count) in the environment before this
file imports jax. Every process builds the same host data (:func:`host_params`,
NumPy only, importable without jax side effects), puts it as *global*
``jax.Array`` s on a mesh over all processes' devices (each process supplies
only its addressable shards) and runs the task; the task returns a JSON-able
dict and a dict of NumPy arrays (gathered results and this process's shards),
written as ``result_<i>.json`` / ``arrays_<i>.npz`` for the test to compare
with the single-process reference.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable

import numpy as np

# ----------------------------------------------------------------------------- shared host data (NumPy only)


def host_params(seed: int = 0) -> dict[str, Any]:
    """The test model's params (float32), with ties (conv: values on a 0.5 grid) and exact zeros."""
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "conv": {"kernel": (np.round(rng.normal(size=(3, 3, 8, 16)) * 2) / 2).astype(f)},
        "dense": {"kernel": rng.normal(size=(16, 32)).astype(f), "bias": rng.normal(size=(32,)).astype(f)},
        "head": {"kernel": rng.normal(size=(32, 8)).astype(f)},
    }


def param_specs() -> dict[str, Any]:
    """PartitionSpec entries (tuples of axis names / None) of :func:`host_params` on a ('data', 'model') mesh."""
    return {
        "conv": {"kernel": (None, None, "data", "model")},
        "dense": {"kernel": ("data", "model"), "bias": ("model",)},
        "head": {"kernel": ("model",)},
    }


def mlp_params(seed: int = 1) -> dict[str, Any]:
    """A 2-layer MLP (8 -> 32 -> 16 -> 4) for structured pruning and training."""
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "l1": {"kernel": rng.normal(size=(8, 32)).astype(f), "bias": rng.normal(size=(32,)).astype(f) * 0.1},
        "l2": {"kernel": rng.normal(size=(32, 16)).astype(f), "bias": rng.normal(size=(16,)).astype(f) * 0.1},
        "out": {"kernel": rng.normal(size=(16, 4)).astype(f)},
    }


def mlp_specs() -> dict[str, Any]:
    return {
        "l1": {"kernel": (None, "model"), "bias": ("model",)},
        "l2": {"kernel": ("model",), "bias": ()},
        "out": {"kernel": ()},
    }


def mlp_apply(p, x):
    import jax.numpy as jnp

    h = jnp.maximum(x @ p["l1"]["kernel"] + p["l1"]["bias"], 0.0)
    h = jnp.maximum(h @ p["l2"]["kernel"] + p["l2"]["bias"], 0.0)
    return h @ p["out"]["kernel"]


def mlp_batch(seed: int = 2, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32)


def mask_calls() -> dict[str, Callable[[Any, Any], Any]]:
    """name -> fn(scores, params) -> masks; the same calls run in the workers and in the reference."""
    import jaxprune

    return {
        "layerwise": lambda s, p: jaxprune.layerwise_masks(s, 0.5),
        "global": lambda s, p: jaxprune.global_masks(s, 0.7),
        "nm": lambda s, p: jaxprune.nm_masks(s, 2, 4),
        "block": lambda s, p: jaxprune.block_masks(s, 0.5, (4, 4)),
        "channel": lambda s, p: jaxprune.channel_masks(s, 0.25),
        "prune_global": lambda s, p: jaxprune.prune(p, 0.6, scope="global")[1],
        "prune_layerwise_erk": lambda s, p: jaxprune.prune(p, 0.6, distribution="erk")[1],
    }


def flat(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` (None leaves dropped)."""
    from jaxprune._src.tree import leaves_with_paths

    return {p: x for p, x in leaves_with_paths(tree, is_leaf=lambda x: x is None) if x is not None}


# ----------------------------------------------------------------------------- worker side


class Ctx:
    def __init__(self, pid: int, nproc: int, ndev: int, workdir: str, args: dict[str, Any]):
        self.pid, self.nproc, self.ndev, self.workdir, self.args = pid, nproc, ndev, workdir, args
        self.arrays: dict[str, np.ndarray] = {}

    def mesh(self, shape: tuple[int, int]):
        import jax
        from jax.sharding import Mesh

        return Mesh(np.array(jax.devices()).reshape(shape), ("data", "model"))

    def put(self, host: Any, mesh, specs: Any) -> Any:
        """Global arrays of ``host`` on ``mesh`` with ``specs``; this process supplies only its shards."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        def one(x, spec):
            sh = NamedSharding(mesh, PartitionSpec(*spec))
            return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

        return jax.tree.map(one, host, specs, is_leaf=lambda s: isinstance(s, tuple))

    def save(self, prefix: str, tree: Any) -> None:
        """Stores this process's addressable shards of every leaf with their global index (no gather).

        The test rebuilds each global array from all processes' shards (every
        element must be covered, replicas must agree) and compares it with the
        single-process reference.
        """
        for path, x in flat(tree).items():
            key = f"{prefix}/{path}"
            for k, sh in enumerate(x.addressable_shards):
                idx = json.dumps([[s.start, s.stop] for s in sh.index])
                self.arrays[f"shard|{key}|{k}|{idx}"] = np.asarray(sh.data)
            self.arrays[f"shape|{key}"] = np.asarray(x.shape, np.int64)


def _spec_str(x: Any) -> str:
    return str(getattr(getattr(x, "sharding", None), "spec", None))


def task_ping(ctx: Ctx) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    mesh = ctx.mesh((ctx.nproc, ctx.ndev))
    x = ctx.put(
        {"a": np.arange(ctx.nproc * ctx.ndev * 2, dtype=np.float32).reshape(ctx.nproc, -1)},
        mesh,
        {"a": ("data", "model")},
    )
    return {"sum": float(jax.jit(jnp.sum)(x["a"])), "devices": jax.device_count()}


def task_masks(ctx: Ctx) -> dict[str, Any]:
    """Every mask function on global arrays sharded across processes (eager and jitted)."""
    import time

    import jax

    import jaxprune
    from jaxprune._src import topk

    host_calls = []
    orig = topk.host_prune_lowest

    def spy(scores, n):  # the NumPy path must never see a non-fully-addressable array
        import traceback as tb

        host_calls.append(
            {
                "fully_addressable": [bool(getattr(s, "is_fully_addressable", True)) for s in scores],
                "where": [f"{f.name}:{f.lineno}" for f in tb.extract_stack()[-6:-1]],
            }
        )
        return orig(scores, n)

    topk.host_prune_lowest = spy
    import jaxprune._src.masks as masks_mod

    masks_mod.host_prune_lowest = spy
    res: dict[str, Any] = {"specs": {}, "addressable": {}}
    shape = tuple(ctx.args["mesh"])
    mesh = ctx.mesh(shape)
    params = ctx.put(host_params(), mesh, param_specs())
    res["params_fully_addressable"] = any(x.is_fully_addressable for x in jax.tree.leaves(params))
    scores = jaxprune.magnitude_scores(params)
    res["seconds"] = {}
    res["param_specs"] = {p: _spec_str(v) for p, v in flat(params).items()}
    names = ctx.args.get("mask_names") or list(mask_calls())
    for name, fn in mask_calls().items():
        if name not in names:
            continue
        t = time.perf_counter()
        m = fn(scores, params)
        jax.block_until_ready(m)
        res["seconds"][name] = round(time.perf_counter() - t, 2)
        ctx.save(f"eager/{name}", m)
        res["specs"][name] = {p: _spec_str(x) for p, x in flat(m).items()}
        res["addressable"][name] = any(x.is_fully_addressable for x in flat(m).values())
    res["jit"] = ctx.args.get("jit_masks", ["global", "block"])
    for name in res["jit"]:
        fn = mask_calls()[name]
        m = jax.jit(lambda s, p, fn=fn: fn(s, p))(scores, params)
        ctx.save(f"jit/{name}", m)
    topk.host_prune_lowest = masks_mod.host_prune_lowest = orig
    res["host_calls"] = list(host_calls)
    return res


def structured_calls() -> dict[str, dict[str, Any]]:
    """name -> make_plan keyword arguments; the same plans are made by the workers and the reference."""
    return {
        "layerwise_l1": {"ratio": 0.5},
        "global_l2": {"ratio": 0.4, "scope": "global", "method": "l2"},
        "taylor": {"ratio": 0.5, "method": "taylor", "grads": True},
    }


def mlp_grads(p, x, y):
    import jax
    import jax.numpy as jnp

    return jax.grad(lambda p: jnp.mean((mlp_apply(p, x) - y) ** 2))(p)


def task_structured(ctx: Ctx) -> dict[str, Any]:
    """trace_groups / make_plan / shrink_sharded / the shrunk forward on global arrays."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    import jaxprune

    mesh = ctx.mesh(tuple(ctx.args["mesh"]))
    params = ctx.put(mlp_params(), mesh, mlp_specs())
    x, y = mlp_batch()
    xg = ctx.put({"x": x, "y": y}, mesh, {"x": ("data",), "y": ("data",)})
    graph = jaxprune.trace_groups(mlp_apply, params, x)
    r = jaxprune.mesh_round_to(graph, params)
    grads = jax.jit(mlp_grads)(params, xg["x"], xg["y"])
    res: dict[str, Any] = {
        "round_to": r,
        "plans": {},
        "specs": {},
        "grads_addressable": any(g.is_fully_addressable for g in jax.tree.leaves(grads)),
    }
    fwd = jax.jit(mlp_apply, out_shardings=NamedSharding(mesh, PartitionSpec("data")))
    res["input_specs"] = {p: _spec_str(v) for p, v in flat(params).items()}
    for name, kw in structured_calls().items():
        if name not in ctx.args.get("plans", [name]):
            continue
        kw = dict(kw, grads=grads) if kw.get("grads") else kw
        plan = jaxprune.make_plan(params, graph, round_to=r, **kw)
        res["plans"][name] = plan.to_json()
        small = jaxprune.shrink_sharded(params, plan)
        res["specs"][name] = {p: _spec_str(v) for p, v in flat(small).items()}
        ctx.save(f"shrunk/{name}", small)
        ctx.save(f"forward/{name}", {"y": fwd(small, xg["x"])})
    return res


TRAIN_STEPS = 4


def make_train(log_compiles: list | None = None):
    """(opt, jitted train step) for the MLP: sparse SGD+momentum, GMP 0 -> 0.75 over steps 1..3."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxprune

    opt = jaxprune.sparse_optimizer(
        optax.sgd(0.05, momentum=0.9), jaxprune.magnitude_pruner(jaxprune.polynomial(0.75, begin=1, end=3, every=1))
    )

    def sparse_train_step(p, state, x, y):
        if log_compiles is not None:
            log_compiles.append(1)  # runs once per trace
        g = jax.grad(lambda p: jnp.mean((mlp_apply(p, x) - y) ** 2))(p)
        upd, state = opt.update(g, state, p)
        return optax.apply_updates(p, upd), state

    return opt, jax.jit(sparse_train_step)


def task_train(ctx: Ctx) -> dict[str, Any]:
    """sparse_optimizer steps on the multi-process mesh: one compile, masks on schedule, shardings kept."""
    import logging

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    import jaxprune

    mesh = ctx.mesh(tuple(ctx.args["mesh"]))
    params = ctx.put(mlp_params(), mesh, mlp_specs())
    x, y = mlp_batch()
    b = ctx.put({"x": x, "y": y}, mesh, {"x": ("data",), "y": ("data",)})
    traces: list[int] = []
    compiles: list[int] = []

    class Log(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling jit(sparse_train_step)"):
                compiles.append(1)

    handler = Log()
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    opt, step = make_train(traces)
    state = opt.init(params)
    sparsity = []
    for i in range(TRAIN_STEPS):
        params, state = step(params, state, b["x"], b["y"])
        ctx.save(f"train/masks/{i}", jaxprune.get_masks(state))
        sparsity.append(
            float(jax.jit(lambda m: sum((~v).sum() for v in jax.tree.leaves(m)))(jaxprune.get_masks(state)))
        )
    jax.config.update("jax_log_compiles", False)
    logging.getLogger("jax").removeHandler(handler)
    ctx.save("train/params", params)
    ckpt_equal = None
    if ctx.args.get("dir"):  # the whole optimizer state (masks, momenta, count, PRNG key) through a checkpoint
        d = ctx.args["dir"] + "_train"
        jaxprune.save_checkpoint(d, TRAIN_STEPS, params=params, opt_state=state)
        ck = jaxprune.restore_checkpoint(d, TRAIN_STEPS, template=jaxprune.Checkpoint(params=params, opt_state=state))
        a = [
            jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v
            for v in jax.tree.leaves((params, state))
        ]
        b = [
            jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v
            for v in jax.tree.leaves((ck.params, ck.opt_state))
        ]
        rep = NamedSharding(mesh, PartitionSpec())
        same = jax.jit(lambda a, b: jnp.stack([jnp.array_equal(x, y) for x, y in zip(a, b)]).all(), out_shardings=rep)
        ckpt_equal = bool(np.asarray(same(a, b)))  # replicated: readable in every process
        ckpt_equal = ckpt_equal and all(
            x.sharding == y.sharding
            for x, y in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ck.params, ck.opt_state)))
        )
    specs_in = {p: _spec_str(v) for p, v in flat(ctx.put(mlp_params(), mesh, mlp_specs())).items()}
    return {
        "traces": len(traces),
        "compiles": len(compiles),
        "pruned_per_step": sparsity,
        "param_specs": {p: _spec_str(v) for p, v in flat(params).items()},
        "mask_specs": {p: _spec_str(v) for p, v in flat(jaxprune.get_masks(state)).items()},
        "input_specs": specs_in,
        "count": int(state.count) if hasattr(state, "count") else None,
        "opt_state_checkpoint_equal": ckpt_equal,
    }


def other_specs(specs: Any) -> Any:
    """The same leaves sharded differently (the mesh axes swapped) for restoring onto another mesh layout."""
    swap = {"data": "model", "model": "data", None: None}
    return {k: {kk: tuple(swap[a] for a in v) for kk, v in d.items()} for k, d in specs.items()}


def ckpt_states() -> dict[str, Any]:
    """Host versions of what the checkpoint task saves: masked params + masks, a shrink plan (JSON) input."""
    import jaxprune

    host = host_params()
    masks = jaxprune.global_masks(jaxprune.magnitude_scores(host), 0.7)
    pruned = jaxprune.apply_masks(host, masks)
    return {"params": host, "masks": masks, "pruned": pruned}


def task_checkpoint(ctx: Ctx) -> dict[str, Any]:
    """orbax checkpoints written by every process together; restored onto another mesh layout."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    import jaxprune

    mesh = ctx.mesh(tuple(ctx.args["mesh"]))
    mesh_b = ctx.mesh(tuple(ctx.args["mesh_b"]))
    d = ctx.args["dir"]
    specs = param_specs()
    params = ctx.put(host_params(), mesh, specs)
    masks = jaxprune.global_masks(jaxprune.magnitude_scores(params), 0.7)
    pruned = jaxprune.apply_masks(params, masks)
    mparams = ctx.put(mlp_params(), mesh, mlp_specs())
    x, _ = mlp_batch()
    graph = jaxprune.trace_groups(mlp_apply, mparams, x)
    plan = jaxprune.make_plan(mparams, graph, 0.5, round_to=jaxprune.mesh_round_to(graph, mparams))
    small = jaxprune.shrink_sharded(mparams, plan)
    jaxprune.save_checkpoint(d, 1, params=params, compact=False)
    jaxprune.save_checkpoint(d, 2, params=pruned, masks=masks, compact=True)
    jaxprune.save_checkpoint(d, 3, shrunk_params=small, plan=plan, data_state={"epoch": 1})
    res: dict[str, Any] = {"steps": jaxprune.checkpoint_steps(d), "plan": plan.to_json()}

    def shard_tree(host_tree, m, sp):
        return jax.tree.map(
            lambda spec: NamedSharding(m, PartitionSpec(*spec)), sp, is_leaf=lambda v: isinstance(v, tuple)
        )

    specs_b = other_specs(specs)
    sh_b = shard_tree(host_params(), mesh_b, specs_b)
    tmpl = jaxprune.Checkpoint(params=jaxprune.abstract_like(host_params(), sh_b))
    ck1 = jaxprune.restore_checkpoint(d, 1, template=tmpl)
    ctx.save("restored/1/params", ck1.params)
    mask_sh = jax.tree.map(
        lambda m, s: None if m is None else s, ckpt_states()["masks"], sh_b, is_leaf=lambda v: v is None
    )
    tmpl2 = jaxprune.Checkpoint(
        params=jaxprune.abstract_like(host_params(), sh_b),
        masks=jaxprune.abstract_like(ckpt_states()["masks"], mask_sh),
    )
    ck2 = jaxprune.restore_checkpoint(d, 2, template=tmpl2)
    ctx.save("restored/2/params", ck2.params)
    ctx.save("restored/2/masks", ck2.masks)
    res["restored_specs"] = {p: _spec_str(v) for p, v in flat(ck2.params).items()}
    res["restored_mask_specs"] = {p: _spec_str(v) for p, v in flat(ck2.masks).items()}
    shrunk_shapes = jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), small)
    sh_small = shard_tree(None, mesh_b, other_specs(mlp_specs()))
    tmpl3 = jaxprune.Checkpoint(shrunk_params=jaxprune.abstract_like(shrunk_shapes, sh_small))
    ck3 = jaxprune.restore_checkpoint(d, 3, template=tmpl3)
    ctx.save("restored/3/shrunk", ck3.shrunk_params)
    res["restored_plan"] = ck3.plan
    res["restored_shrunk_specs"] = {p: _spec_str(v) for p, v in flat(ck3.shrunk_params).items()}
    if ctx.args.get("single_dir"):  # written by one process (the test): restore onto this multi-process mesh
        sd = ctx.args["single_dir"]
        ck = jaxprune.restore_checkpoint(sd, 2, template=tmpl2)
        ctx.save("from_single/params", ck.params)
        ctx.save("from_single/masks", ck.masks)
        res["from_single_addressable"] = any(v.is_fully_addressable for v in flat(ck.params).values())
    return res


def task_interrupted(ctx: Ctx) -> dict[str, Any]:
    """Saves step 1, then process ``args['victim']`` SIGKILLs itself inside orbax while saving step 2."""
    import signal

    import jax
    import orbax.checkpoint as ocp

    import jaxprune

    mesh = ctx.mesh(tuple(ctx.args["mesh"]))
    d = ctx.args["dir"]
    params = ctx.put(host_params(), mesh, param_specs())
    masks = jaxprune.global_masks(jaxprune.magnitude_scores(params), 0.7)
    pruned = jaxprune.apply_masks(params, masks)
    jaxprune.save_checkpoint(d, 1, params=pruned, masks=masks)
    if ctx.pid == ctx.args["victim"]:

        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)

        ocp.StandardCheckpointHandler.async_save = die  # type: ignore[method-assign]
        ocp.StandardCheckpointHandler.save = die  # type: ignore[method-assign]
    doubled = jax.jit(lambda p: jax.tree.map(lambda v: v * 2, p))(pruned)
    jaxprune.save_checkpoint(d, 2, params=doubled, masks=masks)
    return {"saved_2": True}


def bench_params(quick: bool) -> dict[str, Any]:
    """An MLP stack (host float32) for benchmarks/multiprocess_masks.py: ~0.2M params quick, ~4.2M full."""
    rng = np.random.default_rng(0)
    width = 256 if quick else 1024
    depth = 3 if quick else 4
    dims = [width] * (depth + 1)
    return {
        f"l{i}": {
            "kernel": rng.normal(size=(dims[i], dims[i + 1])).astype(np.float32),
            "bias": np.zeros(dims[i + 1], np.float32),
        }
        for i in range(depth)
    }


def bench_apply(p, x):
    import jax.numpy as jnp

    n = len(p)
    for i in range(n):
        x = x @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"]
        if i < n - 1:
            x = jnp.maximum(x, 0.0)
    return x


def task_bench(ctx: Ctx) -> dict[str, Any]:
    """Times mask computation, planning and shrink on the whole mesh (every process times the same calls)."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    import jaxprune

    quick = bool(ctx.args.get("quick"))
    reps = int(ctx.args.get("repeats", 3))
    mesh = ctx.mesh(tuple(ctx.args["mesh"]))
    host = bench_params(quick)
    specs = {k: {"kernel": ("data", "model"), "bias": ("model",)} for k in host}
    params = ctx.put(host, mesh, specs)
    scores = jaxprune.magnitude_scores(params)
    rep = NamedSharding(mesh, PartitionSpec())
    checksum = jax.jit(
        lambda ms: [jnp.sum(jnp.where(m, jnp.arange(m.size).reshape(m.shape) % 65521, 0)) for m in ms],
        out_shardings=rep,
    )
    x = np.random.default_rng(1).normal(size=(8, host["l0"]["kernel"].shape[0])).astype(np.float32)
    graph = jaxprune.trace_groups(bench_apply, params, x)
    round_to = int(ctx.args.get("round_to") or jaxprune.mesh_round_to(graph, params))

    layerwise = jax.jit(lambda s: jaxprune.layerwise_masks(s, 0.9))
    global_ = jax.jit(lambda s: jaxprune.global_masks(s, 0.9))
    calls = {
        "layerwise_masks (jit)": lambda: layerwise(scores),
        "global_masks (jit)": lambda: global_(scores),
        "prune (eager, global)": lambda: jaxprune.prune(params, 0.9, scope="global")[1],
        "make_plan (l1, 0.5)": lambda: jaxprune.make_plan(params, graph, 0.5, round_to=round_to),
    }
    plan = jaxprune.make_plan(params, graph, 0.5, round_to=round_to)
    calls["shrink_sharded"] = lambda: jaxprune.shrink_sharded(params, plan)
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {k: [] for k in calls}
    outs: dict[str, Any] = {}
    for k, fn in calls.items():  # first call: compile + run
        multihost_utils.sync_global_devices(f"bench-first:{k}")
        t = time.perf_counter()
        outs[k] = jax.block_until_ready(fn())
        first[k] = time.perf_counter() - t
    for _ in range(reps):  # interleaved rounds: load changes hit every call alike
        for k, fn in calls.items():
            multihost_utils.sync_global_devices(f"bench:{k}")
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t)
    sums = {}
    for k in ("layerwise_masks (jit)", "global_masks (jit)", "prune (eager, global)"):
        ms = [m for m in jax.tree.leaves(outs[k]) if m is not None]
        sums[k] = [int(v) for v in checksum(ms)]
    return {
        "n_params": int(sum(v.size for v in jax.tree.leaves(host))),
        "first_call_s": first,
        "warm_median_s": {k: statistics.median(v) for k, v in times.items()},
        "warm_all_s": times,
        "mask_checksums": sums,
        "plan": outs["make_plan (l1, 0.5)"].to_json(),
        "round_to": round_to,
        "loadavg": list(os.getloadavg()),
    }


def task_all(ctx: Ctx) -> dict[str, Any]:
    """The tasks named in ``args['parts']`` in one launch (jax import + distributed init paid once)."""
    import time

    out: dict[str, Any] = {"seconds": {}, "cpu_seconds": {}}
    for part in ctx.args["parts"]:
        t, c = time.perf_counter(), time.process_time()
        out[part] = TASKS[part](ctx)
        out["seconds"][part] = round(time.perf_counter() - t, 2)
        out["cpu_seconds"][part] = round(time.process_time() - c, 2)
    return out


TASKS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "all": task_all,
    "bench": task_bench,
    "interrupted": task_interrupted,
    "checkpoint": task_checkpoint,
    "ping": task_ping,
    "masks": task_masks,
    "structured": task_structured,
    "train": task_train,
}


def main(argv: list[str]) -> int:
    task, pid_s, nproc_s, ndev_s, port, workdir = argv
    pid, nproc, ndev = int(pid_s), int(nproc_s), int(ndev_s)
    err_path = os.path.join(workdir, f"error_{pid}.txt")
    assert f"device_count={ndev}" in os.environ.get("XLA_FLAGS", ""), os.environ.get("XLA_FLAGS")
    with open(os.path.join(workdir, "args.json")) as f:
        args = json.load(f)
    try:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid, initialization_timeout=60
        )
        assert jax.device_count() == nproc * ndev and jax.local_device_count() == ndev, jax.devices()
    except Exception:  # noqa: BLE001 - any failure to start the runtime means: unavailable here
        with open(err_path, "w") as f:
            f.write(traceback.format_exc())
        return 77
    ctx = Ctx(pid, nproc, ndev, workdir, args)
    try:
        res = TASKS[task](ctx)
        if ctx.arrays:
            np.savez(os.path.join(workdir, f"arrays_{pid}.tmp.npz"), **ctx.arrays)
            os.replace(os.path.join(workdir, f"arrays_{pid}.tmp.npz"), os.path.join(workdir, f"arrays_{pid}.npz"))
        with open(os.path.join(workdir, f"result_{pid}.json.tmp"), "w") as f:
            json.dump(res, f)
        os.replace(os.path.join(workdir, f"result_{pid}.json.tmp"), os.path.join(workdir, f"result_{pid}.json"))
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("done")  # nobody tears down the runtime while others still use it
    except BaseException:
        with open(err_path, "w") as f:
            f.write(traceback.format_exc())
        sys.stdout.flush()
        os._exit(1)  # do not wait for the distributed runtime's shutdown barrier
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
