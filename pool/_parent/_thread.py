"""The background thread that runs the pool's event loop for the ``with`` form.

Only the pool's own work runs here (the workers' channels, supervision, the memory watch) and the calls
that change its life (start, shutdown, restart_worker), which the face hands over through an anyio
blocking portal. The data path does not: publish, flush and get_book run in the caller's thread.

The thread is a daemon: an interpreter that exits without shutting the pool down is not held up by it,
and the workers then die with the process (parent-death signal, and the channel's EOF).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal

__all__ = ["LoopThread"]

T = TypeVar("T")

THREAD_NAME = "persistent-worker-pool"


class LoopThread:
    """An event loop in a daemon thread, with a portal to call into it from other threads."""

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None

    def start(self, serve: Callable[..., Awaitable[Any]]) -> None:
        """Start the thread and run ``serve`` (an anyio task that reports when it has started) in it.

        Returns once ``serve`` has started; if it fails to, the thread is stopped and its error raised.
        """
        ready = threading.Event()
        self._thread = threading.Thread(target=anyio.run, args=(self._main, ready), name=THREAD_NAME, daemon=True)
        self._thread.start()
        ready.wait()
        assert self._portal is not None
        try:
            self._portal.start_task(serve, name="pool-serve")
        except BaseException:
            self.stop()
            raise

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``function(*args)`` on the loop and return its result (blocks the calling thread)."""
        assert self._portal is not None
        return self._portal.call(function, *args)

    def stop(self) -> None:
        """Stop the loop (tasks still running are cancelled) and wait for the thread to end."""
        portal, thread = self._portal, self._thread
        if portal is None or thread is None:
            return
        portal.call(portal.stop, True)
        thread.join()
        self._portal = self._thread = None

    async def _main(self, ready: threading.Event) -> None:
        async with BlockingPortal() as portal:
            self._portal = portal
            ready.set()
            await portal.sleep_until_stopped()
