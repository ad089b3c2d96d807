"""Status and statistics types: what a worker reports, what the pool tells its users.

All are frozen msgspec Structs, so ``msgspec.to_builtins(pool.get_status())`` gives plain JSON-ready data
and a status can cross a process boundary in one encode.
"""

import enum
from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "BookChecks",
    "BookView",
    "ExitReason",
    "MemoryStatus",
    "PoolEvent",
    "PoolEventKind",
    "PoolState",
    "PoolStatus",
    "RecycleCause",
    "Resolution",
    "Trade",
    "WorkerState",
    "WorkerStats",
    "WorkerStatus",
]


class PoolState(enum.StrEnum):
    """Where the pool is in its life."""

    CREATED = "created"  # constructed; no process started yet
    STARTING = "starting"  # workers are being spawned and handshaken
    RUNNING = "running"  # every worker is running
    DEGRADED = "degraded"  # running, but at least one worker is not
    STOPPING = "stopping"  # shutdown in progress
    STOPPED = "stopped"  # every worker has exited and been reaped; terminal


class WorkerState(enum.StrEnum):
    """Where one worker slot is in its life."""

    STARTING = "starting"  # spawned; its ready handshake has not arrived yet
    RUNNING = "running"  # handshake done, applying messages
    RECOVERING = "recovering"  # being replaced; its books are being rebuilt
    STOPPING = "stopping"  # asked to stop, draining
    STOPPED = "stopped"  # exited on request
    FAILED = "failed"  # exited without being asked (or could not be restarted)


class ExitReason(enum.StrEnum):
    """Why a worker process ended. Only ``crash``, ``killed`` and ``hang`` spend the restart budget."""

    CRASH = "crash"  # it exited by itself: a non-zero exit code or a signal other than our SIGKILL
    KILLED = "killed"  # SIGKILL that the pool did not send: perhaps the kernel's out-of-memory killer
    HANG = "hang"  # silent for heartbeat_timeout; the pool killed it
    MEMORY = "memory"  # recycled by the memory monitor
    OPERATOR = "operator"  # restarted on request (restart_worker)
    SHUTDOWN = "shutdown"  # stopped with the pool


# Why a worker was replaced for memory, as `WorkerStatus.recycles_by_cause` counts it: ``handoff``, its
# books handed over (the normal recycle); ``rebuild``, a handoff the old process never answered (it died
# first), so the replacement rebuilt from snapshots; ``restart``, killed and rebuilt under
# ``memory_policy="restart"``; ``pressure``, a recycle turned into a restart by system memory pressure.
RecycleCause: TypeAlias = Literal["handoff", "rebuild", "restart", "pressure"]


class PoolEventKind(enum.StrEnum):
    """What a `PoolEvent` reports."""

    WORKER_STARTED = "worker_started"
    WORKER_EXITED = "worker_exited"
    WORKER_HUNG = "worker_hung"
    WORKER_RESTARTED = "worker_restarted"
    WORKER_FAILED = "worker_failed"
    WORKER_RECOVERED = "worker_recovered"
    BOOK_STALE = "book_stale"
    BOOK_LIVE = "book_live"
    MEMORY_BREACH = "memory_breach"  # a worker stayed over its cap after giving memory back; detail: action
    FRAME_QUARANTINED = "frame_quarantined"  # a frame hung two workers: skipped; asset_ids: its books, now stale


class PoolEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A lifecycle event, as passed to the pool's listeners and logged under the same name.

    ``asset_ids`` is set for book events; ``reason`` and ``exit_code`` for exits; ``detail`` explains.
    """

    kind: PoolEventKind
    worker_id: int
    pid: int | None = None
    reason: ExitReason | None = None
    exit_code: int | None = None
    asset_ids: list[str] | None = None
    detail: str = ""


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """The last trade of a token. A `book` carries only the price, so size and side may be absent."""

    price: str
    size: str | None = None
    side: str | None = None
    timestamp: int | None = None


class Resolution(msgspec.Struct, frozen=True, kw_only=True):
    """How a token's market settled (a ``market_resolved`` event): the token that won, and its label."""

    winning_asset_id: str
    winning_outcome: str = ""
    timestamp: int | None = None


class BookView(msgspec.Struct, frozen=True, kw_only=True):
    """A copy of one book as `PersistentWorkerPool.get_book` returns it.

    ``bids`` and ``asks`` are best-first ``(price, size)`` pairs of normalised decimal strings.
    ``stale`` is true when the book may have missed updates and waits for a snapshot. ``resolution`` is set
    once the book's market has settled: the book is closed (no levels; nothing changes it any more).
    """

    asset_id: str
    market: str
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    timestamp: int | None
    tick_size: str | None
    last_trade: Trade | None
    stale: bool = False
    resolution: Resolution | None = None

    @classmethod
    def stale_placeholder(cls, asset_id: str) -> "BookView":
        """The view of a book that is being rebuilt: no levels, ``stale=True``. Never mistaken for live."""
        return cls(
            asset_id=asset_id, market="", bids=[], asks=[], timestamp=None, tick_size=None, last_trade=None, stale=True
        )

    @property
    def best_bid(self) -> tuple[str, str] | None:
        """The highest bid, or ``None``."""
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> tuple[str, str] | None:
        """The lowest ask, or ``None``."""
        return self.asks[0] if self.asks else None

    @property
    def resolved(self) -> bool:
        """True once the book's market has settled (see ``resolution``)."""
        return self.resolution is not None


class BookChecks(msgspec.Struct, frozen=True, kw_only=True):
    """What the workers checked their books against, and what they found (counters; add them with ``+``).

    ``best_bid_ask_checked`` counts quotes of a live book's best bid and ask compared with it (``best_bid_ask``
    events, and the last entry for each book of a 2025 ``price_change``), and ``best_bid_ask_mismatches``
    those whose best bid or ask differed from it (or was not a number); ``best_bid_ask_resyncs`` counts
    books marked stale and handed to ``on_resync`` after `PoolConfig.best_bid_ask_resync_after` mismatches in
    a row. With `PoolConfig.verify_book_hash`, each `book` event's ``hash`` is recomputed: ``hashes_matched``,
    ``hash_mismatches`` (everything the exchange hashes was known, and it differed), ``hashes_unverifiable``
    (it did not match and the book lacked a field the exchange now hashes; see `models` ``_hash``).
    """

    best_bid_ask_checked: int = 0
    best_bid_ask_mismatches: int = 0
    best_bid_ask_resyncs: int = 0
    hashes_matched: int = 0
    hash_mismatches: int = 0
    hashes_unverifiable: int = 0

    def __add__(self, other: "BookChecks") -> "BookChecks":
        return BookChecks(**{name: getattr(self, name) + getattr(other, name) for name in self.__struct_fields__})


# Upper bounds (seconds) of the buckets of `WorkerStats.batch_seconds_buckets`; the last bucket is +Inf.
BATCH_SECONDS_BOUNDS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


def _empty_buckets() -> list[int]:
    return [0] * (len(BATCH_SECONDS_BOUNDS) + 1)


class WorkerStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters a worker process reports with every acknowledgement and heartbeat.

    ``messages_processed`` counts frames taken off the channel (including rejected ones), ``updates_applied``
    the level changes, trades and tick changes applied, ``snapshots_received`` the `book` events applied.
    ``errors`` counts rejected frames and events, and ``rejections`` the same by reason (the keys are
    `models.Rejection` values); ``handler_errors`` counts exceptions raised by the user's handler,
    ``unknown_events`` well-formed events of types the pool does not apply, and ``skipped_updates`` events
    for owned assets with no book yet (or closed: resolved). ``resolved_books`` counts the books closed by a
    ``market_resolved`` (among ``orderbook_count``). ``processing_time_ms`` is the time spent decoding and applying
    batches, summed (wall time: it includes any time the process was not scheduled).
    ``batch_seconds_buckets`` counts batches by that time, per bucket of `BATCH_SECONDS_BOUNDS` (not
    cumulative; the last bucket is above the last bound). ``memory_usage_bytes`` is the worker's RSS;
    ``private_memory_bytes`` its USS, when the worker measures it itself (the Ray backend), else ``None``.
    """

    worker_id: int
    pid: int
    messages_processed: int = 0
    updates_applied: int = 0
    snapshots_received: int = 0
    processing_time_ms: float = 0.0
    last_message_ts: float | None = None
    orderbook_count: int = 0
    memory_usage_bytes: int = 0
    books_memory_bytes: int = 0
    errors: int = 0
    rejections: dict[str, int] = {}
    handler_errors: int = 0
    unknown_events: int = 0
    skipped_updates: int = 0
    stale_books: int = 0
    applied_seq: int = 0
    batch_seconds_buckets: list[int] = msgspec.field(default_factory=_empty_buckets)
    private_memory_bytes: int | None = None
    resolved_books: int = 0

    @property
    def avg_processing_time_us(self) -> float:
        """Mean time to apply one frame, in microseconds (0.0 before the first)."""
        if not self.messages_processed:
            return 0.0
        return self.processing_time_ms * 1000.0 / self.messages_processed


class WorkerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One worker slot as `PoolStatus.workers` shows it.

    Counters are the slot's, cumulative across its processes: ``errors`` (rejected frames and events,
    by reason in ``rejections``), ``handler_errors`` (exceptions raised by the user's handler) and
    ``frames_dropped`` (frames dropped from the slot's buffer while it was recovering, which no handler
    saw: the books they were for were fetched again or marked stale) and ``frames_quarantined`` (frames
    skipped for good because each hung two of the slot's processes in turn). ``messages`` is the current
    process's count of frames taken off the channel. ``responsive`` is true while the slot is ``running``
    and its process has reported within `PoolConfig.unresponsive_after` (two heartbeat intervals): false,
    the slot cannot serve reads now (a hung worker, before the health loop kills it). The task counts
    (``pending_tasks`` and ``running_tasks`` now; ``completed_tasks``, ``failed_tasks``, ``cancelled_tasks``
    ever) are the slot's, across restarts.

    ``standby_pid`` is the replacement a memory recycle has started, while it exists; ``peak_memory_bytes``
    the highest sample of any of the slot's processes (the figure the cap is held to); ``recycles`` the
    replacements made for memory and ``recycles_by_cause`` the same by `RecycleCause` (``restarts``
    counts every replacement, these included); ``last_recycle_seconds`` how long the last handoff took,
    from asking for the books to the replacement serving them.

    ``resolved_books`` counts the books closed because their market settled (among ``books``); ``checks``
    (cumulative across the slot's processes) what they were checked against (see `BookChecks`).
    """

    worker_id: int
    status: WorkerState
    responsive: bool = False
    pid: int | None
    books: int
    messages: int
    errors: int
    pending: int
    rejections: dict[str, int] = {}
    memory_bytes: int
    last_heartbeat_age: float | None
    restarts: int
    memory_cap_bytes: int | None = None
    memory_ratio: float | None = None
    stale_books: int = 0
    handler_errors: int = 0
    frames_dropped: int = 0
    frames_quarantined: int = 0
    pending_tasks: int = 0
    running_tasks: int = 0
    completed_tasks: int = 0
    failed_tasks: int = 0
    cancelled_tasks: int = 0
    exit_code: int | None = None
    last_exit_reason: ExitReason | None = None
    last_restart_at: float | None = None
    standby_pid: int | None = None
    peak_memory_bytes: int = 0
    recycles: int = 0
    recycles_by_cause: dict[str, int] = {}
    last_recycle_seconds: float | None = None
    resolved_books: int = 0
    checks: BookChecks = BookChecks()


class MemoryStatus(msgspec.Struct, frozen=True, kw_only=True):
    """System memory as last sampled, against the pool's ``memory_threshold`` (a fraction of total)."""

    usage_percent: float
    available_bytes: int
    total_bytes: int
    threshold: float
    pressure: bool


class FeedStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A market-data feed attached to the pool (e.g. `feeds.PolymarketFeed`), as `PoolStatus.feeds` shows it.

    ``frames`` and ``bytes`` count what the feed received and published; ``oversized`` the frames it
    skipped for their size; ``undelivered`` the frames the pool could not take because the worker that
    owns them has failed for good; ``last_frame_age`` is seconds since the last frame (``None`` before one).
    ``connected`` is true while every one of its ``connections`` is open (``connections_open`` of them).
    ``stalls`` counts connections replaced for sending no market data while they still answered ``PING``,
    ``resubscribes`` assets subscribed to again because their `book` did not come, ``rate_limited`` the
    connection attempts answered with HTTP 429, ``awaiting_books`` the assets whose `book` has not come
    since they were subscribed to; ``duplicates`` counts frames dropped because the connection that follows
    their assets delivers them too, and ``moved`` the assets moved to the connection of their market's
    other token; ``new_markets`` counts the ``new_market`` events seen (each market once). ``resolved``
    is the assets it followed until a ``market_resolved`` closed their books (not in ``subscribed``).
    """

    name: str
    connected: bool
    reconnects: int
    frames: int
    bytes: int
    oversized: int
    undelivered: int = 0
    subscribed: int
    last_frame_age: float | None
    connections: int = 1
    connections_open: int = 0
    stalls: int = 0
    resubscribes: int = 0
    rate_limited: int = 0
    awaiting_books: int = 0
    duplicates: int = 0
    moved: int = 0
    new_markets: int = 0
    resolved: int = 0


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The whole pool at a glance, built from state the parent already holds (no round trip).

    ``messages_published`` counts frames accepted by `publish`; ``messages_applied`` counts deliveries
    applied by workers (a frame whose assets span two workers is delivered, and counted, twice), and
    ``frames_dropped`` deliveries dropped from a recovering worker's buffer instead, and
    ``frames_quarantined`` deliveries skipped because they hung two workers (see `WorkerStatus`). The task
    counts are the workers' summed (a `submit_all` counts once per worker).
    ``frames_rejected`` counts malformed frames and events, whether the parent or a worker caught them
    (each once, over the pool's life, restarts included), and ``rejections`` the same by reason (the keys
    are `models.Rejection` values); ``frames_unroutable`` counts well-formed frames that name no asset
    (service text, ``new_market``). ``resolved_books`` and ``checks`` are the workers' summed.
    """

    pool_status: PoolState
    uptime_seconds: float
    worker_count: int
    alive_workers: int
    workers: dict[int, WorkerStatus]
    memory: MemoryStatus
    messages_published: int
    messages_applied: int
    messages_per_second: float
    frames_rejected: int
    frames_unroutable: int
    total_books: int
    restarts: int
    rejections: dict[str, int] = {}
    frames_dropped: int = 0
    frames_quarantined: int = 0
    pending_tasks: int = 0
    running_tasks: int = 0
    completed_tasks: int = 0
    failed_tasks: int = 0
    cancelled_tasks: int = 0
    resolved_books: int = 0
    checks: BookChecks = BookChecks()
    feeds: dict[str, FeedStatus] = msgspec.field(default_factory=dict)
