"""Offline real English text for language-model experiments: Python's own documentation (``pydoc_data.topics``).

``pydoc_data.topics.topics`` ships with CPython (79 topics, ~465k characters
of the language reference). :func:`text_splits` splits it *by topic* into a
training and a held-out part, deterministically (topics sorted by name, every
``heldout_every``-th topic held out); :func:`encode` is a byte-level tokenizer
(UTF-8 bytes, vocabulary 256, nothing to download); :func:`lm_batches` cuts a
token stream into fixed-length sequences. :func:`stdlib_docstrings` adds
~1.5 MB more English (the docstrings of the standard library's modules, also
shipped with CPython) for training a model on more text than it can memorise.

Example:
  >>> train, held = text_splits()
  >>> len(train) > 5 * len(held) > 0
  True
  >>> encode("hi") .tolist(), decode(encode("héllo"))
  ([104, 105], 'héllo')
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = [
    "BYTE_VOCAB",
    "stdlib_docstrings",
    "text_splits",
    "encode",
    "decode",
    "token_splits",
    "lm_batches",
    "sequences",
]

#: Vocabulary size of the byte-level tokenizer.
BYTE_VOCAB = 256


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def text_splits(heldout_every: int = 8) -> tuple[str, str]:
    """``(train_text, heldout_text)``: topics sorted by name; every ``heldout_every``-th (from index 3) is held out.

    >>> tr, he = text_splits(); tr[:20] == he[:20]
    False
    """
    if isinstance(heldout_every, bool) or not isinstance(heldout_every, int) or heldout_every < 2:
        raise ValueError(f"text_splits: heldout_every must be an int >= 2, got {heldout_every!r}")
    topics = _topics()
    names = sorted(topics)
    held = [n for i, n in enumerate(names) if i % heldout_every == 3 % heldout_every]
    train = [n for n in names if n not in set(held)]
    return "\n\n".join(topics[n] for n in train), "\n\n".join(topics[n] for n in held)


def stdlib_docstrings(*, min_chars: int = 80, exclude: str = "", shingle: int = 48) -> str:
    """English text of the docstrings of the standard library's ``.py`` files (test suites and idlelib left out).

    Deterministic for one Python version (files sorted by path, docstrings in source order, duplicates
    dropped). Docstrings shorter than ``min_chars`` are skipped, and so is every docstring that shares a
    ``shingle``-character substring with ``exclude`` (pass the held-out text to keep it unseen).

    >>> text = stdlib_docstrings()
    >>> len(text) > 500_000
    True
    """
    import ast
    import os
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    files = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = sorted(x for x in subdirs if x not in ("test", "tests", "idlelib", "site-packages", "__pycache__"))
        files += [os.path.join(d, n) for n in sorted(names) if n.endswith(".py") and not n.startswith("test_")]
    banned = {exclude[i : i + shingle] for i in range(max(len(exclude) - shingle + 1, 0))}
    seen: set[str] = set()
    out = []
    for path in sorted(files):
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < min_chars or doc in seen:
                continue
            if banned and any(doc[i : i + shingle] in banned for i in range(len(doc) - shingle + 1)):
                continue
            seen.add(doc)
            out.append(doc)
    return "\n\n".join(out)


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as int32 tokens in ``[0, 256)``.

    >>> encode("ab").tolist()
    [97, 98]
    """
    if not isinstance(text, str):
        raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(tokens: np.ndarray) -> str:
    """Inverse of :func:`encode` (invalid UTF-8 sequences are replaced).

    >>> decode([104, 105])
    'hi'
    """
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")


def token_splits(heldout_every: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(train_tokens, heldout_tokens)``: :func:`text_splits` encoded with :func:`encode`.

    >>> tr, he = token_splits(); tr.dtype, int(tr.max()) < 256
    (dtype('int32'), True)
    """
    train, held = text_splits(heldout_every)
    return encode(train), encode(held)


def sequences(tokens: np.ndarray, seq_len: int, *, max_sequences: int | None = None) -> np.ndarray:
    """Non-overlapping windows of ``seq_len + 1`` tokens (inputs + next-token targets), ``(n, seq_len + 1)``.

    Deterministic: the first ``max_sequences`` windows, evenly spaced over the whole stream when fewer
    than all are asked for.

    >>> sequences(np.arange(10), 3).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"sequences: seq_len must be a positive int, got {seq_len!r}")
    tokens = np.asarray(tokens)
    n = len(tokens) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"sequences: {len(tokens)} tokens are fewer than one window of {seq_len + 1}")
    windows = tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    if max_sequences is not None and max_sequences < n:
        if max_sequences < 1:
            raise ValueError(f"sequences: max_sequences must be >= 1, got {max_sequences!r}")
        idx = np.linspace(0, n - 1, max_sequences).round().astype(int)
        windows = windows[idx]
    return windows


def lm_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int | None = 0, epochs: int | None = 1
) -> Iterator[np.ndarray]:
    """Batches ``(batch_size, seq_len + 1)`` of random-offset windows of ``tokens`` (``seed=None``: in order).

    With a seed every epoch starts at a new random offset and shuffles the
    windows; the last incomplete batch of an epoch is dropped. ``epochs=None``
    repeats forever.

    >>> b = next(lm_batches(np.arange(100), 4, 2)); b.shape
    (2, 5)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"lm_batches: batch_size must be a positive int, got {batch_size!r}")
    tokens = np.asarray(tokens)
    rng = np.random.default_rng(seed) if seed is not None else None
    epoch = 0
    while epochs is None or epoch < epochs:
        off = int(rng.integers(0, seq_len + 1)) if rng is not None else 0
        w = sequences(tokens[off:], seq_len)
        if rng is not None:
            w = w[rng.permutation(len(w))]
        if len(w) < batch_size:
            raise ValueError(f"lm_batches: {len(w)} windows of {seq_len + 1} tokens, fewer than batch_size")
        for i in range(0, len(w) - batch_size + 1, batch_size):
            yield w[i : i + batch_size]
        epoch += 1
