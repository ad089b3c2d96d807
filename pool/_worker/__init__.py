"""The worker side: the code that runs in a worker process.

It imports the wire (`pool._wire`) and `pool.models`, never the parent side, anyio or the service, so a
worker starts fast and stays small. The parent needs only `main`, to name it on the worker's command line.
"""

from ._entry import main

__all__ = ["main"]
