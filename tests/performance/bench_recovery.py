"""Recovery benchmark: how fast a SIGKILLed worker is noticed, and how fast its books are back.

    python -m tests.performance.bench_recovery [--books 1000] [--kills 5]

Two workers; the slot that is killed holds about ``--books`` books (the market has twice as many). For
each kill it measures, on one monotonic clock:

* detection: SIGKILL sent -> the pool's ``worker_exited`` event (the watcher waits on the process sentinel);
* recovery: SIGKILL sent -> a ``get_book`` of one of the slot's assets answers live again, which happens
  only after the replacement has started and installed every snapshot (the query queues behind them).

The baseline, in the same run: a cold start of a one-worker pool that is then given the same books by
publishing their snapshots, until the same ``get_book`` answers. Recovery should cost no more than that.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.models import PoolEvent, PoolEventKind


def _wait_live(pool: PersistentWorkerPool, asset_id: str) -> None:
    while pool.get_book(asset_id).stale:  # a stale placeholder while the slot recovers
        time.sleep(0.001)


def measure_recovery(books: int, kills: int) -> tuple[list[float], list[float], int]:
    market = SyntheticMarket(2 * books, seed=7)
    exits: list[float] = []

    def on_event(event: PoolEvent) -> None:
        if event.kind is PoolEventKind.WORKER_EXITED:
            exits.append(time.monotonic())

    detections, recoveries = [], []
    # A restart window shorter than the gap between kills: each kill is a lone crash, restarted at once
    # (repeated kills inside one window would add the crash-loop back-off to the figures).
    config = PoolConfig(worker_count=2, heartbeat_interval=1.0, restart_window=0.001)
    with PersistentWorkerPool(config, snapshot_source=market) as pool:
        pool.add_listener(on_event)
        pool.publish(market.snapshots())
        pool.publish(list(market.updates(20_000)))
        pool.flush()
        owned = [a for a in market.asset_ids if slot_for(a, pool.config.worker_count) == 0]
        for _ in range(kills):
            pid = pool.get_status().workers[0].pid
            assert pid is not None
            seen = len(exits)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while len(exits) == seen:
                time.sleep(0.0005)
            detections.append(exits[-1] - killed)
            _wait_live(pool, owned[-1])
            recoveries.append(time.monotonic() - killed)
            pool.flush()
    return detections, recoveries, len(owned)


def measure_cold_start(market_books: int) -> float:
    market = SyntheticMarket(market_books, seed=7)
    snapshots = market.snapshots()
    began = time.monotonic()
    with PersistentWorkerPool(PoolConfig(worker_count=1, heartbeat_interval=1.0)) as pool:
        pool.publish(snapshots)
        _wait_live(pool, market.asset_ids[-1])
        elapsed = time.monotonic() - began
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=int, default=1_000, help="books in the killed slot (about)")
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args(argv)
    detections, recoveries, held = measure_recovery(args.books, args.kills)
    cold = measure_cold_start(held)
    results = {
        "detection_median_ms": statistics.median(detections) * 1e3,
        "detection_max_ms": max(detections) * 1e3,
        "recovery_median_s": statistics.median(recoveries),
        "recovery_max_s": max(recoveries),
        "cold_start_s": cold,
        "books": float(held),
    }
    print(f"# recovery: {args.kills} SIGKILLs of a worker holding {held:,} books (2 workers, spawn)")
    print("| figure | median | max |")
    print("|---|---:|---:|")
    print(
        f"| SIGKILL -> exit noticed | {results['detection_median_ms']:.1f} ms | {results['detection_max_ms']:.1f} ms |"
    )
    median, worst = results["recovery_median_s"], results["recovery_max_s"]
    print(f"| SIGKILL -> {held:,} books live again | {median:.3f} s | {worst:.3f} s |")
    print(f"| baseline: cold start of 1 worker + publishing {held:,} snapshots | {cold:.3f} s | |")
    print(f"recovery / cold start: {results['recovery_median_s'] / cold:.2f}x")
    return results


if __name__ == "__main__":
    main()
