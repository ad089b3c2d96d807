"""A local market channel for many connections at once: a real WebSocket server on 127.0.0.1.

Each connection has its own subscription, as on the service. A subscription (the first message, or a
``subscribe`` operation) is answered with a `book` of each asset it names; a frame `publish`ed is applied
to the server's reference and sent, in order, to every connection subscribed to any asset it names (so a
``price_change`` naming both tokens of a market reaches the connections of both). Faults, as the service
shows them: the first ``reject_first`` handshakes are answered with HTTP 429 (and ``Retry-After``); the
books of ``withhold`` are left out of the first subscription that names them; `stall` makes a connection
send no more market data while it still answers ``PING``. A ``new_market`` frame goes to every
connection subscribed with ``custom_feature_enabled``. It runs the ``websockets`` library's asyncio
server on a thread of its own, independent of the backend the test runs the pool on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.integration.market_server import LocalChannel


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

    def open_clients(self) -> list[_Client]:
        return [client for client in self.clients if not client.gone]

    def publish(self, frames: list[bytes]) -> None:
        """Apply ``frames`` to the reference and queue each for the connections subscribed to its assets."""
        asyncio.run_coroutine_threadsafe(self._publish(frames), self._loop).result(30)

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

    async def _publish(self, frames: list[bytes]) -> None:
        for frame in frames:
            event = json.loads(frame)
            named = {item["asset_id"] for item in (event if isinstance(event, list) else [event]) if "asset_id" in item}
            for item in event if isinstance(event, list) else [event]:
                named.update(entry["asset_id"] for entry in item.get("price_changes", ()))
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
