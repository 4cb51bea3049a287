"""Shrink an NNX model: merge the shrunk state, fix the modules' width attributes, verify.

``nnx.merge(graphdef, shrunk_state)`` accepts arrays of new shapes, but many
modules read their widths from attributes (``nnx.MultiHeadAttention`` and
user attention modules reshape with ``num_heads``, ``nnx.GroupNorm`` with
``num_groups``, ``nnx.Conv`` checks ``in_features``). :func:`shrink_nnx`
re-derives them from the shrunk parameters for the built-in modules, applies a
generic ``num_heads``/``head_dim``/``num_kv_heads`` rule to custom modules,
runs the user's ``fixes``, and, given example inputs, checks the result
against the masked dense model, so that it never returns a silently broken
module.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxprune._src.masks import apply_masks
from jaxprune._src.structured.prune_plan import PrunePlan
from jaxprune._src.structured.shrink import plan_to_masks, shrink

__all__ = ["shrink_nnx", "fix_nnx_attributes"]

_NORMS = (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.InstanceNorm)
_CONTAINERS = tuple(c for c in (getattr(nnx, n, None) for n in ("Sequential", "List", "Dict")) if c is not None)
#: classes whose width attributes :func:`fix_nnx_attributes` derives itself
_BUILTINS = (
    (
        nnx.Linear,
        nnx.LinearGeneral,
        nnx.Conv,
        nnx.ConvTranspose,
        nnx.Einsum,
        nnx.Embed,
        nnx.GroupNorm,
        nnx.MultiHeadAttention,
    )
    + _NORMS
    + _CONTAINERS
)
_HEAD_ATTRS = ("num_heads", "head_dim", "num_kv_heads")


def _shape(module, name):
    v = getattr(module, name, None)
    return None if v is None or not hasattr(v, "shape") else tuple(v.shape)


def _set(module, name, value) -> None:
    if hasattr(module, name) and value is not None:
        setattr(module, name, value)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _group_path(g: dict) -> str:
    return g["name"].rsplit("[", 1)[0]  # 'attn/qkv/kernel[1]' -> 'attn/qkv/kernel'


def _groups_under(plan: PrunePlan | None, path: str, kind: str) -> list[dict]:
    if plan is None:
        return []
    return [g for g in plan.groups if g["kind"] == kind and _group_path(g).startswith(_join(path, ""))]


# ------------------------------------------------------------------------- per-module rules
def _fix_conv(m, path, plan) -> None:
    k, groups = _shape(m, "kernel"), m.feature_group_count
    kept = plan.leaves.get(_join(path, "kernel"), {}).get(len(k) - 1) if plan else None
    if groups > 1:
        per_group = m.out_features // groups  # the old attributes: nnx.merge does not touch them
        groups = len({i // per_group for i in kept}) if kept is not None else max(1, k[-1] // per_group)
    if getattr(m, "mask", None) is not None and plan and tuple(np.shape(m.mask)) != k:  # a static mask array
        mask = m.mask
        for ax, idx in plan.leaves.get(_join(path, "kernel"), {}).items():
            mask = np.take(np.asarray(mask), idx, axis=ax)
        m.mask = mask
    _set(m, "feature_group_count", groups)
    _set(m, "in_features", k[-2] * groups)
    _set(m, "out_features", k[-1])
    _set(m, "kernel_shape", k)


def _fix_group_norm(m, path, plan) -> str | None:
    c = next((s[-1] for s in (_shape(m, "scale"), _shape(m, "bias")) if s), None)
    if c is None:
        return "GroupNorm without scale or bias: its width cannot be read from params"
    gs = m.group_size  # the old one: nnx.merge does not touch attributes
    kept = next(
        (
            plan.leaves[p][0]
            for p in (_join(path, "scale"), _join(path, "bias"))
            if plan and 0 in plan.leaves.get(p, {})
        ),
        None,
    )
    per_group = np.bincount(np.asarray(kept) // gs, minlength=m.num_groups) if kept is not None else None
    if per_group is not None and len(set(per_group[per_group > 0].tolist())) == 1:
        new_gs = int(per_group.max())  # whole groups dropped (the tracer's case) or each group thinned alike
    elif c % gs == 0:
        new_gs = gs
    else:
        return f"GroupNorm: {c} channels kept do not split into groups (old group size {gs})"
    m.num_groups, m.group_size = c // new_gs, new_gs
    _set(m, "num_features", c)
    return None


def _fix_mha(m) -> None:
    q, k, o = _shape(m.query, "kernel"), _shape(m.key, "kernel"), _shape(m.out, "kernel")
    m.in_features, m.num_heads, m.head_dim = q
    m.qkv_features = q[1] * q[2]
    _set(m, "in_kv_features", k[0])
    _set(m, "num_kv_heads", k[1])
    m.out_features = o[-1]


def _fix_heads(m, path, plan) -> str | None:
    """The generic rule for a custom module with int ``num_heads`` (and maybe ``head_dim``, ``num_kv_heads``)."""
    q = _shape(getattr(m, "query", None), "kernel")
    kv = _shape(getattr(m, "key", None), "kernel")
    if q is not None and len(q) == 3:  # query/key/value children with (in, heads, head_dim) kernels
        m.num_heads = q[1]
        _set(m, "head_dim", q[2])
        if kv is not None and len(kv) == 3 and _is_int(getattr(m, "num_kv_heads", None)):
            m.num_kv_heads = kv[1]
        return None
    new, notes = {}, []
    old = {a: getattr(m, a) for a in _HEAD_ATTRS if _is_int(getattr(m, a, None))}
    gqa = "num_kv_heads" in old and old["num_kv_heads"] != old["num_heads"]
    for attr, kind in (("num_heads", "heads"), ("num_kv_heads", "heads"), ("head_dim", "head_dim")):
        if attr not in old or (attr == "num_kv_heads" and not gqa):
            continue
        groups = _groups_under(plan, path, kind)
        counts = {len(g["kept"]) for g in groups if g["size"] == old[attr]}
        if len(counts) == 1:
            new[attr] = counts.pop()
        elif groups and not (attr == "num_heads" and gqa):
            notes.append(
                f"{attr}={old[attr]}: ambiguous, the pruned {kind} groups under it have (size, kept) "
                f"{[(g['size'], len(g['kept'])) for g in groups]}"
            )
    if gqa and "num_kv_heads" in new and "num_heads" not in new:
        new["num_heads"] = old["num_heads"] // old["num_kv_heads"] * new["num_kv_heads"]
    for a, v in new.items():
        setattr(m, a, v)
    return "; ".join(notes) or None


def _fix_one(m, path, plan) -> str | None:
    if isinstance(m, nnx.MultiHeadAttention):
        _fix_mha(m)
    elif isinstance(m, (nnx.Conv, nnx.ConvTranspose)):
        if isinstance(m, nnx.Conv):
            _fix_conv(m, path, plan)
        else:
            k = _shape(m, "kernel")
            m.kernel_shape = k
            m.in_features, m.out_features = (k[-1], k[-2]) if m.transpose_kernel else (k[-2], k[-1])
    elif isinstance(m, nnx.LinearGeneral):
        k, nb = _shape(m, "kernel"), len(m.batch_axis)
        n_in = len(m.in_features)
        m.in_features, m.out_features = k[nb : nb + n_in], k[nb + n_in :]
        if nb:
            m.batch_axis = type(m.batch_axis)(zip(m.batch_axis.keys(), k[:nb]))
    elif isinstance(m, nnx.Linear):
        m.in_features, m.out_features = _shape(m, "kernel")
    elif isinstance(m, nnx.Einsum):
        m.kernel_shape = _shape(m, "kernel")
        _set(m, "bias_shape", _shape(m, "bias"))
    elif isinstance(m, nnx.Embed):
        m.num_embeddings, m.features = _shape(m, "embedding")
    elif isinstance(m, nnx.GroupNorm):
        return _fix_group_norm(m, path, plan)
    elif isinstance(m, _NORMS):
        s = _shape(m, "scale") or _shape(m, "bias") or _shape(m, "mean")
        if s is not None and len(s) == 1:
            _set(m, "num_features", s[0])
    elif _is_int(getattr(m, "num_heads", None)):
        return _fix_heads(m, path, plan)
    return None


def _find_fix(fixes: Mapping[type, Callable] | None, m) -> Callable | None:
    for cls in type(m).__mro__:
        if fixes and cls in fixes:
            return fixes[cls]
    return None


def fix_nnx_attributes(
    root: nnx.Module, plan: PrunePlan | None = None, *, fixes: Mapping[type, Callable] | None = None
) -> dict[str, str]:
    """Re-derives the width attributes of every sub-module of a shrunk ``root`` from its params, in place.

    ``root`` is ``nnx.merge(graphdef, shrink(state, plan))``: its attributes
    still hold the old widths. ``plan`` (optional, recommended) lets the
    generic ``num_heads`` rule and ``GroupNorm`` read which units were kept.
    ``fixes={ModuleType: fn(module, path, plan)}`` then runs for every module
    of that type (or a subclass); ``path`` is like ``'blocks/0/attn'``
    (``''`` for ``root``). Returns ``{path: why}`` for the modules whose
    attributes could not be derived unambiguously.

    >>> import jaxprune as jp
    >>> from flax import nnx
    >>> m = nnx.Linear(2, 8, rngs=nnx.Rngs(0))
    >>> m.kernel = nnx.Param(m.kernel[...][:, :4]); m.bias = nnx.Param(m.bias[...][:4])
    >>> jp.fix_nnx_attributes(m), m.out_features
    ({}, 4)
    """
    if plan is not None and not isinstance(plan, PrunePlan):
        plan = None  # legacy second argument (a dict of old attributes): the merged module still holds them
    notes = {}
    for path_t, m in nnx.iter_modules(root):
        path = "/".join(map(str, path_t))
        why = _fix_one(m, path, plan)
        fn = _find_fix(fixes, m)
        if fn is not None:
            fn(m, path, plan)
        elif why:
            notes[path] = why
    return notes


# ------------------------------------------------------------------------------ verification
def _int_attrs(m) -> dict[str, int]:
    return {a: v for a, v in vars(m).items() if not a.startswith("_") and _is_int(v)}


def _suspects(new: nnx.Module, plan: PrunePlan, before: dict, notes: dict, fixes) -> str:
    """Names the modules whose width attributes may be wrong, the likeliest first."""
    stale, unknown = [f"{p or '<root>'!r}: {why}" for p, why in notes.items()], []
    for path_t, m in nnx.iter_modules(new):
        path = "/".join(map(str, path_t))
        pre = _join(path, "")
        old_sizes = {
            o[a] for p, (o, n) in plan.shapes.items() if p.startswith(pre) for a in range(len(o)) if o[a] != n[a]
        }
        if not old_sizes or type(m) in _BUILTINS or path in notes:
            continue  # no param under it was shrunk, or a module whose attributes were derived
        old_sizes |= {g["size"] for g in plan.groups if _group_path(g).startswith(pre)}
        name = f"{path or '<root>'!r} ({type(m).__name__})"
        now = _int_attrs(m)
        bad = [f"{a}={v}" for a, v in now.items() if v in old_sizes and before[path].get(a) == v]
        if bad:
            stale.append(f"{name}: {', '.join(bad)} (an old size of a shrunk axis or group)")
        else:
            done = [f"{a} {before[path][a]}->{v}" for a, v in now.items() if before[path].get(a, v) != v]
            unknown.append(
                f"{name}: custom module"
                + (f", set: {', '.join(done)}" if done else "")
                + (", has a fixes= entry" if _find_fix(fixes, m) else "")
            )
    if stale:
        return "\n  ".join(["Width attributes that could not be derived:"] + stale)
    if unknown:
        head = (
            "No stale width attribute found; custom modules whose params were shrunk (their code may "
            "compute a width another way, e.g. from an input shape):"
        )
        return "\n  ".join([head] + unknown)
    return (
        "No module with underivable width attributes was found; the difference may come from the plan "
        "itself (pruning 'head_dim' changes the 1/sqrt(head_dim) attention scale; pruning through a "
        "normalization changes its statistics)."
    )


def _compare(out, ref, atol, rtol, shape_only) -> str | None:
    o, r = jax.tree.leaves(out), jax.tree.leaves(ref)
    if jax.tree.structure(out) != jax.tree.structure(ref):  # type: ignore[operator]  # jaxlib's PyTreeDef has no stubs
        return f"output structure {jax.tree.structure(out)} != dense {jax.tree.structure(ref)}"
    for i, (a, b) in enumerate(zip(o, r)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {i} is {a.dtype}{list(a.shape)}, dense {b.dtype}{list(b.shape)}"
        if not shape_only and not np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True):
            d = float(np.nanmax(np.abs(a.astype(np.float64) - b)))
            return f"output {i} differs from the masked dense model by up to {d:.3g} (atol={atol}, rtol={rtol})"
    return None


def _run(graphdef, state, args, kwargs):
    """``nnx.merge(graphdef, state)(*args, **kwargs)`` under ``jax.jit`` (non-array arguments are closed over)."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    is_arr = [isinstance(v, (jax.Array, np.ndarray)) for v in leaves]

    def call(state, arrays):
        it = iter(arrays)
        a, k = jax.tree.unflatten(tree, [next(it) if t else v for v, t in zip(leaves, is_arr)])
        return nnx.merge(graphdef, state)(*a, **k)

    return jax.jit(call)(state, [v for v, t in zip(leaves, is_arr) if t])


def shrink_nnx(
    module: nnx.Module,
    plan: PrunePlan,
    *example_args: Any,
    fix: Callable[[nnx.Module], None] | None = None,
    fixes: Mapping[type, Callable[[nnx.Module, str, PrunePlan], None]] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    **example_kwargs: Any,
) -> nnx.Module:
    """A new, smaller NNX module: ``module``'s state shrunk by ``plan``, its width attributes updated.

    ``module`` is not modified. The plan must address the leaves of
    ``nnx.split(module)[1]`` (trace ``lambda s, x: nnx.merge(graphdef, s)(x)``).

    Width attributes are derived from the shrunk params for ``Linear``,
    ``LinearGeneral``, ``Conv`` (grouped/depthwise too), ``ConvTranspose``,
    ``Einsum``, ``Embed``, ``BatchNorm``/``LayerNorm``/``RMSNorm``/
    ``InstanceNorm``/``GroupNorm`` and ``MultiHeadAttention``. A custom module
    with an int ``num_heads`` (and optionally ``head_dim``, ``num_kv_heads``)
    gets the kept counts of the plan's ``'heads'``/``'head_dim'`` groups rooted
    under it. Anything else: ``fixes={ModuleType: fn(module, path, plan)}``
    (``fix=fn(root)``, run last, is kept for backward compatibility).

    With ``example_args``/``example_kwargs``, the new module is run on them
    and compared with the masked dense model; if the call raises or the outputs
    differ beyond ``atol``/``rtol``, a ``ValueError`` names the modules whose
    widths could not be derived (if ``plan.meta['through_norms']``, only the
    output shapes and dtypes are compared). Without them, a ``UserWarning``
    says that the module was not verified. Verify in eval mode (no dropout).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxprune as jp
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.a, self.b = nnx.Linear(2, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)
      ...     def __call__(self, x): return self.b(jax.nn.relu(self.a(x)))
      >>> net = Net(nnx.Rngs(0)); graphdef, state = nnx.split(net); x = jnp.ones((1, 2))
      >>> g = jp.trace_groups(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
      >>> jp.shrink_nnx(net, jp.make_plan(state, g, 0.5), x).a.out_features
      4
    """
    graphdef, state = nnx.split(module)
    new = nnx.merge(graphdef, shrink(state, plan))
    before = {"/".join(map(str, p)): _int_attrs(m) for p, m in nnx.iter_modules(new)}
    notes = fix_nnx_attributes(new, plan, fixes=fixes)
    if fix is not None:
        fix(new)
    if not example_args and not example_kwargs:
        warnings.warn(
            "shrink_nnx: the shrunk module was not verified; pass example inputs, "
            "shrink_nnx(module, plan, x), to compare it with the masked dense model",
            UserWarning,
            stacklevel=2,
        )
        return new
    ref = _run(graphdef, apply_masks(state, plan_to_masks(state, plan)), example_args, example_kwargs)
    try:
        out = _run(*nnx.split(new), example_args, example_kwargs)  # functional: `new` keeps its state
        problem = _compare(out, ref, atol, rtol, bool(plan.meta.get("through_norms")))
        cause = None
    except Exception as e:  # noqa: BLE001  (re-raised below, chained)
        problem, cause = f"calling it raised {type(e).__name__}: {e}", e
    if problem is None:
        return new
    where = _suspects(new, plan, before, notes, fixes)
    raise ValueError(
        f"shrink_nnx: the shrunk module does not match the masked dense model: {problem}\n{where}\n"
        "Pass fixes={ModuleType: fn(module, path, plan)} to shrink_nnx to set such attributes "
        "(and call model.eval() first if it uses dropout)."
    ) from cause
