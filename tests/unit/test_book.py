"""Order-book semantics, checked against the exchange's own REST books and an independent Decimal model."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool.models import (
    BestBidAsk,
    BookChecks,
    BookEvent,
    BookState,
    BookStore,
    Level,
    MarketResolved,
    MessageError,
    OrderBook,
    PriceChange,
    Resolution,
    Trade,
    UnknownEvent,
    decode_frame,
    format_decimal,
    parse_decimal,
)
from tests.support import ReferenceBooks, as_decimals, sequence_objects

ASSET = "1"


def book_event(bids: list[tuple[str, str]], asks: list[tuple[str, str]], asset_id: str = ASSET) -> BookEvent:
    return BookEvent(
        asset_id=asset_id,
        market="m",
        bids=[Level(p, s) for p, s in bids],
        asks=[Level(p, s) for p, s in asks],
        timestamp=1,
    )


# Decimal texts as a feed could write them: up to 15 significant digits, any scale a size or price has,
# with or without trailing zeros and a leading zero.
_decimal_texts = st.builds(
    lambda digits, scale, zeros, leading: _text(digits, scale, zeros, leading),
    st.integers(min_value=0, max_value=10**15 - 1),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=3),
    st.booleans(),
)


def _text(digits: int, scale: int, zeros: int, leading: bool) -> str:
    """``digits`` scaled down by 10**scale, as a decimal string with ``zeros`` trailing zeros."""
    text = f"{Decimal(digits).scaleb(-scale):f}"
    if zeros:
        text += ("." if "." not in text else "") + "0" * zeros
    if not leading and text.startswith("0."):
        text = text[1:]  # ".48", as Polymarket's own documentation writes it
    return text


class TestDecimals:
    @pytest.mark.parametrize(
        ("text", "value"),
        [
            ("0.5", "0.5"),
            ("0.50", "0.5"),
            (".48", "0.48"),
            ("0", "0"),
            ("0.0", "0"),
            ("10500100", "10500100"),
            ("219.217767", "219.217767"),
            ("0.123456789", "0.123456789"),
            ("1.500000000000000000", "1.5"),
            ("0.00001", "0.00001"),
            ("123456789012345", "123456789012345"),
            ("000000000000000000001.25", "1.25"),
        ],
    )
    def test_parse_exact(self, text: str, value: str) -> None:
        """Decimal strings parse exactly and print back as the shortest exact decimal; trailing zeros and
        leading zeros do not change the value."""
        assert format_decimal(parse_decimal(text)) == value

    @pytest.mark.parametrize(
        "text",
        [
            "",
            ".",
            "-1",
            "+1",
            "1e-3",
            "1E5",
            "1_000",
            "NaN",
            "inf",
            " 1",
            "٣",
            "0x10",
            "1.2.3",
            "1234567890123456",  # 16 significant digits: a double would round it
            "0.1000000000000000055511151231257827",
            "9" * 5_000,
        ],
    )
    def test_parse_rejects(self, text: str) -> None:
        """Anything but a plain non-negative decimal of at most 15 significant digits is rejected."""
        with pytest.raises(MessageError):
            parse_decimal(text)

    @given(_decimal_texts)
    def test_exact_against_decimal(self, text: str) -> None:
        """A parsed value prints back as the same decimal (compared as Decimal), so nothing is rounded."""
        assert Decimal(format_decimal(parse_decimal(text))) == Decimal(text)

    @given(_decimal_texts, _decimal_texts)
    def test_order_and_equality_are_the_decimals(self, first: str, second: str) -> None:
        """Two texts are one level exactly when they are one decimal, and sort as their decimals do."""
        a, b = parse_decimal(first), parse_decimal(second)
        assert (a == b) == (Decimal(first) == Decimal(second))
        assert (a < b) == (Decimal(first) < Decimal(second))

    @given(st.lists(_decimal_texts, max_size=40))
    def test_snapshot_sizes_parse_as_one_by_one(self, texts: list[str]) -> None:
        """A snapshot's sizes parsed together (one msgspec call) equal each parsed alone."""
        book = OrderBook(ASSET)
        levels = [(f"0.{index + 10}1", text) for index, text in enumerate(texts)]
        book.apply_snapshot(book_event(levels, []))
        expected = [(price, format_decimal(parse_decimal(size))) for price, size in levels if Decimal(size)]
        assert book.bids() == expected[::-1]

    def test_snapshot_checks_every_size_as_parse_decimal_does(self) -> None:
        """The one-call path of a snapshot's sizes refuses what parse_decimal refuses (a 16-digit size, a
        sign, an exponent) and takes what it takes, long texts with trailing zeros included."""
        book = OrderBook(ASSET)
        book.apply_snapshot(book_event([("0.1", "1.500000000000000"), ("0.2", ".25")], []))
        assert book.bids() == [("0.2", "0.25"), ("0.1", "1.5")]
        # "1,2" and "3," were read as extra numbers once, leaving more sizes than prices (found by fuzzing).
        for size in ["1234567890123456", "-1", "1e3", "12 ", "٣", "1,2", "3,", ",", ""]:
            with pytest.raises(MessageError):
                book.apply_snapshot(book_event([("0.1", "1"), ("0.2", size)], []))
        assert book.bids() == [("0.2", "0.25"), ("0.1", "1.5")]  # a refused snapshot changed nothing


class TestOrderBook:
    def test_snapshot_orders_and_best_levels(self) -> None:
        """A snapshot in wire order (bids ascending, asks descending) gives best-first sides."""
        book = OrderBook(ASSET)
        book.apply_snapshot(book_event([("0.1", "5"), ("0.2", "7")], [("0.9", "1"), ("0.3", "2")]))
        assert book.bids() == [("0.2", "7"), ("0.1", "5")]
        assert book.asks() == [("0.3", "2"), ("0.9", "1")]
        assert book.best_bid() == ("0.2", "7") and book.best_ask() == ("0.3", "2")
        assert book.depth == (2, 2)
        assert book.bids(depth=1) == [("0.2", "7")]

    def test_snapshot_replaces_everything(self) -> None:
        """A level the new snapshot does not list no longer exists."""
        book = OrderBook(ASSET)
        book.apply_snapshot(book_event([("0.1", "5"), ("0.2", "7")], [("0.9", "1")]))
        book.apply_snapshot(book_event([("0.15", "3")], []))
        assert book.bids() == [("0.15", "3")] and book.asks() == [] and book.best_ask() is None

    def test_size_zero_removes_and_equal_decimals_are_one_level(self) -> None:
        """ "0.5" and "0.50" name the same level; size "0" (or "0.00") removes it."""
        book = OrderBook(ASSET)
        book.apply_snapshot(book_event([("0.5", "10")], []))
        book.apply_price_change("BUY", "0.50", "12.0")
        assert book.bids() == [("0.5", "12")]
        book.apply_price_change("BUY", "0.500", "0.00")
        assert book.bids() == []
        book.apply_price_change("SELL", "0.7", "0")  # removing a level that is not there is harmless
        assert book.asks() == []

    def test_rejected_change_leaves_book_unchanged(self) -> None:
        """An invalid price (outside (0, 1)) or size raises MessageError and changes nothing."""
        book = OrderBook(ASSET)
        book.apply_snapshot(book_event([("0.5", "10")], []))
        for price, size in [("1.5", "1"), ("0", "1"), ("0.5", "-1"), ("0.5", "abc")]:
            with pytest.raises(MessageError):
                book.apply_price_change("BUY", price, size)
        assert book.bids() == [("0.5", "10")]

    def test_bad_snapshot_keeps_old_book(self) -> None:
        book = OrderBook(ASSET)
        book.apply_snapshot(book_event([("0.5", "10")], []))
        with pytest.raises(MessageError):
            book.apply_snapshot(book_event([("0.4", "1"), ("2", "1")], []))
        assert book.bids() == [("0.5", "10")]

    def test_memory_usage_is_small(self) -> None:
        """A book of 99 levels costs a few KB, far under 100 KB (the cap is 100 MB per 1000 books)."""
        book = OrderBook(ASSET)
        book.apply_snapshot(
            book_event([(f"0.{i:02d}", "100") for i in range(1, 50)], [(f"0.{i:02d}", "1") for i in range(99, 49, -1)])
        )
        assert book.depth == (49, 50)
        assert 1_000 < book.memory_usage() < 4_000


class TestRecordedSequences:
    @pytest.mark.parametrize(
        ("name", "start", "after"),
        [
            ("sequence_2024-12_price_change_v1_changes.txt", (72, 79), [(72, 78), (72, 77)]),
            ("sequence_2025-10_price_change_v2.txt", (18, 17), [(18, 16), (18, 16)]),
        ],
    )
    def test_sequence_reproduces_rest_books(
        self, name: str, start: tuple[int, int], after: list[tuple[int, int]]
    ) -> None:
        """After the recorded book and each price_change, the book equals the exchange's REST book, level for level."""
        book_frame, change_1, rest_1, change_2, rest_2 = sequence_objects(name)
        store = BookStore()
        (snapshot,) = decode_frame(book_frame)
        store.apply(snapshot)
        (asset_id,) = store.books
        assert store.books[asset_id].depth == start
        for change, rest, depth in ((change_1, rest_1, after[0]), (change_2, rest_2, after[1])):
            (event,) = decode_frame(change)
            assert isinstance(event, PriceChange)
            changed = store.apply(event)
            assert [b.asset_id for b in changed] == [asset_id]
            (expected,) = decode_frame(rest)
            assert isinstance(expected, BookEvent)
            book = store.books[asset_id]
            assert book.depth == depth
            assert as_decimals(book.bids()) == as_decimals(
                (level.price, level.size) for level in reversed(expected.bids)
            )
            assert as_decimals(book.asks()) == as_decimals(
                (level.price, level.size) for level in reversed(expected.asks)
            )

    def test_mirrored_token_is_skipped_and_counted(self) -> None:
        """The v2 entry for the market's other token (which we hold no book for) is skipped, and counted."""
        book_frame, change_1, *_ = sequence_objects("sequence_2025-10_price_change_v2.txt")
        store = BookStore()
        store.apply(decode_frame(book_frame)[0])
        store.apply(decode_frame(change_1)[0])
        assert store.skipped == 1
        assert len(store) == 1


class TestBookStore:
    def test_unknown_event_types_are_counted_and_change_nothing(self) -> None:
        store = BookStore()
        store.apply(book_event([("0.1", "1")], []))
        assert store.apply(UnknownEvent("best_bid_ask")) == []
        assert store.unknown == 1 and store.skipped == 0
        assert store.books[ASSET].bids() == [("0.1", "1")]

    def test_unowned_assets_are_ignored_silently(self) -> None:
        """Entries for assets another worker owns are neither applied nor counted as skipped."""
        store = BookStore(owns=lambda asset_id: asset_id == "a")
        assert store.apply(book_event([("0.1", "1")], [], asset_id="b")) == []
        store.apply(book_event([("0.1", "1")], [], asset_id="a"))
        assert list(store.books) == ["a"] and store.skipped == 0

    def test_bad_entry_rejects_whole_message(self) -> None:
        """A price_change with one invalid entry changes no book at all."""
        store = BookStore()
        store.apply(book_event([("0.1", "1")], [], asset_id="a"))
        event = decode_frame(
            b'{"event_type":"price_change","market":"m","timestamp":"2","price_changes":['
            b'{"asset_id":"a","price":"0.2","side":"BUY","size":"5"},{"asset_id":"a","price":"7","side":"BUY","size":"5"}]}'
        )[0]
        with pytest.raises(MessageError, match="outside"):
            store.apply(event)
        assert store.books["a"].bids() == [("0.1", "1")]


levels = st.lists(
    st.tuples(
        st.sampled_from(["BUY", "SELL"]),
        st.integers(1, 999),
        st.sampled_from(["0", "0.00", "1", "2.5", "100", "0.01", "33.333"]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(levels)
def test_price_changes_match_decimal_reference(changes: list[tuple[str, int, str]]) -> None:
    """Any sequence of level changes leaves the book equal to a naive Decimal dict model."""
    reference = ReferenceBooks()
    snapshot = {
        "event_type": "book",
        "asset_id": "a",
        "market": "m",
        "bids": [{"price": "0.1", "size": "1"}],
        "asks": [],
    }
    events = [snapshot] + [
        {
            "event_type": "price_change",
            "asset_id": "a",
            "market": "m",
            "price": f"{p / 1000:g}",
            "side": side,
            "size": size,
        }
        for side, p, size in changes
    ]
    frames = [msgspec.json.encode(event) for event in events]
    reference.apply_frames(frames)
    store = BookStore()
    for frame in frames:
        for event in decode_frame(frame):
            store.apply(event)
    bids, asks = reference.levels("a")
    assert as_decimals(store.books["a"].bids()) == bids
    assert as_decimals(store.books["a"].asks()) == asks


class TestRecovery:
    def test_rebuild_skips_updates_older_than_the_snapshot(self) -> None:
        """After a recovery snapshot, replayed updates older than it are skipped; equal or newer apply."""
        store = BookStore()
        snapshot = BookEvent(asset_id="a", market="m", bids=[Level("0.1", "5")], asks=[], timestamp=100)
        store.rebuild(snapshot)
        for timestamp, size in ((99, "7"), (100, "8"), (101, "9")):
            store.apply(PriceChange(asset_id="a", market="m", price="0.2", side="BUY", size=size, timestamp=timestamp))
            if timestamp == 99:
                assert store.books["a"].bids() == [("0.1", "5")]
        assert store.books["a"].bids() == [("0.2", "9"), ("0.1", "5")]
        assert store.superseded == 1

    def test_stale_book_keeps_its_levels_until_a_book_arrives(self) -> None:
        """A held book marked stale keeps its levels and takes updates; only a `book` clears the mark."""
        store = BookStore()
        store.apply(book_event([("0.1", "1")], [], asset_id="a"))
        store.mark_stale(["a"])
        assert store.stale == {"a"} and store.books["a"].bids() == [("0.1", "1")]
        store.apply(PriceChange(asset_id="a", market="m", price="0.2", side="BUY", size="3", timestamp=5))
        assert store.stale == {"a"} and store.books["a"].bids() == [("0.2", "3"), ("0.1", "1")]
        store.apply(book_event([("0.3", "4")], [], asset_id="a"))
        assert store.stale == set() and store.books["a"].bids() == [("0.3", "4")]

    def test_stale_asset_without_a_book_waits_for_one(self) -> None:
        """An asset marked stale with no book (not rebuilt) gets none from updates, only from a `book`."""
        store = BookStore()
        store.mark_stale(["a"])
        store.apply(PriceChange(asset_id="a", market="m", price="0.2", side="BUY", size="3", timestamp=5))
        assert "a" not in store.books and store.skipped == 1 and store.stale == {"a"}
        store.apply(book_event([("0.3", "4")], [], asset_id="a"))
        assert store.stale == set() and store.books["a"].bids() == [("0.3", "4")]


class TestHandoff:
    def test_a_dumped_store_installs_exactly_in_another(self) -> None:
        """What a recycle hands over (through msgpack, as on the channel) is the same books: levels, trade,
        tick size, timestamps, the floor of a rebuilt book and the stale flags; prices stay shared."""
        old = BookStore()
        for frame in sequence_objects("sequence_2025-10_price_change_v2.txt"):
            for event in decode_frame(frame):
                with contextlib.suppress(MessageError):
                    old.apply(event)
        old.rebuild(book_event([("0.31", "7")], [("0.69", "1.000001")], asset_id="rebuilt"))
        old.mark_stale(["rebuilt"])
        old.apply(book_event([("0.5", "3")], [], asset_id="plain"))
        for frame in (
            b'{"event_type":"last_trade_price","asset_id":"plain","price":"0.5","side":"BUY","size":"2"}',
            b'{"event_type":"tick_size_change","asset_id":"plain","old_tick_size":"0.01","new_tick_size":"0.001"}',
        ):
            old.apply(decode_frame(frame)[0])
        assert len(old.books) == 3 and old.books["plain"].last_trade is not None
        wire = msgspec.msgpack.encode(old.dump())
        new = BookStore()
        installed = new.install(msgspec.msgpack.decode(wire, type=list[BookState]))
        assert [book.asset_id for book in installed] == list(old.books)
        for asset_id, book in old.books.items():
            twin = new.books[asset_id]
            assert twin.view(stale=asset_id in new.stale) == book.view(stale=asset_id in old.stale)
            assert (twin.floor, twin.timestamp, twin.tick_size) == (book.floor, book.timestamp, book.tick_size)
        assert new.stale == old.stale == {"rebuilt"}
        prices = [p for book in new.books.values() for p in book._bid_prices + book._ask_prices]
        assert len({id(p) for p in prices}) == len(set(prices))  # one float object per price value

    def test_a_book_as_a_snapshot_rebuilds_the_same_book(self) -> None:
        """`OrderBook.snapshot` (what a handler is shown for a handed-over book) is a `book` event in the
        exchange's order that, applied to an empty store, gives the same book back."""
        old = BookStore()
        old.apply(book_event([("0.31", "7"), ("0.32", "1.5")], [("0.69", "1.000001"), ("0.68", "2")]))
        old.apply(
            decode_frame(
                b'{"event_type":"last_trade_price","asset_id":"%s","price":"0.5","side":"BUY","size":"1"}'
                % ASSET.encode()
            )[0]
        )
        book = old.books[ASSET]
        event = book.snapshot()
        assert [level.price for level in event.bids] == ["0.31", "0.32"]  # best last, as the exchange sends
        assert [level.price for level in event.asks] == ["0.69", "0.68"]
        new = BookStore()
        new.apply(event)
        # A `book` carries the last trade's price only.
        assert new.books[ASSET].view() == msgspec.structs.replace(
            book.view(), last_trade=Trade(price="0.5", timestamp=1)
        )


def quote(bid: str, ask: str, asset_id: str = ASSET) -> BestBidAsk:
    return BestBidAsk(asset_id=asset_id, best_bid=bid, best_ask=ask)


class TestQuoteCheck:
    def test_a_quote_that_agrees_is_counted_and_changes_nothing(self) -> None:
        """best_bid_ask equal to the book (numerically: "0.50" is "0.5"; "0" and "1" are empty sides) counts
        as checked and nothing else; the book is untouched."""
        store = BookStore(quote_resync_after=2)
        store.apply(book_event([("0.4", "1"), ("0.5", "2")], [("0.6", "3")]))
        store.apply(book_event([], [], asset_id="empty"))
        assert store.apply(quote("0.50", "0.6")) == []
        assert store.apply(quote("0", "1", asset_id="empty")) == []
        assert store.checks() == BookChecks(best_bid_ask_checked=2)
        assert store.books[ASSET].bids() == [("0.5", "2"), ("0.4", "1")] and not store.stale

    def test_mismatches_in_a_row_resync_the_book_and_a_match_resets_the_run(self) -> None:
        """Two mismatches, a match, then two more: only the second run reaches the threshold of 2; the book
        is then stale and named once in `mismatched`, and a fresh `book` makes it live again."""
        store = BookStore(quote_resync_after=2)
        store.apply(book_event([("0.5", "2")], [("0.6", "3")]))
        for bid in ("0.49", "0.5", "0.49"):
            store.apply(quote(bid, "0.6"))
        assert not store.stale and store.mismatched == set()
        store.apply(quote("0.5", "0.61"))
        assert store.stale == {ASSET} and store.mismatched == {ASSET}
        assert store.checks() == BookChecks(best_bid_ask_checked=4, best_bid_ask_mismatches=3, best_bid_ask_resyncs=1)
        store.apply(quote("0.1", "0.9"))  # a stale book is known to be behind: not checked
        assert store.checks().best_bid_ask_checked == 4
        store.apply(book_event([("0.5", "2")], [("0.61", "3")]))
        assert not store.stale
        store.apply(quote("0.5", "0.61"))
        assert store.checks().best_bid_ask_checked == 5 and store.mismatched == {ASSET}

    def test_without_a_threshold_mismatches_are_only_counted(self) -> None:
        store = BookStore(quote_resync_after=None)
        store.apply(book_event([("0.5", "2")], []))
        for _ in range(5):
            store.apply(quote("0.4", "1"))
        assert store.checks().best_bid_ask_mismatches == 5 and not store.stale and store.mismatched == set()

    def test_a_quote_with_a_bad_price_is_rejected_and_one_for_no_book_is_skipped(self) -> None:
        store = BookStore(quote_resync_after=1)
        store.apply(book_event([("0.5", "2")], []))
        with pytest.raises(MessageError):
            store.apply(quote("abc", "1"))
        store.apply(quote("0.5", "1", asset_id="unheld"))
        assert store.skipped == 1 and store.checks() == BookChecks() and not store.stale


def price_changes(*entries: tuple[str, str, str, str, str | None], timestamp: int = 5) -> PriceChange:
    """A 2025 ``price_change``: entries of ``(asset_id, side, price, size, "best_bid/best_ask" or None)``."""
    wire = []
    for asset_id, side, price, size, best in entries:
        entry = {"asset_id": asset_id, "side": side, "price": price, "size": size, "hash": ""}
        if best is not None:
            entry["best_bid"], entry["best_ask"] = best.split("/")
        wire.append(entry)
    frame = {"event_type": "price_change", "market": "m", "timestamp": timestamp, "price_changes": wire}
    [event] = decode_frame(msgspec.json.encode(frame))
    assert isinstance(event, PriceChange)
    return event


class TestPriceChangeQuotes:
    """A 2025 ``price_change`` entry quotes its token's best bid and ask after it: checked like `best_bid_ask`."""

    def test_each_tokens_last_quote_is_checked_once_the_whole_event_is_applied(self) -> None:
        """The first entry's quote is of a state the event moves past: only the last one for each token is
        compared, after every entry is in; both agree, so two checks and nothing else."""
        store = BookStore(quote_resync_after=1)
        store.apply(book_event([("0.5", "2")], [("0.6", "3")]))
        store.apply(book_event([("0.3", "1")], [("0.4", "1")], asset_id="mirror"))
        store.apply(
            price_changes(
                (ASSET, "BUY", "0.55", "1", "0.55/0.6"),
                ("mirror", "SELL", "0.45", "1", "0.3/0.4"),
                (ASSET, "BUY", "0.55", "0", "0.5/0.6"),
            )
        )
        assert store.checks() == BookChecks(best_bid_ask_checked=2) and not store.stale

    def test_a_wrong_quote_counts_in_the_same_run_as_best_bid_ask(self) -> None:
        """A price change whose quote disagrees with the book, then a `best_bid_ask` that does too: two in a
        row, so with a threshold of 2 the book goes stale; the price change itself is applied."""
        store = BookStore(quote_resync_after=2)
        store.apply(book_event([("0.5", "2")], [("0.6", "3")]))
        store.apply(price_changes((ASSET, "BUY", "0.4", "7", "0.4/0.6")))
        assert store.stale == set() and store.books[ASSET].bids() == [("0.5", "2"), ("0.4", "7")]
        store.apply(quote("0.4", "0.6"))
        assert store.stale == {ASSET} and store.mismatched == {ASSET}
        assert store.checks() == BookChecks(best_bid_ask_checked=2, best_bid_ask_mismatches=2, best_bid_ask_resyncs=1)

    def test_a_quote_that_is_not_a_number_is_a_mismatch_and_the_levels_still_apply(self) -> None:
        """The levels are good, so the event is applied, not rejected; a quote that is not a number cannot
        agree with the book and counts as a mismatch (here past the threshold of 1: the book is resynced).
        The quote of a token held elsewhere is not this store's to judge."""
        store = BookStore(quote_resync_after=1)
        store.apply(book_event([("0.5", "2")], [("0.6", "3")]))
        store.apply(price_changes((ASSET, "BUY", "0.5", "9", "x/0.6"), ("elsewhere", "SELL", "0.5", "1", "y/1")))
        assert store.books[ASSET].bids() == [("0.5", "9")] and store.stale == {ASSET}
        assert store.checks() == BookChecks(best_bid_ask_checked=1, best_bid_ask_mismatches=1, best_bid_ask_resyncs=1)

    def test_entries_without_a_quote_or_for_a_book_behind_or_before_its_rebuild_are_not_checked(self) -> None:
        """No quote (older shapes, other services): nothing to check. A stale book is known to be behind. An
        entry older than the snapshot a book was rebuilt from is not applied, so its quote is not compared."""
        store = BookStore(quote_resync_after=1)
        store.apply(book_event([("0.5", "2")], [("0.6", "3")]))
        store.apply(price_changes((ASSET, "BUY", "0.4", "7", None)))
        store.mark_stale([ASSET])
        store.apply(price_changes((ASSET, "BUY", "0.4", "8", "0.1/0.9")))
        store.rebuild(msgspec.structs.replace(book_event([("0.5", "2")], [("0.6", "3")]), timestamp=10))
        store.apply(price_changes((ASSET, "BUY", "0.4", "9", "0.1/0.9"), timestamp=9))
        assert store.checks() == BookChecks() and store.mismatched == set()
        store.apply(price_changes((ASSET, "BUY", "0.4", "9", "0.5/0.6"), timestamp=11))
        assert store.checks() == BookChecks(best_bid_ask_checked=1)


def resolution_of(asset_ids: list[str], winner: str, timestamp: int = 9) -> MarketResolved:
    return MarketResolved(
        market="m", assets_ids=asset_ids, winning_asset_id=winner, winning_outcome="Yes", timestamp=timestamp
    )


class TestResolution:
    def test_a_settled_market_closes_its_books_for_good(self) -> None:
        """market_resolved empties the held book, keeps its last trade, records the winner, and nothing
        changes it afterwards (updates and even a `book` count as skipped); readers still find it."""
        store = BookStore()
        store.apply(book_event([("0.5", "2")], [("0.6", "3")]))
        store.apply(
            decode_frame(b'{"event_type":"last_trade_price","asset_id":"1","price":"0.5","side":"BUY","size":"2"}')[0]
        )
        closed = store.apply(resolution_of([ASSET, "mirror"], winner=ASSET))
        assert [book.asset_id for book in closed] == [ASSET] and store.newly_resolved == closed
        view = store.readable[ASSET].view()
        assert (view.bids, view.asks, view.resolved, view.timestamp) == ([], [], True, 9)
        assert view.resolution == Resolution(winning_asset_id=ASSET, winning_outcome="Yes", timestamp=9)
        assert view.last_trade is not None and view.last_trade.price == "0.5"
        assert ASSET not in store.books and len(store) == 1
        store.apply(PriceChange(asset_id=ASSET, price="0.5", side="BUY", size="7"))
        store.apply(book_event([("0.3", "1")], []))
        assert store.readable[ASSET].view() == view and store.skipped == 2
        assert store.apply(resolution_of([ASSET], winner=ASSET)) == []  # once only

    def test_an_asset_waiting_for_its_book_gets_an_empty_closed_one(self) -> None:
        """A stale asset with no book (it could not be rebuilt) will never get a `book` now: it is closed
        empty; an asset the store does not follow is left alone."""
        store = BookStore()
        store.mark_stale(["waiting"])
        closed = store.apply(resolution_of(["waiting", "unfollowed"], winner="unfollowed"))
        assert [book.asset_id for book in closed] == ["waiting"] and not store.stale
        assert list(store.resolved) == ["waiting"] and store.readable["waiting"].view().resolved

    def test_a_closed_book_is_never_stale_and_drop_forgets_it(self) -> None:
        store = BookStore()
        store.apply(book_event([("0.5", "2")], []))
        store.apply(resolution_of([ASSET], winner="other"))
        store.mark_stale([ASSET])
        assert not store.stale
        store.drop([ASSET])
        assert len(store) == 0 and ASSET not in store.readable

    def test_a_closed_book_hands_over_closed(self) -> None:
        """Dumped and installed (a recycle, or the parent's copy after a crash), a closed book stays closed,
        with its resolution, and a `book` for it is still refused."""
        old = BookStore()
        old.apply(book_event([("0.5", "2")], []))
        old.apply(resolution_of([ASSET], winner=ASSET))
        wire = msgspec.msgpack.encode(old.dump())
        new = BookStore()
        new.install(msgspec.msgpack.decode(wire, type=list[BookState]))
        assert list(new.resolved) == [ASSET] and not new.books
        assert new.readable[ASSET].view() == old.readable[ASSET].view()
        assert new.apply(book_event([("0.3", "1")], [])) == []
