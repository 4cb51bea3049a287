"""Checkpoint failures as :class:`CheckpointError` messages that say what happened and what is left on disk."""

from __future__ import annotations

import errno
import logging
from typing import Any, Mapping

from jaxprune._src.checkpoint.codec import CheckpointError

__all__ = ["wrap_error", "save_error", "structure_diff", "QuietFailedSave"]


def wrap_error(e: Exception, what: str) -> CheckpointError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return CheckpointError(f"{what}: {type(e).__name__}: {msg[:500]} (checkpoint truncated or corrupted?)")


def save_error(e: BaseException, step: int, directory: str) -> CheckpointError:
    if isinstance(e, CheckpointError):
        return e
    cause = e
    while not isinstance(cause, OSError):
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause = nxt
    if isinstance(cause, OSError) and cause.errno is not None:
        what = f"OSError [{errno.errorcode.get(cause.errno, cause.errno)}] {cause.strerror or cause}"
        if cause.errno == errno.ENOSPC:
            what += " (the disk is full)"
        elif cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            what += " (the directory is not writable)"
    else:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        what = f"{type(e).__name__}: {msg[:300]}"
    return CheckpointError(
        f"saving step {step} to {directory} failed: {what}; the partial write was removed and "
        "the previously saved steps are unchanged"
    )


def structure_diff(meta: Any, tmpl: Any, path: str = "") -> str | None:
    """Where the orbax metadata tree and a template first differ in container type (best effort)."""

    def node(x):
        if isinstance(x, Mapping):
            return "dict", {str(k): v for k, v in x.items()}
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return f"namedtuple {type(x).__name__}", {f: getattr(x, f) for f in x._fields}
        if isinstance(x, (list, tuple)):
            return type(x).__name__, {str(i): v for i, v in enumerate(x)}
        if x is None or hasattr(x, "shape"):
            return "leaf", None
        return type(x).__name__, None

    km, cm = node(meta)
    kt, ct = node(tmpl)
    where = repr(path) if path else "the root"
    if km != kt and not ({km, kt} <= {"list", "tuple"} and km != "leaf"):
        return f"at {where} the checkpoint has a {km}, the template a {kt}"
    if cm is None or ct is None:
        return None
    if set(cm) != set(ct):
        return f"at {where} the checkpoint has keys {sorted(cm)[:10]}, the template {sorted(ct)[:10]}"
    for k in cm:
        d = structure_diff(cm[k], ct[k], f"{path}/{k}" if path else k)
        if d:
            return d
    return None


class QuietFailedSave(logging.Filter):
    """Drops orbax's background-thread tracebacks about one directory (the failure is raised as CheckpointError)."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not ("raised an exception" in msg and self.directory in msg)
