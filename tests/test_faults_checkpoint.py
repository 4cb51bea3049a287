"""Fault injection for checkpoints: kills, torn and edited files, concurrent writers, full disks.

Every crash happens in a child process (``subprocess`` + ``python -c``) that is
killed with SIGKILL by a patched ``os.rename`` / ``os.replace`` / ``shutil.rmtree``
/ orbax JSON write at the first event matching ``KILL_RE`` (see ``PRELUDE``).
After each fault the previous good state must restore bit-identically, and the
broken step must either be refused with a :class:`jaxprune.CheckpointError`
naming it, or be recovered (the documented behaviour of interrupted overwrites).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import jaxprune as jp
from jaxprune import Checkpoint, CheckpointError

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Kill hook for children: SIGKILL before the first file-system event matching $KILL_RE.
PRELUDE = textwrap.dedent("""
    import os, re, sys, shutil, json
    import numpy as np
    import jax, jax.numpy as jnp
    import orbax.checkpoint as ocp
    import jaxprune as jp
    _kill_re = os.environ.get("KILL_RE")
    _trace = []
    def _event(desc):
        _trace.append(desc)
        if _kill_re and re.search(_kill_re, desc):
            hook = os.environ.get("KILL_HOOK")
            if hook:
                exec(hook, {"os": os, "json": json})
            os.kill(os.getpid(), 9)
    def _wrap(mod, name):
        orig = getattr(mod, name)
        def patched(*a, **k):
            _event(f"{name} " + " -> ".join(str(x) for x in a[:2]))
            return orig(*a, **k)
        setattr(mod, name, patched)
    _wrap(os, "rename"); _wrap(os, "replace"); _wrap(shutil, "rmtree")
    _json_save = ocp.JsonCheckpointHandler._save_fn
    async def _save_fn(self, x, directory):
        _event(f"json {directory}")
        return await _json_save(self, x, directory)
    ocp.JsonCheckpointHandler._save_fn = _save_fn
    def value(seed, n=64):
        return {"enc": {"kernel": jnp.asarray(np.random.default_rng(seed).normal(size=(n, n)), jnp.float32)},
                "head": {"bias": jnp.arange(8.0) + seed}}
""")


def value(seed, n=64):
    return {
        "enc": {"kernel": jnp.asarray(np.random.default_rng(seed).normal(size=(n, n)), jnp.float32)},
        "head": {"bias": jnp.arange(8.0) + seed},
    }


def run_child(code, kill_re=None, env_extra=None, timeout=300):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.pop("KILL_RE", None)
    if kill_re:
        env["KILL_RE"] = kill_re
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def assert_tree_bits(a, b):
    la, lb = jp.leaves_with_paths(a), jp.leaves_with_paths(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, p
        assert x.tobytes() == y.tobytes(), p


def side_folders(d):
    return sorted(n for n in os.listdir(d) if not n.isdigit())


def killed(res):
    assert res.returncode == -9, f"child was not killed (exit {res.returncode}):\n{res.stdout}\n{res.stderr[-3000:]}"


# --------------------------------------------------------------------------- kills during a plain save
@pytest.mark.parametrize(
    "kill_re",
    [
        r"^json ",  # during the temporary write
        r"rename \S+/params\.orbax-checkpoint-tmp ->",  # between item commits inside the temporary folder
        r"rename \S+/2\.orbax-checkpoint-tmp -> \S+/2$",  # temporary write complete, before the commit rename
    ],
    ids=["during_tmp_write", "mid_tmp_commit", "before_commit_rename"],
)
def test_plain_save_killed(tmp_path, kill_re):
    d = tmp_path / "ck"
    jp.save_checkpoint(d, 1, params=value(1), data_state={"step": 1})
    killed(run_child(f"jp.save_checkpoint({str(d)!r}, 2, params=value(2), data_state={{'step': 2}})", kill_re))
    assert jp.checkpoint_steps(d) == [1]
    assert_tree_bits(jp.restore_checkpoint(d).params, value(1))
    with pytest.raises(CheckpointError, match="step 2"):
        jp.restore_checkpoint(d, 2)
    with jp.SparseCheckpointer(d, async_=False) as ck:  # a writer cleans the leftovers, then the step can be saved
        assert side_folders(d) == []
        ck.save(2, params=value(2))
    assert_tree_bits(jp.restore_checkpoint(d, 2).params, value(2))


# --------------------------------------------------------------------------- kills during an overwrite
# (kill point, which version of step 2 must restore afterwards)
OVERWRITE_POINTS = {
    "during_staging_write": (r"^json ", "old"),
    "before_staging_commit": (r"rename \S+/2\.orbax-checkpoint-tmp -> \S+/2$", "old"),
    "before_swap": (r"rename \S+/2 -> \S+/2\.jaxprune-replaced$", "old"),
    "between_swap_renames": (r"rename \S+/2\.jaxprune-staging/2 -> ", "new"),
    "after_swap": (r"rmtree \S+/2\.jaxprune-replaced$", "new"),
}
ASYNC_POINTS = ["during_staging_write", "before_swap", "between_swap_renames"]


@pytest.mark.parametrize("mode,point", [("sync", p) for p in OVERWRITE_POINTS] + [("async", p) for p in ASYNC_POINTS])
def test_overwrite_killed_restores_old_or_new(tmp_path, mode, point):
    kill_re, expect = OVERWRITE_POINTS[point]
    d = tmp_path / "ck"
    jp.save_checkpoint(d, 1, params=value(1), data_state={"v": "one"})
    jp.save_checkpoint(d, 2, params=value(2), data_state={"v": "old"})
    if mode == "sync":
        code = f"jp.save_checkpoint({str(d)!r}, 2, params=value(3), data_state={{'v': 'new'}}, overwrite=True)"
    else:
        code = f"""
        ck = jp.SparseCheckpointer({str(d)!r}, async_=True)
        ck.save(2, params=value(3), data_state={{'v': 'new'}}, overwrite=True)
        ck.wait()
        """
    killed(run_child(code, kill_re))
    # a reader alone recovers (finishes or rolls back) the interrupted replace
    got = jp.restore_checkpoint(d, 2)
    assert got.data_state == {"v": expect}
    assert_tree_bits(got.params, value(2) if expect == "old" else value(3))
    assert_tree_bits(jp.restore_checkpoint(d, 1).params, value(1))
    assert jp.checkpoint_steps(d) == [1, 2]
    with jp.SparseCheckpointer(d, async_=False) as ck:
        assert side_folders(d) == []
        with pytest.raises(CheckpointError, match="already holds a complete checkpoint of step 2"):
            ck.save(2, params=value(4))


def test_orphaned_backup_is_reported_with_recovery_step_when_directory_is_busy(tmp_path):
    """What the old code left after a kill: ``2.jaxprune-replaced`` and no ``2``; a busy writer blocks recovery."""
    d = tmp_path / "ck"
    jp.save_checkpoint(d, 1, params=value(1))
    jp.save_checkpoint(d, 2, params=value(2))
    os.rename(d / "2", d / "2.jaxprune-replaced")
    lock_fd = os.open(d, os.O_RDONLY)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # simulate a live writer
    try:
        with pytest.raises(CheckpointError, match=r"step 2.*2\.jaxprune-replaced.*mv "):
            jp.restore_checkpoint(d, 2)
        with pytest.raises(CheckpointError, match="already open for writing"):
            jp.SparseCheckpointer(d)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    assert_tree_bits(jp.restore_checkpoint(d, 2).params, value(2))  # recovered once the writer is gone
    assert side_folders(d) == []


# --------------------------------------------------------------------------- torn, flipped and edited files
def _files(d):
    return sorted(p for p in pathlib.Path(d).rglob("*") if p.is_file())


def _biggest(d):
    return max(_files(d), key=lambda p: p.stat().st_size)


def _two_steps(d):
    jp.save_checkpoint(d, 1, params=value(1), data_state={"step": 1})
    w = value(2)
    masks = jax.tree.map(lambda x: jnp.abs(x) > 0.5, w)
    w = jax.tree.map(lambda x, m: jnp.where(m, x, 0), w, masks)
    opt = jp.sparse_optimizer(optax.adam(1e-3), jp.magnitude_pruner(jp.polynomial(0.5, begin=0, end=4, every=2)), key=0)
    opt_state = opt.init(w)
    jp.save_checkpoint(d, 2, params=w, masks=masks, opt_state=opt_state, data_state={"step": 2})
    return w, masks, opt, opt_state


def _step1_intact(d):
    assert_tree_bits(jp.restore_checkpoint(d, 1).params, value(1))


@pytest.mark.parametrize(
    "damage",
    [
        "flip_array",
        "truncate_array",
        "truncate_manifest",
        "flip_manifest_digit",
        "edit_manifest_dtype",
        "edit_data_state",
        "corrupt_opt_state_metadata",
    ],
)
def test_damaged_files_are_refused_with_a_named_error(tmp_path, damage):
    d = tmp_path / "ck"
    w, _, _, opt_state = _two_steps(d)
    step2 = d / "2"
    manifest = step2 / "jaxprune_manifest" / "metadata"
    if damage in ("flip_array", "truncate_array"):
        f = _biggest(step2 / "params")
        data = bytearray(f.read_bytes())
        if damage == "flip_array":
            for i in range(len(data) // 3, len(data) // 3 + 32):
                data[i] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        f.write_bytes(bytes(data))
        match = "item 'params'"
    elif damage == "truncate_manifest":
        manifest.write_bytes(manifest.read_bytes()[:100])
        match = "manifest"
    elif damage == "flip_manifest_digit":  # still valid JSON: one CRC digit changed
        m = json.loads(manifest.read_text())
        entry = m["items"]["params"]["head/bias"]
        entry["crc32"] = entry["crc32"] ^ 1
        manifest.write_text(json.dumps(m))
        match = r"jaxprune_manifest/metadata: the manifest fails its SHA-256"
    elif damage == "edit_manifest_dtype":  # the audit's hand edit: a leaf's dtype changed to int8
        m = json.loads(manifest.read_text())
        m["items"]["params"]["head/bias"]["dtype"] = "int8"
        manifest.write_text(json.dumps(m))
        match = r"2/jaxprune_manifest/metadata: the manifest fails its SHA-256"
    elif damage == "edit_data_state":
        (step2 / "data_state" / "metadata").write_text(json.dumps({"step": 3}))
        match = r"2/data_state/metadata: item 'data_state' fails its SHA-256"
    else:
        (step2 / "opt_state" / "_METADATA").write_text('{"tree_metadata": garbage')
        match = r"item 'opt_state'"
    with pytest.raises(CheckpointError, match=match):
        jp.restore_checkpoint(d, 2)
    if damage == "corrupt_opt_state_metadata":  # also with a template; and masks/params alone still restore
        with pytest.raises(CheckpointError, match=r"item 'opt_state'"):
            jp.restore_checkpoint(d, 2, template=Checkpoint(params=w, opt_state=opt_state))
        assert_tree_bits(jp.restore_checkpoint(d, 2, items=["params"]).params, w)
    _step1_intact(d)


def test_float_checkpoint_into_int8_template_is_refused(tmp_path):
    jp.save_checkpoint(tmp_path, 1, params=value(1))
    bad = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.int8), value(1))
    with pytest.raises(CheckpointError, match=r"leaf 'enc/kernel'.*float32.*int8"):
        jp.restore_checkpoint(tmp_path, template=Checkpoint(params=bad))


def test_template_of_another_structure_names_the_item_and_node(tmp_path):
    jp.save_checkpoint(tmp_path, 1, params={"a": [jnp.ones(3), jnp.zeros(2)]})
    other = {"a": {"0": jnp.ones(3), "1": jnp.zeros(2)}}
    with pytest.raises(CheckpointError, match=r"item 'params'.*'a'.*list.*dict") as e:
        jp.restore_checkpoint(tmp_path, template=Checkpoint(params=other))
    assert "truncated or corrupted" not in str(e.value)


# --------------------------------------------------------------------------- retention
def test_out_of_order_save_never_deletes_the_newest_step(tmp_path):
    with jp.SparseCheckpointer(tmp_path, max_to_keep=1, async_=False) as ck:
        ck.save(5, params=value(5))
        with pytest.raises(CheckpointError, match=r"step 3.*newest step 5.*max_to_keep=1"):
            ck.save(3, params=value(3))
        ck.save(6, params=value(6))
    assert jp.checkpoint_steps(tmp_path) == [6]
    assert_tree_bits(jp.restore_checkpoint(tmp_path).params, value(6))


# --------------------------------------------------------------------------- concurrent writers
def test_threads_sharing_an_async_checkpointer(tmp_path):
    errors = []
    with jp.SparseCheckpointer(tmp_path, async_=True) as ck:

        def worker(t):
            try:
                for k in range(3):
                    step = 10 * t + k
                    ck.save(step, params=value(step, 32), data_state={"step": step})
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in (1, 2, 3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        ck.wait()
    assert errors == []
    steps = jp.checkpoint_steps(tmp_path)
    assert steps == sorted(10 * t + k for t in (1, 2, 3) for k in range(3))
    for step in steps:
        got = jp.restore_checkpoint(tmp_path, step)
        assert got.data_state == {"step": step}
        assert_tree_bits(got.params, value(step, 32))
    assert side_folders(tmp_path) == []


def test_two_processes_saving_the_same_step(tmp_path):
    d = tmp_path / "ck"
    jp.save_checkpoint(d, 1, params=value(1))
    code = """
        import time
        seed = int(os.environ["SEED"])
        try:
            with jp.SparseCheckpointer(DIR, async_=False) as ck:
                time.sleep(1.5)  # hold the directory while the other process starts
                ck.save(7, params=value(seed), data_state={"seed": seed})
            print("SAVED", seed)
        except jp.CheckpointError as e:
            print("REFUSED", e)
    """.replace("DIR", repr(str(d)))
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env, SEED=str(s)),
        )
        for s in (70, 71)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    saved = [s for s, (o, _) in zip((70, 71), outs) if "SAVED" in o]
    refused = [o for o, _ in outs if "REFUSED" in o]
    assert len(saved) == 1 and len(refused) == 1, outs
    assert "already open for writing" in refused[0] or "already holds a complete checkpoint of step 7" in refused[0]
    got = jp.restore_checkpoint(d, 7)
    assert got.data_state == {"seed": saved[0]}
    assert_tree_bits(got.params, value(saved[0]))
    _step1_intact(d)
    assert side_folders(d) == []


# --------------------------------------------------------------------------- full disk, read-only directory
@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new_step", "overwrite"])
def test_full_disk_keeps_the_previous_state(tmp_path, monkeypatch, async_, overwrite):
    d = tmp_path / "ck"
    jp.save_checkpoint(d, 1, params=value(1), data_state={"v": 1})
    orig = ocp.JsonCheckpointHandler._save_fn

    async def enospc(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", enospc)
    step = 1 if overwrite else 2
    with jp.SparseCheckpointer(d, async_=async_) as ck:
        with pytest.raises(CheckpointError, match=rf"saving step {step} to .*ENOSPC.*disk is full.*unchanged"):
            ck.save(step, params=value(9), data_state={"v": 9}, overwrite=overwrite)
            ck.wait()
        monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", orig)
        assert side_folders(d) == []  # no *.orbax-checkpoint-tmp or staging left
        assert ck.all_steps() == [1]
        got = ck.restore()
        assert got.data_state == {"v": 1}
        assert_tree_bits(got.params, value(1))
        ck.save(step, params=value(9), data_state={"v": 9}, overwrite=overwrite)  # space is back: it works
        ck.wait()
    assert jp.restore_checkpoint(d, step).data_state == {"v": 9}


def test_read_only_directory_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: chmod does not stop root from writing, so a read-only directory cannot be simulated"
        )
    d = tmp_path / "ck"
    jp.save_checkpoint(d, 1, params=value(1))
    os.chmod(d, 0o555)
    try:
        with pytest.raises(CheckpointError, match="not writable|cannot|Permission"):
            jp.save_checkpoint(d, 2, params=value(2))
        assert_tree_bits(jp.restore_checkpoint(d).params, value(1))
    finally:
        os.chmod(d, 0o755)


# --------------------------------------------------------------------------- the CLI's training state
def _hashes(d):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(d)}


def test_cli_finetune_killed_mid_save(tmp_path):
    out = tmp_path / "run"
    ts = out / "train_state"
    # record the committed step 8 at the moment step 12's save starts, then die
    hook = (
        "import hashlib, pathlib; d = pathlib.Path(os.environ['TS']) / '8'; "
        "open(os.environ['REC'], 'w').write(json.dumps({str(p.relative_to(d)): "
        "hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}))"
    )
    code = f"""
        import runpy
        sys.argv = ["jaxprune", "finetune", "--model", "small_cnn", "--dataset", "digits_offline", "--steps", "20",
                    "--out", {str(out)!r}, "--no-progress"]
        runpy.run_module("jaxprune.cli", run_name="__main__")
    """
    res = run_child(
        code,
        kill_re=r"^json \S+/train_state/12\.orbax-checkpoint-tmp",
        env_extra={"KILL_HOOK": hook, "TS": str(ts), "REC": str(tmp_path / "step8.json")},
    )
    killed(res)
    before = json.loads((tmp_path / "step8.json").read_text())
    assert jp.checkpoint_steps(ts) == [8]
    assert _hashes(ts / "8") == before  # the previous good state, bit for bit
    head = jp.restore_checkpoint(ts, items=["data_state"])
    assert head.step == 8 and not head.data_state["finished"]
    with pytest.raises(CheckpointError, match="no checkpoint step 12"):
        jp.restore_checkpoint(ts, 12)
    # rerunning the same command resumes from step 8 (the killed save's leftovers are cleaned) and finishes
    res = run_child(code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert jp.checkpoint_steps(ts) == [20] and side_folders(ts) == []
    assert json.loads((out / "summary.json").read_text())["finished"]
    assert jp.restore_checkpoint(ts, items=["data_state"]).data_state["finished"]
