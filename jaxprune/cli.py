"""The ``jaxprune`` console command (``jaxprune prune | finetune | evaluate``); see ``jaxprune --help``.

Also runnable as ``python -m jaxprune.cli ...``. ``main(argv)`` returns the exit status.
"""

from jaxprune._src.cli import CliError, build_parser, main

__all__ = ["main", "build_parser", "CliError"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
