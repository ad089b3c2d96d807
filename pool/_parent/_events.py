"""Lifecycle events: one structlog line each, and a call to every registered listener."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import anyio.abc
import msgspec

from pool.models import ExitReason, PoolEvent, PoolEventKind

__all__ = ["EventHub", "Listener"]

Listener: TypeAlias = Callable[[PoolEvent], Awaitable[None] | None]

# Event kinds that mean something went wrong are logged as warnings or errors, the rest as info.
_LEVELS = {
    PoolEventKind.WORKER_EXITED: "warning",
    PoolEventKind.WORKER_HUNG: "warning",
    PoolEventKind.WORKER_FAILED: "error",
    PoolEventKind.BOOK_STALE: "warning",
    PoolEventKind.MEMORY_BREACH: "warning",
}


class EventHub:
    """Fans a `PoolEvent` out to the log and to listeners. A listener that raises is logged, never fatal.

    Sync listeners run inline in the pool's event loop (keep them short); async ones run as tasks.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self._listeners: list[Listener] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self.listener_errors = 0

    def attach(self, task_group: anyio.abc.TaskGroup | None) -> None:
        """Where async listeners run (``None`` once the pool has stopped: they are then skipped)."""
        self._task_group = task_group

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; return a function that unregisters it."""
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {type(listener).__name__}")
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: PoolEvent) -> None:
        fields = {k: v for k, v in msgspec.structs.asdict(event).items() if v not in (None, "") and k != "kind"}
        if event.asset_ids is not None:
            fields["asset_ids"] = len(event.asset_ids)  # a count in the log; the listener gets the list
        level = _LEVELS.get(event.kind, "info")
        if event.reason in (ExitReason.SHUTDOWN, ExitReason.OPERATOR, ExitReason.MEMORY):
            level = "info"  # an exit we asked for
        getattr(self._log, level)(event.kind.value, **fields)
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
