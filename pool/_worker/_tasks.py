"""Running a task in the worker: call the user's function on a live book and pickle what comes of it.

A task's function, arguments and result travel pickled (the function with cloudpickle, so one defined in
``__main__`` or a notebook arrives by value); what cannot be pickled fails the task, never the worker.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pool._wire._protocol import RunTask, TaskDone
from pool.models import OrderBook

__all__ = ["run_task"]


def run_task(task: RunTask, books: Mapping[str, OrderBook], worker_id: int) -> TaskDone:
    """Run ``task`` against ``books`` (the worker's live books) and return its outcome.

    The function gets the book itself, not a copy: a task costs no copy, and must treat the book as
    read-only. A task over every book gets a read-only view of the mapping.
    """
    try:
        fn, args, kwargs = pickle.loads(task.payload)
        if task.asset_id is None:
            target: Any = MappingProxyType(books)
        else:
            target = books.get(task.asset_id)
            if target is None:
                raise LookupError(f"worker {worker_id} holds no book for asset {task.asset_id!r}")
        value = fn(target, *args, **kwargs)
    except Exception as exc:
        return _failure(task.task_id, exc)
    try:
        return TaskDone(task.task_id, False, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        error = TypeError(
            f"the task's result, a {type(value).__name__}, cannot be pickled ({type(exc).__name__}: {exc}); "
            "return plain data (numbers, strings, lists, dicts, Structs)"
        )
        return _failure(task.task_id, error)


def _failure(task_id: int, exc: BaseException) -> TaskDone:
    """``exc`` as a failed `TaskDone`: pickled if it can be (else empty), with the traceback being handled."""
    summary = traceback.format_exception_only(exc)[-1].strip()
    try:
        pickled = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pickled = b""
    return TaskDone(task_id, True, pickled, traceback.format_exc(), summary)
