"""Decoding of the recorded Polymarket frames and of malformed input."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest

from pool.models import (
    BestBidAsk,
    BookEvent,
    BookStore,
    LastTradePrice,
    MarketResolved,
    MessageError,
    PriceChange,
    RejectedEvent,
    TickSizeChange,
    UnknownEvent,
    decode_frame,
    decode_new_markets,
    event_asset_ids,
)
from tests.support import FIXTURES, fixture_bytes, market_resolved, sequence_objects

DATA_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".json", ".txt"))
MARKET_RESOLVED = market_resolved("0x" + "ab" * 32, ["101", "102"], "101", "Yes", 1766790415550)


class TestRecordedFixtures:
    def test_every_fixture_file_is_present(self) -> None:
        """The copied fixtures are the ten recorded data files the shared folder documents."""
        assert len(DATA_FILES) == 10

    @pytest.mark.parametrize("name", DATA_FILES)
    def test_every_fixture_parses(self, name: str) -> None:
        """Every recorded JSON object decodes to at least one event without error."""
        objects = sequence_objects(name) if name.endswith(".txt") else [fixture_bytes(name)]
        assert objects
        for raw in objects:
            events = decode_frame(raw)
            assert len(events) == 1

    def test_book_without_event_type_is_a_book(self) -> None:
        """The 2024-11 recording and REST responses carry no event_type; their shape makes them books."""
        for name in ("ws_book_2024-11.json", "rest_book_2024-09.json"):
            (event,) = decode_frame(fixture_bytes(name))
            assert isinstance(event, BookEvent)
        (event,) = decode_frame(fixture_bytes("ws_book_2024-11.json"))
        assert isinstance(event, BookEvent)
        assert event.timestamp == 1732928643796
        assert len(event.bids) == 14 and len(event.asks) == 4

    def test_price_change_v0(self) -> None:
        """The 2024-08 one-level shape flattens to one entry."""
        (event,) = decode_frame(fixture_bytes("ws_price_change_v0_2024-08.json"))
        assert isinstance(event, PriceChange)
        assert event.entries() == [(event.asset_id, "SELL", "0.514", "21574.08")]
        assert event.timestamp == 1723967931411

    def test_price_change_v1_and_v2(self) -> None:
        """The `changes` shape names one asset; the `price_changes` shape names one per entry."""
        v1 = decode_frame(sequence_objects("sequence_2024-12_price_change_v1_changes.txt")[1])[0]
        assert isinstance(v1, PriceChange)
        assert [e[1:] for e in v1.entries()] == [
            ("SELL", "0.54", "50"),
            ("SELL", "0.567", "0"),
            ("BUY", "0.52", "11013.19"),
        ]
        v2 = decode_frame(sequence_objects("sequence_2025-10_price_change_v2.txt")[1])[0]
        assert isinstance(v2, PriceChange)
        assert len({asset for asset, *_ in v2.entries()}) == 2
        assert v2.timestamp == 1761179949036  # a JSON number in this recording

    def test_timestamp_number_and_string_agree(self) -> None:
        """A timestamp sent as a JSON number (Oct 2025) or a string (everything else) decodes to the same int."""
        (as_number,) = decode_frame(
            b'{"event_type":"book","asset_id":"1","market":"m","bids":[],"asks":[],"timestamp":1761179883493}'
        )
        (as_string,) = decode_frame(
            b'{"event_type":"book","asset_id":"1","market":"m","bids":[],"asks":[],"timestamp":"1761179883493"}'
        )
        assert isinstance(as_number, BookEvent) and isinstance(as_string, BookEvent)
        assert as_number.timestamp == as_string.timestamp == 1761179883493

    def test_trade_and_tick_size(self) -> None:
        (trade,) = decode_frame(fixture_bytes("ws_last_trade_price_2024-08.json"))
        assert isinstance(trade, LastTradePrice) and trade.price == "0.491" and trade.side == "SELL"
        (tick,) = decode_frame(fixture_bytes("ws_tick_size_change_2025-02.json"))
        assert isinstance(tick, TickSizeChange) and (tick.old_tick_size, tick.new_tick_size) == ("0.01", "0.001")

    def test_best_bid_ask_decodes_with_its_prices(self) -> None:
        """The recorded `best_bid_ask` (sent with custom features): its token, prices and string timestamp."""
        (quote,) = decode_frame(fixture_bytes("ws_best_bid_ask_2025-12.json"))
        assert isinstance(quote, BestBidAsk) and quote.asset_id.startswith("8535495606")
        assert (quote.best_bid, quote.best_ask, quote.spread, quote.timestamp) == (
            "0.73",
            "0.77",
            "0.04",
            1766789469958,
        )

    def test_market_resolved_decodes_in_the_documented_shape(self) -> None:
        """No recording exists; Polymarket's documented shape: the market's tokens, the winner, its label."""
        (resolved,) = decode_frame(MARKET_RESOLVED)
        assert isinstance(resolved, MarketResolved)
        assert resolved.assets_ids == ["101", "102"] and (resolved.winning_asset_id, resolved.winning_outcome) == (
            "101",
            "Yes",
        )
        assert resolved.timestamp == 1766790415550 and event_asset_ids(resolved) == ["101", "102"]

    def test_a_new_market_is_reported_not_raised(self) -> None:
        """new_market is well formed but changes no book: it decodes as UnknownEvent."""
        assert decode_frame(fixture_bytes("ws_new_market_2025-12.json")) == [UnknownEvent("new_market")]

    def test_a_new_market_decodes_for_the_feed_and_anything_else_is_refused(self) -> None:
        """The recorded `new_market` (its timestamp a string), alone or in an array; a book is not one."""
        (new,) = decode_new_markets(fixture_bytes("ws_new_market_2025-12.json"))
        assert new.market.startswith("0x311d0c4b") and len(new.assets_ids) == 2 and new.tags == ["stocks"]
        assert (new.outcomes, new.active, new.timestamp) == (["Yes", "No"], True, 1766790415550)
        assert decode_new_markets(b"[" + fixture_bytes("ws_new_market_2025-12.json") + b"]") == [new]
        with pytest.raises(MessageError) as refused:
            decode_new_markets(fixture_bytes("ws_book_2024-09.json"))
        assert refused.value.reason == "invalid_event"
        with pytest.raises(MessageError, match="not a new_market frame") as refused:
            decode_new_markets(b"{not json")
        assert refused.value.reason == "not_json"


class TestFrames:
    def test_array_frame_keeps_order(self) -> None:
        """An array frame (the initial dump) decodes to its events in array order."""
        book = fixture_bytes("ws_book_2024-11.json")
        trade = fixture_bytes("ws_last_trade_price_2024-08.json")
        events = decode_frame(b"[" + book + b"," + trade + b"]")
        assert [type(e) for e in events] == [BookEvent, LastTradePrice]

    @pytest.mark.parametrize("frame", [b"PONG", b"PING", b"NO NEW ASSETS", "PONG", b" PONG\n"])
    def test_service_text_frames_are_ignored(self, frame: bytes | str) -> None:
        """The service's plain-text frames carry no data and are not errors."""
        assert decode_frame(frame) == []

    def test_str_frame_equals_bytes_frame(self) -> None:
        raw = fixture_bytes("ws_price_change_v0_2024-08.json")
        assert decode_frame(raw.decode()) == decode_frame(raw)

    def test_extra_fields_are_tolerated(self) -> None:
        """A field the exchange adds later does not break decoding."""
        (event,) = decode_frame(
            b'{"event_type":"last_trade_price","asset_id":"1","price":"0.5","side":"BUY","size":"1","transaction_hash":"0xab","new":{"x":[1]}}'
        )
        assert isinstance(event, LastTradePrice)


MALFORMED = [
    pytest.param(b"garbage", "not valid JSON", "not_json", id="not-json"),
    pytest.param(b'{"event_type":"book","asset_id":"1"', "not valid JSON", "not_json", id="truncated"),
    pytest.param(b"42", "not an event object", "not_an_event", id="number"),
    pytest.param(b'{"foo": 1}', "no string `event_type`", "not_an_event", id="no-type-not-a-book"),
    pytest.param(b'{"event_type": 7, "asset_id": "1"}', "no string `event_type`", "not_an_event", id="type-not-string"),
    pytest.param(
        b'{"event_type":"book","asset_id":"1","bids":[],"asks":{}}',
        "invalid `book`",
        "invalid_event",
        id="asks-not-array",
    ),
    pytest.param(
        b'{"event_type":"book","asset_id":"1","bids":[{"price":0.5,"size":"1"}],"asks":[]}',
        "Expected `str`, got `float`",
        "invalid_event",
        id="price-as-number",
    ),
    pytest.param(
        b'{"event_type":"price_change","asset_id":"1","market":"m","price":"0.5","side":"HOLD","size":"1"}',
        "invalid `price_change`",
        "invalid_event",
        id="bad-side",
    ),
    pytest.param(
        b'{"event_type":"last_trade_price","asset_id":"1","price":"0.5","side":"BUY","size":"1","timestamp":"soon"}',
        "invalid `last_trade_price`",
        "invalid_event",
        id="timestamp-not-a-number",
    ),
    pytest.param(
        b'[{"event_type":"tick_size_change","asset_id":"1"}]',
        "event 0 of the frame",
        "invalid_event",
        id="array-element",
    ),
    pytest.param(b"[" * 5000 + b"]" * 5000, "nested too deeply", "too_deep", id="deep"),
    pytest.param(b"\xff\xfe{}", "not valid JSON", "not_json", id="not-utf8"),
    pytest.param("\ud800", "not valid text", "not_json", id="lone-surrogate"),
    pytest.param(
        b'{"event_type":"price_change","asset_id":"1","price":"0.5","side":"BUY","size":"1","timestamp":'
        + b"9" * 5000
        + b"}",
        "out of range",
        "invalid_event",
        id="5000-digit-timestamp",
    ),
]


def rejection(frame: bytes | str) -> MessageError:
    """The error a frame gets: raised by `decode_frame` when it is unreadable; otherwise its one event is
    a `RejectedEvent`, which the store raises for when it is applied."""
    try:
        events = decode_frame(frame)
    except MessageError as exc:
        return exc
    (event,) = events
    assert isinstance(event, RejectedEvent)
    with pytest.raises(MessageError) as caught:
        BookStore().apply(event)
    return caught.value


class TestMalformed:
    @pytest.mark.parametrize(("frame", "message", "reason"), MALFORMED)
    def test_malformed_frames_and_events_are_rejected_with_a_reason(
        self, frame: bytes | str, message: str, reason: str
    ) -> None:
        """Each malformed frame or event gets a MessageError (a ValueError) whose text says what is wrong."""
        error = rejection(frame)
        assert message in str(error)
        assert error.reason == reason
        assert isinstance(error, ValueError)

    def test_a_malformed_event_costs_only_itself(self) -> None:
        """In an array frame, each event is decoded on its own: the valid ones keep their places."""
        book = b'{"event_type":"book","asset_id":"B","bids":[{"price":"0.4","size":"10"}],"asks":[]}'
        spoiled = [
            b'{"event_type":"price_change","asset_id":12345,"changes":[]}',
            b'{"event_type":"price_change","asset_id":"A","price":"0.5","side":5,"size":"1"}',
            b'{"event_type":"book","asset_id":"C","bids":"none","asks":[]}',
            b'{"event_type":"price_change","price_changes":[{"asset_id":7,"price":"0.5","side":"BUY","size":"1"}]}',
            b"[[[[]]]]",
            b"42",
            b'{"event_type":"tick_size_change","asset_id":"D","old_tick_size":"0.01","new_tick_size":"0.001",'
            b'"timestamp":' + b"9" * 5000 + b"}",
        ]
        frame = b"[" + b",".join([*spoiled, book]) + b"]"
        events = decode_frame(frame)
        assert [type(event) for event in events] == [RejectedEvent] * len(spoiled) + [BookEvent]
        assert [getattr(event, "asset_id", "?") for event in events[: len(spoiled)]] == [
            None,
            "A",
            "C",
            None,
            None,
            None,
            "D",
        ]
        store = BookStore()
        for event in events:
            with contextlib.suppress(MessageError):
                store.apply(event)
        assert store.books["B"].bids() == [("0.4", "10")]

    def test_a_rejected_event_names_its_first_asset(self) -> None:
        """`RejectedEvent.asset_id` is the first string id, the top-level one or the first entry's."""
        (event,) = decode_frame(
            b'{"event_type":"price_change","price_changes":[{"asset_id":7},{"asset_id":"Z","price":"0.5"}]}'
        )
        assert isinstance(event, RejectedEvent) and event.asset_id == "Z" and event.event_type == "price_change"

    @pytest.mark.parametrize(
        ("frame", "message"),
        [
            (b'{"event_type":"price_change","market":"m"}', "needs an `asset_id`"),
            (b'{"event_type":"price_change","asset_id":"1","market":"m"}', "none of"),
        ],
    )
    def test_price_change_without_a_shape_is_rejected_where_applied(self, frame: bytes, message: str) -> None:
        """A well-typed price_change of no known shape decodes (the check would cost every decode a Python
        call) and is rejected, alone, by whatever reads its entries: the store, or the parent's router."""
        (event,) = decode_frame(frame)
        assert isinstance(event, PriceChange)
        with pytest.raises(MessageError, match=message):
            event.entries()
        with pytest.raises(MessageError, match=message):
            BookStore().apply(event)

    def test_error_is_not_a_msgspec_error(self) -> None:
        """Users catch one type: msgspec's own errors never leak out of decode_frame."""
        error = rejection(b'{"event_type":"book","asset_id":"1","bids":[{"price":1,"size":"1"}],"asks":[]}')
        assert not isinstance(error, msgspec.MsgspecError)


_TEMPLATES: dict[str, dict[str, object]] = {
    "book": {"event_type": "book", "asset_id": "A", "market": "m", "bids": [{"price": "0.4", "size": "1"}], "asks": []},
    "one-level": {"event_type": "price_change", "asset_id": "A", "price": "0.4", "side": "BUY", "size": "2"},
    "changes": {
        "event_type": "price_change",
        "asset_id": "A",
        "changes": [{"price": "0.4", "side": "BUY", "size": "3"}],
    },
    "price_changes": {
        "event_type": "price_change",
        "market": "m",
        "price_changes": [{"asset_id": "A", "price": "0.4", "side": "BUY", "size": "4"}],
    },
    "trade": {"event_type": "last_trade_price", "asset_id": "A", "price": "0.4", "side": "BUY", "size": "5"},
    "tick": {"event_type": "tick_size_change", "asset_id": "A", "old_tick_size": "0.01", "new_tick_size": "0.001"},
}
# Per field, values that must make the event rejected: wrong types, and bad values where the field has a rule.
_WRONG_TYPES: list[object] = [7, None, [], {}, True]
_BAD_VALUES = {"price": ["abc", "1.5", "0", "-0.1", "9" * 5000], "size": ["abc", "-1", "1e5", "1,2", "9" * 5000]}
_BAD_VALUES["side"] = ["HOLD", "buy"]


def _spoilings() -> list[Any]:
    cases = []
    for kind, template in _TEMPLATES.items():
        for field in template:
            target = template["price_changes"][0] if field == "price_changes" else template  # type: ignore[index]
            for sub in target if field == "price_changes" else [field]:
                bad = (
                    [v for v in _WRONG_TYPES if not (sub in ("bids", "asks", "changes") and v == [])]
                    + _BAD_VALUES.get(sub, [])
                    + (["0.2x"] if kind == "tick" and sub == "new_tick_size" else [])
                )
                for value in bad:
                    cases.append(pytest.param(kind, field, sub, value, id=f"{kind}-{sub}-{str(value)[:8]}"))
    return cases


class TestEveryFieldOfEveryEvent:
    @pytest.mark.parametrize(("kind", "field", "sub", "value"), _spoilings())
    def test_a_bad_field_rejects_its_event_and_only_it(self, kind: str, field: str, sub: str, value: object) -> None:
        """Each field of each event kind, given a wrong type or a bad value, in an array beside a valid book:
        the event is rejected (as a `RejectedEvent`, or by the store when applied), the book is applied, and
        the book the spoiled event named is as before."""
        event = json.loads(json.dumps(_TEMPLATES[kind]))
        target = event["price_changes"][0] if field == "price_changes" else event
        target[sub] = value
        base = {**_TEMPLATES["book"], "bids": [{"price": "0.3", "size": "9"}]}
        neighbour = {**_TEMPLATES["book"], "asset_id": "B"}
        store = BookStore()
        store.apply(decode_frame(json.dumps(base))[0])
        events = decode_frame(json.dumps([event, neighbour]))
        assert len(events) == 2
        with pytest.raises(MessageError):
            store.apply(events[0])
        store.apply(events[1])
        assert store.books["B"].bids() == [("0.4", "1")]
        assert store.books["A"].bids() == [("0.3", "9")]
