"""Sparse upstream training: one code path per method, checkpoints, report files, full-scale config."""

import json
import os

import numpy as np
import pytest

from jaxprune._src import tree as tree_lib
from jaxprune._src.transfer import sparse_upstream as su


def test_recipes_and_errors():
    cfg = su.SparseUpstreamConfig(steps=100)
    assert su.recipe("rigl5x", 0.9, cfg).steps == 500
    assert su.recipe("lth", 0.9, cfg).rounds == cfg.lth_rounds
    assert su.recipe("str", 0.9, cfg).reparam == "str"
    assert su.recipe("dense", 0.0, cfg).pruner is None
    with pytest.raises(ValueError, match="method"):
        su.recipe("magic", 0.9, cfg)
    with pytest.raises(ValueError, match="sparsity"):
        su.recipe("gmp", 1.5, cfg)
    with pytest.raises(ValueError, match="steps"):
        su.SparseUpstreamConfig(steps=0)


def test_full_config_fails_with_the_data_layer_message():
    cfg = su.full_upstream_config()
    assert (cfg.arch, cfg.dataset, cfg.image_size) == ("resnet50", "imagenet2012", 224)
    with pytest.raises((RuntimeError, ValueError), match="imagenet2012"):
        su.load_upstream_splits(cfg, data_dir="/nonexistent_jaxprune")


def test_run_writes_checkpoints_and_reports(tmp_path):
    cfg = su.SparseUpstreamConfig(steps=30, train_examples=300, stage_widths=(4, 8, 8), prune_every=5, lth_rounds=1)
    res = su.run_sparse_upstream(str(tmp_path), cfg, ("dense", "gmp", "lth"), (0.9,), log=lambda *_: None)
    saved = json.load(open(tmp_path / "results.json"))
    assert [r["run"] for r in saved["runs"]] == ["dense_s0", "gmp_s90", "lth_s90"]
    for r in saved["runs"]:
        assert {"test_accuracy", "sparsity", "seconds", "steps", "checkpoint"} <= set(r)
    by = {r["run"]: r for r in res["runs"]}
    assert by["dense_s0"]["sparsity"] == 0.0
    assert by["gmp_s90"]["sparsity"] == pytest.approx(0.9, abs=0.02)
    assert by["lth_s90"]["sparsity"] == pytest.approx(0.9, abs=0.02)
    assert by["lth_s90"]["steps"] == 30 + (30 - 1)  # first training + one round rewound to step 1
    assert os.path.exists(tmp_path / "results.md") and os.path.exists(tmp_path / "results.png")
    up = su.load_sparse_upstream(by["gmp_s90"]["checkpoint"])
    assert up.method == "gmp" and up.config == cfg
    kernels = [
        (m, p)
        for (_, m), (_, p) in zip(
            tree_lib.leaves_with_paths(up.masks, is_leaf=tree_lib.is_none),
            tree_lib.leaves_with_paths(up.variables["params"]),
        )
        if m is not None
    ]
    assert kernels and all(np.all(np.asarray(p)[~m] == 0) for m, p in kernels)
    assert up.masks["conv1"]["kernel"] is None and up.masks["fc"]["kernel"] is None  # kept dense
