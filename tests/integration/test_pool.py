"""The pool with real worker processes, real socket pairs and real signals."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import msgspec
import psutil
import pytest

from pool import (
    BrokenWorkerError,
    PersistentWorkerPool,
    PoolClosedError,
    PoolConfig,
    PoolTimeoutError,
    UnknownAssetError,
    WorkerStartupError,
)
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.models import BookView, ExitReason, FeedStatus, PoolState, WorkerState
from tests.integration import handlers
from tests.support import ReferenceBooks, as_decimals, captured_logs, child_pids, wait_for

pytestmark = pytest.mark.timeout(60)

FAST = {"heartbeat_interval": 0.5, "shutdown_timeout": 5.0, "worker_startup_timeout": 20.0}


def config(**overrides: object) -> PoolConfig:
    return PoolConfig(**{"worker_count": 2, **FAST, **overrides})  # type: ignore[arg-type]


def assert_book_equals_reference(view: BookView, reference: ReferenceBooks) -> None:
    bids, asks = reference.levels(view.asset_id)
    assert as_decimals(view.bids) == bids, view.asset_id
    assert as_decimals(view.asks) == asks, view.asset_id


@pytest.fixture(scope="module")
def market_stream() -> tuple[SyntheticMarket, list[bytes], list[bytes]]:
    market = SyntheticMarket(1000, seed=7)
    return market, market.snapshots(), list(market.updates(24_000))


class TestBooksAreExact:
    def test_four_workers_match_reference(
        self, market_stream: tuple[SyntheticMarket, list[bytes], list[bytes]]
    ) -> None:
        """4 workers, 1,000 books, 24,000 mixed messages: every book equals an independent reference."""
        market, snapshots, updates = market_stream
        reference = ReferenceBooks()
        reference.apply_frames(snapshots + updates)
        with PersistentWorkerPool(config(worker_count=4)) as pool:
            pool.publish(snapshots)
            for start in range(0, len(updates), 5_000):
                pool.publish(updates[start : start + 5_000])
            for asset_id in market.asset_ids:
                assert_book_equals_reference(pool.get_book(asset_id), reference)
            status = pool.get_status()
        assert status.messages_published == len(snapshots) + len(updates)
        assert status.total_books == 1000
        assert status.frames_rejected == 0
        assert all(w.books > 0 and w.messages > 0 for w in status.workers.values())
        assert sum(w.books for w in status.workers.values()) == 1000

    def test_read_your_writes_without_flush(self) -> None:
        """get_book right after publish (no flush) sees the write, every time."""
        market = SyntheticMarket(50, seed=3)
        with PersistentWorkerPool(config()) as pool:
            pool.publish(market.snapshots())
            for step in range(200):
                asset_id = market.asset_ids[step % 50]
                size = f"{step + 1}.5"
                pool.publish(
                    msgspec.json.encode(
                        {
                            "event_type": "price_change",
                            "asset_id": asset_id,
                            "market": "m",
                            "price": "0.5",
                            "side": "BUY",
                            "size": size,
                        }
                    )
                )
                assert ("0.5", size) in pool.get_book(asset_id).bids

    def test_per_asset_order(self) -> None:
        """5,000 writes to one level, interleaved with other traffic, end at the last value written."""
        market = SyntheticMarket(20, seed=5)
        hot = market.asset_ids[0]
        frames = []
        noise = market.updates(5_000)
        for size in range(1, 5_001):
            frames.append(
                msgspec.json.encode(
                    {
                        "event_type": "price_change",
                        "asset_id": hot,
                        "market": "m",
                        "price": "0.01",
                        "side": "BUY",
                        "size": str(size),
                    }
                )
            )
            frames.append(next(noise))
        with PersistentWorkerPool(config(worker_count=3)) as pool:
            pool.publish(market.snapshots())
            pool.publish(frames[: len(frames) // 2])
            assert pool.get_book(hot).bids[-1] == ("0.01", "2500")
            pool.publish(frames[len(frames) // 2 :])
            assert pool.get_book(hot).bids[-1] == ("0.01", "5000")

    def test_frames_published_while_a_worker_cannot_read_all_arrive_in_order(self) -> None:
        """A stopped worker cannot read: its frames queue behind the first, and the request that follows
        sends them all from the caller's thread, more than the socket holds. The loop finishes that write
        (the channel is blocked meanwhile) once the worker reads again, and every book ends exact."""
        market = SyntheticMarket(200, seed=13)
        snapshots, updates = market.snapshots(), list(market.updates(40_000))
        reference = ReferenceBooks()
        reference.apply_frames(snapshots + updates)
        with PersistentWorkerPool(config(heartbeat_interval=30.0, max_pending_messages=100_000)) as pool:
            pool.publish(snapshots)
            pool.flush()
            pids = [w.pid for w in pool.get_status().workers.values() if w.pid is not None]
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            books: list[BookView] = []
            reader = threading.Thread(target=lambda: books.append(pool.get_book(market.asset_ids[0], timeout=30)))
            try:
                for frame in updates:  # ~13 MB: far more than a socket buffer holds
                    pool.publish(frame)
                reader.start()
                channels = [slot.process._channel for slot in pool._core.slots]  # type: ignore[union-attr]
                wait_for(lambda: any(channel.blocked for channel in channels), what="a write left for the loop")
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            reader.join(timeout=30)
            pool.flush(timeout=30)
            assert_book_equals_reference(books[0], reference)
            for asset_id in market.asset_ids:
                assert_book_equals_reference(pool.get_book(asset_id), reference)
            assert pool.get_status().messages_published == len(snapshots) + len(updates)

    def test_publishing_threads_at_once_lose_nothing(self) -> None:
        """Eight threads publish frame by frame at once, each its own markets (so each book keeps its order):
        direct sends from those threads and the loop's writer share each socket under one lock, and every
        frame is applied, every book exact."""
        market = SyntheticMarket(400, seed=17)
        snapshots = market.snapshots()
        updates = list(market.updates(40_000))
        lanes: list[list[bytes]] = [[] for _ in range(8)]
        for frame in updates:  # by market (a frame may change both its tokens): each thread its own books
            lanes[int(json.loads(frame)["market"], 16) % 8].append(frame)
        with PersistentWorkerPool(config(worker_count=3)) as pool:
            pool.publish(snapshots)
            pool.flush()
            threads = [threading.Thread(target=lambda lane=lane: [pool.publish(f) for f in lane]) for lane in lanes]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=50)
            pool.flush(timeout=30)
            assert all(not thread.is_alive() for thread in threads)
            assert pool.get_status().messages_published == len(snapshots) + len(updates)
            assert all(slot.applied == slot.published for slot in pool._core.slots)
            reference = ReferenceBooks()
            reference.apply_frames(snapshots + updates)
            for asset_id in market.asset_ids:
                assert_book_equals_reference(pool.get_book(asset_id), reference)

    def test_malformed_frames_are_counted_and_skipped(self) -> None:
        """Bad frames mixed into the stream are counted; the workers live on and every book is right."""
        market = SyntheticMarket(200, seed=11)
        snapshots, updates = market.snapshots(), list(market.updates(4_000))
        bad = [
            b"garbage",  # parent: not JSON
            b'{"asset_id": 5}',  # parent: asset_id not a string
            b'{"foo": "bar"}',  # parent: no event type, not a book
            msgspec.json.encode(
                {
                    "event_type": "price_change",
                    "asset_id": market.asset_ids[0],
                    "market": "m",
                    "price": "1.7",
                    "side": "BUY",
                    "size": "1",
                }
            ),  # worker: price out of range
            msgspec.json.encode(
                {"event_type": "book", "asset_id": market.asset_ids[1], "bids": "none", "asks": []}
            ),  # worker: bad book
        ]
        ignorable = [b"PONG", msgspec.json.encode({"event_type": "new_market", "id": "1"})]
        # Well formed and routable, but of a type the books do not use: counted as unknown, not rejected.
        unknown = msgspec.json.encode({"event_type": "mid_price", "asset_id": market.asset_ids[2], "price": "0.5"})
        # A quote that changes no book: checked against it (and counted), neither unknown nor rejected.
        quote = msgspec.json.encode(
            {"event_type": "best_bid_ask", "asset_id": market.asset_ids[2], "best_bid": "0.4", "best_ask": "0.6"}
        )
        mixed = list(updates)
        for index, frame in enumerate([*bad, *ignorable, unknown, quote]):
            mixed.insert(500 * (index + 1), frame)
        reference = ReferenceBooks()
        reference.apply_frames(snapshots + updates)
        with PersistentWorkerPool(config()) as pool:
            pool.publish(snapshots)
            pool.publish(mixed)
            assert pool.wait_for_completion(timeout=30)
            status = pool.get_status()
            assert status.frames_rejected == len(bad)
            assert status.frames_unroutable == len(ignorable)
            assert sum(stats.unknown_events for stats in pool.get_stats().values()) == 1
            # The quote disagrees with its book (once: below the threshold); every quote that the 2025
            # price changes carry agrees with the books.
            checks = status.checks
            assert checks.best_bid_ask_mismatches == 1 and checks.best_bid_ask_checked > 1
            assert status.alive_workers == 2 and status.pool_status is PoolState.RUNNING
            for asset_id in market.asset_ids:
                assert_book_equals_reference(pool.get_book(asset_id), reference)

    def test_publishing_something_that_is_not_a_frame_says_what_publish_takes(self) -> None:
        """publish(123) is a TypeError naming what publish takes; a bad item inside a list is named too, after
        the frames before it were accepted."""
        market = SyntheticMarket(4, seed=43)
        with PersistentWorkerPool(config(worker_count=1)) as pool:
            with pytest.raises(TypeError, match=r"publish takes a frame \(bytes or str.*an iterable of them; got int"):
                pool.publish(123)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"an item is a float: 1\.5"):
                pool.publish([*market.snapshots(), 1.5])  # type: ignore[list-item]
            assert pool.get_status().messages_published == len(market.asset_ids)

    def test_unknown_asset(self) -> None:
        with (
            PersistentWorkerPool(config()) as pool,
            pytest.raises(UnknownAssetError, match="no `book` snapshot was published for it"),
        ):
            pool.get_book("123")


class TestHandlers:
    def test_callbacks_fire_with_the_right_counts(self, tmp_path: Path) -> None:
        """Each callback fires once per event per book it changed, in the worker that owns the book."""
        market = SyntheticMarket(100, seed=13)
        snapshots, updates = market.snapshots(), list(market.updates(3_000))
        expected: Counter[str] = Counter(on_snapshot=len(snapshots))
        for frame in updates:
            event = msgspec.json.decode(frame)
            kind = event["event_type"]
            if kind == "price_change":
                assets = (
                    {e["asset_id"] for e in event["price_changes"]} if "price_changes" in event else {event["asset_id"]}
                )
                expected["on_price_change"] += len(assets)
            else:
                expected["on_trade" if kind == "last_trade_price" else "on_tick_size_change"] += 1
        factory = functools.partial(handlers.RecordingHandler, str(tmp_path))
        with PersistentWorkerPool(config(worker_count=3), handler_factory=factory) as pool:
            pool.publish(snapshots + updates)
            pool.flush(timeout=30)
            pids = {w.pid for w in pool.get_status().workers.values()}
        seen: Counter[str] = Counter()
        for log in tmp_path.glob("worker-*.log"):
            seen.update(line.split()[0] for line in log.read_text().splitlines())
        assert seen == expected
        assert len(pids) == 3

    def test_handler_errors_are_counted_and_the_update_stands(self) -> None:
        """A raising callback is counted in handler_errors; the book still has the change."""
        market = SyntheticMarket(10, seed=17)
        asset_id = market.asset_ids[0]
        with PersistentWorkerPool(config(), handler_factory="tests.integration.handlers:failing_handler") as pool:
            pool.publish(market.snapshots())
            pool.publish(
                msgspec.json.encode(
                    {
                        "event_type": "price_change",
                        "asset_id": asset_id,
                        "market": "m",
                        "price": "0.42",
                        "side": "SELL",
                        "size": "9",
                    }
                )
            )
            assert ("0.42", "9") in pool.get_book(asset_id).asks
            stats = pool.get_stats()
        assert sum(s.handler_errors for s in stats.values()) == 1
        assert sum(s.errors for s in stats.values()) == 0

    def test_unpicklable_factory_is_refused_before_start(self) -> None:
        """A factory that captures a live resource cannot travel to a worker: refused at construction."""
        lock = threading.Lock()
        with pytest.raises(TypeError, match=r"cannot be pickled.*must not capture locks"):
            PersistentWorkerPool(config(), handler_factory=lambda worker_id: lock)

    def test_bad_import_path_is_refused_before_start(self) -> None:
        with pytest.raises(ValueError, match="package\\.module:factory"):
            PersistentWorkerPool(config(), handler_factory="no_colon_here")
        with pytest.raises(AttributeError):
            PersistentWorkerPool(config(), handler_factory="tests.integration.handlers:missing")


class TestAsync:
    @pytest.mark.anyio
    async def test_async_with(self, anyio_backend: str) -> None:
        """Under async with (asyncio and trio) the same methods are coroutines and give the same books."""
        market = SyntheticMarket(100, seed=19)
        snapshots, updates = market.snapshots(), list(market.updates(2_000))
        reference = ReferenceBooks()
        reference.apply_frames(snapshots + updates)
        async with PersistentWorkerPool(config()) as pool:
            await pool.start()  # already started: a no-op
            await pool.publish(snapshots)
            await pool.publish(updates)
            await pool.flush(timeout=30)
            for asset_id in market.asset_ids:
                assert_book_equals_reference(await pool.get_book(asset_id), reference)
            assert pool.is_healthy() and pool.get_alive_count() == 2
            await pool.shutdown()
            await pool.shutdown()  # idempotent
            assert pool.state is PoolState.STOPPED
        with pytest.raises(PoolClosedError):
            await pool.publish(snapshots)

    @pytest.mark.anyio
    async def test_exception_in_block_propagates_unwrapped(self, anyio_backend: str) -> None:
        """An exception inside async with reaches the caller as itself, and every worker is reaped."""
        with pytest.raises(ZeroDivisionError):
            async with PersistentWorkerPool(config()) as pool:
                pids = [w.pid for w in pool.get_status().workers.values()]
                1 / 0  # noqa: B018
        assert pool.state is PoolState.STOPPED
        assert not any(_alive(pid) for pid in pids)

    @pytest.mark.anyio
    async def test_cancelled_block_still_stops_workers(self, anyio_backend: str) -> None:
        """A cancel scope that fires inside async with still stops and reaps every worker."""
        with anyio.move_on_after(0.5):
            async with PersistentWorkerPool(config()) as pool:
                pids = [w.pid for w in pool.get_status().workers.values()]
                await anyio.sleep_forever()
        assert pool.state is PoolState.STOPPED
        assert not any(_alive(pid) for pid in pids)

    @pytest.mark.anyio
    async def test_a_task_that_only_publishes_still_lets_its_frames_go_out(self, anyio_backend: str) -> None:
        """A burst of one-frame publishes that awaits nothing else is applied while it lasts, not after it.

        `get_status()` learns of applied frames only from acknowledgements, which the loop reads when the
        publishing task yields; so a count that moves during the burst shows the writers and the reader ran.
        """
        market = SyntheticMarket(20, seed=23)
        updates = [frame for frame in market.updates(5_000) if b'"book"' not in frame and b"price_changes" not in frame]
        async with PersistentWorkerPool(config(worker_count=1, max_pending_messages=10_000_000)) as pool:
            await pool.publish(market.snapshots())
            await pool.flush(timeout=30)
            applied_before = pool.get_status().messages_applied
            published = 0
            # Bounded by frames (about a second of publishing), not by time: without turns it never ends.
            while pool.get_status().messages_applied == applied_before and published < 300_000:
                await pool.publish(updates[published % len(updates)])
                published += 1
            assert pool.get_status().messages_applied > applied_before, f"nothing applied in {published} frames"
            await pool.flush(timeout=30)


class TestLifecycle:
    def test_exception_in_block_leaves_no_process(self) -> None:
        """An exception inside `with` propagates, and every worker is gone afterwards."""
        before = child_pids()
        with pytest.raises(ZeroDivisionError), PersistentWorkerPool(config(worker_count=3)) as pool:
            assert len(child_pids() - before) == 3
            1 / 0  # noqa: B018
        assert pool.state is PoolState.STOPPED
        assert child_pids() - before == set()

    def test_stubborn_worker_is_killed_within_shutdown_timeout(self) -> None:
        """A worker that never finishes its batch and ignores SIGTERM is SIGKILLed soon after shutdown_timeout."""
        market = SyntheticMarket(4, seed=23)
        pool = PersistentWorkerPool(config(shutdown_timeout=1.0), handler_factory=handlers.stubborn_handler)
        with pool:
            pool.publish(market.snapshots())
            started = time.monotonic()
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 1.0 + 1.5
        exit_codes = {w.exit_code for w in pool.get_status().workers.values()}
        assert exit_codes == {-signal.SIGKILL}

    def test_lazy_start_warns_and_works(self) -> None:
        """Without a context manager the pool starts on first use, warns, and shuts down on request."""
        market = SyntheticMarket(10, seed=29)
        pool = PersistentWorkerPool(config())
        with captured_logs() as logs:
            pool.publish(market.snapshots())
        assert any(entry["event"] == "pool_lazy_start" and entry["log_level"] == "warning" for entry in logs)
        assert len(pool.get_book(market.asset_ids[0]).bids) > 0
        pool.shutdown()
        pool.shutdown()
        assert pool.state is PoolState.STOPPED
        with pytest.raises(PoolClosedError, match="create a new"):
            pool.publish(market.snapshots())

    def test_shutdown_without_waiting(self) -> None:
        """shutdown(wait=False) returns at once; a later shutdown() waits for the same stop; no thread is left."""
        pool = PersistentWorkerPool(config())
        with captured_logs() as logs:
            pool.start()
        assert not [entry for entry in logs if entry["event"] == "pool_lazy_start"]
        pool.shutdown(wait=False)
        pool.shutdown()
        assert pool.state is PoolState.STOPPED
        wait_for(
            lambda: not any(t.name in ("persistent-worker-pool", "pool-shutdown") for t in threading.enumerate()),
            what="the pool's threads to end",
        )

    def test_the_counts_read_after_shutdown_are_those_read_before(self) -> None:
        """A stopped worker's counts pass to its slot's totals once: the status read after the pool has
        stopped (what the CLI prints last) counts each rejected event and each checked quote once."""
        market = SyntheticMarket(10, seed=33)
        asset_id = market.asset_ids[0]
        frames = [
            b'{"event_type":"book","asset_id":"%s","bids":"x","asks":[]}' % market.asset_ids[1].encode(),
            b'{"event_type":"best_bid_ask","asset_id":"%s","best_bid":"0.01","best_ask":"0.99"}' % asset_id.encode(),
        ]
        with PersistentWorkerPool(config()) as pool:
            pool.publish([*market.snapshots(), *frames])
            pool.flush(timeout=10)
            before = pool.get_status()
        after = pool.get_status()
        assert (before.frames_rejected, before.checks.best_bid_ask_checked) == (1, 1)
        assert (after.frames_rejected, after.rejections, after.checks) == (1, before.rejections, before.checks)
        assert {w: s.errors for w, s in after.workers.items()} == {w: s.errors for w, s in before.workers.items()}

    def test_a_pool_runs_once(self) -> None:
        pool = PersistentWorkerPool(config(worker_count=1))
        with pool:
            pass
        with pytest.raises(PoolClosedError, match="a pool runs once"), pool:
            pass

    def test_feeds_show_in_the_status_under_distinct_names(self) -> None:
        """Several feeds on one pool (e.g. Polymarket's assets split over connections) each show under
        their name; a second feed of the same name is refused; a detached feed disappears."""

        def status_of(name: str, frames: int) -> FeedStatus:
            return FeedStatus(
                name=name, connected=True, reconnects=0, frames=frames, bytes=0, oversized=0, subscribed=1,
                last_frame_age=None,
            )  # fmt: skip

        with PersistentWorkerPool(config(worker_count=1)) as pool:
            detach_first = pool.attach_feed("first", lambda: status_of("first", 1))
            pool.attach_feed("second", lambda: status_of("second", 2))
            with pytest.raises(ValueError, match="a feed named 'second' is attached already"):
                pool.attach_feed("second", lambda: status_of("second", 3))
            assert {name: feed.frames for name, feed in pool.get_status().feeds.items()} == {"first": 1, "second": 2}
            detach_first()
            assert list(pool.get_status().feeds) == ["second"]
            assert pool.get_status().feeds["second"].undelivered == 0  # the field feeds may leave out

    def test_backpressure_times_out_with_a_clear_error(self) -> None:
        """With max_pending_messages reached and a slow worker, publish(timeout=...) raises and says why."""
        market = SyntheticMarket(2, seed=31)
        slow = functools.partial(handlers.slow_handler, 0.05)
        with PersistentWorkerPool(config(worker_count=1, max_pending_messages=10), handler_factory=slow) as pool:
            frames = [market.book(market.asset_ids[0]) for _ in range(200)]
            with pytest.raises(
                PoolTimeoutError, match=r"max_pending_messages=10\).*frames of this call were accepted"
            ) as caught:
                pool.publish(frames, timeout=0.2)
            assert pool.get_status().workers[0].pending <= 10
            assert "accepted" in str(caught.value)


class TestNoOrphans:
    def test_workers_die_with_a_killed_parent(self) -> None:
        """SIGKILL to the process that owns the pool: its workers exit within about a second."""
        command = [sys.executable, "-m", "tests.integration.orphan_parent"]
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as parent:
            try:
                assert parent.stdout is not None
                pids = json.loads(parent.stdout.readline())
                assert len(pids) == 2 and all(_alive(pid) for pid in pids)
            finally:
                parent.kill()
                parent.wait(timeout=10)
        wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=2.0, what="orphaned workers to exit")

    def test_a_worker_whose_parent_died_as_it_started_exits_before_importing_the_pool(self) -> None:
        """A replacement started as its parent is SIGKILLed must outlive it by no more than the interpreter's
        own start-up: run with the pid of a parent that is gone, a worker's command line exits with status 1
        before importing anything of the pool (the import alone takes ~0.1 s, and over 1 s under load)."""
        with PersistentWorkerPool(config(worker_count=1)) as pool:
            command = psutil.Process(pool.get_status().workers[0].pid).cmdline()
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert command[-1] == str(os.getpid())
        command[-1] = str(gone.pid)  # a parent that has exited, and is not this worker's parent anyway
        done = subprocess.run(
            command, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True, timeout=30
        )
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import")}
        assert done.returncode == 1, done.stderr
        assert "ctypes" in imported  # it did get as far as asking for the parent-death signal
        assert not {module for module in imported if module.split(".")[0] == "pool"}, sorted(imported)

    def test_workers_outlive_the_thread_that_started_the_pool(self) -> None:
        """Workers die with their parent *thread* under PR_SET_PDEATHSIG; a pool entered from a short-lived
        thread must still keep its workers once that thread has exited."""
        pool = PersistentWorkerPool(config())
        starter = threading.Thread(target=pool.__enter__)
        starter.start()
        starter.join(timeout=30)
        try:
            # The parent-death SIGKILL would have been sent when the thread exited, before join returned; a
            # worker that still answers a round trip afterwards was not hit by it.
            market = SyntheticMarket(20, seed=41)
            pool.publish(market.snapshots())
            assert all(pool.get_book(asset_id).bids for asset_id in market.asset_ids)
            assert all(w.books > 0 for w in pool.get_status().workers.values())
            assert pool.is_healthy()
        finally:
            pool.shutdown()


class TestFailures:
    def test_killed_worker_without_restart_budget_fails(self) -> None:
        """SIGKILL on a worker with max_restarts=0: the slot fails, the pool is degraded, calls on its books
        raise BrokenWorkerError, and the other worker serves on."""
        market = SyntheticMarket(40, seed=37)
        with PersistentWorkerPool(config(max_restarts=0)) as pool:
            pool.publish(market.snapshots())
            pool.flush(timeout=10)
            victim = pool.get_status().workers[0]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.FAILED, what="worker 0 marked failed")
            status = pool.get_status()
            assert status.pool_status is PoolState.DEGRADED and status.workers[0].exit_code == -signal.SIGKILL
            assert status.workers[0].last_exit_reason is ExitReason.KILLED
            assert not pool.is_healthy() and pool.get_alive_count() == 1
            owned_by_0 = next(a for a in market.asset_ids if slot_for(a, pool.config.worker_count) == 0)
            owned_by_1 = next(a for a in market.asset_ids if slot_for(a, pool.config.worker_count) == 1)
            with pytest.raises(BrokenWorkerError, match="killed by SIGKILL"):
                pool.get_book(owned_by_0)
            assert pool.get_book(owned_by_1).bids

    def test_failing_handler_factory_aborts_start(self) -> None:
        """A handler factory that raises: WorkerStartupError, with the worker's traceback as the cause."""
        before = child_pids()
        pool = PersistentWorkerPool(config(), handler_factory=handlers.broken_factory)
        with pytest.raises(WorkerStartupError, match="failed to build its handler") as caught, pool:
            pytest.fail("the pool must not start")
        assert "cannot build a handler for worker" in str(caught.value.__cause__)
        assert child_pids() - before == set()

    def test_worker_startup_timeout(self) -> None:
        """A worker that never reports ready is killed after worker_startup_timeout, and nothing is left."""
        pool = PersistentWorkerPool(config(worker_startup_timeout=0.01))
        with pytest.raises(WorkerStartupError, match="worker_startup_timeout"), pool:
            pytest.fail("the pool must not start")
        assert pool.state is PoolState.STOPPED


def _alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, counts as dead)."""
    if pid is None:
        return False
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)
