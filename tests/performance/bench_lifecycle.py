"""Lifecycle benchmark: start, shutdown, get_status, and many start/stop cycles without leaks.

    python -m tests.performance.bench_lifecycle [--workers 4] [--cycles 1000] [--cycle-workers 1]

* start: ``with PersistentWorkerPool(...)`` entered, every worker's ready handshake done; baseline in the
  same run: a ``concurrent.futures.ProcessPoolExecutor`` (spawn) with every worker having run a no-op;
* shutdown: leaving the block (graceful stop, every process reaped);
* ``get_status()``: mean time per call on a running pool;
* cycles: start and stop a pool of ``--cycle-workers`` repeatedly (one worker by default, so that 1,000
  cycles fit in a few minutes: a leak in the parent shows per cycle, not per worker), then count what is
  left over: child processes, open file descriptors and threads, and the growth of this process's RSS.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import psutil

from pool import PersistentWorkerPool, PoolConfig


def _noop() -> None:
    return None


def measure_baseline_start(workers: int) -> float:
    began = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as executor:
        for future in [executor.submit(_noop) for _ in range(workers)]:
            future.result()
        elapsed = time.perf_counter() - began
    return elapsed


def measure_start_stop(workers: int) -> tuple[float, float, float]:
    """(start seconds, shutdown seconds, get_status seconds per call)."""
    config = PoolConfig(worker_count=workers, heartbeat_interval=1.0)
    began = time.perf_counter()
    pool = PersistentWorkerPool(config)
    with pool:
        started = time.perf_counter() - began
        calls = 10_000
        t0 = time.perf_counter()
        for _ in range(calls):
            pool.get_status()
        per_call = (time.perf_counter() - t0) / calls
        stopping = time.perf_counter()
    return started, time.perf_counter() - stopping, per_call


def _children() -> int:
    return sum(
        1 for child in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(child.cmdline())
    )


def measure_cycles(workers: int, cycles: int) -> dict[str, float]:
    config = PoolConfig(worker_count=workers, heartbeat_interval=1.0)
    process = psutil.Process()
    with PersistentWorkerPool(config):  # a first cycle warms imports and caches up
        pass
    fds, threads, rss = process.num_fds(), threading.active_count(), process.memory_info().rss
    began = time.perf_counter()
    for _ in range(cycles):
        with PersistentWorkerPool(config):
            pass
    elapsed = time.perf_counter() - began
    return {
        "cycles": float(cycles),
        "seconds_per_cycle": elapsed / cycles,
        "leaked_children": float(_children()),
        "leaked_fds": float(process.num_fds() - fds),
        "leaked_threads": float(threading.active_count() - threads),
        "rss_growth_mb": (process.memory_info().rss - rss) / 1024 / 1024,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=1_000)
    parser.add_argument("--cycle-workers", type=int, default=1)
    args = parser.parse_args(argv)
    started, stopped, status_call = measure_start_stop(args.workers)
    baseline = measure_baseline_start(args.workers)
    cycles = measure_cycles(args.cycle_workers, args.cycles)
    results = {
        "start_s": started,
        "baseline_start_s": baseline,
        "shutdown_s": stopped,
        "get_status_us": status_call * 1e6,
        **cycles,
    }
    print(f"# lifecycle: {args.workers} workers (spawn)")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| start until every worker is ready | {started:.3f} s |")
    print(f"| baseline: ProcessPoolExecutor({args.workers}) until every worker ran a task | {baseline:.3f} s |")
    print(f"| graceful shutdown | {stopped:.3f} s |")
    print(f"| get_status() per call | {status_call * 1e6:.1f} us |")
    each = cycles["seconds_per_cycle"]
    print(f"| {args.cycles} start/stop cycles of {args.cycle_workers} worker(s) | {each:.3f} s each |")
    print(
        f"| left after the cycles: children, fds, threads, RSS growth | {cycles['leaked_children']:.0f}, "
        f"{cycles['leaked_fds']:.0f}, {cycles['leaked_threads']:.0f}, {cycles['rss_growth_mb']:.1f} MB |"
    )
    return results


if __name__ == "__main__":
    main()
