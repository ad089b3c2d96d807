"""Hostile and broken input against a real pool: every bad event is counted once, its neighbours are
applied, and no input kills a worker or escapes `publish` (design promises 4 and 8)."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Sequence

import msgspec
import pytest

from pool import PersistentWorkerPool, PoolConfig
from pool._service._synthetic import SyntheticMarket
from pool._wire._protocol import MAX_FRAME_BYTES
from pool._wire._routing import slot_for
from pool.models import BookView, PoolEventKind, WorkerState
from tests.support import ReferenceBooks, as_decimals, wait_for

pytestmark = pytest.mark.timeout(90)

FAST = {"heartbeat_interval": 0.5, "shutdown_timeout": 5.0, "worker_startup_timeout": 20.0}
WORKERS = 2
DIGITS_5000 = "7" * 5000


def config(**overrides: object) -> PoolConfig:
    return PoolConfig(**{"worker_count": WORKERS, **FAST, **overrides})  # type: ignore[arg-type]


def assets_of(market: SyntheticMarket, worker_id: int) -> list[str]:
    return [asset_id for asset_id in market.asset_ids if slot_for(asset_id, WORKERS) == worker_id]


def book(asset_id: str, price: str = "0.4", size: str = "10", timestamp: int = 1) -> dict[str, object]:
    return {
        "event_type": "book",
        "asset_id": asset_id,
        "market": "m",
        "bids": [{"price": price, "size": size}],
        "asks": [{"price": "0.6", "size": "5"}],
        "timestamp": str(timestamp),
    }


def change(asset_id: object, price: object = "0.4", size: object = "11", side: object = "BUY") -> dict[str, object]:
    return {"event_type": "price_change", "asset_id": asset_id, "price": price, "side": side, "size": size}


def pids(pool: PersistentWorkerPool) -> list[int | None]:
    return [worker.pid for worker in pool.get_status().workers.values()]


def bids(pool: PersistentWorkerPool, asset_id: str) -> list[tuple[str, str]]:
    view: BookView = pool.get_book(asset_id, timeout=10)
    return view.bids


class TestOneBadEventCostsOnlyItself:
    def test_spoiled_events_in_an_array_frame_leave_their_neighbours_applied_and_are_counted_once(self) -> None:
        """The subscription answer is one array of books: spoiled entries (wrong types, bad values, not
        objects, a 5,000-digit timestamp) are each counted once, by one worker, and every valid book in
        the same frame is applied, on both workers."""
        market = SyntheticMarket(40, seed=3)
        mine = {worker: assets_of(market, worker) for worker in range(WORKERS)}
        a0, b0 = mine[0][:2]
        a1, b1 = mine[1][:2]
        spoiled: list[object] = [
            change(12345, size="3"),  # asset id a number: names no asset; the frame's first asset counts it
            change(a0, side=5),  # wrong type: counted by a0's worker only
            {**book(a1), "bids": "none"},  # `bids` a string: a rejected book, so a1 is stale
            {"event_type": "price_change", "price_changes": [{"asset_id": 7, "price": "0.5", "side": "BUY"}]},
            [[[[1]]]],
            42,
            {**book(b1), "timestamp": DIGITS_5000},
            change(b0, size=DIGITS_5000),  # well typed, a value too long: rejected where applied
        ]
        frame = json.dumps([book(a0), *spoiled[:3], book(b0), *spoiled[3:], book(b1, timestamp=2)])
        with PersistentWorkerPool(config()) as pool:
            before = pids(pool)
            pool.publish(frame)
            pool.flush(timeout=10)
            assert as_decimals(bids(pool, a0)) == as_decimals([("0.4", "10")])
            assert as_decimals(bids(pool, b0)) == as_decimals([("0.4", "10")])
            assert as_decimals(bids(pool, b1)) == as_decimals([("0.4", "10")])  # the later, valid book of b1
            assert pool.get_book(a1, timeout=10).stale  # its only book was rejected
            wait_for(lambda: pool.get_status().frames_rejected == len(spoiled), what="every spoiled event counted")
            status = pool.get_status()
            assert status.rejections == {"invalid_event": 5, "invalid_value": 1, "not_an_event": 2}
            assert sum(worker.errors for worker in status.workers.values()) == len(spoiled)
            assert pids(pool) == before  # nobody died of it

    def test_a_price_change_spanning_workers_with_one_bad_entry_is_applied_nowhere(self) -> None:
        """One bad entry rejects its whole event, on every worker it spans: no half-applied event."""
        market = SyntheticMarket(40, seed=5)
        a0, a1 = assets_of(market, 0)[0], assets_of(market, 1)[0]
        entries = [
            {"asset_id": a0, "price": "0.4", "side": "BUY", "size": "99"},
            {"asset_id": a1, "price": "0.4", "side": "BUY", "size": "-1"},
        ]
        with PersistentWorkerPool(config()) as pool:
            pool.publish([json.dumps(book(a0)), json.dumps(book(a1))])
            pool.publish(json.dumps({"event_type": "price_change", "market": "m", "price_changes": entries}))
            pool.flush(timeout=10)
            assert as_decimals(bids(pool, a0)) == as_decimals([("0.4", "10")])
            assert as_decimals(bids(pool, a1)) == as_decimals([("0.4", "10")])
            wait_for(lambda: pool.get_status().frames_rejected == 1, what="the event counted once")
            assert pool.get_status().rejections == {"invalid_value": 1}


class TestInputThatUsedToKill:
    def test_five_thousand_digit_numbers_are_rejections_not_deaths(self) -> None:
        """Sizes, prices and timestamps of 5,000 digits, as strings and as JSON numbers: each is one counted
        rejection; the workers live and the books beside them take later updates."""
        market = SyntheticMarket(20, seed=7)
        asset_id = market.asset_ids[0]
        hostile = [
            json.dumps(change(asset_id, size=DIGITS_5000)),
            json.dumps(change(asset_id, price="0." + DIGITS_5000)),
            json.dumps({**change(asset_id), "timestamp": DIGITS_5000}),
            json.dumps(change(asset_id)).replace('"timestamp"', '"x"')[:-1] + ',"timestamp":' + DIGITS_5000 + "}",
            json.dumps(book(asset_id, size=DIGITS_5000)),
        ]
        with PersistentWorkerPool(config()) as pool:
            before = pids(pool)
            pool.publish(json.dumps(book(asset_id)))
            pool.publish(hostile)
            pool.publish(json.dumps(book(asset_id, size="12", timestamp=3)))
            pool.flush(timeout=10)
            assert as_decimals(bids(pool, asset_id)) == as_decimals([("0.4", "12")])
            wait_for(lambda: pool.get_status().frames_rejected == len(hostile), what="each one counted")
            assert pids(pool) == before
            assert all(worker.status is WorkerState.RUNNING for worker in pool.get_status().workers.values())

    def test_deep_nesting_truncation_and_bad_text_are_counted_and_the_rest_of_the_list_is_applied(self) -> None:
        """`[[[[...]]]]` (4 KB and 40 KB), a truncated frame, invalid UTF-8 and a str with a lone surrogate,
        in the middle of one publish: counted, and the frames after them are applied."""
        market = SyntheticMarket(20, seed=11)
        asset_id = market.asset_ids[0]
        garbage: list[bytes | str] = [
            b"[" * 2048 + b"]" * 2048,
            b"[" * 20_000 + b"]" * 20_000,
            json.dumps(book(asset_id)).encode()[:-7],
            b'{"event_type":"book","asset_id":"\xff\xfe"}',
            '{"event_type":"book","asset_id":"\ud800"}',
        ]
        with PersistentWorkerPool(config()) as pool:
            pool.publish([*garbage, json.dumps(book(asset_id, size="13"))])
            pool.flush(timeout=10)
            assert as_decimals(bids(pool, asset_id)) == as_decimals([("0.4", "13")])
            status = pool.get_status()
            assert status.frames_rejected == len(garbage)
            assert status.rejections == {"not_json": 3, "too_deep": 2}

    def test_a_frame_larger_than_the_channel_is_refused_with_the_limit_named(self) -> None:
        """A single frame past `MAX_FRAME_BYTES` is counted as too large, not sent; the rest go on."""
        market = SyntheticMarket(20, seed=13)
        asset_id = market.asset_ids[0]
        huge = json.dumps(change(asset_id)).encode()[:-1] + b',"pad":"' + b"x" * MAX_FRAME_BYTES + b'"}'
        with PersistentWorkerPool(config()) as pool:
            pool.publish(json.dumps(book(asset_id)))
            pool.publish([huge, json.dumps(change(asset_id, size="14"))])
            del huge
            pool.flush(timeout=30)
            assert as_decimals(bids(pool, asset_id)) == as_decimals([("0.4", "14")])
            assert pool.get_status().rejections == {"too_large": 1}

    @pytest.mark.parametrize(
        ("argument", "message"),
        [(None, "got NoneType"), (123, "got int"), ({"event_type": "book"}, "got a dict")],
    )
    def test_publish_refuses_what_is_not_a_frame_and_says_what_it_takes(self, argument: object, message: str) -> None:
        with PersistentWorkerPool(config(worker_count=1)) as pool:
            with pytest.raises(TypeError, match=message) as caught:
                pool.publish(argument)  # type: ignore[arg-type]
            assert "publish takes a frame" in str(caught.value)
            assert pool.get_status().frames_rejected == 0


class TestRejectedBooksAreStaleNotInvisible:
    def test_a_published_book_the_worker_rejects_is_stale_and_resynced(self) -> None:
        """A `book` with a price of 1.5 leaves its asset stale (in `get_book` and `get_status`) and its id
        goes to `on_resync`; the next valid `book` makes it live."""
        market = SyntheticMarket(20, seed=17)
        asset_id = market.asset_ids[0]
        resynced: list[list[str]] = []
        with PersistentWorkerPool(config(), on_resync=resynced.append) as pool:
            pool.publish(json.dumps(book(asset_id, price="1.5")))
            pool.flush(timeout=10)
            wait_for(lambda: resynced == [[asset_id]], what="on_resync with the rejected book")
            assert pool.get_book(asset_id, timeout=10).stale
            assert pool.get_status().workers[slot_for(asset_id, WORKERS)].stale_books == 1
            pool.publish(json.dumps(book(asset_id, timestamp=2)))
            pool.flush(timeout=10)
            view = pool.get_book(asset_id, timeout=10)
            assert not view.stale and as_decimals(view.bids) == as_decimals([("0.4", "10")])
            wait_for(lambda: pool.get_status().workers[slot_for(asset_id, WORKERS)].stale_books == 0, what="live")

    def test_recovery_snapshots_the_worker_rejects_leave_those_books_stale(self) -> None:
        """A snapshot source that lies about some books (a price of "1.5", a 5,000-digit size, a number
        for an asset id): after a SIGKILL those books are stale and handed to `on_resync`; the honest ones
        are rebuilt exactly; the replacement lives."""
        market = SyntheticMarket(60, seed=19)
        reference = ReferenceBooks()
        snapshots = market.snapshots()
        reference.apply_frames(snapshots)
        victims = assets_of(market, 0)
        liars = {victims[0]: {"price": "1.5"}, victims[1]: {"size": DIGITS_5000}}

        def source(asset_ids: Sequence[str]) -> list[bytes]:
            frames = []
            for asset_id in asset_ids:
                snapshot = msgspec.json.decode(reference.snapshot(asset_id))
                if asset_id in liars:
                    snapshot["bids"] = [{**snapshot["bids"][0], **liars[asset_id]}, *snapshot["bids"][1:]]
                frames.append(msgspec.json.encode(snapshot))
            frames.append(json.dumps({**book(victims[2]), "asset_id": 99}).encode())  # skipped, not fatal
            return frames

        resynced: list[str] = []
        events: list[PoolEventKind] = []
        with PersistentWorkerPool(config(), snapshot_source=source, on_resync=resynced.extend) as pool:
            pool.add_listener(lambda event: events.append(event.kind))
            pool.publish(snapshots)
            pool.flush(timeout=10)
            victim = pool.get_status().workers[0].pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: sorted(resynced) == sorted(liars), timeout=30, what="the lied-about books resynced")
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.RUNNING, timeout=30, what="rebuilt")
            status = pool.get_status()
            assert status.workers[0].stale_books == len(liars)
            for asset_id in liars:
                assert pool.get_book(asset_id, timeout=10).stale
            for asset_id in victims[2:]:
                view = pool.get_book(asset_id, timeout=10)
                assert not view.stale
                assert as_decimals(view.bids) == reference.levels(asset_id)[0]
            assert status.workers[0].pid != victim and status.workers[0].restarts == 1
            assert PoolEventKind.BOOK_STALE in events


class TestHeldOutStream:
    def test_a_long_stream_with_spoiled_events_mixed_into_its_arrays_ends_exact(self) -> None:
        """800 books; the updates grouped into array frames with about 2,400 spoiled events mixed in (and
        garbage frames between): every book ends equal to a reference that saw only the valid events, and
        every spoiled event and garbage frame is counted exactly once."""
        rng = random.Random(31)
        market = SyntheticMarket(800, seed=29)
        snapshots = market.snapshots()
        reference = ReferenceBooks()
        reference.apply_frames(snapshots)
        spoilers: list[object] = [
            change(12345),
            change(market.asset_ids[0], side=5),
            change(market.asset_ids[1], size="9" * 5000),
            {"event_type": "price_change", "price_changes": [{"asset_id": 7, "price": "0.5", "side": "BUY"}]},
            {"event_type": "last_trade_price", "asset_id": market.asset_ids[2], "price": 0.5},
            42,
            [[1]],
        ]
        frames: list[bytes] = []
        spoiled = garbage = 0
        updates = list(market.updates(20_000))
        index = 0
        while index < len(updates):
            group = updates[index : index + rng.randint(1, 5)]
            index += len(group)
            reference.apply_frames(group)
            events: list[object] = []
            for frame in group:
                document = json.loads(frame)
                events.extend(document if isinstance(document, list) else [document])
            if rng.random() < 0.36:
                events.insert(rng.randint(0, len(events)), rng.choice(spoilers))
                spoiled += 1
            frames.append(json.dumps(events).encode())
            if rng.random() < 0.02:
                frames.append(rng.choice([b"garbage", b"[" * 3000 + b"]" * 3000, b'{"event_type":"book"']))
                garbage += 1
        assert spoiled > 2000
        with PersistentWorkerPool(config()) as pool:
            pool.publish(snapshots)
            pool.publish(frames)
            pool.flush(timeout=60)
            wait_for(lambda: pool.get_status().frames_rejected == spoiled + garbage, what="every rejection counted")
            for asset_id in market.asset_ids:
                view = pool.get_book(asset_id, timeout=10)
                assert not view.stale, asset_id
                assert (as_decimals(view.bids), as_decimals(view.asks)) == reference.levels(asset_id), asset_id
