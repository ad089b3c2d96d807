"""`PolymarketFeed` refuses settings that cannot work, naming the setting, before it connects anywhere."""

from __future__ import annotations

import anyio
import pytest

from pool.feeds import MAX_ASSETS_PER_CONNECTION, PolymarketFeed


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("ping_interval", 0),
        ("max_frame_bytes", 0),
        ("max_backoff", -1),
        ("open_timeout", 0),
        ("backoff", -0.1),
        ("assets_per_connection", 0),
        ("stall_timeout", 0),
        ("book_timeout", -1),
        ("connect_interval", -1),
    ],
)
def test_bad_settings_are_refused(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"PolymarketFeed {setting} must be"):
        PolymarketFeed(object(), ["1"], **{setting: value})  # type: ignore[arg-type]


def test_the_name_is_its_key_in_the_pool_status() -> None:
    assert PolymarketFeed(object(), ["1"]).stats.name == "polymarket"
    assert PolymarketFeed(object(), ["1"], name="second").stats.name == "second"


def test_idle_timeout_must_outlast_the_ping_interval() -> None:
    with pytest.raises(ValueError, match=r"idle_timeout \(5\) must be longer than ping_interval \(10\.0\)"):
        PolymarketFeed(object(), ["1"], idle_timeout=5)


def test_a_connection_is_never_given_more_assets_than_the_service_sends_books_for() -> None:
    with pytest.raises(ValueError, match=f"assets_per_connection=501 is more than the {MAX_ASSETS_PER_CONNECTION}"):
        PolymarketFeed(object(), ["1"], assets_per_connection=MAX_ASSETS_PER_CONNECTION + 1)


def test_assets_are_shared_out_in_order_and_any_number_is_taken() -> None:
    """1,201 assets at 200 a connection: 7 connections, the last with 1; `subscribe` fills the last one
    first and opens another past it; repeats and known ids take no room."""
    feed = PolymarketFeed(object(), [str(n) for n in range(1_201)])
    assert (feed.stats.subscribed, feed.stats.connections) == (1_201, 7)
    anyio.run(feed.subscribe, [str(n) for n in range(1_195, 1_401)])  # 6 known, 200 new
    assert (feed.stats.subscribed, feed.stats.connections) == (1_401, 8)
    assert not feed.stats.connected  # not running: nothing is open


def test_following_new_markets_needs_the_market_events() -> None:
    with pytest.raises(ValueError, match="on_new_market needs market_events=True"):
        PolymarketFeed(object(), ["1"], on_new_market=lambda market: True)
