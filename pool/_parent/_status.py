"""`get_status()`: the pool at a glance, built from state the parent already holds (never a round trip)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from pool.models import (
    BookChecks,
    FeedStatus,
    MemoryStatus,
    PoolState,
    PoolStatus,
    TaskState,
    WorkerState,
    WorkerStatus,
)
from pool.monitors import MemoryInfo

from ._slot import Slot, add_counts

__all__ = ["RateMeter", "build_status", "is_responsive", "worker_status"]

# Throughput in get_status() is averaged over this many samples (memory_check_interval apart).
_RATE_WINDOW_SAMPLES = 5

# The worker states in which a slot's process is alive.
_ALIVE = (WorkerState.RUNNING, WorkerState.STOPPING)


class RateMeter:
    """Frames applied per second, over the last few samples of the total."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=_RATE_WINDOW_SAMPLES)

    def record(self, applied: int) -> None:
        self._samples.append((time.monotonic(), applied))

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def alive_count(slots: Sequence[Slot]) -> int:
    return sum(1 for slot in slots if slot.state in _ALIVE)


def is_responsive(slot: Slot, now: float, unresponsive_after: float) -> bool:
    """The slot runs a process that has reported within ``unresponsive_after`` seconds: it can serve reads."""
    process = slot.process
    return slot.state is WorkerState.RUNNING and process is not None and now - process.last_heard <= unresponsive_after


def worker_status(slot: Slot, now: float, memory: MemoryInfo | None, unresponsive_after: float) -> WorkerStatus:
    """One slot as `PoolStatus.workers` shows it."""
    process = slot.process
    stats = process.stats if process is not None else None
    # The slot's cumulative counts are its retired processes' plus the current one's, until it retires too.
    current = process if process is not None and not process.retired else None
    counted = stats if current is not None else None
    pid = process.pid if process is not None else None
    if memory is not None and memory.pid != pid:
        memory = None  # a sample of a process that has since been replaced
    # Every book of a slot that is being rebuilt, or that was given up, is unavailable; not those of a slot
    # whose old process has handed them over (queries wait the moment until its replacement serves them).
    unavailable = slot.state is WorkerState.FAILED or (slot.state is WorkerState.RECOVERING and slot.handoff is None)
    standby = slot.standby
    tasks = slot.tasks.counts()
    return WorkerStatus(
        worker_id=slot.worker_id,
        status=slot.state,
        responsive=is_responsive(slot, now, unresponsive_after),
        pid=pid,
        books=stats.orderbook_count if stats else 0,
        messages=stats.messages_processed if stats else 0,
        errors=slot.retired_errors + (counted.errors if counted else 0),
        pending=slot.pending,
        rejections=add_counts(dict(slot.retired_rejections), counted.rejections if counted else {}),
        memory_bytes=memory.bytes_used if memory else (stats.memory_usage_bytes if stats else 0),
        memory_cap_bytes=memory.cap_bytes if memory else None,
        memory_ratio=memory.ratio if memory else None,
        last_heartbeat_age=now - process.last_heard if process is not None else None,
        restarts=slot.restarts,
        handler_errors=slot.retired_handler_errors + (counted.handler_errors if counted else 0),
        frames_dropped=slot.dropped,
        frames_quarantined=slot.quarantined,
        pending_tasks=tasks[TaskState.PENDING],
        running_tasks=tasks[TaskState.RUNNING],
        completed_tasks=tasks[TaskState.COMPLETED],
        failed_tasks=tasks[TaskState.FAILED],
        cancelled_tasks=tasks[TaskState.CANCELLED],
        stale_books=slot.book_count if unavailable else slot.stale_count or (stats.stale_books if stats else 0),
        exit_code=slot.exit_code,
        last_exit_reason=slot.last_exit_reason,
        last_restart_at=slot.last_restart_at,
        standby_pid=standby.pid if standby is not None else None,
        peak_memory_bytes=slot.peak_memory_bytes,
        recycles=sum(slot.recycles.values()),
        recycles_by_cause={cause: count for cause, count in slot.recycles.items()},
        last_recycle_seconds=slot.last_recycle_seconds,
        resolved_books=stats.resolved_books if stats else 0,
        checks=slot.retired_checks + current.checks if current is not None else slot.retired_checks,
    )


def build_status(
    *,
    state: PoolState,
    started_at: float | None,
    worker_count: int,
    slots: Sequence[Slot],
    samples: Mapping[int, MemoryInfo],
    memory: MemoryStatus,
    published: int,
    rejected: int,
    rejections: Mapping[str, int],
    unroutable: int,
    rate: float,
    feeds: Mapping[str, Callable[[], FeedStatus]],
    unresponsive_after: float,
) -> PoolStatus:
    now = time.monotonic()
    workers = {
        slot.worker_id: worker_status(slot, now, samples.get(slot.worker_id), unresponsive_after) for slot in slots
    }
    if state is PoolState.RUNNING and not all(worker.responsive for worker in workers.values()):
        state = PoolState.DEGRADED  # a worker is not running, or is silent: its books cannot be read now
    return PoolStatus(
        pool_status=state,
        uptime_seconds=now - started_at if started_at is not None else 0.0,
        worker_count=worker_count,
        alive_workers=alive_count(slots),
        workers=workers,
        memory=memory,
        messages_published=published,
        messages_applied=sum(slot.applied - slot.dropped - slot.quarantined for slot in slots),
        frames_dropped=sum(slot.dropped for slot in slots),
        frames_quarantined=sum(slot.quarantined for slot in slots),
        pending_tasks=sum(w.pending_tasks for w in workers.values()),
        running_tasks=sum(w.running_tasks for w in workers.values()),
        completed_tasks=sum(w.completed_tasks for w in workers.values()),
        failed_tasks=sum(w.failed_tasks for w in workers.values()),
        cancelled_tasks=sum(w.cancelled_tasks for w in workers.values()),
        messages_per_second=rate,
        frames_rejected=rejected + sum(s.errors for s in workers.values()),
        rejections=_summed([rejections, *(s.rejections for s in workers.values())]),
        frames_unroutable=unroutable,
        total_books=sum(s.books for s in workers.values()),
        restarts=sum(s.restarts for s in workers.values()),
        resolved_books=sum(s.resolved_books for s in workers.values()),
        checks=sum((s.checks for s in workers.values()), BookChecks()),
        feeds={name: read() for name, read in feeds.items()},
    )


def _summed(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for each in counts:
        add_counts(totals, each)
    return dict(sorted(totals.items()))
