"""The messages on the channel between the parent and a worker, and their framing.

Each message is one msgpack-encoded tagged Struct, sent as one ``multiprocessing.connection`` frame (a
4-byte big-endian signed length, then the payload), so the worker can use a plain blocking
``Connection`` while the parent speaks the same framing over a non-blocking anyio socket stream.
Frames of market data travel as the raw bytes the feed produced: decoding happens in the workers, in
parallel, not in the parent.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from itertools import accumulate

import msgspec

from pool.models import BookChecks, BookView, WorkerStats

__all__ = [
    "HELLO",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_FRAMES",
    "MAX_FRAME_BYTES",
    "Applying",
    "Batch",
    "BookDump",
    "BookReply",
    "Boot",
    "DropBooks",
    "Fatal",
    "FromWorker",
    "GetBook",
    "Handoff",
    "Install",
    "LogTally",
    "MarkStale",
    "Progress",
    "Ready",
    "Rebuild",
    "RunTask",
    "Stop",
    "TaskDone",
    "TaskStarted",
    "ToWorker",
    "Trim",
    "Trimmed",
    "frame_header",
    "split_batches",
    "unpack_header",
]

_HEADER = struct.Struct("!i")
HEADER_SIZE = _HEADER.size
# What a worker that connects to the pool (the Ray backend's actors) sends first: the token the pool gave
# it when it launched it, so the pool knows which launch the connection answers, and the worker's pid.
HELLO = struct.Struct("!16sq")
# The largest frame `publish` accepts. A channel message carries at most 2 GiB - 1 (the length prefix is
# a signed 32-bit int, as in `multiprocessing.connection`); half of it leaves room for the batch around it.
MAX_FRAME_BYTES = 1 << 30
# A batch closes at this many bytes of frames, or at `MAX_BATCH_FRAMES`: however large the frames, a batch
# stays far below the channel's limit, and a worker reads it in one go.
MAX_BATCH_BYTES = 16 << 20
# Larger batches amortise the per-message cost (encode, syscall, ack); smaller ones let the worker start
# sooner. Under load the writer sends whatever queued while it was busy, so the bound matters only for big
# bursts; 1024 frames of ~400 bytes is ~400 KB.
MAX_BATCH_FRAMES = 1024


class Boot(msgspec.Struct, tag=True, array_like=True):
    """The first message to a new worker: who it is and how to build its handler.

    ``factory`` is the user's handler factory pickled with cloudpickle (by value when it was defined in
    ``__main__``, a notebook or ``python -c``; by reference to its module otherwise), or ``None`` for no
    handler; ``factory_takes_worker_id`` says whether to call it with the worker id. ``sys_path`` is the
    parent's, so a factory pickled by reference imports in the worker exactly as it did in the parent.
    ``data_limit_bytes`` is the ``RLIMIT_DATA`` the worker sets on itself before it builds anything.
    ``memory_interval`` asks the worker to measure its own USS that often and report it (a worker the
    parent cannot sample by pid, such as a Ray actor on another host); ``None``: the parent samples it.
    ``verify_book_hash`` and ``best_bid_ask_resync_after`` are the `PoolConfig` settings of the same names.
    """

    worker_id: int
    worker_count: int
    heartbeat_interval: float
    factory: bytes | None
    factory_takes_worker_id: bool
    sys_path: list[str]
    data_limit_bytes: int | None = None
    memory_interval: float | None = None
    verify_book_hash: bool = False
    best_bid_ask_resync_after: int | None = None


class Batch(msgspec.Struct, tag=True, array_like=True):
    """Market-data frames for one worker, in publish order.

    ``careful`` asks the worker to say which frame it is applying (an `Applying` before each): the parent
    sends frames that way only after a worker hung with them in flight, so that a second hang names the
    frame it hung on (to be quarantined), at no cost to the ordinary path.
    """

    frames: list[bytes]
    careful: bool = False


class GetBook(msgspec.Struct, tag=True, array_like=True):
    """Ask for a copy of one book; answered by `BookReply` after every frame sent before it."""

    request_id: int
    asset_id: str


class Trim(msgspec.Struct, tag=True, array_like=True):
    """Give memory back (garbage collection, then ``malloc_trim``); answered by `Trimmed`."""

    request_id: int


class Rebuild(msgspec.Struct, tag=True, array_like=True):
    """Recovery of a replacement worker: install ``resolved`` (the closed books of settled markets, a msgpack
    `list[BookState]` the parent kept: no snapshot source serves them), then ``books`` (`book` frames from the
    snapshot source), then mark ``stale`` the assets that have none or that a feed marked stale; sent ahead
    of the frames the dead worker had not applied."""

    books: list[bytes]
    stale: list[str]
    resolved: bytes = b""


class DropBooks(msgspec.Struct, tag=True, array_like=True):
    """Hold these books no more (their assets are not followed any longer): their memory goes back."""

    asset_ids: list[str]


class MarkStale(msgspec.Struct, tag=True, array_like=True):
    """Flag books that may have missed updates (a feed lost its connection) until a `book` replaces each."""

    asset_ids: list[str]


class Stop(msgspec.Struct, tag=True, array_like=True):
    """Finish what was sent before, report final stats, and exit 0."""


class Handoff(msgspec.Struct, tag=True, array_like=True):
    """Send every book back (a `BookDump`), for a memory recycle: the last message this process is sent."""

    request_id: int


class Install(msgspec.Struct, tag=True, array_like=True):
    """The books a recycled process handed over (a msgpack `list[BookState]`): the replacement's first
    message, ahead of every frame queued since the handoff."""

    books: bytes


class RunTask(msgspec.Struct, tag=True, array_like=True):
    """Run a task: ``payload`` is ``(fn, args, kwargs)`` pickled with cloudpickle; ``fn`` is called with the
    live book of ``asset_id`` (with every book of the worker, a read-only mapping, when ``None``). Answered
    by `TaskStarted`, then `TaskDone`, after every frame sent before it."""

    task_id: int
    asset_id: str | None
    payload: bytes


ToWorker = Boot | Batch | GetBook | Trim | Handoff | Install | Rebuild | MarkStale | DropBooks | RunTask | Stop


class Ready(msgspec.Struct, tag=True, array_like=True):
    """The worker has built its handler and is waiting for frames."""

    pid: int


class LogTally(msgspec.Struct, array_like=True):
    """``count`` occurrences of one log event since the last tally, with the fields of the first of them.

    Workers never write log lines themselves: they tally, and the parent logs each tally once, under its
    own logger names, so a worker's lines obey the application's logging configuration and one bad frame
    a microsecond never becomes a million lines.
    """

    event: str
    level: str
    count: int
    example: dict[str, str | int | float | None]


class Progress(msgspec.Struct, tag=True, array_like=True):
    """Stats after a batch (an acknowledgement) or after a quiet heartbeat interval (a heartbeat), with the
    log tallies that came due since the last one and, since the last one, the books made stale for a
    rejected `book` snapshot (``rejected_books``) or for quotes of their best bid and ask (``best_bid_ask``
    events, 2025 ``price_change`` entries) that disagreed with them (``mismatched_books``): the parent marks
    them stale too and asks for a resync. ``resolved`` holds the books closed since (a msgpack
    `list[BookState]`, or empty), which the parent keeps for a rebuild. ``checks`` is the process's
    `BookChecks` when they changed since the last report, else ``None``: they change only with quotes
    (2025 price changes, market events) or hash checks, so a report whose frames had none does not carry
    (and encode, and decode) six named counters that have not moved."""

    stats: WorkerStats
    logs: list[LogTally] = []
    rejected_books: list[str] = []
    mismatched_books: list[str] = []
    resolved: bytes = b""
    checks: BookChecks | None = None


class BookReply(msgspec.Struct, tag=True, array_like=True):
    """The answer to `GetBook`: the book, or ``None`` if the worker holds no book for the asset."""

    request_id: int
    book: BookView | None


class Trimmed(msgspec.Struct, tag=True, array_like=True):
    """The answer to `Trim`, sent after the memory has been given back."""

    request_id: int


class Fatal(msgspec.Struct, tag=True, array_like=True):
    """The worker could not start: ``stage`` says what failed (``"load"`` the factory's unpickling, ``"build"``
    the call that makes the handler), ``summary`` is the exception's last line, ``error`` the traceback."""

    stage: str
    summary: str
    error: str


class BookDump(msgspec.Struct, tag=True, array_like=True):
    """The answer to `Handoff`: every book of the worker, a msgpack `list[BookState]`."""

    request_id: int
    books: bytes


class Applying(msgspec.Struct, tag=True, array_like=True):
    """The worker is about to apply a frame of a careful `Batch`: the ``seq``-th (from 0) it was sent."""

    seq: int


class TaskStarted(msgspec.Struct, tag=True, array_like=True):
    """The worker is starting the task (from here a death of the worker is a run cut short)."""

    task_id: int


class TaskDone(msgspec.Struct, tag=True, array_like=True):
    """The task's outcome: ``value`` is its result pickled, or, if ``failed``, the exception it raised pickled
    (empty when even that could not be pickled); ``error`` is the traceback text, ``summary`` its last line."""

    task_id: int
    failed: bool
    value: bytes
    error: str = ""
    summary: str = ""


FromWorker = Ready | Progress | BookReply | Trimmed | BookDump | Fatal | Applying | TaskStarted | TaskDone


def frame_header(payload_size: int) -> bytes:
    """The ``multiprocessing.connection`` length prefix for a payload of ``payload_size`` bytes."""
    return _HEADER.pack(payload_size)


def unpack_header(header: bytes) -> int:
    """Inverse of `frame_header`."""
    size: int = _HEADER.unpack(header)[0]
    return size


def split_batches(frames: list[bytes]) -> list[list[bytes]]:
    """``frames`` in order, cut into batches of at most `MAX_BATCH_FRAMES` frames and `MAX_BATCH_BYTES`
    bytes (a frame larger than that goes alone)."""
    sizes = list(accumulate(map(len, frames)))
    if not sizes or sizes[-1] <= MAX_BATCH_BYTES:  # the common case: the count alone decides
        return [frames[start : start + MAX_BATCH_FRAMES] for start in range(0, len(frames), MAX_BATCH_FRAMES)]
    batches = []
    start = 0
    while start < len(frames):
        before = sizes[start - 1] if start else 0
        end = bisect_right(sizes, before + MAX_BATCH_BYTES, start, min(len(frames), start + MAX_BATCH_FRAMES))
        end = max(end, start + 1)
        batches.append(frames[start:end])
        start = end
    return batches
