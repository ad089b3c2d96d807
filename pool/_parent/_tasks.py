"""Tasks: functions of books, run in the worker that holds them, and the handles that wait for them.

Each slot keeps its tasks on a `TaskBoard`. Tasks wait there, by priority, until the slot has fewer than
``task_window`` tasks sent and unfinished (`PoolConfig`); then the next goes into the slot's queue like any
control message, behind every frame queued so far. So a task sees every frame published before it was
submitted (read your writes), never overtakes them, and holds no frame back that was published before it;
and because only the window's tasks are ever ahead in the channel, priorities decide the order in which the
others start, and a pending task can be cancelled for certain (it has not left the parent). A wider window
pipelines more (a task costs a round trip to the worker, so a window of one runs one task per round trip); a
narrower one lets priorities and cancel act on more of the tasks waiting.

A task sent to a process that dies goes back to the front of the queue with the rest (`Slot.requeue`): if
it had started, that counts as an attempt, and past ``task_max_retries`` attempts it fails with
`BrokenWorkerError`; otherwise it runs on the rebuilt book.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pool._exceptions import PoolTimeoutError, RemoteTraceback, TaskCancelledError, TaskError, TaskQueueFullError
from pool._wire._protocol import RunTask, TaskDone
from pool.models import TaskPriority, TaskState, TaskStatus

from ._changes import Changes

__all__ = ["Task", "TaskBoard", "TaskHandle", "TaskWaits", "new_task"]

_FINISHED = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})
_task_ids = itertools.count(1)


@dataclass(eq=False)
class Task:
    """One task on one worker; changed under its board's lock."""

    task_id: int
    worker_id: int
    asset_id: str | None
    priority: TaskPriority
    payload: bytes
    submitted_at: float = field(default_factory=time.time)
    state: TaskState = TaskState.PENDING
    sent: bool = False  # in the slot's queue or on the wire (no longer cancellable)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    value: bytes = b""  # the result, pickled
    failure: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.state in _FINISHED

    def message(self) -> RunTask:
        return RunTask(self.task_id, self.asset_id, self.payload)


def new_task(worker_id: int, asset_id: str | None, priority: TaskPriority, payload: bytes) -> Task:
    return Task(next(_task_ids), worker_id, asset_id, priority, payload)


class TaskBoard:
    """One slot's tasks: waiting by priority, sent, running; and the counts `get_status` shows."""

    def __init__(self, worker_id: int, max_retries: int, window: int) -> None:
        self._worker_id = worker_id
        self._max_retries = max_retries
        self._window = window
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, Task]] = []  # a heap of (-priority, task_id, task)
        self._sent: dict[int, Task] = {}
        self.running: tuple[Task, float] | None = None  # the task running now, and since when (monotonic)
        self.unfinished = 0
        self.finished: dict[TaskState, int] = dict.fromkeys(_FINISHED, 0)

    def add(self, task: Task, limit: int) -> list[RunTask]:
        """Take ``task``; return the messages to queue now (it, or nothing while the window is full).

        Raises:
            TaskQueueFullError: the worker already has ``limit`` tasks not finished.
        """
        with self._lock:
            if self.unfinished >= limit:
                raise TaskQueueFullError(
                    f"worker {self._worker_id} already has {self.unfinished:,} tasks not finished "
                    f"(max_pending_tasks={limit:,}): wait for some (TaskHandle.wait, wait_for_completion), "
                    "or raise max_pending_tasks"
                )
            heapq.heappush(self._waiting, (-task.priority, task.task_id, task))
            self.unfinished += 1
            return self._take(self._window)

    def take(self, *, everything: bool = False) -> list[RunTask]:
        """The messages of the tasks the window now has room for (all of them, for a shutdown's drain)."""
        with self._lock:
            return self._take(len(self._waiting) + len(self._sent) if everything else self._window)

    def _take(self, window: int) -> list[RunTask]:
        messages = []
        while self._waiting and len(self._sent) < window:
            task = heapq.heappop(self._waiting)[2]
            if task.done:  # cancelled while it waited
                continue
            task.sent = True
            self._sent[task.task_id] = task
            messages.append(task.message())
        return messages

    def is_sent(self, task_id: int) -> bool:
        return task_id in self._sent

    def started(self, task_id: int) -> None:
        with self._lock:
            task = self._sent.get(task_id)
            if task is None:
                return
            task.state = TaskState.RUNNING
            task.started_at = time.time()
            task.attempts += 1
            self.running = (task, time.monotonic())

    def finished_with(self, done: TaskDone) -> None:
        """The worker reports ``done``."""
        if not done.failed:
            self._finish(done.task_id, TaskState.COMPLETED, value=done.value)
            return
        self._finish(done.task_id, TaskState.FAILED, failure=_remote_failure(done))

    def fail(self, task_id: int, error: BaseException) -> None:
        """End a sent task as failed with ``error`` (it ran too long; its worker is being killed)."""
        self._finish(task_id, TaskState.FAILED, failure=error)

    def _finish(
        self, task_id: int, state: TaskState, *, value: bytes = b"", failure: BaseException | None = None
    ) -> None:
        with self._lock:
            task = self._sent.pop(task_id, None)
            if task is None or task.done:
                return
            self._end(task, state, value, failure)
            if self.running is not None and self.running[0] is task:
                self.running = None

    def _end(self, task: Task, state: TaskState, value: bytes = b"", failure: BaseException | None = None) -> None:
        task.state, task.value, task.failure = state, value, failure
        task.payload = b""  # the handle may live long; the function and arguments are not needed again
        task.finished_at = time.time()
        self.unfinished -= 1
        self.finished[state] += 1

    def cancel(self, task: Task) -> bool:
        """Cancel ``task`` if it has not left the parent; True if it was cancelled."""
        with self._lock:
            if task.done or task.sent:
                return False
            self._end(task, TaskState.CANCELLED, failure=TaskCancelledError(f"task {task.task_id} was cancelled"))
            # Cancelled tasks leave the heap when they reach its top; a caller that submits and cancels while
            # the worker is busy would otherwise grow it without bound.
            if 2 * self.unfinished < len(self._waiting):
                self._waiting = [entry for entry in self._waiting if not entry[2].done]
                heapq.heapify(self._waiting)
            return True

    def requeued(self, task_id: int, make_error: Callable[[int], BaseException]) -> bool:
        """The process a sent task was sent to died: True to send it to the replacement, False if it has
        failed (it had started, ``max_retries`` times already) or had finished meanwhile."""
        with self._lock:
            task = self._sent.get(task_id)
            if task is None:
                return False
            if self.running is not None and self.running[0] is task:
                self.running = None
            if task.state is TaskState.RUNNING and task.attempts > self._max_retries:
                del self._sent[task_id]
                self._end(task, TaskState.FAILED, failure=make_error(task.attempts))
                return False
            task.state = TaskState.PENDING
            return True

    def fail_all(self, error: BaseException) -> None:
        """The slot was given up or stopped: every task not finished fails with ``error``."""
        with self._lock:
            tasks = [*self._sent.values(), *(entry[2] for entry in self._waiting)]
            self._sent.clear()
            self._waiting.clear()
            self.running = None
            for task in tasks:
                if not task.done:
                    self._end(task, TaskState.FAILED, failure=error)

    def unfinished_tasks(self) -> list[Task]:
        """Every task not finished now."""
        with self._lock:
            return [task for task in (*self._sent.values(), *(entry[2] for entry in self._waiting)) if not task.done]

    def counts(self) -> dict[TaskState, int]:
        """Tasks by state: pending and running now, completed, failed and cancelled ever."""
        running = 1 if self.running is not None else 0
        return {
            TaskState.PENDING: self.unfinished - running,
            TaskState.RUNNING: running,
            **self.finished,
        }


def _remote_failure(done: TaskDone) -> BaseException:
    """The exception a task raised in its worker, with the worker's traceback as its cause."""
    error: BaseException
    try:
        error = pickle.loads(done.value) if done.value else TaskError(done.summary)
    except Exception:
        error = TaskError(f"{done.summary} (the exception could not be sent back from the worker)")
    error.__cause__ = RemoteTraceback(done.error)
    return error


@dataclass(frozen=True)
class TaskWaits:
    """How a handle waits: blocking (``with``) or as an awaitable (``async with``)."""

    changes: Changes
    asynchronous: bool
    notify: Callable[[], None]  # wakes waiters from any thread


class TaskHandle:
    """A submitted task: wait for it, get its result, cancel it, or look at it.

    Under ``async with`` `wait` and `result` return awaitables; under ``with`` they block. `cancel`,
    `done` and `get_status` are plain in both. A task over every worker's books (`submit_all`) is one
    handle over a part per worker; its result is the merged mapping.
    """

    def __init__(
        self,
        parts: Sequence[tuple[Task, TaskBoard]],
        waiting: TaskWaits,
        metadata: Any = None,
        *,
        merged: bool = False,
    ) -> None:
        first = parts[0][0]
        self.task_id = first.task_id
        self.asset_id = first.asset_id
        self.priority = first.priority
        self.metadata = metadata
        self._parts = parts
        self._waiting = waiting
        self._merged = merged

    def done(self) -> bool:
        """True once the task has finished (completed, failed or cancelled)."""
        return all(task.done for task, _ in self._parts)

    def wait(self, timeout: float | None = None) -> Any:
        """Wait until the task has finished; True if it has, False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._waiting.asynchronous:
            return self._waiting.changes.wait_async(self.done, deadline)
        return self._waiting.changes.wait_sync(self.done, deadline)

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, once it has finished.

        Raises:
            Exception: what the task raised, with the worker's traceback as its ``__cause__``.
            PoolTimeoutError: it has not finished within ``timeout`` seconds.
            TaskCancelledError: it was cancelled.
            TaskTimeoutError: it ran longer than ``task_timeout``.
            BrokenWorkerError: its worker died while running it, more than ``task_max_retries`` times, or
                was given up.
            TaskError: its result could not be sent back (not picklable).
        """
        if self._waiting.asynchronous:
            return self._result_async(timeout)
        if not self.wait(timeout):
            raise self._timed_out(timeout)
        return self._outcome()

    async def _result_async(self, timeout: float | None) -> Any:
        if not await self.wait(timeout):
            raise self._timed_out(timeout)
        return self._outcome()

    def _timed_out(self, timeout: float | None) -> PoolTimeoutError:
        return PoolTimeoutError(f"task {self.task_id} did not finish within {timeout:g} s")

    def _outcome(self) -> Any:
        for task, _ in self._parts:
            if task.failure is not None:
                raise task.failure
        values = [pickle.loads(task.value) for task, _ in self._parts]
        if not self._merged:
            return values[0]
        merged: dict[Any, Any] = {}
        for value in values:
            if not isinstance(value, Mapping):
                raise TaskError(
                    f"task {self.task_id} runs over every worker's books, so each worker's result must be a "
                    f"mapping (asset id -> value) to merge; one returned a {type(value).__name__}"
                )
            merged.update(value)
        return merged

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if it was cancelled (its result then raises
        `TaskCancelledError`). A task already sent to its worker (one of the next ``task_window``) is not."""
        cancelled = [board.cancel(task) for task, board in self._parts]
        if any(cancelled):
            self._waiting.notify()
        return all(cancelled)

    def get_status(self) -> TaskStatus:
        """Where the task is now."""
        tasks = [task for task, _ in self._parts]
        states = {task.state for task in tasks}
        if TaskState.FAILED in states:
            state = TaskState.FAILED
        elif len(states) == 1:
            state = states.pop()
        elif states <= _FINISHED:
            state = TaskState.CANCELLED  # some parts cancelled, the rest completed
        elif states & {TaskState.RUNNING, *_FINISHED}:
            state = TaskState.RUNNING
        else:
            state = TaskState.PENDING
        failure = next((task.failure for task in tasks if task.failure is not None), None)
        started = [task.started_at for task in tasks if task.started_at is not None]
        finished = [task.finished_at for task in tasks if task.finished_at is not None]
        return TaskStatus(
            task_id=self.task_id,
            asset_id=self.asset_id,
            priority=self.priority,
            state=state,
            worker_id=tasks[0].worker_id if len(tasks) == 1 else None,
            submitted_at=tasks[0].submitted_at,
            started_at=min(started) if started else None,
            finished_at=max(finished) if len(finished) == len(tasks) else None,
            attempts=max(task.attempts for task in tasks),
            error=None if failure is None else (str(failure) or type(failure).__name__),
        )

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} {self.get_status().state.value} asset={self.asset_id}>"
