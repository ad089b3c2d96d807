"""The worker side: the code that runs in a worker process. It imports the wire and `pool.models` only."""
