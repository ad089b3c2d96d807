"""Soak benchmark: a pool under steady load for a long time, and the slope of its memory.

    python -m tests.performance.bench_soak [--seconds 600] [--rate 20000] [--workers 2]

A synthetic market (1,000 books, the usual mix) is published at ``--rate`` frames/s, generated as they
fall due, for ``--seconds``. Every ``--every`` seconds it samples the parent's RSS and each worker's USS
(private memory, what the memory monitor enforces). The slope is a least-squares line through the
samples after the first minute (imports, caches and allocator pools settle first), in MB per hour: a
leak shows as a steady positive slope, noise as a slope near zero either way.

There is no baseline design here: the question is whether the pool's own memory stays flat.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket

_MB = 1024 * 1024
_SETTLE_SECONDS = 60.0


def _slope_mb_per_hour(times: list[float], values: list[int]) -> float:
    if len(times) < 2:
        return 0.0
    return statistics.linear_regression(times, values).slope * 3600 / _MB


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    args = parser.parse_args(argv)

    market = SyntheticMarket(1_000, seed=17)
    updates = market.updates(int(args.rate * args.seconds) + 1)
    parent = psutil.Process()
    times: list[float] = []
    parent_rss: list[int] = []
    worker_uss: dict[int, list[int]] = {}
    with PersistentWorkerPool(PoolConfig(worker_count=args.workers, heartbeat_interval=1.0)) as pool:
        pool.publish(market.snapshots())
        pool.flush()
        sent, begun, next_sample = 0, time.perf_counter(), 0.0
        while (elapsed := time.perf_counter() - begun) < args.seconds:
            due = int(elapsed * args.rate) - sent
            if due > 0:
                pool.publish([next(updates) for _ in range(due)])
                sent += due
            if elapsed >= next_sample:
                status = pool.get_status()
                times.append(elapsed)
                parent_rss.append(parent.memory_info().rss)
                for worker in status.workers.values():
                    assert worker.pid is not None
                    uss = psutil.Process(worker.pid).memory_full_info().uss
                    worker_uss.setdefault(worker.worker_id, []).append(uss)
                next_sample += args.every
            time.sleep(0.005)
        pool.flush()
        status = pool.get_status()
    achieved = sent / args.seconds
    settled = [i for i, t in enumerate(times) if t >= min(_SETTLE_SECONDS, args.seconds / 2)]
    when = [times[i] for i in settled]
    results = {
        "sent": float(sent),
        "rate": achieved,
        "restarts": float(status.restarts),
        "rejected": float(status.frames_rejected),
        "parent_slope": _slope_mb_per_hour(when, [parent_rss[i] for i in settled]),
    }
    print(f"# soak: {args.seconds:g} s at {args.rate:,.0f} msg/s offered, {args.workers} workers, 1,000 books")
    print(f"# {sent:,} messages published ({achieved:,.0f}/s)")
    print(f"# restarts {status.restarts}, frames rejected {status.frames_rejected}")
    print("| process | memory at start MB | at end MB | slope after the first minute, MB/hour |")
    print("|---|---:|---:|---:|")
    print(f"| parent (RSS) | {parent_rss[0] / _MB:.1f} | {parent_rss[-1] / _MB:.1f} | {results['parent_slope']:+.2f} |")
    for worker_id, samples in sorted(worker_uss.items()):
        slope = _slope_mb_per_hour(when, [samples[i] for i in settled])
        results[f"worker_{worker_id}_slope"] = slope
        print(f"| worker {worker_id} (USS) | {samples[0] / _MB:.1f} | {samples[-1] / _MB:.1f} | {slope:+.2f} |")
    return results


if __name__ == "__main__":
    main()
