"""A small WebSocket client on anyio streams, with wsproto doing the protocol.

Why not the ``websockets`` library: it runs on asyncio only, and this project promises asyncio and trio
alike. wsproto is sans-I/O (handshake, framing, control frames), so the I/O here is a few lines of anyio
and works on both.

A message larger than ``max_message_bytes`` is not kept: its pieces are dropped as they arrive and
`receive` returns `OVERSIZED` in its place, so one huge frame cannot exhaust memory nor end the
connection.
"""

from __future__ import annotations

import contextlib
from typing import Final
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.typing import Headers
from wsproto.utilities import LocalProtocolError

__all__ = ["ConnectionClosed", "HandshakeRejected", "WebSocket"]

_READ_BYTES = 65_536


class ConnectionClosed(Exception):
    """The connection ended (closed by the peer, dropped, or never opened); the message says how."""


class HandshakeRejected(ConnectionClosed):
    """The server answered the opening handshake with an HTTP error (429: too many connections at once).

    ``retry_after`` is its ``Retry-After`` header in seconds, when it sent one as a number.
    """

    def __init__(self, message: str, status_code: int, retry_after: float | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class _Oversized:
    """What `WebSocket.receive` returns in place of a message too large to keep."""

    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED: Final = _Oversized()


class WebSocket:
    """One client connection. Use `connect`; then `send_text`, `receive`, `aclose`."""

    def __init__(self, stream: ByteStream, protocol: WSConnection, max_message_bytes: int) -> None:
        self._stream = stream
        self._protocol = protocol
        self._max = max_message_bytes
        self._sending = anyio.Lock()  # the stream takes one sender at a time (keep-alive, subscribe, pong)
        self._pieces: list[str | bytes] = []
        self._size = 0
        self._oversized = False

    @classmethod
    async def connect(cls, url: str, *, max_message_bytes: int, open_timeout: float) -> WebSocket:
        """Open a TCP (``ws://``) or TLS (``wss://``) connection and complete the handshake.

        Raises:
            ConnectionClosed: the connection or the handshake failed or timed out.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            with anyio.fail_after(open_timeout):
                stream: ByteStream
                if parts.scheme == "wss":
                    stream = await anyio.connect_tcp(parts.hostname, port, tls=True, tls_standard_compatible=False)
                else:
                    stream = await anyio.connect_tcp(parts.hostname, port)
                protocol = WSConnection(ConnectionType.CLIENT)
                await stream.send(protocol.send(Request(host=parts.netloc, target=target)))
                while True:
                    data = await stream.receive(_READ_BYTES)
                    protocol.receive_data(data)
                    for event in protocol.events():
                        if isinstance(event, AcceptConnection):
                            return cls(stream, protocol, max_message_bytes)
                        if isinstance(event, RejectConnection):
                            await stream.aclose()
                            raise HandshakeRejected(
                                f"{url} refused the WebSocket handshake: HTTP {event.status_code}",
                                event.status_code,
                                _retry_after(event.headers),
                            )
        except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise ConnectionClosed(f"cannot open {url}: {type(exc).__name__}: {exc}") from None

    async def send_text(self, text: str) -> None:
        try:
            async with self._sending:
                await self._stream.send(self._protocol.send(TextMessage(data=text)))
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, LocalProtocolError) as exc:
            raise ConnectionClosed(f"send failed: {type(exc).__name__}: {exc}") from None

    async def receive(self) -> str | bytes | _Oversized:
        """The next whole message (text as ``str``), or `OVERSIZED` in place of one too large to keep.

        Pings are answered as they come. Raises `ConnectionClosed` when the connection ends.
        """
        while True:
            for event in self._protocol.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            try:
                data = await self._stream.receive(_READ_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ConnectionClosed(f"the connection dropped ({type(exc).__name__})") from None
            self._protocol.receive_data(data)

    async def _handle(self, event: object) -> str | bytes | _Oversized | None:
        if isinstance(event, TextMessage | BytesMessage):
            self._size += len(event.data)
            if self._size > self._max:
                self._oversized = True
                self._pieces.clear()
            elif not self._oversized:
                self._pieces.append(bytes(event.data) if isinstance(event.data, bytearray) else event.data)
            if not event.message_finished:
                return None
            oversized, pieces = self._oversized, self._pieces
            self._pieces, self._size, self._oversized = [], 0, False
            if oversized:
                return OVERSIZED
            if isinstance(event, TextMessage):
                return "".join(piece for piece in pieces if isinstance(piece, str))
            return b"".join(piece for piece in pieces if isinstance(piece, bytes))
        if isinstance(event, Ping):
            await self._send_quietly(self._protocol.send(event.response()))
        elif isinstance(event, CloseConnection):
            await self._send_quietly(self._protocol.send(event.response()))
            await self._stream.aclose()
            # Sent by the server, or made by wsproto for a frame that breaks the protocol (code 1002).
            raise ConnectionClosed(f"connection closed: code {event.code} {event.reason!r}")
        return None

    async def _send_quietly(self, data: bytes) -> None:
        # The connection may be going already; the next receive reports it.
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            async with self._sending:
                await self._stream.send(data)

    async def aclose(self) -> None:
        """Close without waiting for the server's answer (the feed is leaving)."""
        await self._stream.aclose()


def _retry_after(headers: Headers) -> float | None:
    """A ``Retry-After`` of seconds, from wsproto's header pairs (an HTTP date is ignored: back off instead)."""
    for name, value in headers:
        if bytes(name).lower() == b"retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return seconds if 0 <= seconds < 3600 else None
    return None
