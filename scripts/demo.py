"""jaxprune end to end on built-in offline data (a thin wrapper of ``python -m jaxprune.demo``).

python scripts/demo.py                 # default run (--out runs/demo)
python scripts/demo.py --quick         # smoke test (under a minute)
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxprune.demo import main  # noqa: E402

if __name__ == "__main__":
    main()
