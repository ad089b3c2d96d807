"""``python -m pool``: run the pool on the built-in synthetic market and show what it does.

A demonstration and a smoke check in one: it starts the workers, publishes the initial books, then a
paced stream of updates, prints a status line every second and the final status as JSON, and exits 0
only if every worker applied messages and no frame was rejected.
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio
import msgspec

from models import PoolConfig

from ._pool import PersistentWorkerPool
from ._synthetic import SyntheticMarket

# Updates are published in chunks this large: big enough to amortise a publish call, small enough to
# keep the offered rate smooth at the demo's rates.
_CHUNK = 500


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pool", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--assets", type=int, default=1000, help="order books in the market (default: 1000)")
    parser.add_argument("--rate", type=float, default=20_000, help="updates per second offered (default: 20000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic market (default: 0)")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    market = SyntheticMarket(args.assets, seed=args.seed)
    config = PoolConfig(worker_count=args.workers, heartbeat_interval=1.0)  # a killed worker is rebuilt from it
    async with PersistentWorkerPool(config, snapshot_source=market) as pool:
        await pool.publish(market.snapshots())
        started = time.monotonic()
        sent = 0
        next_report = started + 1.0
        while (now := time.monotonic()) - started < args.seconds:
            due = int((now - started) * args.rate) - sent
            if due > 0:
                await pool.publish(list(market.updates(min(due, _CHUNK))))
                sent += min(due, _CHUNK)
            else:
                await anyio.sleep(min(0.01, _CHUNK / args.rate))
            if now >= next_report:
                next_report += 1.0
                status = pool.get_status()
                print(
                    f"t={now - started:4.1f}s published={status.messages_published} "
                    f"applied={status.messages_applied} rate={status.messages_per_second:,.0f}/s "
                    f"books={status.total_books} workers={status.alive_workers}/{status.worker_count}",
                    flush=True,
                )
        await pool.flush()
        status = pool.get_status()
    print(msgspec.json.format(msgspec.json.encode(status)).decode())
    healthy = all(worker.messages > 0 for worker in status.workers.values()) and status.frames_rejected == 0
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    return anyio.run(_run, _parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
