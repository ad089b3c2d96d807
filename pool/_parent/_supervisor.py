"""Supervision: notice dead and hung workers, restart them within limits, and rebuild their books.

A dead worker is seen at once (its handle's watcher waits on the process sentinel); a hung one when it
has been silent for ``heartbeat_timeout`` (the health loop kills it). Either way the slot goes to
``recovering`` and its supervisor task:

1. decides whether the exit may be restarted: abnormal exits (crash, kill we did not send, hang) spend a
   budget of ``max_restarts`` per ``restart_window`` seconds, as OTP supervisors do; past it the slot is
   ``failed`` and the pool ``degraded``;
2. waits a back-off (none for the first restart, then exponential with jitter, capped), so a crash loop
   costs the parent almost no CPU;
3. starts a replacement in the same slot (routing never changes);
4. rebuilds: fetches fresh snapshots of every asset the slot held and queues them ahead of everything the
   dead worker had not applied (its in-flight frames, requeued by the handle, and whatever was published
   meanwhile). The worker installs each snapshot and then skips replayed updates older than it, so each
   book ends as if nothing had happened. Without a snapshot source, or for assets the source cannot
   serve, the books are marked stale and ``on_resync`` receives their ids;
5. puts the slot back to ``running``.

While a slot recovers, `publish` keeps queueing its frames, up to ``max_pending_messages``; past that the
queued frames are dropped and the snapshots fetched again, because a snapshot taken later covers them.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.context import BaseContext
from typing import Any, TypeAlias

import anyio
import anyio.abc

from pool._exceptions import BrokenWorkerError, WorkerStartupError
from pool._parent._events import EventHub
from pool._parent._handle import WorkerHandle, describe_exit
from pool._parent._snapshots import SnapshotSource, snapshot_frames
from pool._wire._protocol import Rebuild
from pool._worker._loop import HandlerFactory
from pool.models import ExitReason, MessageError, PoolConfig, PoolEvent, PoolEventKind, WorkerState

__all__ = ["ResyncCallback", "Supervisor"]

ResyncCallback: TypeAlias = Callable[[list[str]], Awaitable[None] | None]

_ABNORMAL = frozenset({ExitReason.CRASH, ExitReason.KILLED, ExitReason.HANG})

# Restart back-off: the first restart in a window is immediate (a lone crash should cost as little
# downtime as possible); each further one waits twice as long, from _BACKOFF_BASE up to _BACKOFF_CAP,
# times a random factor in [0.5, 1] so that workers of several pools do not restart in lock step.
_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 10.0

# A snapshot fetch that takes longer than this is abandoned and retried (with the same back-off). Raise
# it for a slow REST source and many assets; lowering it only makes a slow source fail sooner.
SNAPSHOT_TIMEOUT = 10.0


class Supervisor:
    """Restarts and rebuilds the pool's worker slots; owned by `PersistentWorkerPool`."""

    def __init__(
        self,
        config: PoolConfig,
        handles: list[WorkerHandle],
        context: BaseContext,
        handler_factory: HandlerFactory | str | None,
        snapshot_source: SnapshotSource | None,
        on_resync: ResyncCallback | None,
        events: EventHub,
        log: Any,
    ) -> None:
        self._config = config
        self._handles = handles
        self._context = context
        self._handler_factory = handler_factory
        self._source = snapshot_source
        self._on_resync = on_resync
        self._events = events
        self._log = log
        self.stopping = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._scope = anyio.CancelScope()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Serve every started slot and watch over it, in ``task_group``."""
        self._task_group = task_group
        for handle in self._handles:
            handle.serve(task_group)
        task_group.start_soon(self._run, name="pool-supervisor")

    def stop(self) -> None:
        """Stop restarting and checking: the pool is shutting down."""
        self.stopping = True
        self._scope.cancel()

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tasks:
                for handle in self._handles:
                    tasks.start_soon(self._supervise, handle, name=f"pool-supervisor-{handle.worker_id}")
                tasks.start_soon(self._health_loop, name="pool-health")

    # ------------------------------------------------------------------------------- restart loop

    async def _supervise(self, handle: WorkerHandle) -> None:
        while True:
            await handle.exited.wait()
            if self.stopping:
                return
            if not await self._restart(handle):
                return

    async def _restart(self, handle: WorkerHandle) -> bool:
        """Bring a dead slot back; False when it has been given up (or the pool is stopping)."""
        reason = handle.last_exit_reason
        if reason is ExitReason.MEMORY:
            # A memory recycle spends restart budget only when it repeats abnormally fast: within one
            # restart_window of the previous one (a worker that outgrows its cap that quickly is broken).
            now, previous = time.monotonic(), handle.last_memory_exit
            handle.last_memory_exit = now
            if previous is not None and now - previous < self._config.restart_window:
                handle.abnormal_exits.append(now)
        while True:
            if reason in _ABNORMAL:
                handle.abnormal_exits.append(time.monotonic())
            if not self._within_budget(handle):
                self._give_up(handle)
                return False
            await anyio.sleep(self._backoff(handle) if reason in _ABNORMAL else 0.0)
            if self.stopping:
                return False
            begun = time.monotonic()
            standby, handle.standby = handle.standby, None
            if standby is not None:
                handle.adopt(standby)  # a recycle: the replacement is already running
                break
            try:
                await handle.spawn(self._context, self._config.worker_count, self._handler_factory)
                await handle.handshake()
            except WorkerStartupError as exc:
                reason = ExitReason.CRASH
                handle.last_exit_reason = reason
                self._log.warning("worker_restart_failed", worker_id=handle.worker_id, error=str(exc))
                continue
            break
        handle.restarts += 1
        handle.last_restart_at = time.time()
        self._emit(handle, PoolEventKind.WORKER_RESTARTED, reason=reason)
        await self._rebuild(handle)
        assert self._task_group is not None
        handle.serve(self._task_group)
        self._emit(
            handle,
            PoolEventKind.WORKER_RECOVERED,
            detail=f"running again {time.monotonic() - begun:.3f} s after the replacement was started",
        )
        return True

    async def recycle(self, handle: WorkerHandle) -> None:
        """Replace a running worker with no gap: start and handshake the replacement first, then swap.

        The old worker is sent nothing more meanwhile (its frames wait in the slot's queue for the
        replacement), so work cannot grow it further while the replacement starts.
        """
        handle.holding = True
        standby = WorkerHandle(handle.worker_id, self._config, self._log, self._events.emit)
        try:
            await standby.spawn(self._context, self._config.worker_count, self._handler_factory)
            await standby.handshake()
        except WorkerStartupError as exc:
            self._log.warning("worker_recycle_fell_back_to_restart", worker_id=handle.worker_id, error=str(exc))
        else:
            handle.standby = standby
            handle.recycling = True
        exited = handle.exited
        handle.kill_for(ExitReason.MEMORY)
        await exited.wait()

    def _within_budget(self, handle: WorkerHandle) -> bool:
        horizon = time.monotonic() - self._config.restart_window
        while handle.abnormal_exits and handle.abnormal_exits[0] < horizon:
            handle.abnormal_exits.popleft()
        return len(handle.abnormal_exits) <= self._config.max_restarts

    def _backoff(self, handle: WorkerHandle) -> float:
        streak = len(handle.abnormal_exits)
        if streak <= 1:
            return 0.0
        delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (streak - 2)) * random.uniform(0.5, 1.0)
        return delay

    def _give_up(self, handle: WorkerHandle) -> None:
        handle.state = WorkerState.FAILED
        handle.exited.set()  # no process is left in the slot (a failed replacement was reaped)
        detail = (
            f"more than max_restarts={self._config.max_restarts} abnormal exits within "
            f"restart_window={self._config.restart_window:g} s; last: {describe_exit(handle.exit_code)}"
        )
        handle.fail(
            BrokenWorkerError(
                f"worker {handle.worker_id} failed: {detail}. Its books are unavailable until the pool is "
                "restarted; check the worker's stderr for the cause",
                worker_id=handle.worker_id,
                pid=handle.pid,
            )
        )
        self._emit(handle, PoolEventKind.WORKER_FAILED, reason=handle.last_exit_reason, detail=detail)

    # -------------------------------------------------------------------------------- hang check

    async def _health_loop(self) -> None:
        timeout = self._config.effective_heartbeat_timeout
        # Check four times per timeout: a hang is caught within 1.25 timeouts, for a negligible cost.
        period = timeout / 4
        while True:
            await anyio.sleep(period)
            now = time.monotonic()
            for handle in self._handles:
                silent = now - handle.last_heard
                if handle.state is WorkerState.RUNNING and silent > timeout:
                    self._emit(
                        handle,
                        PoolEventKind.WORKER_HUNG,
                        detail=f"silent for {silent:.1f} s (heartbeat_timeout={timeout:g} s); killing it",
                    )
                    handle.kill_for(ExitReason.HANG)

    # ------------------------------------------------------------------------------------ rebuild

    async def _rebuild(self, handle: WorkerHandle) -> None:
        """Queue the slot's recovery snapshots ahead of everything else for the replacement."""
        assets = sorted(handle.assets)
        if not assets:
            return
        handle.stale.update(assets)
        self._emit(handle, PoolEventKind.BOOK_STALE, asset_ids=assets, detail="rebuilding from snapshots")
        frames = await self._fetch(handle, assets) if self._source is not None else {}
        missing = [asset_id for asset_id in assets if asset_id not in frames]
        # A book a feed marked stale stays stale when rebuilt: the feed may have missed updates since.
        marked = sorted(handle.marked_stale.intersection(frames))
        handle.enqueue_first(Rebuild(books=list(frames.values()), stale=missing + marked))
        live = sorted(frames.keys() - handle.marked_stale)
        handle.stale.difference_update(live)
        if live:
            self._emit(handle, PoolEventKind.BOOK_LIVE, asset_ids=live, detail="rebuilt from snapshots")
        if missing:
            self._resync(handle, missing)

    async def _fetch(self, handle: WorkerHandle, assets: Sequence[str]) -> dict[str, bytes]:
        """Fetch snapshots until one attempt succeeds after the last overflow of the slot's buffer."""
        assert self._source is not None
        attempt = 0
        while not self.stopping:
            handle.refetch = False
            try:
                with anyio.fail_after(SNAPSHOT_TIMEOUT):
                    snapshots = await self._source.fetch(list(assets))
                frames = snapshot_frames(snapshots, set(assets))
            except (Exception, TimeoutError) as exc:
                attempt += 1
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
                self._log.warning(
                    "snapshot_fetch_failed",
                    worker_id=handle.worker_id,
                    attempt=attempt,
                    retry_in=round(delay, 3),
                    error=repr(exc) if not isinstance(exc, MessageError) else str(exc),
                )
                await anyio.sleep(delay)
                continue
            if not handle.refetch:
                return frames
        return {}

    def _resync(self, handle: WorkerHandle, asset_ids: list[str]) -> None:
        self._emit(handle, PoolEventKind.BOOK_STALE, asset_ids=asset_ids, detail="no snapshot; waiting for a `book`")
        if self._on_resync is None:
            return
        try:
            result = self._on_resync(list(asset_ids))
            if inspect.isawaitable(result):
                assert self._task_group is not None
                self._task_group.start_soon(self._await_resync, result)
        except Exception:
            self._log.exception("on_resync_failed", worker_id=handle.worker_id)

    async def _await_resync(self, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception:
            self._log.exception("on_resync_failed")

    def _emit(self, handle: WorkerHandle, kind: PoolEventKind, **fields: Any) -> None:
        self._events.emit(PoolEvent(kind=kind, worker_id=handle.worker_id, pid=handle.pid, **fields))
