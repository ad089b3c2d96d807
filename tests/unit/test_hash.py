"""The exchange's book hash, recomputed: every recorded book reproduces its own ``hash``, Polymarket's test
vector too, and a changed level is caught only when every field the current form covers is known."""

from __future__ import annotations

import msgspec
import pytest

from pool.models import BookChecks, BookEvent, BookStore, decode_frame
from pool.models._hash import check_hash
from tests.support import HASH_VECTOR as VECTOR
from tests.support import fixture_bytes, hashed_books, sequence_objects, spoiled


def book_of(raw: bytes) -> BookEvent:
    (event,) = decode_frame(raw)
    assert isinstance(event, BookEvent)
    return event


class TestCheckHash:
    @pytest.mark.parametrize("raw", hashed_books())
    def test_every_recorded_book_matches_its_own_hash(self, raw: bytes) -> None:
        assert check_hash(book_of(raw)) == "matched"

    def test_the_current_form_of_ten_fields_matches_polymarkets_vector(self) -> None:
        assert check_hash(VECTOR) == "matched"
        assert check_hash(msgspec.structs.replace(VECTOR, hash="0x" + VECTOR.hash.upper())) == "matched"

    def test_a_websocket_book_verifies_with_the_metadata_a_rest_book_taught(self) -> None:
        """The October 2025 WebSocket book lacks min_order_size and neg_risk: alone it cannot be checked;
        with the REST book's values it matches."""
        lines = sequence_objects("sequence_2025-10_price_change_v2.txt")
        ws, rest = book_of(lines[0]), book_of(lines[2])
        assert check_hash(ws) == "unverifiable"
        assert (
            check_hash(ws, min_order_size=rest.min_order_size, tick_size=rest.tick_size, neg_risk=rest.neg_risk)
            == "matched"
        )

    def test_a_changed_level_is_a_mismatch_only_where_every_hashed_field_is_known(self) -> None:
        """With all ten fields (or none of the later ones: the 2024 form without a timestamp), a changed
        size is a mismatch; with a timestamp but no metadata it might be the newer form: unverifiable."""
        assert check_hash(spoiled(VECTOR)) == "mismatched"
        assert check_hash(spoiled(book_of(fixture_bytes("ws_book_2024-09.json")))) == "mismatched"
        assert check_hash(spoiled(book_of(fixture_bytes("ws_book_2024-11.json")))) == "unverifiable"
        without_trade = msgspec.structs.replace(spoiled(VECTOR), last_trade_price=None)
        assert check_hash(without_trade) == "unverifiable"
        assert check_hash(without_trade, last_trade_price="0.5") == "mismatched"

    def test_a_book_without_a_hash_is_not_checked(self) -> None:
        assert check_hash(msgspec.structs.replace(VECTOR, hash="")) is None


class TestStoreVerifiesHashes:
    def test_the_store_counts_each_book_and_learns_the_metadata(self) -> None:
        """With verify_hashes, the October 2025 sequence counts: its WebSocket book unverifiable, both REST
        books matched (and both price changes' quotes agree with the book they reach); the WebSocket book
        sent again then matches with what the REST book taught."""
        lines = sequence_objects("sequence_2025-10_price_change_v2.txt")
        store = BookStore(verify_hashes=True)
        for raw in lines:
            for event in decode_frame(raw):
                store.apply(event)
        assert store.checks() == BookChecks(best_bid_ask_checked=2, hashes_matched=2, hashes_unverifiable=1)
        store.apply(book_of(lines[0]))
        assert store.checks().hashes_matched == 3

    def test_off_by_default(self) -> None:
        store = BookStore()
        store.apply(spoiled(VECTOR))
        assert store.checks() == BookChecks()
