"""`PolymarketFeed` refuses settings that cannot work, naming the setting, before it connects anywhere."""

from __future__ import annotations

import pytest

from feeds import PolymarketFeed


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ping_interval", 0), ("max_frame_bytes", 0), ("max_backoff", -1), ("open_timeout", 0), ("backoff", -0.1)],
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
