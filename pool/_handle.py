"""The parent's end of one worker slot: the process, its channel, and what is in flight to it.

Three tasks serve each worker, all in the pool's task group:

* the writer sends queued frames in batches (and queries, and `Stop`) in exactly the order they were
  queued, so a query sees every frame published before it;
* the reader takes acknowledgements, heartbeats and replies and wakes whoever waits on them;
* the watcher waits on the process sentinel, so an exit of any kind is seen at once, not on a poll.
"""

from __future__ import annotations

import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, cast

import anyio
import msgspec
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from models import BookView, PoolConfig, WorkerState, WorkerStats

from ._exceptions import BrokenWorkerError, RemoteTraceback, WorkerStartupError
from ._protocol import (
    HEADER_SIZE,
    Batch,
    BookReply,
    Fatal,
    FromWorker,
    GetBook,
    Progress,
    Ready,
    Stop,
    ToWorker,
    frame_header,
    unpack_header,
)
from ._worker import HandlerFactory, worker_main

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


class WorkerHandle:
    """One worker slot as the parent sees it. Every method runs in the pool's event loop."""

    # How long a worker may take to die after SIGTERM before it gets SIGKILL. Short: by then it has
    # already ignored a graceful Stop for the whole shutdown_timeout.
    TERMINATE_GRACE = 0.5

    def __init__(self, worker_id: int, config: PoolConfig, log: Any) -> None:
        self.worker_id = worker_id
        self.state = WorkerState.STARTING
        self.pid: int | None = None
        self.stats: WorkerStats | None = None
        self.published = 0  # frames queued for this worker, ever
        self.applied = 0  # frames the worker reports applied
        self.last_heard = time.monotonic()
        self.restarts = 0
        self.exit_code: int | None = None
        self.exited = anyio.Event()
        self._config = config
        self._log = log.bind(worker_id=worker_id)
        self._process: BaseProcess | None = None
        self._stream: SocketStream | None = None
        self._receiver: BufferedByteReceiveStream | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[FromWorker] = msgspec.msgpack.Decoder(FromWorker)
        self.frames: list[bytes] = []  # queued, not yet handed to the writer; appended to by publish
        self._queue: deque[tuple[list[bytes], ToWorker]] = deque()
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._replies: dict[int, _Reply] = {}
        self._next_request = 0
        self.broken: BrokenWorkerError | None = None  # set when the process has exited

    # ----------------------------------------------------------------------------------- start and stop

    async def spawn(
        self, context: BaseContext, worker_count: int, handler_factory: HandlerFactory | str | None
    ) -> None:
        """Start the process (it then boots on its own; `handshake` waits for it)."""
        parent_sock, child_sock = socket.socketpair()
        process = context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(self.worker_id, worker_count, child_sock, self._config.heartbeat_interval, handler_factory),
            name=f"pool-worker-{self.worker_id}",
            daemon=True,  # multiprocessing's atexit hook terminates it if the owner forgets to shut down
        )
        self._process = process
        try:
            # Started from the event-loop thread on purpose, although it blocks for a few ms: Linux sends the
            # parent-death signal (PR_SET_PDEATHSIG, see _worker.py) when the *thread* that forked the child
            # exits, so a child started from a pooled thread (anyio.to_thread) would be SIGKILLed whenever
            # that thread is retired. The loop thread lives as long as the pool.
            process.start()
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()  # the child has its own copy; ours would hide the child's exit from the reader
        self.pid = process.pid
        self._log = self._log.bind(pid=self.pid)
        self._stream = await SocketStream.from_socket(parent_sock)
        self._receiver = BufferedByteReceiveStream(self._stream)

    async def handshake(self) -> None:
        """Wait for the worker's ready message.

        Raises:
            WorkerStartupError: the worker exited, reported an error, or stayed silent for
                ``worker_startup_timeout``; the process is killed and reaped before this is raised.
        """
        process = self._process
        assert process is not None
        try:
            with anyio.fail_after(self._config.worker_startup_timeout):
                message = await self._receive()
        except TimeoutError:
            await self.kill()
            raise WorkerStartupError(
                f"worker {self.worker_id} (pid {self.pid}) sent no ready handshake within "
                f"{self._config.worker_startup_timeout:g} s (worker_startup_timeout); it was killed",
                worker_id=self.worker_id,
                pid=self.pid,
            ) from None
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            await self.kill()
            raise WorkerStartupError(
                f"worker {self.worker_id} (pid {self.pid}) exited during start-up ({describe_exit(self.exit_code)})",
                worker_id=self.worker_id,
                pid=self.pid,
            ) from None
        if isinstance(message, Fatal):
            await self.kill()
            raise WorkerStartupError(
                f"worker {self.worker_id} (pid {self.pid}) failed to build its handler (its traceback is the cause)",
                worker_id=self.worker_id,
                pid=self.pid,
            ) from RemoteTraceback(message.error)
        self.state = WorkerState.RUNNING
        self.last_heard = time.monotonic()
        self._log.info("worker_started")

    def serve(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the writer, reader and watcher tasks of a started worker."""
        task_group.start_soon(self._write_loop, name=f"pool-writer-{self.worker_id}")
        task_group.start_soon(self._read_loop, name=f"pool-reader-{self.worker_id}")
        task_group.start_soon(self._watch, name=f"pool-watcher-{self.worker_id}")

    def request_stop(self) -> None:
        """Queue `Stop` behind everything already queued; the worker drains, reports and exits 0."""
        if self.state in (WorkerState.RUNNING, WorkerState.STARTING):
            self.state = WorkerState.STOPPING
            self._enqueue_control(Stop())

    def terminate(self) -> None:
        """Send SIGTERM (the pool sends SIGKILL after `TERMINATE_GRACE` if the worker ignores it)."""
        process = self._process
        if process is not None and process.exitcode is None:
            self._log.warning("worker_terminating")
            process.terminate()

    async def kill(self) -> None:
        """SIGKILL and reap (used when a start fails, and after a refused SIGTERM)."""
        process = self._process
        if process is None:
            return
        if process.exitcode is None:
            process.kill()
            await anyio.to_thread.run_sync(process.join)
        self.exit_code = process.exitcode

    async def close(self) -> None:
        """Release the channel and the process object; call once the process has been reaped."""
        if self._stream is not None:
            await self._stream.aclose()
        if self._process is not None and self._process.exitcode is not None:
            self._process.close()

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
        """Return once the worker has applied ``target`` frames.

        Raises:
            BrokenWorkerError: the worker exited first.
        """
        while self.applied < target:
            if self.broken is not None:
                raise self.broken
            await self._progress.wait()

    async def get_book(self, asset_id: str) -> BookView | None:
        """Ask the worker for one book, behind every frame queued before this call.

        Raises:
            BrokenWorkerError: the worker exited before it answered.
        """
        self.check_alive()
        self._next_request += 1
        reply = self._replies[self._next_request] = _Reply()
        self._enqueue_control(GetBook(self._next_request, asset_id))
        await reply.done.wait()
        if not reply.answered:
            assert self.broken is not None
            raise self.broken
        return reply.book

    def check_alive(self) -> None:
        """Raise the worker's `BrokenWorkerError` if it has exited."""
        if self.broken is not None:
            raise self.broken

    def _enqueue_control(self, message: ToWorker) -> None:
        self._queue.append((self.frames, message))
        self.frames = []
        self.wake()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._queue or self.frames:
                    if self._queue:
                        frames, control = self._queue.popleft()
                    else:
                        frames, control = self.frames, None
                        self.frames = []
                    for start in range(0, len(frames), _MAX_BATCH_FRAMES):
                        await self._send(Batch(frames[start : start + _MAX_BATCH_FRAMES]))
                    if control is not None:
                        await self._send(control)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the worker is gone; the watcher reports it

    async def _send(self, message: ToWorker) -> None:
        assert self._stream is not None
        buffer = bytearray(HEADER_SIZE)
        self._encoder.encode_into(message, buffer, HEADER_SIZE)
        buffer[:HEADER_SIZE] = frame_header(len(buffer) - HEADER_SIZE)
        # Both backends accept any bytes-like object; the cast saves a copy of a batch of ~400 KB.
        await self._stream.send(cast(bytes, buffer))

    async def _receive(self) -> FromWorker:
        assert self._receiver is not None
        size = unpack_header(await self._receiver.receive_exactly(HEADER_SIZE))
        return self._decoder.decode(await self._receiver.receive_exactly(size))

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self._receive()
                self.last_heard = time.monotonic()
                match message:
                    case Progress(stats):
                        self.stats = stats
                        self.applied = stats.applied_seq
                        self._notify_progress()
                    case BookReply(request_id, book):
                        reply = self._replies.pop(request_id, None)
                        if reply is not None:
                            reply.book = book
                            reply.answered = True
                            reply.done.set()
                    case Ready() | Fatal():
                        self._log.warning("worker_unexpected_message", message=type(message).__name__)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the worker is gone; the watcher reports it

    def _notify_progress(self) -> None:
        event, self._progress = self._progress, anyio.Event()
        event.set()

    async def _watch(self) -> None:
        process = self._process
        assert process is not None
        await anyio.wait_readable(process.sentinel)
        await anyio.to_thread.run_sync(process.join)
        self.exit_code = process.exitcode
        expected = self.state is WorkerState.STOPPING
        self.state = WorkerState.STOPPED if expected else WorkerState.FAILED
        how = describe_exit(self.exit_code)
        if expected:
            self._log.info("worker_stopped", exit_code=self.exit_code)
        else:
            self._log.error("worker_exited", exit_code=self.exit_code, reason=how)
        self.broken = BrokenWorkerError(
            f"worker {self.worker_id} (pid {self.pid}) exited ({how}) with {self.pending} frames not applied",
            worker_id=self.worker_id,
            pid=self.pid,
        )
        self._notify_progress()
        for reply in self._replies.values():
            reply.done.set()
        self._replies.clear()
        self.exited.set()


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "still running"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name}"
    return f"exit code {exit_code}"
