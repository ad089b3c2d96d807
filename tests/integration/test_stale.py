"""`mark_stale`: books flagged stale by a feed keep their levels, stay stale through a restart, and go live
only when their `book` arrives."""

from __future__ import annotations

import os
import signal

import pytest

from pool import PersistentWorkerPool, PoolClosedError, PoolConfig
from pool._service._metrics import PoolCollector
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.models import PoolEvent, PoolEventKind, WorkerState
from tests.support import ReferenceBooks, ReferenceSource, as_decimals, event_asset_ids, wait_for

pytestmark = pytest.mark.timeout(60)


def config() -> PoolConfig:
    return PoolConfig(worker_count=2, heartbeat_interval=0.5, worker_startup_timeout=20.0)


def assert_levels(pool: PersistentWorkerPool, reference: ReferenceBooks, asset_ids: list[str], *, stale: bool) -> None:
    for asset_id in asset_ids:
        view = pool.get_book(asset_id)
        assert view.stale is stale, asset_id
        bids, asks = reference.levels(asset_id)
        assert as_decimals(view.bids) == bids, asset_id
        assert as_decimals(view.asks) == asks, asset_id


def stale_books(pool: PersistentWorkerPool) -> int:
    return sum(worker.stale_books for worker in pool.get_status().workers.values())


def stale_books_metric(pool: PersistentWorkerPool) -> float:
    """The ``worker_pool_stale_books`` gauge summed over workers, as /metrics would expose it."""
    collector = PoolCollector(lambda: (pool.get_status(), pool.get_stats()))
    family = next(f for f in collector.collect() if f.name == "worker_pool_stale_books")
    return sum(sample.value for sample in family.samples)


def test_marked_books_keep_their_levels_take_updates_and_go_live_on_a_book() -> None:
    market = SyntheticMarket(40, seed=211)
    reference = ReferenceBooks()
    events: list[PoolEvent] = []
    with PersistentWorkerPool(config()) as pool:
        pool.add_listener(events.append)
        frames = market.snapshots() + list(market.updates(2_000))
        reference.apply_frames(frames)
        pool.publish(frames)

        marked = pool.mark_stale([*market.asset_ids, "never-published"])

        assert marked == len(market.asset_ids)  # the asset with no book is passed over
        assert_levels(pool, reference, market.asset_ids, stale=True)
        wait_for(lambda: stale_books(pool) == len(market.asset_ids), what="stale books in the status")
        assert stale_books_metric(pool) == len(market.asset_ids)
        assert event_asset_ids(events, PoolEventKind.BOOK_STALE) == sorted(market.asset_ids)

        updates = list(market.updates(1_000))  # a stale book still takes updates
        reference.apply_frames(updates)
        pool.publish(updates)
        assert_levels(pool, reference, market.asset_ids, stale=True)

        half = market.asset_ids[::2]
        fresh = [market.book(asset_id) for asset_id in half]
        reference.apply_frames(fresh)
        pool.publish(fresh)
        assert_levels(pool, reference, half, stale=False)
        assert_levels(pool, reference, market.asset_ids[1::2], stale=True)
        wait_for(lambda: stale_books(pool) == len(market.asset_ids) - len(half), what="half live in the status")
        assert event_asset_ids(events, PoolEventKind.BOOK_LIVE) == sorted(half)

        assert pool.mark_stale(half[:1]) == 1 and pool.mark_stale(half[:1]) == 1  # idempotent
        # Listeners run on the pool's loop, in order: once a later round trip is answered, the events of the
        # calls before it have been delivered.
        pool.get_book(half[0])
        assert event_asset_ids(events, PoolEventKind.BOOK_STALE).count(half[0]) == 2  # one event per transition
        with pytest.raises(TypeError, match="not one str"):
            pool.mark_stale(half[0])
    with pytest.raises(PoolClosedError):
        pool.mark_stale(half)


def test_a_marked_book_rebuilt_after_a_crash_stays_stale_until_its_book() -> None:
    """A recovery snapshot does not clear a feed's mark: the feed may have missed updates after it."""
    market = SyntheticMarket(60, seed=213)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    with PersistentWorkerPool(config(), snapshot_source=source) as pool:
        frames = market.snapshots() + list(market.updates(2_000))
        with source.lock:
            reference.apply_frames(frames)
        pool.publish(frames)
        mine = [asset_id for asset_id in market.asset_ids if slot_for(asset_id, pool.config.worker_count) == 0]
        theirs = [asset_id for asset_id in market.asset_ids if slot_for(asset_id, pool.config.worker_count) == 1]
        pool.mark_stale(mine[: len(mine) // 2])
        pool.flush(timeout=10)
        pid = pool.get_status().workers[0].pid
        assert pid is not None

        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (
                pool.get_status().workers[0].restarts == 1
                and pool.get_status().workers[0].status is WorkerState.RUNNING
            ),
            timeout=30,
            what="worker 0 rebuilt",
        )

        assert_levels(pool, reference, mine[: len(mine) // 2], stale=True)
        assert_levels(pool, reference, mine[len(mine) // 2 :] + theirs, stale=False)
        wait_for(lambda: pool.get_status().workers[0].stale_books == len(mine) // 2, what="stale count after rebuild")
        fresh = [market.book(asset_id) for asset_id in mine[: len(mine) // 2]]
        reference.apply_frames(fresh)
        pool.publish(fresh)
        assert_levels(pool, reference, mine, stale=False)
        wait_for(lambda: stale_books(pool) == 0, what="no stale books")
