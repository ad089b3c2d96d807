"""Memory supervision with real processes: a worker that grows past its cap, under each policy."""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import pytest

from pool import PersistentWorkerPool, PoolConfig
from pool._service._metrics import PoolCollector
from pool._service._synthetic import SyntheticMarket
from pool.models import ExitReason, PoolEvent, PoolEventKind, WorkerState
from pool.monitors import MemoryInfo
from tests.integration import handlers
from tests.support import ReferenceBooks, ReferenceSource, as_decimals, wait_for

pytestmark = pytest.mark.timeout(120)

CAP_MB = 70  # well above an idle worker (about 20 to 30 MB of USS), reached by the hog in ~20 chunks


def hog_pool(
    policy: str, record_to: Path | None = None, **overrides: object
) -> tuple[PersistentWorkerPool, SyntheticMarket, ReferenceSource]:
    """Worker 0 keeps 128 KB per price change (and records its snapshots in ``record_to``)."""
    market = SyntheticMarket(60, seed=211)
    source = ReferenceSource(ReferenceBooks())
    settings: dict[str, object] = {
        "worker_count": 2,
        "heartbeat_interval": 0.5,
        "shutdown_timeout": 5.0,
        "worker_memory_cap_mb": CAP_MB,
        "memory_check_interval": 0.05,
        "memory_policy": policy,
        **overrides,
    }
    pool = PersistentWorkerPool(
        PoolConfig(**settings),  # type: ignore[arg-type]
        handler_factory=(
            functools.partial(handlers.recording_hog, 0, 128, str(record_to))
            if record_to is not None
            else functools.partial(handlers.memory_hog, 0, 128)
        ),
        snapshot_source=source,
    )
    return pool, market, source


def grow_until(pool: PersistentWorkerPool, market: SyntheticMarket, source: ReferenceSource, done: object) -> None:
    """Publish small chunks, each followed by a full round of memory samples, until ``done()`` holds.

    Waiting for a sample between chunks bounds the growth the monitor can miss to one chunk (~2 MB).
    """
    for _ in range(400):
        if done():  # type: ignore[operator]
            return
        chunk = list(market.updates(30))
        with source.lock:
            source.reference.apply_frames(chunk)
        pool.publish(chunk)
        pool.flush(timeout=30)
        wait_for(functools.partial(sampled_since, pool, pool.memory_monitor.samples + 2), what="a round of samples")
    raise AssertionError("the worker never reached the condition")


def sampled_since(pool: PersistentWorkerPool, target: int) -> bool:
    return pool.memory_monitor.samples >= target


def start(pool: PersistentWorkerPool, market: SyntheticMarket, source: ReferenceSource) -> None:
    pool.start()
    snapshots = market.snapshots()
    with source.lock:
        source.reference.apply_frames(snapshots)
    pool.publish(snapshots)


def assert_exact(pool: PersistentWorkerPool, market: SyntheticMarket, source: ReferenceSource) -> None:
    pool.flush(timeout=30)
    for asset_id in market.asset_ids:
        view = pool.get_book(asset_id)
        bids, asks = source.reference.levels(asset_id)
        assert not view.stale and as_decimals(view.bids) == bids and as_decimals(view.asks) == asks


class TestPolicies:
    @pytest.mark.parametrize("policy", ["recycle", "restart"])
    def test_breach_replaces_the_worker_before_110_percent_and_keeps_books_exact(
        self, policy: str, tmp_path: Path
    ) -> None:
        """The growing worker is replaced (exit reason `memory`) before it passes 110% of its cap; the 0.8
        callback fired exactly once on the way up; every book then equals the reference, and the handler
        was shown each of its books as a snapshot again (handed over, or rebuilt from the source)."""
        pool, market, source = hog_pool(policy, record_to=tmp_path)
        rising_08: list[MemoryInfo] = []
        above_110: list[MemoryInfo] = []
        pool.memory_monitor.register_callback(lambda i: rising_08.append(i) if i.rising else None, threshold_ratio=0.8)
        pool.memory_monitor.register_callback(above_110.append, threshold_ratio=1.1)
        breaches: list[PoolEvent] = []
        pool.add_listener(lambda e: breaches.append(e) if e.kind is PoolEventKind.MEMORY_BREACH else None)
        try:
            start(pool, market, source)
            first_pid = pool.get_status().workers[0].pid
            grow_until(pool, market, source, lambda: pool.get_status().workers[0].restarts >= 1)
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.RUNNING, what="worker 0 running")
            status = pool.get_status().workers[0]
            assert status.last_exit_reason is ExitReason.MEMORY and status.pid != first_pid
            assert [(i.worker_id, i.pid) for i in rising_08] == [(0, first_pid)]
            assert above_110 == []
            assert pool.get_status().workers[1].restarts == 0
            cause = "handoff" if policy == "recycle" else "restart"
            assert (status.recycles, status.recycles_by_cause) == (1, {cause: 1})
            collector = PoolCollector(lambda: (pool.get_status(), pool.get_stats()))
            family = next(f for f in collector.collect() if f.name == "worker_pool_recycles")
            counted = {(s.labels["worker"], s.labels["cause"]): s.value for s in family.samples if s.value}
            assert counted == {("0", cause): 1.0}  # every cause of every worker is exported, zeros too
            assert len(family.samples) == 2 * 4
            assert [e.worker_id for e in breaches] == [0] and f"action: {policy}" in breaches[0].detail
            assert_exact(pool, market, source)
            lines = (tmp_path / "worker-0.log").read_text().splitlines()
            seen = collections.Counter(line.split()[1] for line in lines if line.startswith("on_snapshot "))
            assert len(seen) == pool.get_status().workers[0].books > 0 and set(seen.values()) == {2}
        finally:
            pool.shutdown()

    def test_callback_policy_reports_and_never_kills(self) -> None:
        """memory_policy="callback": the breach is reported to the 1.0 callback; the worker lives on."""
        pool, market, source = hog_pool("callback")
        at_cap: list[MemoryInfo] = []
        pool.memory_monitor.register_callback(at_cap.append, threshold_ratio=1.0)
        try:
            start(pool, market, source)
            pid = pool.get_status().workers[0].pid
            breaches: list[PoolEvent] = []
            pool.add_listener(lambda e: breaches.append(e) if e.kind is PoolEventKind.MEMORY_BREACH else None)
            grow_until(pool, market, source, lambda: any("action: reported" in e.detail for e in breaches))
            status = pool.get_status().workers[0]
            assert status.pid == pid and status.restarts == 0 and status.status is WorkerState.RUNNING
            assert status.recycles == 0
            assert status.memory_ratio is not None and status.memory_ratio >= 1.0
            assert at_cap and at_cap[0].rising and at_cap[0].pid == pid
            assert_exact(pool, market, source)
        finally:
            pool.shutdown()

    def test_under_system_pressure_a_recycle_becomes_a_restart(self) -> None:
        """With system memory past memory_threshold, no extra process is started: recycle restarts instead."""
        pool, market, source = hog_pool("recycle", memory_threshold=0.0001)
        try:
            start(pool, market, source)
            status = pool.get_status()
            assert status.memory.pressure
            grow_until(pool, market, source, lambda: pool.get_status().workers[0].restarts >= 1)
            assert pool.get_status().workers[0].recycles_by_cause == {"pressure": 1}
            wait_for(lambda: pool.get_status().workers[0].status is WorkerState.RUNNING, what="worker 0 running")
            assert_exact(pool, market, source)
        finally:
            pool.shutdown()
