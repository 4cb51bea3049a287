"""Faults in structured plans and at the command line are refused with errors that name what is wrong.

* hand-edited or stale ``PrunePlan`` JSON (duplicated / negative / out-of-range /
  unsorted kept indices, edited shapes, a deleted group, an axis out of range)
  is refused by ``PrunePlan.from_json`` and by ``shrink`` (no raw IndexError,
  no silently wrong channels), and by ``restore_shrunk_model`` when the plan
  stored in a checkpoint was edited on disk;
* ``make_plan`` refuses NaN params and garbage arguments, naming the leaf or
  the argument; ``allow_empty`` is an option of ``make_plan`` as its hint says;
* ``jaxprune prune|finetune`` refuse bad ``--set`` / ``--model-arg`` values
  with exit status 2, a message naming the field, and nothing written.
"""

import copy
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import models as M
from jaxprune._src.structured import (
    PrunePlan,
    check_plan,
    make_plan,
    plan_from_kept,
    shrink,
    trace_groups,
)
from jaxprune.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- plans
def _chain():
    """a (3, 8) -> b (8, 6) -> c (6, 2): groups a[1] (8 units) and b[1] (6 units)."""
    rng = np.random.default_rng(0)
    p = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in (("a", (3, 8)), ("b", (8, 6)), ("c", (6, 2)))}
    g = trace_groups(lambda p, x: jnp.tanh(jnp.tanh(x @ p["a"]) @ p["b"]) @ p["c"], p, jnp.ones((1, 3)))
    return p, g


P, G = _chain()
PLAN = make_plan(P, G, 0.5)
PLAN_D = PLAN.to_dict()


def _group(d, name):
    return next(g for g in d["groups"] if g["name"] == name)


def _edit(fn):
    d = copy.deepcopy(PLAN_D)
    fn(d)
    return d


def _raw(d) -> PrunePlan:
    """The plan of a dict *without* validation (what a hand-built or old-code plan object can hold)."""
    return PrunePlan(
        groups=tuple(dict(g, kept=tuple(g["kept"])) for g in d["groups"]),
        leaves={p: {int(a): tuple(k) for a, k in ax.items()} for p, ax in d["leaves"].items()},
        shapes={p: (tuple(o), tuple(n)) for p, (o, n) in d["shapes"].items()},
        leaf_shapes={p: tuple(s) for p, s in d["leaf_shapes"].items()},
        meta=dict(d["meta"]),
    )


def _set_leaf(d, path, axis, kept):
    d["leaves"][path][str(axis)] = kept


def _move_axis(d):
    d["leaves"]["a"]["7"] = d["leaves"]["a"].pop("1")


def _delete_group(d):
    d["groups"] = [g for g in d["groups"] if g["name"] != "b[1]"]


def _group_kept(d, name, kept):
    _group(d, name)["kept"] = kept


BAD_PLANS = {
    # name: (edit, error regex naming the group or leaf)
    "leaf kept duplicated": (lambda d: _set_leaf(d, "a", 1, [1, 1, 2, 3]), r"leaf 'a' axis 1: kept index 1 is dup"),
    "leaf kept negative": (lambda d: _set_leaf(d, "a", 1, [-1, 2, 3, 5]), r"leaf 'a' axis 1: kept index -1 .*range"),
    "leaf kept out of range": (lambda d: _set_leaf(d, "b", 0, [0, 1, 2, 99]), r"leaf 'b' axis 0: kept index 99"),
    "leaf kept not sorted": (lambda d: _set_leaf(d, "a", 1, [5, 3, 2, 1]), r"leaf 'a' axis 1: .*sorted"),
    "group kept 99, 99": (lambda d: _group_kept(d, "a[1]", [99, 99]), r"group \d+ \(a\[1\]\): kept index 99"),
    "group kept duplicated": (lambda d: _group_kept(d, "b[1]", [1, 1, 2]), r"group \d+ \(b\[1\]\): .*duplicated"),
    "group kept count edited": (
        lambda d: _group_kept(d, "a[1]", _group(d, "a[1]")["kept"][:-1]),
        r"group \d+ \(a\[1\]\) drops 5 units.*'a' axis 1",
    ),
    "edited new shape": (lambda d: d["shapes"]["a"].__setitem__(1, [3, 5]), r"leaf 'a': shapes gives new shape"),
    "edited original shape": (lambda d: d["shapes"]["c"].__setitem__(0, [7, 2]), r"leaf 'c': shapes gives orig"),
    "edited leaf_shapes": (lambda d: d["leaf_shapes"].__setitem__("b", [8, 9]), r"leaf 'b'"),
    "deleted group": (_delete_group, r"leaf '[bc]' axis [01] is shrunk but belongs to no group"),
    "deleted leaf": (lambda d: (d["leaves"].pop("c"), d["shapes"].pop("c")), r"b\[1\].*leaf 'c' axis 0"),
    "axis 7": (_move_axis, r"leaf 'a': axis 7 is out of range"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_edited_plan_json_is_refused_naming_group_or_leaf(case):
    edit, message = BAD_PLANS[case]
    d = _edit(edit)
    with pytest.raises(ValueError, match=message):
        PrunePlan.from_json(json.dumps(d))
    with pytest.raises(ValueError, match=message):  # a plan object built without from_dict: shrink refuses it
        shrink(P, _raw(d))


def test_make_shrunk_fn_refuses_an_edited_plan():
    from jaxprune._src.structured import make_shrunk_fn

    fn = lambda p, x: jnp.tanh(jnp.tanh(x @ p["a"]) @ p["b"]) @ p["c"]  # noqa: E731
    bad = _raw(_edit(lambda d: _set_leaf(d, "b", 0, [0, 1, 2, 99])))
    with pytest.raises(ValueError, match=r"leaf 'b' axis 0: kept index 99"):
        make_shrunk_fn(fn, P, bad, jnp.ones((1, 3)))


def test_valid_plan_round_trips_and_matches_its_graph():
    again = PrunePlan.from_json(PLAN.to_json())
    assert again == PLAN and again.validate(G) is again
    check_plan(P, again, graph=G)
    jax.tree.map(np.testing.assert_array_equal, shrink(P, again), shrink(P, PLAN))
    old = copy.deepcopy(PLAN_D)  # plans saved before groups recorded their members still load
    for g in old["groups"]:
        del g["members"]
    assert PrunePlan.from_dict(old).groups[0]["kept"] == PLAN.groups[0]["kept"]


def test_plan_edited_consistently_but_not_matching_the_graph_is_refused():
    """Group and leaves edited alike (other channels): only the graph can tell; check_plan(graph=) does."""

    def edit(d):
        g = _group(d, "a[1]")
        g["kept"] = [0, 1, 2, 3]
        _set_leaf(d, "a", 1, [0, 1, 2, 3])  # but b's rows still keep the old channels

    plan = PrunePlan.from_dict(_edit(edit))
    with pytest.raises(ValueError, match=r"leaf 'b' axis 0: the plan keeps"):
        check_plan(P, plan, graph=G)
    stale = _edit(lambda d: _group(d, "a[1]").__setitem__("name", "conv/kernel[3]"))  # made for another model
    with pytest.raises(ValueError, match=r"group \d+ is conv/kernel\[3\] with 8 units"):
        PrunePlan.from_dict(stale).validate(G)


def _small_cnn():
    model = M.SmallCNN(channels=(4, 8), image_size=8, num_classes=3)
    v = model.init(jax.random.key(0), model.example_input(1))
    return model, v


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _resign(step_dir: pathlib.Path, item: str, value) -> None:
    """Recomputes the manifest's SHA-256 digests (where the format has them) after an edit of a JSON item."""
    for f in step_dir.rglob("metadata"):
        try:
            m = json.loads(f.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(m, dict) and isinstance(m.get("json_sha256"), dict) and item in m["json_sha256"]:
            m["json_sha256"][item] = _digest(value)
            if "sha256" in m:
                m["sha256"] = _digest({k: v for k, v in m.items() if k != "sha256"})
            f.write_text(json.dumps(m))


@pytest.mark.parametrize("resign", [False, True], ids=["edited", "edited-and-resigned"])
def test_restore_shrunk_model_refuses_a_plan_edited_on_disk(tmp_path, resign):
    model, v = _small_cnn()
    graph = trace_groups(lambda v, x: model.apply(v, x), v, model.example_input(1))
    plan = make_plan(v, graph, 0.5)
    small = shrink(v, plan)
    jp.save_checkpoint(tmp_path, 0, shrunk_params=small, plan=plan, model_config=M.rebuild(model, small))
    assert jp.restore_shrunk_model(tmp_path).plan == plan
    stored = [
        f
        for f in (tmp_path / "0").rglob("*")
        if f.is_file()
        and '"kept"' in f.read_text(errors="ignore")
        and "json_sha256" not in f.read_text(errors="ignore")
    ]
    assert len(stored) == 1, stored
    d = json.loads(stored[0].read_text())
    d["groups"][0]["kept"] = [99, 99]
    stored[0].write_text(json.dumps(d))
    if resign:  # a stale plan written by buggy code: digests that match, content that does not
        _resign(tmp_path / "0", "plan", d)
    with pytest.raises(ValueError) as e:  # CheckpointError is a ValueError
        jp.restore_shrunk_model(tmp_path)
    msg = str(e.value)
    named = "kept index 99" in msg and d["groups"][0]["name"] in msg
    # the plan check names the group; the manifest checksum (where there is one) catches a plain edit first
    assert named or (not resign and "plan" in msg and "SHA-256" in msg), msg


# --------------------------------------------------------------------------------------------- make_plan
def test_nan_params_are_refused_naming_the_leaf():
    bad = dict(P, b=P["b"].at[3, 2].set(jnp.nan))
    with pytest.raises(ValueError, match=r"leaf 'b' contains NaN"):
        make_plan(bad, G, 0.5)
    with pytest.raises(ValueError, match=r"leaf 'b' contains NaN"):
        make_plan(bad, G, 0.5, scope="global")
    with pytest.raises(ValueError, match=r"unit_scores\['a\[1\]'\] contains NaN"):
        make_plan(P, G, 0.5, unit_scores={"a[1]": [1.0, np.nan, 1, 1, 1, 1, 1, 1]})


BAD_ARGS = {
    "min_keep=-3": (dict(min_keep=-3), ValueError, r"min_keep must be an int >= 0"),
    "min_keep=1.5": (dict(min_keep=1.5), TypeError, r"min_keep must be an int >= 0"),
    "max_ratio=2": (dict(max_ratio=2), ValueError, r"max_ratio must be in \[0, 1\]"),
    "max_ratio='x'": (dict(max_ratio="x"), TypeError, r"max_ratio must be a number in \[0, 1\]"),
    "ratio='0.5'": (dict(ratio="0.5"), TypeError, r"ratio must be a number in \[0, 1\] or a list"),
    "ratio=1.5": (dict(ratio=1.5), ValueError, r"ratio must be in \[0, 1\]"),
    "ratio=nan": (dict(ratio=float("nan")), ValueError, r"ratio must be in \[0, 1\]"),
    "ratio rule value": (dict(ratio=[("a", "x")]), TypeError, r"ratio rule 0 must be a \(regex string, number\)"),
    "round_to=0": (dict(round_to=0), ValueError, r"round_to must be a positive int \(>= 1\)"),
    "round_to=True": (dict(round_to=True), ValueError, r"round_to must be a positive int"),
    "ignore='a'": (dict(ignore="a"), TypeError, r"ignore must be a list of strings"),
    "budget=0.5": (dict(budget=0.5), TypeError, r"budget must be flops_budget"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_make_plan_arguments_name_the_argument(case):
    kw, exc, message = BAD_ARGS[case]
    ratio = kw.pop("ratio", 0.5)
    with pytest.raises(exc, match=message):
        make_plan(P, G, ratio, **kw)


def test_allow_empty_is_an_option_of_make_plan():
    with pytest.raises(ValueError, match=r"keeping 0 units; pass allow_empty=True \(to make_plan"):
        make_plan(P, G, 1.0, min_keep=0)
    plan = make_plan(P, G, 1.0, min_keep=0, allow_empty=True)
    assert all(g["kept"] == () for g in plan.groups)
    assert PrunePlan.from_json(plan.to_json()) == plan and shrink(P, plan)["b"].shape == (0, 0)
    with pytest.raises(ValueError, match="keeping 0 units"):
        plan_from_kept(G, {G.prunable[0].id: []})


# --------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults_cli") / "dense"
    model, v = _small_cnn()
    jp.save_checkpoint(d, 0, params=v, model_config=model)
    return d


CLI_BAD = {
    # name: (args, text the error must contain)
    "max_ratio=5": (
        ["prune", "--checkpoint", "{dense}", "--set", "kind=structured", "--set", "max_ratio=5"],
        "recipe field 'max_ratio' must be a number in [0, 1], got 5",
    ),
    "max_ratio=x": (
        ["prune", "--checkpoint", "{dense}", "--set", "kind=structured", "--set", "max_ratio=x"],
        "recipe field 'max_ratio' must be a number in [0, 1], got 'x'",
    ),
    "round_to=0": (
        ["prune", "--checkpoint", "{dense}", "--set", "kind=structured", "--set", "round_to=0"],
        "recipe field 'round_to' must be a positive integer",
    ),
    "block=[0,x]": (
        ["prune", "--checkpoint", "{dense}", "--set", "kind=block", "--set", 'block=[0,"x"]'],
        "recipe field 'block' must be [rows, cols] (positive integers)",
    ),
    "warmup_steps=abc": (
        ["finetune", "--model", "small_cnn", "--set", "warmup_steps=abc"],
        "training field 'warmup_steps' expects an int >= 0, got 'abc'",
    ),
    "label_smoothing=2": (
        ["finetune", "--model", "small_cnn", "--set", "label_smoothing=2"],
        "training field 'label_smoothing' expects a number in [0, 1), got 2",
    ),
    "channels=abc": (
        ["finetune", "--model", "small_cnn", "--model-arg", "channels=abc", "--steps", "2"],
        "model argument 'channels' of SmallCNN expects tuple[int, ...]",
    ),
    "empty group hint": (
        [
            "prune",
            "--checkpoint",
            "{dense}",
            "--set",
            "kind=structured",
            "--set",
            "min_keep=0",
            "--set",
            'budget={{"param_bytes": 0.01}}',
        ],
        "raise the recipe field 'min_keep' to at least 1",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_BAD))
def test_cli_bad_values_exit_2_naming_the_field(dense, tmp_path, case, capsys):
    args, message = CLI_BAD[case]
    out = tmp_path / "out"
    status = main([a.format(dense=dense) for a in args] + ["--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err and "error" in err, err
    assert "allow_empty" not in err and "TypeError" not in err, err
    assert not out.exists()


def test_cli_bad_value_through_the_console(dense, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "jaxprune.cli",
        "prune",
        "--checkpoint",
        str(dense),
        "--set",
        "max_ratio=5",
        "--out",
        str(tmp_path / "out"),
    ]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "'max_ratio'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_passes_sparse_rules_to_the_library_unexpanded(dense, tmp_path, monkeypatch, capsys):
    """The CLI hands ``rules`` to ``jaxprune.prune`` as given; which leaves they prune is the library's job."""
    seen = {}

    def fake_prune(variables, sparsity, **kw):
        seen.update(kw, sparsity=sparsity)
        raise ValueError("stop here")

    monkeypatch.setattr(jp, "prune", fake_prune)
    rules = '[["conv_1", 0.8], ["head", null]]'
    status = main(["prune", "--checkpoint", str(dense), "--set", f"rules={rules}", "--out", str(tmp_path / "o")])
    assert status == 2 and "stop here" in capsys.readouterr().err
    assert seen["rules"] == (("conv_1", 0.8), ("head", None)) and seen["prunable"] is None
    assert seen["sparsity"] == 0.5 and not (tmp_path / "o").exists()
