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

for _name in __all__:
    _value = globals().get(_name)  # PersistentWorkerPool is not loaded yet; __getattr__ sets its module
    if isinstance(_value, type) and issubclass(_value, PoolError):
        _value.__module__ = __name__
del _name, _value


def __getattr__(name: str) -> Any:
    if name == "PersistentWorkerPool":
        from ._pool import PersistentWorkerPool

        PersistentWorkerPool.__module__ = __name__
        globals()[name] = PersistentWorkerPool
        return PersistentWorkerPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
