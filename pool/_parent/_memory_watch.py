"""The pool's memory loop: sample workers and the system, and act on a worker that breaches its cap.

Every ``memory_check_interval`` the `monitors.MemoryMonitor` samples each running worker (USS against its
cap) and the system (used fraction against ``memory_threshold``), firing the user's callbacks. A worker
at or above its cap is handled one at a time:

1. it is asked to give memory back (``gc.collect()`` and glibc's ``malloc_trim``) and sampled again, so a
   passing spike or freeable garbage never costs a restart;
2. if the breach survives, ``memory_policy`` decides: ``callback`` only reports it; ``restart`` kills the
   worker and rebuilds its books in a replacement; ``recycle`` (the default) first starts and handshakes
   the replacement (sending the old worker nothing more meanwhile, so work cannot grow it), then swaps it
   in, so the slot is without a process only for the snapshot fetch and no query is answered from a
   missing book (queries wait for the replacement).

Under system pressure (used memory at or above ``memory_threshold``) the pool does not start an extra
process: a ``recycle`` becomes a ``restart``, which frees the old worker's memory before the new one
grows. Actions never run in parallel.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from pool._exceptions import BrokenWorkerError
from pool._wire._protocol import Trim
from pool.models import ExitReason, MemoryStatus, PoolConfig, PoolEvent, PoolEventKind, WorkerState
from pool.monitors import MemoryInfo, MemoryMonitor, SystemMemoryInfo

from ._changes import Changes
from ._events import EventHub
from ._slot import Slot
from ._supervisor import Supervisor

__all__ = ["MemoryWatch", "memory_status"]

# How long a worker may take to answer a request to give memory back (it answers behind what it was
# already sent). Past it the breach is acted on without the second sample.
_TRIM_TIMEOUT = 5.0
_MB = 1024 * 1024


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
        self._acting = False
        self.memory = memory_status(monitor.sample_system())
        self.samples: dict[int, MemoryInfo] = {}
        self.actions: deque[tuple[int, str]] = deque(maxlen=100)  # (worker id, action) taken, newest last

    async def run(self, task_group: anyio.abc.TaskGroup) -> None:
        while True:
            self.memory = memory_status(await self._monitor.check_system())
            targets = [
                (slot.worker_id, slot.process.pid, slot.process.stats.orderbook_count if slot.process.stats else 0)
                for slot in self._slots
                if slot.state is WorkerState.RUNNING and slot.process is not None
            ]
            for info in await self._monitor.check_workers(targets):
                self.samples[info.worker_id] = info
                if info.ratio >= 1.0 and not self._acting:
                    self._acting = True
                    task_group.start_soon(self._relieve, self._slots[info.worker_id], info)
            self._on_sample()
            await anyio.sleep(self._config.memory_check_interval)

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
            try:
                await self.give_back(slot, _TRIM_TIMEOUT)
            except BrokenWorkerError:
                return  # given up meanwhile: nothing left to relieve
            process = slot.process
            again = self._monitor.sample(slot.worker_id, info.pid, info.books)
            if again is None or process is None or again.pid != process.pid:
                return  # it exited meanwhile; the supervisor has it
            if again.ratio < 1.0:
                self._log.info(
                    "memory_given_back", worker_id=slot.worker_id, before=info.bytes_used, after=again.bytes_used
                )
                return
            policy = self._config.memory_policy
            pressure = self.memory is not None and self.memory.pressure
            action = {"callback": "reported", "restart": "restart"}.get(policy, "restart" if pressure else "recycle")
            self.actions.append((slot.worker_id, action))
            why = " (recycle refused: system memory pressure)" if policy == "recycle" and pressure else ""
            self._events.emit(
                PoolEvent(
                    kind=PoolEventKind.MEMORY_BREACH,
                    worker_id=slot.worker_id,
                    pid=process.pid,
                    detail=(
                        f"{again.bytes_used / _MB:.1f} MB private against a cap of {again.cap_bytes / _MB:.1f} MB "
                        f"({again.books} books) after giving memory back; action: {action}{why}"
                    ),
                )
            )
            if action == "reported":
                return
            if action == "recycle":
                await self._supervisor.recycle(slot)
            else:
                process.kill(ExitReason.MEMORY)
                await process.exited.wait()
            await slot.wait_running()
        finally:
            self._acting = False
