"""The worker process: owns the books of one slot, applies frames in order, reports stats.

This module runs in the child. It imports `models` and the small channel modules, never the parent-side
pool, so a worker starts fast and stays small. The parent owns shutdown: the worker ignores SIGINT (a
Ctrl-C reaches the whole process group) and exits on `Stop`, on the channel's EOF, or with its parent
(``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from bisect import bisect_left
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import psutil
import structlog

from pool._service._logging import configure_structlog
from pool._wire._protocol import (
    Batch,
    BookReply,
    Fatal,
    GetBook,
    MarkStale,
    Progress,
    Ready,
    Rebuild,
    Stop,
    ToWorker,
    Trim,
    Trimmed,
)
from pool._wire._routing import Router
from pool.models import (
    BATCH_SECONDS_BOUNDS,
    BookEvent,
    BookStore,
    BookView,
    LastTradePrice,
    MessageError,
    OrderBook,
    PriceChange,
    TickSizeChange,
    WorkerStats,
    decode_frame,
)

__all__ = ["HandlerFactory", "resolve_factory", "worker_main"]

HandlerFactory = Callable[[int], Any]

# Handler callbacks by event type; a handler may define any subset of them.
_CALLBACKS: dict[type, str] = {
    BookEvent: "on_snapshot",
    PriceChange: "on_price_change",
    LastTradePrice: "on_trade",
    TickSizeChange: "on_tick_size_change",
}

_PR_SET_PDEATHSIG = 1


def resolve_factory(factory: HandlerFactory | str) -> HandlerFactory:
    """Turn ``"package.module:factory"`` into the callable it names; pass a callable through.

    Raises:
        ValueError: the string is not of the form ``module:attribute``.
        ImportError, AttributeError: the module or the attribute does not exist.
        TypeError: the named object is not callable.
    """
    if not isinstance(factory, str):
        return factory
    module_name, sep, attribute = factory.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"handler_factory {factory!r} must look like 'package.module:factory'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"handler_factory {factory!r} names a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def worker_main(
    worker_id: int,
    worker_count: int,
    sock: socket.socket,
    heartbeat_interval: float,
    handler_factory: HandlerFactory | str | None,
) -> None:
    """Entry point of a worker process (module level so every start method can pickle it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    # The channel is a socket, but a stray print must still never reach whatever stdout the parent has.
    sys.stdout = sys.stderr
    # JSON lines unless a person is watching, as `worker-pool run` does by default.
    configure_structlog(json_lines=not sys.stderr.isatty(), level=logging.INFO, file=sys.stderr)
    log = structlog.get_logger("pool.worker").bind(worker_id=worker_id, pid=os.getpid())
    conn = Connection(sock.detach())
    encoder = msgspec.msgpack.Encoder()
    try:
        handler = resolve_factory(handler_factory)(worker_id) if handler_factory is not None else None
        worker = _Worker(worker_id, worker_count, conn, encoder, heartbeat_interval, handler, log)
    except BaseException:
        conn.send_bytes(encoder.encode(Fatal(traceback.format_exc())))
        log.error("worker_start_failed", exc_info=True)
        raise SystemExit(1) from None
    conn.send_bytes(encoder.encode(Ready(os.getpid())))
    worker.run()


def _give_memory_back() -> None:
    """Collect garbage, then ask glibc to return free heap pages to the system (no-op elsewhere)."""
    gc.collect()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            ctypes.CDLL(None).malloc_trim(0)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so a killed parent leaves no orphan."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc; the channel's EOF still ends us
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


class _Worker:
    def __init__(
        self,
        worker_id: int,
        worker_count: int,
        conn: Connection,
        encoder: msgspec.msgpack.Encoder,
        heartbeat_interval: float,
        handler: Any,
        log: Any,
    ) -> None:
        self._id = worker_id
        self._conn = conn
        self._encoder = encoder
        self._decoder = msgspec.msgpack.Decoder(ToWorker)
        self._heartbeat_interval = heartbeat_interval
        self._log = log
        route = Router(worker_count)
        self._store = BookStore(owns=lambda asset_id: route[asset_id] == worker_id)
        self._callbacks: dict[type, Callable[..., Any]] = {}
        if handler is not None:
            for event_type, name in _CALLBACKS.items():
                method = getattr(handler, name, None)
                if callable(method):
                    self._callbacks[event_type] = method
        self._process = psutil.Process()
        self._rss = self._process.memory_info().rss
        self._books_bytes = 0
        self._last_sample = time.monotonic()
        self._applied_seq = 0
        self._messages = 0
        self._updates = 0
        self._snapshots = 0
        self._busy_ns = 0
        self._batch_buckets = [0] * (len(BATCH_SECONDS_BOUNDS) + 1)
        self._errors = 0
        self._handler_errors = 0
        self._last_message_ts: float | None = None

    def run(self) -> None:
        conn = self._conn
        while True:
            if not conn.poll(self._heartbeat_interval):
                self._report()  # a heartbeat: nothing arrived for a whole interval
                continue
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                self._log.info("worker_parent_gone")
                return
            match self._decoder.decode(data):
                case Batch(frames):
                    self._apply_batch(frames)
                    self._report()
                case GetBook(request_id, asset_id):
                    conn.send_bytes(self._encoder.encode(BookReply(request_id, self._view(asset_id))))
                case Trim(request_id):
                    _give_memory_back()
                    self._last_sample = 0.0  # the next report re-reads RSS
                    self._report()
                    conn.send_bytes(self._encoder.encode(Trimmed(request_id)))
                case Rebuild(books, stale):
                    self._rebuild(books, stale)
                    self._report()
                case MarkStale(asset_ids):
                    self._store.mark_stale(asset_ids)
                    self._report()
                case Stop():
                    self._report()
                    self._log.debug("worker_stopping", messages=self._messages)
                    return

    def _view(self, asset_id: str) -> BookView | None:
        book = self._store.books.get(asset_id)
        if book is not None:
            return book.view(stale=asset_id in self._store.stale)
        if asset_id in self._store.stale:
            return BookView.stale_placeholder(asset_id)
        return None

    def _rebuild(self, books: list[bytes], stale: list[str]) -> None:
        """Install recovery snapshots (the handler sees each as a snapshot), then note the stale assets."""
        for frame in books:
            try:
                events = decode_frame(frame)
            except MessageError as exc:
                self._reject("snapshot_rejected", exc)
                continue
            for event in events:
                if isinstance(event, BookEvent):
                    try:
                        book = self._store.rebuild(event)
                    except MessageError as exc:
                        self._reject("snapshot_rejected", exc, asset_id=event.asset_id)
                        continue
                    self._snapshots += 1
                    self._call_handler(event, [book])
        self._store.mark_stale(stale)
        self._log.info("worker_rebuilt", books=len(books), stale=len(stale))

    def _apply_batch(self, frames: list[bytes]) -> None:
        """Decode and apply every frame of a batch, in order: the worker's hot loop, kept flat on purpose.

        About 90% of frames are one-level price changes costing a few microseconds each, so a helper call
        per frame or per event (~0.1 us each here) is a measurable share; the rare paths stay in helpers.
        """
        started = time.perf_counter_ns()
        apply = self._store.apply
        callbacks = self._callbacks
        for frame in frames:
            try:
                events = decode_frame(frame)
            except MessageError as exc:
                self._reject("frame_rejected", exc)
                continue
            for event in events:
                try:
                    books = apply(event)
                except MessageError as exc:
                    self._reject("event_rejected", exc, event_type=type(event).__name__)
                    continue
                if not books:
                    continue
                if type(event) is BookEvent:
                    self._snapshots += 1
                else:
                    self._updates += len(books)
                if callbacks:
                    self._call_handler(event, books)
        elapsed = time.perf_counter_ns() - started
        self._busy_ns += elapsed
        self._batch_buckets[bisect_left(BATCH_SECONDS_BOUNDS, elapsed / 1e9)] += 1
        self._messages += len(frames)
        self._applied_seq += len(frames)
        self._last_message_ts = time.time()

    def _reject(self, what: str, exc: MessageError, **context: str) -> None:
        """Count and log a malformed frame or event; the batch goes on without it."""
        self._errors += 1
        self._log.warning(what, reason=str(exc), **context)

    def _call_handler(self, event: Any, books: list[OrderBook]) -> None:
        callback = self._callbacks.get(type(event))
        if callback is None:
            return
        for book in books:
            try:
                callback(book, event)
            except Exception as exc:  # the user's code: count it, log it, keep the book update
                self._handler_errors += 1
                self._log.warning("handler_failed", callback=callback.__name__, asset_id=book.asset_id, error=repr(exc))

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_sample >= self._heartbeat_interval:
            # Sampled, not per report: reading /proc costs ~20 us and summing book sizes grows with books.
            self._rss = self._process.memory_info().rss
            self._books_bytes = self._store.memory_usage()
            self._last_sample = now
        stats = WorkerStats(
            worker_id=self._id,
            pid=os.getpid(),
            messages_processed=self._messages,
            updates_applied=self._updates,
            snapshots_received=self._snapshots,
            processing_time_ms=self._busy_ns / 1e6,
            last_message_ts=self._last_message_ts,
            orderbook_count=len(self._store),
            memory_usage_bytes=self._rss,
            books_memory_bytes=self._books_bytes,
            errors=self._errors,
            handler_errors=self._handler_errors,
            unknown_events=self._store.unknown,
            skipped_updates=self._store.skipped + self._store.superseded,
            stale_books=len(self._store.stale),
            applied_seq=self._applied_seq,
            batch_seconds_buckets=self._batch_buckets,
        )
        self._conn.send_bytes(self._encoder.encode(Progress(stats)))
