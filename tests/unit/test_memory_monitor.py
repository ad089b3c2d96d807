"""MemoryMonitor on its own, over this test process: caps, edge-triggered callbacks, system scope."""

from __future__ import annotations

import os

import anyio
import pytest

from pool.models import PoolConfig
from pool.monitors import MemoryInfo, MemoryMonitor, SystemMemoryInfo

MB = 1024 * 1024


class TestCaps:
    def test_cap_grows_with_books_and_can_be_fixed(self) -> None:
        """100 MB per 1000 books, at least 100 MB; an absolute cap overrides the rule."""
        monitor = MemoryMonitor()
        assert [monitor.cap_bytes(n) // MB for n in (0, 500, 1000, 2500)] == [100, 100, 100, 250]
        assert MemoryMonitor(worker_memory_cap_mb=64).cap_bytes(10_000) == 64 * MB
        assert MemoryMonitor.from_config(PoolConfig(memory_mb_per_1000_books=8)).cap_bytes(3000) == 24 * MB

    def test_sample_reads_private_memory(self) -> None:
        """A sample is USS of the pid against the cap; a vanished pid gives None."""
        monitor = MemoryMonitor()
        info = monitor.sample(0, os.getpid(), 2000)
        assert info is not None and 1 * MB < info.bytes_used < 2000 * MB
        assert info.cap_bytes == 200 * MB and info.ratio == pytest.approx(info.bytes_used / info.cap_bytes)
        assert monitor.sample(0, 2**22 + 12345, 1) is None

    def test_memory_measured_elsewhere_is_held_to_the_cap_as_reported(self) -> None:
        """A process on another host reports its own USS: that figure is used as is (its pid names nothing
        here), and a target with it fires the callbacks like a sampled one."""
        monitor = MemoryMonitor()
        remote_pid = 2**22 + 12345  # no such process on this host
        info = monitor.sample(3, remote_pid, 500, uss_bytes=150 * MB)
        assert info is not None and (info.bytes_used, info.cap_bytes, info.ratio) == (150 * MB, 100 * MB, 1.5)
        crossings: list[MemoryInfo] = []
        monitor.register_callback(crossings.append, threshold_ratio=1.0)
        anyio.run(monitor.check_workers, [(3, remote_pid, 500, 150 * MB)])
        assert [(c.worker_id, c.pid, c.rising) for c in crossings] == [(3, remote_pid, True)]


class TestCallbacks:
    def test_edge_triggered_sync_async_raising_and_unregister(self) -> None:
        """Each callback fires once on the way up and once on the way down; a raising one is counted and
        the others still run; an unregistered one is not called again."""
        monitor = MemoryMonitor()
        seen: list[tuple[str, bool]] = []

        def sync_callback(info: MemoryInfo) -> None:
            seen.append(("sync", info.rising))

        async def async_callback(info: MemoryInfo) -> None:
            seen.append(("async", info.rising))

        def broken(info: MemoryInfo) -> None:
            raise RuntimeError("callback bug")

        used = monitor.sample(0, os.getpid(), 0)
        assert used is not None
        for callback in (broken, sync_callback, async_callback):
            monitor.register_callback(callback, threshold_ratio=0.5)
        high = monitor.register_callback(lambda info: seen.append(("high", info.rising)), threshold_ratio=5.0)

        def check_with_cap(cap_mb: float) -> None:
            monitor.worker_memory_cap_mb = cap_mb
            anyio.run(monitor.check_workers, [(0, os.getpid(), 0)])

        tight = used.bytes_used / MB  # ratio about 1.0: above 0.5, below 5.0
        for cap in (tight, tight, tight * 1.1):  # up once, no repeat while above, still above 0.5
            check_with_cap(cap)
        assert seen == [("sync", True), ("async", True)]
        check_with_cap(tight * 4)  # ratio about 0.25: below 0.5 - hysteresis
        assert seen[2:] == [("sync", False), ("async", False)]
        high.unregister()
        check_with_cap(tight / 10)  # ratio about 10: up for everyone still registered
        assert seen[4:] == [("sync", True), ("async", True)]
        assert monitor.callback_errors == 3

    def test_system_scope_fires_when_threshold_is_below_use(self) -> None:
        monitor = MemoryMonitor(memory_threshold=0.0001)
        fired: list[SystemMemoryInfo] = []
        monitor.register_callback(fired.append, threshold_ratio=0.0001, scope="system")
        info = anyio.run(monitor.check_system)
        assert info.rising and len(fired) == 1 and fired[0].ratio > 0.0001

    @pytest.mark.parametrize(("args", "error"), [((print, 0), ValueError), ((42,), TypeError)])
    def test_bad_registration(self, args: tuple[object, ...], error: type[Exception]) -> None:
        with pytest.raises(error):
            MemoryMonitor().register_callback(*args)  # type: ignore[arg-type]
