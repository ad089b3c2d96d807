"""Tasks benchmark: a trivial task on a book, against copying the book back and computing in the parent.

    python -m tests.performance.bench_tasks [--books 1000] [--rate 20000] [--tasks 5000] [--samples 1000]

A thread publishes a steady stream (``--rate`` msg/s, in 10 ms chunks) all along. Two designs compute the
best bid and ask of Zipf-chosen books, in the same run, on the same pool:

* ``task``: ``pool.submit(asset_id, best_quotes)``, the function running next to the book;
* ``get_book``: ``pool.get_book(asset_id)``, the whole book copied to the parent, then the same there.

Throughput submits ``--tasks`` tasks at once and waits for all (tasks pipeline); ``get_book`` is one call
after another (a call waits for its book). Latency runs ``--samples`` of each one at a time, submit (or
call) to result.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from typing import Any

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket

_CHUNKS_PER_SECOND = 100


def best_quotes(book: Any) -> tuple[Any, Any]:
    """The trivial task: the best bid and ask of a live `OrderBook`."""
    return book.best_bid(), book.best_ask()


def _quotes_of_view(view: Any) -> tuple[Any, Any]:
    return (view.bids[0] if view.bids else None), (view.asks[0] if view.asks else None)


class _Stream:
    """Publishes ``rate`` messages a second from a thread of its own until stopped."""

    def __init__(self, pool: PersistentWorkerPool, market: SyntheticMarket, rate: float) -> None:
        self._pool, self._market, self._rate = pool, market, rate
        self._stop = threading.Event()
        self.published = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = 0.0

    def __enter__(self) -> _Stream:
        self._began = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self) -> float:
        return self.published / (time.monotonic() - self._began)

    def _run(self) -> None:
        chunk = max(1, int(self._rate / _CHUNKS_PER_SECOND))
        due = time.monotonic()
        while not self._stop.is_set():
            self._pool.publish(list(self._market.updates(chunk)))
            self.published += chunk
            due += 1 / _CHUNKS_PER_SECOND
            self._stop.wait(max(0.0, due - time.monotonic()))


def _percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--samples", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    market = SyntheticMarket(args.books, seed=7)
    chooser = random.Random(11)
    assets = chooser.choices(market.asset_ids, k=max(args.tasks, args.samples))
    figures: dict[str, float] = {}
    with PersistentWorkerPool(PoolConfig(worker_count=args.workers, heartbeat_interval=1.0)) as pool:
        pool.publish(market.snapshots())
        pool.flush(timeout=60)
        with _Stream(pool, market, args.rate) as stream:
            began = time.perf_counter()
            handles = [pool.submit(asset_id, best_quotes) for asset_id in assets[: args.tasks]]
            for handle in handles:
                handle.result(timeout=60)
            figures["task_per_s"] = args.tasks / (time.perf_counter() - began)
            began = time.perf_counter()
            for asset_id in assets[: args.tasks]:
                _quotes_of_view(pool.get_book(asset_id, timeout=60))
            figures["get_book_per_s"] = args.tasks / (time.perf_counter() - began)
            task_ms, book_ms = [], []
            for asset_id in assets[: args.samples]:  # interleaved, so both see the same load
                began = time.perf_counter()
                pool.submit(asset_id, best_quotes).result(timeout=60)
                task_ms.append((time.perf_counter() - began) * 1e3)
                began = time.perf_counter()
                _quotes_of_view(pool.get_book(asset_id, timeout=60))
                book_ms.append((time.perf_counter() - began) * 1e3)
            figures["stream_per_s"] = stream.rate()
        status = pool.get_status()
    for name, samples in (("task", task_ms), ("get_book", book_ms)):
        figures[f"{name}_p50_ms"] = _percentile(samples, 50)
        figures[f"{name}_p99_ms"] = _percentile(samples, 99)

    print(
        f"# {args.tasks:,} trivial tasks (best bid and ask) over {args.books:,} books, {args.workers} workers, "
        f"with a stream of {figures['stream_per_s']:,.0f} msg/s running (asked {args.rate:,.0f})"
    )
    print("| design | per second | latency p50 ms | latency p99 ms |")
    print("|---|---:|---:|---:|")
    labels = {"task": "task: submit(asset, fn), run by the book", "get_book": "get_book(asset), then fn in the parent"}
    for name, label in labels.items():
        print(
            f"| {label} | {figures[f'{name}_per_s']:,.0f} | {figures[f'{name}_p50_ms']:.3f} | "
            f"{figures[f'{name}_p99_ms']:.3f} |"
        )
    print(
        f"tasks / get_book, per second: {figures['task_per_s'] / figures['get_book_per_s']:.2f}x; "
        f"latency p50: {figures['task_p50_ms'] / figures['get_book_p50_ms']:.2f}x, "
        f"p99: {figures['task_p99_ms'] / figures['get_book_p99_ms']:.2f}x (same run)"
    )
    print(f"tasks completed: {status.completed_tasks:,}, failed: {status.failed_tasks:,}")
    return figures


if __name__ == "__main__":
    main()
