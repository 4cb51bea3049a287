"""Pruning recipes: JSON files (+ ``--set key=value`` overrides) -> masks or a shrink plan.

``--recipe`` takes a path to a JSON file or the name of a recipe shipped with
the package (``jaxprune/recipes/*.json``: ``unstructured90``, ``nm24``,
``structured_flops50``, ``erk80_snip``; ``unstructured90.json`` works too). An
existing file wins over a packaged name.

A recipe is a JSON object; every field has a default, so ``{}`` is valid
(50% layerwise magnitude). Fields:

* ``kind``: ``'unstructured'`` | ``'nm'`` | ``'block'`` (sparse masks) or
  ``'structured'`` (shrinks tensors).
* ``method``: sparse kinds: a score of ``jaxprune.prune`` (``magnitude``,
  ``random``, ``saliency``, ``taylor``, ``snip``; the last three use gradients
  of the loss on ``calibration_examples`` training images); structured: a group
  importance (``l1``, ``l2``, ``taylor``, ``bn_scale``, ``random``).
* ``sparsity`` (sparse kinds, in [0, 1)), ``scope`` (``layerwise``/``global``),
  ``distribution`` (``uniform``/``erk``/``er``), ``n``/``m`` (N:M), ``block``
  ([rows, cols]), ``prunable`` ([[regex, bool], ...]).
* ``rules``: [[regex, value], ...], first match wins: per-leaf sparsity (null =
  keep dense) for sparse kinds, per-group pruning ratio for ``structured``.
  Every regex must match some layer.
* structured: ``ratio`` (fraction of units pruned, [0, 1)), ``budget``
  (``{"flops": 0.5}`` or ``{"param_bytes": 0.5}``: fraction of the dense cost;
  global ranking), ``round_to`` (int >= 1), ``min_keep`` (int >= 0),
  ``max_ratio`` (in [0, 1]), ``ignore`` ([regex]), ``kinds``.
* ``seed`` (random scores), ``calibration_examples``.

Example:
  >>> r = recipe_from_dict({"kind": "unstructured", "sparsity": 0.9}, ["scope=global"])
  >>> r.sparsity, r.scope
  (0.9, 'global')
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.cli.common import CliError, LoadedModel, apply_fn

KINDS = ("unstructured", "nm", "block", "structured")
GROUP_METHODS = ("l1", "l2", "taylor", "bn_scale", "random")
GRAD_METHODS = ("saliency", "taylor", "snip")


def sparse_methods() -> tuple[str, ...]:
    """Score names ``jaxprune.prune`` knows (built-in and registered with ``jaxprune.register_score``)."""
    import jaxprune  # noqa: F401  (registers the zero-shot scores)
    from jaxprune._src.scores import SCORE_FNS

    return tuple(sorted(SCORE_FNS))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated pruning recipe (see the module docstring for the fields)."""

    kind: str = "unstructured"
    method: str | None = None  # default: magnitude (sparse) / l1 (structured)
    sparsity: float = 0.5
    scope: str = "layerwise"
    distribution: str = "uniform"
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (4, 4)
    prunable: tuple | None = None
    rules: tuple | None = None
    ratio: float = 0.5
    budget: dict | None = None
    round_to: int = 1
    min_keep: int = 1
    max_ratio: float = 1.0
    ignore: tuple | None = None
    kinds: tuple | None = None
    seed: int = 0
    calibration_examples: int = 64

    @property
    def score(self) -> str:
        return self.method or ("l1" if self.kind == "structured" else "magnitude")

    @property
    def needs_grads(self) -> bool:
        return self.score in GRAD_METHODS

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------------------ parsing
def parse_value(text: str) -> Any:
    """JSON if it parses, else the string itself (``0.9`` -> 0.9, ``[1,2]`` -> list, ``global`` -> 'global')."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    """``key=value`` overrides (dotted keys reach into nested dicts) applied to a copy of ``config``.

    >>> apply_overrides({"budget": {"flops": 0.5}}, ["budget.flops=0.3", "kind=structured"])
    {'budget': {'flops': 0.3}, 'kind': 'structured'}
    """
    out = json.loads(json.dumps(config))
    for item in overrides:
        if "=" not in item:
            raise CliError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise CliError(f"--set: bad key {key!r}")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = parse_value(text)
    return out


def _packaged_dir():
    """The folder of recipes shipped in the package (a :mod:`importlib.resources` traversable)."""
    from importlib import resources

    return resources.files("jaxprune") / "recipes"


def packaged_recipes() -> tuple[str, ...]:
    """Names of the recipes shipped with the package (``--recipe NAME``), sorted.

    >>> "unstructured90" in packaged_recipes()
    True
    """
    folder = _packaged_dir()
    if not folder.is_dir():
        return ()
    return tuple(sorted(e.name[: -len(".json")] for e in folder.iterdir() if e.name.endswith(".json")))


def read_recipe_text(spec: str) -> tuple[str, str]:
    """``(text, where)`` of the recipe ``spec``: an existing JSON file, else a packaged recipe name.

    A packaged name may carry the ``.json`` suffix (``unstructured90`` or ``unstructured90.json``).
    Raises :class:`CliError` listing the packaged names when ``spec`` is neither.
    """
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                return f.read(), repr(spec)
        except OSError as e:
            raise CliError(f"cannot read recipe file {spec!r}: {e}") from None
    names = packaged_recipes()
    name = spec[: -len(".json")] if spec.endswith(".json") else spec
    if name in names and not any(sep in spec for sep in ("/", os.sep)):
        return (_packaged_dir() / f"{name}.json").read_text(encoding="utf-8"), f"packaged recipe {name!r}"
    if any(sep in spec for sep in ("/", os.sep)) or spec.endswith(".json") or os.path.exists(spec):
        if os.path.isdir(spec):
            what = f"recipe {spec!r} is a folder, not a JSON file"
        else:
            what = f"recipe file {spec!r} does not exist"
        base = os.path.basename(spec)
        base = base[: -len(".json")] if base.endswith(".json") else base
        if base in names:
            what += f" (the shipped recipes are packaged now: --recipe {base})"
    else:
        what = f"unknown recipe {spec!r}"
    raise CliError(
        f"{what}; give a path to a JSON recipe file or a packaged recipe name: {', '.join(names) or '(none installed)'}"
    )


def load_recipe(spec: str | None, overrides: Sequence[str] = ()) -> Recipe:
    """Reads a recipe (``None``: defaults), applies ``--set`` overrides, validates.

    ``spec``: a path to a JSON file, or the name of a packaged recipe (see :func:`packaged_recipes`).
    """
    config: dict = {}
    if spec is not None:
        text, where = read_recipe_text(str(spec))
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise CliError(f"recipe {where} is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise CliError(f"recipe {where} must hold a JSON object, got {type(config).__name__}")
    return recipe_from_dict(config, overrides)


def _rules(value: Any, name: str) -> tuple | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str) for r in value
    ):
        raise CliError(f"recipe field {name!r} must be a list of [regex, value] pairs, got {value!r}")
    for r in value:
        try:
            re.compile(r[0])
        except re.error as e:
            raise CliError(f"recipe field {name!r}: invalid regex {r[0]!r}: {e}") from None
    return tuple(tuple(r) for r in value)


def _fraction(value: Any, name: str, hi_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0.0 <= value < 1.0 if hi_open else 0.0 < value <= 1.0):
        rng = "[0, 1)" if hi_open else "(0, 1]"
        raise CliError(f"recipe field {name!r} must be a number in {rng}, got {value!r}")
    return float(value)


def recipe_from_dict(config: dict, overrides: Sequence[str] = ()) -> Recipe:
    """Validates a recipe dict (after overrides); every error names the field, expected and actual value."""
    config = apply_overrides(config, overrides)
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise CliError(f"unknown recipe field(s) {unknown}; fields are {sorted(fields)}")
    kind = config.get("kind", "unstructured")
    if kind not in KINDS:
        raise CliError(f"recipe kind must be one of {KINDS}, got {kind!r}")
    method = config.get("method")
    allowed = GROUP_METHODS if kind == "structured" else sparse_methods()
    if method is not None and method not in allowed:
        raise CliError(f"unknown method {method!r} for kind {kind!r}; known methods: {', '.join(allowed)}")
    kw = dict(config)
    for name in ("sparsity", "ratio"):
        if name in kw:
            kw[name] = _fraction(kw[name], name)
    for name in ("prunable", "rules"):
        kw[name] = _rules(kw.get(name), name)
    if kind != "structured" and kw["rules"]:
        for rx, v in kw["rules"]:
            if v is not None:
                _fraction(v, f"rules[{rx!r}]")
    if kind == "structured" and kw["rules"]:
        kw["rules"] = tuple((rx, 0.0 if v is None else _fraction(v, f"rules[{rx!r}]")) for rx, v in kw["rules"])
    if kw.get("scope", "layerwise") not in ("layerwise", "global"):
        raise CliError(f"recipe field 'scope' must be 'layerwise' or 'global', got {kw['scope']!r}")
    if kw.get("distribution", "uniform") not in ("uniform", "erk", "er"):
        raise CliError(f"recipe field 'distribution' must be 'uniform', 'erk' or 'er', got {kw['distribution']!r}")
    budget = kw.get("budget")
    if budget is not None:
        if kind != "structured":
            raise CliError("recipe field 'budget' applies to kind 'structured' only")
        if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in ("flops", "param_bytes"):
            raise CliError(f'recipe field \'budget\' must be {{"flops": f}} or {{"param_bytes": f}}, got {budget!r}')
        key, value = next(iter(budget.items()))
        kw["budget"] = {key: _fraction(value, f"budget.{key}", hi_open=False)}
    for name in ("n", "m", "round_to", "min_keep", "seed", "calibration_examples"):
        if name in kw and (not isinstance(kw[name], int) or isinstance(kw[name], bool) or kw[name] < 0):
            raise CliError(f"recipe field {name!r} must be a non-negative integer, got {kw[name]!r}")
    if "round_to" in kw and kw["round_to"] < 1:
        raise CliError(f"recipe field 'round_to' must be a positive integer (>= 1), got {kw['round_to']!r}")
    if "max_ratio" in kw:
        v = kw["max_ratio"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise CliError(f"recipe field 'max_ratio' must be a number in [0, 1], got {v!r}")
        kw["max_ratio"] = float(v)
    if method is not None and not isinstance(method, str):
        raise CliError(f"recipe field 'method' must be a string, got {method!r}")
    if kw.get("prunable"):
        for rx, v in kw["prunable"]:
            if not isinstance(v, bool):
                raise CliError(f"recipe field 'prunable': the value of {rx!r} must be true or false, got {v!r}")
    if kind == "nm" and not 0 < kw.get("n", 2) <= kw.get("m", 4):
        raise CliError(f"N:M needs 0 < n <= m, got n={kw.get('n', 2)}, m={kw.get('m', 4)}")
    if "block" in kw:
        kw["block"] = tuple(kw["block"]) if isinstance(kw["block"], (list, tuple)) else kw["block"]
        if not (
            isinstance(kw["block"], tuple)
            and len(kw["block"]) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in kw["block"])
        ):
            raise CliError(f"recipe field 'block' must be [rows, cols] (positive integers), got {config['block']!r}")
    for name in ("ignore", "kinds"):
        if kw.get(name) is not None:
            if not isinstance(kw[name], list) or not all(isinstance(x, str) for x in kw[name]):
                raise CliError(f"recipe field {name!r} must be a list of strings, got {kw[name]!r}")
            kw[name] = tuple(kw[name])
    return Recipe(**kw)


# ------------------------------------------------------------------------------------------ applying
def calibration_grads(model, variables, images: np.ndarray, labels: np.ndarray):
    """Gradients (like ``variables``; zero outside ``params``) of the mean cross-entropy on one batch."""
    from jaxprune._src.train import cross_entropy

    def loss(v):
        return cross_entropy(apply_fn(model)(v, images), labels)

    return jax.jit(jax.grad(loss))(variables)


def apply_recipe(recipe: Recipe, loaded: LoadedModel, *, grads=None) -> LoadedModel:
    """Prunes ``loaded`` as the recipe says: a sparse (masked) or a shrunk :class:`LoadedModel`.

    Raises :class:`CliError` if a rule matches no layer or nothing at all would be pruned.
    """
    if recipe.needs_grads and grads is None:
        raise CliError(f"method {recipe.score!r} needs gradients: give --dataset for calibration data")
    if recipe.kind == "structured":
        return _structured(recipe, loaded, grads)
    return _sparse(recipe, loaded, grads)


def _sparse(recipe: Recipe, loaded: LoadedModel, grads) -> LoadedModel:
    import jaxprune as jp
    from jaxprune._src import tree as tree_lib

    structure = recipe.kind
    kw = dict(
        method=recipe.score,
        scope=recipe.scope,
        distribution=recipe.distribution,
        structure=structure,
        prunable=recipe.prunable,
        rules=recipe.rules,
        n=recipe.n,
        m=recipe.m,
        block=recipe.block,
        grads=grads,
        key=jax.random.key(recipe.seed),
        masks=loaded.masks,
        strict=True,
    )
    try:
        pruned, masks = jp.prune(loaded.variables, recipe.sparsity, **kw)
    except (ValueError, TypeError) as e:
        if "no prunable leaf" in str(e):  # the library refuses a pytree without prunable leaves
            raise CliError(f"the recipe matches no layer (check 'prunable' and 'rules'): {e}") from None
        raise CliError(f"recipe cannot be applied: {e}") from None
    if not [m for m in jax.tree.leaves(masks) if m is not None]:
        raise CliError(
            "the recipe matches no layer: no parameter would be pruned (check 'prunable' and 'rules'; "
            f"layers: {[p for p, _ in tree_lib.leaves_with_paths(loaded.variables)][:20]})"
        )
    return dataclasses.replace(loaded, variables=pruned, masks=masks, kind="sparse", plan=None)


def _structured(recipe: Recipe, loaded: LoadedModel, grads) -> LoadedModel:
    from jaxprune import models
    from jaxprune._src.structured import flops_budget, make_plan, param_bytes_budget, shrink, trace_groups
    from jaxprune._src.structured.plan import DEFAULT_KINDS, EMPTY_HINT, eligible_groups

    if loaded.masks is not None:
        raise CliError(
            "structured pruning of a sparse (masked) checkpoint is not supported: start from the "
            "dense or a shrunk checkpoint"
        )
    model, variables = loaded.model, loaded.variables
    try:
        graph = trace_groups(apply_fn(model), variables, model.example_input(1))
    except Exception as e:  # noqa: BLE001 - tracing failures name the primitive
        raise CliError(f"cannot trace {type(model).__name__} for structured pruning: {e}") from None
    kinds = recipe.kinds if recipe.kinds is not None else DEFAULT_KINDS
    eligible = eligible_groups(graph, kinds, recipe.ignore)
    if not eligible:
        raise CliError(
            f"the recipe matches no layer: no prunable group of kinds {list(kinds)} is left "
            f"(ignore={list(recipe.ignore or ())})"
        )
    names = [m.path for g in graph.groups if g.prunable for m in (g.roots or g.members)]
    for rx in [r for r, _ in recipe.rules or ()] + list(recipe.ignore or ()):
        if not any(re.search(rx, n) for n in names):
            raise CliError(f"recipe regex {rx!r} matches no prunable layer; layers: {sorted(set(names))[:20]}")
    ratio: Any = recipe.ratio
    rules = None
    if recipe.rules:
        rules = list(recipe.rules) + [(".*", recipe.ratio)]
        ratio = 0.5  # make_plan's default: rules= carries the ratios
        if recipe.scope == "global":
            raise CliError("structured 'rules' need scope 'layerwise'")
    budget = None
    if recipe.budget:
        ((bkind, frac),) = recipe.budget.items()
        budget = (flops_budget if bkind == "flops" else param_bytes_budget)(frac, relative=True)
    try:
        plan = make_plan(
            variables,
            graph,
            ratio,
            scope=recipe.scope,
            method=recipe.score,
            grads=grads,
            key=jax.random.key(recipe.seed),
            round_to=recipe.round_to,
            min_keep=recipe.min_keep,
            max_ratio=recipe.max_ratio,
            ignore=recipe.ignore,
            kinds=kinds,
            budget=budget,
            rules=rules,
        )
        small = shrink(variables, plan)
        small_model = models.rebuild(model, small)
    except (ValueError, TypeError) as e:
        msg = str(e).replace(EMPTY_HINT, "raise the recipe field 'min_keep' to at least 1")
        raise CliError(f"recipe cannot be applied: {msg}") from None
    small = jax.tree.map(jnp.asarray, small)
    return dataclasses.replace(loaded, model=small_model, variables=small, masks=None, kind="shrunk", plan=plan)
