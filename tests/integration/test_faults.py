"""Faults an adversary would inject, with real processes and bounded waits: every wait has a way out,
every loss a counter, every stop a bound (design promises 7 and 8)."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Sequence

import msgspec
import pytest

from pool import BrokenWorkerError, PersistentWorkerPool, PoolClosedError
from pool._service._synthetic import SyntheticMarket
from pool._wire._routing import slot_for
from pool.models import PoolEvent, PoolEventKind, PoolState, WorkerState, decode_frame, event_asset_ids
from tests.integration import handlers
from tests.integration.supervised import assert_exact, config, noticed, publish_tracked, running
from tests.support import ReferenceBooks, ReferenceSource, as_decimals, wait_for

pytestmark = pytest.mark.timeout(60)


class HangingSource:
    """A sync snapshot source whose first ``hangs`` calls block (a stuck HTTP client) until ``release``
    is set, then serve from ``inner``."""

    def __init__(self, inner: ReferenceSource, hangs: int) -> None:
        self.inner = inner
        self.hangs = hangs
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, asset_ids: Sequence[str]) -> list[bytes]:
        self.calls += 1
        if self.calls <= self.hangs:
            self.release.wait()
            raise ConnectionError("released at the end of the test")
        return self.inner(asset_ids)


def kill_worker(pool: PersistentWorkerPool, worker_id: int) -> None:
    pid = pool.get_status().workers[worker_id].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: noticed(pool, worker_id, pid), what="the kill noticed")


class TestHangingSyncSnapshotSource:
    def test_its_fetch_is_abandoned_at_the_timeout_and_retried(self) -> None:
        """A plain `def` source that never returns: its fetch is abandoned at ``snapshot_timeout`` and
        retried, and the retry rebuilds every book exactly."""
        market = SyntheticMarket(60, seed=301)
        reference = ReferenceBooks()
        source = HangingSource(ReferenceSource(reference), hangs=1)
        try:
            with PersistentWorkerPool(config(snapshot_timeout=0.5), snapshot_source=source) as pool:
                publish_tracked(pool, source.inner, market.snapshots())
                pool.flush(timeout=10)
                kill_worker(pool, 0)
                publish_tracked(pool, source.inner, list(market.updates(500)))
                wait_for(lambda: running(pool, 0), timeout=20, what="worker 0 rebuilt by the retry")
                pool.flush(timeout=10)
                assert source.calls >= 2
                assert_exact(pool, reference, market.asset_ids)
        finally:
            source.release.set()

    def test_shutdown_ends_within_its_timeout_while_the_source_hangs(self) -> None:
        """Shutdown during a fetch that never returns ends within ``shutdown_timeout`` plus a second."""
        market = SyntheticMarket(40, seed=303)
        source = HangingSource(ReferenceSource(ReferenceBooks()), hangs=1_000)
        pool = PersistentWorkerPool(config(shutdown_timeout=2.0), snapshot_source=source)
        try:
            pool.start()
            pool.publish(market.snapshots())
            pool.flush(timeout=10)
            kill_worker(pool, 0)
            wait_for(lambda: source.calls >= 1, what="the fetch to start")
            began = time.monotonic()
            pool.shutdown()
            took = time.monotonic() - began
            assert took < 2.0 + 1.0, f"shutdown took {took:.2f} s"
        finally:
            source.release.set()
            pool.shutdown()


class TestShutdownDuringPublish:
    @pytest.mark.parametrize("round_", range(3))
    def test_every_accepted_frame_is_applied_or_publish_says_how_many_were(self, round_: int) -> None:
        """Shutdown from one thread while another is inside one long publish: every frame `publish`
        accepted is applied before the workers stop; if it could not take them all it raises
        `PoolClosedError` saying how many it accepted (never a normal return with frames left behind)."""
        market = SyntheticMarket(200, seed=307 + round_)
        updates = list(market.updates(300_000))
        pool = PersistentWorkerPool(config(shutdown_timeout=20.0))
        pool.start()
        pool.publish(market.snapshots())
        outcome: list[BaseException | None] = []

        def publish_all() -> None:
            try:
                pool.publish(updates)
            except BaseException as exc:  # what the test is about: which error, and what it says
                outcome.append(exc)
            else:
                outcome.append(None)

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        wait_for(lambda: pool.get_status().messages_published > 50_000, what="the publish under way")
        pool.shutdown()
        publisher.join(timeout=30)
        assert not publisher.is_alive() and len(outcome) == 1
        status = pool.get_status()
        snapshots = len(market.asset_ids)
        error = outcome[0]
        if error is None:
            assert status.messages_published == snapshots + len(updates)
        else:
            assert isinstance(error, PoolClosedError), repr(error)
            assert error.accepted == status.messages_published - snapshots, (error.accepted, str(error))
            assert f"{error.accepted:,} of its frames" in str(error)
        # Nothing left behind: every delivery queued for a worker was applied by it.
        assert [w.pending for w in status.workers.values()] == [0, 0] and status.frames_dropped == 0, repr(error)


class SlowSource:
    """A sync snapshot source that takes ``delay`` seconds to answer (a slow REST service), then serves
    the reference's books as they are at that moment."""

    def __init__(self, inner: ReferenceSource, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.calls = 0

    def __call__(self, asset_ids: Sequence[str]) -> list[bytes]:
        self.calls += 1
        time.sleep(self.delay)
        return self.inner(asset_ids)


def assets_of(frame: bytes) -> set[str]:
    return {a for event in decode_frame(frame) for a in event_asset_ids(event)}


def workers_of(frame: bytes, worker_count: int = 2) -> set[int]:
    return {slot_for(a, worker_count) for a in assets_of(frame)}


def only_for(frame: bytes, worker_id: int) -> bool:
    return workers_of(frame) == {worker_id}


def deliveries(frames: list[bytes]) -> int:
    """How many worker deliveries ``frames`` make: one per distinct worker a frame's assets route to."""
    return sum(len(workers_of(frame)) for frame in frames)


class TestRecoveryUnderTraffic:
    def test_drops_are_counted_apart_and_recovery_converges(self) -> None:
        """A killed worker's source takes 1 s a fetch while its 300-frame buffer fills in a fraction of
        that: the slot still comes back during the traffic (one fetch again at most, then its books are
        marked stale and handed to ``on_resync``), the dropped frames are counted in ``frames_dropped``
        and not in ``messages_applied``, and a `book` for each resynced asset makes every book exact."""
        market = SyntheticMarket(100, seed=311)
        reference = ReferenceBooks()
        source = SlowSource(ReferenceSource(reference), delay=1.0)
        resynced: list[str] = []
        with PersistentWorkerPool(
            config(max_pending_messages=300), snapshot_source=source, on_resync=resynced.extend
        ) as pool:
            published: list[bytes] = []
            publish_tracked(pool, source.inner, market.snapshots())
            pool.flush(timeout=10)
            kill_worker(pool, 0)
            deadline = time.monotonic() + 20
            while not running(pool, 0):  # steady traffic, about 10,000 frames/s, until the slot is back
                assert time.monotonic() < deadline, f"still recovering after {source.calls} fetches"
                chunk = list(market.updates(100))
                publish_tracked(pool, source.inner, chunk)
                published.extend(chunk)
                time.sleep(0.01)
            assert source.calls <= 2
            pool.flush(timeout=10)
            status = pool.get_status()
            dropped = status.workers[0].frames_dropped
            assert dropped > 0 and status.frames_dropped == dropped and status.workers[1].frames_dropped == 0
            snapshot_deliveries = len(market.asset_ids)
            assert status.messages_applied + dropped == snapshot_deliveries + deliveries(published)
            assert resynced and status.workers[0].stale_books == len(set(resynced))
            publish_tracked(pool, source.inner, [reference.snapshot(a) for a in sorted(set(resynced))])
            pool.flush(timeout=10)
            assert pool.get_status().workers[0].stale_books == 0
            assert_exact(pool, reference, market.asset_ids)

    def test_a_publish_waiting_for_room_goes_on_when_its_worker_dies(self) -> None:
        """A publish blocked on a stopped worker's full queue returns once that worker is killed, while
        the slot is still recovering: a recovering slot never blocks publish."""
        market = SyntheticMarket(60, seed=313)
        gate = threading.Event()  # the source fails until set: the slot stays recovering
        source = ReferenceSource(ReferenceBooks(), gate=gate)
        with PersistentWorkerPool(
            config(max_pending_messages=200, heartbeat_interval=5.0), snapshot_source=source
        ) as pool:
            publish_tracked(pool, source, market.snapshots())
            pool.flush(timeout=10)
            pid = pool.get_status().workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            frames = [f for f in market.updates(3_000) if only_for(f, 0)]
            done = threading.Event()

            def publish_then_say_so() -> None:
                pool.publish(frames)
                done.set()

            publisher = threading.Thread(target=publish_then_say_so)
            publisher.start()
            wait_for(lambda: pool.get_status().workers[0].pending >= 200, what="the publish to wait for room")
            assert not done.is_set()
            os.kill(pid, signal.SIGKILL)
            assert done.wait(timeout=10), "publish still waiting after its worker died"
            assert pool.get_status().workers[0].status is WorkerState.RECOVERING
            publisher.join(timeout=10)
            gate.set()
            wait_for(lambda: running(pool, 0), timeout=20, what="worker 0 back")


class TestCountersAcrossRestarts:
    def test_rejections_and_handler_errors_outlive_the_process_that_counted_them(self) -> None:
        """`frames_rejected`, a worker's ``errors`` and ``handler_errors`` are the slot's: a restart keeps
        them (the CLI's exit code is based on them)."""
        market = SyntheticMarket(40, seed=317)
        with PersistentWorkerPool(config(), handler_factory=handlers.failing_handler) as pool:
            pool.publish(market.snapshots())
            mine = [a for a in market.asset_ids if slot_for(a, 2) == 0]
            bad = [
                b'{"event_type":"price_change","asset_id":"%s","price":"2.5","side":"BUY","size":"1"}' % a.encode()
                for a in mine[:5]
            ]
            pool.publish(bad + list(market.updates(500)))
            pool.flush(timeout=10)
            before = pool.get_status()
            worker = before.workers[0]
            assert worker.errors == 5 and before.frames_rejected == 5 and worker.handler_errors > 0
            kill_worker(pool, 0)
            wait_for(lambda: running(pool, 0), timeout=20, what="worker 0 back")
            after = pool.get_status()
            assert after.workers[0].errors == 5 and after.frames_rejected == 5
            assert after.workers[0].handler_errors == worker.handler_errors
            assert after.workers[0].rejections == worker.rejections

    def test_a_publish_with_frames_for_a_failed_worker_delivers_the_rest_and_says_how_many(self) -> None:
        """Worker 0 has failed for good: a publish with frames for both workers gives every frame for
        worker 1 to it, then raises `BrokenWorkerError` saying how many were accepted and how many not."""
        market = SyntheticMarket(60, seed=319)
        reference = ReferenceBooks()
        with PersistentWorkerPool(config(max_restarts=0)) as pool:
            snapshots = market.snapshots()
            reference.apply_frames(snapshots)
            pool.publish(snapshots)
            pool.flush(timeout=10)
            kill_worker(pool, 0)
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.FAILED, what="worker 0 failed")
            frames = list(market.updates(2_000))
            reference.apply_frames(frames)
            with pytest.raises(BrokenWorkerError) as caught:
                pool.publish(frames)
            only_0 = sum(only_for(f, 0) for f in frames)
            assert (caught.value.accepted, caught.value.undelivered) == (len(frames) - only_0, only_0)
            assert f"{only_0:,} were for failed workers only" in str(caught.value)
            pool.flush(
                timeout=10,
            )
            for asset_id in [a for a in market.asset_ids if slot_for(a, 2) == 1]:
                view = pool.get_book(asset_id)
                assert (as_decimals(view.bids), as_decimals(view.asks)) == reference.levels(asset_id)


def poisoned(frame: bytes, marker: str) -> bytes:
    """``frame`` (a one-level price change) with hash ``marker`` and no timestamp: a replay after a rebuild
    applies it again (an update without a timestamp is never older than a snapshot), so it hangs every
    replacement that is sent it."""
    document = msgspec.json.decode(frame)
    document["hash"] = marker
    del document["timestamp"]
    return msgspec.json.encode(document)


def is_one_level(frame: bytes) -> bool:
    document = msgspec.json.decode(frame)
    return isinstance(document, dict) and document.get("event_type") == "price_change" and "side" in document


class TestPoisonFrame:
    def test_a_frame_that_hangs_every_worker_is_quarantined_after_the_second_hang(self) -> None:
        """A handler never returns from one frame, in the middle of 1,500 others: the first hang says
        nothing of where it hung, the replacement is sent those frames one at a time and hangs on the same
        frame, which is then skipped for good. The third process serves every book: the others exact, the
        poisoned one stale (and handed to ``on_resync``) until its next `book`. While a worker hangs, the
        pool is not healthy and the worker not responsive."""
        market = SyntheticMarket(40, seed=331)
        reference = ReferenceBooks()
        source = ReferenceSource(reference)
        resynced: list[str] = []
        events: list[PoolEvent] = []
        seen_while_hung: list[tuple[bool, bool, PoolState]] = []
        factory = functools.partial(handlers.poisoned_handler, "poison")
        settings = config(heartbeat_interval=0.25)
        with PersistentWorkerPool(
            settings, handler_factory=factory, snapshot_source=source, on_resync=resynced.extend
        ) as pool:

            def record(event: PoolEvent) -> None:
                events.append(event)
                if event.kind is PoolEventKind.WORKER_HUNG:  # inline on the loop, before the hung worker is killed
                    status = pool.get_status()
                    seen_while_hung.append((pool.is_healthy(), status.workers[0].responsive, status.pool_status))

            pool.add_listener(record)
            snapshots = market.snapshots()
            publish_tracked(pool, source, snapshots)
            pool.flush(timeout=10)
            frames = list(market.updates(1_500))
            index = next(i for i in range(700, len(frames)) if only_for(frames[i], 0) and is_one_level(frames[i]))
            frames[index] = poisoned(frames[index], "poison")
            (poisoned_asset,) = assets_of(frames[index])
            publish_tracked(pool, source, frames)
            wait_for(lambda: pool.get_status().frames_quarantined == 1, timeout=30, what="the quarantine")
            wait_for(lambda: running(pool, 0), timeout=20, what="worker 0 back")
            pool.flush(timeout=10)

            hangs = [e for e in events if e.kind is PoolEventKind.WORKER_HUNG]
            assert [e.worker_id for e in hangs] == [0, 0]
            assert seen_while_hung == [(False, False, PoolState.DEGRADED)] * 2
            quarantined = [e for e in events if e.kind is PoolEventKind.FRAME_QUARANTINED]
            assert [(e.worker_id, e.asset_ids) for e in quarantined] == [(0, [poisoned_asset])]
            status = pool.get_status()
            assert status.workers[0].frames_quarantined == 1 and status.workers[1].frames_quarantined == 0
            assert status.messages_applied == len(snapshots) + deliveries(frames) - 1
            assert resynced == [poisoned_asset] and status.workers[0].stale_books == 1
            assert pool.get_book(poisoned_asset).stale
            others = [a for a in market.asset_ids if a != poisoned_asset]
            assert_exact(pool, reference, others)
            assert pool.is_healthy() and status.workers[0].responsive

            publish_tracked(pool, source, [reference.snapshot(poisoned_asset)])  # the feed resubscribes
            pool.flush(timeout=10)
            assert_exact(pool, reference, market.asset_ids)
            assert pool.get_status().workers[0].restarts == 2
