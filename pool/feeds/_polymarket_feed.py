"""`PolymarketFeed`: the CLOB market channel over WebSocket, handed to a pool frame by frame.

The feed subscribes to its asset ids, sends the text ``PING`` the service expects every
``ping_interval`` seconds, and publishes each frame's raw bytes to the pool (which decodes only the asset
ids in the parent). When the connection drops it marks the pool's books of its assets stale
(`PersistentWorkerPool.mark_stale`), reconnects with capped exponential backoff and jitter, and subscribes
again; the service then sends a fresh `book` for every asset (the initial dump), which replaces whatever
was missed while disconnected and makes each book live again.

Frames larger than ``max_frame_bytes`` are counted (`FeedStatus.oversized`) and skipped; frames that are
not valid market data are counted and skipped by the pool (``frames_rejected``); frames for a worker the
pool has given up on are counted (`FeedStatus.undelivered`). None of them ends the connection.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import anyio
import msgspec

from pool import BrokenWorkerError
from pool.models import FeedStatus
from pool.models._logging import get_logger

from ._websocket import ConnectionClosed, WebSocket, _Oversized

__all__ = ["DEFAULT_WS_URL", "MAX_ASSETS_PER_CONNECTION", "PolymarketFeed"]

DEFAULT_WS_URL = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
# Above this many assets on one connection Polymarket stops sending their book data (an undocumented limit
# that nautilus_trader ran into and works around with more connections: its pull request #2915), so the
# feed could never build those books nor refresh them after a reconnect.
MAX_ASSETS_PER_CONNECTION = 500


class PolymarketFeed:
    """Feeds ``pool`` (an async `PersistentWorkerPool`, inside its ``async with``) from the market channel.

    Use ``async with PolymarketFeed(pool, ids) as feed:`` (it runs in the background until the block
    ends) or ``await feed.run()`` (until cancelled).

    Args:
        asset_ids: the tokens to subscribe to; `subscribe` and `unsubscribe` change them while running.
        url: the market channel's endpoint (a local server in tests).
        ping_interval: seconds between keep-alive ``PING`` text frames.
        idle_timeout: seconds without any frame, not even the ``PONG`` a ``PING`` gets, after which the
            connection is presumed dead and replaced; longer than ``ping_interval``.
        max_frame_bytes: larger frames are counted and skipped.
        backoff, max_backoff: the first reconnect delay and its cap (doubling, with up to 50% jitter).
        open_timeout: seconds to connect and complete the handshake.
        max_assets: the most assets it subscribes to (``ValueError`` beyond, from here or `subscribe`);
            the default is the most for which the service sends each asset's initial `book`.
        name: its key in the pool's ``get_status().feeds``.
    """

    def __init__(
        self,
        pool: Any,
        asset_ids: Iterable[str],
        *,
        url: str = DEFAULT_WS_URL,
        ping_interval: float = 10.0,
        idle_timeout: float = 30.0,
        max_frame_bytes: int = 4 * 1024 * 1024,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        open_timeout: float = 10.0,
        max_assets: int = MAX_ASSETS_PER_CONNECTION,
        name: str = "polymarket",
    ) -> None:
        for setting, value in (
            ("ping_interval", ping_interval),
            ("max_frame_bytes", max_frame_bytes),
            ("max_backoff", max_backoff),
            ("open_timeout", open_timeout),
            ("max_assets", max_assets),
        ):
            if value <= 0:
                raise ValueError(f"PolymarketFeed {setting} must be positive, got {value!r}")
        if backoff < 0:
            raise ValueError(f"PolymarketFeed backoff must be >= 0, got {backoff!r}")
        if idle_timeout <= ping_interval:
            raise ValueError(
                f"PolymarketFeed idle_timeout ({idle_timeout!r}) must be longer than ping_interval "
                f"({ping_interval!r}), or a quiet but healthy connection would be cut before its PONG arrives"
            )
        self._pool = pool
        self.name = name
        self._max_assets = max_assets
        self._assets = dict.fromkeys(asset_ids)  # ordered and unique
        self._check_room(len(self._assets))
        self.url = url
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._max_frame_bytes = max_frame_bytes
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._open_timeout = open_timeout
        self._socket: WebSocket | None = None
        self._connections = 0
        self._frames = 0
        self._bytes = 0
        self._oversized = 0
        self._undelivered = 0
        self._failed_workers: set[int] = set()
        self._last_frame: float | None = None
        self._heard_at = 0.0  # monotonic time of the current connection's last frame (or its opening)
        self._tasks: anyio.abc.TaskGroup | None = None
        self._log = get_logger("pool.feeds.polymarket").bind(url=url)

    @property
    def stats(self) -> FeedStatus:
        """The feed at a glance; also in the pool's `get_status().feeds[name]` while it runs."""
        return FeedStatus(
            name=self.name,
            connected=self._socket is not None,
            reconnects=max(0, self._connections - 1),
            frames=self._frames,
            bytes=self._bytes,
            oversized=self._oversized,
            undelivered=self._undelivered,
            subscribed=len(self._assets),
            last_frame_age=None if self._last_frame is None else time.monotonic() - self._last_frame,
        )

    async def __aenter__(self) -> PolymarketFeed:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        return await self._tasks.__aexit__(exc_type, exc, tb)

    async def subscribe(self, asset_ids: Iterable[str]) -> None:
        """Add assets; if connected, ask the service for them now (their `book` arrives first).

        Raises:
            ValueError: that would be more than ``max_assets``; nothing was added.
        """
        new = list(dict.fromkeys(asset_id for asset_id in asset_ids if asset_id not in self._assets))
        self._check_room(len(self._assets) + len(new))
        self._assets.update(dict.fromkeys(new))
        await self._send_operation("subscribe", new)

    async def unsubscribe(self, asset_ids: Iterable[str]) -> None:
        """Drop assets from the subscription (their books stay in the pool as they are)."""
        gone = [asset_id for asset_id in asset_ids if asset_id in self._assets]
        for asset_id in gone:
            del self._assets[asset_id]
        await self._send_operation("unsubscribe", gone)

    async def resubscribe(self, asset_ids: Iterable[str]) -> None:
        """Ask the service again for assets already subscribed to, so that it sends a fresh `book` for each.

        Made for the pool's ``on_resync``: books a replaced worker could not rebuild from a snapshot come
        back from the feed itself. Not connected, it does nothing: the next connection subscribes to
        everything, and that brings every `book` anyway.
        """
        again = [asset_id for asset_id in asset_ids if asset_id in self._assets]
        self._log.info("feed_resubscribing", assets=len(again))
        await self._send_operation("unsubscribe", again)
        await self._send_operation("subscribe", again)

    def _check_room(self, count: int) -> None:
        if count > self._max_assets:
            raise ValueError(
                f"PolymarketFeed: {count} assets would be more than max_assets={self._max_assets} on one "
                "connection, and Polymarket stops sending book data beyond that, so those books could never be "
                "built. Split the assets over several PolymarketFeeds (each with its own name), keeping both "
                "tokens of a market in the same one"
            )

    async def run(self) -> None:
        """Connect, subscribe, publish every frame; reconnect whenever the connection ends. Until cancelled."""
        detach = self._pool.attach_feed(self.name, lambda: self.stats)
        try:
            await self._reconnect_forever()
        finally:
            detach()

    async def _reconnect_forever(self) -> None:
        delay = self._backoff
        while True:
            try:
                socket = await WebSocket.connect(
                    self.url, max_message_bytes=self._max_frame_bytes, open_timeout=self._open_timeout
                )
            except ConnectionClosed as exc:
                self._log.warning("feed_connect_failed", error=str(exc), retry_in=round(delay, 3))
            else:
                delay = self._backoff  # a connection that opened resets the backoff
                await self._serve(socket)
            await anyio.sleep(delay * (1 + random.random() / 2))
            delay = min(self._max_backoff, max(delay * 2, 0.01))

    async def _serve(self, socket: WebSocket) -> None:
        self._connections += 1
        self._socket = socket
        self._heard_at = time.monotonic()
        self._log.info("feed_connected", assets=len(self._assets), reconnects=self._connections - 1)
        try:
            # `initial_dump` defaults to true, but without it some books never come at scale (nautilus_trader #3963).
            subscription = {"assets_ids": list(self._assets), "type": "market", "initial_dump": True}
            await socket.send_text(msgspec.json.encode(subscription).decode())
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._keep_alive, socket)
                tasks.start_soon(self._watch_idle)
                await self._receive(socket)
                tasks.cancel_scope.cancel()
        except* ConnectionClosed as closed:  # from the receiver or the keep-alive, whichever saw it first
            self._log.warning("feed_disconnected", error=str(closed.exceptions[0]))
            # Updates are lost from here until the service sends each `book` again on the next connection.
            stale = await self._pool.mark_stale(list(self._assets))
            self._log.info("feed_books_stale", books=stale)
        finally:
            self._socket = None
            with anyio.CancelScope(shield=True):
                await socket.aclose()

    async def _receive(self, socket: WebSocket) -> None:
        while True:
            message = await socket.receive()
            self._last_frame = self._heard_at = time.monotonic()
            if isinstance(message, _Oversized):
                self._oversized += 1
                self._log.warning("feed_frame_oversized", max_frame_bytes=self._max_frame_bytes)
                continue
            frame = message.encode() if isinstance(message, str) else message
            self._frames += 1
            self._bytes += len(frame)
            try:
                await self._pool.publish(frame)
            except BrokenWorkerError as exc:
                self._note_undelivered(exc)

    def _note_undelivered(self, exc: BrokenWorkerError) -> None:
        """A frame for a worker the pool gave up on: its books are unavailable already (`get_book` raises,
        the status shows the slot failed), and the other workers' books must go on updating."""
        self._undelivered += 1
        if exc.worker_id not in self._failed_workers:
            self._failed_workers.add(exc.worker_id)
            self._log.error("feed_frames_undelivered", worker_id=exc.worker_id, error=str(exc))

    async def _keep_alive(self, socket: WebSocket) -> None:
        while True:
            await anyio.sleep(self._ping_interval)
            await socket.send_text("PING")

    async def _watch_idle(self) -> None:
        """Fail a connection that has gone silent. A peer that vanished without closing (a half-open TCP
        connection) would otherwise look healthy for ever: the PINGs still leave, nothing comes back."""
        while True:
            silent = time.monotonic() - self._heard_at
            if silent >= self._idle_timeout:
                raise ConnectionClosed(
                    f"nothing received for {silent:.1f} s (idle_timeout={self._idle_timeout:g} s), not even a "
                    "PONG: the connection is presumed dead"
                )
            await anyio.sleep(self._idle_timeout - silent)

    async def _send_operation(self, operation: str, asset_ids: list[str]) -> None:
        if asset_ids and self._socket is not None:
            message = {"assets_ids": asset_ids, "operation": operation}
            with contextlib.suppress(ConnectionClosed):  # the reconnect subscribes to the current set anyway
                await self._socket.send_text(msgspec.json.encode(message).decode())
