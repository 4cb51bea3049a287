"""The ``jaxprune`` command line: ``jaxprune prune | finetune | evaluate`` (thin layer over the library).

  jaxprune finetune --model small_cnn --dataset digits_offline --out runs/dense
  jaxprune prune --checkpoint runs/dense --recipe unstructured90 --out runs/sparse90
  jaxprune finetune --checkpoint runs/sparse90 --out runs/sparse90_ft
  jaxprune evaluate runs/dense runs/sparse90_ft --out runs/eval

Recipes: a packaged name (``jaxprune prune --help`` lists them) or a JSON file.
Every subcommand takes ``--out DIR`` and ``--quick`` and answers ``--help``.
Bad input (missing checkpoint, unknown dataset, method or recipe name,
out-of-range sparsity, a recipe matching no layer, an ``--out`` already holding
a checkpoint) is reported on stderr with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from jaxprune._src.cli.common import CliError

__all__ = ["main", "build_parser", "CliError"]


def build_parser() -> argparse.ArgumentParser:
    from jaxprune._src.cli import evaluate, finetune, prune

    parser = argparse.ArgumentParser(
        prog="jaxprune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="{prune,finetune,evaluate}")
    sub.required = True
    prune.add_parser(sub)
    finetune.add_parser(sub)
    evaluate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxprune <command> ...``; returns the exit status (0 ok, 2 bad input, 130 interrupted).

    >>> main(["prune", "--checkpoint", "/no/such/dir", "--out", "/tmp/x"])  # doctest: +SKIP
    jaxprune prune: error: checkpoint '/no/such/dir' does not exist
    2
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    from jaxprune._src.checkpoint.api import CheckpointError

    try:
        return int(args.run(args) or 0)
    except (CliError, CheckpointError) as e:
        print(f"jaxprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:
        if os.environ.get("JAXPRUNE_DEBUG"):
            raise
        print(
            f"jaxprune {args.command}: error: {type(e).__name__}: {e}\n(set JAXPRUNE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 2
