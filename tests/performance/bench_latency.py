"""Latency benchmark: publish-to-applied time of single messages at a steady offered rate.

    python -m tests.performance.bench_latency [--rates 10000 50000] [--seconds 5]

Each frame's ``timestamp`` carries the system-wide monotonic clock (microseconds) read just before it is
published; a handler in the worker, called right after the frame is applied, records the difference.
Frames are published as they fall due, every millisecond, under ``async with`` (no thread hop).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import anyio
import msgspec

from pool import PersistentWorkerPool, PoolConfig
from pool._synthetic import SyntheticMarket

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


async def _offer(pool: PersistentWorkerPool, market: SyntheticMarket, rate: float, seconds: float) -> int:
    """Publish stamped one-level price changes at ``rate`` per second; return how many."""
    asset_ids = market.asset_ids
    sent, begun = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - begun) < seconds:
        due = int(elapsed * rate) - sent
        if due <= 0:
            await anyio.sleep(0.001)
            continue
        frames = []
        for index in range(sent, sent + due):
            frames.append(
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
            )
        await pool.publish(frames)
        sent += due
    await pool.flush()
    return sent


async def _measure(rate: float, seconds: float, workers: int) -> dict[str, float]:
    market = SyntheticMarket(1000, seed=5)
    with tempfile.TemporaryDirectory() as directory:
        factory = functools.partial(recorder, directory)
        config = PoolConfig(worker_count=workers, heartbeat_interval=1.0)
        async with PersistentWorkerPool(config, handler_factory=factory) as pool:
            await pool.publish(market.snapshots())
            await pool.flush()
            sent = await _offer(pool, market, rate, seconds)
        samples = array("q")
        for path in Path(directory).glob("latency-*.bin"):
            with path.open("rb") as data:
                samples.frombytes(data.read())
    ordered = sorted(samples)
    if not ordered:
        raise RuntimeError(f"no latency recorded at {rate:g} msg/s: run longer (--seconds) or faster")

    def pct(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {
        "rate": rate,
        "sent": float(sent),
        "recorded": float(len(ordered)),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "mean_us": statistics.fmean(ordered) if ordered else 0.0,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    results = [anyio.run(_measure, rate, args.seconds, args.workers) for rate in args.rates]
    print(f"# latency: publish -> applied in a worker, {args.workers} workers, {args.seconds:g} s per rate")
    print("| offered msg/s | messages | p50 us | p99 us | p99.9 us |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rate']:,.0f} | {r['recorded']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p999_us']:.0f} |"
        )
    return results


if __name__ == "__main__":
    main()
