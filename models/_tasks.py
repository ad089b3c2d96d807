"""The vocabulary of tasks: functions of books, run in the worker that holds them."""

from __future__ import annotations

import enum

import msgspec

__all__ = ["TaskPriority", "TaskState", "TaskStatus"]


class TaskPriority(enum.IntEnum):
    """Among tasks waiting for the same worker, a higher priority starts first (ties: in submission order)."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    URGENT = 3


class TaskState(enum.StrEnum):
    """Where a task is: ``pending`` (waiting for its worker), ``running``, or finished as ``completed``,
    ``failed`` or ``cancelled``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One task as `TaskHandle.get_status` shows it.

    Times are Unix times (``None`` until they happen); ``worker_id`` is the worker it runs on (``None`` for
    a task over every worker's books); ``attempts`` counts the runs started (a run cut short by its worker's
    death is retried, see `PoolConfig.task_max_retries`); ``error`` is the failure's last line.
    """

    task_id: int
    asset_id: str | None
    priority: TaskPriority
    state: TaskState
    worker_id: int | None
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
