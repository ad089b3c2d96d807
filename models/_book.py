"""Order-book state: exact decimal levels in compact sorted sides, and a per-worker store of books.

Why doubles: every decimal of at most 15 significant digits (C's ``DBL_DIG``) has a double of its own, and
the shortest text that reads back as that double (``repr``) is that decimal again. So a level kept as a
double *is* the exact decimal: "0.5" and "0.50" are one level by construction, and order and equality are
the decimals' own. A value with more significant digits would be rounded, so it is rejected with
`MessageError` instead. That covers every value the exchange sends (prices have at most 4 decimals, sizes
at most 6), and the parsing runs in C: ``float()`` for one value, msgspec for a snapshot's sizes at once.

Why this layout: a level held as two Python objects in a dict costs about 110 bytes. Here a side is a list
of prices, whose float objects are the price cache's own and so shared by every book of the worker (a
0.01 grid has 99 prices), and an ``array('d')`` of sizes: 16 bytes a level. The list makes ``bisect``
compare floats without creating any; with about a hundred levels a side, ``bisect`` plus a short
``memmove`` beats any tree or dict. Both sides are price-ascending; the best bid is the last bid and the
best ask the first ask.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from operator import lt
from typing import cast

import msgspec

from ._hash import HashCheck, check_hash
from ._messages import (
    BestBidAsk,
    BookEvent,
    Event,
    LastTradePrice,
    Level,
    MarketResolved,
    MessageError,
    PriceChange,
    PriceChangeEntry,
    RejectedEvent,
    Side,
    TickSizeChange,
    UnknownEvent,
)
from ._status import BookChecks, BookView, Resolution, Trade

__all__ = ["BookState", "BookStore", "OrderBook", "format_decimal", "parse_decimal"]

# Significant digits a double holds exactly (DBL_DIG). A text no longer than this cannot have more, which
# is the whole exactness check on the fast path; longer texts ("1.500000000000000") are counted digit by
# digit, and texts longer than _MAX_TEXT are refused unread (a 5,000-digit "size" costs nothing).
_MAX_DIGITS = 15
_MAX_TEXT = 64
_DECIMAL_CHARS = "0123456789."

# Parsed prices, shared by all books of a worker. Prices repeat endlessly (at most a few thousand
# distinct strings on a 0.001 grid), so a hit saves a parse and the range check, and every book's levels
# hold the same float objects. Bounded so a feed of ever-new values cannot grow it; the whole cache is
# dropped when it fills (about 130 bytes per entry). Sizes are not cached: they rarely repeat.
_PRICE_CACHE_SIZE = 16_384
_price_cache: dict[str, float] = {}

# operator.lt, not float.__lt__: a C function map calls directly, twice as fast as the slot wrapper.
_less: Callable[[float, float], bool] = lt
# A snapshot side's sizes, joined with commas and bracketed, are a JSON array of numbers: one C call parses
# them all. JSON numbers are a subset of our decimals (no ".48", "007" or "1."); those take the slow way.
_numbers = msgspec.json.Decoder(list[float])
_MARKS = bytes(ord("x") if chr(i) in _DECIMAL_CHARS else ord(",") if chr(i) == "," else ord("!") for i in range(256))
_LONG_TEXT = b"x" * (_MAX_DIGITS + 1)


def parse_decimal(text: str) -> float:
    """Parse a non-negative decimal string ("0.514", ".48", "10500100") into the double that is exactly it.

    Raises:
        MessageError: ``text`` is not a plain non-negative decimal (digits and at most one point), or it
            has more than 15 significant digits, which a double cannot hold exactly.
    """
    # str.strip removes allowed characters from both ends and stops at the first other one, so anything
    # left over is a character that is not a digit or a point ("-", "e", "_", " ", "inf", "٣").
    if len(text) <= _MAX_DIGITS and not text.strip(_DECIMAL_CHARS):
        try:
            return float(text)
        except ValueError:
            pass  # "", ".", "1.2.3": said precisely below
    return _parse_decimal_checked(text)


def _parse_decimal_checked(text: str) -> float:
    """`parse_decimal` for the texts its one-line check does not settle: long ones and malformed ones."""
    if len(text) > _MAX_TEXT:
        raise MessageError(f"{text[:20]!r}... ({len(text)} characters) is too long for a decimal")
    whole, _, fraction = text.partition(".")
    if not (whole + fraction).isdigit() or not text.isascii():
        raise MessageError(f"{text!r} is not a non-negative decimal (digits and at most one point)")
    significant = len((whole + fraction.rstrip("0")).strip("0"))
    if significant > _MAX_DIGITS:
        raise MessageError(
            f"{text!r} has {significant} significant digits; a book level holds at most {_MAX_DIGITS} exactly"
        )
    return float(text)


def _parse_price(text: str) -> float:
    price = _price_cache.get(text)
    if price is not None:
        return price
    price = parse_decimal(text)
    if not 0 < price < 1:
        raise MessageError(f"price {text!r} is outside (0, 1); Polymarket prices are probabilities")
    if len(_price_cache) >= _PRICE_CACHE_SIZE:
        _price_cache.clear()
    _price_cache[text] = price
    return price


def _quote_price(text: str | None, empty: float) -> float:
    """A best bid or ask as the service quotes it, as a number; ``empty`` (0 for bids, 1 for asks) for a side
    with no order: no text, or a price outside (0, 1) such as the "0" and "1" the service sends then.

    Raises:
        MessageError: ``text`` is not a decimal.
    """
    if not text:
        return empty
    price = _price_cache.get(text)
    if price is None:
        price = parse_decimal(text)
        if not 0 < price < 1:
            return empty
    return price


def _parse_sizes(texts: list[str]) -> list[float]:
    """`parse_decimal` of every text, in one msgspec call when the same checks pass for all of them."""
    joined = ",".join(texts)
    # `parse_decimal`'s two checks for all texts at once, in C: one table lookup a byte marks digits and
    # points "x" and anything else (non-ASCII bytes too) "!", and a text longer than 15 is a run of 16 marks.
    marked = joined.encode().translate(_MARKS)
    if b"!" not in marked and _LONG_TEXT not in marked:
        try:
            sizes = _numbers.decode(f"[{joined}]")
        except msgspec.DecodeError:
            pass  # a decimal JSON does not allow, or a malformed one: each is parsed (or refused) below
        else:
            if len(sizes) == len(texts):  # else a text held a comma ("1,2"): refused below
                return sizes
    return list(map(parse_decimal, texts))


def format_decimal(value: float) -> str:
    """Format a level's number as the shortest exact decimal string ("0.5", "1858.79", "100", "0.00001")."""
    text = repr(value)
    if "e" in text:  # repr writes 1e-05 and 1e+16; the wire never does
        from decimal import Decimal  # rare: keep the import out of every worker's start

        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def _parse_side(levels: list[Level], descending: bool) -> tuple[list[float], array[float]]:
    """A snapshot side as (prices ascending, sizes), zero sizes dropped; of equal prices the last counts.

    A whole side at a time, in C: ``map`` over the texts and one msgspec call for the sizes. Only a side
    that is out of order, repeats a price or lists an empty level pays for a dict.
    """
    price_texts = [level.price for level in levels]  # a comprehension reads a Struct field faster than map
    cached = list(map(_price_cache.get, price_texts))
    prices = list(map(_parse_price, price_texts)) if None in cached else cast("list[float]", cached)
    sizes = _parse_sizes([level.size for level in levels])
    if descending:
        prices.reverse()
        sizes.reverse()
    if all(map(_less, prices, islice(prices, 1, None))) and 0.0 not in sizes:
        return prices, array("d", sizes)  # the exchange's order, every price once, no empty level
    if descending:  # back to wire order, so that of equal prices the last one sent counts
        prices.reverse()
        sizes.reverse()
    by_price = dict(zip(prices, sizes, strict=True))
    ordered = [price for price in sorted(by_price) if by_price[price]]
    return ordered, array("d", map(by_price.__getitem__, ordered))


class BookState(msgspec.Struct, array_like=True, gc=False):
    """One book exactly as a worker holds it, for handing it to another process: the sides are the raw
    doubles (``array('d')`` bytes), so nothing is formatted or parsed on the way."""

    asset_id: str
    market: str
    timestamp: int | None
    tick_size: str | None
    last_trade: Trade | None
    floor: int | None
    stale: bool
    min_order_size: str | None
    neg_risk: bool | None
    resolution: Resolution | None
    bid_prices: bytes
    bid_sizes: bytes
    ask_prices: bytes
    ask_sizes: bytes


def _doubles(data: bytes) -> array[float]:
    values = array("d")
    values.frombytes(data)
    return values


def _shared(prices: array[float], objects: dict[float, float]) -> list[float]:
    """``prices`` as a list of shared float objects (``objects``: value -> the one object for it), so
    installed books share their prices as parsed ones do."""
    return list(map(objects.setdefault, prices, prices))


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
        "min_order_size",
        "neg_risk",
        "resolution",
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
        # What a REST snapshot says of the market and the exchange's hash covers (`check_hash`).
        self.min_order_size: str | None = None
        self.neg_risk: bool | None = None
        self.resolution: Resolution | None = None  # set when the market settles: the book is closed
        self._bid_prices: list[float] = []
        self._bid_sizes = array("d")
        self._ask_prices: list[float] = []
        self._ask_sizes = array("d")

    def apply_snapshot(self, event: BookEvent) -> None:
        """Replace the whole book with ``event``'s levels; a level it does not list no longer exists."""
        bid_prices, bid_sizes = _parse_side(event.bids, descending=False)
        ask_prices, ask_sizes = _parse_side(event.asks, descending=True)
        self._bid_prices, self._bid_sizes = bid_prices, bid_sizes
        self._ask_prices, self._ask_sizes = ask_prices, ask_sizes
        if event.market:
            self.market = event.market
        if event.tick_size is not None:
            self.tick_size = event.tick_size
        if event.min_order_size is not None:
            self.min_order_size = event.min_order_size
        if event.neg_risk is not None:
            self.neg_risk = event.neg_risk
        if event.last_trade_price is not None and (
            self.last_trade is None or self.last_trade.price != event.last_trade_price
        ):
            self.last_trade = Trade(price=event.last_trade_price, timestamp=event.timestamp)
        self.timestamp = event.timestamp

    def apply_price_change(self, side: Side, price: str, size: str, timestamp: int | None = None) -> None:
        """Set the absolute size of one level; size zero removes it."""
        self.set_level(side, _parse_price(price), parse_decimal(size), timestamp)

    def set_level(self, side: Side, price: float, size: float, timestamp: int | None = None) -> None:
        """`apply_price_change` for values already parsed with `parse_decimal` (the worker's hot path)."""
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
        parse_decimal(event.size)
        self.last_trade = Trade(price=event.price, size=event.size, side=event.side, timestamp=event.timestamp)

    def apply_tick_size_change(self, event: TickSizeChange) -> None:
        """Record the new tick size. Levels stay: the exchange re-sends the levels that move."""
        _parse_price(event.new_tick_size)
        self.tick_size = event.new_tick_size

    def close(self, resolution: Resolution) -> None:
        """The market settled: its orders are gone, so the book keeps no level (its last trade and tick size
        stay, for the record). A `BookStore` applies nothing to a closed book."""
        self._bid_prices, self._bid_sizes = [], array("d")
        self._ask_prices, self._ask_sizes = [], array("d")
        self.resolution = resolution
        if resolution.timestamp is not None:
            self.timestamp = resolution.timestamp

    def quote_matches(self, best_bid: str | None, best_ask: str | None) -> bool:
        """Whether the book's best bid and ask are the ones quoted (a price outside (0, 1) is an empty side).

        Raises:
            MessageError: a quoted price is not a decimal.
        """
        return (self._bid_prices[-1] if self._bid_prices else 0.0) == _quote_price(best_bid, 0.0) and (
            self._ask_prices[0] if self._ask_prices else 1.0
        ) == _quote_price(best_ask, 1.0)

    def best_bid(self) -> tuple[str, str] | None:
        """The highest bid as ``(price, size)``, or ``None`` when there are no bids."""
        if not self._bid_prices:
            return None
        return format_decimal(self._bid_prices[-1]), format_decimal(self._bid_sizes[-1])

    def best_ask(self) -> tuple[str, str] | None:
        """The lowest ask as ``(price, size)``, or ``None`` when there are no asks."""
        if not self._ask_prices:
            return None
        return format_decimal(self._ask_prices[0]), format_decimal(self._ask_sizes[0])

    def bids(self, depth: int | None = None) -> list[tuple[str, str]]:
        """Bids best (highest) first as ``(price, size)`` decimal strings; ``depth`` limits the count."""
        count = len(self._bid_prices) if depth is None else min(depth, len(self._bid_prices))
        last = len(self._bid_prices) - 1
        prices, sizes = self._bid_prices, self._bid_sizes
        return [(format_decimal(prices[last - i]), format_decimal(sizes[last - i])) for i in range(count)]

    def asks(self, depth: int | None = None) -> list[tuple[str, str]]:
        """Asks best (lowest) first as ``(price, size)`` decimal strings; ``depth`` limits the count."""
        count = len(self._ask_prices) if depth is None else min(depth, len(self._ask_prices))
        return [(format_decimal(self._ask_prices[i]), format_decimal(self._ask_sizes[i])) for i in range(count)]

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
            resolution=self.resolution,
        )

    def snapshot(self) -> BookEvent:
        """The book as a `book` event (levels in the exchange's order, best last): what a handler's
        ``on_snapshot`` is shown when the book arrives by another way than a snapshot frame (a handoff)."""
        return BookEvent(
            asset_id=self.asset_id,
            market=self.market,
            bids=[Level(price, size) for price, size in reversed(self.bids())],
            asks=[Level(price, size) for price, size in reversed(self.asks())],
            timestamp=self.timestamp,
            tick_size=self.tick_size,
            last_trade_price=self.last_trade.price if self.last_trade is not None else None,
            min_order_size=self.min_order_size,
            neg_risk=self.neg_risk,
        )

    def __repr__(self) -> str:
        bids, asks = self.depth
        return f"OrderBook({self.asset_id[:12]}..., bids={bids}, asks={asks}, best={self.best_bid()}/{self.best_ask()})"


class BookStore:
    """The books of one worker, and the rule for applying an event to them.

    Args:
        owns: says whether an asset belongs to this store. A frame that spans several workers is sent to
            each of them whole; each applies only the assets it owns and passes over the rest silently.
        verify_hashes: recompute the exchange's ``hash`` of every `book` event and count the outcome in
            `checks` (see `check_hash`); nothing else depends on it.
        quote_resync_after: after this many ``best_bid_ask`` events in a row that disagree with a book, the
            book is marked stale and its asset added to `mismatched` (``None``: count them only).

    Events for an owned asset that has no book yet (no snapshot seen, e.g. the mirrored token of a binary
    market that nobody subscribed to) are skipped and counted in `skipped`: a delta without a base would
    build a wrong book. Events of a type it does not apply (`UnknownEvent`) are counted in `unknown`.

    A book whose market settled (`MarketResolved`) moves from `books` to `resolved`: closed, it takes no
    event any more (they count as skipped), and `readable` still finds it.
    """

    def __init__(
        self,
        owns: Callable[[str], bool] | None = None,
        *,
        verify_hashes: bool = False,
        quote_resync_after: int | None = None,
    ) -> None:
        self.books: dict[str, OrderBook] = {}
        self.resolved: dict[str, OrderBook] = {}
        self.readable: Mapping[str, OrderBook] = ChainMap(self.books, self.resolved)
        self.stale: set[str] = set()
        self.skipped = 0
        self.superseded = 0
        self.unknown = 0
        self.mismatched: set[str] = set()  # marked stale for their quotes since the owner last took them
        self.newly_resolved: list[OrderBook] = []  # closed since the owner last took them
        self.checks_changed = False  # `checks` moved since the owner last cleared this
        self._owns = owns
        self._verify_hashes = verify_hashes
        self._quote_resync_after = quote_resync_after
        self._quote_misses: dict[str, int] = {}  # asset -> best_bid_ask mismatches in a row
        self._quotes_checked = 0
        self._quote_mismatches = 0
        self._quote_resyncs = 0
        self._hashes: dict[HashCheck, int] = {"matched": 0, "mismatched": 0, "unverifiable": 0}

    def __len__(self) -> int:
        return len(self.books) + len(self.resolved)

    def apply(self, event: Event | UnknownEvent | RejectedEvent) -> list[OrderBook]:
        """Apply one event; return the books it changed, in the order it changed them.

        Raises:
            MessageError: a value in the event is invalid, or it is a `RejectedEvent`; no book was changed.
        """
        if type(event) is PriceChange:
            size = event.size
            if size is not None and event.changes is None and event.price_changes is None:
                asset_id, price, side = event.asset_id, event.price, event.side
                if asset_id is not None and price is not None and side is not None:
                    # The one-level shape, nine frames in ten: no entries list, nothing to roll back.
                    book = self.books.get(asset_id)
                    if book is None or (book.floor is not None and not self._current(book, event.timestamp)):
                        if book is None and self._mine(asset_id):
                            self.skipped += 1
                        return []
                    price_value = _price_cache.get(price) or _parse_price(price)
                    book.set_level(side, price_value, parse_decimal(size), event.timestamp)
                    return [book]
            return self._apply_price_changes(event)
        if type(event) is BookEvent:
            if not self._mine(event.asset_id):
                return []
            book = self.books.get(event.asset_id)
            if book is not None and not self._current(book, event.timestamp):
                return []
            replaced = self._replace(event, floor=None)
            return [] if replaced is None else [replaced]
        if type(event) is LastTradePrice or type(event) is TickSizeChange:
            book = self._book_for(event.asset_id, event.timestamp)
            if book is None:
                return []
            if isinstance(event, LastTradePrice):
                book.apply_trade(event)
            else:
                book.apply_tick_size_change(event)
            return [book]
        if type(event) is BestBidAsk:
            self._check_quote(event)
            return []
        if type(event) is MarketResolved:
            return self._resolve(event)
        if type(event) is RejectedEvent:
            raise event.error()
        self.unknown += 1
        return []

    def _apply_price_changes(self, event: PriceChange) -> list[OrderBook]:
        """A price change of several levels (or books): all of it, or none if any entry is invalid.

        Every entry is checked, held here or not: each worker an event spans then rejects it or applies its
        part alike, so no event is ever half-applied across workers.
        """
        updates: list[tuple[OrderBook, Side, float, float]] = []
        for asset_id, side, price, size in event.entries():
            price_value, size_value = _parse_price(price), parse_decimal(size)
            book = self._book_for(asset_id, event.timestamp)
            if book is not None:
                updates.append((book, side, price_value, size_value))
        changed: list[OrderBook] = []
        for book, side, price_value, size_value in updates:
            book.set_level(side, price_value, size_value, event.timestamp)
            if not changed or changed[-1] is not book:
                changed.append(book)
        if event.price_changes is not None:
            self._check_entry_quotes(event.price_changes, changed)
        return changed

    def _check_entry_quotes(self, entries: list[PriceChangeEntry], changed: list[OrderBook]) -> None:
        """A 2025 entry quotes its token's best bid and ask after it: each changed book is checked against
        the last entry for it, now that the whole event is in (an earlier one quotes a state it moved past).

        A quote that is not a number cannot agree with the book, so it counts as a mismatch; it does not
        reject the event, whose levels are good, and it is not parsed unless a book here is checked by it.
        """
        # `changed` lists a book again only when another came between, so it has repeats only from three on.
        for book in changed if len(changed) < 3 else dict.fromkeys(changed):
            asset_id = book.asset_id
            for entry in reversed(entries):
                if entry.asset_id == asset_id:
                    if entry.best_bid is not None and entry.best_ask is not None and asset_id not in self.stale:
                        try:
                            matches = book.quote_matches(entry.best_bid, entry.best_ask)
                        except MessageError:
                            matches = False
                        self._count_quote(asset_id, matches)
                    break

    def _check_quote(self, event: BestBidAsk) -> None:
        """Compare a `best_bid_ask` with its book (a stale book is known to be behind: not checked)."""
        book = self._book_for(event.asset_id, event.timestamp)
        if book is not None and event.asset_id not in self.stale:
            # raises for a bad price: the event is rejected, not counted here
            self._count_quote(event.asset_id, book.quote_matches(event.best_bid, event.best_ask))

    def _count_quote(self, asset_id: str, matches: bool) -> None:
        """Count a quote check; resync a book that disagrees too often.

        One mismatch may be a `best_bid_ask` that overtook its `price_change`, so only ``quote_resync_after``
        in a row count as a wrong book.
        """
        self._quotes_checked += 1
        self.checks_changed = True
        if matches:
            self._quote_misses.pop(asset_id, None)
            return
        self._quote_mismatches += 1
        misses = self._quote_misses[asset_id] = self._quote_misses.get(asset_id, 0) + 1
        if self._quote_resync_after is not None and misses >= self._quote_resync_after:
            del self._quote_misses[asset_id]
            self._quote_resyncs += 1
            self.stale.add(asset_id)
            self.mismatched.add(asset_id)

    def _resolve(self, event: MarketResolved) -> list[OrderBook]:
        """Close the books of a settled market; an asset waiting for its book (stale, none held) gets an
        empty closed one, since no `book` will ever come for it."""
        resolution = Resolution(
            winning_asset_id=event.winning_asset_id, winning_outcome=event.winning_outcome, timestamp=event.timestamp
        )
        closed: list[OrderBook] = []
        for asset_id in event.assets_ids:
            if asset_id in self.resolved:
                continue
            book = self.books.pop(asset_id, None)
            if book is None:
                if asset_id not in self.stale:
                    continue  # not followed here
                book = OrderBook(asset_id, event.market)
            book.close(resolution)
            self.stale.discard(asset_id)
            self._quote_misses.pop(asset_id, None)
            self.resolved[asset_id] = book
            self.newly_resolved.append(book)
            closed.append(book)
        return closed

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

    def _replace(self, event: BookEvent, floor: int | None) -> OrderBook | None:
        """Install ``event`` as the book of its asset (``None``: its market has settled, the book is closed)."""
        if event.asset_id in self.resolved:
            self.skipped += 1
            return None
        book = self.books.get(event.asset_id)
        if book is None:
            book = OrderBook(event.asset_id, event.market)
            book.apply_snapshot(event)  # validate before the book is visible
            self.books[event.asset_id] = book
        else:
            book.apply_snapshot(event)
        if self._verify_hashes:
            self._check_hash(event, book)
        book.floor = floor
        self.stale.discard(event.asset_id)
        self._quote_misses.pop(event.asset_id, None)
        return book

    def _check_hash(self, event: BookEvent, book: OrderBook) -> None:
        """Count whether ``event`` (just applied to ``book``) reproduces its hash, with what the book knows of
        its market: the event's own fields, else what earlier books and trades taught it."""
        outcome = check_hash(
            event,
            min_order_size=book.min_order_size,
            tick_size=book.tick_size,
            neg_risk=book.neg_risk,
            last_trade_price=book.last_trade.price if book.last_trade is not None else None,
        )
        if outcome is not None:
            self._hashes[outcome] += 1
            self.checks_changed = True

    def checks(self) -> BookChecks:
        """What this store checked its books against so far."""
        return BookChecks(
            best_bid_ask_checked=self._quotes_checked,
            best_bid_ask_mismatches=self._quote_mismatches,
            best_bid_ask_resyncs=self._quote_resyncs,
            hashes_matched=self._hashes["matched"],
            hash_mismatches=self._hashes["mismatched"],
            hashes_unverifiable=self._hashes["unverifiable"],
        )

    def rebuild(self, event: BookEvent) -> OrderBook | None:
        """Install a recovery snapshot: replace the book and ignore later-replayed updates older than it.

        The pool replays the frames a dead worker had not applied after the snapshot; those whose timestamp
        is earlier than the snapshot's are already inside it and are skipped (counted in `superseded`).
        Updates carry absolute sizes, so one replayed at the snapshot's own timestamp is harmless. Returns
        ``None`` for an asset whose market has settled: its closed book stays as it is.
        """
        return self._replace(event, floor=event.timestamp)

    def mark_stale(self, asset_ids: list[str]) -> None:
        """Note assets whose books may be wrong until a `book` event arrives for each (it clears the mark).

        A book the store holds keeps its levels and goes on taking updates, so a reader can still see the
        last known state, flagged; an asset with no book (one that could not be rebuilt) stays without one.
        A closed book (its market settled) is never stale: there is nothing more it could miss.
        """
        self.stale.update(asset_id for asset_id in asset_ids if asset_id not in self.resolved)

    def drop(self, asset_ids: list[str]) -> None:
        """Forget the books of ``asset_ids`` (no longer followed); a later `book` builds one anew."""
        for asset_id in asset_ids:
            self.books.pop(asset_id, None)
            self.resolved.pop(asset_id, None)
            self.stale.discard(asset_id)
            self._quote_misses.pop(asset_id, None)

    def dump(self, books: Iterable[OrderBook] | None = None) -> list[BookState]:
        """Every book (or ``books``), as `install` takes it in another process: a memory recycle hands the
        books over, and the pool keeps the closed books of settled markets, to restore them after a crash."""
        return [
            BookState(
                asset_id=book.asset_id,
                market=book.market,
                timestamp=book.timestamp,
                tick_size=book.tick_size,
                last_trade=book.last_trade,
                floor=book.floor,
                stale=book.asset_id in self.stale,
                min_order_size=book.min_order_size,
                neg_risk=book.neg_risk,
                resolution=book.resolution,
                bid_prices=array("d", book._bid_prices).tobytes(),
                bid_sizes=book._bid_sizes.tobytes(),
                ask_prices=array("d", book._ask_prices).tobytes(),
                ask_sizes=book._ask_sizes.tobytes(),
            )
            for book in (self.readable.values() if books is None else books)
        ]

    def install(self, states: list[BookState]) -> list[OrderBook]:
        """Replace these books with ``states`` (from `dump`), exactly; return the installed books."""
        installed = []
        objects = {value: value for value in _price_cache.values()}
        for state in states:
            book = OrderBook(state.asset_id, state.market)
            book.timestamp, book.tick_size, book.last_trade, book.floor = (
                state.timestamp,
                state.tick_size,
                state.last_trade,
                state.floor,
            )
            book.min_order_size, book.neg_risk, book.resolution = state.min_order_size, state.neg_risk, state.resolution
            book._bid_prices, book._bid_sizes = _shared(_doubles(state.bid_prices), objects), _doubles(state.bid_sizes)
            book._ask_prices, book._ask_sizes = _shared(_doubles(state.ask_prices), objects), _doubles(state.ask_sizes)
            if book.resolution is not None:
                self.books.pop(state.asset_id, None)
                self.resolved[state.asset_id] = book
            else:
                self.resolved.pop(state.asset_id, None)
                self.books[state.asset_id] = book
            if state.stale:
                self.stale.add(state.asset_id)
            else:
                self.stale.discard(state.asset_id)
            installed.append(book)
        return installed

    def memory_usage(self) -> int:
        """Sum of `OrderBook.memory_usage` over the store."""
        return sum(book.memory_usage() for book in self.readable.values())
