"""Sparsity schedules: when masks are updated and to which sparsity.

A :class:`Schedule` is a NamedTuple of two jit-able functions of the step
counter (an int32 array) and the static final sparsity:

* ``sparsity(step)`` -> target sparsity at that step (float32 array),
* ``is_update(step)`` -> bool array, True on steps where masks are recomputed.

Factories: :func:`one_shot`, :func:`polynomial` (cubic GMP, Zhu & Gupta 2017),
:func:`periodic` (constant sparsity, masks refreshed every ``every`` steps,
e.g. RigL/SET), :func:`no_update` (masks fixed after init).

Example:
  >>> s = polynomial(0.9, begin=0, end=100, every=10)
  >>> float(s.sparsity(0)), round(float(s.sparsity(50)), 4), round(float(s.sparsity(100)), 4)
  (0.0, 0.7875, 0.9)
  >>> bool(s.is_update(10)), bool(s.is_update(15))
  (True, False)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._src.distributions import check_sparsity

__all__ = ["Schedule", "one_shot", "polynomial", "periodic", "no_update"]


class Schedule(NamedTuple):
    """When masks change (``is_update``) and to what sparsity (``sparsity``)."""

    sparsity: Callable[[jax.Array], jax.Array]
    is_update: Callable[[jax.Array], jax.Array]
    final_sparsity: float


def _check_step(value: int, name: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def one_shot(sparsity: float, step: int = 0) -> Schedule:
    """Prune once, at ``step``, to ``sparsity``; masks stay fixed afterwards."""
    sparsity = check_sparsity(sparsity)
    step = _check_step(step, "step")
    return Schedule(
        sparsity=lambda t: jnp.where(jnp.asarray(t) >= step, sparsity, 0.0).astype(jnp.float32),
        is_update=lambda t: jnp.asarray(t) == step,
        final_sparsity=sparsity,
    )


def polynomial(
    final_sparsity: float, *, begin: int, end: int, every: int, initial_sparsity: float = 0.0, power: float = 3.0
) -> Schedule:
    """Gradual (GMP) schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^power``.

    Updates happen at ``t = begin, begin + every, ...`` up to ``end``
    (inclusive when ``end - begin`` is a multiple of ``every``). Before
    ``begin`` the sparsity is ``initial_sparsity``; from ``end`` on it is final.
    """
    final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
    begin, every = _check_step(begin, "begin"), _check_step(every, "every", 1)
    end = _check_step(end, "end")
    if end <= begin:
        raise ValueError(f"end ({end}) must be > begin ({begin})")

    def sparsity(t):
        t = jnp.asarray(t, jnp.float32)
        # Sparsity only changes at update steps: hold the last update's value.
        t_upd = begin + jnp.floor((t - begin) / every) * every
        frac = jnp.clip((t_upd - begin) / (end - begin), 0.0, 1.0)
        s = final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** power
        return jnp.where(t < begin, initial_sparsity, s).astype(jnp.float32)

    def is_update(t):
        t = jnp.asarray(t)
        return (t >= begin) & (t <= end) & ((t - begin) % every == 0)

    return Schedule(sparsity, is_update, final_sparsity)


def periodic(sparsity: float, *, every: int, begin: int = 0, end: int | None = None) -> Schedule:
    """Constant ``sparsity``; masks recomputed every ``every`` steps in ``[begin, end)``.

    Used by drop-and-grow methods (RigL, SET) whose masks change at fixed
    sparsity. ``end=None`` means forever.
    """
    sparsity = check_sparsity(sparsity)
    every, begin = _check_step(every, "every", 1), _check_step(begin, "begin")
    if end is not None:
        _check_step(end, "end")

    def is_update(t):
        t = jnp.asarray(t)
        ok = (t >= begin) & ((t - begin) % every == 0)
        return ok if end is None else ok & (t < end)

    return Schedule(lambda t: jnp.full((), sparsity, jnp.float32), is_update, sparsity)


def no_update(sparsity: float = 0.0) -> Schedule:
    """Masks never change after ``init`` (fixed-mask finetuning)."""
    sparsity = check_sparsity(sparsity)
    return Schedule(lambda t: jnp.full((), sparsity, jnp.float32), lambda t: jnp.zeros((), bool), sparsity)
