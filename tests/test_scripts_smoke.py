"""Every script answers --help; the demo runs end to end with --quick."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_help(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--out" in out.stdout and "--quick" in out.stdout


def test_demo_quick(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    result = demo.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["global magnitude 90%"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows["2:4 (N:M)"]["sparsity"] == pytest.approx(0.5)
    # Finetuning with the mask fixed recovers accuracy lost by pruning.
    assert rows["global magnitude 90%"]["acc_finetuned"] > rows["global magnitude 90%"]["acc_pruned"]
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "| dense |" in (tmp_path / "results.md").read_text()
    shrunk = rows["structured 50% (shrunk)"]  # a genuinely smaller model, finetuned at its new size
    assert shrunk["step_gflops"] < 0.5 * rows["dense"]["step_gflops"] and shrunk["params"] < rows["dense"]["params"]
    assert shrunk["acc_finetuned"] > shrunk["acc_pruned"]
    assert "study_a" not in result  # no chance-level study tail in the main job


def test_demo_runs_as_a_package_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxprune.demo", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0 and "--quick" in out.stdout
