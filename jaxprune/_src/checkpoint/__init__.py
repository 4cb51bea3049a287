"""Orbax checkpoints of dense, sparse (compact) and shrunk states, with plans and configs.

``api.py`` (save / restore / restore a shrunk model), ``checkpointer.py`` (the
:class:`SparseCheckpointer` step manager: atomic commits, crash recovery,
retention, locking), ``codec.py`` (the on-disk format: manifest, checksums,
compact sparse leaves) and ``sparse_format.py`` (bit-packed masks, kept values
+ bitmask).
"""

from jaxprune._src.checkpoint.api import ShrunkModel, restore_checkpoint, restore_shrunk_model, save_checkpoint
from jaxprune._src.checkpoint.checkpointer import SparseCheckpointer
from jaxprune._src.checkpoint.codec import Checkpoint, CheckpointError
from jaxprune._src.checkpoint.directory import checkpoint_size_bytes, checkpoint_steps

__all__ = [
    "save_checkpoint",
    "restore_checkpoint",
    "restore_shrunk_model",
    "ShrunkModel",
    "SparseCheckpointer",
    "checkpoint_steps",
    "checkpoint_size_bytes",
    "Checkpoint",
    "CheckpointError",
]
