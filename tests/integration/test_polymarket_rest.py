"""`PolymarketRestSource` against a local CLOB server: batches, the single-book fallback, retries, unknown
assets, and a pool whose killed worker is rebuilt through it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import msgspec
import pytest

from pool import PersistentWorkerPool
from pool._service._synthetic import SyntheticMarket
from pool.feeds import PolymarketRestSource, RestSourceError, UnknownBookError
from pool.models import BookEvent, WorkerState, decode_frame
from tests.integration.clob_server import ClobServer
from tests.integration.supervised import assert_exact, config, owned_by, publish_tracked
from tests.support import ReferenceBooks, ReferenceSource, rest_shape, wait_for

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "polymarket"
RECORDED = (FIXTURES / "rest_book_2024-09.json").read_bytes()  # a real GET /book answer (no timestamp)
RECORDED_ID = msgspec.json.decode(RECORDED)["asset_id"]


def canonical(frames: list[bytes]) -> list[bytes]:
    """The frames re-encoded compactly and sorted: equal books compare equal whatever their whitespace."""
    return sorted(msgspec.json.encode(msgspec.json.decode(frame)) for frame in frames)


def serve(books: dict[str, bytes]) -> ClobServer:
    return ClobServer(lambda asset_ids: [books[a] for a in asset_ids if a in books])


@pytest.fixture
def books() -> dict[str, bytes]:
    market = SyntheticMarket(6, seed=8)
    served = {asset_id: rest_shape(market.snapshot(asset_id)) for asset_id in market.asset_ids}
    served[RECORDED_ID] = RECORDED
    return served


def fetch(source: PolymarketRestSource, asset_ids: list[str]) -> list[bytes]:
    return anyio.run(source.fetch, asset_ids)


def test_batches_return_every_known_book_and_leave_out_the_unknown(books: dict[str, bytes]) -> None:
    wanted = [*books, "999"]
    with serve(books) as server:
        got = fetch(PolymarketRestSource(server.url, batch_size=3), wanted)
        assert sorted(server.requests) == ["POST /books"] * 3  # 8 ids in batches of 3
    assert canonical(got) == canonical(list(books.values()))
    events = [decode_frame(frame)[0] for frame in got]  # REST books decode as books (no event_type)
    assert all(isinstance(event, BookEvent) for event in events)
    assert {event.asset_id for event in events if isinstance(event, BookEvent)} == set(books)


def test_without_the_batch_endpoint_it_asks_one_book_at_a_time(books: dict[str, bytes]) -> None:
    with serve(books) as server:
        server.batch = False
        got = fetch(PolymarketRestSource(server.url), [*books, "999"])
        assert server.requests.count("POST /books") == 1
        assert len([r for r in server.requests if r.startswith("GET /book?token_id=")]) == len(books) + 1
    assert canonical(got) == canonical(list(books.values()))


def test_a_timeout_is_retried_and_the_retry_succeeds(books: dict[str, bytes]) -> None:
    with serve(books) as server:
        server.stall, server.stall_seconds = 1, 1.5
        got = fetch(PolymarketRestSource(server.url, timeout=0.3, backoff=0.05), [RECORDED_ID])
        assert server.requests == ["POST /books", "POST /books"]
    assert canonical(got) == canonical([RECORDED])


def test_a_permanent_failure_is_a_clear_error(books: dict[str, bytes]) -> None:
    with serve(books) as server:
        server.fail = -1
        source = PolymarketRestSource(server.url, attempts=3, backoff=0.01)
        with pytest.raises(RestSourceError, match=r"POST http://127\.0\.0\.1:\d+/books failed 3 times; last: HTTP 503"):
            fetch(source, [RECORDED_ID])
        assert len(server.requests) == 3


def test_one_unknown_book_is_a_typed_error_naming_the_asset(books: dict[str, bytes]) -> None:
    with serve(books) as server:
        source = PolymarketRestSource(server.url)
        assert anyio.run(source.book, RECORDED_ID) == RECORDED
        with pytest.raises(UnknownBookError, match=r"no order book for asset 999: .*No orderbook exists") as caught:
            anyio.run(source.book, "999")
    assert caught.value.asset_id == "999"


@pytest.mark.parametrize(
    ("setting", "value"), [("timeout", 0), ("attempts", 0), ("batch_size", 0), ("backoff", -1), ("concurrency", 0)]
)
def test_bad_settings_are_refused(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        PolymarketRestSource("http://127.0.0.1:1", **{setting: value})  # type: ignore[arg-type]


class TestRecoveryThroughRest:
    def test_a_killed_worker_is_rebuilt_through_the_rest_source(self) -> None:
        """The server serves the reference's current books in REST shape; after a SIGKILL the slot's books
        come back through POST /books and every book equals the reference."""
        market = SyntheticMarket(200, seed=12)
        reference = ReferenceBooks()
        source = ReferenceSource(reference)
        with ClobServer(lambda ids: [rest_shape(frame) for frame in source(ids)]) as server:
            rest = PolymarketRestSource(server.url)
            with PersistentWorkerPool(config(), snapshot_source=rest) as pool:
                publish_tracked(pool, source, market.snapshots())
                publish_tracked(pool, source, list(market.updates(3_000)))
                pool.flush()
                victim = pool.get_status().workers[0].pid
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda: pool.get_status().workers[0].restarts == 1 and pool.is_healthy(), what="rebuild")
                publish_tracked(pool, source, list(market.updates(3_000)))
                pool.flush()
                assert_exact(pool, reference, market.asset_ids)
            assert "POST /books" in server.requests

    def test_a_permanent_rest_failure_leaves_the_books_stale_not_wrong(self) -> None:
        market = SyntheticMarket(200, seed=13)
        reference = ReferenceBooks()
        source = ReferenceSource(reference)
        with ClobServer(lambda ids: [rest_shape(frame) for frame in source(ids)]) as server:
            rest = PolymarketRestSource(server.url, attempts=2, backoff=0.01, timeout=0.5)
            with PersistentWorkerPool(config(), snapshot_source=rest) as pool:
                publish_tracked(pool, source, market.snapshots())
                pool.flush()
                dead_slot = owned_by(pool, market.asset_ids, 0)
                server.fail = -1
                victim = pool.get_status().workers[0].pid
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda: len(server.requests) >= 4, what="two fetches, each failing twice")
                assert pool.get_status().workers[0].status is WorkerState.RECOVERING
                assert pool.get_status().workers[0].stale_books == len(dead_slot)
                assert all(pool.get_book(a).stale for a in dead_slot)  # stale, never a wrong book
                assert_exact(pool, reference, owned_by(pool, market.asset_ids, 1))  # the others are untouched
                server.fail = 0  # the service comes back: the pool's retry rebuilds the books
                wait_for(lambda: not any(pool.get_book(a).stale for a in dead_slot), timeout=30, what="rebuild")
                assert_exact(pool, reference, market.asset_ids)
