"""How the pool's loop and the user's threads tell each other that something happened.

The pool's own work (the workers' channels, supervision, the memory watch) runs as tasks of one event
loop: the caller's under ``async with``, a background thread's under ``with``. The data path does not:
`publish`, `flush`, `get_book` and `mark_stale` run in the caller's thread, so a sync caller never waits
for a hop to the loop's thread. Two small tools join the two sides:

* `Changes`: the loop's tasks notify it whenever a slot's state moves (frames applied, a reply arrived, a
  slot was given up); a waiter, a task (`wait_async`) or a thread (`wait_sync`), re-checks its condition.
* `LoopWaker`: runs a small callback on the loop's thread from any thread without waiting for it, the
  way CPython's ``concurrent.futures.process`` wakes its manager thread: a byte on a socket pair, written
  only when none is pending, so a burst of calls costs one wake-up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["Changes", "LoopWaker"]


class Changes:
    """A level-triggered notification: notified from the loop's thread, waited on by tasks or threads.

    Waiters pass a ``done`` predicate; it runs under this object's lock (for threads), so it must only read
    state and never take another lock, or a notification from the loop could deadlock against it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._thread_waiters = 0
        self._event: anyio.Event | None = None  # created by the first task that waits, on the loop's thread

    def notify(self) -> None:
        """Wake every waiter to re-check. Call on the loop's thread, holding no other lock."""
        event, self._event = self._event, None
        if event is not None:
            event.set()
        if self._thread_waiters:  # read without the lock: a waiter counts itself before its first check
            with self._condition:
                self._condition.notify_all()

    def wait_sync(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Block the calling thread until ``done()`` or ``deadline`` (`time.monotonic`); True if done."""
        with self._condition:
            self._thread_waiters += 1
            try:
                while not done():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._condition.wait(remaining)
                return True
            finally:
                self._thread_waiters -= 1

    async def wait_async(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """`wait_sync` for a task of the loop: wait without blocking it; True if done."""
        delay = None if deadline is None else max(0.0, deadline - time.monotonic())
        with anyio.move_on_after(delay):
            while not done():
                if self._event is None:
                    self._event = anyio.Event()
                await self._event.wait()
            return True
        return False


class LoopWaker:
    """Runs callbacks on the loop's thread: inline when called there, else soon, without waiting."""

    def __init__(self) -> None:
        self._loop_thread = threading.get_ident()  # built by the loop, on its thread
        self._soon: deque[Callable[[], object]] = deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending = False

    def on_loop(self) -> bool:
        """True on the loop's thread."""
        return threading.get_ident() == self._loop_thread

    def soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop's thread: now if this is it, else at its next turn."""
        if threading.get_ident() == self._loop_thread:
            callback()
            return
        self._soon.append(callback)
        if not self._pending:
            self._pending = True
            with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending; closed: stopped
                self._writer.send(b"\0")

    async def run(self) -> None:
        """Serve `soon` callbacks until cancelled. A callback that raises is a bug in the pool: it propagates."""
        soon = self._soon
        while True:
            await anyio.wait_readable(self._reader)
            with contextlib.suppress(BlockingIOError):
                while self._reader.recv(4096):
                    pass
            # Cleared before the callbacks run: one queued after this point writes a new byte, so none is
            # left waiting for a wake-up that already happened.
            self._pending = False
            while soon:
                soon.popleft()()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
