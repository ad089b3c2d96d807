"""``python -m pool``: the ``worker-pool`` command line (see `pool._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
