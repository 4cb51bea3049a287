"""Checkpoint step directories on disk: listing, sizes, interrupted-overwrite recovery, the writer lock.

Also the multi-process coordination the checkpointer needs (which process is
primary, barriers, agreeing on a decision). See
:mod:`jaxprune._src.checkpoint.checkpointer` for the crash-safety protocol these
helpers implement.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time

import jax
import numpy as np

from jaxprune._src.checkpoint.codec import COMMIT_MARKER

__all__ = [
    "BACKUP_SUFFIX",
    "STAGING_SUFFIX",
    "ORBAX_TMP",
    "step_dir",
    "checkpoint_steps",
    "checkpoint_size_bytes",
    "committed",
    "interrupted_replaces",
    "recovery_hint",
    "recover_directory",
    "rmtree_settled",
    "DirLock",
    "try_lock",
    "multiprocess",
    "primary",
    "sync",
    "agree",
    "SharedWriter",
]

BACKUP_SUFFIX = ".jaxprune-replaced"
STAGING_SUFFIX = ".jaxprune-staging"
ORBAX_TMP = ".orbax-checkpoint-tmp"
SIDE_RE = re.compile(r"^(\d+)(\.jaxprune-replaced|\.jaxprune-staging)$")


def step_dir(directory: str, step: int) -> str:
    return os.path.join(directory, str(step))


def checkpoint_steps(directory: str | os.PathLike, *, committed: bool = True) -> list[int]:
    """Step numbers in ``directory``; with ``committed=True`` only complete ones (orbax commit marker present).

    Orbax's temporary directories (``<step>.orbax-checkpoint-tmp-*``) are never listed.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        if name.isdigit() and os.path.isdir(os.path.join(directory, name)):
            if not committed or os.path.exists(os.path.join(directory, name, COMMIT_MARKER)):
                steps.append(int(name))
    return sorted(steps)


def checkpoint_size_bytes(directory: str | os.PathLike, step: int | None = None) -> int:
    """Total bytes of the files under ``directory`` (or under its step ``step``)."""
    root = os.fspath(directory) if step is None else step_dir(os.fspath(directory), step)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no checkpoint directory {root}")
    total = 0
    for dirpath, _, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def committed(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, COMMIT_MARKER))


def interrupted_replaces(directory: str) -> dict[int, list[str]]:
    """``{step: [side paths]}`` of overwrites that did not finish (backups / staging folders)."""
    out: dict[int, list[str]] = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            m = SIDE_RE.match(name)
            if m:
                out.setdefault(int(m.group(1)), []).append(os.path.join(directory, name))
    return out


def recovery_hint(directory: str, step: int) -> str:
    """Exact shell steps that undo an interrupted overwrite of ``step`` by hand (empty if none)."""
    step_path = step_dir(directory, step)
    backup, staging = step_path + BACKUP_SUFFIX, step_path + STAGING_SUFFIX
    staged = os.path.join(staging, str(step))
    if os.path.isdir(backup) and not committed(step_path):
        if committed(staged):
            return (
                f"an overwrite of step {step} was interrupted after its new version was complete: finish it with "
                f"`rm -rf {step_path} && mv {staged} {step_path} && rm -rf {backup} {staging}`, or open a "
                "SparseCheckpointer on the directory (it does this)"
            )
        return (
            f"an overwrite of step {step} was interrupted; the previous version is in {backup}: restore it with "
            f"`rm -rf {step_path} {staging} && mv {backup} {step_path}`, or open a SparseCheckpointer on the "
            "directory (it does this)"
        )
    return ""


def recover_directory(directory: str | os.PathLike, *, tmp: bool = True) -> list[str]:
    """Finishes or rolls back interrupted overwrites in ``directory``; returns what it did.

    Call only while holding the directory's writer lock (a :class:`SparseCheckpointer`
    does so when it opens). For every step with a ``<step>.jaxprune-replaced`` backup
    or ``<step>.jaxprune-staging`` folder: if ``<step>`` is committed the replace had
    finished (side folders are deleted); else if the staged new step is committed it
    is moved into place; else the backup is moved back. With ``tmp=True`` orbax's
    temporary folders of killed saves (``*.orbax-checkpoint-tmp*``) are deleted too.
    """
    directory = os.fspath(directory)
    done: list[str] = []
    for step in interrupted_replaces(directory):
        step_path = step_dir(directory, step)
        backup, staging = step_path + BACKUP_SUFFIX, step_path + STAGING_SUFFIX
        staged = os.path.join(staging, str(step))
        if committed(step_path):
            pass
        elif os.path.isdir(backup) or committed(staged):
            if os.path.isdir(step_path):
                shutil.rmtree(step_path)
            if committed(staged):
                os.rename(staged, step_path)
                done.append(f"finished the interrupted overwrite of step {step}")
            else:
                os.rename(backup, step_path)
                done.append(f"rolled back the interrupted overwrite of step {step} (previous version restored)")
        for side in (backup, staging):
            if os.path.lexists(side):
                shutil.rmtree(side)
    if tmp and os.path.isdir(directory):
        for name in os.listdir(directory):
            if ORBAX_TMP in name:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                done.append(f"removed {name} (left by an interrupted save)")
    return done


def rmtree_settled(path: str, tries: int = 30) -> None:
    """Deletes ``path``, again while background writers of a failed save still add files to it."""
    for _ in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            time.sleep(0.05)  # a straggling writer may recreate it
            if not os.path.lexists(path):
                return
        else:
            time.sleep(0.1)
    shutil.rmtree(path)  # raises: say why it cannot be removed


class DirLock:
    """Exclusive, non-blocking ``flock`` on a directory (one writer per directory; freed when the process dies)."""

    def __init__(self, directory: str):
        self.fd: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def try_lock(directory: str) -> DirLock | None:
    try:
        return DirLock(directory)
    except OSError:
        return None


def multiprocess() -> bool:
    return jax.process_count() > 1


def primary() -> bool:
    """This process does the directory's lock, moves and deletions (process 0; always on one process)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier of every process of a multi-process job (no-op on one process)."""
    if multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxprune_checkpoint:{name}")


def agree(ok: bool) -> bool:
    """Multi-process: process 0's ``ok`` for everyone (so all raise or all go on together)."""
    if not multiprocess():
        return ok
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(ok))))


class SharedWriter:
    """Stands for the writer lock in processes other than 0 of a multi-process job (process 0 holds it)."""

    def release(self) -> None:
        pass
