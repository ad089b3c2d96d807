"""Polymarket market-channel events as msgspec Structs, and the one frame decoder.

The Structs mirror the recorded wire format (``tests/fixtures/polymarket/FORMAT.md``): they are strict
about the types of the fields they declare and ignore fields they do not, so a new server-side field never
breaks a consumer while a price sent as a number, say, is rejected.

Decoding is two-tier because almost every frame is well formed: one msgspec pass over a tagged union
handles the common case at full speed, and only a frame that fails it takes the slow path, which tells an
unknown event type (counted and skipped), an untagged book (REST responses and one recording carry no
``event_type``) and a malformed frame (``MessageError``) apart.

The Structs are ``gc=False``: an event holds strings and lists of Structs, never a cycle, so the garbage
collector need not track the hundreds of thousands a worker decodes per second.
"""

from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "BookEvent",
    "Change",
    "Event",
    "LastTradePrice",
    "Level",
    "MessageError",
    "PriceChange",
    "PriceChangeEntry",
    "Side",
    "TickSizeChange",
    "UnknownEvent",
    "decode_frame",
]

Side: TypeAlias = Literal["BUY", "SELL"]

# Plain-text frames the service sends beside JSON: keep-alive answers and a subscription notice.
# They carry no market data, so they decode to no events rather than to an error.
_SERVICE_TEXT_FRAMES = frozenset({b"PING", b"PONG", b"NO NEW ASSETS"})

# How much of a rejected frame an error message quotes: enough to recognise it, never a whole book.
_PREVIEW_BYTES = 120


class MessageError(ValueError):
    """A frame or event is malformed; the message says which field and why.

    Raised by `decode_frame` and by the order-book ``apply_*`` methods. Inside a pool it never escapes a
    worker: the frame is counted in ``WorkerStats.errors``, logged with this message, and skipped.
    """


class Level(msgspec.Struct, frozen=True, gc=False):
    """One price level of a `book` snapshot: the total size resting at ``price``."""

    price: str
    size: str


class BookEvent(msgspec.Struct, tag_field="event_type", tag="book", kw_only=True, gc=False):
    """A full snapshot of one token's book; it replaces everything held for ``asset_id``.

    ``bids`` arrive price-ascending and ``asks`` price-descending (best last), as the exchange sends them.
    ``timestamp`` is Unix epoch milliseconds (sent as a string or a number; normalised to ``int``).
    """

    asset_id: str
    market: str = ""
    bids: list[Level]
    asks: list[Level]
    hash: str = ""
    timestamp: int | None = None
    tick_size: str | None = None
    last_trade_price: str | None = None


class Change(msgspec.Struct, frozen=True, gc=False):
    """One level of a December-2024 style ``price_change``: the new absolute ``size`` at ``price``."""

    price: str
    side: Side
    size: str


class PriceChangeEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One entry of a 2025 ``price_changes`` array; unlike the older shapes it names its own token."""

    asset_id: str
    price: str
    side: Side
    size: str
    hash: str = ""
    best_bid: str | None = None
    best_ask: str | None = None


class PriceChange(msgspec.Struct, tag_field="event_type", tag="price_change", kw_only=True, gc=False):
    """Level updates in any of the three recorded shapes; each gives a level's new absolute size.

    * 2024-08: one level per message (``asset_id``, ``price``, ``side``, ``size``);
    * 2024-12: ``asset_id`` plus a ``changes`` array;
    * 2025-09 on: a ``price_changes`` array whose entries each name their ``asset_id``.

    `entries` flattens all three to ``(asset_id, side, price, size)`` tuples in wire order.
    """

    market: str = ""
    timestamp: int | None = None
    hash: str = ""
    asset_id: str | None = None
    price: str | None = None
    side: Side | None = None
    size: str | None = None
    changes: list[Change] | None = None
    price_changes: list[PriceChangeEntry] | None = None

    def entries(self) -> list[tuple[str, Side, str, str]]:
        """Return every level change as ``(asset_id, side, price, size)``, in the order to apply them.

        The shape is checked here, not while decoding: a check in ``__post_init__`` would be a Python call
        inside every decode, about a fifth of decoding a one-level change.

        Raises:
            MessageError: the event has none of the three shapes.
        """
        if self.price_changes is not None:
            return [(e.asset_id, e.side, e.price, e.size) for e in self.price_changes]
        asset_id = self.asset_id
        if asset_id is None:
            raise MessageError("price_change without `price_changes` needs an `asset_id`")
        if self.changes is not None:
            return [(asset_id, c.side, c.price, c.size) for c in self.changes]
        if self.price is None or self.side is None or self.size is None:
            raise MessageError("price_change has none of `price_changes`, `changes`, or `price`+`side`+`size`")
        return [(asset_id, self.side, self.price, self.size)]


class LastTradePrice(msgspec.Struct, tag_field="event_type", tag="last_trade_price", kw_only=True, gc=False):
    """A trade on ``asset_id``; ``side`` is the taker's. It does not change the book by itself."""

    asset_id: str
    market: str = ""
    price: str
    side: Side
    size: str
    fee_rate_bps: str = ""
    timestamp: int | None = None


class TickSizeChange(msgspec.Struct, tag_field="event_type", tag="tick_size_change", kw_only=True, gc=False):
    """The minimum price increment of ``asset_id`` changed from ``old_tick_size`` to ``new_tick_size``."""

    asset_id: str
    market: str = ""
    old_tick_size: str
    new_tick_size: str
    timestamp: int | None = None


class UnknownEvent(msgspec.Struct, frozen=True):
    """A well-formed event of a type this library does not apply (e.g. ``best_bid_ask``); counted, skipped."""

    event_type: str


Event: TypeAlias = BookEvent | PriceChange | LastTradePrice | TickSizeChange

_EVENT_TYPES: dict[str, type[Event]] = {
    "book": BookEvent,
    "price_change": PriceChange,
    "last_trade_price": LastTradePrice,
    "tick_size_change": TickSizeChange,
}

# strict=False lets msgspec turn the string timestamps into ints; every other declared field is a string,
# a literal or a list, and lax mode never turns a number into a string, so prices and sizes stay strict.
_fast_decoder = msgspec.json.Decoder(Event | list[Event], strict=False)
_any_decoder = msgspec.json.Decoder()


def decode_frame(frame: bytes | str) -> list[Event | UnknownEvent]:
    """Decode one WebSocket frame (a JSON event, a JSON array of events, or a service text frame).

    Returns the events in frame order; a service text frame (``PONG``, ``NO NEW ASSETS``) gives ``[]``.
    An event without ``event_type`` that has ``bids``/``asks`` is a book (REST shape).

    Raises:
        MessageError: the frame is not JSON, or an event in it is malformed; the message names the event
            and the field. The frame is rejected whole: nothing in it should be applied.
    """
    try:
        decoded = _fast_decoder.decode(frame)
    except msgspec.DecodeError:
        return _decode_slow(frame)
    return decoded if isinstance(decoded, list) else [decoded]


def _decode_slow(frame: bytes | str) -> list[Event | UnknownEvent]:
    data = frame.encode() if isinstance(frame, str) else frame
    if data.strip() in _SERVICE_TEXT_FRAMES:
        return []
    try:
        document = _any_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MessageError(f"frame is not valid JSON ({exc}): {_preview(data)}") from None
    items = document if isinstance(document, list) else [document]
    events: list[Event | UnknownEvent] = []
    for index, item in enumerate(items):
        where = f"event {index} of the frame" if isinstance(document, list) else "the frame"
        if not isinstance(item, dict):
            raise MessageError(f"{where} is a JSON {type(item).__name__}, not an object: {_preview(data)}")
        kind = item.get("event_type")
        if kind is None and ("bids" in item or "asks" in item):
            kind = "book"
        if not isinstance(kind, str):
            raise MessageError(f"{where} has no string `event_type` and is not a book: {_preview(data)}")
        cls = _EVENT_TYPES.get(kind)
        if cls is None:
            events.append(UnknownEvent(kind))
            continue
        try:
            events.append(msgspec.convert(item, cls, strict=False))
        except msgspec.ValidationError as exc:
            raise MessageError(f"invalid `{kind}` in {where}: {exc}") from None
    return events


def _preview(data: bytes) -> str:
    text = data[:_PREVIEW_BYTES].decode("utf-8", "replace")
    return text + ("..." if len(data) > _PREVIEW_BYTES else "")
