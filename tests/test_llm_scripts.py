"""scripts/prune_llm.py --quick runs end to end: every method gives a finite held-out perplexity."""

import math
import sys

import pytest
from script_runs import ROOT, run_script

METHODS = ("magnitude", "wanda", "sparsegpt", "flap", "depth")


def test_prune_llm_quick_has_every_method(tmp_path):
    out = tmp_path / "out"
    result = run_script("prune_llm.py", out, "--quick", "--no-cache")
    rows = {r["name"]: r for r in result["rows"]}
    assert result["meta"]["quick"] is True
    dense = rows["dense"]
    assert math.isfinite(dense["ppl"]) and 1.0 < dense["ppl"] < 256.0  # byte vocabulary: below uniform
    for method in METHODS:
        mine = [r for r in result["rows"] if r.get("recipe", {}).get("method") == method]
        assert mine, f"no row for method {method!r}: {sorted(rows)}"
        for r in mine:
            assert math.isfinite(r["ppl"]) and r["ppl"] > 1.0, r
            assert r["ppl_ft"] is None or math.isfinite(r["ppl_ft"]), r
            assert r["nonzero"] < dense["nonzero"], r  # every method removes parameters
    for name in ("magnitude 50%", "wanda 50%", "sparsegpt 2:4"):  # masks on half of every block kernel
        assert rows[name]["params"] == dense["params"] and rows[name]["nonzero"] < 0.75 * dense["params"]
    assert rows["depth BI 25%"]["params"] < dense["params"] and len(rows["depth BI 25%"]["removed"]) == 1
    finetuned = [r for r in result["rows"] if r["ppl_ft"] is not None]
    assert {r["recipe"]["method"] for r in finetuned} == {"magnitude", "flap"}  # a masked and a shrunk model
    assert "| dense |" in (out / "results.md").read_text()
    assert (out / "prune_llm.png").stat().st_size > 1000


def test_docstring_corpus_is_larger_and_keeps_the_heldout_text_unseen():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prune_llm
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from jaxprune.llm import decode, stdlib_docstrings, text_splits, token_splits

    pydoc = prune_llm.training_tokens({"data": "pydoc"})
    both = prune_llm.training_tokens({"data": "pydoc+docstrings"})
    assert (pydoc == token_splits()[0]).all()
    assert len(both) > 3 * len(pydoc) and (both[: len(pydoc)] == pydoc).all()
    held = text_splits()[1]
    extra = decode(both[len(pydoc) :])
    probes = [held[i : i + 48] for i in range(0, len(held) - 48, 997)]
    assert probes and not any(p in extra for p in probes)
    # the exclusion really removes a docstring that quotes the held-out text
    doc = stdlib_docstrings()
    first = doc.split("\n\n")[0]
    assert first in doc and first not in stdlib_docstrings(exclude=first[:60])
    with pytest.raises(ValueError, match="pydoc\\+docstrings"):
        prune_llm.training_tokens({"data": "wiki"})
