"""The optional market events, end to end: `best_bid_ask` checked against the books (a book that keeps
disagreeing is resynced), `market_resolved` closing books for good (across a crash, and out of the feed's
subscriptions), and the exchange's book `hash` recomputed in the workers."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Awaitable

import msgspec
import pytest

from pool import PersistentWorkerPool, PoolConfig, UnknownAssetError
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.feeds import PolymarketFeed
from pool.models import BookChecks, PoolEvent, PoolEventKind, Resolution, WorkerState
from tests.integration.sharded_market import (
    ShardedMarketServer,
    assert_exact,
    every_book,
    feed_of,
    pool_config,
    settled,
)
from tests.support import (
    HASH_VECTOR,
    event_asset_ids,
    hashed_books,
    market_resolved,
    sequence_objects,
    spoiled,
    until,
)

pytestmark = pytest.mark.timeout(90)


class _Resync:
    """``on_resync`` for a pool whose feed is made after it: hands the ids to the feed once it exists."""

    def __init__(self) -> None:
        self.feed: PolymarketFeed | None = None
        self.calls: list[list[str]] = []

    def __call__(self, asset_ids: list[str]) -> Awaitable[None]:
        assert self.feed is not None
        self.calls.append(sorted(asset_ids))
        return self.feed.resubscribe(asset_ids)


def quoted_entries(frames: list[bytes]) -> int:
    """How many books the 2025 ``price_change`` frames quote (the tokens their entries name, once a frame)."""
    return sum(
        len({entry["asset_id"] for entry in event.get("price_changes", ()) if "best_bid" in entry})
        for event in map(json.loads, frames)
    )


@pytest.mark.anyio
async def test_best_bid_ask_is_checked_and_a_book_that_keeps_disagreeing_is_resynced(anyio_backend: str) -> None:
    """The server quotes every book's best bid and ask (the recorded frame's shape): all 40 agree, as does
    every quote a 2025 `price_change` entry carries, each checked in the worker that holds its token. Then it
    quotes 3 books wrongly, twice: the first time is only counted; the second reaches
    best_bid_ask_resync_after=2, so those books go stale, `on_resync` makes the feed ask for them again, and
    their fresh `book`s make them live. Every book ends exact."""
    market = SyntheticMarket(40, seed=621)
    wrong = market.asset_ids[:3]
    resync = _Resync()
    events: list[PoolEvent] = []
    config = msgspec.structs.replace(pool_config(), best_bid_ask_resync_after=2)
    with ShardedMarketServer(market.snapshots()) as server:
        async with (
            PersistentWorkerPool(config, on_resync=resync) as pool,
            feed_of(pool, server, market.asset_ids, market_events=True) as feed,
        ):
            resync.feed = feed
            pool.add_listener(events.append)
            await every_book(feed, 2)
            updates = list(market.updates(2_000))
            server.publish(updates)
            server.quote(market.asset_ids)
            await settled(feed, server, pool)
            entry_quotes = quoted_entries(updates)
            assert entry_quotes > 0
            assert pool.get_status().checks == BookChecks(best_bid_ask_checked=40 + entry_quotes)
            server.quote(wrong, wrong=True)
            await settled(feed, server, pool)
            assert pool.get_status().checks.best_bid_ask_mismatches == 3 and resync.calls == []
            server.quote(wrong, wrong=True)
            await until(lambda: len(event_asset_ids(events, PoolEventKind.BOOK_LIVE)) == 3, what="books live again")
            more_updates = list(market.updates(2_000))
            server.publish(more_updates)
            server.quote(market.asset_ids)
            await settled(feed, server, pool)
            await assert_exact(pool, server)
            checks = pool.get_status().checks
    entry_quotes += quoted_entries(more_updates)
    assert checks == BookChecks(
        best_bid_ask_checked=86 + entry_quotes, best_bid_ask_mismatches=6, best_bid_ask_resyncs=3
    )
    assert sorted(asset for call in resync.calls for asset in call) == sorted(wrong)
    assert event_asset_ids(events, PoolEventKind.BOOK_STALE) == sorted(wrong)
    stale = next(event for event in events if event.kind is PoolEventKind.BOOK_STALE)
    assert "best_bid_ask" in stale.detail
    asked_again = [op for client in server.clients for op in client.operations if op.get("operation") == "subscribe"]
    assert sorted(asset for op in asked_again for asset in op["assets_ids"]) == sorted(wrong)


@pytest.mark.anyio
async def test_a_book_that_silently_diverged_is_caught_by_the_price_change_quotes(anyio_backend: str) -> None:
    """A level the exchange never sent (what a lost or garbled message leaves behind) puts a bid on top of
    one book that no update will ever remove. Without market events, the best bid and ask each 2025
    `price_change` entry quotes disagree with it three times in a row (best_bid_ask_resync_after's default):
    the book goes stale, `on_resync` makes the feed ask for it again, its fresh `book` makes it live, and
    every book ends exact."""
    market = SyntheticMarket(40, seed=625)
    victim = market.asset_ids[0]
    resync = _Resync()
    events: list[PoolEvent] = []
    snapshots = market.snapshots()
    updates = list(market.updates(3_000))
    assert sum(victim in frame.decode() and b'"price_changes"' in frame for frame in updates) > 3
    with ShardedMarketServer(snapshots) as server:
        async with (
            PersistentWorkerPool(pool_config(), on_resync=resync) as pool,
            feed_of(pool, server, market.asset_ids) as feed,
        ):
            resync.feed = feed
            pool.add_listener(events.append)
            await every_book(feed, 2)
            spurious = {"event_type": "price_change", "asset_id": victim, "price": "0.99", "side": "BUY", "size": "1"}
            await pool.publish(msgspec.json.encode(spurious))
            await pool.flush()
            assert (await pool.get_book(victim)).bids[0] == ("0.99", "1")
            server.publish(updates)
            await until(lambda: event_asset_ids(events, PoolEventKind.BOOK_LIVE) == [victim], what="the book resynced")
            await settled(feed, server, pool)
            await assert_exact(pool, server)
            checks = pool.get_status().checks
    assert checks.best_bid_ask_mismatches == 3 and checks.best_bid_ask_resyncs == 1
    assert checks.best_bid_ask_checked > 3 and resync.calls == [[victim]]
    assert event_asset_ids(events, PoolEventKind.BOOK_STALE) == [victim]


@pytest.mark.anyio
async def test_a_settled_market_is_closed_for_good_across_a_crash_and_followed_no_more(anyio_backend: str) -> None:
    """A `market_resolved` (Polymarket's documented shape) for one market's two tokens: both books close
    (no levels, the winner recorded, a `price_change` published to them changes nothing), the feed
    unsubscribes them and counts them resolved. SIGKILL of their worker: the replacement brings them back
    closed, not from the snapshot source (which would serve live levels). Unsubscribing drops the book."""
    market = SyntheticMarket(40, seed=623)
    winner, loser = market.asset_ids[0], market.asset_ids[1]  # one market: its two tokens
    others = market.asset_ids[2:]
    with ShardedMarketServer(market.snapshots()) as server:
        async with (
            PersistentWorkerPool(pool_config(), snapshot_source=lambda ids: server.rest_books(list(ids))) as pool,
            feed_of(pool, server, market.asset_ids, market_events=True) as feed,
        ):
            await every_book(feed, 2)
            server.publish(list(market.updates(1_000)))
            await settled(feed, server, pool)
            last_trade = (await pool.get_book(winner)).last_trade
            settlement = market_resolved(market.market_of[winner], [winner, loser], winner, "Yes", 1_770_000_000_000)
            server.publish([settlement])
            await until(lambda: feed.stats.resolved == 2, what="the feed sees the settlement")
            await pool.flush()
            expected = Resolution(winning_asset_id=winner, winning_outcome="Yes", timestamp=1_770_000_000_000)
            closed = {asset_id: await pool.get_book(asset_id) for asset_id in (winner, loser)}
            for view in closed.values():
                assert (view.bids, view.asks, view.stale, view.resolution) == ([], [], False, expected)
            assert closed[winner].last_trade == last_trade
            await pool.publish(
                msgspec.json.encode(
                    {"event_type": "price_change", "asset_id": winner, "price": "0.5", "side": "BUY", "size": "9"}
                )
            )
            assert await pool.get_book(winner) == closed[winner]
            assert pool.get_status().resolved_books == 2 and feed.stats.subscribed == 38
            server.publish(list(market.updates(1_000)))  # the market goes on; the settled tokens hear nothing
            await settled(feed, server, pool)
            await assert_exact(pool, server, assets=others)

            slot = slot_for(winner, 2)
            pid = pool.get_status().workers[slot].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(
                lambda: (
                    pool.get_status().workers[slot].restarts == 1
                    and pool.get_status().workers[slot].status is WorkerState.RUNNING
                ),
                what="the worker replaced",
            )
            for asset_id, view in closed.items():
                assert await pool.get_book(asset_id) == view
            await assert_exact(pool, server, assets=others)
            assert pool.get_status().resolved_books == 2

            await feed.unsubscribe([winner])
            with pytest.raises(UnknownAssetError):
                await pool.get_book(winner)
            assert feed.stats.resolved == 1
    unsubscribed = [op for client in server.clients for op in client.operations if op.get("operation") == "unsubscribe"]
    assert [sorted(op["assets_ids"]) for op in unsubscribed] == [sorted([winner, loser])]


def test_verify_book_hash_recomputes_the_exchanges_hash_in_the_workers() -> None:
    """With verify_book_hash, real workers check every recorded book (8 in the fixtures that carry a
    timestamp-era hash they can reproduce), count a book spoiled after hashing as a mismatch, and count the
    October 2025 WebSocket book, which lacks the REST metadata, as unverifiable; the books are applied all
    the same. Without it nothing is counted."""
    # The WebSocket book goes first, before the REST books of its asset teach the metadata; the last frame is
    # Polymarket's test vector (FORMAT.md section 9) with one size changed after hashing.
    unverifiable = sequence_objects("sequence_2025-10_price_change_v2.txt")[0]
    frames = [unverifiable, *hashed_books(), msgspec.json.encode(spoiled(HASH_VECTOR))]
    with PersistentWorkerPool(PoolConfig(worker_count=2, verify_book_hash=True)) as pool:
        pool.publish(frames)
        pool.flush(timeout=10)
        status = pool.get_status()
        assert status.checks == BookChecks(hashes_matched=8, hash_mismatches=1, hashes_unverifiable=1)
        assert sum(worker.checks.hashes_matched for worker in status.workers.values()) == 8
        assert pool.get_book("100").bids == [("0.4", "1001"), ("0.3", "100")]  # applied all the same
    with PersistentWorkerPool(PoolConfig(worker_count=2)) as pool:
        pool.publish(frames)
        pool.flush(timeout=10)
        assert pool.get_status().checks == BookChecks() and pool.get_status().total_books == 6
