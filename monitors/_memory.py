"""`MemoryMonitor`: per-worker memory against a cap that grows with the books held, and system memory
against a threshold, with edge-triggered callbacks.

Which figure: USS, the memory private to the process, is what a worker really costs and what its death
would free. RSS also counts pages a worker shares with other processes (about 12 MB of interpreter and
libraries for a spawned worker here), so a cap on RSS would fire on memory that is not the worker's.
PSS splits those shared pages and is in between. USS and PSS come from one read of
``/proc/<pid>/smaps_rollup`` (``psutil.Process.memory_full_info``): 0.26 to 0.55 ms per worker on the
development VM, against 0.01 to 0.015 ms for RSS. At the default one sample per second per worker that is
well under 0.1% of a core, so the monitor pays for the right figure.

This module observes pids and numbers it is handed; it never touches a process. What to do about a breach
is the owner's business (the pool asks the worker to give memory back, samples again, then applies its
``memory_policy``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

import msgspec
import psutil

from pool.models import PoolConfig
from pool.models._logging import get_logger

__all__ = ["CallbackHandle", "MemoryInfo", "MemoryMonitor", "SystemMemoryInfo", "WorkerTarget"]

_MB = 1024 * 1024

# A callback that fired on the way up fires on the way down once the ratio is this far below its
# threshold, so a value hovering at the threshold does not fire on every sample.
HYSTERESIS = 0.05

# (worker_id, pid, books), or with a fourth item, the worker's USS as measured where it runs (a process on
# another host cannot be sampled here by its pid).
WorkerTarget: TypeAlias = tuple[int, int, int] | tuple[int, int, int, int]


class MemoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One worker's memory as a worker-scope callback receives it. ``rising`` is false on the way down."""

    worker_id: int
    pid: int
    books: int
    bytes_used: int  # USS: memory private to the worker
    cap_bytes: int
    ratio: float
    threshold_ratio: float
    rising: bool


class SystemMemoryInfo(msgspec.Struct, frozen=True, kw_only=True):
    """System memory as a system-scope callback receives it (``ratio`` = used fraction of total)."""

    ratio: float
    available_bytes: int
    total_bytes: int
    threshold_ratio: float
    rising: bool


_Info = TypeVar("_Info", MemoryInfo, SystemMemoryInfo)

Callback: TypeAlias = Callable[[Any], Awaitable[None] | None]


@dataclass(eq=False)
class CallbackHandle:
    """Returned by `MemoryMonitor.register_callback`; `unregister` stops further calls."""

    callback: Callback
    threshold_ratio: float
    scope: Literal["worker", "system"]
    _monitor: MemoryMonitor
    _above: set[int] = field(default_factory=set)  # worker ids (or -1 for the system) above the threshold

    def unregister(self) -> None:
        """Stop calling the callback (idempotent)."""
        self._monitor._handles = [h for h in self._monitor._handles if h is not self]


class MemoryMonitor:
    """Samples worker and system memory and fires callbacks when a ratio crosses their threshold.

    Used by `PersistentWorkerPool` (as ``pool.memory_monitor``), or on its own: call `check_workers` with
    ``(worker_id, pid, books)`` targets (or ``(worker_id, pid, books, uss_bytes)`` for a process measured
    elsewhere) and `check_system` at the interval you like.

    Args:
        memory_mb_per_1000_books: a worker's cap is this many MB per 1000 books it holds, at least 1000.
        worker_memory_cap_mb: an absolute cap that overrides the per-book rule.
        memory_threshold: fraction of system memory in use that counts as pressure.
    """

    def __init__(
        self,
        *,
        memory_mb_per_1000_books: float = 100.0,
        worker_memory_cap_mb: float | None = None,
        memory_threshold: float = 0.75,
    ) -> None:
        self.memory_mb_per_1000_books = memory_mb_per_1000_books
        self.worker_memory_cap_mb = worker_memory_cap_mb
        self.memory_threshold = memory_threshold
        self._handles: list[CallbackHandle] = []
        self._log = get_logger("pool.monitors.memory")
        self.samples = 0
        self.callback_errors = 0
        self.last: dict[int, MemoryInfo] = {}  # worker id -> its last sample

    @classmethod
    def from_config(cls, config: PoolConfig) -> MemoryMonitor:
        """A monitor with the memory settings of a `PoolConfig`."""
        return cls(
            memory_mb_per_1000_books=config.memory_mb_per_1000_books,
            worker_memory_cap_mb=config.worker_memory_cap_mb,
            memory_threshold=config.memory_threshold,
        )

    def cap_bytes(self, books: int) -> int:
        """The cap of a worker holding ``books`` books."""
        if self.worker_memory_cap_mb is not None:
            return int(self.worker_memory_cap_mb * _MB)
        return int(self.memory_mb_per_1000_books * max(1.0, books / 1000) * _MB)

    def register_callback(
        self, callback: Callback, threshold_ratio: float = 0.8, *, scope: Literal["worker", "system"] = "worker"
    ) -> CallbackHandle:
        """Call ``callback(info)`` when a ratio crosses ``threshold_ratio`` upward, and once when it falls
        back below (by `HYSTERESIS`). Worker scope: ``info`` is a `MemoryInfo`, ratio = USS / cap; system
        scope: a `SystemMemoryInfo`, ratio = used / total. Sync or async; one that raises is logged and
        counted, and the others still run.

        Raises:
            ValueError: ``threshold_ratio`` is not positive, or ``scope`` is unknown.
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if not threshold_ratio > 0:
            raise ValueError(f"threshold_ratio must be > 0, got {threshold_ratio!r}")
        if scope not in ("worker", "system"):
            raise ValueError(f"scope must be 'worker' or 'system', got {scope!r}")
        handle = CallbackHandle(callback, threshold_ratio, scope, self)
        self._handles.append(handle)
        return handle

    def sample(self, worker_id: int, pid: int, books: int, uss_bytes: int | None = None) -> MemoryInfo | None:
        """One worker's memory now (``None`` if the process is gone). Does not fire callbacks.

        ``uss_bytes``: the USS the worker measured itself (it runs on another host), held to the cap as is.
        """
        if uss_bytes is None:
            try:
                uss_bytes = int(psutil.Process(pid).memory_full_info().uss)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                return None
        self.samples += 1
        cap = self.cap_bytes(books)
        info = MemoryInfo(
            worker_id=worker_id,
            pid=pid,
            books=books,
            bytes_used=uss_bytes,
            cap_bytes=cap,
            ratio=uss_bytes / cap,
            threshold_ratio=1.0,
            rising=True,
        )
        self.last[worker_id] = info
        return info

    async def check_workers(self, targets: Iterable[WorkerTarget]) -> list[MemoryInfo]:
        """Sample every target, fire the callbacks whose thresholds were crossed, and return the samples."""
        infos = [info for target in targets if (info := self.sample(*target)) is not None]
        for info in infos:
            for handle in [h for h in self._handles if h.scope == "worker"]:
                rising = _crossed(handle, info.worker_id, info.ratio)
                if rising is not None:
                    await self._call(handle, _as_crossing(info, handle.threshold_ratio, rising))
        return infos

    def sample_system(self) -> SystemMemoryInfo:
        """System memory now, against ``memory_threshold``. Does not fire callbacks."""
        memory = psutil.virtual_memory()
        ratio = memory.percent / 100
        return SystemMemoryInfo(
            ratio=ratio,
            available_bytes=memory.available,
            total_bytes=memory.total,
            threshold_ratio=self.memory_threshold,
            rising=ratio >= self.memory_threshold,
        )

    async def check_system(self) -> SystemMemoryInfo:
        """Sample system memory and fire the system-scope callbacks whose thresholds were crossed."""
        info = self.sample_system()
        for handle in [h for h in self._handles if h.scope == "system"]:
            rising = _crossed(handle, -1, info.ratio)
            if rising is not None:
                await self._call(handle, _as_crossing(info, handle.threshold_ratio, rising))
        return info

    async def _call(self, handle: CallbackHandle, info: MemoryInfo | SystemMemoryInfo) -> None:
        self._log.info("memory_threshold_crossed", **msgspec.structs.asdict(info))
        try:
            result = handle.callback(info)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.callback_errors += 1
            self._log.exception("memory_callback_failed", callback=repr(handle.callback))


def _as_crossing(info: _Info, threshold_ratio: float, rising: bool) -> _Info:
    return msgspec.structs.replace(info, threshold_ratio=threshold_ratio, rising=rising)


def _crossed(handle: CallbackHandle, key: int, ratio: float) -> bool | None:
    """True on an upward crossing, False on a downward one (past the hysteresis), None otherwise."""
    if key not in handle._above and ratio >= handle.threshold_ratio:
        handle._above.add(key)
        return True
    if key in handle._above and ratio < handle.threshold_ratio - HYSTERESIS:
        handle._above.discard(key)
        return False
    return None
