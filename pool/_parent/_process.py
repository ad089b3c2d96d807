"""One worker process (an *incarnation* of a slot): start, handshake, serve its channel, watch it, end it.

`Launcher.start` starts the process through the pool's own bootstrap script (`pool._worker._bootstrap`, never the
user's ``__main__``) with one end of a socket pair, sends it `Boot`, and waits for its ready handshake
under ``worker_startup_timeout``. Once the process serves its slot, three tasks run for it, in a task
group of its own:

* the writer takes items off the slot's queue, moves them to this process's *in-flight* list, and sends
  them, in order, so a query sees every frame published before it;
* the reader takes acknowledgements, heartbeats, replies and log tallies, and trims the in-flight list;
* the watcher waits for the process to exit (a pidfd, so an exit of any kind is seen at once, not on a
  poll), classifies the exit, hands what was in flight back to the slot, and ends the incarnation.

A recycle's standby is simply a second `WorkerProcess` started for the same slot.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec

import pool._worker
from pool._exceptions import RemoteTraceback, WorkerStartupError
from pool._wire._protocol import (
    HEADER_SIZE,
    Applying,
    Batch,
    BookDump,
    BookReply,
    Boot,
    Fatal,
    FromWorker,
    GetBook,
    Handoff,
    LogTally,
    Progress,
    Ready,
    RunTask,
    TaskDone,
    TaskStarted,
    ToWorker,
    Trim,
    Trimmed,
    frame_header,
    split_batches,
)
from pool.models import BookChecks, BookState, ExitReason, PoolConfig, PoolEvent, PoolEventKind, WorkerStats

from ._channel import Channel
from ._factories import PreparedFactory
from ._slot import QueueItem, Slot

__all__ = [
    "MISMATCHED",
    "REJECTED",
    "TERMINATE_GRACE",
    "ChildProcess",
    "Launcher",
    "Runner",
    "WorkerProcess",
    "describe_exit",
    "explain_exit",
]

# How long a worker may take to die after SIGTERM before it gets SIGKILL. Short: by then it has already
# ignored a graceful Stop for the whole shutdown_timeout.
TERMINATE_GRACE = 0.5

# Why a worker made books stale, as `WorkerProcess.serve`'s ``on_books_stale`` is told.
REJECTED = "its `book` was rejected; waiting for a valid one"
MISMATCHED = (
    "the service's best bid and ask (best_bid_ask, price_change) disagreed with the book too many times in a "
    "row; waiting for a fresh `book`"
)

# The worker's first code, run as a script so that it ties the worker to its parent before importing anything.
_BOOTSTRAP = str(Path(pool._worker.__file__).resolve().with_name("_bootstrap.py"))


@dataclass(eq=False)
class _Sent:
    """A message sent to this process: done once ``end_seq`` frames are applied (a Batch) or once its
    reply has arrived (a request)."""

    message: ToWorker
    end_seq: int = 0


class ChildProcess:
    """A worker run as a child process of this one (the ``process`` backend): what `WorkerProcess` needs of
    the process itself. The Ray backend's `pool._parent._ray.RayActor` offers the same."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once reaped (negative: killed by that signal), else ``None``."""
        return self._popen.returncode

    def kill(self) -> None:
        self._popen.kill()

    def terminate(self) -> None:
        self._popen.terminate()

    def wait(self) -> int:
        """Reap it, blocking until it has exited; its exit code."""
        return self._popen.wait()

    async def exited(self) -> None:
        """Return once it has exited (a pidfd, so an exit of any kind is seen at once, not on a poll)."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: a thread waits instead
            await anyio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
        else:
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)


class Runner(Protocol):
    """A worker's process as `WorkerProcess` drives it, whichever backend started it."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    def terminate(self) -> None: ...

    def wait(self) -> int: ...

    async def exited(self) -> None: ...


class Launcher:
    """Starts the pool's worker processes; the one place that knows the command line and the `Boot`.

    The ``process`` backend's: a subclass starts workers elsewhere (`pool._parent._ray.RayLauncher`) by
    overriding `launch`; everything after the channel is open is shared.
    """

    # Whether the workers measure their own memory: the memory watch samples a child by its pid, which
    # names nothing on another host.
    workers_measure_memory = False

    def __init__(
        self, config: PoolConfig, factory: PreparedFactory | None, log: Any, emit: Callable[[PoolEvent], None]
    ) -> None:
        self._config = config
        self._factory = factory
        self._log = log
        self._emit = emit
        self.live: set[WorkerProcess] = set()  # started and not yet reaped: the pool reaps these at its end
        # The parent's interpreter flags (-X, -W, -O...), as multiprocessing passes them to its children.
        self._command = [sys.executable, *subprocess._args_from_interpreter_flags(), _BOOTSTRAP]  # type: ignore[attr-defined]

    def spawn(self, worker_id: int) -> WorkerProcess:
        """Start a worker process for slot ``worker_id``; it then boots on its own (`WorkerProcess.handshake`).

        Runs on the loop's thread on purpose, although the fork blocks for a few ms: Linux sends the
        parent-death signal (PR_SET_PDEATHSIG) when the *thread* that forked the child exits, so a child
        started from a pooled thread (anyio.to_thread) would be SIGKILLed whenever that thread retired.
        """
        parent_sock, child_sock = socket.socketpair()
        try:
            popen = subprocess.Popen(
                [*self._command, str(child_sock.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,  # a worker never reads the terminal
                pass_fds=(child_sock.fileno(),),
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()  # the child has its own copy; ours would hide the child's exit from the reader
        return self.adopt(worker_id, ChildProcess(popen), parent_sock)

    async def launch(self, worker_id: int) -> WorkerProcess:
        """Start a worker for slot ``worker_id`` with its channel open; it then boots (`handshake`)."""
        return self.spawn(worker_id)

    def adopt(self, worker_id: int, runner: Runner, sock: socket.socket) -> WorkerProcess:
        """The `WorkerProcess` of a started ``runner`` whose channel is ``sock``; tracked until reaped."""
        boot = Boot(
            worker_id=worker_id,
            worker_count=self._config.worker_count,
            heartbeat_interval=self._config.heartbeat_interval,
            factory=self._factory.pickled if self._factory else None,
            factory_takes_worker_id=self._factory.takes_worker_id if self._factory else False,
            sys_path=list(sys.path),
            data_limit_bytes=None
            if self._config.worker_memory_limit_mb is None
            else int(self._config.worker_memory_limit_mb * 1024 * 1024),
            memory_interval=self._config.memory_check_interval if self.workers_measure_memory else None,
            verify_book_hash=self._config.verify_book_hash,
            best_bid_ask_resync_after=self._config.best_bid_ask_resync_after,
        )
        process = WorkerProcess(worker_id, runner, sock, boot, self._config, self._log, self._emit)
        process.on_reaped = self.live.discard
        self.live.add(process)
        return process

    async def start(self, worker_id: int) -> WorkerProcess:
        """`launch` and `WorkerProcess.handshake`: a process that is ready for frames.

        Raises:
            WorkerStartupError: it did not become ready; it has been killed and reaped.
        """
        process = await self.launch(worker_id)
        await process.handshake()
        return process

    async def close(self) -> None:
        """Release what the launcher holds once every worker is reaped (nothing, for child processes)."""


class WorkerProcess:
    """One incarnation of a slot's worker. Every method runs on the pool's loop."""

    def __init__(
        self,
        worker_id: int,
        runner: Runner,
        sock: socket.socket,
        boot: Boot,
        config: PoolConfig,
        log: Any,
        emit: Callable[[PoolEvent], None],
    ) -> None:
        self.worker_id = worker_id
        self.pid = runner.pid
        # True when the worker reports its own USS (`WorkerStats.private_memory_bytes`) rather than being
        # sampled here by its pid.
        self.measures_memory = boot.memory_interval is not None
        self._runner = runner
        self._channel = Channel(sock)
        self._boot: Boot | None = boot
        self._config = config
        self._log = log.bind(worker_id=worker_id, pid=runner.pid)
        self._emit = emit
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[FromWorker] = msgspec.msgpack.Decoder(FromWorker)
        self._states = msgspec.msgpack.Decoder(list[BookState])
        self.stats: WorkerStats | None = None
        self.checks = BookChecks()  # what the worker checked its books against (sent when it changes)
        self.last_heard = time.monotonic()
        self.exited = anyio.Event()
        self.exit_code: int | None = None
        self.exit_reason: ExitReason | None = None
        self.acked = 0  # frames this process has applied
        # Frames (its first ``careful_until``) to send as careful batches: a process before it hung with them
        # in flight. ``applying`` is the frame (counted from 0) it last said it was starting on.
        self.careful_until = 0
        self.applying: int | None = None
        self.unfinished_frames = 0  # once it has exited: the frames it was sent and had not applied
        self.retired = False  # its cumulative counts have passed to its slot's (`Slot.retire`)
        # Frames sent, and what was sent and not yet finished, in wire order: both change only together with
        # a write, under the channel's lock, whichever thread sends (`send_queued`).
        self._sent_seq = 0
        self._inflight: deque[_Sent] = deque()
        self._kill_reason: ExitReason | None = None
        self._scope: anyio.CancelScope | None = None
        self._on_books_stale: Callable[[list[str], str], None] = lambda asset_ids, why: None  # set by `serve`
        # Set when the process is gone (under the channel's lock, so no thread sends to it after). Cancellation
        # reaches a task only at its next checkpoint, so the writer and reader may still run a step; they check
        # this and stop instead of taking requeued items or applying a stale acknowledgement to the slot.
        self._ended = False
        self.on_reaped: Callable[[WorkerProcess], None] = lambda process: None

    # ------------------------------------------------------------------------------------- start

    async def handshake(self) -> None:
        """Send `Boot` and wait for the worker's ready message.

        Raises:
            WorkerStartupError: the worker exited, reported an error, or stayed silent for
                ``worker_startup_timeout``; the process is killed and reaped before this is raised.
        """
        assert self._boot is not None
        try:
            with anyio.fail_after(self._config.worker_startup_timeout):
                with self._channel.lock:
                    self._channel.write(self._encode(self._boot))
                await self._channel.drain()
                message = await self._receive()
        except TimeoutError:
            await self.kill_and_reap()
            raise self._startup_error(
                f"sent no ready handshake within {self._config.worker_startup_timeout:g} s "
                "(worker_startup_timeout); it was killed"
            ) from None
        except anyio.EndOfStream:
            await self.kill_and_reap()
            raise self._startup_error(
                f"exited during start-up ({describe_exit(self.exit_code)}); its stderr says why"
            ) from None
        finally:
            self._boot = None
        if isinstance(message, Fatal):
            await self.kill_and_reap()
            raise self._startup_error(_explain_fatal(message)) from RemoteTraceback(message.error)
        self.last_heard = time.monotonic()
        self._emit(PoolEvent(kind=PoolEventKind.WORKER_STARTED, worker_id=self.worker_id, pid=self.pid))

    def _startup_error(self, what: str) -> WorkerStartupError:
        return WorkerStartupError(
            f"worker {self.worker_id} (pid {self.pid}) {what}",
            worker_id=self.worker_id,
            pid=self.pid,
            exit_code=self.exit_code,
        )

    # ------------------------------------------------------------------------------------- serve

    def serve(
        self,
        task_group: anyio.abc.TaskGroup,
        slot: Slot,
        on_exit: Callable[[WorkerProcess], None],
        on_books_stale: Callable[[list[str], str], None],
    ) -> None:
        """Run this process's writer, reader and watcher for ``slot`` until it exits.

        ``on_books_stale(asset_ids, why)`` runs when the worker reports books it made stale (now stale in the
        slot too): ``why`` is `REJECTED` for a `book` snapshot it rejected, `MISMATCHED` for quotes that
        disagreed with the book. ``on_exit(self)`` runs when it has exited, after what was in flight went back to
        the slot and before ``exited`` is set, with no await in between: nobody sees the slot half-way.
        """
        self.last_heard = time.monotonic()  # a snapshot fetch may have taken longer than heartbeat_timeout
        self._on_books_stale = on_books_stale
        task_group.start_soon(self._serve, slot, on_exit, name=f"pool-worker-{self.worker_id}")

    async def _serve(self, slot: Slot, on_exit: Callable[[WorkerProcess], None]) -> None:
        async with anyio.create_task_group() as tasks:
            self._scope = tasks.cancel_scope
            tasks.start_soon(self._write_loop, slot)
            tasks.start_soon(self._read_loop, slot)
            tasks.start_soon(self._watch, slot, on_exit)

    async def _write_loop(self, slot: Slot) -> None:
        """Send what the publish path could not: frames queued while others were in flight (sent in one
        batch when an acknowledgement wakes this), controls, and the rest of a write the socket could not
        take at once."""
        channel = self._channel
        while True:
            await slot.wait_for_work()
            while not self.send_queued(slot):
                if self._ended or channel.closed:
                    return
                await channel.drain()

    def send_queued(self, slot: Slot) -> bool:
        """Put everything ``slot`` has queued on the wire now, from any thread, without waiting.

        Returns True when nothing is left to send (or the slot holds its queue for a recycle), False when
        the socket is full (the writer finishes when it drains) or this process has ended. Taking from the
        queue, numbering, recording in flight and writing happen under the channel's lock, so whichever
        thread sends, the wire order is the queue order, and a process that dies has everything it was
        sent in `_inflight`, to be requeued.
        """
        channel = self._channel
        with channel.lock:
            while not (self._ended or channel.closed or channel.blocked):
                item = slot.take()
                if item is None:
                    return True
                frames, control = item
                outgoing = []
                for chunk in split_batches(frames):
                    # Careful (only after a hang) if it begins among the suspects: a few more do no harm.
                    careful = self._sent_seq < self.careful_until
                    self._sent_seq += len(chunk)
                    outgoing.append(_Sent(Batch(chunk, careful), self._sent_seq))
                if control is not None:
                    outgoing.append(_Sent(control))
                self._inflight.extend(outgoing)
                for sent in outgoing:  # one buffer each: one growing buffer would be copied at every resize
                    channel.write(self._encode(sent.message))
            return False

    def _encode(self, message: ToWorker) -> bytearray:
        """``message`` with its length prefix, in one buffer."""
        buffer = bytearray(HEADER_SIZE)
        self._encoder.encode_into(message, buffer, HEADER_SIZE)
        buffer[:HEADER_SIZE] = frame_header(len(buffer) - HEADER_SIZE)
        return buffer

    async def _receive(self) -> FromWorker:
        return self._decoder.decode(await self._channel.receive())

    async def _read_loop(self, slot: Slot) -> None:
        try:
            while True:
                message = await self._receive()
                if self._ended:
                    return
                self.last_heard = time.monotonic()
                match message:
                    case Progress(stats, logs, rejected_books, mismatched_books, resolved, checks):
                        self.stats = stats
                        if checks is not None:
                            self.checks = checks
                        self.acked = stats.applied_seq
                        self._trim_inflight(slot)
                        if resolved:  # before the waiters on these frames (flush) are woken: they may kill us
                            slot.books_resolved(self._states.decode(resolved))
                        slot.progressed(self.acked)
                        if rejected_books:
                            self._on_books_stale(slot.stale_in_worker(rejected_books), REJECTED)
                        if mismatched_books:
                            self._on_books_stale(slot.stale_in_worker(mismatched_books), MISMATCHED)
                        if slot.has_queued():
                            slot.wake()  # publish did not, while this batch was in flight
                        if logs:
                            self._log_tallies(logs)
                    case BookReply(request_id, book):
                        slot.answer(request_id, book)
                        self._trim_inflight(slot)
                    case Trimmed(request_id):
                        slot.answer(request_id, None)
                        self._trim_inflight(slot)
                    case BookDump(request_id, books):
                        slot.answer(request_id, None, books)
                        self._trim_inflight(slot)
                    case Applying(seq):
                        self.applying = seq
                    case TaskStarted(task_id):
                        slot.task_started(task_id)
                    case TaskDone():
                        slot.task_done(message)
                        self._trim_inflight(slot)
                    case Ready() | Fatal():
                        self._log.warning("worker_unexpected_message", message=type(message).__name__)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return  # the worker is gone; the watcher reports it

    def _log_tallies(self, logs: list[LogTally]) -> None:
        for entry in logs:
            getattr(self._log, entry.level)(entry.event, count=entry.count, **entry.example)

    def _trim_inflight(self, slot: Slot) -> None:
        inflight = self._inflight
        while inflight:
            head = inflight[0]
            if isinstance(head.message, GetBook | Trim | Handoff):
                if slot.is_waiting_for(head.message.request_id):
                    return
            elif isinstance(head.message, RunTask):
                if slot.tasks.is_sent(head.message.task_id):
                    return
            elif isinstance(head.message, Batch) and head.end_seq > self.acked:
                return
            inflight.popleft()

    # ------------------------------------------------------------------------------------ the end

    async def _watch(self, slot: Slot, on_exit: Callable[[WorkerProcess], None]) -> None:
        await self._wait_exit()
        # End the writer and reader before touching the slot: from here on nothing awaits unshielded, so
        # neither can run again, and the writer cannot take requeued items to a dead socket.
        assert self._scope is not None
        self._scope.cancel()
        with self._channel.lock:  # no thread sends to it from here on
            self._ended = True
            unfinished = self._unfinished()
        self.unfinished_frames = sum(len(frames) for frames, _ in unfinished)
        self.exit_reason = self._kill_reason or _classify(self.exit_code)
        slot.requeue(unfinished, self.acked, self.pid)
        on_exit(self)
        with anyio.CancelScope(shield=True):
            await self.close()
        self.exited.set()

    async def _wait_exit(self) -> None:
        """Return once the process has exited and been reaped (``exit_code`` set)."""
        await self._runner.exited()
        self.exit_code = self._runner.wait()
        self.on_reaped(self)

    def _unfinished(self) -> list[QueueItem]:
        """What this process had been sent and had not finished, in order, as queue items."""
        items: list[QueueItem] = []
        for sent in self._inflight:
            match sent.message:
                case Batch(frames):
                    if items and items[-1][1] is None:
                        items[-1][0].extend(frames)
                    else:
                        items.append((list(frames), None))
                case GetBook() | Trim() | RunTask():
                    items.append(([], sent.message))
                case _:
                    # A Rebuild: the next recovery fetches a fresh one; an old one would undo newer frames.
                    # A MarkStale: the next Rebuild carries the marks. A DropBooks: the slot holds them no
                    # more, so the rebuild leaves them out.
                    pass
        self._inflight.clear()
        return items

    def hung_on(self) -> int | None:
        """The frame (counted from 0) it had said it was starting on and never finished, if any: once it
        has exited, the one it hung or died on. Only careful batches say; ``None`` otherwise."""
        if self.applying is not None and self.applying >= self.acked:
            return self.applying
        return None

    def kill(self, reason: ExitReason) -> None:
        """SIGKILL the process; the watcher records the exit with ``reason`` (hang, operator, memory...)."""
        if self._runner.returncode is None:
            self._kill_reason = self._kill_reason or reason
            self._runner.kill()

    def stop_gracefully(self) -> None:
        """The pool is stopping: an exit from now on is a shutdown, whatever its code."""
        self._kill_reason = ExitReason.SHUTDOWN

    def terminate(self) -> None:
        """Send SIGTERM (the pool sends SIGKILL after `TERMINATE_GRACE` if the worker ignores it)."""
        if self._runner.returncode is None:
            self._log.warning("worker_terminating")
            self._kill_reason = ExitReason.SHUTDOWN
            self._runner.terminate()

    async def kill_and_reap(self) -> None:
        """SIGKILL and reap (when a start fails, after a refused SIGTERM, and when the pool ends)."""
        if self._runner.returncode is None:
            self._kill_reason = self._kill_reason or ExitReason.SHUTDOWN
            self._runner.kill()
            await anyio.to_thread.run_sync(self._runner.wait)
        self.exit_code = self._runner.returncode
        self.on_reaped(self)
        await self.close()

    async def close(self) -> None:
        """Release the channel; idempotent."""
        self._channel.close()


def _classify(exit_code: int | None) -> ExitReason:
    if exit_code == -signal.SIGKILL:
        return ExitReason.KILLED
    return ExitReason.CRASH


def _explain_fatal(fatal: Fatal) -> str:
    if fatal.stage == "load":
        return (
            f"could not load its handler factory ({fatal.summary}). A factory that lives in a module is sent "
            "to the workers by reference, so the worker imports that module, with the parent's sys.path: make "
            "it importable there (install it, or run from its directory), or define the factory in the script "
            "itself, which is sent by value (its traceback is the cause)"
        )
    return f"failed to build its handler ({fatal.summary}; its traceback is the cause)"


def explain_exit(reason: ExitReason, exit_code: int | None) -> str:
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
