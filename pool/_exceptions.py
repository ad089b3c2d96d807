"""The pool's errors, one tree rooted at `PoolError`::

    PoolError
    +-- PoolClosedError          you shut the pool down; make a new one
    +-- PoolTimeoutError         a publish/flush/get_book waited longer than its timeout (also TimeoutError)
    |   +-- TaskTimeoutError     a task ran longer than task_timeout
    +-- TaskCancelledError       the task was cancelled before it started
    +-- TaskError                a task's outcome could not be returned (unpicklable result, no such book)
    +-- TaskQueueFullError       a worker has max_pending_tasks tasks unfinished
    +-- UnknownAssetError        no worker holds a book for that asset (also LookupError)
    +-- WorkerError              something went wrong with one worker process (has worker_id, pid)
        +-- WorkerStartupError   it did not become ready; the pool did not start
        +-- BrokenWorkerError    it exited under a call that was waiting on it

"You closed it" (`PoolClosedError`) is kept apart from "it broke under you" (`BrokenWorkerError`), as trio
keeps ``ClosedResourceError`` apart from ``BrokenResourceError``. Bad arguments raise ``ValueError`` or
``TypeError``; malformed market data raises `models.MessageError` (a ``ValueError``) and, inside a pool,
is counted and skipped rather than raised.
"""

from __future__ import annotations

__all__ = [
    "BrokenWorkerError",
    "PoolClosedError",
    "PoolError",
    "PoolTimeoutError",
    "TaskCancelledError",
    "TaskError",
    "TaskQueueFullError",
    "TaskTimeoutError",
    "UnknownAssetError",
    "WorkerError",
    "WorkerStartupError",
]


class PoolError(Exception):
    """Base class of every error the pool raises."""


class PoolClosedError(PoolError):
    """The pool was shut down by its owner; no further work can be given to it.

    ``accepted``: for a `publish` that shutdown cut short, how many of its frames it had accepted (each is
    applied before the workers stop; the rest were not taken); ``None`` for any other call.
    """

    def __init__(self, message: str, *, accepted: int | None = None) -> None:
        super().__init__(message)
        self.accepted = accepted


class PoolTimeoutError(PoolError, TimeoutError):
    """A call waited longer than the timeout it was given."""


class TaskTimeoutError(PoolTimeoutError):
    """A task ran longer than ``PoolConfig.task_timeout``; its worker was killed as hung and rebuilt."""


class TaskCancelledError(PoolError):
    """The task was cancelled before it started (`TaskHandle.cancel`)."""


class TaskError(PoolError):
    """A task could not be run or its outcome could not be returned: its result (or the exception it raised)
    could not be pickled, or its worker holds no book for the asset. The message says which."""


class TaskQueueFullError(PoolError):
    """A worker already has ``max_pending_tasks`` tasks not finished; wait for some, or raise the bound."""


class UnknownAssetError(PoolError, LookupError):
    """No worker holds a book for the asset: no `book` snapshot for it was ever published, or its book
    was dropped since (`PersistentWorkerPool.drop_books`, which a feed's ``unsubscribe`` calls)."""

    def __init__(self, asset_id: str, worker_id: int) -> None:
        super().__init__(
            f"no book for asset {asset_id!r} (it routes to worker {worker_id}, which holds none: no `book` "
            "snapshot was published for it, or its book was dropped since, as when a feed unsubscribes); "
            "publish a snapshot first"
        )
        self.asset_id = asset_id
        self.worker_id = worker_id


class WorkerError(PoolError):
    """A problem with one worker process."""

    def __init__(self, message: str, *, worker_id: int, pid: int | None) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.pid = pid


class WorkerStartupError(WorkerError):
    """A worker failed to become ready; the pool stopped every worker it had started and did not start.

    When the worker reported a Python error, its traceback text is the ``__cause__``; ``exit_code`` is the
    process's (negative: the signal that ended it), ``None`` if unknown.
    """

    def __init__(self, message: str, *, worker_id: int, pid: int | None, exit_code: int | None = None) -> None:
        super().__init__(message, worker_id=worker_id, pid=pid)
        self.exit_code = exit_code


class BrokenWorkerError(WorkerError):
    """A worker exited (crash, kill or hang) while a call was waiting on it, or has failed for good.

    From `publish`: ``accepted`` is how many of the call's frames were accepted (every frame for a
    running worker is, the rest of the call included) and ``undelivered`` how many were for failed
    workers only and were not; both ``None`` for any other call.
    """

    def __init__(
        self,
        message: str,
        *,
        worker_id: int,
        pid: int | None,
        accepted: int | None = None,
        undelivered: int | None = None,
    ) -> None:
        super().__init__(message, worker_id=worker_id, pid=pid)
        self.accepted = accepted
        self.undelivered = undelivered


class RemoteTraceback(Exception):
    """A traceback formatted in a worker process, chained as the ``__cause__`` of the error it explains."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'
