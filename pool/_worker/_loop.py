"""The worker's loop: owns the books of one slot, applies frames in order, reports progress and tallies.

It blocks on the channel (a plain ``multiprocessing.connection.Connection`` over the socket the parent
created): a batch is decoded and applied, then acknowledged with the worker's stats; a quiet heartbeat
interval is reported too, so the parent can tell a quiet worker from a hung one. Log events are tallied
and ride on those reports (see `pool._wire._tally`); the worker writes no log lines of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import sys
import time
from bisect import bisect_left
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import psutil

from pool._wire._protocol import (
    Applying,
    Batch,
    BookDump,
    BookReply,
    Boot,
    DropBooks,
    GetBook,
    Handoff,
    Install,
    MarkStale,
    Progress,
    Rebuild,
    RunTask,
    Stop,
    TaskStarted,
    ToWorker,
    Trim,
    Trimmed,
)
from pool._wire._routing import Router
from pool._wire._tally import Tally
from pool.models import (
    BATCH_SECONDS_BOUNDS,
    BookEvent,
    BookState,
    BookStore,
    BookView,
    Event,
    MessageError,
    RejectedEvent,
    UnknownEvent,
    WorkerStats,
    decode_frame,
    event_asset_ids,
)

from ._handlers import HandlerTable
from ._tasks import run_task

__all__ = ["WorkerLoop"]

# A worker that keeps finding more batches waiting acknowledges at least this often, so its publisher's
# count of unapplied frames (its backpressure) keeps moving.
_ACK_FRAMES = 2048


def _give_memory_back() -> None:
    """Collect garbage, then ask glibc to return free heap pages to the system (no-op elsewhere)."""
    gc.collect()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            ctypes.CDLL(None).malloc_trim(0)


class WorkerLoop:
    """One worker's books and the loop that keeps them; `run` returns when the parent says stop or goes."""

    def __init__(self, boot: Boot, conn: Connection, handler: Any, tally: Tally) -> None:
        worker_id = boot.worker_id
        self._id = worker_id
        self._conn = conn
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ToWorker)
        self._states = msgspec.msgpack.Decoder(list[BookState])
        self._heartbeat_interval = boot.heartbeat_interval
        self._tally = tally
        self._route = Router(boot.worker_count)
        self._store = BookStore(
            owns=self._mine,
            verify_hashes=boot.verify_book_hash,
            quote_resync_after=boot.best_bid_ask_resync_after,
        )
        self._handlers = HandlerTable(handler, tally)
        self._process = psutil.Process()
        # Measuring USS reads smaps_rollup (about 0.3 to 0.5 ms), so only a worker asked to reports it.
        self._memory_interval = boot.memory_interval
        self._sample_every = min(self._heartbeat_interval, boot.memory_interval or self._heartbeat_interval)
        self._rss = 0
        self._uss: int | None = None
        self._sample_memory()
        self._books_bytes = 0
        self._last_sample = time.monotonic()
        self._applied_seq = 0
        self._reported_seq = 0
        # One poll object for the life of the loop: Connection.poll builds a selector on every call.
        self._poller = select.poll()
        self._poller.register(conn.fileno(), select.POLLIN)
        self._messages = 0
        self._updates = 0
        self._snapshots = 0
        self._busy_ns = 0
        self._batch_buckets = [0] * (len(BATCH_SECONDS_BOUNDS) + 1)
        self._errors = 0
        self._rejections: dict[str, int] = {}
        self._rejected_books: list[str] = []  # since the last report: stale here, to be told to the parent
        self._last_message_ts: float | None = None

    def run(self) -> None:
        conn = self._conn
        poll = self._poller.poll
        while True:
            # Batches are acknowledged once the channel is drained (a worker behind its publisher reads
            # several per acknowledgement; an idle one answers at once), or every _ACK_FRAMES. Otherwise
            # wake on data, for the heartbeat, or sooner when a tally is due, so a lone problem is told at once.
            owed = self._applied_seq != self._reported_seq
            if not poll(0 if owed else min(self._sample_every, self._tally.due_in()) * 1000):
                self._report()  # acknowledged, or a heartbeat: nothing arrived for a whole interval
                continue
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone: nobody is left to apply books for
            message = self._decoder.decode(data)
            if owed and not isinstance(message, Batch):
                self._report()  # every answer follows the acknowledgement of the frames before it
            match message:
                case Batch(frames, careful):
                    if careful:
                        self._apply_carefully(frames)
                    else:
                        self._apply_batch(frames)
                    if self._applied_seq - self._reported_seq >= _ACK_FRAMES:
                        self._report()
                case GetBook(request_id, asset_id):
                    conn.send_bytes(self._encoder.encode(BookReply(request_id, self._view(asset_id))))
                case Trim(request_id):
                    _give_memory_back()
                    self._last_sample = 0.0  # the next report re-reads RSS
                    self._report()
                    conn.send_bytes(self._encoder.encode(Trimmed(request_id)))
                case Handoff(request_id):
                    dump = self._encoder.encode(self._store.dump())
                    conn.send_bytes(self._encoder.encode(BookDump(request_id, dump)))
                case Install(books):
                    self._install(books)
                    self._report()
                case Rebuild(books, stale, resolved):
                    self._rebuild(books, stale, resolved)
                    self._report()
                case RunTask():
                    conn.send_bytes(self._encoder.encode(TaskStarted(message.task_id)))
                    done = run_task(message, self._store.readable, self._id)
                    conn.send_bytes(self._encoder.encode(done))
                case MarkStale(asset_ids):
                    self._store.mark_stale(asset_ids)
                    self._report()
                case DropBooks(asset_ids):
                    self._store.drop(asset_ids)
                    self._report()
                case Stop():
                    self._report(final=True)
                    return
                case Boot():
                    pass  # only ever the first message, read by the entry point

    def _mine(self, asset_id: str) -> bool:
        return self._route[asset_id] == self._id

    def _view(self, asset_id: str) -> BookView | None:
        book = self._store.readable.get(asset_id)
        if book is not None:
            return book.view(stale=asset_id in self._store.stale)
        if asset_id in self._store.stale:
            return BookView.stale_placeholder(asset_id)
        return None

    def _install(self, books: bytes) -> None:
        """Install the books a recycled worker handed over; the handler sees each as a snapshot, as after a
        rebuild, so state it keeps per book is rebuilt too."""
        installed = self._store.install(self._states.decode(books))
        if BookEvent in self._handlers.callbacks:
            for book in installed:
                # A stale book waits for a real snapshot; a closed one (its market settled) has no levels to show.
                if book.asset_id not in self._store.stale and book.resolution is None:
                    self._handlers.call(book.snapshot(), [book])

    def _rebuild(self, books: list[bytes], stale: list[str], resolved: bytes) -> None:
        """Install the closed books the parent kept, then the recovery snapshots (the handler sees each as a
        snapshot), then note the stale assets."""
        if resolved:
            self._store.install(self._states.decode(resolved))
        for frame in books:
            try:
                events = decode_frame(frame)
            except MessageError as exc:
                self._reject("snapshot_rejected", exc)
                continue
            for event in events:
                try:
                    if not isinstance(event, BookEvent):
                        raise event.error() if isinstance(event, RejectedEvent) else MessageError("not a `book`")
                    book = self._store.rebuild(event)
                except MessageError as exc:
                    self._reject_event("snapshot_rejected", event, events, exc)
                    continue
                if book is not None:  # None: the market settled, and its closed book stays
                    self._snapshots += 1
                    self._handlers.call(event, [book])
        self._store.mark_stale(stale)

    def _apply_batch(self, frames: list[bytes]) -> None:
        """Decode and apply every frame of a batch, in order: the worker's hot loop, kept flat on purpose.

        About 90% of frames are one-level price changes costing a few microseconds each, so a helper call
        per frame or per event (~0.1 us each here) is a measurable share; the rare paths stay in helpers.
        """
        started = time.perf_counter_ns()
        apply = self._store.apply
        # None without callbacks, so the per-event test is a C-level identity check, not a method call.
        call_handler = self._handlers.call if self._handlers.callbacks else None
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
                    self._reject_event("event_rejected", event, events, exc)
                    continue
                if not books:
                    continue
                if type(event) is BookEvent:
                    self._snapshots += 1
                else:
                    self._updates += len(books)
                if call_handler is not None:
                    call_handler(event, books)
        elapsed = time.perf_counter_ns() - started
        self._busy_ns += elapsed
        self._batch_buckets[bisect_left(BATCH_SECONDS_BOUNDS, elapsed / 1e9)] += 1
        self._messages += len(frames)
        self._applied_seq += len(frames)
        self._last_message_ts = time.time()

    def _apply_carefully(self, frames: list[bytes]) -> None:
        """Apply ``frames`` one at a time, each announced by an `Applying`, so that if one of them hangs the
        handler, the parent knows which."""
        for frame in frames:
            self._conn.send_bytes(self._encoder.encode(Applying(self._applied_seq)))
            self._apply_batch([frame])

    def _reject_event(
        self,
        what: str,
        event: Event | UnknownEvent | RejectedEvent,
        events: list[Event | UnknownEvent | RejectedEvent],
        exc: MessageError,
    ) -> None:
        """Count a rejected event, if it is this worker's to count; a rejected `book` leaves its book stale.

        A frame reaches every worker that owns an asset in it, and each sees all of its events: the worker
        of the event's first asset counts it (of the frame's first asset, for an event that names none).
        """
        counted_by = next(iter(event_asset_ids(event)), None)
        if counted_by is None:
            counted_by = next((ids[0] for other in events if (ids := event_asset_ids(other))), None)
        if counted_by is not None and not self._mine(counted_by):
            return
        is_book = type(event) is BookEvent or (type(event) is RejectedEvent and event.event_type == "book")
        asset_id = counted_by if is_book and counted_by is not None else None
        if asset_id is not None:
            self._store.mark_stale([asset_id])  # its levels (if any) no longer follow the market
            self._rejected_books.append(asset_id)
        self._reject(what, exc, event_type=getattr(event, "event_type", None) or type(event).__name__)

    def _reject(self, what: str, exc: MessageError, **context: str) -> None:
        """Count and tally a malformed frame or event; the batch goes on without it."""
        self._errors += 1
        self._rejections[exc.reason] = self._rejections.get(exc.reason, 0) + 1
        self._tally.note(what, "warning", reason=str(exc), **context)

    def _sample_memory(self) -> None:
        if self._memory_interval is None:
            self._rss = self._process.memory_info().rss
        else:
            memory = self._process.memory_full_info()
            self._rss, self._uss = memory.rss, memory.uss

    def _report(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_sample >= self._sample_every:
            # Sampled, not per report: reading /proc costs ~20 us and summing book sizes grows with books.
            self._sample_memory()
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
            rejections=dict(self._rejections),
            handler_errors=self._handlers.errors,
            unknown_events=self._store.unknown,
            skipped_updates=self._store.skipped + self._store.superseded,
            stale_books=len(self._store.stale),
            applied_seq=self._applied_seq,
            batch_seconds_buckets=self._batch_buckets,
            private_memory_bytes=self._uss,
            resolved_books=len(self._store.resolved),
        )
        self._reported_seq = self._applied_seq
        logs = self._tally.release(now, force=final)
        # Only those still stale: a later valid `book` in the same batches has made the others live again.
        store = self._store
        rejected_books = sorted(store.stale.intersection(self._rejected_books)) if self._rejected_books else []
        mismatched_books = sorted(store.mismatched & store.stale) if store.mismatched else []
        resolved = self._encoder.encode(store.dump(store.newly_resolved)) if store.newly_resolved else b""
        checks = store.checks() if store.checks_changed else None
        self._rejected_books, store.mismatched, store.newly_resolved, store.checks_changed = [], set(), [], False
        progress = Progress(stats, logs, rejected_books, mismatched_books, resolved, checks)
        self._conn.send_bytes(self._encoder.encode(progress))
