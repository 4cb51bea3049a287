"""Deprecated aliases of renamed public names: importable, with a warning that names the new one."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = ["deprecated_attribute"]


def deprecated_attribute(namespace: str, old: str, module: str, attr: str, new: str) -> Any:
    """``module.attr``, after a ``DeprecationWarning`` that ``namespace.old`` is now ``new``."""
    warnings.warn(
        f"{namespace}.{old} is deprecated and will be removed in jaxprune 2.0; use {new} (see CHANGELOG.md)",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(module), attr)
