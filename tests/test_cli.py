"""The ``jaxprune`` command line: prune -> finetune -> evaluate end to end, resume, and refused bad input.

Commands run through the installed ``jaxprune`` console script (``pip install -e .``),
or ``python -m jaxprune.cli`` where the script is not installed. One small dense
checkpoint (a SmallCNN trained a few steps on the offline digits) is shared.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxprune as jp
from jaxprune._src.cli import common
from jaxprune._src.cli.common import CliError
from jaxprune._src.cli.evaluate import LATENCY_MIN_FLOPS, dispatch_bound, latency_caveat, results_markdown
from jaxprune._src.cli.prune import prune_checkpoint
from jaxprune._src.cli.recipe import apply_overrides, load_recipe, packaged_recipes, recipe_from_dict
from jaxprune._src.tree import is_none, leaves_with_paths
from jaxprune.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "jaxprune" / "recipes"  # shipped as package data; `--recipe NAME` finds them
EXE = shutil.which("jaxprune")
COMMAND = [EXE] if EXE else [sys.executable, "-m", "jaxprune.cli"]


def cli(*args, check=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


def snapshot(path):
    path = pathlib.Path(path)
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cli(
        "finetune",
        "--model",
        "small_cnn",
        "--model-arg",
        "channels=[8,16]",
        "--dataset",
        "digits_offline",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--lr",
        "0.05",
        "--out",
        d / "dense",
        "--no-progress",
    )
    return d


def test_dense_from_init(runs):
    s = json.loads((runs / "dense" / "summary.json").read_text())
    assert s["finished"] and s["step"] == 20 and s["kind"] == "dense"
    assert [h["step"] for h in s["history"]] == [10, 20]
    ck = jp.restore_checkpoint(runs / "dense" / "checkpoint")
    assert ck.step == s["best_step"] and ck.model_config["class"] == "SmallCNN"
    assert ck.model_config["config"]["channels"] == [8, 16]
    assert ck.params["params"]["conv_1"]["kernel"].shape == (3, 3, 8, 16)


def test_sparse_prune_finetune_resume_evaluate(runs, capsys):
    out = cli("prune", "--checkpoint", runs / "dense", "--recipe", "unstructured90", "--out", runs / "sp90")
    assert "sparsity 90.0%" in out.stdout
    s = json.loads((runs / "sp90" / "summary.json").read_text())
    assert s["kind"] == "sparse" and s["sparsity"] == pytest.approx(0.9, abs=2e-3)
    assert s["recipe"] == load_recipe(str(RECIPES / "unstructured90.json")).to_dict()  # the packaged file
    assert {r["layer"] for r in s["layers"]} == {"params/conv_0/kernel", "params/conv_1/kernel"}  # head: rule null
    assert s["before"]["flops"] == s["after"]["flops"] > 0
    assert s["after"]["nonzero_params"] < s["before"]["nonzero_params"]
    ck = jp.restore_checkpoint(runs / "sp90" / "checkpoint")
    masks = {p: m for p, m in leaves_with_paths(ck.masks, is_leaf=is_none)}
    assert masks["params/head/kernel"] is None
    assert jp.sparsity_summary(ck.masks).total_sparsity == pytest.approx(0.9, abs=2e-3)

    # Finetune with the mask fixed, interrupted after 6 of 12 steps, then resumed by the same command.
    ft = [
        "finetune",
        "--checkpoint",
        runs / "sp90",
        "--out",
        runs / "sp90_ft",
        "--steps",
        "12",
        "--eval-every",
        "4",
        "--save-every",
        "2",
        "--no-progress",
    ]
    first = cli(*ft, "--max-steps-this-run", "6")
    assert "stopped at step 6 of 12" in first.stdout
    s1 = json.loads((runs / "sp90_ft" / "summary.json").read_text())
    assert (s1["step"], s1["finished"], [h["step"] for h in s1["history"]]) == (6, False, [4])
    assert jp.checkpoint_steps(runs / "sp90_ft" / "train_state") == [6]
    second = cli(*ft)
    assert "resuming" in second.stdout and "from step 6" in second.stdout
    s2 = json.loads((runs / "sp90_ft" / "summary.json").read_text())
    assert (s2["step"], s2["finished"], s2["steps_this_run"]) == (12, True, 6)
    assert [h["step"] for h in s2["history"]] == [4, 8, 12]
    assert s2["final"]["sparsity"] == pytest.approx(s["sparsity"])
    best = jp.restore_checkpoint(runs / "sp90_ft" / "checkpoint")
    assert best.step == s2["best_step"]
    best_masks = dict(leaves_with_paths(best.masks, is_leaf=is_none))
    for path, w in leaves_with_paths(best.params):
        if masks.get(path) is not None:  # same masks; pruned weights stayed exactly 0
            np.testing.assert_array_equal(np.asarray(best_masks[path]), np.asarray(masks[path]))
            assert not np.any(np.asarray(w)[~np.asarray(masks[path])]), path
    moved = np.asarray(best.params["params"]["conv_1"]["kernel"]) != np.asarray(ck.params["params"]["conv_1"]["kernel"])
    assert moved.any()
    assert main(list(map(str, ft))) == 2  # a finished run is neither redone nor overwritten
    err = capsys.readouterr().err
    assert "finished" in err and "--overwrite" in err
    assert jp.restore_checkpoint(runs / "sp90_ft" / "checkpoint").step == best.step

    # Structured pruning to half the FLOPs (the recipe given as a path), then finetune the shrunk model.
    cli(
        "prune", "--checkpoint", runs / "dense", "--recipe", RECIPES / "structured_flops50.json", "--out", runs / "sh50"
    )
    s = json.loads((runs / "sh50" / "summary.json").read_text())
    assert s["kind"] == "shrunk" and s["after"]["flops"] <= 0.5 * s["before"]["flops"]
    widths = {r["layer"]: (r["width_before"], r["width_after"]) for r in s["layers"]}
    assert widths["head"] == (10, 10) and widths["conv_1"][1] < widths["conv_1"][0]
    model, variables, plan = jp.restore_shrunk_model(runs / "sh50" / "checkpoint")
    assert dict(model.widths)["conv_1"] == widths["conv_1"][1]
    assert variables["params"]["conv_1"]["kernel"].shape[-1] == widths["conv_1"][1]
    assert plan.groups and all(len(g["kept"]) < g["size"] for g in plan.groups)
    cli("finetune", "--checkpoint", runs / "sh50", "--out", runs / "sh50_ft", "--steps", "4", "--no-progress")
    model_ft, variables_ft, _ = jp.restore_shrunk_model(runs / "sh50_ft" / "checkpoint")
    assert model_ft == model
    assert jax.tree.map(np.shape, variables_ft) == jax.tree.map(np.shape, variables)

    # Evaluate the three side by side.
    out = cli(
        "evaluate",
        runs / "dense",
        runs / "sp90_ft",
        runs / "sh50_ft",
        "--dataset",
        "digits_offline",
        "--batch-size",
        "32",
        "--quick",
        "--out",
        runs / "eval",
    )
    res = json.loads((runs / "eval" / "results.json").read_text())
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["dense", "sp90_ft", "sh50_ft"] and "| sp90_ft | sparse |" in out.stdout
    for r in rows.values():
        assert set(r) >= {"top1", "top5", "loss", "sparsity", "params", "flops", "latency_ms", "batch_size"}
        assert 0 <= r["top1"] <= r["top5"] <= 1 and r["latency_ms"] > 0 and r["batch_size"] == 32
    assert rows["sp90_ft"]["sparsity"] == pytest.approx(0.9, abs=2e-3) and rows["dense"]["sparsity"] == 0
    assert rows["dense"]["flops"] == rows["sp90_ft"]["flops"]  # masks do not change the XLA count
    assert rows["sh50_ft"]["flops"] <= 0.5 * rows["dense"]["flops"]
    assert rows["sh50_ft"]["params"] < rows["dense"]["params"]
    assert (runs / "eval" / "results.png").stat().st_size > 5_000
    assert "| dense | dense |" in (runs / "eval" / "results.md").read_text()
    # ~1 MFLOP per example x 32: latency is dispatch overhead, and the table and JSON say so
    assert all(r["latency_dispatch_bound"] for r in rows.values())
    assert "dominated by dispatch overhead" in res["latency_caveat"] and "every checkpoint" in res["latency_caveat"]
    assert res["latency_caveat"] in out.stdout and res["latency_caveat"] in (runs / "eval" / "results.md").read_text()


def test_nm_recipe_library_call(runs, tmp_path):
    """The same code, called as library functions: 2:4 on every kernel but the 3-channel first conv."""
    loaded = common.load_checkpoint_model(str(runs / "dense"))
    s = prune_checkpoint(loaded, load_recipe("nm24.json"), str(tmp_path / "nm"))  # packaged name, .json suffix
    assert {r["layer"]: r["sparsity"] for r in s["layers"]} == {"params/conv_1/kernel": 0.5, "params/head/kernel": 0.5}
    back = common.load_checkpoint_model(str(tmp_path / "nm"))
    assert back.kind == "sparse" and back.masks["params"]["conv_0"]["kernel"] is None
    m = np.asarray(back.masks["params"]["conv_1"]["kernel"]).reshape(3, 3, 2, 4, 16)
    assert (m.sum(axis=3) == 2).all()  # 2 kept in every group of 4 input channels


BAD = {
    "missing checkpoint": (
        ["prune", "--checkpoint", "{runs}/nothing_here", "--recipe", "{recipes}/nm24.json"],
        "does not exist",
    ),
    "unknown dataset": (
        ["finetune", "--checkpoint", "{runs}/dense", "--dataset", "no_such_dataset_xyz"],
        "no_such_dataset_xyz",
    ),
    "unknown method": (
        ["prune", "--checkpoint", "{runs}/dense", "--recipe", "{recipes}/unstructured90.json", "--set", "method=magic"],
        "unknown method 'magic'",
    ),
    "sparsity out of range": (
        ["prune", "--checkpoint", "{runs}/dense", "--set", "sparsity=1.5"],
        "must be a number in [0, 1), got 1.5",
    ),
    "rule matches no layer": (
        ["prune", "--checkpoint", "{runs}/dense", "--set", 'rules=[["no_layer", 0.5]]'],
        "no_layer",
    ),
    "nothing prunable": (
        ["prune", "--checkpoint", "{runs}/dense", "--set", 'prunable=[[".*", false]]'],
        "matches no layer",
    ),
    "structured regex matches no layer": (
        [
            "prune",
            "--checkpoint",
            "{runs}/dense",
            "--recipe",
            "{recipes}/structured_flops50.json",
            "--set",
            'ignore=["nope"]',
        ],
        "'nope' matches no prunable layer",
    ),
    "unknown recipe name": (
        ["prune", "--checkpoint", "{runs}/dense", "--recipe", "no_such_recipe"],
        "unknown recipe 'no_such_recipe'; give a path to a JSON recipe file or a packaged recipe name: "
        "erk80_snip, nm24, structured_flops50, unstructured90",
    ),
    "missing recipe file": (
        ["prune", "--checkpoint", "{runs}/dense", "--recipe", "recipes/unstructured90.json"],
        "recipe file 'recipes/unstructured90.json' does not exist (the shipped recipes are packaged now: "
        "--recipe unstructured90)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_writes_nothing(runs, tmp_path, case, capsys):
    """In-process main() (the console script's function): exit status 2, message on stderr, no --out."""
    args, message = BAD[case]
    args = [a.format(runs=runs, recipes=RECIPES) for a in args]
    status = main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err and "error" in err
    assert not (tmp_path / "out").exists()


def test_bad_input_exit_status_through_console(runs, tmp_path):
    out = cli("evaluate", runs / "dense", "--dataset", "no_such_dataset_xyz", "--out", tmp_path / "ev", check=False)
    assert out.returncode == 2 and "no_such_dataset_xyz" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "ev").exists()


def test_out_holding_checkpoint_is_not_overwritten(runs, tmp_path, capsys):
    target = tmp_path / "sp"
    assert main(["prune", "--checkpoint", str(runs / "dense"), "--set", "sparsity=0.5", "--out", str(target)]) == 0
    before = snapshot(target)
    for args in (
        ["prune", "--checkpoint", str(runs / "dense"), "--set", "sparsity=0.7"],
        ["finetune", "--checkpoint", str(runs / "dense"), "--steps", "2"],
        ["evaluate", str(runs / "dense")],
    ):
        capsys.readouterr()
        assert main([*args, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert "already holds" in err and "--overwrite" in err
        assert snapshot(target) == before
    assert (
        main(
            ["prune", "--checkpoint", str(runs / "dense"), "--set", "sparsity=0.7", "--out", str(target), "--overwrite"]
        )
        == 0
    )
    assert json.loads((target / "summary.json").read_text())["sparsity"] == pytest.approx(0.7, abs=2e-3)
    assert jp.checkpoint_steps(target / "checkpoint") == [0]


def test_resume_refuses_other_settings(runs, tmp_path, capsys):
    out_dir = tmp_path / "ft"
    base = [
        "finetune",
        "--checkpoint",
        str(runs / "dense"),
        "--out",
        str(out_dir),
        "--no-progress",
        "--dev-split",
        "none",
    ]
    assert main([*base, "--steps", "6", "--max-steps-this-run", "2"]) == 0
    assert json.loads((out_dir / "summary.json").read_text())["step"] == 2
    before = snapshot(out_dir)
    capsys.readouterr()
    assert main([*base, "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert "unfinished run with other settings" in err and '"train.steps": [6, 8]' in err
    assert snapshot(out_dir) == before


def test_checkpoint_without_model_config_asks_for_model(runs, tmp_path, capsys):
    ck = jp.restore_checkpoint(runs / "dense" / "checkpoint")
    jp.save_checkpoint(tmp_path / "bare", 0, params=ck.params)  # e.g. converted weights: no model config
    assert main(["evaluate", str(tmp_path / "bare"), "--out", str(tmp_path / "ev")]) == 2
    assert "pass --model NAME" in capsys.readouterr().err and not (tmp_path / "ev").exists()
    with pytest.raises(CliError, match="does not fit model 'small_cnn'"):  # 2 conv layers, not the default 3
        common.load_checkpoint_model(str(tmp_path / "bare"), "small_cnn")


def test_recipes_and_overrides():
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2", "c=x", "d=[1, 2]", "e=null"]) == {
        "a": {"b": 2},
        "c": "x",
        "d": [1, 2],
        "e": None,
    }
    assert packaged_recipes() == tuple(sorted(p.stem for p in RECIPES.glob("*.json")))
    assert set(packaged_recipes()) >= {"unstructured90", "nm24", "structured_flops50", "erk80_snip"}
    for path in sorted(RECIPES.glob("*.json")):  # every shipped recipe is valid, by path, name and name.json
        r = load_recipe(str(path))
        assert r.kind in ("unstructured", "nm", "block", "structured")
        assert load_recipe(path.stem) == r == load_recipe(path.name)
    r = load_recipe(str(RECIPES / "structured_flops50.json"), ["budget.flops=0.3"])
    assert r.budget == {"flops": 0.3} and r.score == "l1"
    assert recipe_from_dict({"method": "snip"}).needs_grads
    for bad, msg in [
        ({"kind": "pruneit"}, "kind must be one of"),
        ({"sparsity": -0.1}, "[0, 1)"),
        ({"spars": 0.5}, "unknown recipe field"),
        ({"budget": {"flops": 0.5}}, "'structured' only"),
        ({"kind": "structured", "method": "magnitude"}, "unknown method"),
        ({"rules": [["(", 0.5]]}, "invalid regex"),
    ]:
        with pytest.raises(CliError) as e:
            recipe_from_dict(bad)
        assert msg in str(e.value)
    with pytest.raises(CliError, match="key=value"):
        apply_overrides({}, ["sparsity"])


def test_recipe_path_or_name(tmp_path, monkeypatch):
    """An existing file wins over a packaged name; bad files and folders are refused, naming the packaged recipes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unstructured90.json").write_text('{"kind": "nm"}')
    assert load_recipe("unstructured90.json").kind == "nm"  # the local file
    assert load_recipe("unstructured90").kind == "unstructured"  # the packaged recipe
    assert load_recipe(str(tmp_path / "unstructured90.json")).kind == "nm"
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "folder").mkdir()
    for spec, msg in [
        ("broken.json", "recipe 'broken.json' is not valid JSON"),
        ("list.json", "recipe 'list.json' must hold a JSON object"),
        ("folder", "recipe 'folder' is a folder, not a JSON file"),
        ("nope.json", "recipe file 'nope.json' does not exist; give a path"),
        ("sub/nm24", "recipe file 'sub/nm24' does not exist (the shipped recipes are packaged now: --recipe nm24)"),
        ("Unstructured90", "unknown recipe 'Unstructured90'"),
    ]:
        with pytest.raises(CliError) as e:
            load_recipe(spec)
        assert msg in str(e.value), spec
        listed = "erk80_snip, nm24, structured_flops50, unstructured90" in str(e.value)
        assert listed == (spec not in ("broken.json", "list.json")), spec  # not found: packaged names listed


def test_latency_caveat_threshold():
    """The caveat appears when a forward pass of one batch is below 100 MFLOPs, naming the rows it concerns."""
    assert dispatch_bound(1e6, 64) and not dispatch_bound(2e6, 64) and not dispatch_bound(None, 64)
    assert dispatch_bound(LATENCY_MIN_FLOPS / 2, 1) and not dispatch_bound(0, 64)  # 0: FLOPs unknown
    row = dict(kind="dense", top1=0.9, top5=1.0, loss=0.1, sparsity=0.0, params=10, nonzero_params=10, latency_ms=1.0)
    big = dict(row, label="big", flops=5e6, batch_size=64, examples=100)
    small = dict(big, label="small", flops=1e6)
    rows = [dict(r, latency_dispatch_bound=dispatch_bound(r["flops"], r["batch_size"])) for r in (big, small)]
    text = latency_caveat(rows)
    assert text.startswith("latency caveat: the forward pass of small is below 100M FLOPs per batch of 64")
    assert "dispatch overhead" in text and "compare XLA FLOPs" in text and text in results_markdown(rows, "d", "test")
    assert latency_caveat(rows[:1]) is None and "caveat" not in results_markdown(rows[:1], "d", "test")


def test_help_of_every_command(capsys):
    out = cli("--help")
    assert all(c in out.stdout for c in ("prune", "finetune", "evaluate"))
    for cmd in ("prune", "finetune", "evaluate"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "--out" in text and "--quick" in text
