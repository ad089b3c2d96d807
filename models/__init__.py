"""The vocabulary of persistent-worker-pool: market events, order books, configuration and status.

Nothing here starts a process or imports the pool, so worker processes and tools can use it cheaply.
"""

import contextlib

from ._book import BookState, BookStore, OrderBook, format_decimal, parse_decimal
from ._config import PoolConfig
from ._messages import (
    BestBidAsk,
    BookEvent,
    Change,
    Event,
    LastTradePrice,
    Level,
    MarketResolved,
    MessageError,
    NewMarket,
    PriceChange,
    PriceChangeEntry,
    RejectedEvent,
    Rejection,
    Side,
    TickSizeChange,
    UnknownEvent,
    decode_frame,
    decode_new_markets,
    event_asset_ids,
)
from ._status import (
    BATCH_SECONDS_BOUNDS,
    BookChecks,
    BookView,
    ExitReason,
    FeedStatus,
    MemoryStatus,
    PoolEvent,
    PoolEventKind,
    PoolState,
    PoolStatus,
    RecycleCause,
    Resolution,
    Trade,
    WorkerState,
    WorkerStats,
    WorkerStatus,
)
from ._tasks import TaskPriority, TaskState, TaskStatus

__all__ = [
    "BATCH_SECONDS_BOUNDS",
    "BestBidAsk",
    "BookChecks",
    "BookEvent",
    "BookState",
    "BookStore",
    "BookView",
    "Change",
    "Event",
    "ExitReason",
    "FeedStatus",
    "LastTradePrice",
    "Level",
    "MarketResolved",
    "MemoryStatus",
    "MessageError",
    "NewMarket",
    "OrderBook",
    "PoolConfig",
    "PoolEvent",
    "PoolEventKind",
    "PoolState",
    "PoolStatus",
    "PriceChange",
    "PriceChangeEntry",
    "RecycleCause",
    "RejectedEvent",
    "Rejection",
    "Resolution",
    "Side",
    "TaskPriority",
    "TaskState",
    "TaskStatus",
    "TickSizeChange",
    "Trade",
    "UnknownEvent",
    "WorkerState",
    "WorkerStats",
    "WorkerStatus",
    "decode_frame",
    "decode_new_markets",
    "event_asset_ids",
    "format_decimal",
    "parse_decimal",
]

for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or callable(_value):
        # Type aliases (Event, Side) have no settable __module__; everything else shows as models.X.
        with contextlib.suppress(AttributeError, TypeError):
            _value.__module__ = __name__
del _name, _value
