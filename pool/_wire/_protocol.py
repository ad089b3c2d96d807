"""The messages on the channel between the parent and a worker, and their framing.

Each message is one msgpack-encoded tagged Struct, sent as one ``multiprocessing.connection`` frame (a
4-byte big-endian signed length, then the payload), so the worker can use a plain blocking
``Connection`` while the parent speaks the same framing over a non-blocking anyio socket stream.
Frames of market data travel as the raw bytes the feed produced: decoding happens in the workers, in
parallel, not in the parent.
"""

from __future__ import annotations

import struct

import msgspec

from pool.models import BookView, WorkerStats

__all__ = [
    "Batch",
    "BookReply",
    "Fatal",
    "FromWorker",
    "GetBook",
    "MarkStale",
    "Progress",
    "Ready",
    "Rebuild",
    "Stop",
    "ToWorker",
    "Trim",
    "Trimmed",
    "frame_header",
    "unpack_header",
]

_HEADER = struct.Struct("!i")
HEADER_SIZE = _HEADER.size


class Batch(msgspec.Struct, tag=True, array_like=True):
    """Market-data frames for one worker, in publish order."""

    frames: list[bytes]


class GetBook(msgspec.Struct, tag=True, array_like=True):
    """Ask for a copy of one book; answered by `BookReply` after every frame sent before it."""

    request_id: int
    asset_id: str


class Trim(msgspec.Struct, tag=True, array_like=True):
    """Give memory back (garbage collection, then ``malloc_trim``); answered by `Trimmed`."""

    request_id: int


class Rebuild(msgspec.Struct, tag=True, array_like=True):
    """Recovery of a replacement worker: install ``books`` (`book` frames from the snapshot source), then
    mark ``stale`` the assets that have none or that a feed marked stale; sent ahead of the frames the dead
    worker had not applied."""

    books: list[bytes]
    stale: list[str]


class MarkStale(msgspec.Struct, tag=True, array_like=True):
    """Flag books that may have missed updates (a feed lost its connection) until a `book` replaces each."""

    asset_ids: list[str]


class Stop(msgspec.Struct, tag=True, array_like=True):
    """Finish what was sent before, report final stats, and exit 0."""


ToWorker = Batch | GetBook | Trim | Rebuild | MarkStale | Stop


class Ready(msgspec.Struct, tag=True, array_like=True):
    """The worker has built its handler and is waiting for frames."""

    pid: int


class Progress(msgspec.Struct, tag=True, array_like=True):
    """Stats after a batch (an acknowledgement) or after a quiet heartbeat interval (a heartbeat)."""

    stats: WorkerStats


class BookReply(msgspec.Struct, tag=True, array_like=True):
    """The answer to `GetBook`: the book, or ``None`` if the worker holds no book for the asset."""

    request_id: int
    book: BookView | None


class Trimmed(msgspec.Struct, tag=True, array_like=True):
    """The answer to `Trim`, sent after the memory has been given back."""

    request_id: int


class Fatal(msgspec.Struct, tag=True, array_like=True):
    """The worker cannot go on (its handler factory failed); ``error`` is the formatted traceback."""

    error: str


FromWorker = Ready | Progress | BookReply | Trimmed | Fatal


def frame_header(payload_size: int) -> bytes:
    """The ``multiprocessing.connection`` length prefix for a payload of ``payload_size`` bytes."""
    return _HEADER.pack(payload_size)


def unpack_header(header: bytes) -> int:
    """Inverse of `frame_header`."""
    size: int = _HEADER.unpack(header)[0]
    return size
