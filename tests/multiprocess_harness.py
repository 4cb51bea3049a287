"""Test-only harness: run N JAX worker processes on localhost as one distributed job.

Each worker is ``python tests/multiprocess_workers.py TASK`` with its own
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (set in the child's
environment, so it is in place before the child imports jax), joined to the
others by ``jax.distributed.initialize`` on ``127.0.0.1:<free port>`` with gloo
CPU collectives. Workers write ``result_<i>.json`` (JSON-able results) and
optionally ``arrays_<i>.npz`` into a fresh directory; on an exception they
write ``error_<i>.txt`` (the traceback) and exit non-zero.

:func:`run_workers` waits for all of them. When one fails (or the timeout
passes) the others are killed at once (their whole process group) and
:class:`WorkerError` is raised with every worker's traceback and stderr tail,
so pytest shows the real error. Workers that cannot set up gloo collectives
exit with :data:`UNAVAILABLE_RC`; :func:`run_workers` then raises
:class:`MultiprocessUnavailable` (tests skip on it, with the reason).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_workers.py")
UNAVAILABLE_RC = 77  # a worker's exit code when jax's distributed runtime / gloo cannot start


class WorkerError(RuntimeError):
    """A worker failed or the job timed out; the message holds every worker's traceback."""


class MultiprocessUnavailable(RuntimeError):
    """This machine cannot run a multi-process JAX job (no gloo CPU collectives, no free port, ...)."""


@dataclass
class WorkerResult:
    """What one worker returned: its JSON result and its saved arrays (``np.load`` of its npz)."""

    process_id: int
    result: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    exit_code: int = 0
    error: str = ""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own group (start_new_session)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def run_workers(
    task: str,
    *,
    num_processes: int,
    devices_per_process: int,
    args: dict[str, Any] | None = None,
    timeout: float = 120.0,
    workdir: str | None = None,
    expect_failure: bool = False,
    grace: float = 0.0,
) -> list[WorkerResult]:
    """Runs ``task`` of ``tests/multiprocess_workers.py`` in ``num_processes`` processes; their results.

    ``args`` (JSON-able) is passed to every worker, with ``workdir`` (a fresh
    temporary directory unless given) as ``args['workdir']``. When a worker
    fails, the others get ``grace`` seconds to finish, then all are killed.
    With ``expect_failure=True`` (a worker is meant to die, e.g. killed
    mid-save) nothing is raised: one :class:`WorkerResult` per worker comes
    back with its ``exit_code``, ``error`` (traceback) and whatever result it wrote.
    """
    own_dir = workdir is None
    out = tempfile.mkdtemp(prefix=f"mp_{task}_") if workdir is None else workdir
    os.makedirs(out, exist_ok=True)
    port = free_port()
    spec = dict(args or {}, workdir=out)
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump(spec, f)
    procs: list[subprocess.Popen] = []
    logs = []
    for i in range(num_processes):
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
        env["JAX_PLATFORMS"] = "cpu"
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("JAX_COORDINATOR_ADDRESS", None)
        log = os.path.join(out, f"stderr_{i}.txt")
        logs.append(log)
        cmd = [sys.executable, WORKER, task, str(i), str(num_processes), str(devices_per_process), str(port), out]
        with open(log, "w") as errf:
            procs.append(
                subprocess.Popen(cmd, stdout=errf, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
            )
    start = time.monotonic()
    failed: int | None = None
    failed_at = 0.0
    try:
        while True:
            now = time.monotonic() - start
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if bad and failed is None:
                failed, failed_at = bad[0], now
            if failed is not None and now - failed_at >= grace:
                break
            if now > timeout:
                failed = -1 if failed is None else failed
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            _kill_group(p)
    codes = [p.returncode for p in procs]
    if any(c == UNAVAILABLE_RC for c in codes):
        i = codes.index(UNAVAILABLE_RC)
        raise MultiprocessUnavailable(_tail(os.path.join(out, f"error_{i}.txt")) or _tail(logs[i]))
    if not expect_failure and (failed is not None or any(c != 0 for c in codes)):
        head = (
            f"multi-process task {task!r} timed out after {timeout:.0f} s"
            if failed == -1
            else f"multi-process task {task!r}: worker {failed} failed"
        )
        parts = [f"{head} (exit codes {codes}, workdir {out})"]
        for i in range(num_processes):
            tb = _tail(os.path.join(out, f"error_{i}.txt"))
            parts.append(f"--- worker {i} (exit {codes[i]}) traceback:\n{tb or '(none written)'}")
            parts.append(f"--- worker {i} output tail:\n{_tail(logs[i], 2500)}")
        raise WorkerError("\n".join(parts))
    results = []
    for i in range(num_processes):
        rpath = os.path.join(out, f"result_{i}.json")
        res: dict[str, Any] = {}
        if os.path.exists(rpath):
            with open(rpath) as f:
                res = json.load(f)
        elif not expect_failure:
            raise WorkerError(f"worker {i} exited 0 without writing {rpath}:\n{_tail(logs[i], 2500)}")
        arrays: dict[str, np.ndarray] = {}
        apath = os.path.join(out, f"arrays_{i}.npz")
        if os.path.exists(apath):
            with np.load(apath) as z:
                arrays = {k: z[k] for k in z.files}
        err = _tail(os.path.join(out, f"error_{i}.txt"))
        results.append(WorkerResult(i, res, arrays, exit_code=codes[i], error=err))
    if own_dir:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return results
