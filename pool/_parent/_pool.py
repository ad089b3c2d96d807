"""`PersistentWorkerPool`: long-lived worker processes, each owning a shard of the order books.

Data flow::

    publish(frames)                       (any thread / task of the owner)
        |
        v
    +----------------------- parent: one anyio event loop -----------------------+
    |  route: asset id -> slot           (msgspec decode of the ids only, cached)  |
    |     |            |                                                            |
    |  WorkerHandle 0 ... WorkerHandle N-1  (queued frames, pending <= max_pending) |
    |  writer task ---- Batch / GetBook / Rebuild / Stop -->  socketpair --> worker |
    |  reader task <--- Progress / BookReply ---------------  socketpair <-- (proc) |
    |  watcher task: waits on the process sentinel (exit seen at once)             |
    |  supervisor (pool._parent._supervisor): restart with back-off and budget, rebuild     |
    |     from the SnapshotSource; health loop: kills workers silent too long      |
    |  sampler task: system memory and throughput for get_status()                 |
    +------------------------------------------------------------------------------+

    worker process (pool._worker._loop): recv Batch -> decode each frame (msgspec) -> apply to
    its BookStore -> call the user's handler -> send Progress (ack + stats)

* publish: the parent reads only the asset ids of a frame, picks the slot(s), appends the raw bytes to
  each slot's queue and wakes its writer. A frame whose entries span several slots (the 2025
  ``price_changes`` shape, or an array frame) is sent to each of them; each worker applies only the
  assets it owns. When a slot has ``max_pending_messages`` frames not yet applied, publish waits.
* flush / get_book: a query travels down the same ordered channel as the data, so its answer reflects
  every frame published before it (read your writes). Flush waits for each slot's applied count.
* crash: the watcher sees the sentinel, ends that process's tasks and puts what it had been sent but had
  not acknowledged back at the front of the slot's queue; the supervisor starts a replacement, queues
  fresh snapshots ahead of it all, and the slot runs again (or is ``failed`` once the restart budget is
  spent, and calls waiting on it raise `BrokenWorkerError`).
* shutdown: ``Stop`` is queued behind the data; workers drain, report and exit; after
  ``shutdown_timeout`` the rest get SIGTERM, then SIGKILL; every process is reaped, every fd closed.

The same loop serves both APIs. Under ``async with`` it runs in the caller's task group and the waiting
methods return coroutines. Under ``with`` (or when used without a context manager) it runs in a
background thread behind an anyio blocking portal, and the same methods block and return the value.
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import anyio
import msgspec
import structlog
from anyio.from_thread import BlockingPortal, start_blocking_portal

from pool._exceptions import BrokenWorkerError, PoolClosedError, PoolTimeoutError, UnknownAssetError, WorkerStartupError
from pool._parent._events import EventHub, Listener
from pool._parent._handle import WorkerHandle
from pool._parent._memory_watch import MemoryWatch, memory_status
from pool._parent._snapshots import SnapshotSource, as_snapshot_source
from pool._parent._supervisor import ResyncCallback, Supervisor
from pool._wire._protocol import MarkStale
from pool._wire._routing import Router
from pool._worker._loop import HandlerFactory, resolve_factory
from pool.models import (
    BookEvent,
    BookView,
    Event,
    ExitReason,
    FeedStatus,
    MessageError,
    PoolConfig,
    PoolEvent,
    PoolEventKind,
    PoolState,
    PoolStatus,
    PriceChange,
    UnknownEvent,
    WorkerState,
    WorkerStats,
    WorkerStatus,
    decode_frame,
)
from pool.monitors import MemoryInfo, MemoryMonitor

__all__ = ["PersistentWorkerPool"]

T = TypeVar("T")
Frame: TypeAlias = bytes | bytearray | memoryview | str
Publishable: TypeAlias = Frame | Event | Iterable[Frame | Event]

_log = structlog.get_logger("pool")

# publish yields to the event loop every this many frames, so writers start sending a large batch while
# it is still being routed. Lower means earlier overlap and more scheduling overhead.
_YIELD_EVERY_FRAMES = 4096

# Throughput in get_status() is averaged over this many sampler ticks (memory_check_interval apart).
_RATE_WINDOW_SAMPLES = 5


class _RouteEntry(msgspec.Struct):
    asset_id: str


class _RouteEvent(msgspec.Struct):
    """The only fields the parent reads of a frame: who it is for. Everything else is skipped unparsed."""

    asset_id: str | None = None
    price_changes: list[_RouteEntry] | None = None
    event_type: str | None = None
    bids: msgspec.Raw = msgspec.Raw()  # left unparsed; non-empty means a book (REST shapes have no event_type)

    @property
    def is_book(self) -> bool:
        return self.event_type == "book" or (self.event_type is None and len(self.bids) > 0)


_route_decoder = msgspec.json.Decoder(_RouteEvent | list[_RouteEvent])
_json_encoder = msgspec.json.Encoder()


class PersistentWorkerPool:
    """A pool of worker processes that keep live order books, sharded by asset id.

    Use it as a context manager::

        with PersistentWorkerPool(PoolConfig(worker_count=4)) as pool:
            pool.publish(frames)
            book = pool.get_book(asset_id)

        async with PersistentWorkerPool(PoolConfig(worker_count=4)) as pool:
            await pool.publish(frames)
            book = await pool.get_book(asset_id)

    Under ``async with`` (asyncio or trio) the waiting methods (`start`, `publish`, `flush`, `get_book`,
    `shutdown`) return coroutines; under ``with`` they block and return the value. The non-waiting
    methods (`get_status`, `get_stats`, `is_healthy`, `get_alive_count`) are plain and cheap in both.

    Args:
        config: the pool's settings; ``PoolConfig()`` when omitted.
        handler_factory: called in each worker as ``handler_factory(worker_id)`` to build that worker's
            handler, whose optional methods ``on_snapshot``, ``on_price_change``, ``on_trade`` and
            ``on_tick_size_change`` are called as ``method(book, event)`` after each event is applied to
            a book. It must be picklable (a module-level function or class, or a ``functools.partial`` of
            one), or an import path ``"package.module:factory"``.

    Raises:
        TypeError, ValueError: a bad argument; nothing has been started.
    """

    def __init__(
        self,
        config: PoolConfig | None = None,
        *,
        handler_factory: HandlerFactory | str | None = None,
        snapshot_source: SnapshotSource | Callable[[Sequence[str]], Any] | None = None,
        on_resync: ResyncCallback | None = None,
    ) -> None:
        if config is None:
            config = PoolConfig()
        if not isinstance(config, PoolConfig):
            raise TypeError(f"config must be a PoolConfig, got {type(config).__name__}")
        _check_handler_factory(handler_factory)
        if on_resync is not None and not callable(on_resync):
            raise TypeError(f"on_resync must be callable, got {type(on_resync).__name__}")
        self.config = config
        self._handler_factory = handler_factory
        self._snapshot_source = as_snapshot_source(snapshot_source)
        self._on_resync = on_resync
        self._state = PoolState.CREATED
        self._route = Router(config.worker_count)
        self._handles: list[WorkerHandle] = []
        self._published = 0
        self._rejected = 0
        self._unroutable = 0
        self._feeds: dict[str, Callable[[], FeedStatus]] = {}
        self._started_at: float | None = None
        self.memory_monitor = MemoryMonitor.from_config(config)
        self._memory_watch: MemoryWatch | None = None
        self._initial_memory = memory_status(self.memory_monitor.sample_system())
        self._rate_samples: deque[tuple[float, int]] = deque(maxlen=_RATE_WINDOW_SAMPLES)
        self._log = _log.bind(pool_id=id(self))
        self._events = EventHub(self._log)
        self._supervisor: Supervisor | None = None
        # Set while running: the task group that serves the workers, and (thread mode) the portal.
        self._exit_stack: AsyncExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._portal_cm: Any = None
        self._portal_lock = threading.Lock()
        self._stop_requested: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    # --------------------------------------------------------------------------- context managers

    def __enter__(self) -> Self:
        self._require_state(PoolState.CREATED, "enter `with`")
        self._start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> Self:
        self._require_state(PoolState.CREATED, "enter `async with`")
        stack = AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        try:
            await task_group.start(self._serve)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._exit_stack is not None
        # Shielded: a cancelled or failing block must still stop and reap every worker.
        with anyio.CancelScope(shield=True):
            await self._shutdown()
        # The serving task has finished, so the task group closes empty. The block's own exception is not
        # handed to it: it propagates from here as itself, not wrapped in an ExceptionGroup.
        await self._exit_stack.aclose()

    # ----------------------------------------------------------------------------------- public API

    def start(self) -> Any:
        """Start the workers if they are not running yet; return once every worker is ready.

        Raises:
            WorkerStartupError: a worker did not become ready; every worker started so far was stopped.
            PoolClosedError: the pool was shut down.
        """
        return self._call(self._start_noop)

    def publish(self, data: Publishable, *, timeout: float | None = None) -> Any:
        """Send market data to the workers that own it, in order.

        Args:
            data: one frame (``bytes``/``str``: a JSON event or array of events, as the feed sent it), a
                decoded event Struct, or an iterable of either. Pass batches for throughput.
            timeout: the longest to wait for room when a worker has ``max_pending_messages`` frames not
                yet applied; ``None`` waits as long as it takes.

        A frame that is not JSON, or whose asset id is not a string, is counted in ``frames_rejected`` and
        logged; a service text frame (``PONG``) or an event naming no asset is counted in
        ``frames_unroutable``. Neither reaches a worker or stops the rest of ``data``; the workers count the
        frames they reject themselves.

        Raises:
            PoolTimeoutError: ``timeout`` passed while waiting for room; frames before the one that waited
                were accepted (the message says how many).
            BrokenWorkerError: the worker that owns a frame has failed for good (a frame that spans several
                workers is first given to the others, so their books miss nothing).
            PoolClosedError: the pool was shut down.
        """
        return self._call(self._publish, data, timeout)

    def flush(self, timeout: float | None = None) -> Any:
        """Wait until every frame published before this call has been applied by its worker.

        Raises:
            PoolTimeoutError: not done within ``timeout`` seconds.
            BrokenWorkerError: a worker with frames still to apply exited.
            PoolClosedError: the pool was shut down.
        """
        return self._call(self._flush, timeout)

    wait_for_completion = flush

    def get_book(self, asset_id: str, *, timeout: float | None = None) -> Any:
        """Return a `BookView` of ``asset_id`` that reflects every frame published before this call.

        Raises:
            UnknownAssetError: no `book` snapshot was ever published for ``asset_id``.
            PoolTimeoutError: no answer within ``timeout`` seconds.
            BrokenWorkerError: the owning worker exited.
            PoolClosedError: the pool was shut down.
        """
        return self._call(self._get_book, asset_id, timeout)

    def mark_stale(self, asset_ids: Iterable[str]) -> Any:
        """Flag the books of ``asset_ids`` stale until a `book` for each is published; return how many.

        For feeds: call it when the connection that carried these assets drops, since updates may be lost
        until the service sends each `book` again. A flagged book keeps its levels and takes updates, but
        `get_book` returns it with ``stale=True``, `get_status` counts it in ``stale_books``, and a
        ``book_stale`` event fires (``book_live`` when its `book` arrives). Frames published before the
        call are applied before the mark. Assets the pool holds no book for are passed over.

        Raises:
            TypeError: an asset id is not a string.
            PoolClosedError: the pool is not running.
        """
        return self._call(self._mark_stale, asset_ids)

    def shutdown(self, wait: bool = True) -> Any:
        """Stop every worker: drain gracefully for ``shutdown_timeout``, then SIGTERM, then SIGKILL.

        Idempotent; returns once every worker has been reaped. With ``wait=False`` (``with`` form only)
        the stop is requested and this returns at once.
        """
        if self._portal is not None or self._portal_lock.locked():
            if not wait:
                threading.Thread(target=self._stop_thread, name="pool-shutdown", daemon=True).start()
                return None
            if _in_event_loop():
                return anyio.to_thread.run_sync(self._stop_thread)
            self._stop_thread()
            return None
        if self._exit_stack is not None or _in_event_loop():
            return self._shutdown()
        if self._state is PoolState.CREATED:
            self._state = PoolState.STOPPED
        return None

    def get_status(self) -> PoolStatus:
        """The pool at a glance, from state the parent already holds: never waits on a worker."""
        now = time.monotonic()
        samples = self._memory_watch.samples if self._memory_watch is not None else {}
        workers = {h.worker_id: _worker_status(h, now, samples.get(h.worker_id)) for h in self._handles}
        applied = sum(handle.applied for handle in self._handles)
        state = self._state
        if state is PoolState.RUNNING and any(handle.state is not WorkerState.RUNNING for handle in self._handles):
            state = PoolState.DEGRADED
        return PoolStatus(
            pool_status=state,
            uptime_seconds=now - self._started_at if self._started_at is not None else 0.0,
            worker_count=self.config.worker_count,
            alive_workers=self.get_alive_count(),
            workers=workers,
            memory=self._memory_watch.memory if self._memory_watch is not None else self._initial_memory,
            messages_published=self._published,
            messages_applied=applied,
            messages_per_second=self._rate(),
            frames_rejected=self._rejected + sum(s.errors for s in workers.values()),
            frames_unroutable=self._unroutable,
            total_books=sum(s.books for s in workers.values()),
            restarts=sum(s.restarts for s in workers.values()),
            feeds={name: read() for name, read in self._feeds.items()},
        )

    def get_stats(self) -> dict[int, WorkerStats]:
        """The last `WorkerStats` each worker reported (with its last acknowledgement or heartbeat)."""
        return {handle.worker_id: handle.stats for handle in self._handles if handle.stats is not None}

    def is_healthy(self) -> bool:
        """True when the pool is running and every worker is running."""
        return self._state is PoolState.RUNNING and all(h.state is WorkerState.RUNNING for h in self._handles)

    def get_alive_count(self) -> int:
        """How many worker processes are alive."""
        return sum(1 for h in self._handles if h.state in (WorkerState.RUNNING, WorkerState.STOPPING))

    def attach_feed(self, name: str, read: Callable[[], FeedStatus]) -> Callable[[], None]:
        """Show a market-data feed in `get_status` (``feeds[name]``, from ``read()`` at each call).

        Feeds attach themselves (`feeds.PolymarketFeed` does while it runs); returns a function that
        detaches it. Raises ``ValueError`` if a feed of that name is attached already.
        """
        if name in self._feeds:
            raise ValueError(f"a feed named {name!r} is attached already; give the second one another name")
        self._feeds[name] = read

        def detach() -> None:
            self._feeds.pop(name, None)

        return detach

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every lifecycle `PoolEvent`; returns a function that removes it.

        Listeners run in the pool's event loop (the background thread under ``with``): a sync one inline,
        so keep it short; an async one as a task. One that raises is logged and counted, never fatal.
        """
        return self._events.add_listener(listener)

    def restart_worker(self, worker_id: int) -> Any:
        """Replace worker ``worker_id`` now; its books are rebuilt exactly as after a crash.

        Returns once the old process has exited (the replacement then starts at once). An operator
        restart does not spend the restart budget.

        Raises:
            ValueError: no such worker.
            BrokenWorkerError: the worker has failed.
            PoolClosedError: the pool is not running.
        """
        return self._call(self._restart_worker, worker_id)

    @property
    def state(self) -> PoolState:
        """The pool's lifecycle state."""
        return self._state

    def __repr__(self) -> str:
        return f"<PersistentWorkerPool {self._state.value} workers={self.config.worker_count}>"

    # ------------------------------------------------------------------------- sync/async dispatch

    def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> Any:
        """Run ``function`` in the pool's loop: a coroutine under ``async with``, blocking under ``with``."""
        if self._exit_stack is not None:
            return function(*args)
        if self._portal is None:
            if self._state is not PoolState.CREATED:
                raise PoolClosedError(f"the pool is {self._state.value}; create a new PersistentWorkerPool")
            return self._lazy_start_then(function, *args)
        portal = self._portal
        if _in_event_loop():
            return anyio.to_thread.run_sync(lambda: portal.call(function, *args))
        return portal.call(function, *args)

    def _lazy_start_then(self, function: Callable[..., Awaitable[T]], *args: Any) -> Any:
        if function != self._start_noop:  # an explicit start() is a choice, not an accident
            self._log.warning(
                "pool_lazy_start",
                hint="use `with PersistentWorkerPool(config) as pool:` (or `async with`) so shutdown is guaranteed",
            )
        if _in_event_loop():

            async def start_then_call() -> T:
                await anyio.to_thread.run_sync(self._start_in_thread)
                portal = self._portal
                assert portal is not None
                return await anyio.to_thread.run_sync(lambda: portal.call(function, *args))

            return start_then_call()
        self._start_in_thread()
        assert self._portal is not None
        return self._portal.call(function, *args)

    def _start_in_thread(self) -> None:
        portal_cm = start_blocking_portal(name="persistent-worker-pool")
        portal = portal_cm.__enter__()
        try:
            portal.start_task(self._serve, name="pool-serve")
        except BaseException as exc:
            portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._portal, self._portal_cm = portal, portal_cm

    def _stop_thread(self) -> None:
        # The lock makes concurrent shutdowns (say, wait=False then wait=True) stop the portal once; the
        # later caller waits here until the first has finished.
        with self._portal_lock:
            portal, portal_cm = self._portal, self._portal_cm
            if portal is None:
                return
            try:
                portal.call(self._shutdown)
            finally:
                self._portal = self._portal_cm = None
                portal_cm.__exit__(None, None, None)

    async def _start_noop(self) -> None:
        self._check_running()  # by now started by the lazy path, or started before

    def _require_state(self, expected: PoolState, action: str) -> None:
        if self._state is not expected:
            raise PoolClosedError(
                f"cannot {action}: the pool is {self._state.value}; a pool runs once, create a new one"
            )

    # ---------------------------------------------------------------------------------- lifecycle

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, serve them until shutdown is requested, then stop them. Never leaks one."""
        self._stop_requested, self._stopped = anyio.Event(), anyio.Event()
        self._state = PoolState.STARTING
        begun = time.monotonic()
        try:
            context = await self._start_workers()
            async with anyio.create_task_group() as task_group:
                self._events.attach(task_group)
                self._supervisor = Supervisor(
                    self.config,
                    self._handles,
                    context,
                    self._handler_factory,
                    self._snapshot_source,
                    self._on_resync,
                    self._events,
                    self._log,
                )
                self._supervisor.start(task_group)
                self._memory_watch = MemoryWatch(
                    self.config,
                    self.memory_monitor,
                    self._handles,
                    self._supervisor,
                    self._record_rate,
                    self._events,
                    self._log,
                )
                task_group.start_soon(self._memory_watch.run, task_group, name="pool-memory")
                self._state = PoolState.RUNNING
                self._started_at = time.monotonic()
                self._log.info(
                    "pool_started",
                    workers=len(self._handles),
                    pids=[h.pid for h in self._handles],
                    seconds=round(self._started_at - begun, 3),
                )
                task_status.started()
                await self._stop_requested.wait()
                await self._stop_workers()
                task_group.cancel_scope.cancel()
        except Exception:
            # A bug in the pool's own tasks: say so loudly; every worker is still reaped below.
            self._log.exception("pool_internal_error")
            raise
        finally:
            self._events.attach(None)
            with anyio.CancelScope(shield=True):
                await self._reap_all()
            self._state = PoolState.STOPPED
            self._stopped.set()

    async def _start_workers(self) -> BaseContext:
        context = multiprocessing.get_context(self.config.start_method)
        self._handles = [
            WorkerHandle(i, self.config, self._log, self._events.emit) for i in range(self.config.worker_count)
        ]
        for handle in self._handles:
            await handle.spawn(context, self.config.worker_count, self._handler_factory)
        try:
            for handle in self._handles:
                await handle.handshake()
        except WorkerStartupError as exc:
            self._log.error("pool_start_failed", worker_id=exc.worker_id, error=str(exc))
            raise
        return context

    async def _stop_workers(self) -> None:
        self._state = PoolState.STOPPING
        begun = time.monotonic()
        assert self._supervisor is not None
        self._supervisor.stop()
        for handle in self._handles:
            if handle.state is WorkerState.RECOVERING:
                await handle.abandon()  # nothing to drain: its replacement never took over
            else:
                handle.request_stop()
        with anyio.move_on_after(self.config.shutdown_timeout):
            for handle in self._handles:
                await handle.exited.wait()
        stubborn = [h for h in self._handles if not h.exited.is_set()]
        for handle in stubborn:
            handle.terminate()
        if stubborn:
            with anyio.move_on_after(WorkerHandle.TERMINATE_GRACE):
                for handle in stubborn:
                    await handle.exited.wait()
        self._log.info(
            "pool_stopped", seconds=round(time.monotonic() - begun, 3), forced=[h.worker_id for h in stubborn]
        )

    async def _reap_all(self) -> None:
        for handle in self._handles:
            for process in (handle, handle.standby):  # a recycle's replacement may not have taken over yet
                if process is not None:
                    await process.kill()
                    await process.close()

    async def _request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def _shutdown(self) -> None:
        if self._stopped is None:
            self._state = PoolState.STOPPED
            return
        await self._request_stop()
        await self._stopped.wait()

    def _record_rate(self) -> None:
        self._rate_samples.append((time.monotonic(), sum(h.applied for h in self._handles)))

    def _rate(self) -> float:
        if len(self._rate_samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate_samples[0], self._rate_samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    # ------------------------------------------------------------------------------- data path

    def _check_running(self) -> None:
        if self._state not in (PoolState.RUNNING, PoolState.DEGRADED):
            raise PoolClosedError(f"the pool is {self._state.value}; create a new PersistentWorkerPool")

    async def _publish(self, data: Publishable, timeout: float | None) -> None:
        self._check_running()
        frames: Iterable[Frame | Event] = (
            [data] if isinstance(data, (bytes, bytearray, memoryview, str, msgspec.Struct)) else data
        )
        handles, route, limit = self._handles, self._route, self.config.max_pending_messages
        decode_ids = _route_decoder.decode
        deadline = None if timeout is None else time.monotonic() + timeout
        accepted = 0
        try:
            for frame in frames:
                if type(frame) is not bytes:
                    frame = _to_frame(frame)
                try:
                    ids = decode_ids(frame)
                except msgspec.DecodeError:
                    ids = None
                if type(ids) is _RouteEvent and ids.price_changes is None and ids.asset_id is not None:
                    # The common case, one asset, kept inline: this loop bounds the whole pool's throughput.
                    handle = handles[route[ids.asset_id]]
                    if handle.published - handle.applied >= limit or handle.broken is not None:
                        await self._make_room(handle, deadline, accepted)
                    handle.frames.append(frame)
                    handle.published += 1
                    if ids.event_type != "price_change" and ids.is_book:
                        self._note_book(handle, ids.asset_id)
                else:
                    try:
                        slots = self._slots_of(frame, ids)
                    except MessageError as exc:
                        self._rejected += 1
                        self._log.warning("frame_rejected", reason=str(exc))
                        continue
                    given_up: BrokenWorkerError | None = None
                    for slot in slots:
                        handle = handles[slot]
                        if handle.published - handle.applied >= limit or handle.broken is not None:
                            try:
                                await self._make_room(handle, deadline, accepted)
                            except BrokenWorkerError as exc:  # the frame's other workers still get it
                                given_up = exc
                                continue
                        handle.frames.append(frame)
                        handle.published += 1
                    if given_up is not None:
                        raise given_up
                accepted += 1
                if not accepted % _YIELD_EVERY_FRAMES:
                    self._wake_writers()
                    await anyio.lowlevel.checkpoint()
        finally:
            self._published += accepted
            self._wake_writers()

    def _slots_of(self, frame: bytes, ids: _RouteEvent | list[_RouteEvent] | None) -> Iterable[int]:
        """The slots of a frame that is not a plain one-asset event (``ids`` is its decoded ids, if any).

        Raises:
            MessageError: the frame is malformed (``models.decode_frame`` says how).
        """
        if ids is None or (type(ids) is _RouteEvent and ids.asset_id is None and ids.price_changes is None):
            return self._slots_of_odd_frame(frame)
        slots = set()
        for event in ids if isinstance(ids, list) else [ids]:
            if event.asset_id is not None:
                slot = self._route[event.asset_id]
                slots.add(slot)
                if event.is_book:
                    self._note_book(self._handles[slot], event.asset_id)
            for entry in event.price_changes or ():
                slots.add(self._route[entry.asset_id])
        return slots

    def _note_book(self, handle: WorkerHandle, asset_id: str) -> None:
        """A `book` for ``asset_id`` is on its way to ``handle``: the slot holds it (rebuilt after a
        restart), and if it was stale it is live again once this frame is applied."""
        handle.assets.add(asset_id)
        if asset_id in handle.stale:
            handle.stale.discard(asset_id)
            handle.marked_stale.discard(asset_id)
            self._events.emit(
                PoolEvent(
                    kind=PoolEventKind.BOOK_LIVE,
                    worker_id=handle.worker_id,
                    asset_ids=[asset_id],
                    detail="a `book` arrived",
                )
            )

    def _slots_of_odd_frame(self, frame: bytes) -> Iterable[int]:
        """A frame whose ids do not parse or that names no asset: a service text frame or an event
        with no asset (no slots; counted as unroutable), or a malformed frame (raises `MessageError`)."""
        slots = set()
        for event in decode_frame(frame):
            for asset_id in _asset_ids(event):
                slot = self._route[asset_id]
                slots.add(slot)
                if isinstance(event, BookEvent):
                    self._note_book(self._handles[slot], asset_id)
        if not slots:
            self._unroutable += 1
        return slots

    def _wake_writers(self) -> None:
        for handle in self._handles:
            handle.wake()

    async def _make_room(self, handle: WorkerHandle, deadline: float | None, accepted: int) -> None:
        """Wait until ``handle`` can take one more frame (backpressure); raise if it has been given up.

        A recovering slot never blocks publish: its buffer is dropped instead and its books are fetched
        again, since a snapshot taken after the drop covers everything dropped.
        """
        handle.check_alive()
        if handle.pending < self.config.max_pending_messages:
            return
        if handle.state is WorkerState.RECOVERING:
            dropped = handle.drop_buffered()
            handle.refetch = True
            self._log.warning("recovery_buffer_overflow", worker_id=handle.worker_id, dropped=dropped)
            return
        self._wake_writers()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        with anyio.move_on_after(remaining) as scope:
            await handle.wait_applied(handle.published - self.config.max_pending_messages + 1)
        if scope.cancelled_caught:
            raise PoolTimeoutError(
                f"worker {handle.worker_id} still has {handle.pending} frames pending "
                f"(max_pending_messages={self.config.max_pending_messages}) after the publish timeout; "
                f"{accepted} frames of this call were accepted. Publish more slowly, add workers, or raise "
                "max_pending_messages"
            )
        handle.check_alive()

    async def _flush(self, timeout: float | None) -> None:
        self._check_running()
        targets = [(handle, handle.published) for handle in self._handles]
        self._wake_writers()
        with anyio.move_on_after(timeout) as scope:
            for handle, target in targets:
                await handle.wait_applied(target)
        if scope.cancelled_caught:
            behind = {h.worker_id: target - h.applied for h, target in targets if h.applied < target}
            raise PoolTimeoutError(f"flush timed out after {timeout:g} s; frames still to apply per worker: {behind}")

    async def _mark_stale(self, asset_ids: Iterable[str]) -> int:
        self._check_running()
        if isinstance(asset_ids, str):
            raise TypeError(f"mark_stale takes an iterable of asset ids, not one str: pass [{asset_ids!r}]")
        by_slot: dict[int, list[str]] = {}
        for asset_id in asset_ids:
            if not isinstance(asset_id, str):
                raise TypeError(f"asset ids must be str, got {type(asset_id).__name__}: {asset_id!r}")
            by_slot.setdefault(self._route[asset_id], []).append(asset_id)
        marked = 0
        for slot, ids in sorted(by_slot.items()):
            handle = self._handles[slot]
            held = sorted(handle.assets.intersection(ids))
            if not held or handle.broken is not None:
                continue
            newly = [asset_id for asset_id in held if asset_id not in handle.stale]
            handle.stale.update(held)
            handle.marked_stale.update(held)
            handle.enqueue_control(MarkStale(held))
            marked += len(held)
            if newly:
                self._events.emit(
                    PoolEvent(
                        kind=PoolEventKind.BOOK_STALE,
                        worker_id=handle.worker_id,
                        asset_ids=newly,
                        detail="marked stale: updates may have been missed",
                    )
                )
        return marked

    async def _restart_worker(self, worker_id: int) -> None:
        self._check_running()
        if not 0 <= worker_id < len(self._handles):
            raise ValueError(f"worker_id must be in [0, {len(self._handles) - 1}], got {worker_id}")
        handle = self._handles[worker_id]
        handle.check_alive()
        exited = handle.exited
        handle.kill_for(ExitReason.OPERATOR)
        await exited.wait()

    async def _get_book(self, asset_id: str, timeout: float | None) -> BookView:
        self._check_running()
        if not isinstance(asset_id, str):
            raise TypeError(f"asset_id must be a str, got {type(asset_id).__name__}")
        handle = self._handles[self._route[asset_id]]
        if handle.state is WorkerState.RECOVERING and not handle.recycling and asset_id in handle.assets:
            return BookView.stale_placeholder(asset_id)  # being rebuilt: say so rather than wait
        with anyio.move_on_after(timeout) as scope:
            book = await handle.get_book(asset_id)
        if scope.cancelled_caught:
            raise PoolTimeoutError(
                f"worker {handle.worker_id} did not answer get_book({asset_id!r}) within {timeout:g} s"
            )
        if book is None:
            raise UnknownAssetError(asset_id, handle.worker_id)
        return book


def _asset_ids(event: Event | UnknownEvent) -> list[str]:
    if isinstance(event, PriceChange):
        return [asset_id for asset_id, _, _, _ in event.entries()]
    if isinstance(event, UnknownEvent):
        return []
    return [event.asset_id]


def _to_frame(item: Frame | Event) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, msgspec.Struct):
        return _json_encoder.encode(item)
    raise TypeError(f"publish takes bytes, str or event Structs (or an iterable of them), got {type(item).__name__}")


def _check_handler_factory(factory: HandlerFactory | str | None) -> None:
    if factory is None:
        return
    if isinstance(factory, str):
        resolve_factory(factory)  # fail here, in the parent, rather than in every worker
        return
    if not callable(factory):
        raise TypeError(f"handler_factory must be callable or an import path string, got {type(factory).__name__}")
    try:
        pickle.dumps(factory)
    except Exception as exc:
        raise TypeError(
            f"handler_factory {factory!r} cannot be pickled ({exc}); workers are separate processes, so use a "
            "module-level function or class, a functools.partial of one, or a 'package.module:factory' string"
        ) from exc


def _worker_status(handle: WorkerHandle, now: float, memory: MemoryInfo | None) -> WorkerStatus:
    stats = handle.stats
    if memory is not None and memory.pid != handle.pid:
        memory = None  # a sample of a process that has since been replaced
    # Every book of a slot that is being rebuilt, or that was given up, is unavailable.
    unavailable = handle.state in (WorkerState.RECOVERING, WorkerState.FAILED)
    return WorkerStatus(
        worker_id=handle.worker_id,
        status=handle.state,
        pid=handle.pid,
        books=stats.orderbook_count if stats else 0,
        messages=stats.messages_processed if stats else 0,
        errors=stats.errors if stats else 0,
        pending=handle.pending,
        memory_bytes=memory.bytes_used if memory else (stats.memory_usage_bytes if stats else 0),
        memory_cap_bytes=memory.cap_bytes if memory else None,
        memory_ratio=memory.ratio if memory else None,
        last_heartbeat_age=now - handle.last_heard if handle.pid is not None else None,
        restarts=handle.restarts,
        stale_books=len(handle.assets) if unavailable else len(handle.stale) or (stats.stale_books if stats else 0),
        exit_code=handle.exit_code,
        last_exit_reason=handle.last_exit_reason,
        last_restart_at=handle.last_restart_at,
    )


def _in_event_loop() -> bool:
    """True when called from a task of a running asyncio or trio loop in this thread."""
    try:
        anyio.get_current_task()
    except RuntimeError:
        return False
    return True
