"""Order-book state: exact decimal levels in compact fixed-point arrays, and a per-worker store of books.

Why fixed point in ``array('q')``: a level held as two Python objects in a dict costs about 110 bytes; two
machine integers in sorted arrays cost 16. Prices and sizes arrive as decimal strings, so each is parsed
once into an integer count of 1e-8 units, which is exact for every value the exchange can send (prices
have at most 4 decimals, sizes at most 6) and makes "0.5" and "0.50" the same level by construction.
A value with more than 8 decimals or beyond the int64 range is rejected with `MessageError`, never rounded.

Both sides are kept price-ascending; the best bid is the last bid and the best ask the first ask. With
about a hundred levels per side, ``bisect`` plus a short ``memmove`` beats any tree or dict.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable

from ._messages import (
    BookEvent,
    Event,
    LastTradePrice,
    Level,
    MessageError,
    PriceChange,
    Side,
    TickSizeChange,
    UnknownEvent,
)
from ._status import BookView, Trade

__all__ = ["BookStore", "OrderBook", "format_units", "parse_units"]

_DECIMALS = 8
_SCALE = 10**_DECIMALS
_MAX_UNITS = 2**63 - 1
_POW = [10 ** (_DECIMALS - n) for n in range(_DECIMALS + 1)]

# Parsed prices, shared by all books of a worker. Prices repeat endlessly (at most a few thousand
# distinct strings on a 0.001 grid), so a hit saves most of a parse. Bounded so a feed of ever-new values
# cannot grow it; the whole cache is dropped when it fills (about 130 bytes per entry). Sizes are not
# cached: they rarely repeat, and misses would only evict prices.
_PRICE_CACHE_SIZE = 16_384
_price_cache: dict[str, int] = {}


def parse_units(text: str) -> int:
    """Parse a non-negative decimal string ("0.514", ".48", "10500100") into an exact count of 1e-8.

    Raises:
        MessageError: ``text`` is not a plain non-negative decimal, has more than 8 significant decimals,
            or is too large for a 64-bit level.
    """
    whole, _, frac = text.partition(".")
    if len(frac) > _DECIMALS:
        frac = frac.rstrip("0")  # "1.500000000000" is exact; only significant decimals count
    digits = whole + frac
    if not digits.isdigit() or not digits.isascii() or len(frac) > _DECIMALS:
        raise MessageError(f"{text!r} is not a non-negative decimal with at most {_DECIMALS} decimals")
    units: int = int(digits) * _POW[len(frac)]
    if units > _MAX_UNITS:
        raise MessageError(f"{text!r} is too large for a book level (at most {_MAX_UNITS // _SCALE})")
    return units


def _parse_price(text: str) -> int:
    units = _price_cache.get(text)
    if units is not None:
        return units
    units = parse_units(text)
    if not 0 < units < _SCALE:
        raise MessageError(f"price {text!r} is outside (0, 1); Polymarket prices are probabilities")
    if len(_price_cache) >= _PRICE_CACHE_SIZE:
        _price_cache.clear()
    _price_cache[text] = units
    return units


def format_units(units: int) -> str:
    """Format a count of 1e-8 as the shortest exact decimal string ("0.5", "1858.79", "100")."""
    whole, frac = divmod(units, _SCALE)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{_DECIMALS}d}".rstrip("0")


class OrderBook:
    """The live book of one token: exact levels, last trade and tick size.

    Not thread-safe; a book belongs to the one worker that owns its asset. The ``apply_*`` methods check
    every value before changing anything, so a rejected message leaves the book as it was.
    """

    __slots__ = (
        "_ask_prices",
        "_ask_sizes",
        "_bid_prices",
        "_bid_sizes",
        "asset_id",
        "floor",
        "last_trade",
        "market",
        "tick_size",
        "timestamp",
    )

    def __init__(self, asset_id: str, market: str = "") -> None:
        self.asset_id = asset_id
        self.market = market
        self.timestamp: int | None = None
        self.tick_size: str | None = None
        self.last_trade: Trade | None = None
        self.floor: int | None = None  # updates older than a recovery snapshot are already inside it
        self._bid_prices = array("q")
        self._bid_sizes = array("q")
        self._ask_prices = array("q")
        self._ask_sizes = array("q")

    def apply_snapshot(self, event: BookEvent) -> None:
        """Replace the whole book with ``event``'s levels; a level it does not list no longer exists."""
        bids = _parse_levels(event.bids)
        asks = _parse_levels(event.asks)
        self._bid_prices = array("q", bids)
        self._bid_sizes = array("q", bids.values())
        self._ask_prices = array("q", asks)
        self._ask_sizes = array("q", asks.values())
        if event.market:
            self.market = event.market
        if event.tick_size is not None:
            self.tick_size = event.tick_size
        if event.last_trade_price is not None and (
            self.last_trade is None or self.last_trade.price != event.last_trade_price
        ):
            self.last_trade = Trade(price=event.last_trade_price, timestamp=event.timestamp)
        self.timestamp = event.timestamp

    def apply_price_change(self, side: Side, price: str, size: str, timestamp: int | None = None) -> None:
        """Set the absolute size of one level; size zero removes it."""
        self.set_level(side, _parse_price(price), parse_units(size), timestamp)

    def set_level(self, side: Side, price: int, size: int, timestamp: int | None = None) -> None:
        """`apply_price_change` for values already parsed with `parse_units` (the worker's hot path)."""
        if side == "BUY":
            prices, sizes = self._bid_prices, self._bid_sizes
        else:
            prices, sizes = self._ask_prices, self._ask_sizes
        index = bisect_left(prices, price)
        if index < len(prices) and prices[index] == price:
            if size:
                sizes[index] = size
            else:
                del prices[index]
                del sizes[index]
        elif size:
            prices.insert(index, price)
            sizes.insert(index, size)
        if timestamp is not None:
            self.timestamp = timestamp

    def apply_trade(self, event: LastTradePrice) -> None:
        """Record the last trade; the book's levels change only through the `price_change` that follows."""
        _parse_price(event.price)
        parse_units(event.size)
        self.last_trade = Trade(price=event.price, size=event.size, side=event.side, timestamp=event.timestamp)

    def apply_tick_size_change(self, event: TickSizeChange) -> None:
        """Record the new tick size. Levels stay: the exchange re-sends the levels that move."""
        _parse_price(event.new_tick_size)
        self.tick_size = event.new_tick_size

    def best_bid(self) -> tuple[str, str] | None:
        """The highest bid as ``(price, size)``, or ``None`` when there are no bids."""
        if not self._bid_prices:
            return None
        return format_units(self._bid_prices[-1]), format_units(self._bid_sizes[-1])

    def best_ask(self) -> tuple[str, str] | None:
        """The lowest ask as ``(price, size)``, or ``None`` when there are no asks."""
        if not self._ask_prices:
            return None
        return format_units(self._ask_prices[0]), format_units(self._ask_sizes[0])

    def bids(self, depth: int | None = None) -> list[tuple[str, str]]:
        """Bids best (highest) first as ``(price, size)`` decimal strings; ``depth`` limits the count."""
        count = len(self._bid_prices) if depth is None else min(depth, len(self._bid_prices))
        last = len(self._bid_prices) - 1
        return [
            (format_units(self._bid_prices[last - i]), format_units(self._bid_sizes[last - i])) for i in range(count)
        ]

    def asks(self, depth: int | None = None) -> list[tuple[str, str]]:
        """Asks best (lowest) first as ``(price, size)`` decimal strings; ``depth`` limits the count."""
        count = len(self._ask_prices) if depth is None else min(depth, len(self._ask_prices))
        return [(format_units(self._ask_prices[i]), format_units(self._ask_sizes[i])) for i in range(count)]

    @property
    def depth(self) -> tuple[int, int]:
        """Number of levels as ``(bids, asks)``."""
        return len(self._bid_prices), len(self._ask_prices)

    def memory_usage(self) -> int:
        """Bytes held by this book's own objects (a cheap estimate; shared strings are not counted)."""
        return (
            sys.getsizeof(self)
            + sys.getsizeof(self._bid_prices)
            + sys.getsizeof(self._bid_sizes)
            + sys.getsizeof(self._ask_prices)
            + sys.getsizeof(self._ask_sizes)
        )

    def view(self, *, stale: bool = False) -> BookView:
        """A self-contained snapshot of the book, safe to send to another process."""
        return BookView(
            asset_id=self.asset_id,
            market=self.market,
            bids=self.bids(),
            asks=self.asks(),
            timestamp=self.timestamp,
            tick_size=self.tick_size,
            last_trade=self.last_trade,
            stale=stale,
        )

    def __repr__(self) -> str:
        bids, asks = self.depth
        return f"OrderBook({self.asset_id[:12]}..., bids={bids}, asks={asks}, best={self.best_bid()}/{self.best_ask()})"


def _parse_levels(levels: list[Level]) -> dict[int, int]:
    """Parse snapshot levels into price -> size, ascending by price, dropping zero sizes."""
    parsed = {_parse_price(level.price): parse_units(level.size) for level in levels}
    return {price: parsed[price] for price in sorted(parsed) if parsed[price]}


class BookStore:
    """The books of one worker, and the rule for applying an event to them.

    Args:
        owns: says whether an asset belongs to this store. A frame that spans several workers is sent to
            each of them whole; each applies only the assets it owns and passes over the rest silently.

    Events for an owned asset that has no book yet (no snapshot seen, e.g. the mirrored token of a binary
    market that nobody subscribed to) are skipped and counted in `skipped`: a delta without a base would
    build a wrong book. Events of a type it does not apply (`UnknownEvent`) are counted in `unknown`.
    """

    def __init__(self, owns: Callable[[str], bool] | None = None) -> None:
        self.books: dict[str, OrderBook] = {}
        self.stale: set[str] = set()
        self.skipped = 0
        self.superseded = 0
        self.unknown = 0
        self._owns = owns

    def __len__(self) -> int:
        return len(self.books)

    def apply(self, event: Event | UnknownEvent) -> list[OrderBook]:
        """Apply one event; return the books it changed, in the order it changed them.

        Raises:
            MessageError: a value in the event is invalid; no book was changed.
        """
        match event:
            case PriceChange():
                return self._apply_price_change(event)
            case BookEvent():
                if not self._mine(event.asset_id):
                    return []
                book = self.books.get(event.asset_id)
                if book is not None and not self._current(book, event.timestamp):
                    return []
                return [self._replace(event, floor=None)]
            case LastTradePrice():
                book = self._book_for(event.asset_id, event.timestamp)
                if book is not None:
                    book.apply_trade(event)
                    return [book]
                return []
            case TickSizeChange():
                book = self._book_for(event.asset_id, event.timestamp)
                if book is not None:
                    book.apply_tick_size_change(event)
                    return [book]
                return []
            case _:
                self.unknown += 1
                return []

    def _apply_price_change(self, event: PriceChange) -> list[OrderBook]:
        asset_id, price, side, size = event.asset_id, event.price, event.side, event.size
        if (
            asset_id is not None
            and price is not None
            and side is not None
            and size is not None
            and event.changes is None
            and event.price_changes is None
        ):
            # The one-level shape, most of the traffic, inlined: no lists, and nothing to roll back.
            book = self.books.get(asset_id)
            if book is None or (book.floor is not None and not self._current(book, event.timestamp)):
                if book is None and self._mine(asset_id):
                    self.skipped += 1
                return []
            price_units = _price_cache.get(price) or _parse_price(price)  # a cache hit saves a call
            book.set_level(side, price_units, parse_units(size), event.timestamp)
            return [book]
        # Parse everything first, so that a bad entry rejects the message without a half-applied book.
        updates: list[tuple[OrderBook, Side, int, int]] = []
        for asset_id, side, price, size in event.entries():
            book = self._book_for(asset_id, event.timestamp)
            if book is not None:
                updates.append((book, side, _parse_price(price), parse_units(size)))
        changed: list[OrderBook] = []
        for book, side, price_units, size_units in updates:
            book.set_level(side, price_units, size_units, event.timestamp)
            if not changed or changed[-1] is not book:
                changed.append(book)
        return changed

    def _mine(self, asset_id: str) -> bool:
        return self._owns is None or self._owns(asset_id)

    def _book_for(self, asset_id: str, timestamp: int | None) -> OrderBook | None:
        """The book an update applies to, or ``None`` (not ours, no book yet, or older than its rebuild)."""
        book = self.books.get(asset_id)
        if book is None:
            if self._mine(asset_id):
                self.skipped += 1
            return None
        return book if book.floor is None or self._current(book, timestamp) else None

    def _current(self, book: OrderBook, timestamp: int | None) -> bool:
        floor = book.floor
        if floor is None or timestamp is None or timestamp >= floor:
            return True
        self.superseded += 1
        return False

    def _replace(self, event: BookEvent, floor: int | None) -> OrderBook:
        book = self.books.get(event.asset_id)
        if book is None:
            book = OrderBook(event.asset_id, event.market)
            book.apply_snapshot(event)  # validate before the book is visible
            self.books[event.asset_id] = book
        else:
            book.apply_snapshot(event)
        book.floor = floor
        self.stale.discard(event.asset_id)
        return book

    def rebuild(self, event: BookEvent) -> OrderBook:
        """Install a recovery snapshot: replace the book and ignore later-replayed updates older than it.

        The pool replays the frames a dead worker had not applied after the snapshot; those whose timestamp
        is earlier than the snapshot's are already inside it and are skipped (counted in `superseded`).
        Updates carry absolute sizes, so one replayed at the snapshot's own timestamp is harmless.
        """
        return self._replace(event, floor=event.timestamp)

    def mark_stale(self, asset_ids: list[str]) -> None:
        """Note assets whose books may be wrong until a `book` event arrives for each (it clears the mark).

        A book the store holds keeps its levels and goes on taking updates, so a reader can still see the
        last known state, flagged; an asset with no book (one that could not be rebuilt) stays without one.
        """
        self.stale.update(asset_ids)

    def memory_usage(self) -> int:
        """Sum of `OrderBook.memory_usage` over the store."""
        return sum(book.memory_usage() for book in self.books.values())
