"""Study B upstream: train a small CNN with each sparse-training method at 80/90/95% sparsity.

Methods (see jaxprune.transfer.study_b): dense, gmp, acdc, rigl1x, rigl5x,
set, ste, str, woodfisher, lth (lottery ticket with rewinding). Every run
is one code path (jaxprune.train.fit); the method only picks the pruner / reparameterisation
/ rounds. Writes, under --out:

  checkpoints/<method>_s<NN>/   orbax checkpoint: variables, masks, model config, run metadata
  results.json, results.md      accuracy, achieved sparsity, train time per method x sparsity
  results.png                   upstream top-1 vs achieved sparsity

  python scripts/sparse_upstream.py --quick            # CI smoke test (tiny, ~1-2 min)
  python scripts/sparse_upstream.py                    # small scale: CifarResNet on shapes_offline/upstream
  python scripts/sparse_upstream.py --config full --data-dir DIR   # ResNet-50 on ImageNet (tfds imagenet2012)

--config full = the paper's scale (ResNet-50, 224x224, 100 epochs = 500k steps at batch 256,
lr 0.1, 5 warm-up epochs, RigL 1x and 5x). It needs `imagenet2012` prepared locally
(array_record); without it the data layer stops with a message saying how to prepare it.
(Materialising ImageNet in memory is not practical: at that scale use a streaming input
pipeline with jaxprune's pruners; this flag documents and checks the recipe.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxprune.transfer import study_b as sb  # noqa: E402


def _floats(s):
    return tuple(float(v) for v in s.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/sparse_upstream", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny CI run (few steps, 2 methods x 1 sparsity + dense)")
    p.add_argument(
        "--config",
        choices=["small", "full"],
        default="small",
        help="small: offline CifarResNet; full: ResNet-50 / imagenet2012 (needs the data)",
    )
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(sb.UPSTREAM_METHODS)}")
    p.add_argument("--sparsities", type=_floats, default=(0.8, 0.9, 0.95))
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    p.add_argument("--lth-rounds", type=int, default=None, help="LTH prune-rewind rounds (default 3)")
    p.add_argument("--data-dir", default=None, help="tfds data_dir for real datasets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def config_from_args(args):
    if args.config == "full":
        cfg, methods = sb.full_upstream_config(seed=args.seed), sb.DEFAULT_UPSTREAM_METHODS
    elif args.quick:
        cfg = sb.UpstreamConfig(
            steps=40, train_examples=500, stage_widths=(8, 16, 32), prune_every=10, lth_rounds=1, seed=args.seed
        )
        methods = ("dense", "gmp", "lth")
    else:
        cfg, methods = sb.UpstreamConfig(steps=600, seed=args.seed), sb.DEFAULT_UPSTREAM_METHODS
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.lth_rounds is not None:
        cfg = dataclasses.replace(cfg, lth_rounds=args.lth_rounds)
    if args.methods:
        methods = tuple(args.methods.split(","))
    sparsities = (0.9,) if args.quick and args.sparsities == (0.8, 0.9, 0.95) else args.sparsities
    return cfg, methods, sparsities


def main(argv=None):
    args = parse_args(argv)
    cfg, methods, sparsities = config_from_args(args)
    sb.run_upstreams(args.out, cfg, methods, sparsities, data_dir=args.data_dir, progress=args.progress)
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
