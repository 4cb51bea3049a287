"""Key-path helpers: address the leaves of *any* pytree by a "/"-joined path.

Works for nested dicts, ``flax.core.FrozenDict``, Linen variable dicts,
``nnx.State`` (the trailing ``.value`` of a Variable is dropped from the path),
lists/tuples and registered dataclasses. Nothing here assumes a flat dict.

Masks and per-leaf settings are pytrees with the *same structure* as the
params, holding ``None`` at leaves that are not pruned. Use :func:`is_none`
as ``is_leaf`` when mapping over such trees.

Example:
  >>> import jax.numpy as jnp
  >>> params = {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)}}
  >>> [p for p, _ in leaves_with_paths(params)]
  ['dense/bias', 'dense/kernel']
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
import types
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from jaxprune._src.types import PyTree

Rules = Sequence[tuple[str, Any]]

__all__ = [
    "is_none",
    "path_str",
    "leaves_with_paths",
    "map_with_path",
    "match_rules",
    "rule_tree",
    "prunable_tree",
    "check_same_structure",
    "check_no_none_leaves",
    "first_structure_difference",
    "DEFAULT_EXCLUDE",
    "warn_once_per_call",
]

#: Leaves whose path matches this regex are never pruned by default:
#: biases, norm scales and statistics, and position / class-token tables.
DEFAULT_EXCLUDE = (
    r"(^|/)(bias|scale|mean|var|running_mean|running_var|"
    r"pos_embed\w*|position_embeddings?|pos_embedding|posemb\w*|"
    r"cls|cls_token|class_token|token_type_embeddings)$"
)


def is_none(x: Any) -> bool:
    """``is_leaf`` predicate that treats ``None`` as a leaf (masks use None)."""
    return x is None


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(keypath: Sequence[Any]) -> str:
    """Joins a JAX key path into ``"a/b/0/kernel"``.

    The ``.value`` attribute that ``nnx.State`` adds under each Variable is
    dropped, so NNX and Linen trees of the same model give the same paths.
    """
    names = [_key_name(k) for k in keypath]
    if names and isinstance(keypath[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names = names[:-1]
    return "/".join(names)


def leaves_with_paths(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """Returns ``[(path, leaf), ...]`` in ``jax.tree`` flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(p), leaf) for p, leaf in flat]


def map_with_path(fn: Callable[..., Any], tree: PyTree, *rest: PyTree, is_leaf=None) -> PyTree:
    """``jax.tree.map`` whose ``fn`` also receives the leaf's "/"-joined path first."""
    return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_str(p), x, *r), tree, *rest, is_leaf=is_leaf)


def _compile_rules(rules: Rules | None, name: str = "rules") -> list[tuple[re.Pattern, Any]]:
    if rules is None:
        return []
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
        raise TypeError(f"{name} must be a list of (regex, value) pairs, got {type(rules).__name__}")
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise TypeError(f"{name}[{i}] must be a (regex: str, value) pair, got {rule!r}")
        try:
            compiled.append((re.compile(rule[0]), rule[1]))
        except re.error as e:
            raise ValueError(f"{name}[{i}]: invalid regex {rule[0]!r}: {e}") from None
    return compiled


_NO_MATCH = object()


def match_rules(path: str, rules: Rules | None, default: Any = None) -> Any:
    """Value of the first ``(regex, value)`` rule whose regex ``re.search``-es ``path``.

    Like big_vision's per-parameter rules: order matters, first match wins.

    >>> match_rules('block1/conv/kernel', [('head', 0.0), ('conv', 0.9)], default=0.5)
    0.9
    """
    for pattern, value in _compile_rules(rules):
        if pattern.search(path):
            return value
    return default


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_WARNED: contextvars.ContextVar[set | None] = contextvars.ContextVar("jaxprune_unmatched_rules_warned", default=None)


@contextlib.contextmanager
def warn_once_per_call() -> Iterator[None]:
    """Within this block, each distinct unmatched-rule warning is emitted once.

    Public entry points that check the same rules several times (e.g. :func:`jaxprune.prune`)
    wrap their body in it; nested blocks share the outermost block's record.
    """
    if _WARNED.get() is not None:
        yield
        return
    token = _WARNED.set(set())
    try:
        yield
    finally:
        _WARNED.reset(token)


def _user_stacklevel() -> int:
    """``stacklevel`` pointing at the first frame outside the jaxprune package (the user's call)."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn_unmatched(message: str) -> None:
    """Emits ``message`` as a ``UserWarning`` attributed to the user's call (once per :func:`warn_once_per_call`)."""
    seen = _WARNED.get()
    if seen is not None:
        if message in seen:
            return
        seen.add(message)
    warnings.warn(message, UserWarning, stacklevel=_user_stacklevel())


def rule_tree(
    tree: PyTree,
    rules: Rules | None,
    default: Any = None,
    *,
    strict: bool = False,
    name: str = "rules",
    prunable: Any = None,
    warn: bool = True,
) -> PyTree:
    """Pytree with, at each leaf, the value of the first matching rule (else ``default``).

    A rule whose regex matches no leaf path is almost always a typo (``'hed'``
    for ``'head'``), so it never passes silently: by default it emits a
    ``UserWarning`` naming the regex and listing the available paths; with
    ``strict=True`` it raises ``ValueError`` instead. ``warn=False`` silences
    the warning (for internal re-evaluations of rules already checked).

    ``prunable`` restricts the rules to prunable leaves (others get ``default``),
    which is how sparsity rules are applied (a rule ``('conv', 0.8)`` must not
    reach the conv layer's bias): ``True`` = the default prunable set of
    :func:`prunable_tree`, a list of ``(regex, bool)`` rules, or a bool pytree.
    ``None`` (default) applies the rules to every leaf (generic per-leaf values).

    >>> import jax.numpy as jnp
    >>> p = {'conv': {'kernel': jnp.ones((3, 3)), 'bias': jnp.ones(3)}}
    >>> rule_tree(p, [('conv', 0.8)], prunable=True)
    {'conv': {'bias': None, 'kernel': 0.8}}
    """
    compiled = _compile_rules(rules, name)
    used = [False] * len(compiled)
    ok_paths = None
    if prunable is not None and prunable is not False:
        if prunable is True:
            prunable = None
        if prunable is None or isinstance(prunable, (list, tuple)):
            prunable = prunable_tree(tree, prunable)
        else:
            check_same_structure(tree, prunable, what="prunable", check_shapes=False)
        ok_paths = {p for p, ok in leaves_with_paths(prunable, is_leaf=is_none) if ok}

    def pick(path, _):
        if ok_paths is not None and path not in ok_paths:
            return default
        for i, (pattern, value) in enumerate(compiled):
            if pattern.search(path):
                used[i] = True
                return value
        return default

    out = map_with_path(pick, tree)
    unused = [compiled[i][0].pattern for i, u in enumerate(used) if not u]
    if unused and (strict or warn):
        paths = [p for p, _ in leaves_with_paths(tree)]
        if ok_paths is None:
            message = f"{name}: regex {unused} matched no leaf path, so it has no effect (a typo?)"
        else:
            message = (
                f"{name}: regex {unused} matched no prunable leaf path, so it has no effect (a typo, or a rule "
                "for biases/norms, which are not pruned?)"
            )
            paths = [p for p in paths if p in ok_paths]
        message += f". Available paths: {paths[:20]}" + (" ..." if len(paths) > 20 else "")
        if strict:
            raise ValueError(message)
        warn_unmatched(message + ". Pass strict=True to make this an error")
    return out


def _is_bool_leaf(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return isinstance(leaf, (bool, np.bool_))
    try:
        return np.dtype(dtype) == np.bool_
    except TypeError:
        return False


def _default_prunable(path: str, leaf: Any) -> bool:
    return np.ndim(leaf) >= 2 and not _is_bool_leaf(leaf) and re.search(DEFAULT_EXCLUDE, path) is None


def prunable_tree(params: PyTree, rules: Rules | None = None, *, strict: bool = False) -> PyTree:
    """Bool pytree: which leaves are pruned.

    By default, leaves with ``ndim >= 2`` (kernels, embeddings) are prunable;
    biases, norm scales/statistics and position/class-token tables are not
    (see :data:`DEFAULT_EXCLUDE`), nor are boolean leaves (flags, masks).
    ``rules`` is a list of ``(regex, bool)``; the first rule matching a leaf's
    path decides, else the default applies. A rule marking a boolean leaf
    prunable raises ``TypeError`` naming it. A rule matching no leaf warns
    (``UserWarning``), or raises ``ValueError`` with ``strict=True``.

    >>> import jax.numpy as jnp
    >>> params = {'conv': {'kernel': jnp.ones((3, 3, 2, 4))}, 'head': {'kernel': jnp.ones((4, 2))}}
    >>> prunable_tree(params, rules=[('head', False)])
    {'conv': {'kernel': True}, 'head': {'kernel': False}}
    """
    decided = rule_tree(params, rules, default=_NO_MATCH, strict=strict, name="prunable rules")

    def pick(path, leaf, rule):
        if rule is _NO_MATCH:
            return _default_prunable(path, leaf)
        if not isinstance(rule, (bool, np.bool_)):
            raise TypeError(f"prunable rules must map to bool, got {rule!r} for leaf {path!r}")
        if rule and _is_bool_leaf(leaf):
            raise TypeError(
                f"prunable rules mark leaf {path!r} prunable, but it is a boolean array "
                "(flags/masks are not weights and cannot be pruned)"
            )
        return bool(rule)

    return map_with_path(pick, params, decided)


def check_same_structure(
    params: PyTree, other: PyTree, what: str = "masks", *, allow_none: bool = True, check_shapes: bool = True
) -> None:
    """Raises ``ValueError`` naming the first path where ``other`` differs from ``params``.

    ``other`` may hold ``None`` at leaves (when ``allow_none``); array leaves
    must have the param's shape.
    """
    p_leaves = leaves_with_paths(params)
    o_leaves = leaves_with_paths(other, is_leaf=is_none if allow_none else None)
    p_paths = [p for p, _ in p_leaves]
    o_paths = [p for p, _ in o_leaves]
    if p_paths != o_paths:
        missing = sorted(set(p_paths) - set(o_paths))
        extra = sorted(set(o_paths) - set(p_paths))
        raise ValueError(
            f"{what} do not have the structure of params: missing paths {missing[:10]}, unexpected paths {extra[:10]}"
        )
    if check_shapes:
        for (path, p), (_, o) in zip(p_leaves, o_leaves):
            if o is None:
                continue
            if np.shape(o) != np.shape(p):
                raise ValueError(
                    f"{what} leaf {path!r} has shape {np.shape(o)}, expected the param's shape {np.shape(p)}"
                )


def check_no_none_leaves(tree: PyTree, what: str = "params") -> None:
    """Raises ``ValueError`` naming the first leaf of ``tree`` that is ``None``.

    JAX treats ``None`` as an empty subtree, so a ``None`` in params would
    otherwise surface later as a confusing structure mismatch.
    """
    for path, leaf in leaves_with_paths(tree, is_leaf=is_none):
        if leaf is None:
            raise ValueError(
                f"{what} leaf {path!r} is None; {what} must hold arrays at every leaf "
                "(remove the entry, or use an empty array)"
            )


def first_structure_difference(a: PyTree, b: PyTree, is_leaf=None) -> str | None:
    """A readable description of the first path where pytrees ``a`` and ``b`` differ, or None."""
    pa = leaves_with_paths(a, is_leaf=is_leaf)
    pb = leaves_with_paths(b, is_leaf=is_leaf)
    for (x, _), (y, _) in zip(pa, pb):
        if x != y:
            return f"path {x!r} vs {y!r}"
    if len(pa) != len(pb):
        longer, tag = (pa, "first") if len(pa) > len(pb) else (pb, "second")
        return f"path {longer[min(len(pa), len(pb))][0]!r} only in the {tag} tree"
    if jax.tree.structure(a, is_leaf=is_leaf) != jax.tree.structure(b, is_leaf=is_leaf):  # type: ignore[operator]
        return "same leaf paths but different container types"
    return None
