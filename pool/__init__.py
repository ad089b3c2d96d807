"""persistent-worker-pool: live order books in long-lived worker processes, sharded by asset id.

``PersistentWorkerPool`` is imported on first use (PEP 562), so that a worker process, which imports
``pool._worker``, does not pay for the parent's machinery (anyio, the supervisor) it never runs.
"""

from typing import TYPE_CHECKING, Any

from models import PoolConfig

from ._exceptions import (
    BrokenWorkerError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    UnknownAssetError,
    WorkerError,
    WorkerStartupError,
)

if TYPE_CHECKING:
    from ._pool import PersistentWorkerPool

__all__ = [
    "BrokenWorkerError",
    "PersistentWorkerPool",
    "PoolClosedError",
    "PoolConfig",
    "PoolError",
    "PoolTimeoutError",
    "UnknownAssetError",
    "WorkerError",
    "WorkerStartupError",
]

for _error in (
    BrokenWorkerError,
    PoolClosedError,
    PoolError,
    PoolTimeoutError,
    UnknownAssetError,
    WorkerError,
    WorkerStartupError,
):
    _error.__module__ = __name__
del _error


def __getattr__(name: str) -> Any:
    if name == "PersistentWorkerPool":
        from ._pool import PersistentWorkerPool

        PersistentWorkerPool.__module__ = __name__
        globals()[name] = PersistentWorkerPool
        return PersistentWorkerPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
