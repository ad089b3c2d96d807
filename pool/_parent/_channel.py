"""The parent's end of one worker's socket: whole messages out from any thread, messages in on the loop.

Why not an anyio stream: a stream belongs to the loop, so a frame published while its worker is idle would
wait for a turn of the loop's thread before it left (about 150 us of the publish-to-applied time measured
here, most of the latency budget). A plain non-blocking socket can be written by whichever thread holds the
message, the publishing thread included, under a lock that keeps each write whole. Only a write the kernel
cannot take at once leaves a remainder; the loop's writer finishes it when the socket is writable, and
nothing else is written until it has (`blocked`).

Reads stay on the loop: `receive` reads whatever has arrived in one system call and waits with
``anyio.wait_readable`` only when nothing has. The socket is never handed to an anyio stream, because on
asyncio a transport owns its file descriptor and would refuse the writer's ``wait_writable``.
"""

from __future__ import annotations

import socket
import threading
from collections import deque

import anyio

from pool._wire._protocol import HEADER_SIZE, unpack_header

__all__ = ["Channel"]

_READ_SIZE = 256 * 1024  # per recv; the worker's messages are acknowledgements and books, mostly small


class Channel:
    """One worker's socket. `lock` must be held around `write`; everything else runs on the loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.lock = threading.Lock()
        self._unsent: deque[memoryview] = deque()  # what the kernel has not taken yet, in order
        self._received = bytearray()
        self.closed = False

    @property
    def blocked(self) -> bool:
        """True while part of a write waits for the socket to drain: later writes must wait too."""
        return bool(self._unsent)

    def write(self, data: bytes | bytearray) -> None:
        """Send ``data`` now, as far as the kernel takes it; the rest waits for `drain`. Hold `lock`.

        A worker that is gone makes this a no-op: the process watcher requeues what it had not applied.
        """
        if self.closed:
            return
        self._unsent.append(memoryview(data))  # behind any remainder, uncopied
        if len(self._unsent) == 1:
            self._send_unsent()

    async def drain(self) -> None:
        """Wait until nothing is left of the writes so far (or the channel is closed)."""
        while True:
            with self.lock:
                if not self.closed:
                    self._send_unsent()
                if not self._unsent or self.closed:
                    return
            await anyio.wait_writable(self._sock)

    def _send_unsent(self) -> None:
        """Send from the head of `_unsent` until it is empty or the socket is full. Hold `lock`."""
        unsent = self._unsent
        while unsent:
            try:
                sent = self._sock.send(unsent[0])
            except BlockingIOError:
                return
            except OSError:
                unsent.clear()  # the worker closed its end: it has exited, and the watcher requeues
                return
            if sent < len(unsent[0]):
                unsent[0] = unsent[0][sent:]
                return
            unsent.popleft()

    async def receive(self) -> bytes:
        """The next whole message from the worker.

        Raises:
            anyio.EndOfStream: the worker closed its end (it has exited).
            anyio.ClosedResourceError: the channel was closed here.
        """
        while len(self._received) < HEADER_SIZE:
            await self._read_some()
        size = unpack_header(bytes(self._received[:HEADER_SIZE]))
        while len(self._received) < HEADER_SIZE + size:
            await self._read_some()
        message = bytes(self._received[HEADER_SIZE : HEADER_SIZE + size])
        del self._received[: HEADER_SIZE + size]
        return message

    async def _read_some(self) -> None:
        while True:
            if self.closed:
                raise anyio.ClosedResourceError
            try:
                chunk = self._sock.recv(_READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except OSError:
                raise anyio.EndOfStream from None
            if not chunk:
                raise anyio.EndOfStream
            self._received += chunk
            return

    def close(self) -> None:
        """Close the socket; idempotent. Tasks waiting on it wake with `anyio.ClosedResourceError`."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self._unsent.clear()
        anyio.notify_closing(self._sock)
        self._sock.close()
