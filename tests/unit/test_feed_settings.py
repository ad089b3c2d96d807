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
        ("max_assets", 0),
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


def test_no_more_assets_than_the_service_sends_books_for() -> None:
    """Above the per-connection limit Polymarket sends no book data: refused up front, naming the limit."""
    too_many = [str(n) for n in range(MAX_ASSETS_PER_CONNECTION + 1)]
    with pytest.raises(ValueError, match=f"{MAX_ASSETS_PER_CONNECTION + 1} assets .* max_assets=500"):
        PolymarketFeed(object(), too_many)
    feed = PolymarketFeed(object(), ["1", "2"], max_assets=3)
    with pytest.raises(ValueError, match="4 assets would be more than max_assets=3"):
        anyio.run(feed.subscribe, ["3", "4", "4"])
    assert feed.stats.subscribed == 2  # nothing was added
    anyio.run(feed.subscribe, ["2", "3", "3"])  # a repeat and a known id take no room
    assert feed.stats.subscribed == 3
