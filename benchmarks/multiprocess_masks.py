"""Mask computation, planning and shrink on a simulated 2-process mesh vs one process, same 4 devices.

Three configurations run the same calls on an MLP stack (``--quick``: 3 x
256x256, ~0.2M params; default 4 x 1024x1024, ~4.2M params) whose kernels
are sharded ``('data', 'model')`` over a 2x2 mesh:

* ``1 process x 4 devices``: one process, 4 fake CPU devices (the existing
  single-process sharded path);
* ``2 processes x 2 devices``: two processes joined by
  ``jax.distributed.initialize`` on localhost with gloo CPU collectives
  (``tests/multiprocess_harness.py``): the same 2x2 mesh, but every
  cross-process reduction goes through gloo over TCP and each process holds
  only its shards;
* ``1 process x 1 device``: no mesh at all (the host fast path), for scale.

Timed (median of ``--repeats`` interleaved warm rounds after a first
compile+run call, every process synchronised before each call):
``jit(layerwise_masks)`` and ``jit(global_masks)`` at 90%, eager
``prune(scope='global')``, ``make_plan`` (``round_to=2`` everywhere; group
scores reduced on device to replicated vectors when the params span
processes) and ``shrink_sharded``.
An on-device checksum of every mask and the plan JSON must be identical in
all configurations (recorded as ``identical``).

On this machine all "devices" and processes share the same CPU cores, and
other jobs may load them (``os.getloadavg()`` is recorded): the figures show
the overhead of the multi-process runtime (gloo collectives, per-process
dispatch), not a multi-host speedup.

  python benchmarks/multiprocess_masks.py --out runs/multiprocess_masks
  python benchmarks/multiprocess_masks.py --quick --out /tmp/mpm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

CONFIGS = [("1 process x 1 device", 1, 1), ("1 process x 4 devices", 1, 4), ("2 processes x 2 devices", 2, 2)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="output directory: results.json, results.md, multiprocess_masks.png")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 repeats: a CPU smoke run for CI (< 60 s idle)")
    p.add_argument("--repeats", type=int, default=None, help="warm rounds (default 3; 2 with --quick)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration before giving up")
    return p.parse_args(argv)


def run_config(name: str, nproc: int, ndev: int, quick: bool, repeats: int, timeout: float) -> dict:
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from multiprocess_harness import run_workers  # test-only harness: starts the worker processes

    mesh = [2, 2] if ndev * nproc == 4 else [1, 1]
    t = time.perf_counter()
    res = run_workers(
        "bench",
        num_processes=nproc,
        devices_per_process=ndev,
        args={"mesh": mesh, "quick": quick, "repeats": repeats, "round_to": 2},
        timeout=timeout,
    )
    wall = time.perf_counter() - t
    r0 = res[0].result
    # per call, the slowest process (a collective program finishes when all of them do)
    warm = {k: max(r.result["warm_median_s"][k] for r in res) for k in r0["warm_median_s"]}
    first = {k: max(r.result["first_call_s"][k] for r in res) for k in r0["first_call_s"]}
    same_in_processes = all(
        r.result["mask_checksums"] == r0["mask_checksums"] and r.result["plan"] == r0["plan"] for r in res
    )
    return {
        "config": name,
        "processes": nproc,
        "devices_per_process": ndev,
        "mesh": mesh,
        "n_params": r0["n_params"],
        "warm_median_s": warm,
        "first_call_s": first,
        "mask_checksums": r0["mask_checksums"],
        "plan_sha": hash_text(r0["plan"]),
        "same_in_every_process": same_in_processes,
        "job_wall_s": wall,
        "loadavg_in_job": r0["loadavg"],
    }


def hash_text(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()[:16]


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    calls = list(rows[0]["warm_median_s"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar(np.arange(len(calls)) + i * w, [r["warm_median_s"][c] * 1e3 for c in calls], w, label=r["config"])
    ax.set_xticks(np.arange(len(calls)) + w * (len(rows) - 1) / 2)
    ax.set_xticklabels(calls, rotation=15, fontsize=8)
    ax.set_ylabel("warm median (ms)")
    ax.set_yscale("log")
    ax.set_title(f"masks / plan / shrink, {rows[0]['n_params'] / 1e6:.1f}M params (loaded 2-core CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    os.makedirs(args.out, exist_ok=True)
    load_before = list(os.getloadavg())
    rows = [run_config(n, p, d, args.quick, repeats, args.timeout) for n, p, d in CONFIGS]
    identical = all(
        r["mask_checksums"] == rows[0]["mask_checksums"] and r["plan_sha"] == rows[0]["plan_sha"] for r in rows
    ) and all(r["same_in_every_process"] for r in rows)
    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _benchlib import environment

    result = {
        "benchmark": "multiprocess_masks",
        "env": environment(),
        "quick": args.quick,
        "repeats": repeats,
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": list(os.getloadavg()),
        "identical": identical,
        "configs": rows,
        "note": "all processes and fake devices share this machine's CPU cores; other jobs were running",
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, os.path.join(args.out, "multiprocess_masks.png"))
    calls = list(rows[0]["warm_median_s"])
    lines = [
        f"# Masks, plan and shrink: 2 processes vs 1 ({rows[0]['n_params'] / 1e6:.2f}M params)",
        "",
        f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average before {load_before}, after "
        f"{result['loadavg_after']}; warm = median of {repeats} interleaved rounds (ms), first = compile + run (s). "
        f"Masks (on-device checksums) and plan identical in every configuration and process: **{identical}**.",
        "",
        "| call | " + " | ".join(f"{r['config']} warm ms | first s" for r in rows) + " |",
        "|---|" + "---|---|" * len(rows),
    ]
    for c in calls:
        cells = " | ".join(f"{r['warm_median_s'][c] * 1e3:.1f} | {r['first_call_s'][c]:.2f}" for r in rows)
        lines.append(f"| {c} | {cells} |")
    lines += ["", "| config | job wall s (start, jax import, init, all calls) |", "|---|---|"]
    lines += [f"| {r['config']} | {r['job_wall_s']:.1f} |" for r in rows]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
