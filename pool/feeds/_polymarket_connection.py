"""One WebSocket connection of a `PolymarketFeed`: its share of the assets, kept subscribed and watched.

A connection subscribes to its assets, sends the text ``PING`` the service expects, and hands every frame
to its feed. Three watchdogs catch what an open connection can hide:

* **idle**: nothing at all for ``idle_timeout``, not even the ``PONG`` of a ``PING``: the peer is gone
  without closing (a half-open TCP connection); the connection is replaced.
* **stall**: no market data for ``stall_timeout`` while ``PONG``s still come: the service has stopped
  sending this connection's assets (py-clob-client #292, nautilus_trader #4901); the connection is
  replaced, which subscribes again and so brings a fresh `book` of every asset.
* **book**: an asset whose `book` has not come within ``book_timeout`` of subscribing to it is
  subscribed to again (and its book marked stale), with the timeout doubling up to ``max_backoff``.

Connection attempts go through the feed's `ConnectGate`, which spaces them out and holds every one back
after an HTTP 429: the service answers a burst of new sockets that way (nautilus_trader RFC #2238).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from ._websocket import ConnectionClosed, HandshakeRejected, WebSocket, _Oversized

__all__ = ["ConnectGate", "Connection", "Settings"]

_TOO_MANY_REQUESTS = 429
_WATCH_PERIOD = 0.5  # the longest a watchdog sleeps: a deadline is acted on within this much of passing


@dataclass(frozen=True)
class Settings:
    """A feed's settings that each of its connections follows (see `PolymarketFeed`)."""

    url: str
    ping_interval: float
    idle_timeout: float
    stall_timeout: float | None
    book_timeout: float | None
    max_frame_bytes: int
    backoff: float
    max_backoff: float
    open_timeout: float
    market_events: bool  # subscribe with custom_feature_enabled: best_bid_ask, new_market, market_resolved


class ConnectGate:
    """A feed's connection attempts, one at a time: each handshake ends before the next begins, then
    ``interval`` seconds pass, or longer while a 429's back-off runs, whichever connection got it. So a
    burst of sockets never leaves at once, and a 429 holds back every attempt behind it."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._lock = anyio.Lock()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the gate for one attempt."""
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            try:
                yield
            finally:
                self._next = max(self._next, time.monotonic() + self._interval)

    def hold(self, seconds: float) -> None:
        """No attempt for ``seconds`` from now."""
        self._next = max(self._next, time.monotonic() + seconds)


# What a connection tells its feed: a frame arrived; the connection was lost (its books are stale now);
# books did not come in time (they are being asked for again).
OnFrame = Callable[["Connection", bytes], Awaitable[None]]
OnStale = Callable[["Connection", list[str]], Awaitable[None]]


class Connection:
    """One connection and the assets it subscribes to; `run` keeps it open until cancelled."""

    def __init__(
        self,
        index: int,
        assets: Iterable[str],
        settings: Settings,
        gate: ConnectGate,
        on_frame: OnFrame,
        on_stale: OnStale,
        log: Any,
    ) -> None:
        self.index = index
        self.assets: dict[str, None] = dict.fromkeys(assets)  # ordered and unique
        # Assets subscribed to on the open connection whose `book` has not come yet: when it is overdue, and
        # how long the next wait is.
        self.awaiting: dict[str, tuple[float, float]] = {}
        self.socket: WebSocket | None = None
        self.opened = 0
        self.stalls = 0
        self.resubscribes = 0
        self.rate_limited = 0
        self.oversized = 0
        self._scope: anyio.CancelScope | None = None  # of `run`, while it runs
        self._closed = False
        self._settings = settings
        self._gate = gate
        self._on_frame = on_frame
        self._on_stale = on_stale
        self._heard_at = 0.0  # monotonic time of the last frame, PONG included
        self._data_at = 0.0  # ... of the last market data
        self._log = log.bind(connection=index)

    def close(self) -> None:
        """Stop for good (the feed has no asset left for it): `run` returns."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    def book_arrived(self, asset_id: str) -> None:
        self.awaiting.pop(asset_id, None)

    async def run(self) -> None:
        """Connect, subscribe, serve; reconnect with capped exponential backoff and jitter. Until cancelled."""
        settings = self._settings
        delay = settings.backoff
        with anyio.CancelScope() as self._scope:
            while not self._closed:
                try:
                    async with self._gate.turn():
                        socket = await self._open(delay)
                except ConnectionClosed as exc:
                    pause = delay * (1 + random.random() / 2)
                    self._log.warning("feed_connect_failed", error=str(exc), retry_in=round(pause, 3))
                    await anyio.sleep(pause)
                else:
                    delay = settings.backoff  # a connection that opened resets the backoff
                    await self._serve(socket)
                    await anyio.sleep(delay * (1 + random.random() / 2))
                    continue
                delay = min(settings.max_backoff, max(delay * 2, 0.01))

    async def _open(self, delay: float) -> WebSocket:
        settings = self._settings
        try:
            return await WebSocket.connect(
                settings.url, max_message_bytes=settings.max_frame_bytes, open_timeout=settings.open_timeout
            )
        except HandshakeRejected as exc:
            if exc.status_code == _TOO_MANY_REQUESTS:
                self.rate_limited += 1
                # Every attempt of the feed waits: the service limits the client, not a socket.
                self._gate.hold(max(delay, exc.retry_after or 0.0))
            raise

    async def subscribe(self, asset_ids: list[str]) -> None:
        """Add assets; if connected, ask the service for them now (their `book` comes first)."""
        self.assets.update(dict.fromkeys(asset_ids))
        self._await_books(asset_ids)
        await self._send_operation("subscribe", asset_ids)

    async def unsubscribe(self, asset_ids: list[str]) -> None:
        for asset_id in asset_ids:
            self.assets.pop(asset_id, None)
            self.awaiting.pop(asset_id, None)
        await self._send_operation("unsubscribe", asset_ids)

    async def resubscribe(self, asset_ids: list[str]) -> None:
        """Ask again for assets already subscribed to, so that the service sends a fresh `book` of each."""
        self._await_books(asset_ids)
        await self._send_operation("unsubscribe", asset_ids)
        await self._send_operation("subscribe", asset_ids)

    def _await_books(self, asset_ids: Iterable[str], wait: float | None = None) -> None:
        timeout = self._settings.book_timeout
        if timeout is None or self.socket is None:
            return  # not connected: the next connection's subscription brings every book
        wait = wait or timeout
        overdue_at = time.monotonic() + wait
        for asset_id in asset_ids:
            self.awaiting[asset_id] = (overdue_at, wait)

    async def _serve(self, socket: WebSocket) -> None:
        self.opened += 1
        self.socket = socket
        self._heard_at = self._data_at = time.monotonic()
        self.awaiting.clear()
        self._await_books(self.assets)
        self._log.info("feed_connected", assets=len(self.assets), reconnects=self.opened - 1)
        try:
            # `initial_dump` defaults to true, but without it some books never come at scale (nautilus_trader #3963).
            subscription: dict[str, object] = {"assets_ids": list(self.assets), "type": "market", "initial_dump": True}
            if self._settings.market_events:
                subscription["custom_feature_enabled"] = True
            await socket.send_text(msgspec.json.encode(subscription).decode())
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._keep_alive, socket)
                tasks.start_soon(self._watch)
                await self._receive(socket)
        except* ConnectionClosed as closed:  # from the receiver, the keep-alive or a watchdog
            self._log.warning("feed_disconnected", error=str(closed.exceptions[0]))
            # Updates are lost from here until the service sends each `book` again on the next connection.
            await self._on_stale(self, list(self.assets))
        finally:
            self.socket = None
            self.awaiting.clear()
            with anyio.CancelScope(shield=True):
                await socket.aclose()

    async def _receive(self, socket: WebSocket) -> None:
        while True:
            message = await socket.receive()
            self._heard_at = time.monotonic()
            if message == "PONG":
                continue  # the answer to our keep-alive: the connection is up, which says nothing of the data
            self._data_at = self._heard_at
            if isinstance(message, _Oversized):
                self.oversized += 1
                self._log.warning("feed_frame_oversized", max_frame_bytes=self._settings.max_frame_bytes)
                continue
            await self._on_frame(self, message.encode() if isinstance(message, str) else message)

    async def _keep_alive(self, socket: WebSocket) -> None:
        while True:
            await anyio.sleep(self._settings.ping_interval)
            await socket.send_text("PING")

    async def _watch(self) -> None:
        """Fail a connection gone silent or stalled; ask again for books that did not come."""
        settings = self._settings
        timeouts = (settings.idle_timeout, settings.stall_timeout, settings.book_timeout)
        period = min(_WATCH_PERIOD, *(timeout / 4 for timeout in timeouts if timeout))
        while True:
            now = time.monotonic()
            silent = now - self._heard_at
            if silent >= settings.idle_timeout:
                raise ConnectionClosed(
                    f"nothing received for {silent:.1f} s (idle_timeout={settings.idle_timeout:g} s), not even a "
                    "PONG: the connection is presumed dead"
                )
            quiet = now - self._data_at
            if settings.stall_timeout is not None and quiet >= settings.stall_timeout and self.assets:
                self.stalls += 1
                raise ConnectionClosed(
                    f"no market data for {quiet:.1f} s (stall_timeout={settings.stall_timeout:g} s) while the "
                    "connection still answers PING: the service has stopped sending it; replacing it"
                )
            overdue = [asset_id for asset_id, (when, _) in self.awaiting.items() if when <= now]
            if overdue:
                await self._ask_again(overdue)
            await anyio.sleep(period)

    async def _ask_again(self, overdue: list[str]) -> None:
        self.resubscribes += len(overdue)
        self._log.warning("feed_books_overdue", assets=len(overdue), first=overdue[0])
        await self._on_stale(self, overdue)
        for asset_id in overdue:  # the wait doubles, so a service that never answers is not flooded
            if asset_id in self.awaiting:  # (not if its book came meanwhile)
                self._await_books([asset_id], min(self._settings.max_backoff, 2 * self.awaiting[asset_id][1]))
        await self._send_operation("unsubscribe", overdue)
        await self._send_operation("subscribe", overdue)

    async def _send_operation(self, operation: str, asset_ids: list[str]) -> None:
        if asset_ids and self.socket is not None:
            message = {"assets_ids": asset_ids, "operation": operation}
            with contextlib.suppress(ConnectionClosed):  # the reconnect subscribes to the current set anyway
                await self.socket.send_text(msgspec.json.encode(message).decode())
