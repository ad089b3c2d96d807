"""Polymarket market-channel events as msgspec Structs, and the one frame decoder.

The Structs mirror the recorded wire format (``tests/fixtures/polymarket/FORMAT.md``): they are strict
about the types of the fields they declare and ignore fields they do not, so a new server-side field never
breaks a consumer while a price sent as a number, say, is rejected.

Decoding is two-tier because almost every frame is well formed: one msgspec pass over a tagged union
handles the common case at full speed, and only a frame that fails it takes the slow path, which decodes
event by event and tells an unknown event type (counted and skipped), an untagged book (REST responses and
one recording carry no ``event_type``), a malformed event (a `RejectedEvent` in its place, so the events
beside it still apply) and an unreadable frame (``MessageError``) apart.

The Structs are ``gc=False``: an event holds strings and lists of Structs, never a cycle, so the garbage
collector need not track the hundreds of thousands a worker decodes per second.
"""

from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "BestBidAsk",
    "BookEvent",
    "Change",
    "Event",
    "LastTradePrice",
    "Level",
    "MarketResolved",
    "MessageError",
    "NewMarket",
    "PriceChange",
    "PriceChangeEntry",
    "RejectedEvent",
    "Rejection",
    "Side",
    "TickSizeChange",
    "UnknownEvent",
    "decode_frame",
    "decode_new_markets",
    "event_asset_ids",
]

Side: TypeAlias = Literal["BUY", "SELL"]

# Why a frame or event was rejected: the keys of the per-reason counts in `WorkerStats` and `PoolStatus`.
Rejection: TypeAlias = Literal[
    "not_json",  # not JSON, or not UTF-8
    "too_deep",  # nested deeper than the decoder goes
    "too_large",  # larger than a worker's channel carries
    "not_an_event",  # a JSON value that is not an event object (a number, a list, no `event_type`)
    "invalid_event",  # a field of the wrong type or missing (a price sent as a number, `bids` as a string)
    "invalid_value",  # a well-typed field with a bad value (a price of "abc" or "1.5", a 70-digit size)
]

# Plain-text frames the service sends beside JSON: keep-alive answers and a subscription notice.
# They carry no market data, so they decode to no events rather than to an error.
_SERVICE_TEXT_FRAMES = frozenset({b"PING", b"PONG", b"NO NEW ASSETS"})

# How much of a rejected frame an error message quotes: enough to recognise it, never a whole book.
_PREVIEW_BYTES = 120


class MessageError(ValueError):
    """A frame or event is malformed; the message says which field and why, ``reason`` which kind it is.

    Raised by `decode_frame` (a frame it cannot read at all) and by the order-book ``apply_*`` methods.
    Inside a pool it never escapes a worker: the event is counted (``WorkerStats.rejections``), logged
    with this message, and skipped.
    """

    def __init__(self, message: str, reason: "Rejection" = "invalid_value") -> None:
        super().__init__(message)
        self.reason: Rejection = reason

    def __reduce__(self) -> tuple[type["MessageError"], tuple[str, "Rejection"]]:
        return type(self), (str(self), self.reason)


class Level(msgspec.Struct, frozen=True, gc=False):
    """One price level of a `book` snapshot: the total size resting at ``price``."""

    price: str
    size: str


class BookEvent(msgspec.Struct, tag_field="event_type", tag="book", kw_only=True, gc=False):
    """A full snapshot of one token's book; it replaces everything held for ``asset_id``.

    ``bids`` arrive price-ascending and ``asks`` price-descending (best last), as the exchange sends them.
    ``timestamp`` is Unix epoch milliseconds (sent as a string or a number; normalised to ``int``).
    ``min_order_size`` and ``neg_risk`` come with REST books only; the book keeps them, since the exchange's
    ``hash`` covers them (`PoolConfig.verify_book_hash`).
    """

    asset_id: str
    market: str = ""
    bids: list[Level]
    asks: list[Level]
    hash: str = ""
    timestamp: int | None = None
    tick_size: str | None = None
    last_trade_price: str | None = None
    min_order_size: str | None = None
    neg_risk: bool | None = None


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
            raise MessageError("price_change without `price_changes` needs an `asset_id`", "invalid_event")
        if self.changes is not None:
            return [(asset_id, c.side, c.price, c.size) for c in self.changes]
        if self.price is None or self.side is None or self.size is None:
            raise MessageError(
                "price_change has none of `price_changes`, `changes`, or `price`+`side`+`size`", "invalid_event"
            )
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


class BestBidAsk(msgspec.Struct, tag_field="event_type", tag="best_bid_ask", kw_only=True, gc=False):
    """The best bid and ask of ``asset_id`` as the service sees them (sent with ``custom_feature_enabled``).

    It changes no book: a worker checks it against the book it holds (`PoolConfig.best_bid_ask_resync_after`).
    A price outside (0, 1) ("0" bid, "1" ask, or empty) stands for an empty side.
    """

    asset_id: str
    market: str = ""
    best_bid: str
    best_ask: str
    spread: str = ""
    timestamp: int | None = None


class MarketResolved(msgspec.Struct, tag_field="event_type", tag="market_resolved", kw_only=True, gc=False):
    """A market settled (sent with ``custom_feature_enabled``): the books of ``assets_ids`` are closed.

    The shape is the one Polymarket documents (no trustworthy recording exists): ``assets_ids`` names the
    market's tokens, ``winning_asset_id`` the token that won and ``winning_outcome`` its label ("Yes", a
    team's name...).
    """

    market: str
    assets_ids: list[str]
    winning_asset_id: str
    winning_outcome: str = ""
    id: str | None = None
    timestamp: int | None = None


class NewMarket(msgspec.Struct, tag_field="event_type", tag="new_market", frozen=True, kw_only=True, gc=False):
    """A market opened (sent with ``custom_feature_enabled``): its tokens, and what a filter may choose by.

    Not a book event: the workers skip it (`UnknownEvent`); a feed reads it (`feeds.PolymarketFeed`'s
    ``on_new_market``) to follow new markets as they open.
    """

    market: str
    assets_ids: list[str]
    id: str | None = None
    question: str = ""
    slug: str = ""
    outcomes: list[str] = []
    tags: list[str] = []
    active: bool = True
    timestamp: int | None = None


_new_markets = msgspec.json.Decoder(NewMarket | list[NewMarket], strict=False)


def decode_new_markets(frame: bytes) -> list[NewMarket]:
    """The `NewMarket` events of a frame that holds only those.

    Raises:
        MessageError: the frame is not one ``new_market`` event or an array of them.
    """
    try:
        events = _new_markets.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        reason: Rejection = "invalid_event" if isinstance(exc, msgspec.ValidationError) else "not_json"
        raise MessageError(f"not a new_market frame: {exc}", reason) from None
    return events if isinstance(events, list) else [events]


class UnknownEvent(msgspec.Struct, frozen=True):
    """A well-formed event of a type this library does not apply (e.g. ``new_market``); counted, skipped."""

    event_type: str


class RejectedEvent(msgspec.Struct, frozen=True):
    """An event of a frame that could not be decoded, kept in its place so the events beside it still apply.

    ``asset_id`` is the first asset id (a string) it names, if any: in a pool, the worker that owns that
    asset counts it, so an event is counted once however many workers its frame reaches. `BookStore.apply`
    raises `MessageError` for it.
    """

    message: str
    reason: Rejection
    event_type: str | None = None
    asset_id: str | None = None

    def error(self) -> MessageError:
        return MessageError(self.message, self.reason)


Event: TypeAlias = BookEvent | PriceChange | LastTradePrice | TickSizeChange | BestBidAsk | MarketResolved

_EVENT_TYPES: dict[str, type[Event]] = {
    "book": BookEvent,
    "price_change": PriceChange,
    "last_trade_price": LastTradePrice,
    "tick_size_change": TickSizeChange,
    "best_bid_ask": BestBidAsk,
    "market_resolved": MarketResolved,
}

# strict=False lets msgspec turn the string timestamps into ints; every other declared field is a string,
# a literal or a list, and lax mode never turns a number into a string, so prices and sizes stay strict.
_fast_decoder = msgspec.json.Decoder(Event | list[Event], strict=False)
# The slow path reads a frame as raw elements, then each element as a map of raw fields, so nothing is
# parsed before it is needed: a 5,000-digit number in one event cannot make the frame unreadable.
_elements_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_entries_decoder = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])
_text_decoder = msgspec.json.Decoder(str)
_event_decoders = {kind: msgspec.json.Decoder(cls, strict=False) for kind, cls in _EVENT_TYPES.items()}


def decode_frame(frame: bytes | str) -> list[Event | UnknownEvent | RejectedEvent]:
    """Decode one WebSocket frame (a JSON event, a JSON array of events, or a service text frame).

    Returns the events in frame order; a service text frame (``PONG``, ``NO NEW ASSETS``) gives ``[]``.
    An event without ``event_type`` that has ``bids``/``asks`` is a book (REST shape). An event that is
    malformed (a field of the wrong type or missing, not an object) is a `RejectedEvent` in its place: one
    bad event never costs the events beside it.

    Raises:
        MessageError: the frame as a whole cannot be read: not UTF-8, not JSON, nested too deeply, or a
            JSON value that is neither an event nor an array.
    """
    try:
        decoded = _fast_decoder.decode(frame)
    except (msgspec.DecodeError, RecursionError, UnicodeError):
        return _decode_slow(frame)
    return decoded if isinstance(decoded, list) else [decoded]


def _decode_slow(frame: bytes | str) -> list[Event | UnknownEvent | RejectedEvent]:
    try:
        data = frame.encode() if isinstance(frame, str) else frame
    except UnicodeEncodeError as exc:  # a lone surrogate: no wire could have sent it
        raise MessageError(f"frame is not valid text ({exc.reason} at {exc.start})", "not_json") from None
    if data.strip() in _SERVICE_TEXT_FRAMES:
        return []
    try:
        elements = _elements_decoder.decode(data)
    except msgspec.ValidationError:  # valid JSON, not an array: one event (or nothing we can read)
        event = _event_of(data, "the frame")
        if isinstance(event, RejectedEvent) and event.asset_id is None and event.reason != "invalid_event":
            raise event.error() from None  # nothing in it to apply or to route: the frame is unreadable
        return [event]
    except msgspec.DecodeError as exc:
        raise MessageError(f"frame is not valid JSON ({exc}): {_preview(data)}", "not_json") from None
    except RecursionError:
        raise MessageError(f"frame is nested too deeply to decode: {_preview(data)}", "too_deep") from None
    return [_event_of(element, f"event {index} of the frame") for index, element in enumerate(elements)]


def _event_of(raw: msgspec.Raw | bytes, where: str) -> Event | UnknownEvent | RejectedEvent:
    """One JSON value as an event, or as the `RejectedEvent` that says why it is none."""
    try:
        fields = _fields_decoder.decode(raw)
    except msgspec.ValidationError:
        return RejectedEvent(f"{where} is not an event object: {_preview(bytes(raw))}", "not_an_event")
    except msgspec.DecodeError as exc:  # only the frame itself can be malformed: elements were read whole
        return RejectedEvent(f"{where} is not valid JSON ({exc}): {_preview(bytes(raw))}", "not_json")
    except RecursionError:
        return RejectedEvent(f"{where} is nested too deeply to decode: {_preview(bytes(raw))}", "too_deep")
    kind = _text(fields.get("event_type"))
    if kind is None and "event_type" not in fields and ("bids" in fields or "asks" in fields):
        kind = "book"
    asset_id = _first_asset_id(fields)
    if kind is None:
        return RejectedEvent(
            f"{where} has no string `event_type` and is not a book: {_preview(bytes(raw))}",
            "not_an_event",
            None,
            asset_id,
        )
    decoder = _event_decoders.get(kind)
    if decoder is None:
        return UnknownEvent(kind)
    try:
        event: Event = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return RejectedEvent(f"invalid `{kind}` in {where}: {exc}", "invalid_event", kind, asset_id)
    except msgspec.DecodeError as exc:  # what a raw read lets through: invalid UTF-8 inside a string
        return RejectedEvent(f"`{kind}` in {where} is not valid JSON ({exc})", "not_json", kind, asset_id)
    except RecursionError:
        return RejectedEvent(f"`{kind}` in {where} is nested too deeply to decode", "too_deep", kind, asset_id)
    return event


def event_asset_ids(event: Event | UnknownEvent | RejectedEvent) -> list[str]:
    """The assets ``event`` names, in order, without checking its shape (it never raises).

    A pool sends a frame to the workers of these assets, and the worker of the first one counts the event
    if it is rejected, so that it is counted once however many workers see it.
    """
    if type(event) is PriceChange:
        ids = [] if event.asset_id is None else [event.asset_id]
        if event.price_changes:
            ids.extend(entry.asset_id for entry in event.price_changes)
        return ids
    if isinstance(event, UnknownEvent):
        return []
    if isinstance(event, MarketResolved):
        return list(event.assets_ids)
    return [] if event.asset_id is None else [event.asset_id]


def _text(raw: msgspec.Raw | None) -> str | None:
    """The string a raw JSON value holds, or None if it is absent or not a string."""
    if raw is None:
        return None
    try:
        return _text_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def _first_asset_id(fields: dict[str, msgspec.Raw]) -> str | None:
    """The asset id a pool routes an event by first: its own, else its first ``price_changes`` entry's."""
    asset_id = _text(fields.get("asset_id"))
    if asset_id is not None or "price_changes" not in fields:
        return asset_id
    try:
        entries = _entries_decoder.decode(fields["price_changes"])
    except (msgspec.DecodeError, RecursionError):
        return None
    for entry in entries:
        if (entry_id := _text(entry.get("asset_id"))) is not None:
            return entry_id
    return None


def _preview(data: bytes) -> str:
    text = data[:_PREVIEW_BYTES].decode("utf-8", "replace")
    return text + ("..." if len(data) > _PREVIEW_BYTES else "")
