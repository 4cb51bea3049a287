"""Pruning sharded params on 1x8, 2x4 and 4x2 meshes of 8 fake CPU devices.

XLA_FLAGS must be set before jax is imported, so every check runs in ONE
subprocess (jax imported once, compilations shared); the pytest functions
read its per-check report. Checked: masks (layerwise, global, N:M, ERK) equal
the single-device ones exactly and keep the params' sharding, with no
all-gather in the compiled HLO; a jitted sparse optax step on a ('data',
'model') mesh compiles once and keeps every sharding; structured shrink keeps
specs (mesh_round_to, and the replicate fallback for indivisible sizes);
orbax save on one mesh, restore on another.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import json, logging, os, re, sys, traceback, warnings
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxprune._src.masks as M
    from jaxprune._src import sharding as S
    from jaxprune._src.pruner import MaskSpec, masks_from_scores, magnitude_pruner
    from jaxprune._src.schedules import one_shot
    from jaxprune._src.sparse_optax import sparse_optimizer
    from jaxprune._src.structured import trace_groups, make_plan, shrink
    from jaxprune._src.checkpoint.api import Checkpoint, save_checkpoint, restore_checkpoint

    assert jax.device_count() == 8
    results = {}
    DEVS = np.array(jax.devices())
    MESHES = {name: Mesh(DEVS.reshape(shape), ("data", "model"))
              for name, shape in [("1x8", (1, 8)), ("2x4", (2, 4)), ("4x2", (4, 2))]}

    def check(name):
        def deco(fn):
            try:
                fn()
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc()[-3000:]
            return fn
        return deco

    def put(tree, mesh, specs):
        return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)

    def same(a, b):
        la, lb = jax.tree.leaves(a, is_leaf=lambda x: x is None), jax.tree.leaves(b, is_leaf=lambda x: x is None)
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def assert_sharded_like(out, params):
        for (path, m), p in zip(jax.tree_util.tree_flatten_with_path(out, is_leaf=lambda x: x is None)[0],
                                jax.tree.leaves(params)):
            if m is not None:
                assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (path, m.sharding, p.sharding)

    def collectives(jitted, *args):
        txt = jitted.lower(*args).compile().as_text()
        return set(re.findall(r"\b(all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)\b", txt))

    # ---------------------------------------------------------------- masks on 3 meshes
    rng = np.random.default_rng(0)
    HOST = {"conv": {"kernel": np.round(rng.normal(size=(3, 3, 8, 16)) * 2) / 2},   # many ties
            "dense": {"kernel": rng.normal(size=(16, 32)), "bias": rng.normal(size=(32,))},
            "head": [rng.normal(size=(32, 8))]}
    HOST = jax.tree.map(lambda x: x.astype(np.float32), HOST)
    SPECS = {"conv": {"kernel": P(None, None, "data", "model")},
             "dense": {"kernel": P("data", "model"), "bias": P("model")},
             "head": [P("model", None)]}
    SCORES_HOST = jax.tree.map(np.abs, HOST)
    FNS = {
        "layerwise": lambda s: M.layerwise_masks(s, 0.6),
        "global": lambda s: M.global_masks(s, 0.7),
        "nm": lambda s: M.nm_masks(s, 2, 4),
        "erk": lambda s: masks_from_scores(s, 0.8, MaskSpec(distribution="erk")),
    }
    REF = {k: f(SCORES_HOST) for k, f in FNS.items()}

    for mname, mesh in MESHES.items():
        for fname, fn in FNS.items():
            @check(f"masks_{fname}_{mname}")
            def _():
                scores = put(SCORES_HOST, mesh, SPECS)
                eager = fn(scores)
                same(eager, REF[fname])
                assert_sharded_like(eager, scores)
                jitted = jax.jit(fn)
                out = jitted(scores)
                same(out, REF[fname])
                assert_sharded_like(out, scores)
                ops = collectives(jitted, scores)
                assert "all-gather" not in ops and "all-to-all" not in ops, ops
                if fname in ("layerwise", "global", "erk") and mname != "1x8":
                    assert "all-reduce" in ops, ops  # counts really are partial sums + all-reduce

    @check("global_masks_exact_with_partial_ties")
    def _():
        # all-equal scores: the tie cut is an index bisection; must equal row-major leaf order
        mesh = MESHES["2x4"]
        host = {"a": np.zeros((8, 8), np.float32), "b": np.zeros((4, 8), np.float32)}
        sc = put(host, mesh, {"a": P("data", "model"), "b": P(None, "model")})
        m = jax.jit(lambda s: M.global_masks(s, 0.75))(sc)
        flat = np.concatenate([np.asarray(m["a"]).ravel(), np.asarray(m["b"]).ravel()])
        assert not flat[:72].any() and flat[72:].all()
        assert_sharded_like(m, sc)

    @check("global_masks_exact_with_few_ties")
    def _():
        # three equal scores straddling the cut: the tie walk (not the bisection) picks the first two
        mesh = MESHES["4x2"]
        rng = np.random.default_rng(5)
        flat = rng.permutation(96).astype(np.float32)
        flat[[7, 40, 90]] = 50.0
        host = {"a": flat[:64].reshape(8, 8), "b": flat[64:].reshape(4, 8)}
        k = int((flat < 50).sum()) + 2
        sc = put(host, mesh, {"a": P("data", "model"), "b": P(None, "model")})
        m = jax.jit(lambda s: M.global_masks(s, k / 96, prunable=[(".*", True)]))(sc)
        ref = np.ones(96, bool)
        ref[np.argsort(flat, kind="stable")[:k]] = False
        got = np.concatenate([np.asarray(m["a"]).ravel(), np.asarray(m["b"]).ravel()])
        np.testing.assert_array_equal(got, ref)
        assert not got[7] and not got[40] and got[90]
        assert_sharded_like(m, sc)

    # ---------------------------------------------------------------- optax step on 2x4
    @check("sparse_optax_step_2x4")
    def _():
        mesh = MESHES["2x4"]
        rng = np.random.default_rng(1)
        host = {"l1": {"kernel": rng.normal(size=(16, 32)).astype(np.float32),
                       "bias": np.zeros(32, np.float32)},
                "l2": {"kernel": rng.normal(size=(32, 8)).astype(np.float32)}}
        # canonical specs (no trailing None): jit returns canonical ones, and P("model", None) !=
        # P("model") in the compilation cache key (equivalent shardings, but a second compile)
        specs = {"l1": {"kernel": P(None, "model"), "bias": P("model")}, "l2": {"kernel": P("model")}}
        x = rng.normal(size=(16, 16)).astype(np.float32)
        y = rng.normal(size=(16, 8)).astype(np.float32)
        opt = sparse_optimizer(optax.sgd(0.05, momentum=0.9), magnitude_pruner(one_shot(0.75, step=1)))

        def loss(p, x, y):
            h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
            return jnp.mean((h @ p["l2"]["kernel"] - y) ** 2)

        traces, compiles = [], []

        class Log(logging.Handler):
            def emit(self, record):
                if record.getMessage().startswith("Compiling jit(sparse_train_step)"):
                    compiles.append(1)

        logging.getLogger("jax").addHandler(Log())
        jax.config.update("jax_log_compiles", True)

        def sparse_train_step(p, state, x, y):
            traces.append(1)
            g = jax.grad(loss)(p, x, y)
            upd, state = opt.update(g, state, p)
            return optax.apply_updates(p, upd), state

        def run(p, x, y, jitted):
            state = opt.init(p)
            for _ in range(3):
                p, state = jitted(p, state, x, y)
            return p, state

        params = put(host, mesh, specs)
        xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        ys = jax.device_put(y, NamedSharding(mesh, P("data", None)))
        state0 = opt.init(params)
        assert_sharded_like(state0.masks, params)   # masks start sharded like params
        jstep = jax.jit(sparse_train_step)
        p_sh, st_sh = run(params, xs, ys, jstep)
        jax.config.update("jax_log_compiles", False)
        assert len(traces) == 1 and len(compiles) == 1, (len(traces), len(compiles))  # 3 steps, 1 compile
        assert_sharded_like(p_sh, params)
        assert_sharded_like(st_sh.masks, params)
        assert_sharded_like(st_sh.inner_state[0].trace, params)
        p_ref, st_ref = run(host, x, y, jax.jit(sparse_train_step))
        same(st_sh.masks, st_ref.masks)                     # same masks as on one device
        for a, b in zip(jax.tree.leaves(p_sh), jax.tree.leaves(p_ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        k = np.asarray(p_sh["l1"]["kernel"])
        assert (k == 0).sum() == round(0.75 * k.size)
        globals()["OPTAX_RUN"] = (p_sh, st_sh, opt)

    # ---------------------------------------------------------------- structured shrink
    def mlp(p, x):
        h = jax.nn.relu(x @ p["a"]["kernel"] + p["a"]["bias"])
        return h @ p["b"]["kernel"]

    SH_HOST = {"a": {"kernel": np.random.default_rng(2).normal(size=(8, 16)).astype(np.float32),
                     "bias": np.random.default_rng(3).normal(size=(16,)).astype(np.float32)},
               "b": {"kernel": np.random.default_rng(4).normal(size=(16, 4)).astype(np.float32)}}
    SH_SPECS = {"a": {"kernel": P(None, "model"), "bias": P("model")}, "b": {"kernel": P("model", None)}}
    GRAPH = trace_groups(mlp, SH_HOST, np.ones((2, 8), np.float32))

    for mname, mesh in MESHES.items():
        @check(f"shrink_round_to_{mname}")
        def _():
            params = put(SH_HOST, mesh, SH_SPECS)
            r = S.mesh_round_to(GRAPH, params)
            assert r == mesh.shape["model"], r
            plan = make_plan(params, GRAPH, 0.6, round_to=r)
            kept = plan.shapes["a/kernel"][1][1]
            assert kept % r == 0 and kept < 16, kept
            with warnings.catch_warnings():
                warnings.simplefilter("error")   # divisible: no fallback warning
                out = S.shrink_sharded(params, plan)
            same(out, shrink(SH_HOST, plan))
            for path, spec in [(("a", "kernel"), P(None, "model")), (("a", "bias"), P("model")),
                               (("b", "kernel"), P("model"))]:
                leaf = out[path[0]][path[1]]
                assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
                assert leaf.sharding.mesh.shape == mesh.shape

    @check("shrink_indivisible_replicates_with_warning")
    def _():
        mesh = MESHES["2x4"]
        params = put(SH_HOST, mesh, SH_SPECS)
        plan = make_plan(params, GRAPH, 0.5 - 1 / 16, round_to=1)   # keeps 9 of 16: 4 shards do not divide
        assert plan.shapes["a/kernel"][1] == (8, 9)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = S.shrink_sharded(params, plan)
        msgs = [str(x.message) for x in w]
        assert any("a/kernel" in m and "replicated" in m for m in msgs), msgs
        same(out, shrink(SH_HOST, plan))
        assert out["a"]["kernel"].sharding.spec == P() and out["a"]["kernel"].sharding.mesh.shape == mesh.shape
        assert out["b"]["kernel"].sharding.is_fully_replicated

    # ---------------------------------------------------------------- checkpoints across meshes
    @check("checkpoint_sparse_and_shrunk_1x8_to_4x2")
    def _():
        directory = sys.argv[1]
        mesh_a, mesh_b = MESHES["1x8"], MESHES["4x2"]
        params = put(SCORES_HOST, mesh_a, SPECS)
        masks = M.global_masks(params, 0.7)
        sparse = M.apply_masks(params, masks)
        sh_params = put(SH_HOST, mesh_a, SH_SPECS)
        plan = make_plan(sh_params, GRAPH, 0.5, round_to=S.mesh_round_to(GRAPH, sh_params))
        shrunk = S.shrink_sharded(sh_params, plan)
        save_checkpoint(directory, 1, params=sparse, masks=masks)
        save_checkpoint(directory, 2, params=sh_params, shrunk_params=shrunk, plan=plan)
        specs_b = {"conv": {"kernel": P(None, None, "model", "data")},
                   "dense": {"kernel": P("model", "data"), "bias": P("data")}, "head": [P("data", None)]}
        sh_b = jax.tree.map(lambda s: NamedSharding(mesh_b, s), specs_b)
        shrunk_sh_b = jax.tree.map(lambda s: NamedSharding(mesh_b, s), SH_SPECS)
        masks_sh_b = jax.tree.map(lambda m, s: None if m is None else s, masks, sh_b, is_leaf=lambda x: x is None)
        template = Checkpoint(params=S.abstract_like(sparse, sh_b), masks=S.abstract_like(masks, masks_sh_b))
        ck = restore_checkpoint(directory, 1, template=template)
        same(ck.params, sparse)
        same(ck.masks, masks)
        assert_sharded_like(ck.params, template.params)
        assert_sharded_like(ck.masks, template.params)
        assert ck.params["dense"]["kernel"].sharding.mesh.shape == mesh_b.shape
        assert ck.manifest["items"]["params"]["dense/kernel"]["enc"] == "compact"
        # shrunk state restored onto the other mesh, without the dense params
        template = Checkpoint(shrunk_params=S.abstract_like(shrunk, shrunk_sh_b))
        ck = restore_checkpoint(directory, 2, template=template, items=["shrunk_params", "plan"])
        same(ck.shrunk_params, shrunk)
        assert_sharded_like(ck.shrunk_params, template.shrunk_params)
        assert ck.shrunk_params["a"]["kernel"].sharding.mesh.shape == mesh_b.shape
        assert ck.plan["shapes"]["a/kernel"][1] == list(plan.shapes["a/kernel"][1])

    @check("checkpoint_optax_state_2x4_to_1x8")
    def _():
        p_sh, st_sh, opt = globals()["OPTAX_RUN"]
        directory = sys.argv[1] + "_opt"
        save_checkpoint(directory, 3, params=p_sh, opt_state=st_sh)
        mesh_b = MESHES["1x8"]
        specs_b = {"l1": {"kernel": P("model", None), "bias": P("model")}, "l2": {"kernel": P(None, "model")}}
        sh_b = jax.tree.map(lambda s: NamedSharding(mesh_b, s), specs_b)
        p_tpl = S.abstract_like(p_sh, sh_b)
        st_tpl = jax.eval_shape(opt.init, p_tpl)
        sds = lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s)
        inner = jax.tree.map(sds, st_tpl.inner_state, (optax.TraceState(trace=sh_b), optax.EmptyState()))
        st_tpl = st_tpl._replace(masks=S.abstract_like(st_tpl.masks, sh_b), inner_state=inner)
        ck = restore_checkpoint(directory, 3, template=Checkpoint(params=p_tpl, opt_state=st_tpl))
        same(ck.params, p_sh)
        same(ck.opt_state.masks, st_sh.masks)
        same(ck.opt_state.inner_state[0].trace, st_sh.inner_state[0].trace)
        assert_sharded_like(ck.params, p_tpl)
        assert_sharded_like(ck.opt_state.masks, p_tpl)

    print("RESULTS_JSON=" + json.dumps(results))
""")

NAMES = (
    [f"masks_{f}_{m}" for m in ("1x8", "2x4", "4x2") for f in ("layerwise", "global", "nm", "erk")]
    + ["global_masks_exact_with_partial_ties", "global_masks_exact_with_few_ties", "sparse_optax_step_2x4"]
    + [f"shrink_round_to_{m}" for m in ("1x8", "2x4", "4x2")]
    + [
        "shrink_indivisible_replicates_with_warning",
        "checkpoint_sparse_and_shrunk_1x8_to_4x2",
        "checkpoint_optax_state_2x4_to_1x8",
    ]
)


@functools.lru_cache(maxsize=1)
def _run(tmp: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, os.path.join(tmp, "ckpt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULTS_JSON=")]
    assert res.returncode == 0 and line, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads(line[0][len("RESULTS_JSON=") :])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _run(str(tmp_path_factory.mktemp("sharding")))


@pytest.mark.parametrize("name", NAMES)
def test_sharded(results, name):
    assert name in results, f"check {name} did not run"
    assert results[name] == "ok", results[name]
