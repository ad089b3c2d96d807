"""persistent-worker-pool: live order books in long-lived worker processes, sharded by asset id.

``PersistentWorkerPool`` is imported on first use (PEP 562), so that a worker process, which imports
``pool._worker``, does not pay for the parent's machinery (anyio, the supervisor) it never runs.
"""

import importlib
from typing import TYPE_CHECKING, Any

from pool.models import PoolConfig, TaskPriority, TaskState, TaskStatus

from ._exceptions import (
    BrokenWorkerError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    TaskCancelledError,
    TaskError,
    TaskQueueFullError,
    TaskTimeoutError,
    UnknownAssetError,
    WorkerError,
    WorkerStartupError,
)

if TYPE_CHECKING:
    from ._parent._pool import PersistentWorkerPool
    from ._parent._snapshots import CallableSnapshotSource, SnapshotSource
    from ._parent._tasks import TaskHandle

__all__ = [
    "BrokenWorkerError",
    "CallableSnapshotSource",
    "PersistentWorkerPool",
    "PoolClosedError",
    "PoolConfig",
    "PoolError",
    "PoolTimeoutError",
    "SnapshotSource",
    "TaskCancelledError",
    "TaskError",
    "TaskHandle",
    "TaskPriority",
    "TaskQueueFullError",
    "TaskState",
    "TaskStatus",
    "TaskTimeoutError",
    "UnknownAssetError",
    "WorkerError",
    "WorkerStartupError",
]

for _name in __all__:
    _value = globals().get(_name)  # PersistentWorkerPool is not loaded yet; __getattr__ sets its module
    if isinstance(_value, type) and issubclass(_value, PoolError):
        _value.__module__ = __name__
del _name, _value


# Loaded on first use: these modules import anyio, which a worker process never needs.
_LAZY = {
    "CallableSnapshotSource": "._parent._snapshots",
    "PersistentWorkerPool": "._parent._pool",
    "SnapshotSource": "._parent._snapshots",
    "TaskHandle": "._parent._tasks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
