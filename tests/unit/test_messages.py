"""Decoding of the recorded Polymarket frames and of malformed input."""

from __future__ import annotations

import msgspec
import pytest

from pool.models import (
    BookEvent,
    BookStore,
    LastTradePrice,
    MessageError,
    PriceChange,
    TickSizeChange,
    UnknownEvent,
    decode_frame,
)
from tests.support import FIXTURES, fixture_bytes, sequence_objects

DATA_FILES = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".json", ".txt"))


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

    def test_unknown_event_types_are_reported_not_raised(self) -> None:
        """best_bid_ask and new_market are well formed but not applied: they decode as UnknownEvent."""
        assert decode_frame(fixture_bytes("ws_best_bid_ask_2025-12.json")) == [UnknownEvent("best_bid_ask")]
        assert decode_frame(fixture_bytes("ws_new_market_2025-12.json")) == [UnknownEvent("new_market")]


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
    pytest.param(b"garbage", "not valid JSON", id="not-json"),
    pytest.param(b'{"event_type":"book","asset_id":"1"', "not valid JSON", id="truncated"),
    pytest.param(b"42", "not an object", id="number"),
    pytest.param(b'{"foo": 1}', "no string `event_type`", id="no-type-not-a-book"),
    pytest.param(b'{"event_type": 7, "asset_id": "1"}', "no string `event_type`", id="type-not-string"),
    pytest.param(b'{"event_type":"book","asset_id":"1","bids":[],"asks":{}}', "invalid `book`", id="asks-not-array"),
    pytest.param(
        b'{"event_type":"book","asset_id":"1","bids":[{"price":0.5,"size":"1"}],"asks":[]}',
        "Expected `str`, got `float`",
        id="price-as-number",
    ),
    pytest.param(
        b'{"event_type":"price_change","asset_id":"1","market":"m","price":"0.5","side":"HOLD","size":"1"}',
        "invalid `price_change`",
        id="bad-side",
    ),
    pytest.param(
        b'{"event_type":"last_trade_price","asset_id":"1","price":"0.5","side":"BUY","size":"1","timestamp":"soon"}',
        "invalid `last_trade_price`",
        id="timestamp-not-a-number",
    ),
    pytest.param(b'[{"event_type":"tick_size_change","asset_id":"1"}]', "event 0 of the frame", id="array-element"),
]


class TestMalformed:
    @pytest.mark.parametrize(("frame", "message"), MALFORMED)
    def test_malformed_frames_raise_message_error(self, frame: bytes, message: str) -> None:
        """Each malformed frame raises MessageError (a ValueError) whose text says what is wrong."""
        with pytest.raises(MessageError, match=None) as caught:
            decode_frame(frame)
        assert message in str(caught.value)
        assert isinstance(caught.value, ValueError)

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
        with pytest.raises(MessageError) as caught:
            decode_frame(b'{"event_type":"book","asset_id":"1","bids":[{"price":1,"size":"1"}],"asks":[]}')
        assert not isinstance(caught.value, msgspec.MsgspecError)
