"""A local stand-in for Polymarket's market channel: a real WebSocket server on 127.0.0.1.

It runs the ``websockets`` library's asyncio server on a thread of its own, so it is independent of the
backend the test runs the pool on. Each connection waits for the subscription, answers it with a `book`
for every subscribed asset it knows (the initial dump, from its reference of everything it has sent),
then replays ``stream`` from where the last connection stopped; afterwards a subscribe operation gets
a `book` for each of its assets, as from the service. ``drop_after`` cuts the TCP connection
after that many stream frames, once, as a network failure would (with ``corrupt``, it writes bytes that
are not a WebSocket frame there instead); with ``hold_reconnect``, the next
connection's subscription is answered only once `resume` is set. With ``go_silent``, the first
connection answers nothing once its stream is sent (no ``PONG`` either), as a peer gone without closing.
``pause_every`` sleeps a millisecond after that many frames, so that a test can act in the middle of the
replay. ``PING`` gets ``PONG``.
`rest_books` serves the same reference in the REST shape, for a local CLOB server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any, Self

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support import ReferenceBooks, rest_shape


class LocalChannel:
    """A market channel on 127.0.0.1: the ``websockets`` asyncio server on a thread of its own, serving each
    connection with the subclass's ``_handle``; ``_admit`` may answer a handshake with an HTTP response.
    Holds the reference of every book it has sent (``reference``, under ``lock``)."""

    def __init__(self, initial: list[bytes]) -> None:
        self.lock = threading.Lock()  # the reference is read by other threads (`rest_books`)
        self.reference = ReferenceBooks()
        self.reference.apply_frames(initial)
        self.sent = 0
        self.pings = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rest_books(self, asset_ids: list[str]) -> list[bytes]:
        """The current books of ``asset_ids`` as ``GET /book`` would answer (no ``event_type``)."""
        with self.lock:
            frames = [self.reference.snapshot(a) for a in asset_ids if a in self.reference.bids]
        return [rest_shape(frame) for frame in frames]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/market"

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None, process_request=self._admit) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        return None  # every handshake is accepted

    async def _handle(self, connection: ServerConnection) -> None:
        raise NotImplementedError

    async def _pong(self, connection: ServerConnection, message: str | bytes) -> bool:
        """Answer a keep-alive ``PING`` as the service does; False for any other message."""
        if message != "PING":
            return False
        self.pings += 1
        await connection.send("PONG")
        return True


class MarketServer(LocalChannel):
    def __init__(
        self,
        initial: list[bytes],
        stream: list[bytes],
        *,
        drop_after: int | None = None,
        corrupt: bool = False,
        hold_reconnect: bool = False,
        go_silent: bool = False,
        pause_every: int = 0,
    ) -> None:
        super().__init__(initial)
        self.pause_every = pause_every
        self.stream = stream
        self.position = 0  # stream frames sent so far, over all connections
        self.drop_after = drop_after
        self.corrupt = corrupt
        self.go_silent = go_silent
        self.resume = threading.Event()  # with hold_reconnect: answer the reconnected subscription
        if not hold_reconnect:
            self.resume.set()
        self.connections = 0
        self.dumps = 0  # connections whose initial dump has been sent
        self.subscriptions: list[dict[str, Any]] = []  # the first message of each connection
        self.operations: list[dict[str, Any]] = []  # later subscribe/unsubscribe messages
        self.finished = threading.Event()  # the whole stream has been sent

    async def _handle(self, connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client left: the test is over, or it reconnects
            await self._serve(connection)

    async def _serve(self, connection: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        subscription = json.loads(await connection.recv())
        self.subscriptions.append(subscription)
        if self.connections > 1:
            await asyncio.to_thread(self.resume.wait, 30)
        with self.lock:
            dump = [self.reference.snapshot(a) for a in subscription["assets_ids"] if a in self.reference.bids]
        for frame in dump:
            await self._send(connection, frame)
        self.dumps += 1
        sent_here = 0
        while self.position < len(self.stream):
            if self.drop_after is not None and sent_here == self.drop_after:
                self.drop_after = None
                if self.corrupt:  # opcode 0xF is reserved: the client must fail the connection
                    connection.transport.write(b"\x8f\x00")
                else:
                    connection.transport.abort()  # no closing handshake: a dropped network
                return
            frame = self.stream[self.position]
            self.position += 1
            sent_here += 1
            if frame.startswith(b"{") or frame.startswith(b"["):
                with (
                    self.lock,
                    contextlib.suppress(ValueError, KeyError, TypeError, RecursionError),
                ):  # garbage put in on purpose
                    self.reference.apply_frames([frame])
            await self._send(connection, frame)
            if self.pause_every and not sent_here % self.pause_every:
                await asyncio.sleep(0.001)
        self.finished.set()
        async for message in connection:  # stay open; answer keep-alives and subscription changes
            if self.go_silent and number == 1:
                continue
            if await self._pong(connection, message):
                continue
            operation = json.loads(message)
            self.operations.append(operation)
            if operation.get("operation") == "subscribe":  # as the service does: a `book` for each
                with self.lock:
                    dump = [self.reference.snapshot(a) for a in operation["assets_ids"] if a in self.reference.bids]
                for frame in dump:
                    await self._send(connection, frame)

    async def _send(self, connection: ServerConnection, frame: bytes) -> None:
        await connection.send(frame.decode())
        self.sent += 1
