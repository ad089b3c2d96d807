"""`PolymarketFeed` over several connections, against a local server that serves each its own subscription:
any number of assets with exact books, a stalled connection replaced, a book that never came asked for
again, and HTTP 429 on connect backed off."""

from __future__ import annotations

import random
import threading

import msgspec
import pytest

from pool import PersistentWorkerPool, UnknownAssetError
from pool._service._synthetic import SyntheticMarket
from pool.models import NewMarket, PoolEvent, PoolEventKind
from tests.integration.sharded_market import (
    ShardedMarketServer,
    assert_exact,
    every_book,
    feed_of,
    pool_config,
    settled,
)
from tests.support import event_asset_ids, fixture_bytes, until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


async def test_1200_assets_over_six_connections_end_exact_with_split_markets_brought_together(
    anyio_backend: str,
) -> None:
    """1,200 assets in a shuffled order, so most markets' two tokens start on different connections: the
    feed opens 6 connections of 200, and each `price_change` naming both tokens is published once, by the
    connection that delivered it first, which takes the other token over. After 20,000 frames every book
    is equal to the server's, and live."""
    market = SyntheticMarket(1_200, seed=601)
    order = list(market.asset_ids)
    random.Random(7).shuffle(order)
    with ShardedMarketServer(market.snapshots()) as server:
        async with (
            PersistentWorkerPool(pool_config()) as pool,
            feed_of(pool, server, order, assets_per_connection=200, connect_interval=0.02) as feed,
        ):
            await every_book(feed, 6)
            updates = list(market.updates(20_000))
            for start in range(0, len(updates), 2_000):
                server.publish(updates[start : start + 2_000])
            await settled(feed, server, pool)
            await assert_exact(pool, server)
            stats = pool.get_status().feeds["polymarket"]
        assert stats.subscribed == 1_200 and stats.connections >= 3
        assert stats.moved > 0 and stats.duplicates > 0  # split markets were met, and their copies dropped
        assert stats.reconnects == 0 and stats.stalls == 0 and stats.rate_limited == 0
    subscriptions = [client.operations[0]["assets_ids"] for client in server.clients]
    assert len(subscriptions) == 6 and all(len(ids) == 200 for ids in subscriptions)
    shares = sorted(tuple(order[start : start + 200]) for start in range(0, 1_200, 200))
    assert sorted(map(tuple, subscriptions)) == shares  # shared out in the order given


async def test_a_connection_that_answers_ping_but_sends_no_data_is_replaced(anyio_backend: str) -> None:
    """The server stops sending one connection's data and goes on answering its PINGs: after
    stall_timeout the feed replaces it; its books go stale, then live again with the fresh dump, and end
    exact. The other connection, fed all along, is left alone."""
    market = SyntheticMarket(40, seed=603, skew=0.0)
    events: list[PoolEvent] = []
    stop = threading.Event()
    with ShardedMarketServer(market.snapshots()) as server:

        def tick() -> None:  # a steady market: every connection has data at all times
            while not stop.wait(0.1):
                server.publish(list(market.updates(40)))

        async with (
            PersistentWorkerPool(pool_config()) as pool,
            feed_of(
                pool, server, market.asset_ids, ping_interval=0.2, idle_timeout=1.0, stall_timeout=1.0, backoff=0.05
            ) as feed,
        ):
            pool.add_listener(events.append)
            await every_book(feed, 2)
            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
            try:
                stalled = server.clients[0]
                server.stall(stalled)
                await until(lambda: stalled.gone and feed.stats.connections_open == 2, what="replaced")
                await until(lambda: feed.stats.awaiting_books == 0, what="the fresh dump")
                pings_seen = server.pings
            finally:
                stop.set()
                ticker.join()
            await settled(feed, server, pool)
            await assert_exact(pool, server, live=False)  # levels exact; a quiet feed may be reconnecting now
            stats = feed.stats
        assert stats.stalls >= 1 and pings_seen > 0
        replaced = set(stalled.operations[0]["assets_ids"])
        assert len(server.clients) >= 3 and set(server.clients[2].operations[0]["assets_ids"]) == replaced
        assert replaced <= set(event_asset_ids(events, PoolEventKind.BOOK_STALE))
        assert replaced <= set(event_asset_ids(events, PoolEventKind.BOOK_LIVE))
        untouched = set(server.clients[1].operations[0]["assets_ids"])
        assert not untouched & set(event_asset_ids(events, PoolEventKind.BOOK_STALE))


async def test_an_asset_whose_book_never_comes_is_subscribed_to_again(anyio_backend: str) -> None:
    """The server leaves three assets out of the initial dump: within book_timeout the feed unsubscribes
    and subscribes them again, which brings their books; every book ends exact and live."""
    market = SyntheticMarket(30, seed=605)
    withheld = market.asset_ids[3:6]
    with ShardedMarketServer(market.snapshots(), withhold=withheld) as server:
        async with (
            PersistentWorkerPool(pool_config()) as pool,
            feed_of(pool, server, market.asset_ids, assets_per_connection=200, book_timeout=0.5) as feed,
        ):
            await until(lambda: feed.stats.awaiting_books == 0 and feed.stats.resubscribes >= 3, what="asked again")
            server.publish(list(market.updates(2_000)))
            await settled(feed, server, pool)
            await assert_exact(pool, server)
            assert feed.stats.resubscribes == 3
    later = server.clients[0].operations[1:]
    assert [(op["operation"], sorted(op["assets_ids"])) for op in later] == [
        ("unsubscribe", sorted(withheld)),
        ("subscribe", sorted(withheld)),
    ]


async def test_http_429_on_connect_holds_every_connection_back(anyio_backend: str) -> None:
    """The first three handshakes are answered 429 with Retry-After: 0.3; no attempt of the feed, on any
    of its connections, comes sooner than that after a 429, and all end connected with exact books."""
    market = SyntheticMarket(60, seed=607)
    with ShardedMarketServer(market.snapshots(), reject_first=3, retry_after=0.3) as server:
        async with (
            PersistentWorkerPool(pool_config()) as pool,
            feed_of(pool, server, market.asset_ids, backoff=0.01) as feed,
        ):
            await every_book(feed, 3)
            server.publish(list(market.updates(1_000)))
            await settled(feed, server, pool)
            await assert_exact(pool, server)
            assert feed.stats.rate_limited == 3 and feed.stats.reconnects == 0
    times = [when for when, _ in server.attempts]
    for (refused_at, status), later in zip(server.attempts, times[1:], strict=False):
        if status == 429:
            assert later - refused_at >= 0.3, server.attempts
    assert [status for _, status in server.attempts].count(101) == 3


async def test_unsubscribe_drops_the_books_and_closes_an_emptied_connection(anyio_backend: str) -> None:
    """Unsubscribing every asset of one connection and a few of another: the service is told, their books
    leave the pool (`get_book` says there is none, `total_books` drops, the workers' counts too), the
    emptied connection is closed, and a later subscription builds a book anew."""
    market = SyntheticMarket(40, seed=609)
    first, rest = market.asset_ids[:20], market.asset_ids[20:]
    with ShardedMarketServer(market.snapshots()) as server:
        async with (
            PersistentWorkerPool(pool_config()) as pool,
            feed_of(pool, server, market.asset_ids) as feed,
        ):
            await every_book(feed, 2)
            await pool.flush()
            assert pool.get_status().total_books == 40
            await feed.unsubscribe([*first, *rest[:5]])
            # The workers count their books in their next report, which follows the removal at once.
            await until(lambda: pool.get_status().total_books == 15, what="the books dropped in the workers")
            for asset_id in [*first, *rest[:5]]:
                with pytest.raises(UnknownAssetError, match="dropped"):
                    await pool.get_book(asset_id)
            assert (feed.stats.subscribed, feed.stats.connections) == (15, 1)
            emptied = next(c for c in server.clients if c.operations[0]["assets_ids"] == first)
            await until(lambda: emptied.gone, what="the emptied connection closed")
            await feed.subscribe(rest[:1])
            await until(lambda: feed.stats.awaiting_books == 0, what="the book again")
            await pool.flush()
            await assert_exact(pool, server, assets=[rest[0], *rest[5:]])
    kept = next(c for c in server.clients if c.operations[0]["assets_ids"] == rest)
    unsubscribed = [op for op in kept.operations if op.get("operation") == "unsubscribe"]
    assert [sorted(op["assets_ids"]) for op in unsubscribed] == [sorted(rest[:5])]


async def test_new_markets_a_filter_takes_are_followed_once(anyio_backend: str) -> None:
    """With market_events, the subscription asks for custom features; two `new_market` frames (the recorded
    one, its tokens put on markets the server holds) reach both connections: the filter sees each market
    once, and the feed follows the one it takes, whose books come and are exact."""
    market = SyntheticMarket(44, seed=611)
    followed, new_stock, new_other = market.asset_ids[:40], market.asset_ids[40:42], market.asset_ids[42:44]
    recorded = msgspec.json.decode(fixture_bytes("ws_new_market_2025-12.json"))
    frames = [
        msgspec.json.encode({**recorded, "market": f"0x{n:064x}", "assets_ids": ids, "tags": tags})
        for n, ids, tags in ((1, new_stock, ["stocks"]), (2, new_other, ["sports"]))
    ]
    seen: list[NewMarket] = []

    def stocks_only(new: NewMarket) -> bool:
        seen.append(new)
        return "stocks" in new.tags

    with ShardedMarketServer(market.snapshots()) as server:
        async with (
            PersistentWorkerPool(pool_config()) as pool,
            feed_of(pool, server, followed, market_events=True, on_new_market=stocks_only) as feed,
        ):
            await every_book(feed, 2)
            server.publish(frames)
            await until(lambda: feed.stats.subscribed == 42 and feed.stats.awaiting_books == 0, what="the new books")
            server.publish(list(market.updates(1_000)))
            await settled(feed, server, pool)
            await assert_exact(pool, server, assets=[*followed, *new_stock])
            for asset_id in new_other:
                with pytest.raises(UnknownAssetError):
                    await pool.get_book(asset_id)
            assert feed.stats.new_markets == 2
    assert [(new.market, new.assets_ids, new.question) for new in seen] == [
        (f"0x{1:064x}", new_stock, recorded["question"]),
        (f"0x{2:064x}", new_other, recorded["question"]),
    ]
    assert all(client.operations[0]["custom_feature_enabled"] is True for client in server.clients)
