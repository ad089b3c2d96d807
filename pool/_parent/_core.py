"""The pool's core: the parts behind the face, started, served and stopped as one coroutine on one loop.

`PoolCore.serve` is the whole life of a pool: start every worker (or none: a start that fails reaps what
it started and raises one `WorkerStartupError`), serve them until shutdown is requested, stop them, reap
them. It runs in the caller's task group under ``async with``, and in `LoopThread` under ``with``. Its
parts are described in `pool._parent._supervisor`, which draws the data flow.
"""

from __future__ import annotations

import time

import anyio
import anyio.abc

from pool._exceptions import PoolClosedError, WorkerStartupError
from pool._wire._protocol import Stop
from pool._wire._routing import Router
from pool._wire._tally import LOG_INTERVAL
from pool.models import ExitReason, PoolConfig, PoolState, WorkerState
from pool.models._logging import get_logger
from pool.monitors import MemoryMonitor

from ._changes import Changes, LoopWaker
from ._events import EventHub
from ._factories import PreparedFactory
from ._memory_watch import MemoryWatch, memory_status
from ._process import TERMINATE_GRACE, Launcher, WorkerProcess
from ._publisher import Publisher
from ._slot import Slot
from ._snapshots import SnapshotSource
from ._status import RateMeter
from ._supervisor import ResyncCallback, Supervisor

__all__ = ["PoolCore"]


class PoolCore:
    """Everything a running pool is; `PersistentWorkerPool` is its face. Methods run on the pool's loop
    unless they say otherwise."""

    def __init__(
        self,
        config: PoolConfig,
        factory: PreparedFactory | None,
        snapshot_source: SnapshotSource | None,
        on_resync: ResyncCallback | None,
        memory_monitor: MemoryMonitor,
        pool_id: int,
    ) -> None:
        self.config = config
        self._factory = factory
        self._snapshot_source = snapshot_source
        self._on_resync = on_resync
        self._monitor = memory_monitor
        self.log = self._log = get_logger("pool").bind(pool_id=pool_id)
        self._worker_log = get_logger("pool.worker").bind(pool_id=pool_id)  # what the workers tally
        self.state = PoolState.CREATED
        self.router = Router(config.worker_count)
        self.events = EventHub(self._log)
        self.rate = RateMeter()
        self.initial_memory = memory_status(memory_monitor.sample_system())
        self.started_at: float | None = None
        # Built on the loop's thread when the pool starts (anyio events need the loop).
        self.slots: list[Slot] = []
        self.changes: Changes | None = None
        self.publisher: Publisher | None = None
        self.memory_watch: MemoryWatch | None = None
        self._launcher: Launcher | None = None
        self._supervisor: Supervisor | None = None
        self._stop_requested: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, serve them until `shutdown`, then stop them. Never leaks a process."""
        self._stop_requested, self._stopped = anyio.Event(), anyio.Event()
        self.state = PoolState.STARTING
        begun = time.monotonic()
        changes, waker = Changes(), LoopWaker()
        self.changes = changes
        self.slots = [
            Slot(worker_id, changes, self.config.task_max_retries, self.config.task_window)
            for worker_id in range(self.config.worker_count)
        ]
        launcher = self._launcher = _launcher_class(self.config)(
            self.config, self._factory, self._worker_log, self.events.emit
        )
        self.publisher = Publisher(
            self.slots, self.router, self.config.max_pending_messages, waker, changes, self.events, self._log
        )
        try:
            await self._start_workers(launcher)
            async with anyio.create_task_group() as task_group:
                self.events.attach(task_group, waker)
                task_group.start_soon(waker.run, name="pool-waker")
                supervisor = self._supervisor = Supervisor(
                    self.config, self.slots, launcher, self._snapshot_source, self._on_resync, self.events, self._log
                )
                supervisor.start(task_group)
                self.memory_watch = MemoryWatch(
                    self.config,
                    self._monitor,
                    self.slots,
                    supervisor,
                    changes,
                    self._record_rate,
                    self.events,
                    self._log,
                )
                task_group.start_soon(self.memory_watch.run, task_group, name="pool-memory")
                task_group.start_soon(self._release_logs, name="pool-logs")
                self.state = PoolState.RUNNING
                self.started_at = time.monotonic()
                self._log.info(
                    "pool_started",
                    workers=len(self.slots),
                    pids=[slot.process.pid for slot in self.slots if slot.process is not None],
                    seconds=round(self.started_at - begun, 3),
                )
                task_status.started()
                await self._stop_requested.wait()
                await self._stop_workers(supervisor)
                task_group.cancel_scope.cancel()
        except WorkerStartupError as exc:
            self._log.error("pool_start_failed", worker_id=exc.worker_id, error=str(exc))
            raise
        except Exception:
            # A bug in the pool's own tasks: say so loudly; every worker is still reaped below.
            self._log.exception("pool_internal_error")
            raise
        finally:
            self.events.attach(None)
            with anyio.CancelScope(shield=True):
                for process in list(launcher.live):
                    await process.kill_and_reap()
                await launcher.close()
            for slot in self.slots:
                self._settle(slot)
            assert self.publisher is not None
            self.publisher.release_logs(force=True)
            self.events.release_logs(force=True)
            waker.close()
            self.state = PoolState.STOPPED
            self._stopped.set()

    async def shutdown(self) -> None:
        """Ask the pool to stop and wait until every worker has been reaped; idempotent."""
        if self._stopped is None:
            self.state = PoolState.STOPPED  # never started
            return
        assert self._stop_requested is not None
        self._stop_requested.set()
        await self._stopped.wait()

    async def restart_worker(self, worker_id: int) -> None:
        """Kill worker ``worker_id`` (an operator restart) and return once it has exited."""
        if not 0 <= worker_id < len(self.slots):
            raise ValueError(f"worker_id must be in [0, {len(self.slots) - 1}], got {worker_id}")
        slot = self.slots[worker_id]
        slot.check_alive()
        process = slot.process
        assert process is not None
        process.kill(ExitReason.OPERATOR)
        await process.exited.wait()

    def check_running(self) -> None:
        """Raise `PoolClosedError` unless the pool is running (any thread)."""
        if self.state is not PoolState.RUNNING:
            raise PoolClosedError(f"the pool is {self.state.value}; create a new PersistentWorkerPool")

    async def _start_workers(self, launcher: Launcher) -> None:
        # Launched together, then handshaken in turn: the workers boot in parallel.
        processes = [await launcher.launch(slot.worker_id) for slot in self.slots]
        for slot, process in zip(self.slots, processes, strict=True):
            await process.handshake()
            slot.process = process

    async def _stop_workers(self, supervisor: Supervisor) -> None:
        self.state = PoolState.STOPPING
        begun = time.monotonic()
        supervisor.stop()
        draining: list[WorkerProcess] = []
        for slot in self.slots:
            if slot.state is WorkerState.RUNNING and slot.process is not None:
                slot.state = WorkerState.STOPPING
                slot.process.stop_gracefully()
                slot.close(Stop())
                draining.append(slot.process)
            elif slot.state is WorkerState.RECOVERING:
                slot.stopped("stopped while recovering")  # nothing to drain: a replacement never took over
        with anyio.move_on_after(self.config.shutdown_timeout):
            for process in draining:
                await process.exited.wait()
        stubborn = [process for process in draining if not process.exited.is_set()]
        for process in stubborn:
            process.terminate()
        if stubborn:
            with anyio.move_on_after(TERMINATE_GRACE):
                for process in stubborn:
                    await process.exited.wait()
        self._log.info(
            "pool_stopped", seconds=round(time.monotonic() - begun, 3), forced=[p.worker_id for p in stubborn]
        )

    def _settle(self, slot: Slot) -> None:
        """Record the end of a slot whose process was reaped by the pool's last step (it ignored SIGTERM)."""
        process = slot.process
        if process is None or process.exited.is_set() or process.exit_code is None:
            return  # its watcher recorded the exit, or it never started
        slot.exit_code = process.exit_code
        slot.stopped("killed with the pool")

    def _record_rate(self) -> None:
        self.rate.record(sum(slot.applied for slot in self.slots))

    async def _release_logs(self) -> None:
        """Write tallied log entries once they are due, though nothing new arrives to carry them out."""
        assert self.publisher is not None
        while True:
            await anyio.sleep(LOG_INTERVAL)
            self.publisher.release_logs()
            self.events.release_logs()


def _launcher_class(config: PoolConfig) -> type[Launcher]:
    """The launcher of ``config.backend``: Ray's is imported only when asked for."""
    if config.backend == "ray":
        from ._ray import RayLauncher

        return RayLauncher
    return Launcher
