"""Pruning a small Llama-style decoder trained on real English text: one-shot, structured, depth; perplexity.

Trains (once; cached under ``jaxprune.transfer.default_cache_dir()/llm_decoder``
with ``save_checkpoint``) a byte-level decoder (RMSNorm, RoPE, GQA, SwiGLU,
tied embeddings) on Python's own documentation (``pydoc_data.topics``; topics
split into train / held-out), then evaluates held-out perplexity for:

* dense;
* magnitude, Wanda and SparseGPT at 50% unstructured and 2:4 (calibrated on
  training sequences; ``jaxprune.llm``);
* structured width pruning (heads / query groups / MLP channels) at 25% and
  50% with FLAP's fluctuation score, with and without bias compensation, shrunk
  by the structured engine;
* depth pruning by Block Influence and by ablation, removing 25% of the blocks;

each right after pruning and after a short recovery finetune (distillation from
the dense model with ``--distill``). Calibration time and peak RSS growth are
recorded per method. Evidence for the Wanda / SparseGPT vs magnitude comparison:
per held-out sequence paired loss differences (with standard errors), per
layer the output reconstruction error on the calibration inputs and the spread
of the input-feature norms, and Wanda / magnitude mask hybrids. Writes
results.json, results.md and prune_llm.png to --out.

  python scripts/prune_llm.py --out docs/results/llm_decoder      # default run
  python scripts/prune_llm.py --quick --out /tmp/q                 # < 1 minute smoke run
  python scripts/prune_llm.py --recipe my.json --out /tmp/r        # one method from a JSON recipe

Recipe (JSON): {"method": "wanda"|"sparsegpt"|"magnitude"|"flap"|"depth", "sparsity": 0.5,
"structure": "2:4"|"4:8"|null, "calibration": {"samples": 128, "seq_len": 128}, "ignore": ["regex", ...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# ----------------------------------------------------------------------------- the trained decoder
def train_config(quick: bool) -> dict:
    if quick:
        return dict(
            model=dict(vocab_size=256, num_layers=4, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64),
            steps=10,
            batch=8,
            seq_len=32,
            lr=3e-3,
            seed=0,
        )
    return dict(
        model=dict(vocab_size=256, num_layers=4, d_model=128, num_heads=8, num_kv_heads=4, head_dim=16, mlp_dim=384),
        # 2000 steps (~25 min on 2 quiet cores) on the training topics. lr 1e-2: at this learning rate the model
        # develops uneven input-feature scales (max/median RMS of a layer's inputs up to ~5-8x), the property of
        # trained LLMs that Wanda relies on; at 3e-3 it does not (<= 2.4x at q/k/v), memorises more (training
        # loss 0.53 vs held-out 0.96 nats/byte) and Wanda ties magnitude at 50%. `--lr`, `--data
        # pydoc+docstrings` (the stdlib docstrings too) and `--seed` train the others;
        # docs/results/llm_decoder/README.md compares all four recipes.
        steps=2000,
        batch=32,
        seq_len=128,
        lr=1e-2,
        seed=0,
    )


_DATA_NAMES = {
    "pydoc": "the training topics of pydoc_data.topics",
    "pydoc+docstrings": "the training topics of pydoc_data.topics + the standard library's docstrings",
}


def training_tokens(cfg: dict):
    """The decoder's training text: the training topics, plus the stdlib docstrings for ``data="pydoc+docstrings"``."""
    import numpy as np

    from jaxprune.llm import encode, stdlib_docstrings, text_splits, token_splits

    data = cfg.get("data", "pydoc")
    train, _ = token_splits()
    if data == "pydoc":
        return train
    if data != "pydoc+docstrings":
        raise ValueError(f"train config: data must be 'pydoc' or 'pydoc+docstrings', got {data!r}")
    return np.concatenate([train, encode("\n\n" + stdlib_docstrings(exclude=text_splits()[1]))])


def train_or_load(cfg: dict, cache_dir: str | None, log=print):
    """``(model, params, info)``: the decoder trained with ``cfg``, restored from the cache when present."""
    import hashlib

    import jax

    from jaxprune import restore_checkpoint, save_checkpoint
    from jaxprune.llm import finetune_lm, lm_batches
    from jaxprune.models import get_config
    from jaxprune.models.llama import LlamaDecoder

    model = LlamaDecoder(**cfg["model"])
    train = training_tokens(cfg)
    # the key covers the training text too: another Python version ships other docstrings
    text = train.tobytes() if cfg.get("data", "pydoc") != "pydoc" else b""
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode() + text).hexdigest()[:12]
    ckpt = os.path.join(cache_dir, "llm_decoder", key) if cache_dir else None
    if ckpt and os.path.isdir(ckpt):
        try:
            restored = restore_checkpoint(ckpt, items=["params", "data_state"])
            log(f"loaded the trained decoder from {ckpt}")
            return model, jax.tree.map(jax.numpy.asarray, restored.params), dict(restored.data_state or {}, cached=True)
        except Exception as e:  # a broken cache entry: retrain
            log(f"cache {ckpt} unreadable ({e}); retraining")
    params = model.init(jax.random.key(cfg["seed"]), model.example_input(1))["params"]
    log(f"training the decoder for {cfg['steps']} steps (batch {cfg['batch']} x {cfg['seq_len']} bytes)")
    params, info = finetune_lm(
        lambda p, t: model.apply({"params": p}, t),
        params,
        lm_batches(train, cfg["seq_len"], cfg["batch"], seed=cfg["seed"], epochs=None),
        steps=cfg["steps"],
        learning_rate=cfg["lr"],
        warmup=max(1, cfg["steps"] // 20),
        weight_decay=0.01,
        log_every=max(1, cfg["steps"] // 10),
    )
    state = {"train_seconds": info["seconds"], "final_train_loss": info["losses"][-1], "config": cfg}
    if ckpt:
        save_checkpoint(ckpt, cfg["steps"], params=params, model_config=get_config(model), data_state=state)
        log(f"saved the trained decoder to {ckpt}")
    return model, params, dict(state, cached=False)


# ----------------------------------------------------------------------------- pruning methods
def _rules(ignore):
    """Calibrated / pruned leaves: every block kernel; the tied embedding and ``ignore`` matches stay dense."""
    return [(r"(^|/)embed/", False)] + [(rx, False) for rx in ignore]


def _count(params, masks=None):
    import jax
    import numpy as np

    from jaxprune import is_none

    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if masks is None:
        return total, total
    pruned = sum(
        int(np.size(m) - np.count_nonzero(m)) for m in jax.tree.leaves(masks, is_leaf=is_none) if m is not None
    )
    return total, total - pruned


def _magnitude_masks(variables, stats, sparsity, structure):
    """Magnitude baseline on the same leaves as Wanda / SparseGPT: per layer, or N:M along the input axis."""
    import jax
    import jax.numpy as jnp

    import jaxprune as jp
    from jaxprune import map_with_path
    from jaxprune.llm import from_matrix, kernel_in_axes, kernel_matrix

    def one(path, w):
        st = stats.get(path)
        if st is None:
            return None
        axes = kernel_in_axes(w.shape, st, path)
        mat = jnp.abs(kernel_matrix(w, axes))
        if structure:
            n, m = (int(v) for v in structure.split(":"))
            keep = jp.nm_masks({"w": mat}, n, m, axis=0)["w"]
        else:
            keep = jp.layerwise_masks({"w": mat}, sparsity)["w"]
        return from_matrix(keep, w.shape, axes)

    del jax
    return map_with_path(one, variables)


def _spread(st):
    """Max / median of the per-feature RMS of a layer's calibration input (1: uniform; LLM outliers: >> 1)."""
    import numpy as np

    rms = np.sqrt(np.asarray(st.sq_norms, np.float64) / max(st.count, 1))
    return float(rms.max() / max(np.median(rms), 1e-30))


def _sequential_stages(model):
    """``sparsegpt_sequential`` stages of the unrolled decoder: embedding lookup, then one stage per block."""
    from jaxprune.models.llama import LlamaBlock

    stages = [lambda v, t: v["params"]["embed"]["embedding"][t]]
    for i in range(model.num_layers):
        blk = LlamaBlock(**model.block_config(f"block_{i}"))
        stages.append(lambda v, h, blk=blk, i=i: blk.apply({"params": v["params"][f"block_{i}"]}, h))
    return stages


def prune_one(recipe, model, params, calib, log=print):
    """Applies one recipe; returns ``(model, params, masks, info)`` (``masks`` None for structured / depth)."""
    import jax.numpy as jnp

    import jaxprune as jp
    import jaxprune.llm as jl

    variables = {"params": params}
    apply = lambda v, t: model.apply(v, t)  # noqa: E731
    inputs = [jnp.asarray(b[:, :-1]) for b in calib]
    method, s = recipe["method"], recipe["sparsity"]
    info: dict = {}
    t0 = time.perf_counter()
    if method in ("magnitude", "wanda", "sparsegpt"):
        rules = _rules(recipe["ignore"])
        if method == "sparsegpt":
            new, masks = jl.sparsegpt_sequential(
                _sequential_stages(model),
                variables,
                inputs,
                s,
                structure=recipe["structure"],
                rules=rules,
                calib_rules=rules,
            )
            info["calibration_seconds"] = None  # interleaved with pruning (layer by layer)
            info["stats_mb"] = None
        else:
            stats = jl.calibrate(apply, variables, inputs, rules=rules)
            info["calibration_seconds"] = time.perf_counter() - t0
            info["stats_mb"] = sum(st.xtx.size * 4 + st.sq_norms.size * 4 for st in stats.values()) / 2**20
            if method == "wanda":
                masks = jl.wanda_masks(variables, stats, s, structure=recipe["structure"], rules=rules)
            else:
                masks = _magnitude_masks(variables, stats, s, recipe["structure"])
            new = jp.apply_masks(variables, masks)
        info["prune_seconds"] = time.perf_counter() - t0
        if method != "sparsegpt":  # per-layer evidence: output error on the calibration inputs, input-norm spread
            info["layer_rel_err"] = {
                k.removeprefix("params/"): v for k, v in jl.reconstruction_error(variables, new, stats).items()
            }
            info["input_norm_spread"] = {k.removeprefix("params/"): _spread(st) for k, st in stats.items()}
        return model, new["params"], masks["params"], info
    if method == "flap":
        from jaxprune.models.llama import llama_rebuild

        small, plan, finfo = jl.flap_prune(
            apply, variables, inputs[0], inputs, s, compensate=recipe["compensate"], ignore=recipe["ignore"] or None
        )
        info.update(calibration_seconds=finfo["calibration_seconds"], prune_seconds=time.perf_counter() - t0)
        info["compensated_layers"] = len(finfo["compensated"])
        return llama_rebuild(model, small), small["params"], None, info
    if method == "depth":
        n = int(round(s * model.num_layers))
        if recipe["score"] == "bi":
            scores = jl.block_influence(lambda v, t: model.apply(v, t, return_hidden=True)[1], variables, inputs)
        else:
            scores = jl.ablation_scores(
                lambda v, t, skip: model.apply(v, t, skip=skip),
                variables,
                [jnp.asarray(b) for b in calib],
                model.num_layers,
            )
        info["calibration_seconds"] = time.perf_counter() - t0
        blocks = jl.blocks_to_remove(scores, n)
        new_model, new_vars = jl.remove_blocks(model, variables, blocks)
        info.update(
            prune_seconds=time.perf_counter() - t0, block_scores=[float(x) for x in scores], removed=list(blocks)
        )
        return new_model, new_vars["params"], None, info
    raise ValueError(f"unknown method {method!r}")


def default_recipes():
    rows = []
    for method in ("magnitude", "wanda", "sparsegpt"):
        rows.append((f"{method} 50%", {"method": method, "sparsity": 0.5}))
        rows.append((f"{method} 2:4", {"method": method, "structure": "2:4"}))
    for ratio in (0.25, 0.5):
        for comp in (False, True):
            name = f"flap {int(ratio * 100)}% width" + (" + comp" if comp else "")
            rows.append((name, {"method": "flap", "sparsity": ratio, "compensate": comp}))
    rows.append(("depth BI 25%", {"method": "depth", "sparsity": 0.25, "score": "bi"}))
    rows.append(("depth ablation 25%", {"method": "depth", "sparsity": 0.25, "score": "ablation"}))
    return rows


def _rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_all(args, cfg, model, params, train_info) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxprune.llm import (
        finetune_lm,
        lm_batches,
        lm_loss,
        load_llm_recipe,
        perplexity,
        recipe_from_dict,
        sequences,
        token_splits,
    )

    quick = args.quick
    seq = cfg["seq_len"]
    train, held = token_splits()
    eval_seqs = sequences(held, seq, max_sequences=8 if quick else None)
    eval_batches = [eval_seqs[i : i + 32] for i in range(0, len(eval_seqs), 32)]
    eval_batches = [b for b in eval_batches if len(b) == len(eval_batches[0])]  # one shape: one compilation
    ft_steps = 2 if quick else args.finetune_steps
    ft_batch = 4 if quick else 16

    if args.recipe:
        try:
            recipes = [(os.path.basename(args.recipe), load_llm_recipe(args.recipe))]
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if recipes[0][1]["finetune_steps"]:
            ft_steps = recipes[0][1]["finetune_steps"]
    else:
        recipes = [(n, recipe_from_dict(r)) for n, r in default_recipes()]
        if quick:  # one row per method (both sparsity structures), tiny calibration set
            keep = ("magnitude 50%", "wanda 50%", "sparsegpt 2:4", "flap 50% width + comp", "depth BI 25%")
            recipes = [(n, r) for n, r in recipes if n in keep]
            for _, r in recipes:
                r["calibration"] = {"samples": 8, "seq_len": seq}
    # --quick: the recovery finetune (one jit compilation per row) runs only on a masked and a shrunk row
    finetuned = ("magnitude 50%", "flap 50% width + comp") if quick and not args.recipe else None

    def ppl(m, p):
        return perplexity(lambda q, t: m.apply({"params": q}, t), p, eval_batches)

    def seq_nll(m, p):
        """Per held-out sequence mean loss (nats/byte); exp(mean) is the perplexity (equal-length sequences)."""
        f = jax.jit(jax.vmap(lambda q, b: lm_loss(lambda r, t: m.apply({"params": r}, t), q, b[None]), (None, 0)))
        return np.concatenate([np.asarray(f(p, jnp.asarray(b)), np.float64) for b in eval_batches])

    def finetune(m, p, masks, steps):
        kw = {}
        if args.distill:
            kw = dict(teacher_fn=lambda q, t: model.apply({"params": q}, t), teacher_params=params)
        out, _ = finetune_lm(
            lambda q, t: m.apply({"params": q}, t),
            p,
            lm_batches(train, seq, ft_batch, seed=1, epochs=None),
            steps=steps,
            learning_rate=5e-4,
            warmup=max(1, steps // 10),
            masks=masks,
            **kw,
        )
        return out

    dense_total, _ = _count(params)
    t0 = time.perf_counter()
    nll = {"dense": seq_nll(model, params)}
    dense_ppl = float(np.exp(nll["dense"].mean()))
    rows = [
        dict(
            name="dense",
            params=dense_total,
            nonzero=dense_total,
            ppl=dense_ppl,
            ppl_ft=None,
            calibration_seconds=None,
            prune_seconds=None,
            peak_rss_mb=_rss_mb(),
        )
    ]
    print(f"dense: held-out perplexity {dense_ppl:.3f} ({time.perf_counter() - t0:.1f}s)", flush=True)
    for name, recipe in recipes:
        n_cal = recipe["calibration"]["samples"]
        cal = sequences(train, recipe["calibration"]["seq_len"], max_sequences=n_cal)
        bs = min(16, len(cal))
        calib = [cal[i : i + bs] for i in range(0, len(cal) - bs + 1, bs)]
        t1 = time.perf_counter()
        m2, p2, masks, info = prune_one(recipe, model, params, calib)
        p2 = jax.tree.map(jnp.asarray, p2)
        total, nonzero = _count(p2, masks)
        nll[name] = seq_nll(m2, p2)
        before = float(np.exp(nll[name].mean()))
        steps = ft_steps if finetuned is None or name in finetuned else 0
        after = ppl(m2, finetune(m2, p2, masks, steps)) if steps else None
        row = dict(
            name=name,
            recipe=recipe,
            params=total,
            nonzero=nonzero,
            ppl=before,
            ppl_ft=after,
            peak_rss_mb=_rss_mb(),
            seconds=time.perf_counter() - t1,
            **info,
        )
        rows.append(row)
        print(
            f"{name}: ppl {before:.3f} -> {after if after is None else round(after, 3)} "
            f"after {steps} finetune steps; "
            f"nonzero params {nonzero}/{dense_total} ({row['seconds']:.1f}s)",
            flush=True,
        )
    write_outputs(
        args.out,
        rows,
        dict(
            paired=_paired(nll),
            wanda_diagnostics=None if quick or args.recipe else _wanda_diagnostics(model, params, train, seq, seq_nll),
            config=cfg,
            train=train_info,
            finetune_steps=ft_steps,
            finetune_batch=ft_batch,
            distill=bool(args.distill),
            eval_sequences=int(sum(len(b) for b in eval_batches)),
            loadavg=list(os.getloadavg()),
            quick=quick,
        ),
    )
    return 0


def _wanda_diagnostics(model, params, train, seq, seq_nll):
    """Which layers decide Wanda vs magnitude: hybrids of the two masks and magnitude with Wanda's group."""
    import re

    import jax.numpy as jnp
    import numpy as np

    import jaxprune as jp
    import jaxprune.llm as jl
    from jaxprune import is_none, map_with_path

    cal = sequences_for_calibration(train, seq)
    variables = {"params": params}
    rules = _rules([])
    stats = jl.calibrate(lambda v, t: model.apply(v, t), variables, cal, rules=rules)

    def per_output_magnitude(path, w):
        st = stats.get(path)
        if st is None:
            return None
        axes = jl.kernel_in_axes(w.shape, st, path)
        keep = jp.per_output_masks({"m": jnp.abs(jl.kernel_matrix(w, axes))}, 0.5)["m"]
        return jl.from_matrix(keep, w.shape, axes)

    def mix(wanda, magnitude, rx):  # Wanda's mask where the path matches rx, magnitude's elsewhere
        return map_with_path(
            lambda p, a, b: None if a is None else (a if re.search(rx, p) else b), wanda, magnitude, is_leaf=is_none
        )

    out = []
    for st, structure in (("50%", None), ("2:4", "2:4")):
        wanda = jl.wanda_masks(variables, stats, 0.5, structure=structure, rules=rules)
        magnitude = _magnitude_masks(variables, stats, 0.5, structure)
        variants = [
            (f"wanda {st}, magnitude masks on attn q/k", mix(wanda, magnitude, r"(mlp/|attn/[vo]/)")),
            (f"wanda {st} on attn q/k only", mix(wanda, magnitude, r"attn/[qk]/")),
        ]
        if structure is None:
            variants.append(
                (f"magnitude {st} per output unit (Wanda's group)", map_with_path(per_output_magnitude, variables))
            )
        for name, masks in variants:
            nll = seq_nll(model, jp.apply_masks(variables, masks)["params"])
            out.append(dict(name=name, ppl=float(np.exp(nll.mean()))))
            print(f"diagnostic {name}: ppl {out[-1]['ppl']:.3f}", flush=True)
    return out


def sequences_for_calibration(train, seq, samples=128, batch=16):
    """The default calibration batches (inputs only): ``samples`` training windows of ``seq`` bytes."""
    import jax.numpy as jnp

    from jaxprune.llm import sequences

    cal = sequences(train, seq, max_sequences=samples)
    return [jnp.asarray(cal[i : i + batch, :-1]) for i in range(0, len(cal) - batch + 1, batch)]


def _paired(nll):
    """Wanda / SparseGPT vs magnitude, sequence by sequence: mean loss difference (nats/byte) and its std error."""
    import numpy as np

    out = []
    for st in ("50%", "2:4"):
        base = nll.get(f"magnitude {st}")
        for method in ("wanda", "sparsegpt"):
            other = nll.get(f"{method} {st}")
            if base is None or other is None:
                continue
            d = other - base
            out.append(
                dict(
                    compare=f"{method} {st} - magnitude {st}",
                    mean_nll_diff=float(d.mean()),
                    std_err=float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
                    better_sequences=int(np.sum(d < 0)),
                    sequences=int(len(d)),
                )
            )
    return out


def _fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def _paired_lines(paired):
    if not paired:
        return []
    lines = [
        "",
        "Paired comparison on the held-out sequences (before finetuning): mean per-sequence loss difference "
        "(nats/byte; negative: better than magnitude) with its standard error, and on how many sequences the "
        "method's loss is lower.",
        "",
        "| comparison | mean loss diff | std err | sequences better |",
        "|---|---:|---:|---:|",
    ]
    for p in paired:
        lines.append(
            f"| {p['compare']} | {p['mean_nll_diff']:+.4f} | {_fmt(p['std_err'], 4)} | "
            f"{p['better_sequences']}/{p['sequences']} |"
        )
    return lines


def _layer_lines(rows):
    """Per-layer table: input-norm spread and relative output error of magnitude vs Wanda."""
    by = {r["name"]: r for r in rows}
    cols = [n for n in ("magnitude 50%", "wanda 50%", "magnitude 2:4", "wanda 2:4") if "layer_rel_err" in by.get(n, {})]
    if not cols:
        return []
    first = by[cols[0]]
    layers = sorted(first["layer_rel_err"])
    lines = [
        "",
        "Per layer: input spread = max / median RMS of the layer's input features on the calibration data; "
        "then ||X W - X W_pruned||^2 / ||X W||^2 on the calibration inputs (dense inputs, one shot).",
        "",
        "| layer | input spread | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for k in layers:
        errs = " | ".join(f"{by[c]['layer_rel_err'][k]:.4f}" for c in cols)
        lines.append(f"| {k} | {first['input_norm_spread'][k]:.1f} | {errs} |")
    for st in ("50%", "2:4"):
        a, b = by.get(f"magnitude {st}", {}), by.get(f"wanda {st}", {})
        if "layer_rel_err" in a and "layer_rel_err" in b:
            wins = sum(b["layer_rel_err"][k] < a["layer_rel_err"][k] for k in layers)
            tot_a, tot_b = sum(a["layer_rel_err"].values()), sum(b["layer_rel_err"].values())
            lines.append(
                f"\nWanda {st}: lower error than magnitude in {wins}/{len(layers)} layers "
                f"(sum of relative errors {tot_b:.3f} vs {tot_a:.3f})."
            )
    return lines


def write_outputs(out, rows, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)

    def atomic(path, text):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    atomic(os.path.join(out, "results.json"), json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
    cfg = meta["config"]
    lines = [
        "# Pruning a byte-level Llama-style decoder trained on Python's own documentation",
        "",
        f"Model: {cfg['model']}; trained {cfg['steps']} steps (batch {cfg['batch']} x {cfg['seq_len']} bytes, "
        f"AdamW lr {cfg['lr']}) on {_DATA_NAMES[cfg.get('data', 'pydoc')]}. "
        f"Held-out perplexity on {meta['eval_sequences']} held-out sequences (held-out topics, per byte). "
        "Recovery finetune: "
        f"{meta['finetune_steps']} steps, batch {meta['finetune_batch']}"
        + (", distillation" if meta["distill"] else "")
        + f". Load average during the run: {[round(x, 1) for x in meta['loadavg']]} "
        "(2 shared cores: timings are rough).",
        "",
        "| method | params | nonzero | calib s | prune s | calib stats MB | peak RSS MB | ppl | ppl after finetune |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['nonzero']:,} | {_fmt(r.get('calibration_seconds'), 1)} | "
            f"{_fmt(r.get('prune_seconds'), 1)} | {_fmt(r.get('stats_mb'), 1)} | {_fmt(r.get('peak_rss_mb'), 0)} | "
            f"{_fmt(r['ppl'])} | {_fmt(r['ppl_ft'])} |"
        )
    lines += [
        "",
        "calib s: calibration forward passes (SparseGPT: layer-by-layer calibration is interleaved with pruning, "
        "see prune s); calib stats MB: the X^T X statistics held (the memory calibration needs beyond the model); "
        "peak RSS MB: the process's high-water mark after the row (monotone, so only increases are informative).",
    ]
    lines += _paired_lines(meta.get("paired") or []) + _layer_lines(rows)
    if meta.get("wanda_diagnostics"):
        lines += [
            "",
            "Diagnostics (same calibration, no finetune): Wanda / magnitude mask hybrids and magnitude with "
            "Wanda's per-output comparison group.",
            "",
            "| variant | ppl |",
            "|---|---:|",
        ] + [f"| {d['name']} | {d['ppl']:.2f} |" for d in meta["wanda_diagnostics"]]
    atomic(os.path.join(out, "results.md"), "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    names = [r["name"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["ppl"] for r in rows], 0.4, label="after pruning")
    ax.bar([i + 0.2 for i in x], [r["ppl_ft"] or 0 for r in rows], 0.4, label="after recovery finetune")
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("held-out perplexity (per byte)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "prune_llm.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/prune_llm", help="output folder")
    ap.add_argument("--quick", action="store_true", help="tiny decoder, few steps (< 1 minute)")
    ap.add_argument("--recipe", default=None, help="JSON recipe file: run only that method")
    ap.add_argument("--cache-dir", default=None, help="where the trained decoder is cached (default: jaxprune's)")
    ap.add_argument("--no-cache", action="store_true", help="train without reading or writing the cache")
    ap.add_argument("--train-only", action="store_true", help="train (or load) the decoder and stop")
    ap.add_argument("--distill", action="store_true", help="recovery finetune by distillation from the dense model")
    ap.add_argument("--finetune-steps", type=int, default=30, help="recovery finetune steps per method (0: none)")
    ap.add_argument("--lr", type=float, default=None, help="decoder training learning rate (default: the config's)")
    ap.add_argument("--seed", type=int, default=None, help="decoder training seed (default: the config's, 0)")
    ap.add_argument(
        "--data",
        choices=("pydoc", "pydoc+docstrings"),
        default=None,
        help="decoder training text (default: pydoc, the training topics)",
    )
    args = ap.parse_args(argv)
    from jaxprune.transfer import default_cache_dir

    if args.recipe:  # validate before the (possibly long) training
        from jaxprune.llm import load_llm_recipe

        try:
            load_llm_recipe(args.recipe)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    cfg = train_config(args.quick)
    if args.lr is not None:
        if not 0 < args.lr < 1:
            print(f"error: --lr must be in (0, 1), got {args.lr}", file=sys.stderr)
            return 2
        cfg["lr"] = args.lr
    if args.data is not None:
        cfg["data"] = args.data
    if args.seed is not None:
        cfg["seed"] = args.seed
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    model, params, info = train_or_load(cfg, cache)
    if args.train_only:
        print(json.dumps({k: v for k, v in info.items() if k != "config"}))
        return 0
    return run_all(args, cfg, model, params, info)


if __name__ == "__main__":
    sys.exit(main())
