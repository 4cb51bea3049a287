"""The Colab notebooks (colab/*.ipynb) run top to bottom on CPU with the small config and get the right results.

Each notebook is executed unmodified with nbclient on the ``python3`` Jupyter
kernel; parameters come through the environment (``JAXPRUNE_NB_SMALL=1``,
``JAXPRUNE_NB_OUT=<tmp>``), any cell error fails the test, and the results JSON
that the notebook writes is checked here (on top of the notebook's own closing
cell of asserts). The stored notebooks must equal what ``colab/_build.py``
generates, with outputs cleared.

Needs the ``test`` extra (nbclient, nbformat, ipykernel); nothing is installed here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import resource
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(p.stem for p in COLAB.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell; a whole notebook takes ~20-100 s on 2 busy CPU cores


def _jupyter():
    """nbclient and nbformat, and a 'python3' kernel spec, or a clear failure (nothing is installed here)."""
    try:
        import nbclient
        import nbformat
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as e:
        pytest.fail(f"the notebook tests need nbclient, nbformat and ipykernel (pip install -e '.[test]'): {e}")
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail(
            "no 'python3' Jupyter kernel spec in this environment: install ipykernel here "
            "(pip install -e '.[test]') or register one (python -m ipykernel install --user)"
        )
    return nbclient, nbformat


def _build_module():
    spec = importlib.util.spec_from_file_location("jaxprune_colab_build", COLAB / "_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------- checks
def _check_quickstart(r: dict) -> None:
    assert abs(r["mask_sparsity"] - 0.9) < 1e-3
    assert r["total_sparsity"] >= 0.9 - 1e-3 and r["pruned_nonzero"] == 0
    assert r["compilations"] == 1
    assert abs(r["nm_sparsity"] - 0.5) < 1e-6
    assert r["test_accuracy"] > 0.5


def _check_structured(r: dict) -> None:
    (resnet, res), (vit, vit_res) = list(r["models"].items())
    assert "ResNet" in resnet and "ViT" in vit
    assert res["flops_ratio"] > 2.5 and vit_res["flops_ratio"] > 1.5
    for m in r["models"].values():
        assert m["small_flops"] < m["dense_flops"] and m["small_params"] < m["dense_params"]
        assert m["max_abs_diff"] <= 1e-4 * max(1.0, m["output_scale"])
        assert m["dense_ms"] > 0 and m["small_ms"] > 0
    assert 0.3 < r["budget_flops_fraction"] <= 0.5 + 1e-6


def _check_transfer(r: dict) -> None:
    assert len(r["tasks"]) >= 2 and r["variants"][0] == "dense" and len(r["variants"]) >= 3
    assert r["n_runs"] == len(r["tasks"]) * len(r["variants"]) * 2  # two step budgets in the small config
    assert r["max_step_flops_ratio"] < 1.0  # zero-shot shrunk models: every train step is cheaper
    assert r["step_flops"]["dense"] > max(v for k, v in r["step_flops"].items() if k != "dense")
    assert "smallest_budget" in r["summary"]


def _check_checkpoints(r: dict) -> None:
    assert r["dense_restored_equal"] and r["sparse_restored_equal"] and r["resume_equal"]
    assert r["shrunk_restored_equal"] and r["shrunk_fresh_process_max_diff"] <= 1e-5
    assert abs(r["mask_sparsity"] - 0.9) < 1e-3
    s = r["sizes_bytes"]
    assert s["sparse"] < s["dense"] and s["shrunk"] < s["dense"]


CHECKS = {
    "01_quickstart": _check_quickstart,
    "02_structured": _check_structured,
    "03_transfer_study": _check_transfer,
    "04_checkpoints": _check_checkpoints,
}


# --------------------------------------------------------------------------------------------- tests
def test_every_notebook_is_generated_checked_and_stored_without_outputs():
    _, nbformat = _jupyter()
    built = _build_module().build()
    assert sorted(built) == NOTEBOOKS == sorted(CHECKS), "colab/_build.py, the stored notebooks and CHECKS differ"
    for name, expected in built.items():
        stored = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
        nbformat.validate(stored)
        assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in expected.cells], (
            f"{name}.ipynb is out of date: run `python colab/_build.py`"
        )
        code = [c for c in stored.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}.ipynb has outputs stored"
        assert "JAXPRUNE_NB_SMALL" in code[0].source and "%pip install" in code[0].source
        assert stored.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_cpu(name, tmp_path, monkeypatch):
    nbclient, nbformat = _jupyter()
    out = tmp_path / "out"
    monkeypatch.setenv("JAXPRUNE_NB_SMALL", "1")
    monkeypatch.setenv("JAXPRUNE_NB_OUT", str(out))
    monkeypatch.setenv("JAXPRUNE_CACHE_DIR", str(tmp_path / "cache"))  # the study's upstream model: no shared state
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # the kernel imports this checkout's jaxprune even if it is not installed (the notebook would pip-install it)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{name}.ipynb: a cell failed\n{str(e)[-6000:]}")
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once shut down (and its subprocesses)
    cpu_seconds = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    result = json.loads((out / f"{name}.json").read_text())
    assert result["notebook"] == name and result["small"] is True and result["backend"] == "cpu"
    CHECKS[name](result)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs), (
        f"{name}: no inline figure"
    )
    assert not any(o.output_type == "error" for o in outputs)
    print(f"{name}: {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU time (small config)")
