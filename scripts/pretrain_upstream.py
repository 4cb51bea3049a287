"""Pretrain (or restore) the upstream model of the small-scale transfer studies, cached by config and seed.

Trains a CifarResNet (or a small-input ResNet-18/34) on the offline
shape x colour upstream task (100 classes) and caches it as an orbax
checkpoint + JSON under <cache>/upstream/<arch>-<config hash>-seed<seed>/.
A second call with the same config returns the cached model at once.

  python scripts/pretrain_upstream.py                 # the study-A default upstream
  python scripts/pretrain_upstream.py --quick         # the tiny one the --quick study uses
  python scripts/pretrain_upstream.py --steps 3000 --widths 32,64,128 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxprune import transfer  # noqa: E402
from jaxprune.transfer import study_a  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="cache directory (default $JAXPRUNE_CACHE_DIR or ~/.cache/jaxprune)")
    p.add_argument("--quick", action="store_true", help="the tiny upstream of the --quick study (CI)")
    p.add_argument("--arch", choices=["cifar_resnet", "resnet18", "resnet34"], default=None)
    p.add_argument("--widths", default=None, help="stage widths, e.g. 16,32,64")
    p.add_argument("--stages", default=None, help="blocks per stage, e.g. 1,1,1")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> transfer.Upstream:
    args = parse_args(argv)
    cfg = (study_a.quick_config() if args.quick else study_a.small_config()).upstream
    over = {}
    for name, val in (("arch", args.arch), ("image_size", args.image_size), ("steps", args.steps), ("seed", args.seed)):
        if val is not None:
            over[name] = val
    if args.widths:
        over["stage_widths"] = tuple(int(v) for v in args.widths.split(","))
    if args.stages:
        over["stage_sizes"] = tuple(int(v) for v in args.stages.split(","))
    cfg = dataclasses.replace(cfg, **over)
    up = transfer.pretrain_upstream(cfg, cache_dir=args.out, force=args.force, progress=not args.no_progress)
    print(json.dumps({"path": up.path, "model": type(up.model).__name__, **up.metrics}, indent=1))
    return up


if __name__ == "__main__":
    main()
