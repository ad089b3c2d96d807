"""Supervision: notice dead and hung workers, restart them within limits, and rebuild their books.

Data flow::

    caller's thread (sync) or task (async)
      publish / mark_stale / get_book          flush / get_book / backpressure wait on `Changes`
        | Publisher: asset id -> slot (jump hash, cached); append raw bytes under the slot's lock;
        | wake the slot's writer (inline on the loop; else LoopWaker: one byte on a socket pair)
        v
    +------------------------------ the pool's event loop -------------------------------+
    |  Slot 0 ... Slot N-1: queue, applied count, replies, held/stale books, restart record |
    |    WorkerProcess (one incarnation of the slot):                                       |
    |      writer --- Boot / Batch / GetBook / Trim / Rebuild / MarkStale / Stop --> socket ----> worker
    |      reader <-- Ready / Progress (ack, stats, log tallies) / BookReply ------ socket <---- process
    |      watcher: pidfd readable -> requeue the in-flight, Supervisor.on_exit                  |
    |  Supervisor: restart (budget, back-off), rebuild from the SnapshotSource, health loop  |
    |  MemoryWatch: USS against the cap -> trim, then recycle (standby WorkerProcess) / restart |
    |  status sampler: system memory, throughput, log tallies; get_status reads slots only  |
    +---------------------------------------------------------------------------------------+

    worker process (pool._worker): Boot -> build the handler -> Ready; then recv Batch -> decode each
    frame (msgspec) -> apply to its BookStore -> call the handler -> send Progress (ack + stats + tallies)

* publish: the caller's thread routes each frame and queues its raw bytes; a frame whose entries span
  several slots goes to each of them. A slot with ``max_pending_messages`` frames not applied makes the
  caller wait (a recovering slot drops its buffer instead and fetches fresh snapshots).
* reply: a query (`GetBook`) goes down the same ordered channel as the data, so its answer reflects
  every frame published before it; the reader files the answer in the slot and notifies `Changes`.
* crash: the watcher sees the exit at once, puts what the process had not acknowledged back at the front
  of the slot's queue, and `on_exit` marks the slot ``recovering``. The slot's supervising task:

  1. decides whether the exit may be restarted: abnormal exits (crash, kill we did not send, hang) spend a
     budget of ``max_restarts`` per ``restart_window`` seconds, as OTP supervisors do; past it the slot is
     ``failed`` and the pool ``degraded``;
  2. waits a back-off (none for the first restart, then exponential with jitter, capped), so a crash loop
     costs the parent almost no CPU;
  3. starts a replacement in the same slot (routing never changes);
  4. rebuilds: fetches fresh snapshots of every asset the slot held and queues them ahead of everything the
     dead worker had not applied. The worker installs each snapshot and then skips replayed updates older
     than it, so each book ends as if nothing had happened. Without a snapshot source, or for assets the
     source cannot serve, the books are marked stale and ``on_resync`` receives their ids;
  5. puts the slot back to ``running``.

* recycle (`Supervisor.recycle`): the old process is sent a ``Handoff`` and nothing after it, answers with
  its books and is killed; the restart adopts the standby started meanwhile and queues ``Install`` (the
  books) ahead of the frames queued since, instead of fetching snapshots. It never spends the budget.
* shutdown: ``Stop`` is queued behind the data; workers drain, report and exit; after
  ``shutdown_timeout`` the rest get SIGTERM, then SIGKILL; every process is reaped, every fd closed.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import anyio
import anyio.abc
import msgspec

from pool._exceptions import BrokenWorkerError, TaskTimeoutError, WorkerStartupError
from pool._wire._protocol import Handoff, Install, Rebuild
from pool.models import (
    ExitReason,
    MessageError,
    PoolConfig,
    PoolEvent,
    PoolEventKind,
    WorkerState,
    decode_frame,
    event_asset_ids,
)

from ._events import EventHub
from ._process import Launcher, WorkerProcess, describe_exit, explain_exit
from ._slot import Slot
from ._snapshots import SnapshotSource, snapshot_frames

__all__ = ["ResyncCallback", "Supervisor"]

ResyncCallback: TypeAlias = Callable[[list[str]], Awaitable[None] | None]

_ABNORMAL = frozenset({ExitReason.CRASH, ExitReason.KILLED, ExitReason.HANG})

# How long a worker may take to hand its books over (it answers behind what it was already sent).
HANDOFF_TIMEOUT = 10.0

# Restart back-off: the first restart in a window is immediate (a lone crash should cost as little
# downtime as possible); each further one waits twice as long, from _BACKOFF_BASE up to _BACKOFF_CAP,
# times a random factor in [0.5, 1] so that workers of several pools do not restart in lock step.
_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 10.0


class Supervisor:
    """Restarts and rebuilds the pool's slots; owned by the pool's core, runs on its loop."""

    def __init__(
        self,
        config: PoolConfig,
        slots: list[Slot],
        launcher: Launcher,
        snapshot_source: SnapshotSource | None,
        on_resync: ResyncCallback | None,
        events: EventHub,
        log: Any,
    ) -> None:
        self._config = config
        self._slots = slots
        self._launcher = launcher
        self._source = snapshot_source
        self._on_resync = on_resync
        self._events = events
        self._log = log
        self.stopping = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._scope = anyio.CancelScope()
        self._encoder = msgspec.msgpack.Encoder()

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Serve every slot's started process and watch over it, in ``task_group``."""
        self._task_group = task_group
        for slot in self._slots:
            self._serve(slot)
        task_group.start_soon(self._run, name="pool-supervisor")

    def stop(self) -> None:
        """Stop restarting and checking: the pool is shutting down."""
        self.stopping = True
        self._scope.cancel()

    def _serve(self, slot: Slot) -> None:
        assert self._task_group is not None and slot.process is not None
        slot.process.careful_until = slot.careful_frames()
        slot.process.serve(
            self._task_group,
            slot,
            lambda process: self._on_exit(slot, process),
            lambda asset_ids, why: self._resync(slot, asset_ids, why),
        )
        slot.running()

    async def _run(self) -> None:
        with self._scope:
            async with anyio.create_task_group() as tasks:
                for slot in self._slots:
                    tasks.start_soon(self._supervise, slot, name=f"pool-supervisor-{slot.worker_id}")
                tasks.start_soon(self._health_loop, name="pool-health")

    # ------------------------------------------------------------------------------- restart loop

    def _on_exit(self, slot: Slot, process: WorkerProcess) -> None:
        """A process of ``slot`` has exited (called by its watcher, before anything else can run)."""
        stopping = slot.state is WorkerState.STOPPING
        reason = ExitReason.SHUTDOWN if stopping else process.exit_reason
        assert reason is not None
        slot.exit_code = process.exit_code
        slot.last_exit_reason = reason
        slot.retire(process)
        # Before the slot is recovering, so that nothing drops its queue meanwhile.
        poison = self._find_poison(slot, process) if reason is ExitReason.HANG else None
        if stopping:
            slot.stopped("stopped with the pool")
        else:
            slot.recovering()
        self._emit(
            slot,
            PoolEventKind.WORKER_EXITED,
            pid=process.pid,
            reason=reason,
            exit_code=process.exit_code,
            detail=explain_exit(reason, process.exit_code),
        )
        if poison is not None:
            self._quarantined(slot, poison)

    def _find_poison(self, slot: Slot, process: WorkerProcess) -> bytes | None:
        """The frame ``process`` hung on, quarantined if it is the second hang on it (see `Slot.note_hang`).

        Only hangs: a frame that crashes its workers spends the restart budget, and the slot fails visibly.
        """
        hung_on = process.hung_on()
        return slot.note_hang(None if hung_on is None else hung_on - process.acked, process.unfinished_frames)

    def _quarantined(self, slot: Slot, frame: bytes) -> None:
        """Report a quarantined frame, and mark its books stale as a feed would (through the rebuild, until a
        `book`): the update it carried is lost."""
        try:
            assets = sorted({asset_id for event in decode_frame(frame) for asset_id in event_asset_ids(event)})
        except MessageError:
            assets = []
        held, _ = slot.mark_stale(assets)
        self._emit(
            slot,
            PoolEventKind.FRAME_QUARANTINED,
            asset_ids=held,
            detail=f"it hung two workers in turn; skipped for good (frame: {frame[:200].decode('utf-8', 'replace')})",
        )
        self._resync(slot, held, "a frame for it hung two workers and was skipped; waiting for a `book`")

    async def _supervise(self, slot: Slot) -> None:
        while True:
            assert slot.process is not None
            await slot.process.exited.wait()
            if self.stopping or not await self._restart(slot):
                return

    async def _restart(self, slot: Slot) -> bool:
        """Bring a dead slot back; False when it has been given up (or the pool is stopping)."""
        reason = slot.last_exit_reason  # a memory recycle is not abnormal: it never spends the budget
        while True:
            if reason in _ABNORMAL:
                slot.abnormal_exits.append(time.monotonic())
            if slot.recent_abnormal_exits(self._config.restart_window) > self._config.max_restarts:
                self._give_up(slot)
                return False
            await anyio.sleep(self._backoff(slot) if reason in _ABNORMAL else 0.0)
            if self.stopping:
                return False
            begun = time.monotonic()
            if slot.standby_ready is not None:  # a recycle's replacement is starting: take it, not another
                await slot.standby_ready.wait()
            standby, slot.standby = slot.standby, None
            if standby is not None:
                slot.process = standby  # a recycle: the replacement is already running
                break
            try:
                slot.process = await self._launcher.start(slot.worker_id)
            except WorkerStartupError as exc:
                reason = ExitReason.CRASH
                slot.last_exit_reason = reason
                slot.exit_code = exc.exit_code
                self._log.warning("worker_restart_failed", worker_id=slot.worker_id, error=str(exc))
                continue
            break
        slot.restarts += 1
        slot.last_restart_at = time.time()
        self._emit(slot, PoolEventKind.WORKER_RESTARTED, reason=reason)
        handoff, slot.handoff = slot.handoff, None
        if handoff is not None:
            slot.enqueue_first(Install(handoff))  # the old process's books, exactly: nothing to fetch
        else:
            await self._rebuild(slot)
        self._serve(slot)
        self._emit(
            slot,
            PoolEventKind.WORKER_RECOVERED,
            detail=f"running again {time.monotonic() - begun:.3f} s after the replacement was started",
        )
        return True

    async def recycle(self, slot: Slot) -> None:
        """Replace a running worker by handing its books over: no book is stale and no snapshot is fetched.

        At once, the worker is sent a `Handoff` behind what it was sent so far, and nothing after it (so
        work stops growing it), and the replacement starts. The old process answers with every book and is
        killed the moment it has (a leak in it grows no further while the replacement starts); the slot's
        queries wait meanwhile. The replacement gets the books first, the frames queued since behind them.
        If the old process dies before it answers, the replacement rebuilds from snapshots as after a crash.
        """
        begun = time.monotonic()
        process = slot.process
        assert process is not None
        reply = slot.request(Handoff)
        slot.wake()
        slot.standby_ready = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._start_standby, slot, process)
            answered = await slot.wait_answer(reply, HANDOFF_TIMEOUT) and reply.data is not None
            if slot.process is process and slot.broken is None:
                slot.handoff = reply.data if answered else None
                slot.recycling = True
                process.kill(ExitReason.MEMORY)  # the restart adopts the standby once it is ready
        await process.exited.wait()
        await slot.wait_running()
        slot.recycled("handoff" if answered else "rebuild")
        if answered:
            slot.last_recycle_seconds = time.monotonic() - begun
            self._log.info(
                "worker_recycled",
                worker_id=slot.worker_id,
                books=slot.book_count,
                handoff_bytes=len(reply.data or b""),
                seconds=round(slot.last_recycle_seconds, 3),
            )

    async def _start_standby(self, slot: Slot, process: WorkerProcess) -> None:
        """Start ``slot``'s replacement for a recycle; the restart waits for it (`Slot.standby_ready`)."""
        try:
            standby = await self._launcher.start(slot.worker_id)
        except WorkerStartupError as exc:  # the restart starts one itself
            self._log.warning("worker_recycle_standby_failed", worker_id=slot.worker_id, error=str(exc))
        else:
            if slot.process is process and slot.broken is None and not self.stopping:
                slot.standby = standby
            else:  # the old process died first and its restart started another: never leave one unsupervised
                await standby.kill_and_reap()
        finally:
            ready, slot.standby_ready = slot.standby_ready, None
            if ready is not None:
                ready.set()

    def _backoff(self, slot: Slot) -> float:
        streak = len(slot.abnormal_exits)
        if streak <= 1:
            return 0.0
        delay: float = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (streak - 2)) * random.uniform(0.5, 1.0)
        return delay

    def _give_up(self, slot: Slot) -> None:
        standby, slot.standby = slot.standby, None
        if standby is not None and self._task_group is not None:  # never left running unsupervised
            self._task_group.start_soon(standby.kill_and_reap)
        slot.state = WorkerState.FAILED
        detail = (
            f"more than max_restarts={self._config.max_restarts} abnormal exits within "
            f"restart_window={self._config.restart_window:g} s; last: {describe_exit(slot.exit_code)}"
        )
        pid = slot.process.pid if slot.process is not None else None
        slot.fail(
            BrokenWorkerError(
                f"worker {slot.worker_id} failed: {detail}. Its books are unavailable until the pool is "
                "restarted; check the worker's stderr for the cause",
                worker_id=slot.worker_id,
                pid=pid,
            )
        )
        self._emit(slot, PoolEventKind.WORKER_FAILED, reason=slot.last_exit_reason, detail=detail)

    # -------------------------------------------------------------------------------- hang check

    async def _health_loop(self) -> None:
        timeout = self._config.effective_heartbeat_timeout
        task_timeout = self._config.task_timeout
        # Check four times per timeout: a hang is caught within 1.25 timeouts, for a negligible cost.
        period = min(timeout, task_timeout or timeout) / 4
        while True:
            await anyio.sleep(period)
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if slot.state is not WorkerState.RUNNING or process is None:
                    continue
                running = slot.tasks.running
                if running is not None and task_timeout is not None:
                    # A worker running a task sends no heartbeat: the task's own bound replaces that one.
                    task, since = running
                    if now - since > task_timeout:
                        slot.task_timed_out(
                            task.task_id,
                            TaskTimeoutError(
                                f"task {task.task_id} ran longer than task_timeout={task_timeout:g} s; its worker "
                                "was killed as hung, and its books rebuilt"
                            ),
                        )
                        self._emit(
                            slot,
                            PoolEventKind.WORKER_HUNG,
                            detail=f"task {task.task_id} ran longer than task_timeout={task_timeout:g} s; killing it",
                        )
                        process.kill(ExitReason.HANG)
                    continue
                silent = now - process.last_heard
                if silent > timeout:
                    self._emit(
                        slot,
                        PoolEventKind.WORKER_HUNG,
                        detail=f"silent for {silent:.1f} s (heartbeat_timeout={timeout:g} s); killing it",
                    )
                    process.kill(ExitReason.HANG)

    # ------------------------------------------------------------------------------------ rebuild

    async def _rebuild(self, slot: Slot) -> None:
        """Queue the slot's recovery snapshots (and its closed books) ahead of everything else for the
        replacement."""
        assets, closed = slot.begin_rebuild()
        if not assets and not closed:
            return
        if assets:
            self._emit(slot, PoolEventKind.BOOK_STALE, asset_ids=assets, detail="rebuilding from snapshots")
        frames, overrun = await self._fetch(slot, assets) if self._source is not None and assets else ({}, False)
        missing = [asset_id for asset_id in assets if asset_id not in frames]
        if overrun:  # the books are installed as fetched, but may lack updates dropped during the fetch
            slot.mark_stale(frames)
        live, marked = slot.end_rebuild(frames)
        # A book a feed marked stale stays stale when rebuilt: the feed may have missed updates since.
        resolved = self._encoder.encode(closed) if closed else b""
        slot.enqueue_first(Rebuild(books=list(frames.values()), stale=missing + marked, resolved=resolved))
        if live:
            self._emit(slot, PoolEventKind.BOOK_LIVE, asset_ids=live, detail="rebuilt from snapshots")
        if missing:
            self._resync(slot, missing, "no snapshot; waiting for a `book`")
        if overrun:
            self._resync(
                slot,
                marked,
                f"updates were dropped during the snapshot fetch, twice (frames dropped so far: {slot.dropped}): "
                "the buffer of max_pending_messages fills faster than the source answers; waiting for a `book`",
            )

    async def _fetch(self, slot: Slot, assets: Sequence[str]) -> tuple[dict[str, bytes], bool]:
        """Fetch snapshots until one attempt succeeds, and once more if frames were dropped during it.

        A snapshot covers the updates published before it was asked for, so frames dropped from the full
        buffer during a fetch need another. If they are dropped during that one too, the source is slower
        than the buffer fills and fetching again would never end: return the second fetch's books, with
        True (they are to be marked stale: a live feed's `book` makes them exact again).
        """
        assert self._source is not None
        attempt = 0
        refetched = False
        while not self.stopping:
            slot.refetch = False
            try:
                with anyio.fail_after(self._config.snapshot_timeout):
                    snapshots = await self._source.fetch(list(assets))
                frames, skipped = snapshot_frames(snapshots, set(assets))
            except (Exception, TimeoutError) as exc:
                attempt += 1
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
                self._log.warning(
                    "snapshot_fetch_failed",
                    worker_id=slot.worker_id,
                    attempt=attempt,
                    retry_in=round(delay, 3),
                    error=repr(exc) if not isinstance(exc, MessageError) else str(exc),
                )
                await anyio.sleep(delay)
                continue
            if skipped:  # those assets count as missing: stale, and handed to on_resync
                self._log.warning(
                    "snapshot_rejected", worker_id=slot.worker_id, count=len(skipped), example=skipped[0][:300]
                )
            if not slot.refetch or refetched:
                return frames, slot.refetch
            refetched = True
        return {}, False

    def _resync(self, slot: Slot, asset_ids: list[str], detail: str) -> None:
        """Report books stale until a `book` arrives, and hand them to ``on_resync`` (a feed resubscribes)."""
        if not asset_ids:
            return
        self._emit(slot, PoolEventKind.BOOK_STALE, asset_ids=asset_ids, detail=detail)
        if self._on_resync is None:
            return
        try:
            result = self._on_resync(list(asset_ids))
            if inspect.isawaitable(result):
                assert self._task_group is not None
                self._task_group.start_soon(self._await_resync, result)
        except Exception:
            self._log.exception("on_resync_failed", worker_id=slot.worker_id)

    async def _await_resync(self, result: Awaitable[None]) -> None:
        try:
            await result
        except Exception:
            self._log.exception("on_resync_failed")

    def _emit(self, slot: Slot, kind: PoolEventKind, **fields: Any) -> None:
        if "pid" not in fields:
            fields["pid"] = slot.process.pid if slot.process is not None else None
        self._events.emit(PoolEvent(kind=kind, worker_id=slot.worker_id, **fields))
