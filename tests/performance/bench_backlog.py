"""Backlog benchmark: the parent's peak memory under a producer faster than the workers.

    python -m tests.performance.bench_backlog [--messages 200000 1000000] [--workers 2]

The producer makes each frame on the fly (a copy of one of 20,000 synthetic frames) and publishes it at
once, in chunks of 2,000, as fast as it can, so nothing holds a frame but the design under test. Each run
is a fresh spawned process; a thread samples its RSS every 2 ms, and the figure is the peak above the
RSS just before the design started. Two designs, same frames, same run:

* ``pool``: `PersistentWorkerPool.publish`, which waits when a worker has ``max_pending_messages``
  frames not yet applied: the backlog, and so the memory, is bounded whatever the producer does;
* ``queue``: the old WorkerManager design (decode, then one pickled message per
  ``multiprocessing.Queue.put``), whose queues are unbounded.

If the peak does not grow with the number of messages, the backlog is bounded.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket
from tests.performance.bench_throughput import QueueDesign

_MB = 1024 * 1024
_CHUNK = 2_000
_DISTINCT = 20_000


class _PeakRss:
    """Samples this process's RSS on a thread until stopped; `peak` is the highest sample."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)


def _chunks(base: list[bytes], messages: int) -> Iterator[list[bytes]]:
    """Fresh frames (each a new object: the base frame plus JSON whitespace), ``_CHUNK`` at a time."""
    for start in range(0, messages, _CHUNK):
        yield [base[index % len(base)] + b" " for index in range(start, min(messages, start + _CHUNK))]


def _run_pool(snapshots: list[bytes], base: list[bytes], messages: int, workers: int) -> None:
    with PersistentWorkerPool(PoolConfig(worker_count=workers, heartbeat_interval=1.0)) as pool:
        pool.publish(snapshots)
        for chunk in _chunks(base, messages):
            pool.publish(chunk)
        pool.flush()


def _run_queue(snapshots: list[bytes], base: list[bytes], messages: int, workers: int) -> None:
    design = QueueDesign(workers)
    for chunk in (snapshots, *_chunks(base, messages)):
        for frame in chunk:
            design.send(frame)
    design.close()


_DESIGNS: dict[str, Callable[[list[bytes], list[bytes], int, int], None]] = {"pool": _run_pool, "queue": _run_queue}


def _measure_in_child(design: str, messages: int, workers: int, results: Any) -> None:
    market = SyntheticMarket(1_000, seed=9)
    snapshots, base = market.snapshots(), list(market.updates(_DISTINCT))
    gc.collect()
    with _PeakRss() as rss:
        before = rss.peak
        began = time.perf_counter()
        _DESIGNS[design](snapshots, base, messages, workers)
        elapsed = time.perf_counter() - began
    results.put(((rss.peak - before) / _MB, messages / elapsed))


def measure(design: str, messages: int, workers: int) -> tuple[float, float]:
    """(peak RSS above the start in MB, messages/s) of one design, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_measure_in_child, args=(design, messages, workers, results))
    process.start()
    peak, rate = results.get(timeout=600)
    process.join()
    return float(peak), float(rate)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    pending = PoolConfig().max_pending_messages
    print(f"# {args.workers} workers, producer as fast as it can; the pool's max_pending_messages={pending:,}")
    print("| design | messages | parent peak RSS growth MB | messages/s |")
    print("|---|---:|---:|---:|")
    results: dict[str, float] = {}
    for messages in args.messages:
        for design in _DESIGNS:
            peak, rate = measure(design, messages, args.workers)
            results[f"{design}_peak_mb_at_{messages}"] = peak
            name = "pool (this library)" if design == "pool" else "old design: unbounded Queue"
            print(f"| {name} | {messages:,} | {peak:.1f} | {rate:,.0f} |")
    return results


if __name__ == "__main__":
    main()
