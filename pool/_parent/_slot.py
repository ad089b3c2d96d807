"""A worker slot: the part of a shard that outlives its processes.

Routing maps each asset to a slot for the pool's whole life; processes come and go in it. What was
published lives in the slot, not in a process: the queue of frames and control messages not yet sent,
the sequence numbers that say how much of it has been applied, the replies callers wait for, the assets
it holds books for (and which of those are stale), and the restart record the supervisor keeps. When a
process dies, what it had been sent but had not acknowledged comes back to the front of the queue
(`requeue`), so the next process receives it again, in order.

Threads: the queue, the sequence numbers and the book sets are changed by the caller's thread (publish,
mark_stale, get_book) and by the loop's tasks (the writer, the reader, the supervisor), so each change
holds the slot's lock, for a few dictionary and list operations at most. Everything else is the loop's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from pool._exceptions import BrokenWorkerError, PoolClosedError
from pool._wire._protocol import GetBook, Handoff, Install, Rebuild, RunTask, TaskDone, ToWorker, Trim
from pool.models import BookChecks, BookState, BookView, ExitReason, RecycleCause, WorkerState

from ._changes import Changes
from ._tasks import TaskBoard

if TYPE_CHECKING:
    from ._process import WorkerProcess

__all__ = ["NO_LIMIT", "NO_ROOM", "QUEUED", "SEND_NOW", "QueueItem", "Reply", "Slot"]

# What `Slot.offer` says of a frame.
QUEUED = 0
SEND_NOW = 1  # queued, and so few frames are in flight that the caller should send now, not batch
# Below this many unapplied frames a frame is sent at once: a burst (ten frames in a millisecond at 10,000
# msg/s) then goes out as it is published instead of waiting for an acknowledgement, and a worker
# that keeps up gets frames, not a system call's worth of batching delay. Above it, frames batch.
_SEND_NOW_BELOW = 8
NO_ROOM = 2
NO_LIMIT = sys.maxsize
# What a quarantined frame is replaced with: a frame of no events, which a worker applies as nothing.
_QUARANTINED_FRAME = b"[]"

# What the writer sends next: frames (in publish order), then optionally one control message.
QueueItem = tuple[list[bytes], ToWorker | None]


@dataclass(eq=False)
class Reply:
    """The answer to a request (`GetBook`, `Trim`): ``done`` once answered or once the slot is given up."""

    done: bool = False
    answered: bool = False
    book: BookView | None = None
    data: bytes | None = None  # a `Handoff`'s books


class Slot:
    """One shard's durable state. See the module docstring for which thread may call what."""

    def __init__(self, worker_id: int, changes: Changes, task_max_retries: int = 1, task_window: int = 8) -> None:
        self.worker_id = worker_id
        self.tasks = TaskBoard(worker_id, task_max_retries, task_window)
        self.state = WorkerState.STARTING
        self._changes = changes
        self._lock = threading.Lock()
        # The current process and, during a memory recycle, its started replacement.
        self.process: WorkerProcess | None = None
        self.standby: WorkerProcess | None = None
        self.standby_ready: anyio.Event | None = None  # set once a recycle's standby has started (or failed)
        # The queue: frames appended by publish, and items (frames, control) for controls and requeues.
        self._frames: list[bytes] = []
        self._queue: deque[QueueItem] = deque()
        self.published = 0  # frames queued for this slot, ever
        self._seq_base = 0  # frames finished by earlier processes, or dropped while recovering
        # _seq_base + frames the current process has applied. A plain attribute, because publish reads it
        # for every frame to apply backpressure; only the slot's methods change it.
        self.applied = 0
        self._replies: dict[int, Reply] = {}
        self._next_request = 0
        self._closed = False  # `Stop` is queued
        # Books: assets a `book` was routed here for; of those, the ones known to be waiting for a snapshot;
        # of those, the ones a feed marked (`mark_stale`): a recovery snapshot does not clear them, a `book` does.
        self._assets: set[str] = set()
        # Per asset, the slot's count of published frames when its latest `book` was queued: a worker's
        # report that it rejected a book is stale news if a later book has been queued but not yet applied.
        self._latest_book: dict[str, int] = {}
        self._stale: set[str] = set()
        self._marked_stale: set[str] = set()
        # The held books that are closed because their market settled, as the worker last reported them: a
        # rebuild installs them as they are (no snapshot source serves a settled market's book).
        self._resolved: dict[str, BookState] = {}
        # Poison frames (by index in the slot's frames ever published): the frames a hang left in flight, the
        # frame a careful process last hung on, and the end of the frames to send carefully (`careful_frames`).
        self._suspects = range(0)
        self._hung_on: int | None = None
        self._careful_end = 0
        self.quarantined = 0  # frames skipped for good, each after a second hang on it
        self.refetch = False  # frames were dropped during a snapshot fetch: fetch again
        self.dropped = 0  # frames dropped from the buffer while recovering, ever (counted in `applied` too)
        # Recycling: ``holding`` sends nothing more to the current process (it is about to be replaced);
        # ``recycling`` makes queries wait for the replacement instead of answering stale.
        self.holding = False
        self.recycling = False
        # Set by publish (any thread) when it asked the loop to wake this slot's writer; cleared by `wake`.
        self.wake_requested = False
        # The books a recycled process handed over, until its replacement is sent them; and the record.
        self.handoff: bytes | None = None
        self.recycles: dict[RecycleCause, int] = {}  # replacements for memory, by cause
        self.peak_memory_bytes = 0
        self.recycling_futile = False  # a fresh replacement was already at its cap: recycling cannot help
        self.last_recycle_seconds: float | None = None  # breach (handoff asked) to the replacement serving
        # The restart record, kept by the supervisor.
        self.restarts = 0
        self.abnormal_exits: deque[float] = deque()  # monotonic times, pruned to restart_window
        self.last_exit_reason: ExitReason | None = None
        self.last_restart_at: float | None = None  # wall-clock time
        self.last_memory_exit: float | None = None  # monotonic time of the last memory recycle or restart
        self.exit_code: int | None = None
        # The rejections counted by the slot's exited processes: its counters are cumulative across restarts.
        self.retired_errors = 0
        self.retired_handler_errors = 0
        self.retired_rejections: dict[str, int] = {}
        self.retired_checks = BookChecks()
        self.broken: BrokenWorkerError | None = None  # set once the slot is given up (failed or stopped)
        self._work = anyio.Event()
        self._running = anyio.Event()

    # ---------------------------------------------------------------------------- publish (any thread)

    @property
    def pending(self) -> int:
        """Frames queued or in flight that no process has applied yet."""
        return self.published - self.applied

    def offer(self, frame: bytes, limit: int) -> int:
        """Queue one frame behind everything queued so far, if the slot has room for it: `QUEUED`, `SEND_NOW`
        (few frames in flight: send now), or `NO_ROOM` (``limit`` frames are unapplied, or the slot was given
        up) with nothing queued. `NO_LIMIT` queues whatever is pending, unless the slot was given up.

        One call for the whole one-frame publish, since a call costs as much as the work it does.

        Raises:
            PoolClosedError: the slot's `Stop` is queued.
        """
        lock = self._lock
        lock.acquire()  # not `with`: its protocol costs as much again as the lock, on every frame
        try:
            pending = self.published - self.applied
            if pending >= limit or self.broken is not None or self._closed:
                if self._closed:
                    raise self._closed_error()
                return NO_ROOM
            self._frames.append(frame)
            self.published += 1
        finally:
            lock.release()
        return SEND_NOW if pending < _SEND_NOW_BELOW else QUEUED

    def _closed_error(self) -> PoolClosedError:
        return PoolClosedError(
            f"the pool was shut down during this publish; worker {self.worker_id} takes no more frames"
        )

    def close(self, stop: ToWorker) -> None:
        """Queue ``stop`` behind everything queued so far and accept nothing after it."""
        tasks = self.tasks.take(everything=True)  # every task submitted runs before the worker stops
        with self._lock:
            self._closed = True
            for message in [*tasks, stop]:
                self._append_control(message)
        self.wake()

    def enqueue_control(self, message: ToWorker) -> None:
        """Queue a control message behind every frame queued so far (the writer must then be woken)."""
        with self._lock:
            self._append_control(message)

    def _append_control(self, message: ToWorker) -> None:
        """Queue ``message`` behind every frame queued so far; call holding the lock."""
        self._queue.append((self._frames, message))
        self._frames = []

    def request(self, make: Callable[[int], GetBook | Trim | Handoff]) -> Reply:
        """Queue a request behind every frame queued so far and return where its answer will land.

        Raises:
            BrokenWorkerError: the slot has been given up.
        """
        with self._lock:
            self.check_alive()
            self._next_request += 1
            reply = self._replies[self._next_request] = Reply()
            self._append_control(make(self._next_request))
        return reply

    def drop_buffered(self) -> int:
        """Drop every queued frame (requests stay); the caller re-snapshots the slot's books instead.

        Only while recovering: the replacement has received none of them, and a fresh snapshot covers them.
        Returns how many were dropped; they count as done for `flush` (the caller notifies waiters).
        """
        with self._lock:
            dropped = len(self._frames) + sum(len(frames) for frames, _ in self._queue)
            self._queue = deque(([], control) for _, control in self._queue if control is not None)
            self._frames = []
            self._seq_base += dropped
            self.applied += dropped
            self.dropped += dropped
            self.refetch = True
        return dropped

    def check_alive(self) -> None:
        """Raise the slot's `BrokenWorkerError` if it has been given up."""
        if self.broken is not None:
            raise self.broken

    # ------------------------------------------------------------------------- books (any thread)

    @property
    def book_count(self) -> int:
        """Assets this slot holds a book for (as routed: a `book` was published for each)."""
        return len(self._assets)

    @property
    def stale_count(self) -> int:
        return len(self._stale)

    def holds(self, asset_id: str) -> bool:
        return asset_id in self._assets

    def note_book(self, asset_id: str) -> bool:
        """A `book` for ``asset_id`` is queued here: the slot holds it, and it is live once applied.

        Returns True if it had been stale (the caller reports it live).
        """
        with self._lock:
            self._assets.add(asset_id)
            self._latest_book[asset_id] = self.published
            if asset_id not in self._stale:
                return False
            self._stale.discard(asset_id)
            self._marked_stale.discard(asset_id)
            return True

    def mark_stale(self, asset_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Flag the held ones of ``asset_ids`` stale until their next `book`; return (held, newly stale).
        A closed book (its market settled) is left alone: it can miss nothing more."""
        with self._lock:
            held = sorted(self._assets.intersection(asset_ids).difference(self._resolved))
            newly = [asset_id for asset_id in held if asset_id not in self._stale]
            self._stale.update(held)
            self._marked_stale.update(held)
        return held, newly

    def drop_books(self, asset_ids: Iterable[str]) -> list[str]:
        """Hold the books of ``asset_ids`` no more; return the ones held, sorted. A replacement does not
        rebuild them, and `get_book` says the asset has no book."""
        with self._lock:
            held = sorted(self._assets.intersection(asset_ids))
            self._assets.difference_update(held)
            self._stale.difference_update(held)
            self._marked_stale.difference_update(held)
            for asset_id in held:
                self._latest_book.pop(asset_id, None)
                self._resolved.pop(asset_id, None)
        return held

    def retire(self, process: WorkerProcess) -> None:
        """Keep the counts an exited process reported, so the slot's totals outlive it. From then on they
        are counted here only (`WorkerProcess.retired`), though the process stays the slot's until the next."""
        stats = process.stats
        if process.retired or stats is None:
            return
        process.retired = True
        self.retired_errors += stats.errors
        self.retired_handler_errors += stats.handler_errors
        add_counts(self.retired_rejections, stats.rejections)
        self.retired_checks += process.checks

    def recycled(self, cause: RecycleCause) -> None:
        """Count a replacement made for memory."""
        self.recycles[cause] = self.recycles.get(cause, 0) + 1

    def stale_in_worker(self, asset_ids: Iterable[str]) -> list[str]:
        """The worker holds ``asset_ids`` stale (it rejected their `book`, or their quotes disagreed with the
        book); return the newly stale.

        The slot holds them from now on (so a replacement asks the snapshot source for them), stale until a
        `book` or a recovery snapshot is applied. An asset with a later `book` queued and not yet applied is
        left alone: that book decides. Call after `progressed` for the same report."""
        with self._lock:
            current = [a for a in asset_ids if self._latest_book.get(a, 0) <= self.applied]
            newly = sorted(set(current) - self._stale)
            self._assets.update(current)
            self._stale.update(newly)
        return newly

    def books_resolved(self, states: Iterable[BookState]) -> None:
        """The worker closed these books (their market settled): keep them, for a rebuild, and never stale."""
        with self._lock:
            for state in states:
                if state.asset_id in self._assets:  # else dropped since: the worker drops it too
                    self._resolved[state.asset_id] = state
                    self._stale.discard(state.asset_id)
                    self._marked_stale.discard(state.asset_id)

    def begin_rebuild(self) -> tuple[list[str], list[BookState]]:
        """Mark every held book stale for a rebuild; return them, sorted, but for the closed ones, returned
        apart as they are to be installed."""
        with self._lock:
            assets = sorted(self._assets.difference(self._resolved))
            self._stale.update(assets)
            return assets, list(self._resolved.values())

    def end_rebuild(self, rebuilt: Iterable[str]) -> tuple[list[str], list[str]]:
        """Books rebuilt from snapshots are live again, except those a feed marked; return (live, marked)."""
        with self._lock:
            rebuilt = set(rebuilt)
            marked = sorted(self._marked_stale.intersection(rebuilt))
            live = sorted(rebuilt - self._marked_stale)
            self._stale.difference_update(live)
        return live, marked

    # ------------------------------------------------------------------------------- the loop only

    def wake(self) -> None:
        """Tell the writer there is something to send."""
        self._work.set()

    async def wait_for_work(self) -> None:
        await self._work.wait()
        self._work = anyio.Event()
        # Cleared by the writer once it is awake, before it takes the queue: a publish that saw the flag set
        # had queued its frame before, so the writer takes it; one that queues after this point wakes it again.
        self.wake_requested = False

    def has_queued(self) -> bool:
        """True if anything waits to be sent."""
        return bool(self._frames or self._queue)

    def take(self) -> QueueItem | None:
        """The next item for the writer to send, or ``None`` when there is none (or the slot is holding)."""
        if self.holding:
            return None
        with self._lock:
            if self._queue:
                item = self._queue.popleft()
                if isinstance(item[1], Handoff):
                    self.holding = True  # what follows it is for the replacement
                return item
            if self._frames:
                frames, self._frames = self._frames, []
                return frames, None
        return None

    def enqueue_first(self, message: Rebuild | Install) -> None:
        """Put a rebuild (or the books a recycle handed over) ahead of everything queued: the frames it must
        precede are all behind it.

        One still queued from an earlier recovery is dropped: it is older than this one.
        """
        with self._lock:
            self._queue = deque(item for item in self._queue if not isinstance(item[1], Rebuild | Install))
            self._queue.appendleft(([], message))
        self.wake()

    def requeue(self, items: list[QueueItem], applied_by_process: int, pid: int | None = None) -> None:
        """A process ended: ``items`` (what it had not finished, in order) go back to the front of the queue,
        and the frames it applied are final. A `Handoff` it had not answered ends unanswered (its books
        went with it) instead of going to the replacement; a task it was running is retried, or fails once
        it has been cut short ``task_max_retries`` times (see `TaskBoard.requeued`)."""

        def cut_short(attempts: int) -> BrokenWorkerError:
            return BrokenWorkerError(
                f"worker {self.worker_id} (pid {pid}) died while running this task, {attempts} times "
                "(task_max_retries allows one run fewer)",
                worker_id=self.worker_id,
                pid=pid,
            )

        with self._lock:
            self._seq_base += applied_by_process
            self.applied = self._seq_base
            kept: list[QueueItem] = []
            for frames, control in items:
                if isinstance(control, Handoff):
                    reply = self._replies.pop(control.request_id, None)
                    if reply is not None:
                        reply.done = True
                    control = None
                elif isinstance(control, RunTask) and not self.tasks.requeued(control.task_id, cut_short):
                    control = None
                if frames or control is not None:
                    kept.append((frames, control))
            self._queue.extendleft(reversed(kept))
        self._changes.notify()

    def careful_frames(self) -> int:
        """How many of the frames a new process is sent first must go carefully (`WorkerProcess.careful_until`)."""
        return max(0, self._careful_end - self._seq_base)

    def note_hang(self, offset: int | None, unfinished: int) -> bytes | None:
        """A process hung and was killed; call after `requeue`, before `recovering` (from then on publish may
        drop the queue). Return the frame it quarantined, if any.

        ``offset`` is where, among the ``unfinished`` frames requeued, is the one it said it was applying
        (`WorkerProcess.hung_on`), or ``None`` if it did not say. A hang that does not say makes every frame
        it left unfinished a suspect, sent carefully to the replacement; a frame that a careful process then
        hangs on, and that was a suspect or hung a careful process before, has hung two processes: it is
        replaced in the queue by an empty frame, which keeps the slot's count of frames.
        """
        with self._lock:
            first = self._seq_base  # the index of the first frame requeued
            if offset is None:
                if unfinished:
                    self._suspects = range(first, first + unfinished)
                    self._careful_end = max(self._careful_end, first + unfinished)
                return None
            index = first + offset
            if index not in self._suspects and index != self._hung_on:
                self._hung_on = index
                self._careful_end = max(self._careful_end, index + 1)  # so the next process says so again
                return None
            self._suspects, self._hung_on = range(0), None
            for frames in (*(frames for frames, _ in self._queue), self._frames):
                if offset < len(frames):
                    self.quarantined += 1
                    poison, frames[offset] = frames[offset], _QUARANTINED_FRAME
                    return poison
                offset -= len(frames)
            return None  # not queued any more (cannot happen while the slot is still `running`)

    def progressed(self, applied_by_process: int) -> None:
        """The current process has applied ``applied_by_process`` frames in all."""
        with self._lock:
            self.applied = self._seq_base + applied_by_process
        self._changes.notify()

    def task_started(self, task_id: int) -> None:
        self.tasks.started(task_id)
        self._changes.notify()

    def task_done(self, done: TaskDone) -> None:
        """The worker finished a task: file its outcome and queue the next tasks the window has room for."""
        self.tasks.finished_with(done)
        self.dispatch_tasks()
        self._changes.notify()

    def task_timed_out(self, task_id: int, error: BaseException) -> None:
        """A task ran too long: it fails now (its process is about to be killed, and it is not retried)."""
        self.tasks.fail(task_id, error)
        self.dispatch_tasks()
        self._changes.notify()

    def dispatch_tasks(self) -> None:
        """Queue the tasks the window has room for (behind every frame queued so far) and wake the writer."""
        if self.queue_controls(self.tasks.take()):
            self.wake()

    def queue_controls(self, messages: list[RunTask]) -> bool:
        """Queue ``messages`` behind every frame queued so far; True if there were any (wake the writer)."""
        if not messages:
            return False
        with self._lock:
            for message in messages:
                self._append_control(message)
        return True

    def answer(self, request_id: int, book: BookView | None, data: bytes | None = None) -> None:
        reply = self._replies.pop(request_id, None)
        if reply is not None:
            reply.book, reply.data = book, data
            reply.answered = reply.done = True
            self._changes.notify()

    async def wait_answer(self, reply: Reply, timeout: float) -> bool:
        """Wait until ``reply`` is done; False if ``timeout`` passed first."""
        return await self._changes.wait_async(lambda: reply.done, time.monotonic() + timeout)

    def is_waiting_for(self, request_id: int) -> bool:
        return request_id in self._replies

    def running(self) -> None:
        """A process serves the slot again."""
        self.state = WorkerState.RUNNING
        self.recycling = self.holding = False
        self._running.set()
        self.wake()  # frames requeued from the last process may be waiting

    def recovering(self) -> None:
        """The process is gone; the supervisor restarts it or gives the slot up."""
        self.state = WorkerState.RECOVERING
        self._running = anyio.Event()
        self._changes.notify()  # a publish waiting for room may go on: a recovering slot never blocks it

    async def wait_running(self) -> None:
        """Return once the slot runs a process again, or has been given up."""
        await self._running.wait()

    def stopped(self, how: str) -> None:
        """The slot ended with the pool (its process "was ``how``"): calls waiting on it raise, saying so."""
        pid = self.process.pid if self.process is not None else None
        self.state = WorkerState.STOPPED
        self.last_exit_reason = ExitReason.SHUTDOWN
        if self.broken is None:
            self.fail(
                BrokenWorkerError(f"worker {self.worker_id} (pid {pid}) was {how}", worker_id=self.worker_id, pid=pid)
            )

    def fail(self, error: BrokenWorkerError) -> None:
        """Give the slot up: every call waiting on it, now or later, raises ``error``."""
        self.tasks.fail_all(error)
        with self._lock:
            self.broken = error
            replies, self._replies = self._replies, {}
        for reply in replies.values():
            reply.done = True
        self._running.set()
        self._changes.notify()

    def recent_abnormal_exits(self, window: float) -> int:
        """Abnormal exits within the last ``window`` seconds (older ones are forgotten)."""
        horizon = time.monotonic() - window
        while self.abnormal_exits and self.abnormal_exits[0] < horizon:
            self.abnormal_exits.popleft()
        return len(self.abnormal_exits)


def add_counts(totals: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Add ``counts`` into ``totals`` key by key; return ``totals``."""
    for key, count in counts.items():
        totals[key] = totals.get(key, 0) + count
    return totals
