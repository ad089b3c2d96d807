"""Lifecycle events: a log entry each (book events tallied), and a call to every registered listener."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio.abc
import msgspec

from pool._wire._tally import Tally
from pool.models import ExitReason, PoolEvent, PoolEventKind

from ._changes import LoopWaker

__all__ = ["EventHub", "Listener"]

Listener: TypeAlias = Callable[[PoolEvent], Awaitable[None] | None]

# Event kinds that mean something went wrong are logged as warnings or errors, the rest as info.
_LEVELS = {
    PoolEventKind.WORKER_EXITED: "warning",
    PoolEventKind.WORKER_HUNG: "warning",
    PoolEventKind.WORKER_FAILED: "error",
    PoolEventKind.BOOK_STALE: "warning",
    PoolEventKind.MEMORY_BREACH: "warning",
    PoolEventKind.FRAME_QUARANTINED: "error",
}

# Book events come one per `book` frame when a feed's books go live again: hundreds in a second after a
# reconnect. They are logged as tallies (one entry per kind per worker per interval, with the number of
# books), while listeners still get every event.
_TALLIED = frozenset({PoolEventKind.BOOK_STALE, PoolEventKind.BOOK_LIVE})


class EventHub:
    """Fans a `PoolEvent` out to the log and to listeners. A listener that raises is logged, never fatal.

    Listeners run on the pool's loop: an event raised on another thread (a sync `publish` making a book
    live) is handed to the loop first. Sync listeners run inline there (keep them short); async ones as tasks.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self._listeners: list[Listener] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._waker: LoopWaker | None = None
        self._tallies: dict[int, Tally] = {}
        self.listener_errors = 0

    def attach(self, task_group: anyio.abc.TaskGroup | None, waker: LoopWaker | None = None) -> None:
        """Where async listeners run and how events reach the loop (``None`` once the pool has stopped)."""
        self._task_group = task_group
        self._waker = waker

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; return a function that unregisters it."""
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {type(listener).__name__}")
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: PoolEvent) -> None:
        """Log ``event`` and call every listener, on the loop's thread (from any thread)."""
        if self._waker is not None:
            self._waker.soon(lambda: self._deliver(event))
        else:
            self._deliver(event)

    def release_logs(self, *, force: bool = False) -> None:
        """Write the tallied book events that are due (all of them with ``force``)."""
        for worker_id, tally in self._tallies.items():
            for entry in tally.release(force=force):
                getattr(self._log, entry.level)(entry.event, worker_id=worker_id, books=entry.count, **entry.example)

    def _deliver(self, event: PoolEvent) -> None:
        self._write_log(event)
        for listener in list(self._listeners):
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    if self._task_group is None:
                        _close(result)
                        continue
                    self._task_group.start_soon(self._await_listener, result, listener)
            except Exception:
                self.listener_errors += 1
                self._log.exception("listener_failed", listener=repr(listener), pool_event=event.kind.value)

    def _write_log(self, event: PoolEvent) -> None:
        level = _LEVELS.get(event.kind, "info")
        if event.reason in (ExitReason.SHUTDOWN, ExitReason.OPERATOR, ExitReason.MEMORY):
            level = "info"  # an exit we asked for
        if event.kind in _TALLIED and event.asset_ids:
            tally = self._tallies.setdefault(event.worker_id, Tally())
            tally.note(event.kind.value, level, len(event.asset_ids), asset_id=event.asset_ids[0], detail=event.detail)
            self.release_logs()
            return
        fields = {k: v for k, v in msgspec.structs.asdict(event).items() if v not in (None, "") and k != "kind"}
        if event.asset_ids is not None:
            fields["asset_ids"] = len(event.asset_ids)  # a count in the log; the listener gets the list
        getattr(self._log, level)(event.kind.value, **fields)

    async def _await_listener(self, result: Awaitable[None], listener: Listener) -> None:
        try:
            await result
        except Exception:
            self.listener_errors += 1
            self._log.exception("listener_failed", listener=repr(listener))


def _close(awaitable: Awaitable[None]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()
