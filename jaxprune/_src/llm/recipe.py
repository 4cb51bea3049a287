"""Recipes for calibration-based pruning of language models: a small JSON format, validated.

Fields (every error names the field, the expected and the actual value):

* ``method`` (required): ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` (weight sparsity),
  ``"flap"`` (calibrated structured width pruning) or ``"depth"`` (remove whole blocks).
* ``sparsity`` (default 0.5): fraction of weights pruned; for ``flap`` the fraction of heads (query groups)
  and MLP channels removed; for ``depth`` the fraction of blocks removed. In ``[0, 1)``.
* ``structure`` (default ``null``): ``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``) for magnitude / wanda / sparsegpt;
  ``sparsity`` must then be ``1 - N/M`` (or omitted).
* ``calibration`` (default ``{"samples": 128, "seq_len": 128}``): number of calibration sequences and
  their length in tokens.
* ``ignore`` (default ``[]``): regexes on parameter paths left dense (or groups kept whole).
* ``compensate`` (flap, default ``true``): FLAP bias compensation. ``score`` (depth, default ``"bi"``):
  ``"bi"`` (Block Influence) or ``"ablation"``. ``finetune_steps`` (default 0): recovery finetune steps.

Example:
  >>> r = recipe_from_dict({"method": "wanda", "structure": "2:4"})
  >>> r["sparsity"], r["calibration"]["samples"]
  (0.5, 128)
  >>> recipe_from_dict({"method": "obs"})
  Traceback (most recent call last):
  ...
  ValueError: recipe field 'method' must be one of ['depth', 'flap', 'magnitude', 'sparsegpt', 'wanda'], got 'obs'
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

__all__ = ["LLM_METHODS", "recipe_from_dict", "load_llm_recipe"]

LLM_METHODS = ("depth", "flap", "magnitude", "sparsegpt", "wanda")
_FIELDS = ("method", "sparsity", "structure", "calibration", "ignore", "compensate", "score", "finetune_steps")


def _int_field(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"recipe field {name!r} must be an int >= {lo}, got {value!r}")
    return value


def recipe_from_dict(config: Mapping[str, Any]) -> dict[str, Any]:
    """A validated recipe with every default filled in (see the module docstring); ``ValueError`` otherwise."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a recipe must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown recipe field(s) {unknown}; fields are {sorted(_FIELDS)}")
    if "method" not in config:
        raise ValueError(f"recipe field 'method' is required (one of {list(LLM_METHODS)})")
    method = config["method"]
    if method not in LLM_METHODS:
        raise ValueError(f"recipe field 'method' must be one of {list(LLM_METHODS)}, got {method!r}")
    structure = config.get("structure")
    nm = None
    if structure is not None:
        m = re.fullmatch(r"(\d+):(\d+)", structure) if isinstance(structure, str) else None
        if m is None or not 0 < int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"recipe field 'structure' must be null or 'N:M' with 0 < N < M, got {structure!r}")
        if method not in ("magnitude", "wanda", "sparsegpt"):
            raise ValueError(f"recipe field 'structure' applies to magnitude / wanda / sparsegpt, not {method!r}")
        nm = (int(m.group(1)), int(m.group(2)))
    default_sparsity = 1.0 - nm[0] / nm[1] if nm else (0.25 if method == "depth" else 0.5)
    sparsity = config.get("sparsity", default_sparsity)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"recipe field 'sparsity' must be a number in [0, 1), got {sparsity!r}")
    if nm and abs(sparsity - (1.0 - nm[0] / nm[1])) > 1e-9:
        raise ValueError(
            f"recipe field 'sparsity' must be 1 - N/M = {1.0 - nm[0] / nm[1]} with structure {structure!r}, "
            f"got {sparsity!r}"
        )
    calib = config.get("calibration", {})
    if not isinstance(calib, Mapping):
        raise ValueError(
            f"recipe field 'calibration' must be an object {{'samples': int, 'seq_len': int}}, got {calib!r}"
        )
    bad = sorted(set(calib) - {"samples", "seq_len"})
    if bad:
        raise ValueError(f"recipe field 'calibration' has unknown key(s) {bad}; keys are ['samples', 'seq_len']")
    calibration = {
        "samples": _int_field(calib.get("samples", 128), "calibration.samples", 1),
        "seq_len": _int_field(calib.get("seq_len", 128), "calibration.seq_len", 2),
    }
    ignore = config.get("ignore", [])
    if isinstance(ignore, str) or not isinstance(ignore, list) or not all(isinstance(r, str) for r in ignore):
        raise ValueError(f"recipe field 'ignore' must be a list of regex strings, got {ignore!r}")
    for r in ignore:
        try:
            re.compile(r)
        except re.error as e:
            raise ValueError(f"recipe field 'ignore': invalid regex {r!r}: {e}") from None
    compensate = config.get("compensate", True)
    if not isinstance(compensate, bool):
        raise ValueError(f"recipe field 'compensate' must be true or false, got {compensate!r}")
    if "compensate" in config and method != "flap":
        raise ValueError(f"recipe field 'compensate' applies to method 'flap', not {method!r}")
    score = config.get("score", "bi")
    if score not in ("bi", "ablation"):
        raise ValueError(f"recipe field 'score' must be 'bi' or 'ablation', got {score!r}")
    if "score" in config and method != "depth":
        raise ValueError(f"recipe field 'score' applies to method 'depth', not {method!r}")
    steps = _int_field(config.get("finetune_steps", 0), "finetune_steps", 0)
    return dict(
        method=method,
        sparsity=float(sparsity),
        structure=structure,
        calibration=calibration,
        ignore=list(ignore),
        compensate=compensate,
        score=score,
        finetune_steps=steps,
    )


def load_llm_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a JSON recipe file (``ValueError`` naming the file or the field).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "r.json"); _ = open(p, "w").write('{"method": "depth"}')
    >>> load_llm_recipe(p)["sparsity"]
    0.25
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read recipe file {os.fspath(path)!r}: {e}") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"recipe file {os.fspath(path)!r} repeats field(s) {dup} (JSON keeps only the last)")
        return dict(pairs)

    try:
        config = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ValueError(f"recipe file {os.fspath(path)!r} is not valid JSON: {e}") from None
    return recipe_from_dict(config)
