"""`PolymarketFeed` against a local market-channel server: replay, a dropped connection, bad frames."""

from __future__ import annotations

import os
import signal

import pytest

from pool import BrokenWorkerError, PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.feeds import PolymarketFeed, PolymarketRestSource
from pool.models import PoolEvent, PoolEventKind, WorkerState
from tests.integration.clob_server import ClobServer
from tests.integration.market_server import MarketServer
from tests.support import ReferenceBooks, as_decimals, event_asset_ids, sequence_objects, until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

RECORDED = [frame for frame in sequence_objects("sequence_2025-10_price_change_v2.txt") if b'"event_type"' in frame]


def scenario(updates: int, seed: int) -> tuple[SyntheticMarket, list[bytes], list[bytes]]:
    """A market's initial books, and a stream: recorded frames (a real book and its price changes)
    around synthetic updates."""
    market = SyntheticMarket(100, seed=seed)
    initial = market.snapshots()
    stream = [RECORDED[0], RECORDED[1], *market.updates(updates), RECORDED[2]]
    return market, initial, stream


def subscribed(market: SyntheticMarket) -> list[str]:
    recorded_asset = ReferenceBooks()
    recorded_asset.apply_frames(RECORDED[:1])
    return [*market.asset_ids, *recorded_asset.bids]


async def settle(pool: PersistentWorkerPool, feed: PolymarketFeed, server: MarketServer) -> None:
    """Wait until the server has sent everything and the feed has handed all of it to the pool."""
    await until(lambda: server.finished.is_set() and feed.stats.frames >= server.sent, what="every frame published")
    await pool.flush()


async def assert_books_equal(pool: PersistentWorkerPool, reference: ReferenceBooks) -> None:
    for asset_id in reference.bids:
        view = await pool.get_book(asset_id)
        assert not view.stale, asset_id
        bids, asks = reference.levels(asset_id)
        assert as_decimals(view.bids) == bids, asset_id
        assert as_decimals(view.asks) == asks, asset_id


@pytest.mark.parametrize("corrupt", [False, True], ids=["dropped", "corrupt-frame"])
async def test_replay_then_a_lost_connection_ends_with_exact_books(anyio_backend: str, corrupt: bool) -> None:
    """The feed subscribes, applies the dump and the stream; midway the server drops the connection, or
    sends bytes that are not a WebSocket frame (which fail it, as RFC 6455 says); the feed reconnects,
    subscribes again, and every book ends equal to what the server sent."""
    market, initial, stream = scenario(3_000, seed=21)
    with MarketServer(initial, stream, drop_after=1_000, corrupt=corrupt) as server:
        async with (
            PersistentWorkerPool(PoolConfig(worker_count=2, heartbeat_interval=0.5)) as pool,
            PolymarketFeed(pool, subscribed(market), url=server.url, backoff=0.05) as feed,
        ):
            await settle(pool, feed, server)
            assert feed.stats.reconnects == 1 and feed.stats.connected
            await assert_books_equal(pool, server.reference)
            status = pool.get_status()
            assert status.frames_rejected == 0
            shown = status.feeds["polymarket"]  # the pool's status shows the feed
            assert shown.reconnects == 1 and shown.connected and shown.frames == server.sent
            assert shown.last_frame_age is not None and shown.bytes > shown.frames
    assert server.connections == 2
    assert [(s["type"], s["initial_dump"]) for s in server.subscriptions] == [("market", True)] * 2
    assert all(sorted(s["assets_ids"]) == sorted(subscribed(market)) for s in server.subscriptions)


async def test_a_connection_gone_silent_is_replaced(anyio_backend: str) -> None:
    """The server stops answering, PINGs included, without closing: after idle_timeout the feed gives the
    connection up, reconnects, and every book ends exact."""
    market, initial, stream = scenario(500, seed=27)
    with MarketServer(initial, stream, go_silent=True) as server:
        async with (
            PersistentWorkerPool(PoolConfig(worker_count=2, heartbeat_interval=0.5)) as pool,
            PolymarketFeed(
                pool, subscribed(market), url=server.url, ping_interval=0.05, idle_timeout=1.0, backoff=0.05
            ) as feed,
        ):
            await until(lambda: server.dumps == 2, what="the new connection's books sent")
            assert feed.stats.reconnects == 1 and feed.stats.connected
            await settle(pool, feed, server)
            await assert_books_equal(pool, server.reference)
            await until(lambda: server.pings > 0, what="the new connection's PINGs answered")
    assert server.connections == 2


async def test_books_read_stale_from_a_drop_until_the_reconnect_brings_their_book(anyio_backend: str) -> None:
    """Between the drop and the new connection's `book` frames, every book is stale (levels kept, events
    and status say so); the dump makes each live again, and the books end exact."""
    market, initial, stream = scenario(2_000, seed=23)
    assets = subscribed(market)
    events: list[PoolEvent] = []
    with MarketServer(initial, stream, drop_after=500, hold_reconnect=True) as server:
        async with (
            PersistentWorkerPool(PoolConfig(worker_count=2, heartbeat_interval=0.5)) as pool,
            PolymarketFeed(pool, assets, url=server.url, backoff=0.05) as feed,
        ):
            pool.add_listener(events.append)
            await until(lambda: len(server.subscriptions) == 2, what="the reconnected subscription")
            assert feed.stats.connected and feed.stats.reconnects == 1
            for asset_id in assets:
                view = await pool.get_book(asset_id)
                assert view.stale and view.bids and view.asks, asset_id  # flagged, last levels kept
            assert sum(w.stale_books for w in pool.get_status().workers.values()) == len(assets)
            assert event_asset_ids(events, PoolEventKind.BOOK_STALE) == sorted(assets)

            server.resume.set()
            await settle(pool, feed, server)
            await assert_books_equal(pool, server.reference)
            assert event_asset_ids(events, PoolEventKind.BOOK_LIVE) == sorted(assets)
            await until(
                lambda: sum(w.stale_books for w in pool.get_status().workers.values()) == 0, what="no stale books"
            )


async def test_garbage_and_oversized_frames_are_counted_and_skipped(anyio_backend: str) -> None:
    market, initial, stream = scenario(500, seed=22)
    huge = b'{"event_type": "price_change", "padding": "' + b"x" * 100_000 + b'"}'
    deep = b"[" * 2048 + b"]" * 2048  # msgspec raises RecursionError on it: once it ended the feed
    stream[100:100] = [b"garbage, not json", huge, b'{"event_type": "book", "asset_id": 7}', deep]
    with MarketServer(initial, stream) as server:
        async with PersistentWorkerPool(PoolConfig(worker_count=2, heartbeat_interval=0.5)) as pool:
            feed = PolymarketFeed(pool, subscribed(market), url=server.url, max_frame_bytes=65_536)
            async with feed:
                await until(
                    lambda: server.finished.is_set() and feed.stats.frames + feed.stats.oversized >= server.sent,
                    what="every frame published or skipped",
                )
                await pool.flush()
                assert feed.stats.oversized == 1 and feed.stats.reconnects == 0
                assert pool.get_status().frames_rejected == 3  # the garbage, the malformed book, the deep one
                assert pool.get_status().rejections == {"invalid_event": 1, "not_json": 1, "too_deep": 1}
                await assert_books_equal(pool, server.reference)


async def test_keep_alive_pings_and_subscription_changes(anyio_backend: str) -> None:
    market, initial, stream = scenario(10, seed=23)
    with MarketServer(initial, stream) as server:
        async with PersistentWorkerPool(PoolConfig(worker_count=1, heartbeat_interval=0.5)) as pool:
            feed = PolymarketFeed(pool, market.asset_ids[:10], url=server.url, ping_interval=0.05)
            async with feed:
                await until(lambda: server.pings >= 2, timeout=10, what="two keep-alive PINGs")
                assert feed.stats.subscribed == 10
                await feed.unsubscribe(market.asset_ids[:2])
                await feed.subscribe(market.asset_ids[10:12])
                assert feed.stats.subscribed == 10 and feed.stats.connected
                assert pool.get_status().feeds["polymarket"].subscribed == 10
            assert "polymarket" not in pool.get_status().feeds  # detached when it stopped


async def test_a_worker_killed_during_the_replay_is_rebuilt_through_rest(anyio_backend: str) -> None:
    """A SIGKILL in the middle of the stream: the slot's books come back through the REST source (a local
    CLOB server answering with the market server's books) and every book ends exact."""
    market = SyntheticMarket(200, seed=24)
    initial, stream = market.snapshots(), list(market.updates(20_000))
    with MarketServer(initial, stream, pause_every=20) as server, ClobServer(server.rest_books) as clob:
        config = PoolConfig(worker_count=2, heartbeat_interval=0.5)
        async with (
            PersistentWorkerPool(config, snapshot_source=PolymarketRestSource(clob.url)) as pool,
            PolymarketFeed(pool, market.asset_ids, url=server.url) as feed,
        ):
            await until(lambda: feed.stats.frames >= 3_000, what="3,000 frames published")
            victim = pool.get_status().workers[0].pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            await until(lambda: pool.get_status().workers[0].restarts == 1 and pool.is_healthy(), what="the restart")
            assert not server.finished.is_set(), "the kill should land in the middle of the replay"
            await settle(pool, feed, server)
            await assert_books_equal(pool, server.reference)
    assert "POST /books" in clob.requests


async def test_a_worker_given_up_costs_only_its_own_books(anyio_backend: str) -> None:
    """With no restart budget, a SIGKILLed worker fails for good in the middle of the stream: the feed
    counts the frames it can no longer deliver and keeps the other worker's books exact."""
    market = SyntheticMarket(100, seed=26)
    initial, stream = market.snapshots(), list(market.updates(10_000))
    with MarketServer(initial, stream, pause_every=20) as server:
        config = PoolConfig(worker_count=2, heartbeat_interval=0.5, max_restarts=0)
        async with (
            PersistentWorkerPool(config) as pool,
            PolymarketFeed(pool, market.asset_ids, url=server.url) as feed,
        ):
            await until(lambda: feed.stats.frames >= 2_000, what="2,000 frames published")
            victim = pool.get_status().workers[0].pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            await until(lambda: pool.get_status().workers[0].status is WorkerState.FAILED, what="worker 0 failed")
            assert not server.finished.is_set(), "the failure should land in the middle of the replay"
            await until(lambda: server.finished.is_set() and feed.stats.frames >= server.sent, what="every frame")
            assert feed.stats.connected and feed.stats.reconnects == 0 and feed.stats.undelivered > 0
            assert pool.get_status().feeds["polymarket"].undelivered == feed.stats.undelivered
            lost = [a for a in market.asset_ids if slot_for(a, pool.config.worker_count) == 0]
            kept = [a for a in market.asset_ids if slot_for(a, pool.config.worker_count) == 1]
            assert pool.get_status().workers[0].stale_books == len(lost)
            for asset_id in kept:
                view = await pool.get_book(asset_id)
                assert not view.stale and as_decimals(view.bids) == server.reference.levels(asset_id)[0], asset_id
                assert as_decimals(view.asks) == server.reference.levels(asset_id)[1], asset_id
            with pytest.raises(BrokenWorkerError):
                await pool.get_book(lost[0])


async def test_books_a_worker_lost_come_back_through_a_resubscription(anyio_backend: str) -> None:
    """With no snapshot source, the pool hands a dead worker's assets to `on_resync`; wired to the feed's
    `resubscribe`, the service sends their books again and every book ends exact."""
    market = SyntheticMarket(100, seed=25)
    with MarketServer(market.snapshots(), list(market.updates(500))) as server:
        feeds: list[PolymarketFeed] = []
        config = PoolConfig(worker_count=2, heartbeat_interval=0.5)
        async with PersistentWorkerPool(config, on_resync=lambda ids: feeds[0].resubscribe(ids)) as pool:
            feeds.append(PolymarketFeed(pool, market.asset_ids, url=server.url))
            async with feeds[0] as feed:
                await settle(pool, feed, server)
                victim = pool.get_status().workers[0].pid
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
                await until(lambda: pool.get_status().workers[0].restarts == 1 and bool(server.operations))
                # stale until the resubscription's books arrive
                await until(lambda: not pool.get_status().workers[0].stale_books, what="no stale book")
                await settle(pool, feed, server)
                await assert_books_equal(pool, server.reference)
    assert [op["operation"] for op in server.operations] == ["unsubscribe", "subscribe"]
