"""The worker side: the code that runs in a worker process.

It imports the wire (`pool._wire`) and `pool.models`, never the parent side, anyio or the service, so a
worker starts fast and stays small. The parent needs only the path of `_bootstrap`, the script it starts.
"""
