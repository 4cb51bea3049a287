"""Type aliases shared by the whole package (one definition each)."""

from typing import Any

#: Any pytree: nested dicts / lists / tuples, Flax ``FrozenDict`` and Linen variables, ``nnx.State``,
#: registered dataclasses, with array (or ``None``) leaves.
PyTree = Any

__all__ = ["PyTree"]
