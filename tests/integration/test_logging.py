"""The library logs like a library: through the standard library, under `pool.*` names, in tallies."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter

import msgspec
import pytest

from pool import PersistentWorkerPool, PoolConfig
from pool._service._logging import configure_logging
from pool._service._synthetic import SyntheticMarket
from tests.support import captured_logs, wait_for

pytestmark = pytest.mark.timeout(60)


def config(**overrides: object) -> PoolConfig:
    return PoolConfig(**{"worker_count": 2, "heartbeat_interval": 0.5, **overrides})  # type: ignore[arg-type]


def test_a_thousand_books_going_stale_and_live_again_take_fewer_than_ten_lines() -> None:
    """1,000 books marked stale, then made live again by 1,000 `book` frames published one by one: the
    listener sees every book, the log a handful of tallied lines whose counts add up to 1,000 each way."""
    market = SyntheticMarket(1000, seed=401)
    live: list[str] = []
    with captured_logs() as logs, PersistentWorkerPool(config()) as pool:
        pool.add_listener(lambda event: live.extend(event.asset_ids or []) if event.kind == "book_live" else None)
        pool.publish(market.snapshots())
        pool.mark_stale(market.asset_ids)
        for asset_id in market.asset_ids:
            pool.publish(market.book(asset_id))
        pool.flush(timeout=30)
        wait_for(lambda: len(live) == 1000, what="every book_live event")
    book_lines = [entry for entry in logs if entry["event"] in ("book_stale", "book_live")]
    assert len(book_lines) < 10, book_lines
    for kind in ("book_stale", "book_live"):
        assert sum(int(str(e["books"])) for e in book_lines if e["event"] == kind) == 1000
    assert sorted(live) == sorted(market.asset_ids)


def test_a_handler_failing_on_every_update_is_tallied_with_a_count() -> None:
    """20,000 failing callbacks in a burst are a few `handler_failed` lines from `pool.worker`, whose counts
    sum to the handler_errors the workers report."""
    market = SyntheticMarket(50, seed=403)
    factory = "tests.integration.handlers:failing_handler"
    with captured_logs() as logs, PersistentWorkerPool(config(), handler_factory=factory) as pool:
        pool.publish(market.snapshots())
        pool.publish(list(market.updates(20_000)))
        pool.flush(timeout=30)
        errors = sum(stats.handler_errors for stats in pool.get_stats().values())
    failed = [entry for entry in logs if entry["event"] == "handler_failed"]
    assert errors > 10_000
    assert 0 < len(failed) < 20, len(failed)
    assert sum(int(str(entry["count"])) for entry in failed) == errors  # the final report releases the rest
    assert {entry["logger"] for entry in failed} == {"pool.worker"}
    assert all(entry["callback"] == "on_price_change" and "handler bug" in str(entry["error"]) for entry in failed)


def test_rejected_frames_are_tallied_in_the_parent_and_in_the_workers() -> None:
    """Frames the parent rejects and events the workers reject both come out as counted tallies."""
    market = SyntheticMarket(10, seed=409)
    bad_price = msgspec.json.encode(
        {"event_type": "price_change", "asset_id": market.asset_ids[0], "price": "7", "side": "BUY", "size": "1"}
    )
    with captured_logs() as logs, PersistentWorkerPool(config()) as pool:
        pool.publish(market.snapshots())
        pool.publish([b"garbage"] * 500 + [bad_price] * 500)
        pool.flush(timeout=30)
        assert pool.get_status().frames_rejected == 1000
    counts = Counter[str]()
    for entry in logs:
        if entry["event"] in ("frame_rejected", "event_rejected"):
            counts[str(entry["event"])] += int(str(entry["count"]))
    assert counts == {"frame_rejected": 500, "event_rejected": 500}
    assert sum(1 for entry in logs if entry["event"] in counts) < 10


def test_plain_logging_and_structlog_rendering_both_work() -> None:
    """With `logging` configured the plain way, lines read `event key=value` under their logger names; with
    the service's structlog formatter, each is one JSON object with the same fields."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    plain, rendered = io.StringIO(), io.StringIO()
    try:
        configure_logging(json_lines=True, level=logging.INFO, stream=rendered)
        extra = logging.StreamHandler(plain)
        extra.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        root.addHandler(extra)
        with PersistentWorkerPool(config(worker_count=1)):
            pass
    finally:
        root.handlers[:], root.level = handlers, level
    lines = plain.getvalue().splitlines()
    assert any(line.startswith("pool INFO pool_started ") and " workers=1 " in line for line in lines), lines
    assert any(line.startswith("pool INFO worker_exited ") and " reason='shutdown' " in line for line in lines)
    started = [json.loads(line) for line in rendered.getvalue().splitlines() if '"pool_started"' in line]
    assert len(started) == 1
    assert started[0]["logger"] == "pool" and started[0]["level"] == "info" and started[0]["workers"] == 1
