"""A slot's task board on its own: the window, priorities, cancel, retries (the parts without processes)."""

from __future__ import annotations

import pytest

from pool import BrokenWorkerError, TaskQueueFullError
from pool._parent._tasks import TaskBoard, new_task
from pool._wire._protocol import TaskDone
from pool.models import TaskPriority, TaskState


def broken(attempts: int) -> BrokenWorkerError:
    return BrokenWorkerError(f"died {attempts} times", worker_id=0, pid=None)


def test_the_window_sends_the_first_tasks_and_priority_orders_the_rest() -> None:
    board = TaskBoard(0, max_retries=1, window=2)
    low = [new_task(0, "a", TaskPriority.LOW, b"") for _ in range(4)]
    sent = [message.task_id for task in low for message in board.add(task, 100)]
    assert sent == [low[0].task_id, low[1].task_id]
    urgent = new_task(0, "a", TaskPriority.URGENT, b"")
    assert board.add(urgent, 100) == []
    board.started(low[0].task_id)
    board.finished_with(TaskDone(low[0].task_id, False, b"\x80\x05N."))
    assert [message.task_id for message in board.take()] == [urgent.task_id]
    assert board.counts()[TaskState.COMPLETED] == 1 and board.unfinished == 4


def test_submitting_and_cancelling_while_the_worker_is_busy_does_not_grow_the_board() -> None:
    board = TaskBoard(0, max_retries=1, window=1)
    board.add(new_task(0, "a", TaskPriority.NORMAL, b""), 10)  # sent: the window is full from here on
    for _ in range(10_000):
        task = new_task(0, "a", TaskPriority.NORMAL, b"")
        board.add(task, 10)
        assert board.cancel(task)
    assert len(board._waiting) <= 2 and board.unfinished == 1
    assert board.counts()[TaskState.CANCELLED] == 10_000


def test_a_task_cut_short_is_retried_once_then_fails() -> None:
    board = TaskBoard(0, max_retries=1, window=4)
    task = new_task(0, "a", TaskPriority.NORMAL, b"")
    waiting = new_task(0, "a", TaskPriority.NORMAL, b"")
    board.add(task, 10)
    board.add(waiting, 10)
    board.started(task.task_id)
    assert board.requeued(task.task_id, broken) and board.requeued(waiting.task_id, broken)
    assert (task.state, task.attempts) == (TaskState.PENDING, 1)
    board.started(task.task_id)
    assert not board.requeued(task.task_id, broken)
    assert task.state is TaskState.FAILED and str(task.failure) == "died 2 times"
    assert board.requeued(waiting.task_id, broken)  # never started: no attempt spent
    assert waiting.attempts == 0


def test_max_pending_tasks_refuses_with_the_bound_named() -> None:
    board = TaskBoard(3, max_retries=1, window=1)
    for _ in range(2):
        board.add(new_task(3, "a", TaskPriority.NORMAL, b""), 2)
    with pytest.raises(TaskQueueFullError, match="worker 3 already has 2 tasks"):
        board.add(new_task(3, "a", TaskPriority.NORMAL, b""), 2)
