"""The fuzz target: one input through everything a hostile frame meets, with the invariants checked."""

from __future__ import annotations

import contextlib

import msgspec

from pool.models import BookEvent, BookStore, Level, MessageError, decode_frame
from pool.models._frame_ids import frame_ids_decoder

# Books the inputs can refer to ("1", "2", "3"), so price changes, trades and tick changes are applied too.
ASSETS = ("1", "2", "3")


def _store() -> BookStore:
    store = BookStore()
    for asset_id in ASSETS:
        store.apply(BookEvent(asset_id=asset_id, bids=[Level("0.4", "10")], asks=[Level("0.6", "5")], timestamp=1))
    return store


def check_one(data: bytes) -> None:
    """Route, decode and apply ``data`` (as bytes, and as the text a feed could hand over) the way the pool
    does. Raises AssertionError, or whatever escaped, when an invariant breaks."""
    with contextlib.suppress(msgspec.DecodeError, RecursionError):  # what `Publisher.push` catches
        frame_ids_decoder.decode(data)
    for frame in (data, data.decode("utf-8", "surrogateescape")):
        store = _store()
        apply_frame(store, frame)
        for book in store.books.values():
            _check_book(book.asset_id, book.bids(), descending=True)
            _check_book(book.asset_id, book.asks(), descending=False)


def apply_frame(store: BookStore, frame: bytes | str) -> None:
    """Apply ``frame`` as a worker does: an unreadable frame or a rejected event changes nothing."""
    try:
        events = decode_frame(frame)
    except MessageError:
        return
    for event in events:
        with contextlib.suppress(MessageError):
            store.apply(event)


def _check_book(asset_id: str, levels: list[tuple[str, str]], *, descending: bool) -> None:
    prices = [float(price) for price, _ in levels]
    assert prices == sorted(prices, reverse=descending) and len(set(prices)) == len(prices), (asset_id, levels)
    assert all(0 < price < 1 for price in prices), (asset_id, levels)
    assert all(float(size) > 0 for _, size in levels), (asset_id, levels)
