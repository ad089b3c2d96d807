"""Properties of bad input (hypothesis): a malformed event never changes what its neighbours do, and no
input makes the decoder or the store raise anything but `MessageError`."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pool.models import BookStore
from tests.fuzz._target import apply_frame

ASSETS = ["1", "2", "3"]
prices = st.integers(min_value=1, max_value=99).map(lambda cents: f"0.{cents:02d}")
sizes = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False).map(str)
assets = st.sampled_from(ASSETS)
sides = st.sampled_from(["BUY", "SELL"])
levels = st.lists(st.fixed_dictionaries({"price": prices, "size": sizes}), max_size=6)

books = st.fixed_dictionaries(
    {"event_type": st.just("book"), "asset_id": assets, "market": st.just("m"), "bids": levels, "asks": levels}
)
one_level = st.fixed_dictionaries(
    {"event_type": st.just("price_change"), "asset_id": assets, "price": prices, "side": sides, "size": sizes}
)
entries = st.lists(
    st.fixed_dictionaries({"asset_id": assets, "price": prices, "side": sides, "size": sizes}), min_size=1, max_size=3
)
multi = st.fixed_dictionaries({"event_type": st.just("price_change"), "market": st.just("m"), "price_changes": entries})
trades = st.fixed_dictionaries(
    {"event_type": st.just("last_trade_price"), "asset_id": assets, "price": prices, "side": sides, "size": sizes}
)
valid_events = st.one_of(books, one_level, multi, trades)

# What a broken upstream or an attacker puts in a field.
bad_values: st.SearchStrategy[Any] = st.sampled_from(
    [5, -1, None, [], {}, "abc", "-1", "1.5", "1e5", "", "9" * 5000, [[[[]]]], True]
)


@st.composite
def spoiled(draw: st.DrawFn) -> Any:
    """A valid event with one field replaced or removed, or something that is not an event at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([42, "x", [[1]], None, [], {"foo": 1}]))
    event: dict[str, Any] = dict(draw(valid_events))
    if event.get("price_changes") and draw(st.booleans()):
        entry: dict[str, Any] = dict(event["price_changes"][0])
        entry[draw(st.sampled_from(sorted(entry)))] = draw(bad_values)
        event["price_changes"] = [entry, *event["price_changes"][1:]]
        return event
    field = draw(st.sampled_from(sorted(event)))
    if draw(st.booleans()):
        del event[field]
    else:
        event[field] = draw(bad_values)
    return event


def state(store: BookStore) -> dict[str, Any]:
    return {
        asset_id: (book.bids(), book.asks(), book.last_trade, book.tick_size, asset_id in store.stale)
        for asset_id, book in store.books.items()
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(valid_events, spoiled()), min_size=1, max_size=12))
def test_an_array_frame_applies_like_its_events_one_by_one(events: list[Any]) -> None:
    """Whatever is spoiled in an array frame, the books end as if each event had come in its own frame:
    the bad ones change nothing, the good ones apply in order."""
    together, one_by_one = BookStore(), BookStore()
    apply_frame(together, json.dumps(events).encode())
    for event in events:
        apply_frame(one_by_one, json.dumps(event).encode())
    assert state(together) == state(one_by_one)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda value: json.dumps(value).encode())))
def test_no_input_raises_anything_but_message_error(frame: bytes) -> None:
    apply_frame(BookStore(), frame)  # an exception other than MessageError fails the test


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(valid_events, spoiled()), min_size=1, max_size=6), st.integers(0, 400))
def test_truncated_frames_are_rejected_not_raised(events: list[Any], cut: int) -> None:
    frame = json.dumps(events).encode()
    apply_frame(BookStore(), frame[: min(cut, len(frame) - 1)])
