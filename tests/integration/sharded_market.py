"""A local market channel for many connections at once: a real WebSocket server on 127.0.0.1.

Each connection has its own subscription, as on the service. A subscription (the first message, or a
``subscribe`` operation) is answered with a `book` of each asset it names; a frame `publish`ed is applied
to the server's reference and sent, in order, to every connection subscribed to any asset it names (so a
``price_change`` naming both tokens of a market reaches the connections of both). Faults, as the service
shows them: the first ``reject_first`` handshakes are answered with HTTP 429 (and ``Retry-After``); the
books of ``withhold`` are left out of the first subscription that names them; `stall` makes a connection
send no more market data while it still answers ``PING``. A ``new_market`` frame goes to every
connection subscribed with ``custom_feature_enabled``, a ``market_resolved`` to every connection subscribed
to one of its ``assets_ids``; `quote` sends ``best_bid_ask`` frames computed from the reference. It runs
the ``websockets`` library's asyncio server on a thread of its own, independent of the backend the test
runs the pool on. The helpers at the end are what the tests of a feed on it share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pool import PersistentWorkerPool, PoolConfig
from pool.feeds import PolymarketFeed
from tests.integration.market_server import LocalChannel
from tests.support import as_decimals, fixture_bytes, until


class _Client:
    def __init__(self, number: int) -> None:
        self.number = number
        self.assets: set[str] = set()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.stalled = False
        self.gone = False
        self.operations: list[dict[str, Any]] = []
        self.market_events = False  # subscribed with custom_feature_enabled


class ShardedMarketServer(LocalChannel):
    def __init__(
        self,
        initial: list[bytes],
        *,
        reject_first: int = 0,
        retry_after: float | None = None,
        withhold: Iterable[str] = (),
    ) -> None:
        super().__init__(initial)
        self.reject_first = reject_first
        self.retry_after = retry_after
        self.withhold = set(withhold)
        self.attempts: list[tuple[float, int]] = []  # (monotonic time, HTTP status) of every handshake
        self.clients: list[_Client] = []
        self._recorded_quote = json.loads(fixture_bytes("ws_best_bid_ask_2025-12.json"))

    def open_clients(self) -> list[_Client]:
        return [client for client in self.clients if not client.gone]

    def publish(self, frames: list[bytes]) -> None:
        """Apply ``frames`` to the reference and queue each for the connections subscribed to its assets."""
        asyncio.run_coroutine_threadsafe(self._publish(frames), self._loop).result(30)

    def quote(self, asset_ids: list[str], *, wrong: bool = False) -> None:
        """Send each asset's ``best_bid_ask`` (in the recorded frame's shape) as its current book has it, behind
        every frame published so far; ``wrong`` reports a best bid one hundredth below the real one."""
        asyncio.run_coroutine_threadsafe(self._quote(asset_ids, wrong), self._loop).result(30)

    def stall(self, client: _Client) -> None:
        """``client`` sends no more market data (it still answers PING), as the service does at times."""
        client.stalled = True

    def drained(self) -> bool:
        return all(client.queue.empty() for client in self.clients)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        if len([a for a in self.attempts if a[1] == 429]) < self.reject_first:
            self.attempts.append((time.monotonic(), 429))
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many connections\n")
            if self.retry_after is not None:
                response.headers["Retry-After"] = f"{self.retry_after:g}"
            return response
        self.attempts.append((time.monotonic(), 101))
        return None

    async def _quote(self, asset_ids: list[str], wrong: bool) -> None:
        frames = []
        with self.lock:
            for asset_id in asset_ids:
                bids, asks = self.reference.levels(asset_id)
                best_bid = bids[0][0] - (Decimal("0.01") if wrong else 0) if bids else Decimal(0)
                best_ask = asks[0][0] if asks else Decimal(1)
                quote = {**self._recorded_quote, "asset_id": asset_id, "market": self.reference.markets[asset_id]}
                quote.update(best_bid=str(best_bid), best_ask=str(best_ask), spread=str(best_ask - best_bid))
                frames.append(json.dumps(quote).encode())
        await self._publish(frames)

    async def _publish(self, frames: list[bytes]) -> None:
        for frame in frames:
            event = json.loads(frame)
            named = {item["asset_id"] for item in (event if isinstance(event, list) else [event]) if "asset_id" in item}
            for item in event if isinstance(event, list) else [event]:
                named.update(entry["asset_id"] for entry in item.get("price_changes", ()))
                named.update(item.get("assets_ids", ()) if item.get("event_type") == "market_resolved" else ())
            with self.lock:
                self.reference.apply_frames([frame])
            text = frame.decode()
            service_wide = not named and b'"new_market"' in frame  # to every custom-feature subscription
            for client in self.open_clients():
                wants = client.market_events if service_wide else bool(client.assets & named)
                if wants and not client.stalled:
                    client.queue.put_nowait(text)

    async def _handle(self, connection: ServerConnection) -> None:
        client = _Client(len(self.clients) + 1)
        self.clients.append(client)
        sender = asyncio.create_task(self._send_queued(connection, client))
        try:
            with contextlib.suppress(ConnectionClosed):
                async for message in connection:
                    if await self._pong(connection, message):
                        continue
                    request = json.loads(message)
                    client.operations.append(request)
                    client.market_events = client.market_events or bool(request.get("custom_feature_enabled"))
                    asset_ids = request["assets_ids"]
                    if request.get("operation") == "unsubscribe":
                        client.assets.difference_update(asset_ids)
                        continue
                    client.assets.update(asset_ids)
                    self._dump(client, asset_ids)
        finally:
            client.gone = True
            sender.cancel()

    def _dump(self, client: _Client, asset_ids: list[str]) -> None:
        """A `book` of each asset, behind what the client was sent so far (the service's answer)."""
        if client.stalled:
            return
        with self.lock:
            for asset_id in asset_ids:
                if asset_id in self.withhold:
                    self.withhold.discard(asset_id)  # this time only
                elif asset_id in self.reference.bids:
                    client.queue.put_nowait(self.reference.snapshot(asset_id).decode())

    async def _send_queued(self, connection: ServerConnection, client: _Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await client.queue.get()
                await connection.send(text)
                self.sent += 1


def pool_config() -> PoolConfig:
    return PoolConfig(worker_count=2, heartbeat_interval=0.5)


def feed_of(
    pool: PersistentWorkerPool, server: ShardedMarketServer, assets: list[str], **settings: Any
) -> PolymarketFeed:
    """A feed on ``server`` with the tests' settings (20 assets a connection, no pause between
    connections, no stall watchdog) unless ``settings`` say otherwise."""
    defaults: dict[str, Any] = {"assets_per_connection": 20, "connect_interval": 0.0, "stall_timeout": None}
    return PolymarketFeed(pool, assets, url=server.url, **{**defaults, **settings})


async def every_book(feed: PolymarketFeed, connections: int) -> None:
    """Wait until ``connections`` are open and every asset's book has come."""
    await until(
        lambda: feed.stats.connections_open == connections and feed.stats.awaiting_books == 0, what="every book"
    )


async def settled(feed: PolymarketFeed, server: ShardedMarketServer, pool: PersistentWorkerPool) -> None:
    """Every frame the server sent has reached the feed, every book asked for has come, and the pool has
    applied all of it."""
    await until(
        lambda: server.drained() and feed.stats.frames >= server.sent and feed.stats.awaiting_books == 0,
        what="every frame received",
    )
    await pool.flush()


async def assert_exact(
    pool: PersistentWorkerPool, server: ShardedMarketServer, *, live: bool = True, assets: list[str] | None = None
) -> None:
    for asset_id in assets if assets is not None else server.reference.bids:
        view = await pool.get_book(asset_id)
        assert not (live and view.stale), asset_id
        assert (as_decimals(view.bids), as_decimals(view.asks)) == server.reference.levels(asset_id), asset_id
