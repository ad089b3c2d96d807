"""Throughput benchmark: the pool against its baselines, on the same workload, in the same run.

    python -m tests.performance.bench_throughput [--messages 200000] [--books 1000] [--workers 2] [--live-shape]

Measured from raw JSON bytes in the parent to state applied in a worker (the clock stops when every
message has been applied). Books are loaded before the clock starts. Three designs:

* ``pool``: this library (`PersistentWorkerPool.publish` in chunks, then `flush`);
* ``queue``: the old WorkerManager design: the parent decodes each frame, routes it, and puts the
  decoded message on the owning worker's ``multiprocessing.Queue``, one pickled message per ``put``;
* ``single``: one process, msgspec decode and dict books, no IPC (the single-core limit);
* ``ray`` (only where the optional ``ray`` extra is installed): one Ray actor per worker holding dict
  books; the parent decodes each frame to route it and sends the raw frames in batches of 256 per actor
  call (``ray``), or one call per message (``ray-1``, timed on the first 5,000 messages: it is slow).

Each design runs ``--repeat`` times, interleaved, and the best run of each is reported, because these
2-core machines are noisy; ratios are taken between runs of the same round. Ray runs after the rounds,
in a phase of its own, because its daemons use CPU while they are up.

Shard balance: the report gives each worker's share of the messages the pool applied. With a fixed hash
split, the busiest worker's share over an even share bounds what traffic-weighted balancing could gain.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import msgspec

from pool import PersistentWorkerPool
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.models import BookEvent, PoolConfig, PriceChange, UnknownEvent, decode_frame

# Frames per publish call in the pool run: what a feed adapter reading a socket would hand over.
_PUBLISH_CHUNK = 2_000
_LEVELS_PER_SIDE = 35
_STOP = None


def _apply_to_dict_books(books: dict[str, tuple[dict[str, str], dict[str, str]]], frame: bytes) -> None:
    """The baselines' book keeping: msgspec decode, then plain dicts of price string -> size string."""
    for event in decode_frame(frame):
        if isinstance(event, UnknownEvent):
            continue
        if isinstance(event, PriceChange):
            for asset_id, side, price, size in event.entries():
                sides = books.get(asset_id)
                if sides is None:
                    continue
                levels = sides[0] if side == "BUY" else sides[1]
                if size == "0":
                    levels.pop(price, None)
                else:
                    levels[price] = size
        elif isinstance(event, BookEvent):
            books[event.asset_id] = ({lv.price: lv.size for lv in event.bids}, {lv.price: lv.size for lv in event.asks})


def run_single(snapshots: list[bytes], updates: list[bytes]) -> float:
    books: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for frame in snapshots:
        _apply_to_dict_books(books, frame)
    started = time.perf_counter()
    for frame in updates:
        _apply_to_dict_books(books, frame)
    return time.perf_counter() - started


def _queue_worker(queue: Any, done: Any) -> None:
    books: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    while (message := queue.get()) is not _STOP:
        _apply_decoded(books, message)
    done.put(len(books))


def _apply_decoded(books: dict[str, tuple[dict[str, str], dict[str, str]]], message: dict[str, Any]) -> None:
    kind = message.get("event_type")
    if kind == "book":
        books[message["asset_id"]] = (
            {lv["price"]: lv["size"] for lv in message["bids"]},
            {lv["price"]: lv["size"] for lv in message["asks"]},
        )
    elif kind == "price_change":
        if "price_changes" in message:
            entries = message["price_changes"]
        elif "changes" in message:
            entries = [dict(c, asset_id=message["asset_id"]) for c in message["changes"]]
        else:
            entries = [message]
        for entry in entries:
            sides = books.get(entry["asset_id"])
            if sides is None:
                continue
            levels = sides[0] if entry["side"] == "BUY" else sides[1]
            if entry["size"] == "0":
                levels.pop(entry["price"], None)
            else:
                levels[entry["price"]] = entry["size"]


class QueueDesign:
    """The old WorkerManager design, for the baselines: the parent decodes each frame, routes it, and puts
    the decoded message on the owning worker's ``multiprocessing.Queue`` (one pickled message per ``put``).

    ``worker(queue, results)`` runs in each spawned worker until it gets ``None``; `close` sends that and
    returns one object from ``results`` per worker.
    """

    def __init__(self, workers: int, worker: Callable[[Any, Any], None] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._queues = [context.Queue() for _ in range(workers)]
        self.results = context.Queue()
        target = worker or _queue_worker
        self._processes = [context.Process(target=target, args=(q, self.results), daemon=True) for q in self._queues]
        for process in self._processes:
            process.start()
        self._routes: dict[str, int] = {}

    def send(self, frame: bytes) -> None:
        message = msgspec.json.decode(frame)
        asset_id = message.get("asset_id") or message["price_changes"][0]["asset_id"]
        slot = self._routes.get(asset_id)
        if slot is None:
            slot = self._routes[asset_id] = slot_for(asset_id, len(self._queues))
        self._queues[slot].put(message)

    def put_all(self, message: dict[str, Any]) -> None:
        """Put one message on every worker's queue."""
        for queue in self._queues:
            queue.put(message)

    def close(self) -> list[Any]:
        for queue in self._queues:
            queue.put(_STOP)
        results = [self.results.get() for _ in self._processes]
        for process in self._processes:
            process.join()
        return results


def run_queue(snapshots: list[bytes], updates: list[bytes], workers: int) -> float:
    design = QueueDesign(workers)
    for frame in snapshots:
        design.send(frame)
    started = time.perf_counter()
    for frame in updates:
        design.send(frame)
    design.close()
    return time.perf_counter() - started


def run_pool(snapshots: list[bytes], updates: list[bytes], workers: int, shares: list[float]) -> float:
    """Time the pool; fill ``shares`` with each worker's share of the messages it applied in the run."""
    config = PoolConfig(worker_count=workers, heartbeat_interval=1.0)
    with PersistentWorkerPool(config) as pool:
        pool.publish(snapshots)
        pool.flush()
        before = {w.worker_id: w.messages for w in pool.get_status().workers.values()}
        started = time.perf_counter()
        for start in range(0, len(updates), _PUBLISH_CHUNK):
            pool.publish(updates[start : start + _PUBLISH_CHUNK])
        pool.flush()
        elapsed = time.perf_counter() - started
        status = pool.get_status()
    if status.frames_rejected:
        raise RuntimeError(f"the pool rejected {status.frames_rejected} frames of a clean workload")
    applied = [w.messages - before[w.worker_id] for w in status.workers.values()]
    shares[:] = [count / sum(applied) for count in applied]
    return elapsed


_RAY_BATCH = 256
_RAY_SINGLE_MESSAGES = 5_000


def run_ray(snapshots: list[bytes], updates: list[bytes], workers: int, batch: int) -> float:
    """Ray actors with dict books; raw frames in batches of ``batch`` per call. Needs ``ray.init()`` done."""
    import ray

    class BookActor:
        def __init__(self) -> None:
            self.books: dict[str, tuple[dict[str, str], dict[str, str]]] = {}

        def apply(self, frames: list[bytes]) -> int:
            for frame in frames:
                _apply_to_dict_books(self.books, frame)
            return len(frames)

    remote_actor = ray.remote(num_cpus=0)(BookActor)  # num_cpus=0: 4 actors fit on 2 cores
    actors = [remote_actor.remote() for _ in range(workers)]
    decode = msgspec.json.decode

    def send(frames: list[bytes]) -> list[Any]:
        pending: list[list[bytes]] = [[] for _ in actors]
        calls = []
        for frame in frames:
            message = decode(frame)
            asset_id = message.get("asset_id") or message["price_changes"][0]["asset_id"]
            slot = slot_for(asset_id, workers)
            pending[slot].append(frame)
            if len(pending[slot]) >= batch:
                calls.append(actors[slot].apply.remote(pending[slot]))
                pending[slot] = []
        calls.extend(actor.apply.remote(rest) for actor, rest in zip(actors, pending, strict=True) if rest)
        return calls

    ray.get(send(snapshots))
    started = time.perf_counter()
    ray.get(send(updates))
    elapsed = time.perf_counter() - started
    for actor in actors:
        ray.kill(actor)
    return elapsed


def _ray_rates(snapshots: list[bytes], updates: list[bytes], workers: int, repeat: int) -> dict[str, float]:
    """Messages/s of the Ray designs (best of ``repeat`` for batches), or nothing without the extra."""
    try:
        import ray
    except ImportError:
        return {}
    ray.init(num_cpus=multiprocessing.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        batched = max(len(updates) / run_ray(snapshots, updates, workers, _RAY_BATCH) for _ in range(repeat))
        few = updates[:_RAY_SINGLE_MESSAGES]
        single = len(few) / run_ray(snapshots, few, workers, 1)
    finally:
        ray.shutdown()
    return {"ray": batched, "ray-1": single}


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def workload(
    argv: list[str] | None, doc: str | None, *, messages: int, seed: int
) -> tuple[argparse.Namespace, list[bytes], list[bytes]]:
    """The flags the pool-against-baseline benchmarks share, and the synthetic market's frames they ask for:
    (arguments, snapshots, updates)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=messages)
    parser.add_argument("--books", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--live-shape",
        action="store_true",
        help="every price_change in the 2025 shape live traffic has (two mirrored entries), not the mix",
    )
    args = parser.parse_args(argv)
    # As on the exchange, a trade is followed by its asset's fresh book: snapshots are ~3% of the stream,
    # of ~70 levels each, and they are where exact decimal parsing costs most.
    market = SyntheticMarket(
        args.books, seed=seed, levels=_LEVELS_PER_SIDE, books_after_trades=True, live_shape=args.live_shape
    )
    return args, market.snapshots(), list(market.updates(args.messages))


def describe(updates: list[bytes]) -> str:
    """The mix of a workload, for a report's header: mean frame size and the share of `book` frames."""
    mean_bytes = statistics.fmean(len(frame) for frame in updates)
    books = sum(b'"event_type":"book"' in frame for frame in updates)
    return f"{mean_bytes:.0f} bytes mean, {books / len(updates):.1%} books"


def main(argv: list[str] | None = None) -> dict[str, float]:
    args, snapshots, updates = workload(argv, __doc__, messages=200_000, seed=42)
    shares: list[float] = []
    designs: dict[str, Callable[[], float]] = {
        "pool": lambda: run_pool(snapshots, updates, args.workers, shares),
        "queue": lambda: run_queue(snapshots, updates, args.workers),
        "single": lambda: run_single(snapshots, updates),
    }
    rounds: list[dict[str, float]] = []
    for _ in range(args.repeat):
        rounds.append({name: args.messages / run() for name, run in designs.items()})
    best = {name: max(r[name] for r in rounds) for name in designs}
    ratio_queue = max(r["pool"] / r["queue"] for r in rounds)
    ratio_single = max(r["pool"] / r["single"] for r in rounds)
    ray_rates = _ray_rates(snapshots, updates, args.workers, args.repeat)

    print(f"# throughput: {args.messages:,} messages ({describe(updates)}) over {args.books:,} books")
    machine = f"{platform.machine()} cpus={multiprocessing.cpu_count()} python={platform.python_version()}"
    print(f"# {platform.node()} {machine}")
    print(f"# commit {_commit()} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, best of {args.repeat} interleaved rounds")
    print("| design | workers | messages/s |")
    print("|---|---:|---:|")
    print(f"| pool (this library) | {args.workers} | {best['pool']:,.0f} |")
    print(f"| old design: one pickled message per Queue.put | {args.workers} | {best['queue']:,.0f} |")
    print(f"| one process, msgspec + dict books, no IPC | 1 | {best['single']:,.0f} |")
    if ray_rates:
        print(f"| Ray actors, batches of {_RAY_BATCH} per call | {args.workers} | {ray_rates['ray']:,.0f} |")
        print(f"| Ray actors, one call per message | {args.workers} | {ray_rates['ray-1']:,.0f} |")
    print(f"pool / queue design:   {ratio_queue:.2f}x (best same-round ratio)")
    print(f"pool / single process: {ratio_single:.2f}x (best same-round ratio)")
    if ray_rates:
        print(
            f"pool / Ray, batched:   {best['pool'] / ray_rates['ray']:.2f}x (best of each; Ray runs after the rounds)"
        )
    else:
        print("Ray: not measured (install the `ray` extra to include it)")
    imbalance = max(shares) * len(shares)
    print(
        f"shard balance, share of messages per worker: {', '.join(f'{share:.1%}' for share in shares)}; "
        f"busiest / even share {imbalance:.2f}"
    )
    return {
        **best,
        **ray_rates,
        "ratio_queue": ratio_queue,
        "ratio_single": ratio_single,
        "imbalance": imbalance,
    }


if __name__ == "__main__":
    main()
