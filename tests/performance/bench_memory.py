"""Memory benchmark: a worker's private memory per 1,000 books, and what one memory sample costs.

    python -m tests.performance.bench_memory [--books 1000 10000]

Books have 98 levels (every price of the 0.01 grid but the mid, about 50 a side). For each size it measures, on the same
snapshots and in the same run:

* pool: a one-worker pool's USS (memory private to the worker) after applying the snapshots, minus the
  same worker's USS when empty; both after the worker has given memory back (gc and malloc_trim), the
  state the memory monitor judges a breach on;
* baseline: a spawned process holding the same books as plain dicts of decimal-string price -> size,
  measured the same way.

It also times one sample of a worker: USS/PSS (``memory_full_info``, what the monitor uses) and RSS.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import psutil

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket

_MB = 1024 * 1024
_LEVELS_PER_SIDE = 99  # a window wider than the grid: every tick but the mid, 98 levels a book


def _uss(pid: int) -> int:
    return int(psutil.Process(pid).memory_full_info().uss)


def _trim() -> None:
    import ctypes

    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)


def _dict_books_process(conn: Connection) -> None:
    """The baseline: hold books as dicts of price string -> size string."""
    books: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    _trim()
    conn.send("empty")
    frames: list[bytes] = conn.recv()
    for frame in frames:
        event: Any = msgspec.json.decode(frame)
        books[event["asset_id"]] = (
            {lv["price"]: lv["size"] for lv in event["bids"]},
            {lv["price"]: lv["size"] for lv in event["asks"]},
        )
    del frames, event
    _trim()
    conn.send(len(books))
    conn.recv()


def measure_baseline(snapshots: list[bytes]) -> float:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_dict_books_process, args=(child,), daemon=True)
    process.start()
    assert process.pid is not None
    parent.recv()
    empty = _uss(process.pid)
    parent.send(snapshots)
    parent.recv()
    full = _uss(process.pid)
    parent.send("exit")
    process.join(10)
    return (full - empty) / _MB


def _trim_worker(pool: PersistentWorkerPool) -> None:
    """Have worker 0 give memory back (as the memory watch does before it acts), and wait until it has."""
    core = pool._core
    assert pool._thread is not None and core.memory_watch is not None
    pool._thread.call(core.memory_watch.give_back, core.slots[0], None)


def measure_pool(snapshots: list[bytes]) -> tuple[float, float, float, int]:
    """(MB above empty, USS sample seconds, RSS sample seconds, levels per book)."""
    with PersistentWorkerPool(PoolConfig(worker_count=1, heartbeat_interval=1.0)) as pool:
        pid = pool.get_status().workers[0].pid
        assert pid is not None
        _trim_worker(pool)
        empty = _uss(pid)
        pool.publish(snapshots)
        pool.flush()
        view = pool.get_book(msgspec.json.decode(snapshots[0])["asset_id"])
        _trim_worker(pool)
        full = _uss(pid)
        process = psutil.Process(pid)
        began = time.perf_counter()
        for _ in range(200):
            process.memory_full_info()
        uss_cost = (time.perf_counter() - began) / 200
        began = time.perf_counter()
        for _ in range(200):
            process.memory_info()
        rss_cost = (time.perf_counter() - began) / 200
    return (full - empty) / _MB, uss_cost, rss_cost, len(view.bids) + len(view.asks)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=int, nargs="+", default=[1_000, 10_000])
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    print("| books | levels/book | pool MB per 1,000 books | dict baseline MB per 1,000 | pool / baseline |")
    print("|---:|---:|---:|---:|---:|")
    for books in args.books:
        snapshots = SyntheticMarket(books, seed=3, levels=_LEVELS_PER_SIDE).snapshots()
        pool_mb, uss_cost, rss_cost, levels = measure_pool(snapshots)
        baseline_mb = measure_baseline(snapshots)
        per_pool, per_base = pool_mb * 1000 / books, baseline_mb * 1000 / books
        results[f"pool_mb_per_1000_at_{books}"] = per_pool
        results[f"baseline_mb_per_1000_at_{books}"] = per_base
        results["uss_sample_ms"] = uss_cost * 1e3
        results["rss_sample_ms"] = rss_cost * 1e3
        print(f"| {books:,} | {levels} | {per_pool:.2f} | {per_base:.2f} | {per_pool / per_base:.2f}x |")
    print(
        f"one sample of a worker: USS/PSS {results['uss_sample_ms']:.3f} ms (what the monitor uses), "
        f"RSS {results['rss_sample_ms']:.3f} ms"
    )
    return results


if __name__ == "__main__":
    main()
