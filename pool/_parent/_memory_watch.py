"""The pool's memory loop: sample workers and the system, and act on a worker that breaches its cap.

Every ``memory_check_interval`` (ten times as often while a worker is near its threshold) the
`monitors.MemoryMonitor` samples each running worker (USS against its cap) and the system (used fraction
against ``memory_threshold``), firing the user's callbacks. A worker at its threshold is handled one at a
time, as ``memory_policy`` says:

* ``recycle`` (the default), at ``memory_recycle_ratio`` of the cap: the worker hands its books over to a
  replacement (`Supervisor.recycle`): it is sent nothing more, answers with every book and is killed
  at once; the replacement installs them and takes the frames queued since. No book is stale, no snapshot
  is fetched, and a recycle never spends the crash budget. A replacement already at its threshold with
  the books alone shows recycling cannot help: that is reported once and the slot is not recycled again
  until it is below it.
* ``restart``, at the cap: the worker is first asked to give memory back (``gc.collect()`` and glibc's
  ``malloc_trim``) and sampled again, since a restart costs a rebuild from snapshots; if the breach
  survives, it is killed and rebuilt like a crashed one.
* ``callback`` only reports the breach.

Under system pressure (used memory at or above ``memory_threshold``) the pool does not start an extra
process: a ``recycle`` becomes a ``restart``, which frees the old worker's memory before the new one
grows. Each slot has at most one action under way; slots are acted on independently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from pool._exceptions import BrokenWorkerError
from pool._wire._protocol import Trim
from pool.models import ExitReason, MemoryStatus, PoolConfig, PoolEvent, PoolEventKind, WorkerState
from pool.monitors import MemoryInfo, MemoryMonitor, SystemMemoryInfo, WorkerTarget

from ._changes import Changes
from ._events import EventHub
from ._process import WorkerProcess
from ._slot import Slot
from ._supervisor import Supervisor

__all__ = ["MemoryWatch", "memory_status"]

# How long a worker may take to answer a request to give memory back (it answers behind what it was
# already sent). Past it the breach is acted on without the second sample.
_TRIM_TIMEOUT = 5.0
_MB = 1024 * 1024
# Past this fraction of the acting threshold a worker is sampled ten times as often (never faster than
# _FASTEST: a USS sample reads /proc/<pid>/smaps, a few milliseconds per worker).
_NEAR = 0.75
_FASTEST = 0.05


def memory_status(system: SystemMemoryInfo) -> MemoryStatus:
    """The ``memory`` section of `PoolStatus` from a system sample."""
    return MemoryStatus(
        usage_percent=system.ratio * 100,
        available_bytes=system.available_bytes,
        total_bytes=system.total_bytes,
        threshold=system.threshold_ratio,
        pressure=system.ratio >= system.threshold_ratio,
    )


class MemoryWatch:
    """Runs the memory loop for a pool. ``memory`` and ``samples`` feed `get_status`."""

    def __init__(
        self,
        config: PoolConfig,
        monitor: MemoryMonitor,
        slots: list[Slot],
        supervisor: Supervisor,
        changes: Changes,
        on_sample: Callable[[], None],
        events: EventHub,
        log: Any,
    ) -> None:
        self._config = config
        self._monitor = monitor
        self._slots = slots
        self._supervisor = supervisor
        self._changes = changes
        self._on_sample = on_sample
        self._events = events
        self._log = log
        self._acting: set[int] = set()  # slots being acted on: one action per slot at a time
        # The fraction of its cap at which a worker is acted on: below 1 under ``recycle``, so that the
        # replacement is started (and the worker stops being fed) before the cap is reached.
        self._act_at = config.memory_recycle_ratio if config.memory_policy == "recycle" else 1.0
        self.memory = memory_status(monitor.sample_system())
        self.samples: dict[int, MemoryInfo] = {}

    async def run(self, task_group: anyio.abc.TaskGroup) -> None:
        while True:
            self.memory = memory_status(await self._monitor.check_system())
            targets = [
                target
                for slot in self._slots
                if slot.state is WorkerState.RUNNING
                and slot.process is not None
                and (target := _target(slot.process, slot.book_count)) is not None
            ]
            near = False
            for info in await self._monitor.check_workers(targets):
                self.samples[info.worker_id] = info
                slot = self._slots[info.worker_id]
                slot.peak_memory_bytes = max(slot.peak_memory_bytes, info.bytes_used)
                near = near or info.ratio >= _NEAR * self._act_at
                if slot.recycling_futile and info.ratio < self._act_at:
                    slot.recycling_futile = False  # it shrank: recycling may help again
                if info.ratio >= self._act_at and slot.worker_id not in self._acting and not slot.recycling_futile:
                    self._acting.add(slot.worker_id)
                    task_group.start_soon(self._relieve, slot, info)
            self._on_sample()
            # Near the cap, sample faster: a leak of 50 MB/s grows a 100 MB cap by half in a second. Each
            # sample reads smaps (about 6 ms a worker here), so only while a worker is near its cap.
            interval = self._config.memory_check_interval
            await anyio.sleep(max(_FASTEST, interval / 10) if near else interval)

    async def _check_recycle_helped(self, slot: Slot) -> None:
        """A replacement already at its threshold with the handed-over books: recycling cannot help. Say so
        once, and recycle the slot no more until it is below the threshold again (it keeps running)."""
        await slot.wait_running()
        # Its answer comes after the books it was handed are installed, and it collects garbage first.
        await self.give_back(slot, _TRIM_TIMEOUT)
        process = slot.process
        if process is None or slot.state is not WorkerState.RUNNING:
            return
        target = _target(process, slot.book_count)
        info = None if target is None else self._monitor.sample(*target)
        if info is None or info.ratio < self._act_at:
            return
        slot.recycling_futile = True
        detail = (
            f"recycling cannot help: the replacement holds {info.bytes_used / _MB:.1f} MB private with the "
            f"{info.books} books handed over, against a cap of {info.cap_bytes / _MB:.1f} MB; worker "
            f"{slot.worker_id} keeps running and is not recycled again until it is below "
            f"{self._act_at:.0%} of its cap (raise memory_mb_per_1000_books or worker_memory_cap_mb)"
        )
        self._log.warning("memory_recycle_futile", worker_id=slot.worker_id, detail=detail)
        self._events.emit(
            PoolEvent(kind=PoolEventKind.MEMORY_BREACH, worker_id=slot.worker_id, pid=process.pid, detail=detail)
        )

    async def give_back(self, slot: Slot, timeout: float | None) -> bool:
        """Have ``slot``'s worker give memory back (behind what it was already sent); True once it has,
        False if ``timeout`` passed first.

        Raises:
            BrokenWorkerError: the slot has been given up.
        """
        reply = slot.request(Trim)
        slot.wake()
        deadline = None if timeout is None else time.monotonic() + timeout
        return await self._changes.wait_async(lambda: reply.done, deadline)

    async def _relieve(self, slot: Slot, info: MemoryInfo) -> None:
        try:
            policy = self._config.memory_policy
            pressure = self.memory is not None and self.memory.pressure
            action = {"callback": "reported", "restart": "restart"}.get(policy, "restart" if pressure else "recycle")
            process = slot.process
            again: MemoryInfo | None = info
            how = ""
            if action != "recycle":
                # A restart costs a rebuild from snapshots, so first see whether giving memory back is enough.
                # A recycle loses nothing and takes a fraction of a second: asking first would only let a
                # leaking worker grow past its cap meanwhile.
                await self.give_back(slot, _TRIM_TIMEOUT)
                process = slot.process
                target = None if process is None else _target(process, info.books)
                again = None if target is None else self._monitor.sample(*target)
                how = " after giving memory back"
            if again is None or process is None or again.pid != process.pid:
                return  # it exited meanwhile; the supervisor has it
            if again.ratio < self._act_at:
                self._log.info(
                    "memory_given_back", worker_id=slot.worker_id, before=info.bytes_used, after=again.bytes_used
                )
                return
            why = " (recycle refused: system memory pressure)" if policy == "recycle" and pressure else ""
            self._events.emit(
                PoolEvent(
                    kind=PoolEventKind.MEMORY_BREACH,
                    worker_id=slot.worker_id,
                    pid=process.pid,
                    detail=(
                        f"{again.bytes_used / _MB:.1f} MB private against a cap of {again.cap_bytes / _MB:.1f} MB "
                        f"({again.books} books){how}; action: {action}{why}"
                    ),
                )
            )
            if action == "reported":
                return
            if action == "recycle":
                await self._supervisor.recycle(slot)
                await self._check_recycle_helped(slot)
            else:
                process.kill(ExitReason.MEMORY)
                slot.recycled("pressure" if why else "restart")
                await process.exited.wait()
            await slot.wait_running()
        except BrokenWorkerError:
            return  # given up meanwhile (not for memory: a slot is never failed for that)
        finally:
            self._acting.discard(slot.worker_id)


def _target(process: WorkerProcess, books: int) -> WorkerTarget | None:
    """What the monitor samples ``process`` by: its pid here, or the USS it last reported (a worker that
    measures its own memory, such as a Ray actor, whose pid names nothing on this host); ``None`` before
    its first report. ``books`` stands in for the count until the worker has reported one."""
    stats = process.stats
    books = stats.orderbook_count if stats else books
    if not process.measures_memory:
        return (process.worker_id, process.pid, books)
    if stats is None or stats.private_memory_bytes is None:
        return None
    return (process.worker_id, process.pid, books, stats.private_memory_bytes)
