"""The built wheel works on its own: the demo and ``jaxprune prune --recipe NAME`` run from an installed copy.

How the test makes sure it exercises the *wheel*, not the checkout:

* The wheel is built from a copy of the working tree (the files git tracks or
  would track: ``git ls-files --cached --others --exclude-standard``) in a temp
  folder, with ``pip wheel --no-deps --no-build-isolation`` (offline, the
  installed setuptools). Building in the shared checkout would write
  ``build/`` and ``*.egg-info`` there, and a stale ``build/lib`` can carry
  files that no longer exist into the wheel.
* The checkout is installed in editable mode in the system site-packages: a
  ``.pth`` file there installs a finder mapping ``jaxprune`` to the checkout.
  A ``--system-site-packages`` venv would process that ``.pth`` too, and the
  finder would serve any top-level module or subpackage missing from the wheel
  straight from the checkout, hiding the packaging bug. So the venv is created
  *without* system site packages, and one ``.pth`` in it lists the test
  interpreter's site-packages folders as plain paths: jax & co. import from
  there without network, but ``.pth`` files in those folders are never
  executed (Python processes ``.pth`` files only in site dirs), so the editable
  finder never exists in the venv.
* Before the wheel is installed, ``import jaxprune`` in the venv must fail:
  proof that neither the checkout nor any other copy is reachable. After
  ``pip install --no-deps --force-reinstall`` of the wheel, ``jaxprune.__file__``,
  ``jaxprune.demo``, the CLI modules and the packaged recipes must all resolve
  under the venv's site-packages.
* Every command runs with the venv's interpreter or its ``bin/jaxprune``
  console script (from the wheel's entry points), from a temp cwd, with
  ``PYTHONPATH`` removed, ``PYTHONNOUSERSITE=1`` and ``PYTHONSAFEPATH=1``; the
  data cache is a temp ``JAXPRUNE_DATA_DIR``.

About two minutes on 2 CPU cores (build ~15 s, demo --quick, a 20-step finetune and a prune).
"""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
JUNK = ("build", "dist", "runs", "out", ".git", ".venv", ".cache", "__pycache__", "*.egg-info", ".pytest_cache")


def copy_tree(dst: pathlib.Path) -> None:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files that exist)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):  # no git (e.g. an unpacked sdist): copy minus build junk
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(*JUNK))
        return
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # tracked files deleted in the working tree are skipped
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def run(cmd, *, env, cwd, timeout=600):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr}"
    return out


def test_wheel_installs_and_runs(tmp_path):
    # 1. Build the wheel from a copy of the working tree.
    src, dist = tmp_path / "src", tmp_path / "dist"
    copy_tree(src)
    assert (src / "pyproject.toml").is_file() and (src / "jaxprune" / "__init__.py").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1", JAXPRUNE_DATA_DIR=str(tmp_path / "data"))
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", dist],
        env=env,
        cwd=src,
    )
    (wheel,) = dist.glob("jaxprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    recipes = sorted(n for n in names if n.startswith("jaxprune/recipes/"))
    assert {"jaxprune/recipes/unstructured90.json", "jaxprune/recipes/structured_flops50.json"} <= set(recipes)
    assert recipes == sorted(f"jaxprune/recipes/{p.name}" for p in (ROOT / "jaxprune" / "recipes").glob("*.json"))
    assert "jaxprune/py.typed" in names and "jaxprune/demo.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "recipes/"))]

    # 2. A fresh venv that sees the installed dependencies but not the checkout (see the module docstring).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], env=env, cwd=tmp_path)
    py = venv / "bin" / "python"
    venv_site = pathlib.Path(
        run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env, cwd=tmp_path
        ).stdout.strip()
    )
    deps = [d for d in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(d)]
    (venv_site / "_wheel_test_deps.pth").write_text("\n".join(deps) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    before = subprocess.run(
        [py, "-c", "import jaxprune"], capture_output=True, text=True, env=env, cwd=work, timeout=300
    )
    assert before.returncode != 0 and "No module named 'jaxprune'" in before.stderr, (
        "a jaxprune is importable in the venv before the wheel is installed; the test cannot tell the wheel from "
        f"it:\n{before.stdout}{before.stderr}"
    )
    run(
        [py, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", wheel],
        env=env,
        cwd=work,
    )

    # 3. Every module (and the recipes) now comes from the venv.
    probe = (
        "import json, importlib.resources as r, jaxprune, jaxprune.demo, jaxprune.cli, jaxprune._src.cli.recipe as rc;"
        "print(json.dumps(dict(files=[jaxprune.__file__, jaxprune.demo.__file__, jaxprune.cli.__file__, rc.__file__,"
        " str(r.files('jaxprune') / 'recipes' / 'unstructured90.json')], recipes=rc.packaged_recipes(),"
        " editable=[m for m in __import__('sys').modules if 'editable' in m])))"
    )
    where = json.loads(run([py, "-c", probe], env=env, cwd=work).stdout)
    site_real = venv_site.resolve()
    for f in where["files"]:
        assert pathlib.Path(f).resolve().is_relative_to(site_real), f"{f} is not the installed wheel's copy"
        assert not pathlib.Path(f).resolve().is_relative_to(ROOT), f
    assert where["editable"] == []
    assert "unstructured90" in where["recipes"]

    # 4. The main job, as a module of the installed package.
    demo = tmp_path / "demo"
    run([py, "-m", "jaxprune.demo", "--quick", "--out", demo, "--no-progress"], env=env, cwd=work)
    res = json.loads((demo / "results.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert {"dense", "global magnitude 90%", "2:4 (N:M)", "structured 50% (shrunk)"} <= set(rows)
    assert rows["global magnitude 90%"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert rows["structured 50% (shrunk)"]["params"] < rows["dense"]["params"]
    assert all(0 <= r["acc_finetuned"] <= 1 for r in rows.values())
    assert (demo / "demo.png").is_file() and (demo / "results.md").is_file()

    # 5. The console script from the wheel's entry points: finetune, then prune with a recipe given by name.
    exe = venv / "bin" / "jaxprune"
    assert exe.is_file()
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    run(
        [exe, "finetune", "--model", "small_cnn", "--dataset", "digits_offline", "--steps", "20", "--out", dense]
        + ["--no-progress"],
        env=env,
        cwd=work,
    )
    assert json.loads((dense / "summary.json").read_text())["step"] == 20
    out = run([exe, "prune", "--checkpoint", dense, "--recipe", "unstructured90", "--out", pruned], env=env, cwd=work)
    s = json.loads((pruned / "summary.json").read_text())
    assert s["kind"] == "sparse" and s["sparsity"] == pytest.approx(0.9, abs=2e-3)
    assert s["recipe"]["sparsity"] == 0.9 and s["recipe"]["scope"] == "global"
    assert s["before"]["flops"] == s["after"]["flops"] > 0 and "sparsity 90.0%" in out.stdout
    assert (pruned / "checkpoint").is_dir()
    bad = subprocess.run(
        [exe, "prune", "--checkpoint", dense, "--recipe", "no_such_recipe", "--out", tmp_path / "x"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
    )
    assert bad.returncode == 2 and "unstructured90" in bad.stderr and not (tmp_path / "x").exists()
