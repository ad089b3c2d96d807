"""Ray backend benchmark: the same pool on Ray actors against the process backend, and a node's removal.

    python -m tests.performance.bench_ray [--messages 200000] [--books 1000] [--repeat 3]

A Ray cluster is simulated on this machine (a head without CPUs, two worker nodes of 2 CPUs, fast health
checks), as in the tests. Same run, same workload (the throughput benchmark's), 2 workers each:

* throughput: ``publish(list)`` of every update, then ``flush``, interleaved ``--repeat`` times per backend;
* node removal (Ray): the node of worker 0's actor is removed; the clock runs until a ``get_book`` of one
  of its assets answers live again (the replacement has started on the other node, connected back, and
  installed every snapshot: the query queues behind them).
"""

from __future__ import annotations

import time
from typing import Any

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from tests.performance.bench_throughput import describe, workload

_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_failure_threshold": 3,
}


def _throughput(backend: str, snapshots: list[bytes], updates: list[bytes]) -> float:
    config = PoolConfig(worker_count=2, backend=backend, heartbeat_interval=1.0)  # type: ignore[arg-type]
    with PersistentWorkerPool(config) as pool:
        pool.publish(snapshots)
        pool.flush(timeout=120)
        began = time.perf_counter()
        pool.publish(updates)
        pool.flush(timeout=300)
        return len(updates) / (time.perf_counter() - began)


def _node_removal(cluster: Any, books: int) -> float:
    from ray.util.state import list_actors

    market = SyntheticMarket(2 * books, seed=9)
    config = PoolConfig(worker_count=2, backend="ray", heartbeat_interval=1.0)
    with PersistentWorkerPool(config, snapshot_source=market) as pool:
        pool.publish(market.snapshots())
        pool.publish(list(market.updates(20_000)))
        pool.flush(timeout=120)
        pid = pool.get_status().workers[0].pid
        node_id = next(a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.pid == pid)
        node = next(n for n in cluster.list_all_nodes() if n.node_id == node_id)
        asset_id = next(a for a in market.asset_ids if slot_for(a, 2) == 0)
        began = time.perf_counter()
        cluster.remove_node(node)
        while pool.get_status().workers[0].restarts == 0 or pool.get_book(asset_id, timeout=60).stale:
            time.sleep(0.005)
        seconds = time.perf_counter() - began
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    return seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    args, snapshots, updates = workload(argv, __doc__, messages=200_000, seed=13)
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": _SYSTEM_CONFIG})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        rounds = [
            {backend: _throughput(backend, snapshots, updates) for backend in ("process", "ray")}
            for _ in range(args.repeat)
        ]
        removal = _node_removal(cluster, args.books)
    finally:
        ray.shutdown()
        cluster.shutdown()
    best = {backend: max(r[backend] for r in rounds) for backend in ("process", "ray")}
    ratio = max(r["ray"] / r["process"] for r in rounds)
    print(f"# {len(updates):,} messages ({describe(updates)}) over {args.books:,} books, 2 workers")
    print(f"# best of {args.repeat} interleaved rounds; a simulated cluster: head without CPUs, 2 nodes of 2 CPUs")
    print("| backend | messages/s |")
    print("|---|---:|")
    print(f"| process (child processes, socket pairs) | {best['process']:,.0f} |")
    print(f"| ray (an actor a worker, TCP back to the pool) | {best['ray']:,.0f} |")
    print(f"ray / process: {ratio:.2f}x (best same-round ratio)")
    print(f"node removal to books rebuilt (Ray, {args.books:,} books on the node): {removal:.2f} s")
    return {**best, "ratio": ratio, "removal_seconds": removal}


if __name__ == "__main__":
    main()
