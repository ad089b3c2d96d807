"""The parent's end of one worker slot: its current process, its channel, and what is in flight to it.

A slot outlives its processes. What was published to it lives in the slot: the queue of frames and
queries not yet sent, and the *in-flight* list of messages sent to the current process and not yet
acknowledged. When the process dies, the in-flight messages go back to the front of the queue, so the
replacement receives them again in the same order; nothing published is lost with a process.

Three tasks serve each process (an *incarnation*), in a task group of its own:

* the writer moves messages from the queue to the in-flight list and sends them, in order, so a query
  sees every frame published before it;
* the reader takes acknowledgements, heartbeats and replies, and trims the in-flight list;
* the watcher waits on the process sentinel, so an exit of any kind is seen at once, not on a poll. It
  classifies the exit, requeues what was in flight, and ends the incarnation.
"""

from __future__ import annotations

import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, cast

import anyio
import anyio.abc
import msgspec
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from pool._exceptions import BrokenWorkerError, RemoteTraceback, WorkerStartupError
from pool._wire._protocol import (
    HEADER_SIZE,
    Batch,
    BookReply,
    Fatal,
    FromWorker,
    GetBook,
    Progress,
    Ready,
    Rebuild,
    Stop,
    ToWorker,
    Trim,
    Trimmed,
    frame_header,
    unpack_header,
)
from pool._worker._loop import HandlerFactory, worker_main
from pool.models import BookView, ExitReason, PoolConfig, PoolEvent, PoolEventKind, WorkerState, WorkerStats

__all__ = ["WorkerHandle", "describe_exit"]

# Frames per pipe message. Larger batches amortise the per-message cost (encode, syscall, ack); smaller
# ones let the worker start sooner and keep latency low. Under load the writer sends whatever has queued
# while it was busy, so this bound matters only for big bursts; 1024 frames of ~400 bytes is ~400 KB.
_MAX_BATCH_FRAMES = 1024


@dataclass(eq=False)
class _Reply:
    done: anyio.Event = field(default_factory=anyio.Event)
    answered: bool = False
    book: BookView | None = None


@dataclass(eq=False)
class _Sent:
    """A message sent to the current process: done once ``end_seq`` frames are applied (a Batch) or once
    its reply has arrived (a GetBook)."""

    message: ToWorker
    end_seq: int = 0


class WorkerHandle:
    """One worker slot as the parent sees it. Every method runs in the pool's event loop."""

    # How long a worker may take to die after SIGTERM before it gets SIGKILL. Short: by then it has
    # already ignored a graceful Stop for the whole shutdown_timeout.
    TERMINATE_GRACE = 0.5

    def __init__(self, worker_id: int, config: PoolConfig, log: Any, emit: Callable[[PoolEvent], None]) -> None:
        self.worker_id = worker_id
        self.state = WorkerState.STARTING
        self._config = config
        self._base_log = log.bind(worker_id=worker_id)
        self._log = self._base_log
        self._emit = emit
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[FromWorker] = msgspec.msgpack.Decoder(FromWorker)
        # The slot: survives restarts.
        self.published = 0  # frames queued for this slot, ever
        self.seq_base = 0  # frames finished by earlier processes, or dropped while recovering
        # seq_base + frames the current process has applied. A plain attribute, kept in step by the three
        # places that change its parts, because publish reads it for every frame.
        self.applied = 0
        self.frames: list[bytes] = []  # queued, not yet handed to the writer; appended to by publish
        self._queue: deque[tuple[list[bytes], ToWorker | None]] = deque()
        self._inflight: deque[_Sent] = deque()
        self.assets: set[str] = set()  # assets a `book` snapshot was routed here for
        self.stale: set[str] = set()  # of those, the ones known to be waiting for a snapshot
        # Of those, the ones a feed marked (`mark_stale`): a recovery snapshot does not clear them, a `book` does.
        self.marked_stale: set[str] = set()
        self.refetch = False  # set when frames were dropped during a snapshot fetch: fetch again
        self.standby: WorkerHandle | None = None  # a started replacement waiting to take over (recycle)
        self.recycling = False  # being swapped for a standby: queries wait for it instead of reading stale
        self.holding = False  # send nothing more to the current process (it is about to be replaced)
        self.last_memory_exit: float | None = None  # monotonic time of the last memory recycle or restart
        self._running = anyio.Event()
        self.restarts = 0
        self.abnormal_exits: deque[float] = deque()  # monotonic times, pruned to restart_window
        self.last_exit_reason: ExitReason | None = None
        self.last_restart_at: float | None = None  # wall-clock time
        self.exit_code: int | None = None
        self.broken: BrokenWorkerError | None = None  # set once the slot is given up (failed or stopped)
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._replies: dict[int, _Reply] = {}
        self._next_request = 0
        # The current process.
        self.pid: int | None = None
        self.stats: WorkerStats | None = None
        self.last_heard = time.monotonic()
        self.exited = anyio.Event()
        self._acked = 0  # frames the current process has applied
        self._sent_seq = 0  # frames sent to the current process
        self._kill_reason: ExitReason | None = None
        self._process: BaseProcess | None = None
        self._stream: SocketStream | None = None
        self._receiver: BufferedByteReceiveStream | None = None
        self._scope: anyio.CancelScope | None = None
        # Bumped when a process dies. Cancellation reaches a task only at its next checkpoint, so the dead
        # process's writer and reader may still run a step; they check this and stop instead of taking
        # requeued messages or applying a stale acknowledgement to the next process's accounting.
        self._generation = 0

    # ----------------------------------------------------------------------------------- process life

    async def spawn(
        self, context: BaseContext, worker_count: int, handler_factory: HandlerFactory | str | None
    ) -> None:
        """Start a new process for this slot (it then boots on its own; `handshake` waits for it)."""
        parent_sock, child_sock = socket.socketpair()
        process = context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(self.worker_id, worker_count, child_sock, self._config.heartbeat_interval, handler_factory),
            name=f"pool-worker-{self.worker_id}",
            daemon=True,  # multiprocessing's atexit hook terminates it if the owner forgets to shut down
        )
        self._process = process
        self.exited = anyio.Event()
        self._kill_reason = None
        self.stats = None
        try:
            # Started from the event-loop thread on purpose, although it blocks for a few ms: Linux sends the
            # parent-death signal (PR_SET_PDEATHSIG, see _worker.py) when the *thread* that forked the child
            # exits, so a child started from a pooled thread (anyio.to_thread) would be SIGKILLed whenever
            # that thread is retired. The loop thread lives as long as the pool.
            process.start()
        except BaseException:
            parent_sock.close()
            self._process = None  # never started: nothing to kill or reap
            raise
        finally:
            child_sock.close()  # the child has its own copy; ours would hide the child's exit from the reader
        self.pid = process.pid
        self._log = self._base_log.bind(pid=self.pid)
        self._stream = await SocketStream.from_socket(parent_sock)
        self._receiver = BufferedByteReceiveStream(self._stream)

    async def handshake(self) -> None:
        """Wait for the worker's ready message.

        Raises:
            WorkerStartupError: the worker exited, reported an error, or stayed silent for
                ``worker_startup_timeout``; the process is killed and reaped before this is raised.
        """
        try:
            with anyio.fail_after(self._config.worker_startup_timeout):
                assert self._receiver is not None
                message = await self._receive(self._receiver)
        except TimeoutError:
            await self.kill()
            raise self._startup_error(
                f"sent no ready handshake within {self._config.worker_startup_timeout:g} s "
                "(worker_startup_timeout); it was killed"
            ) from None
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            await self.kill()
            raise self._startup_error(f"exited during start-up ({describe_exit(self.exit_code)})") from None
        if isinstance(message, Fatal):
            await self.kill()
            raise self._startup_error("failed to build its handler (its traceback is the cause)") from RemoteTraceback(
                message.error
            )
        self.last_heard = time.monotonic()
        self._emit(PoolEvent(kind=PoolEventKind.WORKER_STARTED, worker_id=self.worker_id, pid=self.pid))

    def _startup_error(self, what: str) -> WorkerStartupError:
        return WorkerStartupError(
            f"worker {self.worker_id} (pid {self.pid}) {what}", worker_id=self.worker_id, pid=self.pid
        )

    def serve(self, task_group: anyio.abc.TaskGroup) -> None:
        """Run the current process's writer, reader and watcher until it exits."""
        self.state = WorkerState.RUNNING
        self.recycling = self.holding = False
        self.last_heard = time.monotonic()  # a snapshot fetch may have taken longer than heartbeat_timeout
        self.wake()  # frames requeued from the last process may be waiting
        self._running.set()
        task_group.start_soon(self._serve_incarnation, name=f"pool-worker-{self.worker_id}")

    async def _serve_incarnation(self) -> None:
        async with anyio.create_task_group() as tasks:
            self._scope = tasks.cancel_scope
            tasks.start_soon(self._write_loop)
            tasks.start_soon(self._read_loop)
            tasks.start_soon(self._watch)

    def adopt(self, standby: WorkerHandle) -> None:
        """Take over ``standby``'s started process as this slot's current one (a recycle's swap)."""
        self._process, self._stream, self._receiver = standby._process, standby._stream, standby._receiver
        self.pid, self._log = standby.pid, self._base_log.bind(pid=standby.pid)
        self.exited = anyio.Event()
        self._kill_reason = None
        self.stats = None
        self.last_heard = time.monotonic()
        standby._process = standby._stream = standby._receiver = None

    async def wait_running(self) -> None:
        """Return once the slot runs a process again, or has been given up."""
        await self._running.wait()

    def request_stop(self) -> None:
        """Queue `Stop` behind everything already queued; the worker drains, reports and exits 0."""
        if self.state in (WorkerState.RUNNING, WorkerState.STARTING, WorkerState.RECOVERING):
            self.state = WorkerState.STOPPING
            self.enqueue_control(Stop())

    def kill_for(self, reason: ExitReason) -> None:
        """SIGKILL the current process; the watcher records the exit with ``reason`` (hang, operator...)."""
        if self._process is not None and self._process.exitcode is None:
            self._kill_reason = reason
            self._process.kill()

    def terminate(self) -> None:
        """Send SIGTERM (the pool sends SIGKILL after `TERMINATE_GRACE` if the worker ignores it)."""
        process = self._process
        if process is not None and process.exitcode is None:
            self._log.warning("worker_terminating")
            self._kill_reason = ExitReason.SHUTDOWN
            process.terminate()

    async def kill(self) -> None:
        """SIGKILL and reap (used when a start fails, and after a refused SIGTERM)."""
        process = self._process
        if process is None:
            return
        if process.exitcode is None:
            self._kill_reason = self._kill_reason or ExitReason.SHUTDOWN
            process.kill()
            await anyio.to_thread.run_sync(process.join)
        self.exit_code = process.exitcode

    async def close(self) -> None:
        """Release the channel and the process object; call once the process has been reaped."""
        if self._stream is not None:
            await self._stream.aclose()
        if self._process is not None and self._process.exitcode is not None:
            self._process.close()
            self._process = None

    async def abandon(self) -> None:
        """Stop a slot that is between processes (shutdown during a recovery): kill any replacement."""
        await self.kill()
        self.state = WorkerState.STOPPED
        self.last_exit_reason = ExitReason.SHUTDOWN
        self.fail(
            BrokenWorkerError(
                f"worker {self.worker_id} was stopped while recovering", worker_id=self.worker_id, pid=self.pid
            )
        )
        self.exited.set()

    def fail(self, error: BrokenWorkerError) -> None:
        """Give the slot up: every call waiting on it, now or later, raises ``error``."""
        self.broken = error
        self._running.set()
        self._notify_progress()
        for reply in self._replies.values():
            reply.done.set()
        self._replies.clear()

    # ------------------------------------------------------------------------------------ the channel

    def wake(self) -> None:
        """Tell the writer there is something to send."""
        if not self._wake.is_set():
            self._wake.set()

    @property
    def pending(self) -> int:
        """Frames queued or in flight that the worker has not yet applied."""
        return self.published - self.applied

    async def wait_applied(self, target: int) -> None:
        """Return once ``target`` frames of this slot are applied; waits through a restart.

        Raises:
            BrokenWorkerError: the slot was given up first.
        """
        while self.applied < target:
            if self.broken is not None:
                raise self.broken
            await self._progress.wait()

    async def get_book(self, asset_id: str) -> BookView | None:
        """Ask the worker for one book, behind every frame queued before this call.

        Raises:
            BrokenWorkerError: the slot was given up before it answered.
        """
        reply = await self._request(lambda request_id: GetBook(request_id, asset_id))
        return reply.book

    async def trim(self) -> None:
        """Ask the worker to give memory back; returns once it has (behind everything queued before)."""
        await self._request(Trim)

    async def _request(self, make: Callable[[int], GetBook | Trim]) -> _Reply:
        self.check_alive()
        self._next_request += 1
        reply = self._replies[self._next_request] = _Reply()
        self.enqueue_control(make(self._next_request))
        await reply.done.wait()
        if not reply.answered:
            assert self.broken is not None
            raise self.broken
        return reply

    def check_alive(self) -> None:
        """Raise the slot's `BrokenWorkerError` if it has been given up."""
        if self.broken is not None:
            raise self.broken

    def enqueue_control(self, message: ToWorker) -> None:
        """Queue a control message behind every frame queued so far."""
        self._queue.append((self.frames, message))
        self.frames = []
        self.wake()

    def enqueue_first(self, message: Rebuild) -> None:
        """Put a rebuild ahead of everything queued (the frames it must precede are all behind it).

        A rebuild still queued from an earlier recovery is dropped: it is older than this one.
        """
        self._queue = deque(item for item in self._queue if not isinstance(item[1], Rebuild))
        self._queue.appendleft(([], message))
        self.wake()

    def drop_buffered(self) -> int:
        """Drop every queued frame (queries stay); the caller re-snapshots the slot's books instead.

        Only while recovering: the replacement has received none of them, and a fresh snapshot covers them.
        Returns how many were dropped; they count as done for `flush`.
        """
        dropped = len(self.frames) + sum(len(frames) for frames, _ in self._queue)
        self._queue = deque(([], control) for _, control in self._queue if control is not None)
        self.frames = []
        self.seq_base += dropped
        self.applied = self.seq_base + self._acked
        self._notify_progress()
        return dropped

    async def _write_loop(self) -> None:
        stream, generation = self._stream, self._generation
        assert stream is not None
        try:
            while True:
                await self._wake.wait()
                if generation != self._generation:
                    return
                self._wake = anyio.Event()
                while (self._queue or self.frames) and generation == self._generation and not self.holding:
                    if self._queue:
                        frames, control = self._queue.popleft()
                    else:
                        frames, control = self.frames, None
                        self.frames = []
                    # Everything taken off the queue is in flight before the first await: if the process dies
                    # mid-way, the watcher requeues all of it, sent or not, and nothing falls in between.
                    outgoing = []
                    for start in range(0, len(frames), _MAX_BATCH_FRAMES):
                        chunk = frames[start : start + _MAX_BATCH_FRAMES]
                        self._sent_seq += len(chunk)
                        outgoing.append(_Sent(Batch(chunk), self._sent_seq))
                    if control is not None:
                        outgoing.append(_Sent(control))
                    self._inflight.extend(outgoing)
                    for sent in outgoing:
                        await self._send(stream, sent.message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the worker is gone; the watcher reports it

    async def _send(self, stream: SocketStream, message: ToWorker) -> None:
        buffer = bytearray(HEADER_SIZE)
        self._encoder.encode_into(message, buffer, HEADER_SIZE)
        buffer[:HEADER_SIZE] = frame_header(len(buffer) - HEADER_SIZE)
        # Both backends accept any bytes-like object; the cast saves a copy of a batch of ~400 KB.
        await stream.send(cast(bytes, buffer))

    async def _receive(self, receiver: BufferedByteReceiveStream) -> FromWorker:
        size = unpack_header(await receiver.receive_exactly(HEADER_SIZE))
        return self._decoder.decode(await receiver.receive_exactly(size))

    async def _read_loop(self) -> None:
        receiver, generation = self._receiver, self._generation
        assert receiver is not None
        try:
            while True:
                message = await self._receive(receiver)
                if generation != self._generation:
                    return
                self.last_heard = time.monotonic()
                match message:
                    case Progress(stats):
                        self.stats = stats
                        self._acked = stats.applied_seq
                        self.applied = self.seq_base + self._acked
                        self._trim_inflight()
                        self._notify_progress()
                    case BookReply(request_id, book):
                        self._answer(request_id, book)
                    case Trimmed(request_id):
                        self._answer(request_id, None)
                    case Ready() | Fatal():
                        self._log.warning("worker_unexpected_message", message=type(message).__name__)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the worker is gone; the watcher reports it

    def _answer(self, request_id: int, book: BookView | None) -> None:
        reply = self._replies.pop(request_id, None)
        if reply is not None:
            reply.book = book
            reply.answered = True
            reply.done.set()
        self._trim_inflight()

    def _trim_inflight(self) -> None:
        inflight = self._inflight
        while inflight:
            head = inflight[0]
            if isinstance(head.message, GetBook | Trim):
                if head.message.request_id in self._replies:
                    return
            elif isinstance(head.message, Batch) and head.end_seq > self._acked:
                return
            inflight.popleft()

    def _notify_progress(self) -> None:
        event, self._progress = self._progress, anyio.Event()
        event.set()

    async def _watch(self) -> None:
        process = self._process
        assert process is not None
        await anyio.wait_readable(process.sentinel)
        await anyio.to_thread.run_sync(process.join)
        # End this incarnation's writer and reader before touching the queue: from here on nothing awaits
        # unshielded, so neither can run again, and the writer cannot take requeued messages to a dead socket.
        assert self._scope is not None
        self._scope.cancel()
        self._generation += 1
        self.exit_code = process.exitcode
        stopping = self.state is WorkerState.STOPPING
        reason = ExitReason.SHUTDOWN if stopping else self._classify(self.exit_code)
        self.last_exit_reason = reason
        self._requeue_inflight()
        if stopping:
            self.state = WorkerState.STOPPED
            self.fail(
                BrokenWorkerError(
                    f"worker {self.worker_id} (pid {self.pid}) was stopped with the pool",
                    worker_id=self.worker_id,
                    pid=self.pid,
                )
            )
        else:
            self.state = WorkerState.RECOVERING  # the supervisor restarts it or gives the slot up
            self._running = anyio.Event()
        self._emit(
            PoolEvent(
                kind=PoolEventKind.WORKER_EXITED,
                worker_id=self.worker_id,
                pid=self.pid,
                reason=reason,
                exit_code=self.exit_code,
                detail=_explain(reason, self.exit_code),
            )
        )
        with anyio.CancelScope(shield=True):
            assert self._stream is not None
            await self._stream.aclose()
        self.exited.set()

    def _classify(self, exit_code: int | None) -> ExitReason:
        if self._kill_reason is not None:
            return self._kill_reason
        if exit_code == -signal.SIGKILL:
            return ExitReason.KILLED
        return ExitReason.CRASH

    def _requeue_inflight(self) -> None:
        """Move what the dead process had not finished back to the front of the queue, in order."""
        self.seq_base += self._acked
        self._acked = self._sent_seq = 0
        self.applied = self.seq_base
        items: list[tuple[list[bytes], ToWorker | None]] = []
        for sent in self._inflight:
            match sent.message:
                case Batch(frames):
                    if items and items[-1][1] is None:
                        items[-1][0].extend(frames)
                    else:
                        items.append((list(frames), None))
                case GetBook() | Trim():
                    items.append(([], sent.message))
                case _:
                    # A Rebuild: the next recovery fetches a fresh one; an old one would undo newer frames.
                    # A MarkStale: the next Rebuild carries the marks (`marked_stale`).
                    pass
        self._inflight.clear()
        self._queue.extendleft(reversed(items))


def _explain(reason: ExitReason, exit_code: int | None) -> str:
    how = describe_exit(exit_code)
    if reason is ExitReason.KILLED:
        return f"{how}, which the pool did not send: perhaps out of memory (check the kernel log)"
    if reason is ExitReason.HANG:
        return f"{how} after missing heartbeats (hung)"
    return how


def describe_exit(exit_code: int | None) -> str:
    """``exit code 3`` or ``killed by SIGKILL`` (or ``still running``)."""
    if exit_code is None:
        return "still running"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name}"
    return f"exit code {exit_code}"
