"""The worker side: the code that runs in a worker process.

It imports the wire (`pool._wire`) and `pool.models`, never the parent side, anyio or the service, so a
worker starts fast and stays small. The parent needs only the path of `_bootstrap`, the script it starts,
and, for the Ray backend, `WorkerActor` (loaded on first use, so the process backend never imports it).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._ray_actor import WorkerActor

__all__ = ["WorkerActor"]


def __getattr__(name: str) -> Any:
    if name != "WorkerActor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._ray_actor import WorkerActor

    return WorkerActor
