"""The handler table: which of the user's callbacks runs for which event, and how its failures are counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pool._wire._tally import Tally
from pool.models import BookEvent, LastTradePrice, MarketResolved, OrderBook, PriceChange, TickSizeChange

__all__ = ["HandlerTable"]

# Handler callbacks by event type; a handler may define any subset of them.
_CALLBACKS: dict[type, str] = {
    BookEvent: "on_snapshot",
    PriceChange: "on_price_change",
    LastTradePrice: "on_trade",
    TickSizeChange: "on_tick_size_change",
    MarketResolved: "on_market_resolved",  # once per book it closed; the book has its `resolution` set
}


class HandlerTable:
    """The callbacks one handler defines, looked up once, called as ``callback(book, event)``.

    A callback that raises is the user's bug, not the book's: it is counted in ``errors`` and tallied as
    ``handler_failed``, and the book keeps the update.
    """

    def __init__(self, handler: Any, tally: Tally) -> None:
        self._tally = tally
        self.errors = 0
        self.callbacks: dict[type, Callable[[OrderBook, Any], Any]] = {}
        if handler is not None:
            for event_type, name in _CALLBACKS.items():
                method = getattr(handler, name, None)
                if callable(method):
                    self.callbacks[event_type] = method

    def call(self, event: Any, books: list[OrderBook]) -> None:
        """Run the callback for ``event``'s type (if any) on each of ``books``."""
        callback = self.callbacks.get(type(event))
        if callback is None:
            return
        for book in books:
            try:
                callback(book, event)
            except Exception as exc:  # the user's code: count it, tally it, keep the book update
                self.errors += 1
                self._tally.note(
                    "handler_failed", "warning", callback=callback.__name__, asset_id=book.asset_id, error=repr(exc)
                )
