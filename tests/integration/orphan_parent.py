"""Run as a script by the orphan test: start a pool, print its worker pids, then wait to be killed."""

from __future__ import annotations

import json
import sys
import time

from pool import PersistentWorkerPool, PoolConfig

if __name__ == "__main__":
    with PersistentWorkerPool(PoolConfig(worker_count=2, heartbeat_interval=0.5)) as pool:
        print(json.dumps([w.pid for w in pool.get_status().workers.values()]), flush=True)
        sys.stdin.read()  # until the test kills us
        time.sleep(3600)
