"""``python -m pool``: the ``worker-pool`` command line (see `pool._service._cli`)."""

import sys

from pool._service._cli import main

if __name__ == "__main__":
    sys.exit(main())
