"""``jaxprune finetune``: train a dense, sparse (mask fixed) or shrunk checkpoint, or a fresh model.

  jaxprune finetune --model small_cnn --dataset digits_offline --out runs/dense        # dense start, from init
  jaxprune finetune --checkpoint runs/sparse90 --dataset digits_offline --out runs/sparse90_ft

Jit-compiled SGDW + cosine steps with a progress bar, evaluation on the dev
split every ``--eval-every`` steps, the best-dev model in ``<out>/checkpoint``
and the full training state (params, optimizer state, position) in
``<out>/train_state`` every ``--save-every`` steps and on Ctrl-C. Rerunning
the same command with the same ``--out`` resumes from the latest saved step.
Sparse checkpoints keep their masks: pruned weights stay exactly 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._src.checkpoint.api import CheckpointError, SparseCheckpointer, checkpoint_steps, restore_checkpoint
from jaxprune._src.cli import common
from jaxprune._src.cli.common import CHECKPOINT, TRAIN_STATE, CliError, LoadedModel
from jaxprune._src.cli.recipe import apply_overrides

TRAIN_FIELDS = (
    "steps",
    "batch_size",
    "learning_rate",
    "momentum",
    "nesterov",
    "weight_decay",
    "warmup_steps",
    "label_smoothing",
    "eval_every",
    "patience",
    "augment",
    "seed",
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "finetune",
        help="finetune a checkpoint (or train a fresh model)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="dense, sparse or shrunk checkpoint (orbax folder or run folder)")
    src.add_argument("--model", help=f"start from a random init of this model: {', '.join(common.MODEL_NAMES)}")
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model constructor argument with --model, e.g. --model-arg channels=[16,32]",
    )
    p.add_argument(
        "--dataset", default="digits_offline", help="offline task or prepared tfds name (default digits_offline)"
    )
    p.add_argument("--data-dir", help="tensorflow-datasets data_dir for real dataset names")
    p.add_argument("--image-size", type=int, help="input size for --model (default: the model's)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--dev-split", default="validation", help="split for periodic evaluation ('none' to skip)")
    p.add_argument("--config", help="JSON file of training fields: " + ", ".join(TRAIN_FIELDS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a training field")
    p.add_argument("--steps", type=int, help="training steps (default 300; --quick 20)")
    p.add_argument("--batch-size", type=int, help="default 64")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.05 with --model, else 0.01)")
    p.add_argument("--weight-decay", type=float, help="default 5e-4")
    p.add_argument("--eval-every", type=int, help="default steps/5")
    p.add_argument("--save-every", type=int, help="save the training state every N steps (default: eval-every)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--max-steps-this-run", type=int, help="stop (resumably) after this many steps of this run")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, train_state/, summary.json/.md")
    p.add_argument("--overwrite", action="store_true", help="discard a run already in --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true", help="smoke mode: 20 steps, small dev split")
    p.set_defaults(run=run)
    return p


def train_config(args: argparse.Namespace, from_init: bool):
    """The :class:`TrainConfig` of the command line: defaults < --config < flags < --set."""
    from jaxprune._src.train import TrainConfig

    cfg = dict(
        steps=20 if args.quick else 300, batch_size=64, learning_rate=0.05 if from_init else 0.01, weight_decay=5e-4
    )
    if args.config:
        try:
            with open(args.config) as f:
                loaded = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CliError(f"--config {args.config!r}: {e}") from None
        if not isinstance(loaded, dict):
            raise CliError(
                f"--config {args.config!r} must hold a JSON object of training fields, got {type(loaded).__name__}"
            )
        cfg.update(loaded)
    flags = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    cfg.update({k: v for k, v in flags.items() if v is not None})
    cfg = apply_overrides(cfg, args.set)
    unknown = sorted(set(cfg) - set(TRAIN_FIELDS))
    if unknown:
        raise CliError(f"unknown training field(s) {unknown}; fields are {list(TRAIN_FIELDS)}")
    for name, value in cfg.items():
        check_train_field(name, value)
    cfg.setdefault("eval_every", max(cfg["steps"] // 5, 1) if isinstance(cfg["steps"], int) else 1)
    try:
        return TrainConfig(**cfg)  # type: ignore[arg-type]  # every field was type-checked above
    except (TypeError, ValueError) as e:
        raise CliError(str(e)) from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: Each training field: (check, what it expects).
TRAIN_FIELD_SPECS = {
    "steps": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "learning_rate": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "momentum": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "weight_decay": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "label_smoothing": (lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "eval_every": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: evaluate once, at the end)"),
    "patience": (lambda v: v is None or (_is_int(v) and v >= 0), "an int >= 0 or null"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (_is_int, "an int"),
}


def check_train_field(name: str, value) -> None:
    """Raises :class:`CliError` ``training field NAME expects ..., got ...`` for a bad value."""
    ok, expects = TRAIN_FIELD_SPECS[name]
    if not ok(value):
        raise CliError(f"training field {name!r} expects {expects}, got {value!r}")


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def find_resume(out: str, run_config: dict, overwrite: bool) -> int | None:
    """The step to resume from in ``out`` (None: fresh start); refuses finished or different runs."""
    if overwrite:
        return None
    ts = os.path.join(out, TRAIN_STATE)
    if not checkpoint_steps(ts):
        common.check_out_dir(out, overwrite=False)
        return None
    try:
        head = restore_checkpoint(ts, items=["data_state"])
    except CheckpointError as e:
        raise CliError(f"--out {out!r}: cannot read the saved training state ({e}); pass --overwrite") from None
    state = head.data_state or {}
    if state.get("finished"):
        raise CliError(
            f"--out {out!r} already holds a finished finetune run (step {head.step}); pass --overwrite "
            "to start over, or choose another folder"
        )
    old, new = _flat(state.get("run", {})), _flat(json.loads(json.dumps(run_config)))
    diff = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    if diff:
        raise CliError(
            f"--out {out!r} holds an unfinished run with other settings {json.dumps(diff)} "
            "(saved vs now); rerun with the same arguments to resume, or pass --overwrite"
        )
    return head.step


def finetune(
    loaded: LoadedModel,
    train_ds,
    dev_ds,
    cfg,
    out: str,
    *,
    run_config: dict,
    resume_step: int | None = None,
    save_every: int | None = None,
    max_steps_this_run: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains ``loaded`` (masks fixed if sparse), checkpointing into ``out``; returns the summary dict."""
    from tqdm.auto import tqdm

    from jaxprune._src.algorithms.common import fixed_mask_pruner
    from jaxprune._src.data import batches
    from jaxprune._src.masks import apply_masks
    from jaxprune._src.sparse_optax import sparse_optimizer
    from jaxprune._src.train import TrainState, evaluate, make_train_step, sgdw, xla_flops

    model, variables = loaded.model, loaded.variables
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    tx = sgdw(cfg, params)
    pmasks = None if loaded.masks is None else loaded.masks["params"]
    if pmasks is not None:
        tx = sparse_optimizer(tx, fixed_mask_pruner(pmasks), key=cfg.seed)
        params = apply_masks(params, pmasks)
    ts_dir, ck_dir = os.path.join(out, TRAIN_STATE), os.path.join(out, CHECKPOINT)
    history, best_acc, best_step, bad_evals, start = [], -1.0, 0, 0, 0
    if resume_step is None:
        state = TrainState(params, model_state, tx.init(params), jnp.zeros((), jnp.int32))
    else:
        template = {"opt_state": jax.eval_shape(tx.init, params)}
        ck = restore_checkpoint(ts_dir, resume_step, template=template, items=["params", "opt_state", "data_state"])
        state = TrainState(
            ck.params["params"],
            {k: v for k, v in ck.params.items() if k != "params"},
            ck.opt_state,
            jnp.asarray(resume_step, jnp.int32),
        )
        d = ck.data_state
        if d is None:  # the train state is always saved with its data_state
            raise CliError(
                f"{ts_dir} step {resume_step} has no training history (data_state); delete it or use --overwrite"
            )
        history, best_acc, best_step, bad_evals = d["history"], d["best_accuracy"], d["best_step"], d["bad_evals"]
        start = resume_step
        for s in checkpoint_steps(ck_dir, committed=False):  # best checkpoints of the lost part of the run
            if s > resume_step:
                shutil.rmtree(os.path.join(ck_dir, str(s)), ignore_errors=True)
    it = batches(
        train_ds,
        cfg.batch_size,
        seed=cfg.seed,
        shuffle=True,
        epochs=None,
        crop_padding=4 if cfg.augment else 0,
        flip=cfg.augment,
    )
    it = itertools.islice(it, start, None)
    batch = next(it)
    step_fn = make_train_step(model, tx, cfg.label_smoothing)
    compiled = jax.jit(step_fn).lower(state, batch).compile()
    step_flops = xla_flops(step_fn, state, batch, compiled=compiled)

    def current(st) -> LoadedModel:
        return dataclasses.replace(loaded, variables={"params": st.params, **st.model_state})

    def save_state(st, step, finished):
        data_state = dict(
            run=run_config,
            history=history,
            best_accuracy=best_acc,
            best_step=best_step,
            bad_evals=bad_evals,
            finished=finished,
        )
        with SparseCheckpointer(ts_dir, max_to_keep=1, async_=False) as ckpt:
            ckpt.save(
                step,
                params=current(st).variables,
                masks=loaded.masks,
                opt_state=st.opt_state,
                data_state=data_state,
                overwrite=True,
            )

    eval_every = cfg.eval_every or cfg.steps
    save_every = save_every or eval_every
    stop = cfg.steps if max_steps_this_run is None else min(cfg.steps, start + max_steps_this_run)
    t0, times, step, early, interrupted = time.perf_counter(), [], start, False, False
    bar = tqdm(total=cfg.steps, initial=start, desc="finetune", disable=not progress, leave=False)
    try:
        while step < stop:
            ts = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - ts)
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == stop:
                bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", acc=f"{float(metrics['accuracy']):.3f}")
            if dev_ds is not None and (step % eval_every == 0 or step == cfg.steps):
                ev = evaluate(model, current(state).variables, dev_ds)
                history.append({"step": step, "train_loss": float(metrics["loss"]), **ev})
                if ev["accuracy"] > best_acc:
                    best_acc, best_step, bad_evals = ev["accuracy"], step, 0
                    common.save_model(
                        ck_dir,
                        step,
                        current(state),
                        overwrite=True,
                        data_state={"source": loaded.source, "step": step, "dev_accuracy": best_acc},
                    )
                else:
                    bad_evals += 1
                    early = cfg.patience is not None and bad_evals > cfg.patience
            if step < stop and not early:
                batch = next(it)
            if step % save_every == 0 or step == stop or early:
                save_state(state, step, finished=step == cfg.steps or early)
            if early:
                break
    except KeyboardInterrupt:
        interrupted = True
        save_state(state, step, finished=False)
    bar.close()
    finished = step == cfg.steps or early
    if dev_ds is None and finished:
        common.save_model(
            ck_dir, step, current(state), overwrite=True, data_state={"source": loaded.source, "step": step}
        )
    final = current(state)
    summary = dict(
        source=loaded.source,
        kind=loaded.kind,
        run=run_config,
        step=step,
        steps=cfg.steps,
        finished=finished,
        early_stopped=early,
        interrupted=interrupted,
        steps_this_run=step - start,
        best_step=best_step if dev_ds is not None else step,
        best_dev_accuracy=best_acc if dev_ds is not None and best_acc >= 0 else None,
        history=history,
        step_flops=step_flops,
        step_ms=1e3 * float(np.median(times[1:] or times or [0.0])),
        seconds=time.perf_counter() - t0,
        final=common.model_stats(final),
        model_config=final.model_config,
    )
    common.write_json(os.path.join(out, "summary.json"), summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_markdown(summary))
    return summary


def summary_markdown(s: dict) -> str:
    state = "finished" if s["finished"] else f"stopped at step {s['step']} of {s['steps']} (rerun to resume)"
    best = "-" if s["best_dev_accuracy"] is None else f"{s['best_dev_accuracy']:.4f}"
    lines = [
        f"# jaxprune finetune: {s['kind']} model, {state}",
        "",
        f"source: `{s['source']}`",
        "",
        f"best dev accuracy {best} "
        f"at step {s['best_step']}; train step {s['step_ms']:.1f} ms, {common.fmt_count(s['step_flops'])} "
        f"XLA FLOPs; sparsity {s['final']['sparsity']:.1%}, params {s['final']['params']:,}",
        "",
    ]
    if s["history"]:
        lines.append(
            common.markdown_table(
                ["step", "train loss", "dev top-1", "dev top-5", "dev loss"],
                [
                    [
                        h["step"],
                        f"{h['train_loss']:.4f}",
                        f"{h['accuracy']:.4f}",
                        f"{h['top5']:.4f}",
                        f"{h['loss']:.4f}",
                    ]
                    for h in s["history"]
                ],
            )
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    model_args = apply_overrides({}, args.model_arg)
    cfg = train_config(args, from_init=args.model is not None)
    for name in ("save_every", "max_steps_this_run"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.model is not None and args.model not in common.MODEL_NAMES:
        raise CliError(f"unknown model {args.model!r}; known models: {', '.join(common.MODEL_NAMES)}")
    if args.checkpoint is not None:
        loaded = common.load_checkpoint_model(args.checkpoint)
        image_size = common.input_size(loaded.model)
    common.check_dataset_name(args.dataset, args.data_dir)
    if args.model is not None:
        probe = common.build_model(args.model, 10, args.image_size, **model_args)
        image_size = getattr(probe, "image_size", None) or args.image_size
    train = common.load_data(args.dataset, args.train_split, image_size, data_dir=args.data_dir)
    dev = None
    if args.dev_split.lower() != "none":
        dev = common.load_data(
            args.dataset, args.dev_split, image_size, data_dir=args.data_dir, max_examples=128 if args.quick else None
        )
    if args.model is not None:
        loaded = common.init_model(args.model, train.num_classes, image_size, cfg.seed, model_args)
    common.check_classes(loaded, train.num_classes, args.dataset)
    if len(train) < cfg.batch_size:
        raise CliError(f"--batch-size {cfg.batch_size} is larger than the training split ({len(train)} examples)")
    run_config = dict(
        source=os.path.abspath(args.checkpoint) if args.checkpoint else f"init:{args.model}",
        model_args=model_args,
        dataset=args.dataset,
        train_split=args.train_split,
        dev_split=args.dev_split,
        image_size=image_size,
        train=dataclasses.asdict(cfg),
    )
    resume = find_resume(args.out, run_config, args.overwrite)
    if resume is None:
        common.prepare_out_dir(args.out, args.overwrite)
    else:
        print(f"resuming the run in {args.out} from step {resume}")
    s = finetune(
        loaded,
        train,
        dev,
        cfg,
        args.out,
        run_config=run_config,
        resume_step=resume,
        save_every=args.save_every,
        max_steps_this_run=args.max_steps_this_run,
        progress=not args.no_progress,
    )
    print(summary_markdown(s))
    if s["finished"]:
        print(f"wrote {os.path.join(args.out, CHECKPOINT)} (best dev model), summary.json, summary.md")
    else:
        print(f"stopped at step {s['step']} of {s['steps']}; rerun the same command to resume")
    return 130 if s["interrupted"] else 0
