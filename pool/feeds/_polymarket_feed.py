"""`PolymarketFeed`: the CLOB market channel over as many WebSocket connections as its assets need.

The assets are shared out over connections of at most ``assets_per_connection`` each, in the order given
(`pool.feeds._polymarket_connection`): past about 500 assets on one connection the service stops sending
their book data without an error (nautilus_trader #2915). Each frame goes to the pool raw (the parent
decodes only its asset ids), so the feed's own work per frame is small.

Several connections can deliver the same frame: a ``price_change`` names both tokens of its market, and the
service sends it to every connection that follows either. Applied twice, out of order, it would leave a
book wrong. So a frame is published only by the connection that follows the assets it names; when those
are on two connections (the tokens of one market split), the connection that delivered it first takes the
other token over (unsubscribed there, subscribed here, its book marked stale until the fresh `book` the
subscription brings), and the copies other connections deliver are dropped (counted in ``duplicates``).
Listing both tokens of a market next to each other keeps them together from the start.

When a connection drops, stalls or goes silent it marks the pool's books of its assets stale
(`PersistentWorkerPool.mark_stale`) and reconnects; the service then sends a fresh `book` for every asset,
which makes each book live again.

A ``market_resolved`` (with ``market_events``) closes the books of the settled market in the pool; the
feed then stops following those assets (their connection unsubscribes, so no watchdog waits for data that
will never come) and keeps them as resolved until `unsubscribe` drops their closed books.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import msgspec

from pool import BrokenWorkerError
from pool.models import FeedStatus, MarketResolved, MessageError, NewMarket, decode_frame, decode_new_markets
from pool.models._frame_ids import FrameIds, frame_ids_decoder
from pool.models._logging import get_logger

from ._polymarket_connection import ConnectGate, Connection, Settings

__all__ = ["DEFAULT_WS_URL", "MAX_ASSETS_PER_CONNECTION", "PolymarketFeed"]

DEFAULT_WS_URL = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
# Above this many assets on one connection Polymarket stops sending their book data (an undocumented limit
# that nautilus_trader ran into and works around with more connections: its pull request #2915).
MAX_ASSETS_PER_CONNECTION = 500
# The default share of a connection, as nautilus_trader's: well below the limit, so that a connection can
# take over the other token of its markets (and `subscribe` fill it up) without nearing it.
DEFAULT_ASSETS_PER_CONNECTION = 200
# New markets remembered, so that the copies other connections bring are not decided on again.
_MARKETS_REMEMBERED = 10_000


class PolymarketFeed:
    """Feeds ``pool`` (an async `PersistentWorkerPool`, inside its ``async with``) from the market channel.

    Use ``async with PolymarketFeed(pool, ids) as feed:`` (it runs in the background until the block
    ends) or ``await feed.run()`` (until cancelled).

    Args:
        asset_ids: the tokens to follow, any number; `subscribe` and `unsubscribe` change them while running.
            List both tokens of a market next to each other, so that they share a connection.
        url: the market channel's endpoint (a local server in tests).
        assets_per_connection: the most assets a connection is given (at most 500, the service's limit).
        connect_interval: seconds between two connection attempts of the feed (a burst of new sockets is
            answered with HTTP 429); after a 429 every attempt waits out the back-off.
        ping_interval: seconds between keep-alive ``PING`` text frames.
        idle_timeout: seconds without any frame, not even the ``PONG`` a ``PING`` gets, after which a
            connection is presumed dead and replaced; longer than ``ping_interval``.
        stall_timeout: seconds without market data on a connection that still answers ``PING`` after which
            it is replaced (``None``: never, for a set of assets that may rightly be quiet that long).
        book_timeout: seconds after subscribing within which an asset's `book` must come; past them it is
            subscribed to again, the wait doubling up to ``max_backoff`` (``None``: no such check).
        max_frame_bytes: larger frames are counted and skipped.
        backoff, max_backoff: the first reconnect delay and its cap (doubling, with up to 50% jitter).
        open_timeout: seconds to connect and complete the handshake.
        market_events: subscribe with ``custom_feature_enabled``, so that the service also sends
            ``best_bid_ask`` (the workers check each against the book: `PoolConfig.best_bid_ask_resync_after`),
            ``new_market`` (see ``on_new_market``) and ``market_resolved`` (the market's books are closed and
            the feed follows them no more; see ``resolved`` in `stats`).
        on_new_market: with ``market_events``, called with each `pool.models.NewMarket` (once a market,
            whichever connection brings it); when it returns true, the feed subscribes to the market's
            tokens. An exception in it is logged and counts as false.
        name: its key in the pool's ``get_status().feeds``.
    """

    def __init__(
        self,
        pool: Any,
        asset_ids: Iterable[str],
        *,
        url: str = DEFAULT_WS_URL,
        assets_per_connection: int = DEFAULT_ASSETS_PER_CONNECTION,
        connect_interval: float = 0.5,
        ping_interval: float = 10.0,
        idle_timeout: float = 30.0,
        stall_timeout: float | None = 30.0,
        book_timeout: float | None = 10.0,
        max_frame_bytes: int = 4 * 1024 * 1024,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        open_timeout: float = 10.0,
        market_events: bool = False,
        on_new_market: Callable[[NewMarket], bool] | None = None,
        name: str = "polymarket",
    ) -> None:
        for setting, value in (
            ("ping_interval", ping_interval),
            ("max_frame_bytes", max_frame_bytes),
            ("max_backoff", max_backoff),
            ("open_timeout", open_timeout),
            ("assets_per_connection", assets_per_connection),
            ("stall_timeout", stall_timeout),
            ("book_timeout", book_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"PolymarketFeed {setting} must be positive, got {value!r}")
        for setting, value in (("backoff", backoff), ("connect_interval", connect_interval)):
            if value < 0:
                raise ValueError(f"PolymarketFeed {setting} must be >= 0, got {value!r}")
        if assets_per_connection > MAX_ASSETS_PER_CONNECTION:
            raise ValueError(
                f"PolymarketFeed assets_per_connection={assets_per_connection} is more than the "
                f"{MAX_ASSETS_PER_CONNECTION} assets Polymarket sends book data for on one connection"
            )
        if on_new_market is not None and not market_events:
            raise ValueError(
                "PolymarketFeed on_new_market needs market_events=True: the service sends new_market only to a "
                "subscription with custom_feature_enabled"
            )
        if idle_timeout <= ping_interval:
            raise ValueError(
                f"PolymarketFeed idle_timeout ({idle_timeout!r}) must be longer than ping_interval "
                f"({ping_interval!r}), or a quiet but healthy connection would be cut before its PONG arrives"
            )
        self._pool = pool
        self.name = name
        self.url = url
        self._per_connection = assets_per_connection
        self._settings = Settings(
            url=url,
            ping_interval=ping_interval,
            idle_timeout=idle_timeout,
            stall_timeout=stall_timeout,
            book_timeout=book_timeout,
            max_frame_bytes=max_frame_bytes,
            backoff=backoff,
            max_backoff=max_backoff,
            open_timeout=open_timeout,
            market_events=market_events,
        )
        self._on_new_market = on_new_market
        self._markets_seen: dict[str, None] = {}  # the latest new markets, so each is decided on once
        self._gate = ConnectGate(connect_interval)
        self._log = get_logger("pool.feeds.polymarket").bind(url=url)
        self._connections: list[Connection] = []
        self._retired: list[Connection] = []  # closed for want of assets; their counts stay in the totals
        self._owner: dict[str, Connection] = {}
        self._resolved: dict[str, None] = {}  # followed until their market settled; their closed books stay
        self._next_index = 0
        self._frames = 0
        self._bytes = 0
        self._undelivered = 0
        self._duplicates = 0
        self._moved = 0
        self._new_markets_seen = 0
        self._split_warned = False
        self._failed_workers: set[int] = set()
        self._last_frame: float | None = None
        self._running: anyio.abc.TaskGroup | None = None  # the task group of `run`, while it runs
        self._tasks: anyio.abc.TaskGroup | None = None  # the task group of ``async with``
        self._assign(list(dict.fromkeys(asset_ids)))

    @property
    def stats(self) -> FeedStatus:
        """The feed at a glance; also in the pool's `get_status().feeds[name]` while it runs."""
        connections = [*self._connections, *self._retired]
        open_now = sum(connection.socket is not None for connection in self._connections)
        return FeedStatus(
            name=self.name,
            connected=bool(self._connections) and open_now == len(self._connections),
            reconnects=sum(max(0, connection.opened - 1) for connection in connections),
            frames=self._frames,
            bytes=self._bytes,
            oversized=sum(connection.oversized for connection in connections),
            undelivered=self._undelivered,
            subscribed=len(self._owner),
            last_frame_age=None if self._last_frame is None else time.monotonic() - self._last_frame,
            connections=len(self._connections),
            connections_open=open_now,
            stalls=sum(connection.stalls for connection in connections),
            resubscribes=sum(connection.resubscribes for connection in connections),
            rate_limited=sum(connection.rate_limited for connection in connections),
            awaiting_books=sum(len(connection.awaiting) for connection in self._connections),
            duplicates=self._duplicates,
            moved=self._moved,
            new_markets=self._new_markets_seen,
            resolved=len(self._resolved),
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

    async def run(self) -> None:
        """Open every connection (spaced out), publish every frame, reconnect each as needed. Until cancelled."""
        detach = self._pool.attach_feed(self.name, lambda: self.stats)
        try:
            async with anyio.create_task_group() as tasks:
                self._running = tasks
                for connection in self._connections:
                    tasks.start_soon(connection.run)
        finally:
            self._running = None
            detach()

    async def subscribe(self, asset_ids: Iterable[str]) -> None:
        """Follow more assets: each goes to a connection with room (a new one if none has), which asks the
        service for it at once if open (its `book` comes first). An asset whose market has settled is not
        followed again: its book is closed."""
        new = [a for a in dict.fromkeys(asset_ids) if a not in self._owner and a not in self._resolved]
        for connection, assets in self._assign(new).items():
            await connection.subscribe(assets)

    async def unsubscribe(self, asset_ids: Iterable[str]) -> None:
        """Stop following assets, and drop their books from the pool (`PersistentWorkerPool.drop_books`):
        kept, they would only grow stale, and memory would grow as the set of markets changes
        (nautilus_trader #4237). A connection left with no asset is closed."""
        asset_ids = list(dict.fromkeys(asset_ids))
        gone = [asset_id for asset_id in asset_ids if asset_id in self._resolved]  # closed books, unfollowed already
        for asset_id in gone:
            del self._resolved[asset_id]
        gone += await self._release(asset_ids)
        if gone:
            await self._pool.drop_books(gone)

    async def _release(self, asset_ids: list[str]) -> list[str]:
        """Unsubscribe the followed ones of ``asset_ids`` on their connections (closing a connection left with
        no asset); return them."""
        released: list[str] = []
        for connection, assets in self._by_connection(asset_ids).items():
            for asset_id in assets:
                del self._owner[asset_id]
            released += assets
            await connection.unsubscribe(assets)
            if not connection.assets:
                self._retire(connection)
        return released

    async def resubscribe(self, asset_ids: Iterable[str]) -> None:
        """Ask the service again for assets already followed, so that it sends a fresh `book` for each.

        Made for the pool's ``on_resync``: books a replaced worker could not rebuild from a snapshot come
        back from the feed itself. A connection that is not open does nothing: its next subscription
        brings every `book` anyway.
        """
        groups = self._by_connection(asset_ids)
        self._log.info("feed_resubscribing", assets=sum(map(len, groups.values())))
        for connection, assets in groups.items():
            await connection.resubscribe(assets)

    def _assign(self, asset_ids: list[str]) -> dict[Connection, list[str]]:
        """Give each new asset to the last connection while it has room, else to a new one (started at
        once if the feed runs); returns what each connection was given."""
        given: dict[Connection, list[str]] = {}
        for asset_id in asset_ids:
            connection = self._connections[-1] if self._connections else None
            if connection is None or len(connection.assets) + len(given.get(connection, ())) >= self._per_connection:
                connection = Connection(
                    self._next_index, (), self._settings, self._gate, self._on_frame, self._on_stale, self._log
                )
                self._next_index += 1
                self._connections.append(connection)
                if self._running is not None:
                    self._running.start_soon(connection.run)
            given.setdefault(connection, []).append(asset_id)
            self._owner[asset_id] = connection
        for connection, assets in given.items():
            if connection.socket is None:
                connection.assets.update(dict.fromkeys(assets))  # its subscription, when it opens, names them
        return {connection: assets for connection, assets in given.items() if connection.socket is not None}

    def _by_connection(self, asset_ids: Iterable[str]) -> dict[Connection, list[str]]:
        groups: dict[Connection, list[str]] = {}
        for asset_id in dict.fromkeys(asset_ids):
            if (connection := self._owner.get(asset_id)) is not None:
                groups.setdefault(connection, []).append(asset_id)
        return groups

    def _retire(self, connection: Connection) -> None:
        """Close a connection with no asset left; its counters live on in the feed's totals."""
        self._connections.remove(connection)
        self._retired.append(connection)
        connection.close()

    async def _on_frame(self, connection: Connection, frame: bytes) -> None:
        self._frames += 1
        self._bytes += len(frame)
        self._last_frame = time.monotonic()
        if self._on_new_market is not None and b'"new_market"' in frame:
            await self._new_markets(frame)
        if b'"market_resolved"' in frame and await self._market_resolved(frame):
            return
        if len(self._connections) > 1 or connection.awaiting:
            try:
                ids = frame_ids_decoder.decode(frame)
            except msgspec.DecodeError:
                ids = None  # not market data as such: the pool counts what it is
            if ids is not None and not await self._sort(connection, ids if isinstance(ids, list) else [ids]):
                return
        await self._publish(frame)

    async def _sort(self, connection: Connection, events: list[FrameIds]) -> bool:
        """Whether ``connection`` is the one to publish a frame of ``events``; notes the books it brings,
        and takes over the assets it names that another connection follows (the tokens of a market)."""
        owner = self._owner
        mine = False
        others: list[str] = []
        for event in events:
            named = [event.asset_id] if event.asset_id is not None else []
            named += [entry.asset_id for entry in event.price_changes or ()]
            for asset_id in named:
                follower = owner.get(asset_id)
                if follower is connection:
                    mine = True
                    if event.is_book:
                        connection.book_arrived(asset_id)
                elif follower is not None:
                    others.append(asset_id)
        if not mine:
            if others:
                self._duplicates += 1  # the connection that follows them delivers it too
                return False
            return True  # names nothing followed (service text, a new market...): the pool counts it
        if others:
            await self._take_over(connection, list(dict.fromkeys(others)))
        return True

    async def _take_over(self, connection: Connection, asset_ids: list[str]) -> None:
        """Move ``asset_ids`` to ``connection``, which has just delivered a frame naming them beside its own
        assets: from now on one connection delivers their frames. Their books are stale until the `book`
        the subscription here brings."""
        if len(connection.assets) + len(asset_ids) > MAX_ASSETS_PER_CONNECTION:
            if not self._split_warned:
                self._split_warned = True
                self._log.warning(
                    "feed_market_split",
                    detail="the tokens of a market are on two connections and the one that delivered their frame "
                    f"is full ({len(connection.assets)} assets); list both tokens of a market next to each other",
                )
            return
        await self._pool.mark_stale(asset_ids)  # behind the frame just published: the fresh book follows
        for old, assets in self._by_connection(asset_ids).items():
            await old.unsubscribe(assets)
        for asset_id in asset_ids:
            self._owner[asset_id] = connection
        self._moved += len(asset_ids)
        await connection.subscribe(asset_ids)
        for emptied in [c for c in self._connections if not c.assets]:
            self._retire(emptied)

    async def _new_markets(self, frame: bytes) -> None:
        """Subscribe to the tokens of each new market the user's filter takes, once a market."""
        assert self._on_new_market is not None
        try:
            markets = decode_new_markets(frame)
        except MessageError:
            return  # not only new markets in it: the pool counts what it is
        for market in markets:
            if market.market in self._markets_seen:
                continue  # another connection brought it first
            self._markets_seen[market.market] = None
            if len(self._markets_seen) > _MARKETS_REMEMBERED:
                del self._markets_seen[next(iter(self._markets_seen))]
            self._new_markets_seen += 1
            try:
                wanted = bool(self._on_new_market(market))
            except Exception:
                self._log.exception("feed_new_market_filter_failed", market=market.market)
                wanted = False
            if wanted:
                self._log.info("feed_new_market_followed", market=market.market, assets=len(market.assets_ids))
                await self.subscribe(market.assets_ids)

    async def _market_resolved(self, frame: bytes) -> bool:
        """Publish a settlement of followed assets (their books close in the pool), then follow them no more;
        False if ``frame`` settles nothing after all (it then takes the common path).

        Each connection that follows a token of the market delivers it: the first publishes it, and the
        copies find nothing left to close (counted in ``duplicates``). One that names nothing this feed
        follows is not published: the service sends it to every subscription with custom features.
        """
        try:
            events = decode_frame(frame)
        except MessageError:
            events = []
        settled = [a for event in events if isinstance(event, MarketResolved) for a in event.assets_ids]
        if not settled:
            return False
        followed = [asset_id for asset_id in dict.fromkeys(settled) if asset_id in self._owner]
        if not followed:
            if any(asset_id in self._resolved for asset_id in settled):
                self._duplicates += 1  # another connection delivered it first
            return True
        await self._publish(frame)
        self._resolved.update(dict.fromkeys(await self._release(followed)))
        self._log.info("feed_market_resolved", assets=len(followed), first=followed[0])
        return True

    async def _publish(self, frame: bytes) -> None:
        try:
            await self._pool.publish(frame)
        except BrokenWorkerError as exc:
            self._note_undelivered(exc)

    async def _on_stale(self, connection: Connection, asset_ids: list[str]) -> None:
        stale = await self._pool.mark_stale(asset_ids)
        self._log.info("feed_books_stale", books=stale, connection=connection.index)

    def _note_undelivered(self, exc: BrokenWorkerError) -> None:
        """A frame for a worker the pool gave up on: its books are unavailable already (`get_book` raises,
        the status shows the slot failed), and the other workers' books must go on updating."""
        self._undelivered += 1
        if exc.worker_id not in self._failed_workers:
            self._failed_workers.add(exc.worker_id)
            self._log.error("feed_frames_undelivered", worker_id=exc.worker_id, error=str(exc))
