"""Supervision with real processes and real signals: restarts, hangs, crash loops, exact rebuilds."""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import time

import msgspec
import psutil
import pytest

from pool import BrokenWorkerError, PersistentWorkerPool
from pool._service._synthetic import SyntheticMarket
from pool.models import ExitReason, PoolEvent, PoolEventKind, PoolState, WorkerState
from tests.integration import handlers
from tests.integration.supervised import assert_exact, config, noticed, owned_by, publish_tracked, running
from tests.support import ReferenceBooks, ReferenceSource, captured_logs, wait_for

pytestmark = pytest.mark.timeout(120)


class TestRestartAndRebuild:
    def test_chaos_random_sigkills_leave_every_book_exact(self) -> None:
        """4 workers, 1,000 books, 100,000 messages, a dozen random SIGKILLs while publishing: every book
        ends equal to the reference, none stale, and the status counts every restart."""
        market = SyntheticMarket(1000, seed=101)
        reference = ReferenceBooks()
        source = ReferenceSource(reference)
        snapshots = market.snapshots()
        updates = list(market.updates(100_000))  # after the snapshots: timestamps follow publish order
        chooser = random.Random(5)
        kills = 0
        with PersistentWorkerPool(config(worker_count=4), snapshot_source=source) as pool:
            publish_tracked(pool, source, snapshots)
            for index, start in enumerate(range(0, len(updates), 2_000)):
                publish_tracked(pool, source, updates[start : start + 2_000])
                if index % 4 == 1:  # 12 kills, spread over the run, each of a randomly chosen running worker
                    wait_for(lambda: any(running(pool, w) for w in range(4)), timeout=30, what="a running worker")
                    victim = chooser.choice(
                        [w for w in pool.get_status().workers.values() if w.status is WorkerState.RUNNING]
                    )
                    assert victim.pid is not None
                    os.kill(victim.pid, signal.SIGKILL)
                    kills += 1
                    # publish returns without a round trip to the loop: wait until the pool has seen this exit,
                    # so the next kill cannot pick the same, already dead, process.
                    wait_for(functools.partial(noticed, pool, victim.worker_id, victim.pid), what="the kill noticed")
            pool.flush(timeout=60)
            wait_for(lambda: all(running(pool, w) for w in range(4)), timeout=30, what="every worker running")
            assert_exact(pool, reference, market.asset_ids)
            status = pool.get_status()
        assert kills == 13
        assert status.restarts == kills
        assert status.pool_status is PoolState.RUNNING and status.total_books == 1000
        assert all(w.stale_books == 0 for w in status.workers.values())
        assert {w.last_exit_reason for w in status.workers.values() if w.restarts} == {ExitReason.KILLED}

    def test_hung_worker_is_detected_killed_and_rebuilt(self) -> None:
        """A SIGSTOPped worker misses heartbeats, is killed and replaced, and its books end exact."""
        market = SyntheticMarket(200, seed=103)
        reference = ReferenceBooks()
        source = ReferenceSource(reference)
        cfg = config(heartbeat_interval=0.2, heartbeat_timeout=1.0)
        with PersistentWorkerPool(cfg, snapshot_source=source) as pool:
            publish_tracked(pool, source, market.snapshots())
            pool.flush(timeout=10)
            victim = pool.get_status().workers[0]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGSTOP)
            publish_tracked(pool, source, list(market.updates(5_000)))
            wait_for(
                lambda: pool.get_status().workers[0].restarts == 1 and running(pool, 0), timeout=15, what="restart"
            )
            pool.flush(timeout=30)
            assert_exact(pool, reference, market.asset_ids)
            status = pool.get_status().workers[0]
        assert status.last_exit_reason is ExitReason.HANG
        assert status.frames_quarantined == 0  # one hang: its frames were sent carefully, and none hung again
        assert status.pid != victim.pid
        assert not psutil.pid_exists(victim.pid) or psutil.Process(victim.pid).status() == psutil.STATUS_ZOMBIE

    def test_recovering_worker_overflowing_its_buffer_never_blocks_publish(self) -> None:
        """While a killed worker's snapshots are held up, frames for it overflow its buffer (a small
        max_pending_messages): publish drops the buffer instead of waiting, the books are fetched again once
        the source answers, and every book ends exact."""
        market = SyntheticMarket(100, seed=109)
        reference = ReferenceBooks()
        gate = threading.Event()
        source = ReferenceSource(reference, gate=gate)
        with (
            captured_logs() as logs,
            PersistentWorkerPool(config(max_pending_messages=200), snapshot_source=source) as pool,
        ):
            publish_tracked(pool, source, market.snapshots())
            pool.flush(timeout=10)
            victim = pool.get_status().workers[0]
            assert victim.pid is not None
            gate.clear()
            os.kill(victim.pid, signal.SIGKILL)
            wait_for(functools.partial(noticed, pool, 0, victim.pid), what="the kill noticed")
            for _ in range(30):  # 3,000 frames, well past 200 for worker 0, one publish each
                frames = list(market.updates(100))
                with source.lock:
                    source.reference.apply_frames(frames)
                for frame in frames:
                    pool.publish(frame, timeout=5)
            gate.set()
            wait_for(lambda: running(pool, 0), timeout=30, what="worker 0 rebuilt")
            pool.flush(timeout=30)
            assert_exact(pool, reference, market.asset_ids)
        assert any(entry["event"] == "recovery_buffer_overflow" for entry in logs)

    def test_crash_loop_ends_failed_without_burning_cpu(self) -> None:
        """A worker whose handler kills its process on every snapshot: restarted with back-off until the
        budget is spent, then failed; the pool is degraded, the other worker's books stay exact, and the
        parent's CPU stays low meanwhile."""
        market = SyntheticMarket(100, seed=107)
        reference = ReferenceBooks()
        source = ReferenceSource(reference)
        crash_worker_0 = functools.partial(handlers.crashing_handler, 0)
        parent = psutil.Process()
        with PersistentWorkerPool(
            config(max_restarts=4), handler_factory=crash_worker_0, snapshot_source=source
        ) as pool:
            cpu_before, began = sum(parent.cpu_times()[:2]), time.monotonic()
            publish_tracked(pool, source, market.snapshots())
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.FAILED, timeout=30, what="failed")
            cpu_used, elapsed = sum(parent.cpu_times()[:2]) - cpu_before, time.monotonic() - began
            status = pool.get_status()
            assert status.pool_status is PoolState.DEGRADED
            assert status.workers[0].restarts == 4 and status.workers[0].last_exit_reason is ExitReason.CRASH
            assert status.workers[0].exit_code == 3
            assert status.workers[0].stale_books == len(owned_by(pool, market.asset_ids, 0))  # all unavailable
            assert_exact(pool, reference, owned_by(pool, market.asset_ids, 1))
            with pytest.raises(BrokenWorkerError, match="max_restarts=4"):
                pool.get_book(owned_by(pool, market.asset_ids, 0)[0])
        assert elapsed > 0.3  # the back-off made it wait
        assert cpu_used < 0.5 * elapsed + 0.3, (cpu_used, elapsed)

    def test_a_frame_spanning_a_failed_worker_still_reaches_the_others(self) -> None:
        """publish raises `BrokenWorkerError` for a frame that names a failed worker's asset, after giving
        the frame to its other workers, so their books miss nothing."""
        market = SyntheticMarket(40, seed=108)
        with PersistentWorkerPool(config(max_restarts=0)) as pool:
            pool.publish(market.snapshots())
            pool.flush(timeout=10)
            lost, kept = owned_by(pool, market.asset_ids, 0)[0], owned_by(pool, market.asset_ids, 1)[0]
            pid = pool.get_status().workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.FAILED, what="worker 0 failed")
            entries = [
                {"asset_id": asset_id, "price": "0.777", "side": "BUY", "size": "12.5"} for asset_id in (lost, kept)
            ]
            frame = msgspec.json.encode({"event_type": "price_change", "market": "m", "price_changes": entries})
            with pytest.raises(BrokenWorkerError, match="worker 0 failed"):
                pool.publish(frame)
            assert ("0.777", "12.5") in pool.get_book(kept).bids

    def test_operator_restart_rebuilds_and_spends_no_budget(self) -> None:
        """restart_worker replaces a worker even with max_restarts=0, from the synthetic market's snapshots."""
        market = SyntheticMarket(100, seed=109)
        snapshots, updates = market.snapshots(), list(market.updates(3_000))
        reference = ReferenceBooks()
        reference.apply_frames(snapshots + updates)
        with PersistentWorkerPool(config(max_restarts=0), snapshot_source=market) as pool:
            pool.publish(snapshots + updates)
            old_pid = pool.get_status().workers[1].pid
            pool.restart_worker(1)
            wait_for(lambda: running(pool, 1), what="worker 1 running again")
            assert_exact(pool, reference, market.asset_ids)
            status = pool.get_status().workers[1]
            with pytest.raises(ValueError, match="worker_id must be in"):
                pool.restart_worker(7)
        assert status.pid != old_pid and status.restarts == 1 and status.last_exit_reason is ExitReason.OPERATOR

    def test_snapshot_source_failures_are_retried_and_books_say_stale_meanwhile(self) -> None:
        """While the source fails, the dead slot's books read as stale; once it answers they are exact."""
        market = SyntheticMarket(60, seed=113)
        reference = ReferenceBooks()
        gate = threading.Event()
        source = ReferenceSource(reference, gate=gate)
        with PersistentWorkerPool(config(), snapshot_source=source) as pool:
            publish_tracked(pool, source, market.snapshots())
            pool.flush(timeout=10)
            mine = owned_by(pool, market.asset_ids, 0)
            pid = pool.get_status().workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: source.calls >= 2, what="two failed fetches")
            assert pool.get_status().workers[0].status is WorkerState.RECOVERING
            assert pool.get_status().workers[0].stale_books == len(mine)
            assert pool.get_book(mine[0]).stale
            publish_tracked(pool, source, list(market.updates(2_000)))
            gate.set()
            wait_for(lambda: running(pool, 0), timeout=30, what="worker 0 running again")
            pool.flush(timeout=30)
            assert_exact(pool, reference, market.asset_ids)


class TestWithoutSnapshotSource:
    def test_on_resync_gets_the_dead_slots_assets_and_books_stay_stale_until_a_book(self) -> None:
        """No source: on_resync receives exactly the dead slot's asset ids; those books are stale until a
        `book` message arrives for each, then exact."""
        market = SyntheticMarket(80, seed=127)
        resynced: list[list[str]] = []
        with PersistentWorkerPool(config(), on_resync=resynced.append) as pool:
            pool.publish(market.snapshots())
            pool.publish(list(market.updates(1_000)))
            pool.flush(timeout=10)
            mine = owned_by(pool, market.asset_ids, 0)
            pid = pool.get_status().workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: bool(resynced) and running(pool, 0), what="resync and restart")
            assert sorted(resynced[0]) == sorted(mine)
            assert all(pool.get_book(asset_id).stale for asset_id in mine)
            assert not pool.get_book(owned_by(pool, market.asset_ids, 1)[0]).stale
            assert pool.get_status().workers[0].stale_books == len(mine)
            fresh = [market.book(asset_id) for asset_id in mine]
            pool.publish(fresh)
            reference = ReferenceBooks()
            reference.apply_frames(fresh)
            assert_exact(pool, reference, mine)
            assert pool.get_status().workers[0].stale_books == 0


class TestListeners:
    def test_lifecycle_events_reach_listeners_in_order(self) -> None:
        """Listeners see exited, restarted, stale, live, recovered for a killed worker; a failing listener
        is counted and harms nothing; an async listener runs too; remove() stops delivery."""
        market = SyntheticMarket(40, seed=131)
        seen: list[PoolEvent] = []
        seen_async: list[PoolEventKind] = []

        async def async_listener(event: PoolEvent) -> None:
            seen_async.append(event.kind)

        def broken_listener(event: PoolEvent) -> None:
            raise RuntimeError("listener bug")

        with PersistentWorkerPool(config(), snapshot_source=market) as pool:
            pool.add_listener(seen.append)
            pool.add_listener(async_listener)
            remove_broken = pool.add_listener(broken_listener)
            pool.publish(market.snapshots())
            pool.flush(timeout=10)
            pid = pool.get_status().workers[1].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: any(e.kind is PoolEventKind.WORKER_RECOVERED for e in seen), what="recovered event")
            remove_broken()
            assert pool._core.events.listener_errors >= 5
            kinds = [e.kind for e in seen if e.worker_id == 1]
            assert kinds == [
                PoolEventKind.WORKER_EXITED,
                PoolEventKind.WORKER_STARTED,
                PoolEventKind.WORKER_RESTARTED,
                PoolEventKind.BOOK_STALE,
                PoolEventKind.BOOK_LIVE,
                PoolEventKind.WORKER_RECOVERED,
            ]
            exited = seen[0]
            assert exited.reason is ExitReason.KILLED and exited.pid == pid and "perhaps out of memory" in exited.detail
            stale = next(e for e in seen if e.kind is PoolEventKind.BOOK_STALE)
            assert sorted(stale.asset_ids or []) == sorted(owned_by(pool, market.asset_ids, 1))
            wait_for(lambda: PoolEventKind.WORKER_RECOVERED in seen_async, what="async listener")
            assert pool.is_healthy()
        assert msgspec.to_builtins(exited)["reason"] == "killed"
