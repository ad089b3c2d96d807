"""The publish path: route each frame to the slots that own its assets and queue its bytes there.

Plain code that runs in the caller's thread (or task): no event loop, no thread hop. The parent reads only
a frame's asset ids (a msgspec decode that skips everything else), picks the slot of each (a dict hit for
a known asset), and appends the raw bytes; the workers decode the rest, in parallel. The publisher never
waits: when a slot has ``max_pending_messages`` frames not yet applied, `Publisher.push` stops and says
which slot is full, and the face waits in the caller's own way (a thread blocks, a task awaits) and calls
it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeAlias

import msgspec

from pool._exceptions import BrokenWorkerError, PoolClosedError, PoolTimeoutError
from pool._wire._protocol import MAX_FRAME_BYTES, DropBooks, GetBook, MarkStale
from pool._wire._routing import Router
from pool._wire._tally import Tally
from pool.models import (
    BookEvent,
    Event,
    MessageError,
    PoolEvent,
    PoolEventKind,
    RejectedEvent,
    WorkerState,
    decode_frame,
    event_asset_ids,
)
from pool.models._frame_ids import FrameIds, frame_ids_decoder

from ._changes import Changes, LoopWaker
from ._events import EventHub
from ._slot import NO_LIMIT, NO_ROOM, QUEUED, SEND_NOW, Reply, Slot
from ._tasks import Task

__all__ = [
    "DONE",
    "MORE",
    "NOT_TAKEN",
    "TAKEN",
    "TAKEN_TURN_DUE",
    "Frame",
    "PublishCall",
    "Publishable",
    "Publisher",
]

Frame: TypeAlias = bytes | bytearray | memoryview | str
Publishable: TypeAlias = Frame | Event | Iterable[Frame | Event]

# `Publisher.push` queues at most this many frames per call, so a long publish gives the loop a turn (under
# ``async with``: the writers start sending while the rest is routed) and holds no slot for long. Lower
# means earlier overlap and more calls; each call costs about a microsecond.
PUSH_FRAMES = 4096

DONE = "done"  # every frame of the call is queued
MORE = "more"  # PUSH_FRAMES were queued; call push again

# What `Publisher.push_frame` did with a frame.
NOT_TAKEN = 0  # not the common case, or no room: `push` it
TAKEN = 1  # queued (or sent)
TAKEN_TURN_DUE = 2  # queued; the loop's thread publishes and should give the writers a turn now

# Frames the loop's own thread may queue behind busy workers before `push_frame` asks it to yield. A task
# that publishes frame after frame without awaiting anything else never lets the writers run: its frames
# would wait for the end of the burst (or for `max_pending_messages`), and publishing and applying would
# take turns instead of overlapping. A turn costs some 20 us of loop here, under 0.1 us a frame at 256; in
# the publish benchmark's tight loop, throughput with turns every 256 frames was within the noise of none.
TURN_FRAMES = 256

_json_encoder = msgspec.json.Encoder()


class PublishCall:
    """One `publish` call in progress: its frames, what was accepted, and its deadline."""

    def __init__(self, data: Publishable, timeout: float | None) -> None:
        self.frames = _frames_of(data)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.accepted = 0
        self.undelivered = 0  # frames only for slots given up: not accepted
        self.held: bytes | None = None  # a frame taken from `frames` that waits for room
        self.given_up: BrokenWorkerError | None = None  # raised once the rest has been delivered

    def given_up_error(self) -> BrokenWorkerError:
        """The error a publish raises at its end when a slot it had frames for was given up."""
        given_up = self.given_up
        assert given_up is not None
        error = BrokenWorkerError(
            f"{given_up}. Of this publish, {self.accepted:,} frames were accepted (every frame for a running "
            f"worker) and {self.undelivered:,} were for failed workers only and were not",
            worker_id=given_up.worker_id,
            pid=given_up.pid,
            accepted=self.accepted,
            undelivered=self.undelivered,
        )
        error.__cause__ = given_up
        return error


class Publisher:
    """Queues frames and control messages for the slots; safe to call from any thread."""

    def __init__(
        self,
        slots: list[Slot],
        router: Router,
        limit: int,
        waker: LoopWaker,
        changes: Changes,
        events: EventHub,
        log: object,
    ) -> None:
        self._slots = slots
        self._route = router
        self._limit = limit
        self._waker = waker
        self._changes = changes
        self._events = events
        self._log = log
        self._lock = threading.Lock()  # the counters and the tally, when several threads publish
        self._tally = Tally()
        # `published` less the frames the slots count: each frame queued for n slots adds 1 - n (an accepted
        # frame that no slot takes adds 1), so the fast path needs no counter of its own.
        self._adjust = 0
        self._queued_since_turn = 0  # by the loop's thread, since `push_frame` last said TAKEN_TURN_DUE
        self.rejected = 0
        self.rejections: dict[str, int] = {}  # `rejected`, by reason (`models.Rejection`)
        self.unroutable = 0

    def push_frame(self, frame: bytes) -> int:
        """Queue one frame if it is the common case (one asset, not a book, its slot has room): `TAKEN` or
        `TAKEN_TURN_DUE` if it was queued; `NOT_TAKEN` leaves it to `push`. The fast path of a user who
        publishes frame by frame.

        Its checks are those of the one-asset branch inlined in `push`, on purpose: `push` calling this per
        frame would add a call to the batch path, the hottest loop of the parent.
        """
        try:
            ids = frame_ids_decoder.decode(frame)
        except msgspec.DecodeError:
            return NOT_TAKEN
        if (
            type(ids) is not FrameIds
            or ids.price_changes is not None
            or (asset_id := ids.asset_id) is None
            or ids.event_type is None  # a book in the REST shape
            or ids.event_type == "book"
        ):
            return NOT_TAKEN
        if len(frame) > MAX_FRAME_BYTES:
            return NOT_TAKEN  # `push` rejects it and says why
        slot = self._slots[self._route[asset_id]]
        try:
            offered = slot.offer(frame, self._limit)
        except PoolClosedError as exc:
            raise PoolClosedError(f"{exc}; the frame was not accepted", accepted=0) from None
        if offered == NO_ROOM:
            return NOT_TAKEN
        if offered == SEND_NOW:
            self._send_now(slot)
        elif self._waker.on_loop():  # the writers run only when this thread yields
            if not slot.wake_requested:
                self._wake(slot)
            self._queued_since_turn += 1
            if self._queued_since_turn >= TURN_FRAMES:
                self._queued_since_turn = 0
                return TAKEN_TURN_DUE
        return TAKEN

    @property
    def published(self) -> int:
        """Frames accepted by `publish` (a frame that spans several workers counts once)."""
        return sum(slot.published for slot in self._slots) + self._adjust

    def push(self, call: PublishCall) -> Slot | str:
        """Queue frames of ``call``: `DONE`, `MORE`, or the slot that is full (wait for room, then call again).

        Raises:
            PoolClosedError: the pool began to shut down; it says how many frames of ``call`` were accepted.
            TypeError: an item is not a frame or an event Struct.
        """
        slots, route, limit, slots_of = self._slots, self._route, self._limit, self._slots_of
        decode_ids = frame_ids_decoder.decode
        always_wake = self._waker.on_loop()  # a wake-up on the loop's own thread costs next to nothing
        idle: set[Slot] = set()  # slots keeping up (few frames in flight): sent from here, at the end
        touched: set[Slot] = set()
        live: dict[Slot, list[str]] = {}
        accepted = unroutable = adjust = 0
        rejected: list[MessageError] = []  # frames and events no worker will see, counted here
        outcome: Slot | str = MORE
        try:
            for _ in range(PUSH_FRAMES):
                if call.held is not None:
                    frame, call.held = call.held, None
                else:
                    item = next(call.frames, None)
                    if item is None:
                        outcome = DONE
                        break
                    try:
                        frame = item if type(item) is bytes else _to_frame(item)
                    except MessageError as exc:
                        rejected.append(exc)
                        continue
                if len(frame) > MAX_FRAME_BYTES:
                    rejected.append(
                        MessageError(
                            f"frame of {len(frame):,} bytes is larger than a worker's channel carries "
                            f"({MAX_FRAME_BYTES:,} bytes)",
                            "too_large",
                        )
                    )
                    continue
                try:
                    ids = decode_ids(frame)
                except (msgspec.DecodeError, RecursionError):
                    ids = None
                if type(ids) is FrameIds and ids.price_changes is None and ids.asset_id is not None:
                    # The common case, one asset, kept inline: this loop bounds the whole pool's throughput.
                    slot = slots[route[ids.asset_id]]
                    offered = slot.offer(frame, limit)
                    if offered == NO_ROOM:
                        if slot.broken is None and not self._make_room(slot):
                            call.held = frame
                            outcome = slot
                            break
                        offered = slot.offer(frame, NO_LIMIT)  # a recovering slot never blocks publish
                        if offered == NO_ROOM:  # only a slot given up refuses this: the rest of the call goes on
                            call.undelivered += 1
                            if call.given_up is None:
                                call.given_up = slot.broken
                            continue
                    if offered == SEND_NOW:
                        idle.add(slot)
                    elif always_wake:
                        touched.add(slot)
                    if ids.event_type != "price_change" and ids.is_book and slot.note_book(ids.asset_id):
                        live.setdefault(slot, []).append(ids.asset_id)
                else:
                    try:
                        targets, books, orphans = slots_of(frame, ids)
                    except MessageError as exc:
                        rejected.append(exc)
                        continue
                    if not targets:
                        if orphans:  # malformed events that name no asset: nobody else can count them
                            rejected.extend(orphans)
                            continue
                        unroutable += 1  # accepted, and nobody's: a service text frame, a `new_market`...
                    working = [slot for slot in targets if slot.broken is None]
                    full = next((s for s in working if s.pending >= limit and not self._make_room(s)), None)
                    if full is not None:
                        call.held = frame
                        outcome = full
                        break
                    queued = 0
                    for slot in working:
                        offered = slot.offer(frame, NO_LIMIT)  # room was checked above, for all of them
                        if offered == SEND_NOW:
                            idle.add(slot)
                        elif offered == QUEUED and always_wake:
                            touched.add(slot)
                        queued += offered != NO_ROOM  # NO_ROOM: given up since `working` was taken
                    for slot, asset_id in books:
                        if slot.broken is None and slot.note_book(asset_id):
                            live.setdefault(slot, []).append(asset_id)
                    if queued < len(targets) and call.given_up is None:
                        # The frame reached its other workers; the caller hears of the failed one at the end.
                        call.given_up = next(slot.broken for slot in targets if slot.broken is not None)
                    if targets and not queued:  # every worker it was for has failed: not accepted
                        call.undelivered += 1
                        continue
                    adjust += 1 - queued
                accepted += 1
        except PoolClosedError as exc:  # shutdown began during this call: say how far it got
            taken = call.accepted + accepted
            raise PoolClosedError(
                f"{exc}; {taken:,} of its frames were accepted (each is applied before the workers stop), "
                "the rest were not",
                accepted=taken,
            ) from None
        finally:
            call.accepted += accepted
            with self._lock:
                self._adjust += adjust
                self.unroutable += unroutable
                for error in rejected:
                    self.rejected += 1
                    self.rejections[error.reason] = self.rejections.get(error.reason, 0) + 1
                    self._tally.note("frame_rejected", "warning", reason=str(error))
            for slot in idle:
                self._send_now(slot)
            for slot in touched - idle:
                self._wake(slot)
            for slot, asset_ids in live.items():
                self._book_event(slot, PoolEventKind.BOOK_LIVE, asset_ids, "a `book` arrived")
            if self._tally:
                self.release_logs()
        return outcome

    def timeout_error(self, slot: Slot, call: PublishCall) -> PoolTimeoutError:
        return PoolTimeoutError(
            f"worker {slot.worker_id} still has {slot.pending} frames pending "
            f"(max_pending_messages={self._limit}) after the publish timeout; {call.accepted} frames of this "
            "call were accepted. Publish more slowly, add workers, or raise max_pending_messages"
        )

    def has_room(self, slot: Slot) -> bool:
        """True once ``slot`` can take a frame, or once it has been given up (push then raises)."""
        return slot.pending < self._limit or slot.broken is not None or slot.state is WorkerState.RECOVERING

    def request_book(self, slot: Slot, asset_id: str) -> Reply:
        """Ask ``slot``'s worker for one book, behind every frame queued before this call."""
        reply = slot.request(lambda request_id: GetBook(request_id, asset_id))
        self._send_now(slot)
        return reply

    def submit_task(self, slot: Slot, task: Task, limit: int) -> None:
        """Give ``task`` to ``slot``: queued behind every frame queued before this call, or left waiting (by
        priority) while the slot's worker has its window of tasks.

        Raises:
            BrokenWorkerError: the slot has been given up.
            TaskQueueFullError: the slot has ``limit`` tasks not finished.
        """
        slot.check_alive()
        if slot.queue_controls(slot.tasks.add(task, limit)):
            self._send_now(slot)

    def notify_soon(self) -> None:
        """Wake every waiter, from any thread (a task cancelled by its caller)."""
        self._waker.soon(self._changes.notify)

    def _by_slot(self, what: str, asset_ids: Iterable[str]) -> list[tuple[Slot, list[str]]]:
        """``asset_ids`` grouped by the slot that owns them, in slot order (``what`` names the caller)."""
        if isinstance(asset_ids, str):
            raise TypeError(f"{what} takes an iterable of asset ids, not one str: pass [{asset_ids!r}]")
        by_slot: dict[int, list[str]] = {}
        for asset_id in asset_ids:
            if not isinstance(asset_id, str):
                raise TypeError(f"asset ids must be str, got {type(asset_id).__name__}: {asset_id!r}")
            by_slot.setdefault(self._route[asset_id], []).append(asset_id)
        return [(self._slots[index], ids) for index, ids in sorted(by_slot.items())]

    def drop_books(self, asset_ids: Iterable[str]) -> int:
        """Remove the held books of ``asset_ids`` from their workers, behind every frame queued before;
        return how many were held."""
        dropped = 0
        for slot, ids in self._by_slot("drop_books", asset_ids):
            if slot.broken is not None:
                continue
            held = slot.drop_books(ids)
            if held:
                slot.enqueue_control(DropBooks(held))
                self._wake(slot)
                dropped += len(held)
        return dropped

    def mark_stale(self, asset_ids: Iterable[str]) -> int:
        """Flag the held books of ``asset_ids`` stale until a `book` for each; return how many were marked."""
        marked = 0
        for slot, ids in self._by_slot("mark_stale", asset_ids):
            if slot.broken is not None:
                continue
            held, newly = slot.mark_stale(ids)
            if not held:
                continue
            slot.enqueue_control(MarkStale(held))
            self._wake(slot)
            marked += len(held)
            if newly:
                self._book_event(slot, PoolEventKind.BOOK_STALE, newly, "marked stale: updates may have been missed")
        return marked

    def release_logs(self, *, force: bool = False) -> None:
        """Write the tallied publish problems that are due (all of them with ``force``)."""
        with self._lock:
            entries = self._tally.release(force=force)
        for entry in entries:
            getattr(self._log, entry.level)(entry.event, count=entry.count, **entry.example)

    def _send_now(self, slot: Slot) -> None:
        """Send ``slot``'s queue from this thread, now: the path of a frame (or request) that finds its worker
        keeping up (fewer than a handful of frames in flight), which then costs one system call and no turn
        of the loop. Whatever cannot go now (the slot is not running, or its socket is full) is left to its
        writer, which is woken instead.

        A busy slot is not sent to this way: once frames pile up in flight, new ones queue and go in one
        batch when the worker's acknowledgement wakes the writer, so a worker behind its publisher is sent
        batches, not a system call per frame.
        """
        process = slot.process
        if process is None or slot.state is not WorkerState.RUNNING or not process.send_queued(slot):
            self._wake(slot)

    def _wake(self, slot: Slot) -> None:
        """Have the loop run ``slot``'s writer.

        On the loop's thread (``async with``) a push to a busy slot wakes the writer: that costs an event, and
        the burst goes when the publishing task next yields. From another thread (``with``) a wake-up costs a
        syscall and hands the loop the GIL, so a busy slot's writer is not woken: the worker's
        acknowledgement wakes it for whatever queued meanwhile (`WorkerProcess` does), so a burst of
        one-frame publishes travels in batches, one per round trip.
        """
        if not slot.wake_requested:
            slot.wake_requested = True
            self._waker.soon(slot.wake)

    def _book_event(self, slot: Slot, kind: PoolEventKind, asset_ids: list[str], detail: str) -> None:
        self._events.emit(PoolEvent(kind=kind, worker_id=slot.worker_id, asset_ids=asset_ids, detail=detail))

    def _make_room(self, slot: Slot) -> bool:
        """Make room in a full ``slot`` without waiting, if it can be done: True if there is room now.

        A recovering slot never blocks publish: its buffer is dropped instead and its books are fetched
        again, since a snapshot taken after the drop covers everything dropped.
        """
        if slot.state is not WorkerState.RECOVERING:
            return False
        dropped = slot.drop_buffered()
        self._waker.soon(self._changes.notify)  # flush counts the dropped frames as done
        with self._lock:
            self._tally.note("recovery_buffer_overflow", "warning", worker_id=slot.worker_id, dropped=dropped)
        return True

    def _slots_of(
        self, frame: bytes, ids: FrameIds | list[FrameIds] | None
    ) -> tuple[list[Slot], list[tuple[Slot, str]], list[MessageError]]:
        """The slots of a frame that is not a plain one-asset event, the (slot, asset) of its books, and,
        for a frame no slot takes, the errors of the events rejected in it (a worker counts those of a
        frame it receives; these would reach none).

        Raises:
            MessageError: the frame cannot be read at all (`pool.models.decode_frame` says how).
        """
        route, slots = self._route, self._slots
        targets: dict[int, Slot] = {}
        books: list[tuple[Slot, str]] = []
        if ids is None or (type(ids) is FrameIds and ids.asset_id is None and ids.price_changes is None):
            # Ids that do not parse, or no asset named: decode it all, to route what names an asset (a
            # malformed event among them included: its worker counts it) and to tell the rest apart.
            events = decode_frame(frame)
            for event in events:
                for asset_id in event_asset_ids(event):
                    slot = targets.setdefault(route[asset_id], slots[route[asset_id]])
                    if type(event) is BookEvent:
                        books.append((slot, asset_id))
        else:
            for routed in ids if isinstance(ids, list) else [ids]:
                if routed.asset_id is not None:
                    slot = targets.setdefault(route[routed.asset_id], slots[route[routed.asset_id]])
                    if routed.is_book:
                        books.append((slot, routed.asset_id))
                for entry in routed.price_changes or ():
                    targets.setdefault(route[entry.asset_id], slots[route[entry.asset_id]])
            if targets:
                return list(targets.values()), books, []
            events = decode_frame(frame)  # an array naming no asset: what is in it?
        orphans = [] if targets else [event.error() for event in events if type(event) is RejectedEvent]
        return list(targets.values()), books, orphans


def _frames_of(data: Publishable) -> Iterator[Frame | Event]:
    if isinstance(data, (bytes, bytearray, memoryview, str, msgspec.Struct)):
        return iter([data])
    if isinstance(data, Mapping):
        raise TypeError(
            "publish takes a frame (bytes or str: a JSON event or array of events, as the feed sent it), an "
            "event Struct, or an iterable of them; got a dict: pass msgspec.json.encode(it) to publish it as JSON"
        )
    try:
        return iter(data)
    except TypeError:
        raise TypeError(
            "publish takes a frame (bytes or str: a JSON event or array of events, as the feed sent it), an "
            f"event Struct, or an iterable of them; got {type(data).__name__}"
        ) from None


def _to_frame(item: Frame | Event) -> bytes:
    """``item`` as frame bytes.

    Raises:
        MessageError: a ``str`` that is not valid text (a lone surrogate): no feed could have sent it.
        TypeError: ``item`` is not a frame or an event Struct.
    """
    if isinstance(item, str):
        try:
            return item.encode()
        except UnicodeEncodeError as exc:
            raise MessageError(f"frame is not valid text ({exc.reason} at {exc.start})", "not_json") from None
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, msgspec.Struct):
        return _json_encoder.encode(item)
    raise TypeError(
        f"publish takes frames (bytes or str) or event Structs, or an iterable of them; an item is a "
        f"{type(item).__name__}: {item!r:.80}"
    )
