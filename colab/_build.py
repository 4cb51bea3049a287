"""Writes the Colab notebooks of this folder (outputs cleared) from the cell sources below.

The notebooks are generated so that they stay reviewable as plain Python:
edit this file, then run ``python colab/_build.py`` and commit both. The test
``tests/test_notebooks.py`` checks that the stored notebooks match this file
and executes them on CPU (``JAXPRUNE_NB_SMALL=1``).

Every notebook starts with the same setup cell: install jaxprune if it is not
importable (as a Colab user would), detect the backend and pick the SMALL (CPU)
or FULL (TPU/GPU) configuration. Environment variables (so that CI runs the
notebooks unmodified):

* ``JAXPRUNE_NB_SMALL=1`` / ``0``: force the small / full configuration.
* ``JAXPRUNE_NB_OUT``: folder for the results JSON and figures (default ``jaxprune_colab``).
* ``JAXPRUNE_INSTALL``: what ``%pip install`` installs when jaxprune is missing
  (a wheel path or URL, or a git URL; no default: the cell says what to set).
"""

from __future__ import annotations

import os
import sys
import textwrap

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where the repository is published (used by the Open-in-Colab badges only). jaxprune has no public
#: location yet: the badges point here once it exists. The install cell never guesses a URL.
REPO_URL = "https://github.com/jaxprune/jaxprune"

SETUP = """\
# Setup: install jaxprune if it is missing (Colab), check JAX against the runtime, pick a config.
import os, sys, json, time, warnings

# The ONE place to say where jaxprune comes from when it is not installed yet: a wheel you built with
# `pip wheel . -w dist` and uploaded (e.g. "/content/jaxprune-0.2.0-py3-none-any.whl"), or a git URL
# ("git+https://<host>/<owner>/jaxprune"). Or set the JAXPRUNE_INSTALL environment variable.
JAXPRUNE_INSTALL = os.environ.get("JAXPRUNE_INSTALL", "")
try:
    import jaxprune
except ImportError:
    if not JAXPRUNE_INSTALL:
        raise RuntimeError("jaxprune is not installed: set JAXPRUNE_INSTALL in this cell to a wheel path/URL "
                           "or a git URL of the repository, then run the cell again") from None
    %pip install -q {JAXPRUNE_INSTALL}
    import jaxprune

import jax, jaxlib
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto falls back to text bars

BACKEND = jax.default_backend()  # 'tpu', 'gpu' or 'cpu'
# Colab: a GPU/TPU runtime whose JAX does not see the accelerator needs the matching JAX build.
if os.environ.get("COLAB_GPU") and BACKEND != "gpu":
    print('WARNING: GPU runtime, but JAX runs on CPU: %pip install -U "jax[cuda12]" and restart the runtime')
if os.environ.get("COLAB_TPU_ADDR") and BACKEND != "tpu":
    print('WARNING: TPU runtime, but JAX runs on', BACKEND, ': %pip install -U "jax[tpu]" and restart the runtime')
_small = os.environ.get("JAXPRUNE_NB_SMALL")  # CI sets 1; set 0 to run the full config on CPU
SMALL = (BACKEND == "cpu") if _small is None else _small.strip().lower() in ("1", "true", "yes")
OUT = os.environ.get("JAXPRUNE_NB_OUT", "jaxprune_colab")  # results JSON and figures go here
os.makedirs(OUT, exist_ok=True)
T_START = time.perf_counter()
print(f"jaxprune {jaxprune.__version__} | jax {jax.__version__} / jaxlib {jaxlib.__version__} | backend {BACKEND} "
      f"({jax.devices()[0].device_kind}, {jax.device_count()} device(s)) | "
      f"{'SMALL (CPU) config' if SMALL else 'FULL (accelerator) config'}")
"""


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def md(text: str):
    return v4.new_markdown_cell(_src(text))


def code(text: str):
    return v4.new_code_cell(_src(text))


def colab_badge(name: str) -> str:
    path = REPO_URL.replace("https://github.com/", "")
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{path}/blob/main/colab/{name}.ipynb)"
    )


def notebook(name: str, title: str, intro: str, cells: list) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"name": f"{name}.ipynb", "provenance": [], "toc_visible": True},
        "accelerator": "GPU",
    }
    head = md(f"# {title}\n\n{colab_badge(name)}\n\n" + _src(intro))
    setup_md = md("""
        **Setup.** Installs jaxprune when it is not importable yet (in Colab: set `JAXPRUNE_INSTALL` in
        the cell to an uploaded wheel or a git URL), checks that JAX sees the runtime's accelerator (and
        says which `jax[cuda12]` / `jax[tpu]` to install if not), then picks the configuration: **SMALL** on
        CPU (a minute or so), **FULL** on a TPU/GPU runtime (*Runtime -> Change runtime type*). `JAXPRUNE_NB_SMALL=1`
        forces the small one (CI sets it).
        """)
    nb.cells = [head, setup_md, v4.new_code_cell(SETUP)] + cells
    for i, c in enumerate(nb.cells):
        c["id"] = f"{name[:2]}-{i:02d}"
    return nb


# ---------------------------------------------------------------------------------------------------- 01
QUICKSTART = dict(
    name="01_quickstart",
    title="jaxprune quickstart: sparse training with the optax wrapper",
    intro="""
        Train a small CNN on real images (the scikit-learn 8x8 digits, bundled offline) with **gradual
        magnitude pruning** to 90% global sparsity, inside *your own* jit-compiled training loop.

        * `jp.sparse_optimizer(inner, pruner)` wraps any optax optimizer; the masks live in the
          optimizer state and are recomputed on the pruner's schedule inside `jit` (one compilation).
        * `jp.sparsity_summary` reports per-layer sparsity; `jp.prune` does one-shot pruning (here 2:4).
        """,
    cells=[
        code("""
            import jax.numpy as jnp
            import numpy as np
            import optax
            import matplotlib.pyplot as plt
            from tqdm.auto import tqdm

            import jaxprune as jp
            from jaxprune import data, models

            if SMALL:
                CFG = dict(image_size=16, channels=(16, 32, 64), steps=300, batch_size=64, lr=3e-3, log_every=15)
            else:
                CFG = dict(image_size=32, channels=(64, 128, 256), steps=3000, batch_size=128, lr=2e-3, log_every=100)
            CFG["sparsity"] = 0.9
            print(CFG)
            """),
        md("""
            ## Data and model
            `jaxprune.data.load_dataset` materialises a split as arrays (offline tasks are built on first use;
            real tfds datasets work by name once prepared). `SmallCNN` is a Linen model with BatchNorm.
            """),
        code("""
            train = data.load_dataset("digits_offline", "train", image_size=CFG["image_size"])
            test = data.load_dataset("digits_offline", "test", image_size=CFG["image_size"])
            print(f"train {train.images.shape}, test {test.images.shape}, {train.num_classes} classes")

            model = models.SmallCNN(channels=CFG["channels"], num_classes=train.num_classes,
                                    image_size=CFG["image_size"])
            variables = model.init(jax.random.key(0), model.example_input(1))
            params, batch_stats = variables["params"], variables["batch_stats"]
            print(jax.tree.map(jnp.shape, params))
            """),
        md("""
            ## The sparse optimizer
            A cubic (GMP) schedule ramps sparsity from 0 to 90% between 20% and 60% of training, updating the
            masks every few steps; `MaskSpec(scope="global")` ranks all prunable kernels together (biases and
            norms are never pruned by default).
            """),
        code("""
            S = CFG["steps"]
            schedule = jp.polynomial(CFG["sparsity"], begin=S // 5, end=3 * S // 5, every=max(S // 30, 1))
            pruner = jp.magnitude_pruner(schedule, jp.MaskSpec(scope="global"))
            opt = jp.sparse_optimizer(optax.adamw(CFG["lr"], weight_decay=1e-4), pruner)
            opt_state = opt.init(params)


            TRACES = []  # Python side effects run only while jax traces: counts compilations


            @jax.jit
            def train_step(params, batch_stats, opt_state, images, labels):
                TRACES.append(1)

                def loss_fn(p):
                    logits, new_state = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                                    train=True, mutable=["batch_stats"])
                    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                    return loss, new_state["batch_stats"]

                (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
                updates, opt_state = opt.update(grads, opt_state, params)  # the wrapper needs params
                return optax.apply_updates(params, updates), batch_stats, opt_state, loss


            @jax.jit
            def accuracy(params, batch_stats, images, labels):
                logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
                return jnp.mean(jnp.argmax(logits, -1) == labels)
            """),
        md("## Training loop (with a notebook progress bar)"),
        code("""
            history = []
            it = data.batches(train, CFG["batch_size"], seed=0)
            for step in tqdm(range(S), desc="GMP training"):
                batch = next(it)
                params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state,
                                                                  batch["image"], batch["label"])
                if (step + 1) % CFG["log_every"] == 0 or step == S - 1:
                    masks = jp.get_masks(opt_state)
                    history.append(dict(step=step + 1, loss=float(loss),
                                        target=float(schedule.sparsity(step)),
                                        sparsity=jp.sparsity_summary(masks).total_sparsity,
                                        test_acc=float(accuracy(params, batch_stats, test.images, test.labels))))
            print(history[-1])
            print("train_step was traced", len(TRACES), "time(s) for", S, "steps")
            """),
        md("""
            ## Sparsity summary
            Per-layer sparsity of the final masks (global ranking prunes big layers more), and a check that
            every pruned weight is exactly zero in the params.
            """),
        code("""
            masks = jp.get_masks(opt_state)
            summary = jp.sparsity_summary(params, only=masks)  # zeros in the params, at pruned leaves
            print(summary)
            pruned_nonzero = sum(int(jnp.sum((~m) & (p != 0))) for m, p in zip(
                jax.tree.leaves(masks), jax.tree.leaves(jax.tree.map(lambda m, p: p if m is not None else None,
                                                                     masks, params, is_leaf=jp.is_none))))
            print("pruned weights that are not exactly zero:", pruned_nonzero)
            """),
        code("""
            fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
            steps = [h["step"] for h in history]
            axes[0].plot(steps, [h["loss"] for h in history])
            axes[0].set(xlabel="step", ylabel="train loss", title="loss")
            axes[1].plot(steps, [h["sparsity"] for h in history], lw=3, alpha=0.5, label="achieved (masks)")
            axes[1].plot(steps, [h["target"] for h in history], "k--", label="schedule")
            axes[1].plot(steps, [h["test_acc"] for h in history], label="test accuracy")
            axes[1].set(xlabel="step", ylim=(0, 1.02), title="sparsity and accuracy")
            axes[1].legend()
            rows = summary.rows
            axes[2].barh([r.path for r in rows], [r.sparsity for r in rows])
            axes[2].set(xlabel="sparsity", xlim=(0, 1), title="per-layer sparsity")
            fig.tight_layout()
            fig.savefig(os.path.join(OUT, "01_quickstart.png"), dpi=100)
            plt.show()
            """),
        md("""
            ## One-shot pruning: N:M (2:4) on top
            `jp.prune` returns `(pruned_params, masks)` in one shot. 2:4 keeps the 2 largest of every 4
            weights along the input dimension (the pattern sparse tensor cores accelerate); the first conv has
            only 3 input channels, so a `(regex, bool)` rule leaves it dense. Imposed on the GMP model, it
            mostly drops weights that are already zero: what does the hardware-friendly pattern cost?
            """),
        code("""
            nm_params, nm_masks = jp.prune(params, structure="nm", n=2, m=4, prunable=[("conv_0", False)])
            nm_summary = jp.sparsity_summary(nm_masks)
            acc_sparse = float(accuracy(params, batch_stats, test.images, test.labels))
            acc_nm = float(accuracy(nm_params, batch_stats, test.images, test.labels))
            print(f"2:4 sparsity {nm_summary.total_sparsity:.1%}; test accuracy before finetuning {acc_nm:.3f} "
                  f"(the GMP model: {acc_sparse:.3f})")
            """),
        md("## Checks (the notebook fails if these do not hold) and results"),
        code("""
            result = dict(notebook="01_quickstart", backend=BACKEND, small=SMALL, steps=S,
                          total_sparsity=summary.total_sparsity,
                          mask_sparsity=jp.sparsity_summary(masks).total_sparsity, pruned_nonzero=pruned_nonzero,
                          test_accuracy=acc_sparse, nm_sparsity=nm_summary.total_sparsity,
                          compilations=len(TRACES), seconds=time.perf_counter() - T_START)
            with open(os.path.join(OUT, "01_quickstart.json"), "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps(result, indent=1))

            assert abs(result["mask_sparsity"] - CFG["sparsity"]) < 1e-3, result
            assert result["total_sparsity"] >= CFG["sparsity"] - 1e-3, result  # params really are zero there
            assert pruned_nonzero == 0
            assert result["compilations"] == 1, "the mask updates must not retrace the step"
            assert abs(result["nm_sparsity"] - 0.5) < 1e-6
            assert acc_sparse > 0.5, f"90% sparse model should still classify digits, got {acc_sparse:.3f}"
            """),
    ],
)

# ---------------------------------------------------------------------------------------------------- 02
STRUCTURED = dict(
    name="02_structured",
    title="Structured pruning: trace, plan, shrink a ResNet and a ViT",
    intro="""
        Masks make weights zero but keep tensors their size, so nothing gets faster. **Structured pruning
        really shrinks tensors**: conv filters and channels, attention heads, MLP units. jaxprune finds
        which parameter axes are coupled (a conv's filters, its BatchNorm, the next conv's input channels,
        residual adds, the reshape into heads) by **tracing the jaxpr** of your forward pass.

        `trace_groups` -> `make_plan` (a JSON-serializable `PrunePlan`) -> `shrink` -> `models.rebuild`;
        then XLA FLOPs and wall-clock latency before/after, and a check that the shrunk model computes
        exactly what the masked dense model computes.
        """,
    cells=[
        code("""
            import numpy as np
            import jax.numpy as jnp
            import matplotlib.pyplot as plt
            from tqdm.auto import tqdm

            import jaxprune as jp
            from jaxprune import models

            if SMALL:  # CIFAR-size ResNet-20 and a 2-layer ViT-Ti on 32x32 inputs
                SPECS = {
                    "ResNet-20": (lambda: models.cifar_resnet20(num_classes=10), None),
                    "ViT-Ti (2 layers, 32px)": (lambda: models.vit_ti16(num_classes=10, image_size=32, patch_size=4,
                                                                         num_layers=2), ("heads", "units")),
                }
                BATCH, REPS = 16, 3
            else:  # ImageNet-size models
                SPECS = {
                    "ResNet-50": (lambda: models.resnet50(image_size=224), None),
                    "ViT-B/16": (lambda: models.vit_b16(), ("heads", "units")),
                }
                BATCH, REPS = 32, 20
            RATIO = 0.5  # fraction of channels / heads / MLP units removed in every prunable group


            def median_seconds(fn, args, reps=REPS):
                \"\"\"Median seconds of a jitted call after two warm-ups (see benchmarks/structured_speedup.py).\"\"\"
                jax.block_until_ready(fn(*args))
                jax.block_until_ready(fn(*args))
                times = []
                for _ in range(reps):
                    t = time.perf_counter()
                    jax.block_until_ready(fn(*args))
                    times.append(time.perf_counter() - t)
                return float(np.median(times))
            """),
        md("""
            ## 1. Trace the coupled groups of a ResNet
            Trace in eval mode (BatchNorm with running statistics) and return only the outputs. Every group
            lists its members: `(leaf path, axis)` pairs that must lose the same indices.
            """),
        code("""
            name, (make_model, kinds) = list(SPECS.items())[0]
            model = make_model()
            x = jax.random.normal(jax.random.key(0), (BATCH,) + model.example_input(1).shape[1:])
            variables = model.init(jax.random.key(1), x[:1])
            apply = lambda v, inp: model.apply(v, inp, train=False)

            graph = jp.trace_groups(apply, variables, x[:1])
            print(graph.describe().splitlines()[0])
            print(graph.prunable[0])  # a conv's filters, its BatchNorm, the next conv's input channels
            residual = max(graph.prunable, key=lambda g: len(g.roots))
            print(residual)  # the residual stream: every conv writing into the same additions is coupled
            """),
        md("""
            ## 2. Plan and shrink
            `make_plan` scores every group (L1 norm of all its members by default), keeps the top half in each
            (`scope="layerwise"`; `"global"` ranks all groups together) and returns plain data. `shrink`
            slices every coupled leaf (batch statistics too); `models.rebuild` returns the Linen model with the
            new widths.
            """),
        code("""
            plan = jp.make_plan(variables, graph, ratio=RATIO)
            print(plan.describe()[:1500], "\\n...")
            small = jp.shrink(variables, plan)
            small_model = models.rebuild(model, small)
            small_apply = lambda v, inp: small_model.apply(v, inp, train=False)
            print("new widths:", dict(list(dict(small_model.widths).items())[:6]), "...")
            assert jp.PrunePlan.from_json(plan.to_json()) == plan  # the plan is data: JSON round trip
            """),
        md("""
            ## 3. Equivalence: shrunk model == masked dense model
            `plan_to_masks` zeroes exactly what the plan removes (whole filters, and the BatchNorm shift of
            removed channels), so the dense model with those masks must give the same outputs.
            """),
        code("""
            def max_abs_diff(fn_a, args_a, fn_b, args_b):
                with jax.default_matmul_precision("highest"):  # TPUs/GPUs otherwise round f32 matmuls
                    ya, yb = fn_a(*args_a), fn_b(*args_b)
                return float(jnp.max(jnp.abs(ya - yb))), float(jnp.max(jnp.abs(yb)))

            masked = jp.apply_masks(variables, jp.plan_to_masks(variables, plan))
            diff, scale = max_abs_diff(small_apply, (small, x), apply, (masked, x))
            print(f"max |shrunk - masked| = {diff:.2e} (outputs up to {scale:.2f})")
            """),
        md("## 4. FLOPs (XLA cost analysis) and latency before/after"),
        code("""
            print(jp.compare_models((apply, variables), (small_apply, small), x))
            results = {}


            def measure(name, apply, variables, small_apply, small, x, diff, scale, plan):
                dense_flops, small_flops = jp.flops(apply, variables, x), jp.flops(small_apply, small, x)
                dense_s = median_seconds(jax.jit(apply), (variables, x))
                small_s = median_seconds(jax.jit(small_apply), (small, x))
                results[name] = dict(dense_flops=dense_flops, small_flops=small_flops,
                                     flops_ratio=dense_flops / small_flops, dense_ms=1e3 * dense_s,
                                     small_ms=1e3 * small_s, speedup=dense_s / small_s, max_abs_diff=diff,
                                     output_scale=scale, dense_params=jp.param_count(variables["params"]),
                                     small_params=jp.param_count(small["params"]), groups_pruned=len(plan.groups))
                r = results[name]
                print(f"{name}: FLOPs {r['dense_flops'] / 1e9:.3f}G -> {r['small_flops'] / 1e9:.3f}G "
                      f"(x{r['flops_ratio']:.2f}), latency {r['dense_ms']:.1f} -> {r['small_ms']:.1f} ms "
                      f"(x{r['speedup']:.2f}) at batch {x.shape[0]} on {BACKEND}")


            measure(name, apply, variables, small_apply, small, x, diff, scale, plan)
            """),
        md("""
            ## 5. A FLOPs budget instead of a ratio
            `budget=jp.flops_budget(0.5, relative=True)` ranks groups globally and prunes until the shrunk
            forward pass needs half the dense FLOPs (counted by XLA, not by hand).
            """),
        code("""
            budget_plan = jp.make_plan(variables, graph, budget=jp.flops_budget(0.5, relative=True))
            budget_small = jp.shrink(variables, budget_plan)
            budget_model = models.rebuild(model, budget_small)
            budget_ratio = jp.flops(lambda v, i: budget_model.apply(v, i, train=False), budget_small, x) / \\
                jp.flops(apply, variables, x)
            print(f"FLOPs budget 50% -> achieved {budget_ratio:.1%} of the dense FLOPs")
            """),
        md("""
            ## 6. The same for a ViT: attention heads and MLP units
            `kinds=("heads", "units")` prunes whole heads (the q/k/v columns of a head and the matching rows of
            the output projection, found through the reshape into heads) and MLP hidden units, and keeps the
            residual width.
            """),
        code("""
            vit_name, (make_vit, vit_kinds) = list(SPECS.items())[1]
            vit = make_vit()
            xv = jax.random.normal(jax.random.key(2), (BATCH,) + vit.example_input(1).shape[1:])
            vit_vars = vit.init(jax.random.key(3), xv[:1])
            vit_apply = lambda v, inp: vit.apply(v, inp, train=False)

            vit_graph = jp.trace_groups(vit_apply, vit_vars, xv[:1])
            vit_plan = jp.make_plan(vit_vars, vit_graph, ratio=RATIO, kinds=vit_kinds)
            print(vit_plan.describe()[:1200], "\\n...")
            vit_small = jp.shrink(vit_vars, vit_plan)
            vit_small_model = models.rebuild(vit, vit_small)
            vit_small_apply = lambda v, inp: vit_small_model.apply(v, inp, train=False)
            print("heads per layer:", {k: w for k, w in dict(vit_small_model.widths).items() if "attn" in k})

            vit_masked = jp.apply_masks(vit_vars, jp.plan_to_masks(vit_vars, vit_plan))
            vit_diff, vit_scale = max_abs_diff(vit_small_apply, (vit_small, xv), vit_apply, (vit_masked, xv))
            print(f"max |shrunk - masked| = {vit_diff:.2e} (outputs up to {vit_scale:.2f})")
            measure(vit_name, vit_apply, vit_vars, vit_small_apply, vit_small, xv, vit_diff, vit_scale, vit_plan)
            """),
        md("""
            ## 7. Any traceable function: `make_shrunk_fn`
            Without a rebuildable model class, `jp.make_shrunk_fn(apply, params, plan, *example_args)` re-runs
            the traced jaxpr with the shrunk arrays (for inputs of the example's shapes).
            """),
        code("""
            generic = jax.jit(jp.make_shrunk_fn(vit_apply, vit_vars, vit_plan, xv))
            generic_diff, _ = max_abs_diff(generic, (vit_small, xv), vit_small_apply, (vit_small, xv))
            print(f"make_shrunk_fn vs rebuilt Linen model: max diff {generic_diff:.2e}")
            """),
        code("""
            names = list(results)
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
            xs = np.arange(len(names))
            ax1.bar(xs - 0.2, [results[n]["dense_flops"] / 1e9 for n in names], 0.4, label="dense")
            ax1.bar(xs + 0.2, [results[n]["small_flops"] / 1e9 for n in names], 0.4, label=f"shrunk (ratio {RATIO})")
            ax1.set_xticks(xs, names)
            ax1.set(ylabel="GFLOPs per batch (XLA)", title="compute")
            ax1.legend()
            ax2.bar(xs - 0.2, [results[n]["dense_ms"] for n in names], 0.4, label="dense")
            ax2.bar(xs + 0.2, [results[n]["small_ms"] for n in names], 0.4, label="shrunk")
            ax2.set_xticks(xs, names)
            ax2.set(ylabel=f"ms per batch of {BATCH} ({BACKEND})", title="latency (median)")
            ax2.legend()
            fig.tight_layout()
            fig.savefig(os.path.join(OUT, "02_structured.png"), dpi=100)
            plt.show()
            """),
        md("""
            ## Checks and results
            Latency is reported, not asserted (shared CPUs are noisy); FLOPs, shapes and outputs are checked.
            """),
        code("""
            result = dict(notebook="02_structured", backend=BACKEND, small=SMALL, batch=BATCH, ratio=RATIO,
                          models=results, budget_flops_fraction=budget_ratio, generic_max_abs_diff=generic_diff,
                          seconds=time.perf_counter() - T_START)
            with open(os.path.join(OUT, "02_structured.json"), "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps(result, indent=1))

            resnet, vit_r = results[names[0]], results[names[1]]
            assert resnet["flops_ratio"] > 2.5, resnet  # channels halved on both sides of most convs: ~4x
            assert vit_r["flops_ratio"] > 1.5, vit_r  # half the heads and MLP units; patch embed/head untouched
            for r in results.values():
                assert r["small_params"] < r["dense_params"]
                assert r["max_abs_diff"] <= 1e-4 * max(1.0, r["output_scale"]), r  # shrunk == masked
            assert generic_diff <= 1e-4 * max(1.0, vit_scale)
            assert 0.3 < budget_ratio <= 0.5 + 1e-6, budget_ratio
            """),
    ],
)

# ---------------------------------------------------------------------------------------------------- 03
TRANSFER = dict(
    name="03_transfer_study",
    title="A short transfer study: zero-shot structured pruning vs compute (study A)",
    intro="""
        Caccia et al. (2023, *Towards Compute-Optimal Transfer Learning*) prune a pretrained CNN **before**
        finetuning, without data (weight magnitudes only), and finetune the smaller net on each downstream
        task. Measured against **compute** (XLA FLOPs of one jitted train step x steps run), pruned models
        win in the low-compute regime.

        This notebook runs a short version on offline tasks (generated shapes/colours and the digits):
        pretrain an upstream CifarResNet (cached), prune it zero-shot by **filters** and by **channels**
        (both really shrunk) -- and, in the full config, by k x k **kernels** (masked) -- then finetune every
        variant on every task for a grid of step budgets, and plot accuracy against compute.
        """,
    cells=[
        code("""
            import dataclasses
            import numpy as np
            import matplotlib.pyplot as plt
            from IPython.display import Markdown, display

            import jaxprune as jp
            import jaxprune.transfer as transfer  # the studies (also behind scripts/study_a.py)
            from jaxprune.transfer import study_a

            if SMALL:  # ~1 minute on 2 CPU cores: 2 tasks, 2 methods, 1 ratio, 2 step budgets, 8x8 images
                cfg = study_a.quick_config(num_tasks=2, methods=("filter", "channel"), step_budgets=(20, 60))
            else:  # the small-scale study of scripts/study_a.py: 10 tasks, 3 methods x 3 ratios, 5 budgets, 16x16
                cfg = study_a.small_config()
            # Real Nevis'22 streams (tfds datasets prepared locally, 64x64, ResNet-18): study_a.full_config("tiny")
            print(json.dumps(cfg.to_dict(), indent=1)[:1500])
            """),
        md("""
            ## 1. The upstream ("pretrained") model
            Trained on a 100-class shape x colour task and cached by config (`$JAXPRUNE_CACHE_DIR` or
            `~/.cache/jaxprune`), so reruns restore it. Real weights (e.g. converted torchvision ResNets) can be
            plugged in as a `transfer.Upstream`.
            """),
        code("""
            up = transfer.pretrain_upstream(cfg.upstream, progress=True)
            print(type(up.model).__name__, "widths", up.model.stage_widths, "| upstream metrics:",
                  {k: round(v, 3) for k, v in up.metrics.items() if isinstance(v, float)})
            """),
        md("""
            ## 2. Zero-shot pruning (no data)
            `filter`: rank each coupled channel group by the L1 norm of the filters that *produce* it;
            `channel`: by the weights that *consume* it; both shrink every coupled tensor. `kernel` masks whole
            k x k kernels (tensors keep their shape, so XLA FLOPs do not drop).
            """),
        code("""
            rows = []
            for method in ("dense",) + tuple(cfg.methods):
                ratio = 0.0 if method == "dense" else cfg.ratios[0]
                pm = study_a.zero_shot_prune(up.model, up.variables, method, ratio)
                rows.append((f"{method}@{pm.ratio:g}" if method != "dense" else "dense", pm.stats["params"],
                             pm.stats["nonzero_params"], pm.stats["forward_flops"]))
            for label, n, nz, fl in rows:
                print(f"{label:12s} params {n:8,d}  nonzero {nz:8,d}  forward MFLOPs (XLA) {fl / 1e6:8.2f}")
            """),
        md("""
            ## 3. Finetune every variant on every task, for every step budget
            SGD with Nesterov momentum and decoupled weight decay, warm-up then cosine, best-dev selection (the
            Nevis'22 baseline recipe, scaled down). The classifier is re-initialised per task.
            """),
        code("""
            study_dir = os.path.join(OUT, "03_study_a")
            results = study_a.run(cfg, out_dir=study_dir, progress=True)
            display(Markdown(open(os.path.join(study_dir, "results.md")).read()))
            """),
        md("## 4. Accuracy vs compute"),
        code("""
            colours = {"dense": "black", "filter": "tab:blue", "channel": "tab:orange", "kernel": "tab:green"}
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
            for label, curve in results["curves"].items():
                pts = curve["points"]
                ax1.plot([p["compute"] for p in pts], [p["accuracy"] for p in pts], marker="o", label=label,
                         color=colours.get(curve["method"]), lw=2.5 if label == "dense" else 1.2,
                         alpha=1.0 if label == "dense" else 0.5 + 0.5 * curve["ratio"])
            ax1.set_xscale("log")
            ax1.set(xlabel="compute: XLA FLOPs per train step x steps (summed over tasks)",
                    ylabel="test accuracy (mean over tasks)", title="study A: accuracy vs compute")
            ax1.grid(True, which="both", alpha=0.3)
            ax1.legend(fontsize=8)
            step_flops = {}
            for r in results["runs"]:
                step_flops.setdefault(r["label"], r["step_flops"])
            ax2.barh(list(step_flops), [v / 1e6 for v in step_flops.values()],
                     color=[colours.get(k.split("@")[0]) for k in step_flops])
            ax2.set(xlabel="MFLOPs of one train step (XLA)", title="cost of one finetuning step")
            fig.tight_layout()
            fig.savefig(os.path.join(OUT, "03_transfer_study.png"), dpi=100)
            plt.show()
            print(json.dumps(results["summary"], indent=1))
            """),
        md("## Checks and results"),
        code("""
            dense_step = {r["task"]: r["step_flops"] for r in results["runs"] if r["label"] == "dense"}
            shrunk_runs = [r for r in results["runs"] if r["method"] in ("filter", "channel")]
            result = dict(notebook="03_transfer_study", backend=BACKEND, small=SMALL, tasks=results["tasks"],
                          variants=[v["label"] for v in results["variants"]], n_runs=len(results["runs"]),
                          step_flops=step_flops, summary=results["summary"],
                          min_step_flops_ratio=min(r["step_flops"] / dense_step[r["task"]] for r in shrunk_runs),
                          max_step_flops_ratio=max(r["step_flops"] / dense_step[r["task"]] for r in shrunk_runs),
                          study_seconds=results["seconds"], seconds=time.perf_counter() - T_START)
            with open(os.path.join(OUT, "03_transfer_study.json"), "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1))

            n_variants = 1 + len(cfg.methods) * len(cfg.ratios)
            assert len(results["tasks"]) == (len(cfg.tasks) or cfg.num_tasks), results["skipped"]
            assert result["n_runs"] == len(results["tasks"]) * n_variants * len(cfg.step_budgets)
            for label, curve in results["curves"].items():  # every variant has a point at every budget
                assert [p["budget"] for p in curve["points"]] == list(cfg.step_budgets), label
                assert all(0.0 <= p["accuracy"] <= 1.0 for p in curve["points"]), label
            assert result["max_step_flops_ratio"] < 1.0, "shrunk models must make the train step cheaper"
            assert {"smallest_budget", "crossing_compute"} <= set(results["summary"]), results["summary"]
            assert os.path.exists(os.path.join(study_dir, "accuracy_vs_compute.png"))
            """),
    ],
)


# ---------------------------------------------------------------------------------------------------- 04
CHECKPOINTS = dict(
    name="04_checkpoints",
    title="Checkpoints: dense, sparse and shrunk states with orbax",
    intro="""
        `jp.save_checkpoint` writes one orbax step holding whichever items you give it: dense `params`,
        `masks` (packed bits), the `opt_state` of a sparse optimizer (masks, momentum, PRNG key, counters),
        `shrunk_params` with the `plan` and the `model_config`, and a JSON `data_state`. Masked weights are
        stored compactly (kept values + bitmask); every array gets a CRC-32.

        `jp.restore_shrunk_model(dir)` rebuilds the pruned model **from the checkpoint alone**: below it runs
        in a fresh Python process that never sees the dense model or the code that made the plan.
        """,
    cells=[
        code("""
            import shutil
            import subprocess
            import numpy as np
            import jax.numpy as jnp
            import optax
            import matplotlib.pyplot as plt

            import jaxprune as jp
            from jaxprune import models

            if SMALL:
                model = models.CifarResNet(stage_sizes=(1, 1, 1), num_classes=10, image_size=16)
                BATCH = 8
            else:
                model = models.resnet50(image_size=224)
                BATCH = 16
            CKPT = os.path.abspath(os.path.join(OUT, "04_checkpoints"))
            shutil.rmtree(CKPT, ignore_errors=True)  # save refuses to overwrite a step unless overwrite=True

            x = jax.random.normal(jax.random.key(0), (BATCH,) + model.example_input(1).shape[1:])
            labels = jnp.arange(BATCH) % 10
            variables = model.init(jax.random.key(1), x[:1])  # stands in for pretrained weights


            def as_numpy(a):
                if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):  # typed PRNG keys: compare their raw bits
                    a = jax.random.key_data(a)
                return np.asarray(a)


            def trees_equal(a, b):
                \"\"\"Same structure, and every array leaf bit-for-bit equal (None leaves allowed).\"\"\"
                la, ta = jax.tree.flatten(a, is_leaf=jp.is_none)
                lb, tb = jax.tree.flatten(b, is_leaf=jp.is_none)
                return ta == tb and all((u is None) == (v is None) and
                                        (u is None or np.array_equal(as_numpy(u), as_numpy(v))) for u, v in zip(la, lb))
            """),
        md("""
            ## 1. Dense
            `model_config` (a registered `jaxprune.models` model or its `get_config` dict) is stored as JSON, so
            the architecture travels with the weights.
            """),
        code("""
            jp.save_checkpoint(f"{CKPT}/dense", 0, params=variables, model_config=model)
            dense = jp.restore_checkpoint(f"{CKPT}/dense")
            print("steps:", jp.checkpoint_steps(f"{CKPT}/dense"), "| model config:", dense.model_config)
            print("restored == saved:", trees_equal(dense.params, variables))
            """),
        md("""
            ## 2. Sparse: a training state to resume
            A few steps of SGD with one-shot 90% magnitude pruning (every layer at 90%). The masks live in the
            optimizer state. Two checkpoints: the sparse **weights** (masks packed, masked weights stored
            compactly), and the resumable **training state** (params, optimizer state, data position).
            Restoring with a template (`jax.eval_shape(opt.init, params)`) gives back the exact optimizer state
            type, and training resumes bit for bit.
            """),
        code("""
            opt = jp.sparse_optimizer(optax.sgd(0.01, momentum=0.9),
                                      jp.magnitude_pruner(jp.one_shot(0.9)))
            params, batch_stats = variables["params"], variables["batch_stats"]
            opt_state = opt.init(params)


            @jax.jit
            def train_step(params, batch_stats, opt_state):
                def loss_fn(p):
                    logits, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                              mutable=["batch_stats"])
                    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new["batch_stats"]

                (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
                updates, opt_state = opt.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), batch_stats, opt_state


            for _ in range(3):
                params, batch_stats, opt_state = train_step(params, batch_stats, opt_state)
            sparse_vars = {"params": params, "batch_stats": batch_stats}
            masks = jp.get_masks(opt_state)
            # masks cover the params; batch statistics are never pruned (None = unpruned leaf)
            var_masks = {"params": masks, "batch_stats": jax.tree.map(lambda _: None, batch_stats)}
            jp.save_checkpoint(f"{CKPT}/sparse", 3, params=sparse_vars, masks=var_masks)  # weights only
            # masks default to the optimizer's when params is the tree it optimizes; here params holds batch_stats too
            jp.save_checkpoint(f"{CKPT}/train", 3, params=sparse_vars, masks=var_masks, opt_state=opt_state,
                               data_state={"step": 3, "seed": 0})

            sparse = jp.restore_checkpoint(f"{CKPT}/sparse")
            train_ckpt = jp.restore_checkpoint(f"{CKPT}/train", template=jp.Checkpoint(
                params=sparse_vars, opt_state=jax.eval_shape(opt.init, params)))
            sparse_ok = (trees_equal(sparse.params, sparse_vars) and trees_equal(sparse.masks, var_masks)
                         and trees_equal(train_ckpt.params, sparse_vars)
                         and trees_equal(train_ckpt.opt_state, opt_state))
            print("step", train_ckpt.step, "| data_state", train_ckpt.data_state, "| restored == saved:", sparse_ok)
            print(jp.sparsity_summary(sparse.masks["params"]))

            # resuming from the restored state continues exactly like the original run
            a = train_step(params, batch_stats, opt_state)
            b = train_step(train_ckpt.params["params"], train_ckpt.params["batch_stats"], train_ckpt.opt_state)
            resume_ok = trees_equal(a, b)
            print("resumed step == original step:", resume_ok)
            """),
        md("""
            ## 3. Shrunk: the structurally pruned model, on its own
            Trace, plan (half the channels) and shrink the dense model, then save only what is needed to run
            it: `shrunk_params`, the `plan` (kept indices, as JSON) and the shrunk model's config.
            """),
        code("""
            apply = lambda v, inp: model.apply(v, inp, train=False)
            plan = jp.make_plan(variables, jp.trace_groups(apply, variables, x[:1]), ratio=0.5)
            small = jp.shrink(variables, plan)
            small_model = models.rebuild(model, small)
            jp.save_checkpoint(f"{CKPT}/shrunk", 0, shrunk_params=small, plan=plan, model_config=small_model)

            sizes = {k: jp.checkpoint_size_bytes(f"{CKPT}/{k}") for k in ("dense", "sparse", "shrunk", "train")}
            for k, v in sizes.items():
                print(f"{k:7s} {v / 1e6:8.3f} MB")
            """),
        md("""
            ### Restore in a fresh process
            The child process gets only the checkpoint directory and an input batch (on CPU, so that it does not
            compete with this notebook for the accelerator). It rebuilds the model with
            `jp.restore_shrunk_model` and writes its outputs, which must equal the shrunk model's outputs here.
            """),
        code("""
            np.save(f"{CKPT}/x.npy", np.asarray(x))
            child = "\\n".join([
                "import sys, numpy as np, jax",
                "import jaxprune as jp",
                "model, variables, plan = jp.restore_shrunk_model(sys.argv[1])",
                "with jax.default_matmul_precision('highest'):",
                "    y = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, np.load(sys.argv[2]))",
                "np.save(sys.argv[3], np.asarray(y))",
                "print(type(model).__name__, 'widths:', dict(model.widths), '|', len(plan.groups), 'groups pruned')",
            ])
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            proc = subprocess.run([sys.executable, "-c", child, f"{CKPT}/shrunk", f"{CKPT}/x.npy", f"{CKPT}/y.npy"],
                                  capture_output=True, text=True, env=env, timeout=600)
            print(proc.stdout or proc.stderr[-3000:])
            assert proc.returncode == 0, proc.stderr[-3000:]

            cpu = jax.devices("cpu")[0]
            with jax.default_device(cpu), jax.default_matmul_precision("highest"):
                y_here = np.asarray(jax.jit(lambda v, inp: small_model.apply(v, inp, train=False))(
                    jax.device_put(small, cpu), jax.device_put(x, cpu)))
            y_child = np.load(f"{CKPT}/y.npy")
            shrunk_diff = float(np.max(np.abs(y_child - y_here)))
            print(f"max |child - here| = {shrunk_diff:.2e}")

            restored = jp.restore_shrunk_model(f"{CKPT}/shrunk")  # and in this process
            shrunk_ok = restored.model == small_model and restored.plan == plan and trees_equal(restored.params, small)
            print("restored model, params, plan == saved:", shrunk_ok)
            """),
        code("""
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.bar(list(sizes), [v / 1e6 for v in sizes.values()],
                   color=["grey", "tab:blue", "tab:orange", "tab:green"])
            ax.set(ylabel="MB on disk", title="checkpoints: dense, 90% sparse (compact), shrunk (ratio 0.5),\\n"
                   "training state (weights + momentum + masks)")
            fig.tight_layout()
            fig.savefig(os.path.join(OUT, "04_checkpoints.png"), dpi=100)
            plt.show()
            """),
        md("## Checks and results"),
        code("""
            result = dict(notebook="04_checkpoints", backend=BACKEND, small=SMALL, sizes_bytes=sizes,
                          dense_restored_equal=trees_equal(dense.params, variables), sparse_restored_equal=sparse_ok,
                          resume_equal=resume_ok, shrunk_restored_equal=shrunk_ok,
                          shrunk_fresh_process_max_diff=shrunk_diff,
                          mask_sparsity=jp.sparsity_summary(masks).total_sparsity,
                          seconds=time.perf_counter() - T_START)
            with open(os.path.join(OUT, "04_checkpoints.json"), "w") as f:
                json.dump(result, f, indent=1)
            print(json.dumps(result, indent=1))

            assert result["dense_restored_equal"] and result["sparse_restored_equal"] and result["resume_equal"]
            assert result["shrunk_restored_equal"]
            assert shrunk_diff <= 1e-5 * max(1.0, float(np.max(np.abs(y_here)))), shrunk_diff
            assert abs(result["mask_sparsity"] - 0.9) < 1e-3
            assert sizes["sparse"] < sizes["dense"] and sizes["shrunk"] < sizes["dense"], sizes
            """),
    ],
)


NOTEBOOKS = [QUICKSTART, STRUCTURED, TRANSFER, CHECKPOINTS]


def build() -> dict[str, nbformat.NotebookNode]:
    return {spec["name"]: notebook(spec["name"], spec["title"], spec["intro"], spec["cells"]) for spec in NOTEBOOKS}


def write(out_dir: str = HERE) -> list[str]:
    paths = []
    for name, nb in build().items():
        nbformat.validate(nb)
        path = os.path.join(out_dir, f"{name}.ipynb")
        with open(path, "w") as f:
            nbformat.write(nb, f)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print("wrote", p)
