"""Study B: how well do sparse upstream models transfer? (Iofinova et al., CVPR 2022.)

Takes a directory of upstream checkpoints written by scripts/sparse_upstream.py (one per
method x sparsity, in <dir>/checkpoints/ or <dir>/), transfers each to every dataset by
linear finetuning (frozen features extracted once, new linear head, SGD lr 0.01) and by full
finetuning with the sparsity mask fixed, and writes under --out: results.json, results.md
(per mode: rows method x sparsity, columns datasets, mean and mean delta vs dense) and
results.png (mean delta vs sparsity).

  python scripts/study_b.py --quick                                    # CI: builds tiny upstreams on the fly
  python scripts/study_b.py --upstream-dir runs/sparse_upstream        # small scale, offline datasets
  python scripts/study_b.py --config full --upstream-dir DIR --data-dir TFDS_DIR

Full scale lists the paper's 12 datasets by tfds name: caltech101, cifar10, cifar100, dtd,
oxford_flowers102, food101, oxford_iiit_pet, cars196, sun397; Aircraft, Birdsnap and
Caltech-256 are not in tensorflow-datasets and are skipped with a message (give their tfds
names with --datasets if you built them yourself). Missing/unprepared datasets are skipped.
Full scale: 224x224, linear 150 epochs lr 0.01, full finetuning lr 0.001.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxprune.transfer import study_b as sb  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study_b", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny CI run (builds tiny upstreams if no --upstream-dir)")
    p.add_argument("--config", choices=["small", "full"], default="small")
    p.add_argument("--upstream-dir", default=None, help="directory of sparse_upstream checkpoints")
    p.add_argument("--datasets", default=None, help="comma-separated names (paper names or tfds names)")
    p.add_argument("--modes", default="linear,full")
    p.add_argument("--full-steps", type=int, default=None)
    p.add_argument("--linear-epochs", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_upstreams(directory: str) -> list:
    root = (
        os.path.join(directory, "checkpoints") if os.path.isdir(os.path.join(directory, "checkpoints")) else directory
    )
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    if not names:
        raise FileNotFoundError(f"no upstream checkpoints under {root!r}; run scripts/sparse_upstream.py first")
    ups = [sb.load_upstream(os.path.join(root, n)) for n in names]
    return sorted(ups, key=lambda u: (u.method != "dense", sb.UPSTREAM_METHODS.index(u.method), u.sparsity))


def main(argv=None):
    args = parse_args(argv)
    if args.config == "full":
        cfg = sb.Config(
            image_size=224,
            linear_epochs=150,
            linear_lr=0.01,
            full_lr=0.001,
            full_steps=20_000,
            full_batch_size=64,
            augment=True,
            seed=args.seed,
        )
        names = list(sb.PAPER_DATASETS)
    elif args.quick:
        cfg = sb.Config(linear_epochs=10, full_steps=20, max_train_examples=300, seed=args.seed)
        names = list(sb.SMALL_DATASETS[:1])
    else:
        cfg = sb.Config(linear_epochs=100, full_steps=200, seed=args.seed)
        names = list(sb.SMALL_DATASETS)
    if args.full_steps:
        cfg = dataclasses.replace(cfg, full_steps=args.full_steps)
    if args.linear_epochs:
        cfg = dataclasses.replace(cfg, linear_epochs=args.linear_epochs)
    if args.datasets:
        names = args.datasets.split(",")
    datasets = sb.resolve_datasets(names, data_dir=args.data_dir)
    if not datasets:
        sys.exit("no dataset available; see the messages above")
    if args.upstream_dir:
        ups = load_upstreams(args.upstream_dir)
    elif args.quick:
        ucfg = sb.UpstreamConfig(
            steps=40, train_examples=500, stage_widths=(8, 16, 32), prune_every=10, lth_rounds=1, seed=args.seed
        )
        data = sb.load_upstream_splits(ucfg)
        ups = [sb.train_upstream(m, s, ucfg, data=data) for m, s in (("dense", 0.0), ("gmp", 0.9))]
    else:
        sys.exit("--upstream-dir is required (run scripts/sparse_upstream.py first), or use --quick")
    result = sb.run(ups, datasets, cfg, modes=tuple(args.modes.split(",")), data_dir=args.data_dir)
    result["upstream"] = [dict(u.stats, method=u.method, target_sparsity=u.sparsity) for u in ups]
    print(sb.write_outputs(result, args.out))


if __name__ == "__main__":
    main()
