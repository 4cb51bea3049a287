"""Shared helpers of the benchmark scripts: environment record, timing, memory, output files.

Not a benchmark itself (it lives in a folder so that ``benchmarks/*.py`` lists only scripts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402


def parser(doc: str, default_out: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares (``--out``, ``--quick``)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n")[0], epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=default_out, help="output directory: results.json and results.md are written there")
    p.add_argument("--quick", action="store_true", help="CPU smoke run on tiny models (< 60 s), for CI")
    return p


def environment() -> dict:
    """Backend, device, versions, CPU count and load: what every result JSON records."""
    import flax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every OS
        load = None
    return dict(
        backend=jax.default_backend(),
        device=str(dev),
        device_kind=getattr(dev, "device_kind", None),
        device_count=jax.device_count(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        flax=flax.__version__,
        optax=optax.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        load_avg_1_5_15=load,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def median_time(fn: Callable, args: tuple, reps: int, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn(*args)`` (``block_until_ready``) after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved_times(calls: dict, reps: int, warmup: int = 2) -> dict:
    """``{name: median seconds}`` of ``fn(*args)`` for ``calls = {name: (fn, args)}``, timed in rounds.

    Each round calls every function once (in order), so a change of machine load during the
    measurement affects all of them alike; ratios between them are then more stable.
    """
    for fn, args in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times: dict = {k: [] for k in calls}
    for _ in range(max(reps, 1)):
        for k, (fn, args) in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def timed(fn: Callable, *args: Any) -> tuple[Any, float]:
    """``(fn(*args), seconds)`` with the result blocked on."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def compile_timed(fn: Callable, *args: Any):
    """``(compiled, lower+compile seconds)`` of ``jax.jit(fn)`` for ``args``."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def compiled_flops(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    f = (ca or {}).get("flops")
    return None if f is None else float(f)


def compiled_memory(compiled) -> dict | None:
    """XLA's static memory plan of a compiled function (bytes), or None if the backend gives none.

    ``peak_estimate`` = arguments + outputs + temporaries - aliased (donated) bytes.
    """
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not implemented on some backends)
        return None
    if ma is None:
        return None
    d = {
        k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0)
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    d["peak_estimate"] = d["argument"] + d["output"] + d["temp"] - d["alias"]
    return d


def device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of the default device, or None where the backend reports no stats (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    v = stats.get("peak_bytes_in_use")
    return None if v is None else int(v)


def write(out_dir: str, result: dict, markdown: str) -> None:
    """Writes ``results.json`` and ``results.md`` to ``out_dir`` (created)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2, default=_json_default)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown.rstrip() + "\n")
    print(f"wrote {out_dir}/results.json and results.md", flush=True)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def env_line(env: dict) -> str:
    return (
        f"backend `{env['backend']}` ({env['device']}, {env['device_kind']}), jax {env['jax']}, "
        f"{env['cpu_count']} CPUs, load average {env['load_avg_1_5_15']}, {env['date']}"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def random_variables(model, seed: int = 0, batch: int = 1):
    """The model's variables filled with Gaussian noise / ones (no init compile: fast for big models).

    Kernels ~ N(0, 1/fan_in); ``scale``/``var`` leaves 1; biases and ``mean`` 0.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.example_input(batch))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if s.ndim >= 2:
            fan_in = int(np.prod(s.shape[:-1]))
            return jax.device_put(rng.standard_normal(s.shape, dtype=np.float32) / np.sqrt(fan_in))
        if "scale" in name or "var" in name:
            return jax.device_put(np.ones(s.shape, s.dtype))
        return jax.device_put(
            np.zeros(s.shape, s.dtype) + rng.standard_normal(s.shape).astype(s.dtype) * 0.01
            if "bias" in name
            else np.zeros(s.shape, s.dtype)
        )

    return jax.tree_util.tree_map_with_path(fill, shapes)


def train_step(model, tx):
    """``step(variables, opt_state, x, y) -> (variables, opt_state, loss)``: cross-entropy, BatchNorm stats.

    ``model`` follows the ``jaxprune.models`` convention (``apply(v, x, train=, mutable=)``).
    """
    import optax

    def step(variables, opt_state, x, y):
        params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

        def loss_fn(p):
            if rest:
                logits, new_rest = model.apply({"params": p, **rest}, x, train=True, mutable=list(rest))
            else:
                logits, new_rest = model.apply({"params": p}, x, train=True), {}
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_rest

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return {"params": optax.apply_updates(params, updates), **new_rest}, opt_state, loss

    return step
