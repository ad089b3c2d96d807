"""Publish benchmark: one frame per call, the way a user's WebSocket loop publishes, in both APIs.

    python -m tests.performance.bench_publish [--messages 100000] [--books 1000] [--workers 2] [--repeat 3]
        [--live-shape]

The clock runs from the first publish to the end of the flush that follows the last, with the books
loaded beforehand. Five designs, run interleaved ``--repeat`` times (best run of each reported; ratios
are the best of the same-round ratios, because these 2-core machines drift):

* ``sync-1``: ``with PersistentWorkerPool(...)``, then ``pool.publish(frame)`` for each frame;
* ``async-1``: ``async with`` (asyncio), then ``await pool.publish(frame)`` for each frame;
* ``queue``: the old design, one pickled ``multiprocessing.Queue.put`` per message;
* ``single``: one process doing the same work alone (msgspec decode, dict books, no IPC);
* ``sync-batch``: ``pool.publish(list_of_frames)`` in chunks, for scale.

CPU per message is the CPU time (user + system) the parent and the workers spent over the run, divided by
the messages: the figure that projects to a machine with more cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import psutil

from pool import PersistentWorkerPool, PoolConfig
from tests.performance.bench_throughput import describe, run_queue, run_single, workload

_CHUNK = 2_000


class _Cpu:
    """CPU seconds of this process and of the pool's workers between `start` and `stop`."""

    def __init__(self, pool: PersistentWorkerPool) -> None:
        self._workers = [psutil.Process(w.pid) for w in pool.get_status().workers.values() if w.pid is not None]
        self.parent = self.workers = 0.0

    @staticmethod
    def _seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self.parent = self._seconds(psutil.Process())
        self.workers = sum(self._seconds(process) for process in self._workers)

    def stop(self) -> None:
        self.parent = self._seconds(psutil.Process()) - self.parent
        self.workers = sum(self._seconds(process) for process in self._workers) - self.workers


def _config(workers: int) -> PoolConfig:
    return PoolConfig(worker_count=workers, heartbeat_interval=1.0)


def run_sync(snapshots: list[bytes], updates: list[bytes], workers: int, batched: bool) -> tuple[float, _Cpu]:
    with PersistentWorkerPool(_config(workers)) as pool:
        pool.publish(snapshots)
        pool.flush()
        cpu = _Cpu(pool)
        cpu.start()
        started = time.perf_counter()
        if batched:
            for start in range(0, len(updates), _CHUNK):
                pool.publish(updates[start : start + _CHUNK])
        else:
            for frame in updates:
                pool.publish(frame)
        pool.flush()
        elapsed = time.perf_counter() - started
        cpu.stop()
    return elapsed, cpu


def run_async(snapshots: list[bytes], updates: list[bytes], workers: int) -> tuple[float, _Cpu]:
    async def main() -> tuple[float, _Cpu]:
        async with PersistentWorkerPool(_config(workers)) as pool:
            await pool.publish(snapshots)
            await pool.flush()
            cpu = _Cpu(pool)
            cpu.start()
            started = time.perf_counter()
            for frame in updates:
                await pool.publish(frame)
            await pool.flush()
            elapsed = time.perf_counter() - started
            cpu.stop()
        return elapsed, cpu

    return anyio.run(main)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args, snapshots, updates = workload(argv, __doc__, messages=100_000, seed=43)
    cpu: dict[str, _Cpu] = {}

    def timed(name: str, run: Callable[[], tuple[float, _Cpu]]) -> float:
        elapsed, spent = run()
        if name not in cpu or spent.parent + spent.workers < cpu[name].parent + cpu[name].workers:
            cpu[name] = spent
        return elapsed

    designs: dict[str, Callable[[], float]] = {
        "sync-1": lambda: timed("sync-1", lambda: run_sync(snapshots, updates, args.workers, batched=False)),
        "async-1": lambda: timed("async-1", lambda: run_async(snapshots, updates, args.workers)),
        "queue": lambda: run_queue(snapshots, updates, args.workers),
        "single": lambda: run_single(snapshots, updates),
        "sync-batch": lambda: timed("sync-batch", lambda: run_sync(snapshots, updates, args.workers, batched=True)),
    }
    rounds = [{name: args.messages / run() for name, run in designs.items()} for _ in range(args.repeat)]
    best = {name: max(r[name] for r in rounds) for name in designs}
    sync_async = max(r["sync-1"] / r["async-1"] for r in rounds)
    sync_queue = max(r["sync-1"] / r["queue"] for r in rounds)
    async_single = max(r["async-1"] / r["single"] for r in rounds)
    async_queue = max(r["async-1"] / r["queue"] for r in rounds)

    print(
        f"# publish: {args.messages:,} messages ({describe(updates)}) over {args.books:,} books, {args.workers} workers"
    )
    print(f"# best of {args.repeat} interleaved rounds; CPU per message from the run with the least CPU")
    print("| design | messages/s | parent CPU us/msg | workers CPU us/msg |")
    print("|---|---:|---:|---:|")
    labels = {
        "sync-1": "pool, `with`: publish(frame) per frame",
        "async-1": "pool, `async with`: await publish(frame) per frame",
        "queue": "old design: one pickled message per Queue.put",
        "single": "one process, msgspec + dict books, no IPC",
        "sync-batch": f"pool, `with`: publish(list) of {_CHUNK:,}",
    }
    single_us = 1e6 / best["single"]  # one thread, busy throughout: its CPU per message is its time
    for name, label in labels.items():
        spent = cpu.get(name)
        if spent:
            figures = f"{spent.parent / args.messages * 1e6:.2f} | {spent.workers / args.messages * 1e6:.2f}"
        else:
            figures = f"- | {single_us:.2f}" if name == "single" else "- | -"
        print(f"| {label} | {best[name]:,.0f} | {figures} |")
    print(f"async one-frame / single process: {async_single:.2f}x (target >= 1.3x; best same-round ratio)")
    print(f"async one-frame / old Queue design: {async_queue:.2f}x (target >= 7x; best same-round ratio)")
    print(f"sync one-frame / async one-frame: {sync_async:.2f}x (target >= 0.8x; best same-round ratio)")
    print(f"sync one-frame / old Queue design: {sync_queue:.2f}x (best same-round ratio)")
    parent_us = cpu["async-1"].parent / args.messages * 1e6
    workers_us = cpu["async-1"].workers / args.messages * 1e6
    # CPU times tick every 10 ms: a smoke run can be too short to measure the parent's at all.
    caps = (
        f"the parent's {parent_us:.2f} us caps one-frame publishing at {1e6 / parent_us:,.0f} msg/s (one thread), "
        f"and parent plus workers at {psutil.cpu_count() * 1e6 / (parent_us + workers_us):,.0f} msg/s on "
        f"{psutil.cpu_count()} cores"
        if parent_us > 0
        else "the parent's CPU was below the clock's 10 ms tick (too short a run to project from)"
    )
    print(
        f"async one-frame, CPU a message: workers {workers_us:.2f} us = {workers_us / single_us:.2f}x the single "
        f"process's {single_us:.2f} us (target <= 1.0x); {caps}"
    )
    return {
        **best,
        "sync_async": sync_async,
        "sync_queue": sync_queue,
        "async_single": async_single,
        "async_queue": async_queue,
    }


if __name__ == "__main__":
    main()
