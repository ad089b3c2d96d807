"""Faults an adversary would inject, with real processes and bounded waits: every wait has a way out,
every loss a counter, every stop a bound (design promises 7 and 8)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence

import pytest

from pool import PersistentWorkerPool
from pool._service._synthetic import SyntheticMarket
from tests.integration.supervised import assert_exact, config, noticed, publish_tracked, running
from tests.support import ReferenceBooks, ReferenceSource, wait_for

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
