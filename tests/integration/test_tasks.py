"""Tasks on books, with real worker processes: results equal the same function on a reference book, read
your writes, priorities, cancel, remote tracebacks, retries after a SIGKILL, timeouts, restarts, recycles,
and the sync and async forms (asyncio and trio)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from pool import (
    BrokenWorkerError,
    PersistentWorkerPool,
    TaskCancelledError,
    TaskHandle,
    TaskPriority,
    TaskQueueFullError,
    TaskState,
    TaskTimeoutError,
    UnknownAssetError,
)
from pool._exceptions import RemoteTraceback
from pool._service._synthetic import SyntheticMarket
from pool.models import ExitReason
from tests.integration import handlers, task_functions
from tests.integration.supervised import assert_exact, config, owned_by, publish_tracked, running
from tests.support import ReferenceBooks, ReferenceSource, as_decimals, wait_for

pytestmark = pytest.mark.timeout(60)


def as_levels(result: tuple[list[tuple[str, str]], list[tuple[str, str]]]) -> tuple[list[tuple[Decimal, Decimal]], ...]:
    bids, asks = result
    return as_decimals(bids), as_decimals(asks)


def started(handle: object) -> bool:
    return handle.get_status().state is TaskState.RUNNING  # type: ignore[attr-defined]


def loaded(pool: PersistentWorkerPool, books: int, seed: int, updates: int) -> tuple[SyntheticMarket, ReferenceBooks]:
    """Publish ``books`` snapshots and ``updates`` updates to ``pool``; return the market and a reference
    that has applied the same frames."""
    market = SyntheticMarket(books, seed=seed)
    reference = ReferenceBooks()
    frames = market.snapshots() + list(market.updates(updates))
    reference.apply_frames(frames)
    pool.publish(frames)
    return market, reference


@contextlib.contextmanager
def rebuilding_pool(seed: int, **overrides: object) -> Iterator[tuple[PersistentWorkerPool, ReferenceBooks, list[str]]]:
    """A pool over 40 books with a snapshot source (so a replaced worker is rebuilt exactly), 1,000 updates
    applied; yields it, the reference books and the assets of worker 0. Every book is exact at the end."""
    market = SyntheticMarket(40, seed=seed)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    with PersistentWorkerPool(config(**overrides), snapshot_source=source) as pool:
        publish_tracked(pool, source, market.snapshots() + list(market.updates(1_000)))
        yield pool, reference, owned_by(pool, market.asset_ids, 0)
        assert_exact(pool, reference, market.asset_ids)


@contextlib.contextmanager
def busy_worker(seed: int) -> Iterator[tuple[PersistentWorkerPool, list[str], TaskHandle]]:
    """A pool whose worker 0 is running a 0.5 s task; yields it, worker 0's assets and that task's handle."""
    market = SyntheticMarket(30, seed=seed)
    with PersistentWorkerPool(config()) as pool:
        pool.publish(market.snapshots())
        mine = owned_by(pool, market.asset_ids, 0)
        busy = pool.submit(mine[0], task_functions.sleep_then_levels, 0.5)
        wait_for(lambda: started(busy), what="the long task to start")
        yield pool, mine, busy


class TestResults:
    def test_a_vwap_task_equals_the_same_function_on_a_reference_book(self) -> None:
        """For every book, the VWAP to buy 10,000 shares computed in the worker equals the same function
        applied to an independent reference book; a task over all books sees every book of every worker."""
        with PersistentWorkerPool(config()) as pool:
            market, reference = loaded(pool, 60, 401, 3_000)
            handles = [pool.submit(a, task_functions.vwap_to_buy, "10000") for a in market.asset_ids]
            for asset_id, handle in zip(market.asset_ids, handles, strict=True):
                expected = task_functions.vwap(reference.levels(asset_id)[1], Decimal(10000))
                assert handle.result(timeout=10) == expected
                assert handle.get_status().state is TaskState.COMPLETED
            depths = pool.submit_all(task_functions.depth_of_all).result(timeout=10)
            assert depths == {a: tuple(map(len, reference.levels(a))) for a in market.asset_ids}
            by_path = pool.submit(market.asset_ids[0], "tests.integration.task_functions:levels").result(timeout=10)
            assert as_levels(by_path) == reference.levels(market.asset_ids[0])
            status = pool.get_status()
            assert status.completed_tasks == len(market.asset_ids) + 2 + 1  # submit_all counts once per worker
            assert status.pending_tasks == status.running_tasks == status.failed_tasks == 0

    def test_read_your_writes_under_a_stream(self) -> None:
        """A task submitted right after a publish, with no flush, sees every frame of that publish."""
        market = SyntheticMarket(30, seed=403)
        reference = ReferenceBooks()
        with PersistentWorkerPool(config()) as pool:
            snapshots = market.snapshots()
            reference.apply_frames(snapshots)
            pool.publish(snapshots)
            for _ in range(40):
                chunk = list(market.updates(100))
                reference.apply_frames(chunk)
                pool.publish(chunk)
                asset_id = market.asset_ids[len(chunk) % 7]
                got = pool.submit(asset_id, task_functions.levels).result(timeout=10)
                assert as_levels(got) == reference.levels(asset_id)

    def test_shutdown_runs_every_task_submitted_before_it(self) -> None:
        """Tasks still waiting in the parent when the pool stops are sent ahead of the workers' stop: each
        completes, in priority order, on the books as published."""
        with PersistentWorkerPool(config()) as pool:
            market, reference = loaded(pool, 30, 427, 500)
            mine = owned_by(pool, market.asset_ids, 0)
            busy = pool.submit(mine[0], task_functions.sleep_then_levels, 0.3)
            handles = [pool.submit(a, task_functions.levels) for a in mine * 3]
        assert pool.get_status().completed_tasks == len(handles) + 1
        assert as_levels(busy.result(timeout=0)) == reference.levels(mine[0])
        for asset_id, handle in zip(mine * 3, handles, strict=True):
            assert as_levels(handle.result(timeout=0)) == reference.levels(asset_id)


class TestScheduling:
    def test_an_urgent_task_submitted_last_starts_before_the_low_ones_waiting(self) -> None:
        """With worker 0 busy on a long task, 20 LOW tasks then one URGENT: the URGENT one starts before
        every LOW one but those already sent behind the busy task (the window's), and the LOW ones start in
        submission order."""
        with busy_worker(405) as (pool, mine, busy):
            assert pool.config.task_window < 20
            lows = [
                pool.submit(mine[i % len(mine)], task_functions.started_at, priority=TaskPriority.LOW)
                for i in range(20)
            ]
            urgent = pool.submit(mine[1], task_functions.started_at, priority=TaskPriority.URGENT)
            assert pool.get_status().workers[0].pending_tasks == 21
            low_starts = [handle.result(timeout=10) for handle in lows]
            urgent_start = urgent.result(timeout=10)
            # Only those sent to the worker before the URGENT one was submitted started before it.
            assert sum(start < urgent_start for start in low_starts) == pool.config.task_window - 1
            assert low_starts == sorted(low_starts)
            busy.result(timeout=10)

    def test_a_pending_task_is_cancelled_and_a_started_one_is_not(self) -> None:
        """A task still waiting in the parent is cancelled for certain; one running, or already sent to the
        worker, is not (`cancel` says False), and runs."""
        with busy_worker(407) as (pool, mine, busy):
            queued = [pool.submit(mine[0], task_functions.started_at) for _ in range(pool.config.task_window + 3)]
            assert not busy.cancel()  # running
            assert not queued[0].cancel()  # sent to the worker, behind the running task
            assert queued[-1].cancel()
            assert queued[-1].get_status().state is TaskState.CANCELLED
            with pytest.raises(TaskCancelledError):
                queued[-1].result(timeout=1)
            assert not queued[-1].cancel()  # once only
            assert pool.wait_for_completion(timeout=10)
            assert [h.get_status().state for h in queued[:-1]] == [TaskState.COMPLETED] * (len(queued) - 1)
            status = pool.get_status().workers[0]
            assert (status.completed_tasks, status.cancelled_tasks, status.pending_tasks) == (len(queued), 1, 0)

    def test_max_pending_tasks_bounds_a_worker_and_says_what_to_do(self) -> None:
        market = SyntheticMarket(30, seed=409)
        with PersistentWorkerPool(config(max_pending_tasks=3)) as pool:
            pool.publish(market.snapshots())
            mine = owned_by(pool, market.asset_ids, 0)
            handles = [pool.submit(mine[0], task_functions.sleep_then_levels, 0.3) for _ in range(3)]
            with pytest.raises(TaskQueueFullError, match="max_pending_tasks=3"):
                pool.submit(mine[0], task_functions.levels)
            theirs = owned_by(pool, market.asset_ids, 1)
            assert pool.submit(theirs[0], task_functions.levels).result(timeout=10)  # the other worker is free
            assert all(h.wait(timeout=10) for h in handles)
            assert pool.submit(mine[0], task_functions.levels).result(timeout=10)


class TestFaults:
    def test_a_task_that_raises_fails_alone_with_its_remote_traceback(self) -> None:
        with PersistentWorkerPool(config()) as pool:
            market, reference = loaded(pool, 30, 411, 500)
            asset_id = market.asset_ids[0]
            pid = pool.get_status().workers[pool._core.router[asset_id]].pid
            with pytest.raises(ValueError, match="no signal for") as caught:
                pool.submit(asset_id, task_functions.raise_value_error).result(timeout=10)
            assert isinstance(caught.value.__cause__, RemoteTraceback)
            assert "raise_value_error" in str(caught.value.__cause__)
            with pytest.raises(TypeError, match="cannot be pickled"):
                pool.submit(asset_id, task_functions.return_a_lock).result(timeout=10)
            assert as_levels(pool.submit(asset_id, task_functions.levels).result(timeout=10)) == reference.levels(
                asset_id
            )
            status = pool.get_status()
            assert status.workers[pool._core.router[asset_id]].pid == pid and status.restarts == 0
            assert status.failed_tasks == 2 and status.completed_tasks == 1
            assert_exact(pool, reference, market.asset_ids)

    def test_what_cannot_be_submitted_is_refused_before_anything_is_queued(self) -> None:
        market = SyntheticMarket(10, seed=413)
        with PersistentWorkerPool(config()) as pool:
            pool.publish(market.snapshots())
            with pytest.raises(UnknownAssetError):
                pool.submit("no-such-asset", task_functions.levels)
            with pytest.raises(TypeError, match="cannot be pickled"):
                pool.submit(market.asset_ids[0], task_functions.sleep_then_levels, threading.Lock())
            with pytest.raises(TypeError, match="must be callable or an import path"):
                pool.submit(market.asset_ids[0], 42)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match=r"must look like 'package\.module:function'"):
                pool.submit(market.asset_ids[0], "no_colon")
            assert pool.get_status().pending_tasks == 0

    def test_a_sigkill_during_a_long_task_retries_it_on_the_rebuilt_book(self) -> None:
        with rebuilding_pool(415) as (pool, reference, mine):
            long_task = pool.submit(mine[0], task_functions.sleep_then_levels, 1.0)
            behind = [pool.submit(a, task_functions.levels) for a in mine[:5]]  # pending across the restart
            wait_for(lambda: started(long_task), what="the long task to start")
            pid = pool.get_status().workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert as_levels(long_task.result(timeout=20)) == reference.levels(mine[0])
            assert long_task.get_status().attempts == 2
            for asset_id, handle in zip(mine[:5], behind, strict=True):
                assert as_levels(handle.result(timeout=10)) == reference.levels(asset_id)
            assert pool.get_status().workers[0].restarts == 1

    def test_a_task_that_kills_its_worker_every_time_fails_after_its_retry(self) -> None:
        with rebuilding_pool(417) as (pool, _, mine):
            handle = pool.submit(mine[0], task_functions.kill_own_worker)
            with pytest.raises(BrokenWorkerError, match="died while running this task, 2 times"):
                handle.result(timeout=20)
            assert handle.get_status().attempts == 2
            wait_for(lambda: running(pool, 0), timeout=20, what="worker 0 back")
            assert pool.get_status().workers[0].restarts == 2

    def test_a_task_past_task_timeout_fails_and_its_worker_is_replaced(self) -> None:
        with rebuilding_pool(419, task_timeout=0.5) as (pool, reference, mine):
            stuck = pool.submit(mine[0], task_functions.spin_forever)
            after = pool.submit(mine[1], task_functions.levels)
            with pytest.raises(TaskTimeoutError, match=r"task_timeout=0\.5"):
                stuck.result(timeout=20)
            assert as_levels(after.result(timeout=20)) == reference.levels(mine[1])
            worker = pool.get_status().workers[0]
            assert worker.last_exit_reason is ExitReason.HANG and worker.restarts == 1
            assert worker.failed_tasks == 1 and worker.completed_tasks == 1

    def test_tasks_queued_across_memory_recycles_all_complete_exactly(self) -> None:
        """A handler that leaks 25 MB/s against a 60 MB cap: the workers are recycled (books handed over)
        while tasks are submitted after every chunk; every task completes, on the book as published."""
        market = SyntheticMarket(40, seed=421)
        reference = ReferenceBooks()
        leak = functools.partial(handlers.steady_leak, 25.0)
        settings = config(worker_memory_cap_mb=60, memory_check_interval=0.2)
        with PersistentWorkerPool(settings, handler_factory=leak) as pool:
            snapshots = market.snapshots()
            reference.apply_frames(snapshots)
            pool.publish(snapshots)
            deadline = time.monotonic() + 30
            while sum(w.recycles for w in pool.get_status().workers.values()) < 2:
                assert time.monotonic() < deadline, "no recycle"
                chunk = list(market.updates(200))
                reference.apply_frames(chunk)
                pool.publish(chunk)
                handles = {a: pool.submit(a, task_functions.levels) for a in market.asset_ids[:4]}
                for asset_id, handle in handles.items():
                    assert as_levels(handle.result(timeout=20)) == reference.levels(asset_id)
            status = pool.get_status()
            assert status.failed_tasks == 0 and status.restarts >= 2


@pytest.mark.anyio
async def test_the_async_form_awaits_results_on_asyncio_and_trio(anyio_backend: str) -> None:
    market = SyntheticMarket(30, seed=423)
    reference = ReferenceBooks()
    async with PersistentWorkerPool(config()) as pool:
        frames = market.snapshots() + list(market.updates(1_000))
        reference.apply_frames(frames)
        await pool.publish(frames)
        handle = pool.submit(market.asset_ids[0], task_functions.levels, priority=TaskPriority.HIGH, metadata="m")
        assert as_levels(await handle.result(timeout=10)) == reference.levels(market.asset_ids[0])
        assert handle.metadata == "m" and handle.priority is TaskPriority.HIGH
        assert await handle.wait(timeout=1)
        depths = await pool.submit_all(task_functions.depth_of_all).result(timeout=10)
        assert len(depths) == len(market.asset_ids)
        many = pool.submit_tasks([(a, task_functions.levels, ()) for a in market.asset_ids])
        assert await pool.wait_for_completion(timeout=10)
        assert all(h.done() for h in many)


def test_a_function_defined_in_main_runs_in_the_worker(tmp_path: Path) -> None:
    """A task function (and a lambda) defined in ``python -c``, which no worker can import, travels by value."""
    program = textwrap.dedent(
        """
        from pool import PersistentWorkerPool, PoolConfig
        from pool._service._synthetic import SyntheticMarket

        def spread(book, scale):
            return scale * (float(book.best_ask()[0]) - float(book.best_bid()[0]))

        market = SyntheticMarket(10, seed=425)
        with PersistentWorkerPool(PoolConfig(worker_count=2)) as pool:
            pool.publish(market.snapshots())
            asset_id = market.asset_ids[0]
            view = pool.get_book(asset_id)
            expected = 100 * (float(view.asks[0][0]) - float(view.bids[0][0]))
            print(pool.submit(asset_id, spread, 100).result(timeout=10) == expected)
            print(pool.submit(asset_id, lambda book: book.asset_id).result(timeout=10) == asset_id)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True"]
