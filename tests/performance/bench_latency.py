"""Latency benchmark: publish-to-applied time of single messages at a steady offered rate.

    python -m tests.performance.bench_latency [--rates 10000 50000] [--seconds 5]

Each frame's ``timestamp`` carries the system-wide monotonic clock (microseconds) read just before it is
published; the worker, right after applying the frame, records the difference. Frames are published one
call each, as a feed's receive loop would, as they fall due (the publisher checks every millisecond, so
at 10,000 msg/s about ten fall due together). Three designs, on the same frames at the same rate, in the
same run:

* ``pool`` (async): this library under ``async with``, ``await pool.publish(frame)``; a handler records;
* ``pool-sync``: under ``with``, ``pool.publish(frame)`` from the caller's thread;
* ``queue``: the old WorkerManager design (decode in the parent, one pickled message per
  ``multiprocessing.Queue.put``); its worker records the latency after applying to dict books.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket
from tests.performance.bench_throughput import QueueDesign, _apply_decoded

_SYNC = "sync"  # a message the old design's worker answers once it has applied everything before it
_NAMES = {
    "pool": "pool, `async with`: await publish(frame)",
    "pool-sync": "pool, `with`: publish(frame)",
    "queue": "old design: one pickled message per Queue.put",
}

# Latencies are written out in blocks of this many, so the handler's own cost stays negligible (a block
# still in the handler when the worker stops is not counted: at most this many per worker).
_FLUSH_EVERY = 100


class LatencyRecorder:
    """A handler that records, per price change, microseconds from the stamped publish time to now."""

    def __init__(self, directory: str, worker_id: int) -> None:
        self._path = Path(directory) / f"latency-{worker_id}.bin"
        self._samples = array("q")

    def on_price_change(self, book: Any, event: Any) -> None:
        self._samples.append(time.monotonic_ns() // 1000 - event.timestamp)
        if len(self._samples) >= _FLUSH_EVERY:
            with self._path.open("ab") as out:
                self._samples.tofile(out)
            self._samples = array("q")


def recorder(directory: str, worker_id: int) -> LatencyRecorder:
    return LatencyRecorder(directory, worker_id)


def _stamped(asset_ids: list[str], first: int, count: int) -> list[bytes]:
    """``count`` one-level price changes, each stamped with the monotonic clock in microseconds."""
    return [
        msgspec.json.encode(
            {
                "event_type": "price_change",
                "asset_id": asset_ids[index % len(asset_ids)],
                "market": "m",
                "price": "0.5",
                "side": "BUY",
                "size": str(index % 1000 + 1),
                "timestamp": time.monotonic_ns() // 1000,
            }
        )
        for index in range(first, first + count)
    ]


def _due(rate: float, seconds: float) -> Iterator[tuple[int, int]]:
    """(first, count) of the frames due at each check of a steady ``rate``; the caller sleeps 1 ms when
    ``count`` is 0."""
    sent, begun = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - begun) < seconds:
        due = int(elapsed * rate) - sent
        yield sent, max(due, 0)
        sent += max(due, 0)


async def _offer(pool: PersistentWorkerPool, market: SyntheticMarket, rate: float, seconds: float) -> None:
    """Publish stamped one-level price changes at ``rate`` per second, one call per frame."""
    for first, count in _due(rate, seconds):
        if not count:
            await anyio.sleep(0.001)
        for frame in _stamped(market.asset_ids, first, count):
            await pool.publish(frame)
    await pool.flush()


def _offer_sync(pool: PersistentWorkerPool, market: SyntheticMarket, rate: float, seconds: float) -> None:
    """`_offer` from a plain thread, under ``with``."""
    for first, count in _due(rate, seconds):
        if not count:
            time.sleep(0.001)
        for frame in _stamped(market.asset_ids, first, count):
            pool.publish(frame)
    pool.flush()


def _queue_worker(queue: Any, results: Any) -> None:
    books: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    samples = array("q")
    while (message := queue.get()) is not None:
        _apply_decoded(books, message)
        if message["event_type"] == "price_change":
            samples.append(time.monotonic_ns() // 1000 - message["timestamp"])
        elif message["event_type"] == _SYNC:
            results.put(_SYNC)
    results.put(samples.tobytes())


def _measure_queue(rate: float, seconds: float, workers: int) -> array[int]:
    """The old design at the same rate, on the same frames; returns the latencies (us)."""
    design = QueueDesign(workers, _queue_worker)
    market = SyntheticMarket(1000, seed=5)
    for frame in market.snapshots():
        design.send(frame)
    design.put_all({"event_type": _SYNC})  # as the pool's run does, start the clock with every snapshot applied
    for _ in range(workers):
        design.results.get()
    for first, count in _due(rate, seconds):
        if not count:
            time.sleep(0.001)
        for frame in _stamped(market.asset_ids, first, count):
            design.send(frame)
    samples = array("q")
    for block in design.close():
        samples.frombytes(block)
    return samples


def _measure_pool(rate: float, seconds: float, workers: int, *, sync: bool) -> array[int]:
    """The pool at ``rate`` under ``with`` (``sync``) or ``async with``; returns the latencies (us) its
    workers recorded."""
    market = SyntheticMarket(1000, seed=5)
    with tempfile.TemporaryDirectory() as directory:
        factory = functools.partial(recorder, directory)
        config = PoolConfig(worker_count=workers, heartbeat_interval=1.0)
        if sync:
            with PersistentWorkerPool(config, handler_factory=factory) as pool:
                pool.publish(market.snapshots())
                pool.flush()
                _offer_sync(pool, market, rate, seconds)
        else:

            async def run() -> None:
                async with PersistentWorkerPool(config, handler_factory=factory) as pool:
                    await pool.publish(market.snapshots())
                    await pool.flush()
                    await _offer(pool, market, rate, seconds)

            anyio.run(run)
        samples = array("q")
        for path in Path(directory).glob("latency-*.bin"):
            with path.open("rb") as data:
                samples.frombytes(data.read())
    return samples


def summarise(design: str, rate: float, samples: array[int]) -> dict[str, Any]:
    """Percentiles of one design's latencies at one rate (the sorted samples are kept for the plot)."""
    ordered = sorted(samples)
    if not ordered:
        raise RuntimeError(f"{design}: no latency recorded at {rate:g} msg/s: run longer (--seconds) or faster")

    def pct(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {
        "design": design,
        "rate": rate,
        "recorded": len(ordered),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "mean_us": statistics.fmean(ordered),
        "samples": ordered,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    results = []
    for rate in args.rates:
        results.append(summarise("pool", rate, _measure_pool(rate, args.seconds, args.workers, sync=False)))
        results.append(summarise("pool-sync", rate, _measure_pool(rate, args.seconds, args.workers, sync=True)))
        results.append(summarise("queue", rate, _measure_queue(rate, args.seconds, args.workers)))
    print(f"# latency: publish -> applied in a worker, {args.workers} workers, {args.seconds:g} s per rate")
    print("| design | offered msg/s | messages | p50 us | p99 us | p99.9 us |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {_NAMES[r['design']]} | {r['rate']:,.0f} | {r['recorded']:,} | {r['p50_us']:.0f} | {r['p99_us']:.0f} "
            f"| {r['p999_us']:.0f} |"
        )
    return results


if __name__ == "__main__":
    main()
