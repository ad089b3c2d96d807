"""`PersistentWorkerPool`: the public face. It checks arguments and delegates to the parts behind it.

The parts (see `pool._parent._supervisor` for the data flow): `PoolCore` runs the pool's life on one
event loop; `Publisher` routes and queues frames in the caller's thread; `Slot` holds a shard's durable
state; `WorkerProcess` is one process of a slot; `Supervisor` restarts and rebuilds; `MemoryWatch` samples
and recycles; `build_status` answers `get_status`. The face adds the two ways of using them:

* ``async with`` (asyncio or trio): the core runs in the caller's task group; the waiting methods return
  coroutines, and their waits are tasks of that loop.
* ``with`` (or no context manager at all): the core runs in a background thread (`LoopThread`); the
  waiting methods block the calling thread. ``publish``, ``flush``, ``get_book`` and ``mark_stale`` do
  their work in the calling thread and wait on `Changes`, so a sync caller never pays a hop to the loop.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.lowlevel

from pool._exceptions import PoolClosedError, PoolError, PoolTimeoutError, UnknownAssetError
from pool.models import (
    BookView,
    FeedStatus,
    PoolConfig,
    PoolState,
    PoolStatus,
    TaskPriority,
    WorkerState,
    WorkerStats,
)
from pool.monitors import MemoryMonitor

from ._changes import Changes
from ._core import PoolCore
from ._events import Listener
from ._factories import HandlerFactory, pickled, prepare_factory, resolve_callable
from ._publisher import DONE, MORE, TAKEN, Publishable, PublishCall, Publisher
from ._slot import Reply, Slot
from ._snapshots import SnapshotSource, as_snapshot_source
from ._status import alive_count, build_status, is_responsive
from ._supervisor import ResyncCallback
from ._tasks import TaskHandle, TaskWaits, new_task
from ._thread import LoopThread

__all__ = ["PersistentWorkerPool"]

T = TypeVar("T")


class _Mode(enum.Enum):
    """How the pool is driven, fixed when it starts."""

    NONE = "none"  # not started
    SYNC = "sync"  # ``with``, or started on first use: the loop runs in a background thread
    ASYNC = "async"  # ``async with``: the loop is the caller's


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
    `mark_stale`, `restart_worker`, `shutdown`) return coroutines; under ``with`` they block and return the
    value. The other methods (`get_status`, `get_stats`, `is_healthy`, `get_alive_count`) are plain and
    cheap in both. Under ``with``, any thread may call any method.

    Args:
        config: the pool's settings; ``PoolConfig()`` when omitted.
        handler_factory: builds each worker's handler, in the worker: a callable taking the worker id, a
            callable taking nothing, a handler class, or an import path ``"package.module:factory"``. The
            handler's optional methods ``on_snapshot``, ``on_price_change``, ``on_trade`` and
            ``on_tick_size_change`` are called as ``method(book, event)`` after each event is applied to a
            book. It is sent to the workers pickled (with cloudpickle: by value when defined in
            ``__main__``, a notebook or ``python -c``), so it must not capture live resources.
        snapshot_source: where a replaced worker gets current books (a `SnapshotSource`, or a sync or
            async function of the asset ids).
        on_resync: called with the asset ids a replaced worker could not rebuild.

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
        factory = prepare_factory(handler_factory)
        if on_resync is not None and not callable(on_resync):
            raise TypeError(f"on_resync must be callable, got {type(on_resync).__name__}")
        self.config = config
        self.memory_monitor = MemoryMonitor.from_config(config)
        self._core = PoolCore(
            config, factory, as_snapshot_source(snapshot_source), on_resync, self.memory_monitor, id(self)
        )
        self._mode = _Mode.NONE
        self._feeds: dict[str, Callable[[], FeedStatus]] = {}
        self._thread: LoopThread | None = None  # the loop's thread, under ``with``
        # While the pool runs: the publisher, for the one-frame fast path of `publish`, and what that path
        # returns (`_DONE` under ``async with``; `_TURN` when the writers are owed a turn), so it tests
        # nothing but the frame.
        self._fast_publisher: Publisher | None = None
        self._fast_result: _Done | None = None
        self._turn_result: _Turn | None = None
        self._exit_stack: AsyncExitStack | None = None  # the caller's task group, under ``async with``
        # Serialises starting and stopping the loop's thread: concurrent shutdowns (say, wait=False then
        # wait=True) stop it once; the later caller waits until the first has finished.
        self._lifecycle_lock = threading.Lock()

    # --------------------------------------------------------------------------- context managers

    def __enter__(self) -> Self:
        self._require_created("enter `with`")
        self._refuse_in_event_loop("`with PersistentWorkerPool(...)`")
        self._start_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> Self:
        self._require_created("enter `async with`")
        self._mode = _Mode.ASYNC
        stack = AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        try:
            await task_group.start(self._core.serve)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        self._fast_publisher, self._fast_result, self._turn_result = self._core.publisher, _DONE, _TURN
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._exit_stack is not None
        self._fast_publisher = None
        # Shielded: a cancelled or failing block must still stop and reap every worker.
        with anyio.CancelScope(shield=True):
            await self._core.shutdown()
        # The serving task has finished, so the task group closes empty. The block's own exception is not
        # handed to it: it propagates from here as itself, not wrapped in an ExceptionGroup.
        await self._exit_stack.aclose()

    # ----------------------------------------------------------------------------------- public API

    def start(self) -> Any:
        """Start the workers if they are not running yet; return once every worker is ready.

        Raises:
            WorkerStartupError: a worker did not become ready; every worker started so far was stopped.
            PoolClosedError: the pool was shut down.
            PoolError: called on a new pool inside a running event loop (use ``async with``).
        """
        if self._mode is _Mode.NONE:
            self._require_created("start")
            self._refuse_in_event_loop("start()")
            self._start_sync()
            return None
        self._core.check_running()
        return _DONE if self._mode is _Mode.ASYNC else None

    def publish(self, data: Publishable, *, timeout: float | None = None) -> Any:
        """Send market data to the workers that own it, in order.

        Args:
            data: one frame (``bytes``/``str``: a JSON event or array of events, as the feed sent it), a
                decoded event Struct, or an iterable of either. Pass batches for throughput.
            timeout: the longest to wait for room when a worker has ``max_pending_messages`` frames not
                yet applied; ``None`` waits as long as it takes.

        A frame that cannot be read (not JSON or UTF-8, nested too deeply, over 1 GiB), or whose malformed
        events name no asset, is counted in ``frames_rejected`` and logged; a service text frame (``PONG``)
        or an event naming no asset is counted in ``frames_unroutable``. Neither reaches a worker or stops
        the rest of ``data``. A frame's other malformed events are counted, one by one, by the workers that
        apply the valid events beside them.

        Raises:
            TypeError: ``data`` is not a frame, an event Struct or an iterable of them.
            PoolTimeoutError: ``timeout`` passed while waiting for room; frames before the one that waited
                were accepted (the message says how many).
            BrokenWorkerError: a worker that owns frames of ``data`` has failed for good. Raised at the
                end: every frame for a running worker is accepted first (a frame that spans several workers
                is given to the others), and the error says how many were accepted and how many not.
            PoolClosedError: the pool was shut down; during a long publish, the error's ``accepted`` says
                how many of its frames were taken (each is applied before the workers stop).
        """
        fast = self._fast_publisher
        if fast is not None and type(data) is bytes and (taken := fast.push_frame(data)):
            # One frame, the common case of a feed loop: no call object, no wait.
            return self._fast_result if taken == TAKEN else self._turn_result
        publisher = self._running_publisher("publish")
        call = PublishCall(data, timeout)
        if self._mode is _Mode.ASYNC:
            return self._publish_async(publisher, call)
        wait = self._changes.wait_sync
        while (outcome := publisher.push(call)) is not DONE:
            if isinstance(outcome, Slot) and not wait(lambda: publisher.has_room(outcome), call.deadline):
                raise publisher.timeout_error(outcome, call)
        if call.given_up is not None:
            raise call.given_up_error()
        return None

    async def _publish_async(self, publisher: Publisher, call: PublishCall) -> None:
        wait = self._changes.wait_async
        while (outcome := publisher.push(call)) is not DONE:
            if outcome is MORE:
                await anyio.lowlevel.checkpoint()  # the writers start sending while the rest is routed
            elif isinstance(outcome, Slot) and not await wait(lambda: publisher.has_room(outcome), call.deadline):
                raise publisher.timeout_error(outcome, call)
        if call.given_up is not None:
            raise call.given_up_error()

    def flush(self, timeout: float | None = None) -> Any:
        """Wait until every frame published before this call has been applied by its worker.

        Raises:
            PoolTimeoutError: not done within ``timeout`` seconds.
            BrokenWorkerError: a worker with frames still to apply was given up.
            PoolClosedError: the pool was shut down.
        """
        self._running_publisher("flush")
        targets = [(slot, slot.published) for slot in self._core.slots]
        deadline = None if timeout is None else time.monotonic() + timeout

        def flushed() -> bool:
            for slot, target in targets:
                if slot.applied < target:
                    slot.check_alive()
                    return False
            return True

        def timed_out() -> PoolTimeoutError:
            behind = {slot.worker_id: target - slot.applied for slot, target in targets if slot.applied < target}
            return PoolTimeoutError(f"flush timed out after {timeout:g} s; frames still to apply per worker: {behind}")

        return self._wait(flushed, deadline, timed_out, lambda: None)

    def wait_for_completion(self, timeout: float | None = None) -> Any:
        """Wait until every frame published before this call has been applied and every task submitted
        before it has finished; True once they have, False if ``timeout`` passed first.

        Raises:
            BrokenWorkerError: a worker with frames still to apply was given up.
            PoolClosedError: the pool was shut down.
        """
        self._running_publisher("wait_for_completion")
        slots = self._core.slots
        frames = [(slot, slot.published) for slot in slots]
        tasks = [task for slot in slots for task in slot.tasks.unfinished_tasks()]
        deadline = None if timeout is None else time.monotonic() + timeout

        def complete() -> bool:
            for slot, target in frames:
                if slot.applied < target:
                    slot.check_alive()
                    return False
            return all(task.done for task in tasks)

        if self._mode is _Mode.ASYNC:
            return self._changes.wait_async(complete, deadline)
        return self._changes.wait_sync(complete, deadline)

    def submit(
        self,
        asset_id: str,
        fn: Callable[..., Any] | str,
        /,
        *args: Any,
        priority: TaskPriority = TaskPriority.NORMAL,
        metadata: Any = None,
        **kwargs: Any,
    ) -> TaskHandle:
        """Run ``fn(book, *args, **kwargs)`` in the worker that holds ``asset_id``'s book; return its handle.

        It runs after every frame published before this call has been applied to the book (read your
        writes), between two batches, and never holds back frames published before it. ``book`` is the
        worker's live `OrderBook`: read it, never change it. ``fn`` is a callable (a module-level function,
        or one defined in ``__main__`` or a notebook, sent by value) or an import path
        ``"package.module:function"``. ``priority`` orders it among the tasks waiting for the same worker;
        ``metadata`` stays in the parent, on the handle. ``priority`` and ``metadata`` are this method's
        own: pass arguments of those names to ``fn`` positionally.

        Raises:
            UnknownAssetError: no `book` snapshot was ever published for ``asset_id``.
            TypeError: ``fn`` (or an argument) cannot be pickled, or ``fn`` is not callable.
            TaskQueueFullError: the worker has ``max_pending_tasks`` tasks not finished.
            BrokenWorkerError: the worker has failed.
            PoolClosedError: the pool was shut down.
        """
        publisher = self._running_publisher("submit")
        if not isinstance(asset_id, str):
            raise TypeError(f"asset_id must be a str, got {type(asset_id).__name__}")
        slot = self._core.slots[self._core.router[asset_id]]
        if not slot.holds(asset_id):
            raise UnknownAssetError(asset_id, slot.worker_id)
        task = new_task(slot.worker_id, asset_id, TaskPriority(priority), self._task_payload(fn, args, kwargs))
        publisher.submit_task(slot, task, self.config.max_pending_tasks)
        return TaskHandle([(task, slot.tasks)], self._task_waits(publisher), metadata)

    def submit_all(
        self,
        fn: Callable[..., Any] | str,
        /,
        *args: Any,
        priority: TaskPriority = TaskPriority.NORMAL,
        metadata: Any = None,
        **kwargs: Any,
    ) -> TaskHandle:
        """Run ``fn(books, *args, **kwargs)`` once in every worker, ``books`` being a read-only mapping of its
        books (asset id -> `OrderBook`); the handle's result is the merge of the mappings they return.

        As `submit` otherwise (read your writes, priority, metadata); its status is the parts' together.

        Raises:
            BrokenWorkerError: a worker has failed (nothing was submitted).
            TypeError, TaskQueueFullError, PoolClosedError: as `submit`.
        """
        publisher = self._running_publisher("submit_all")
        slots = self._core.slots
        for slot in slots:
            slot.check_alive()
        payload = self._task_payload(fn, args, kwargs)
        parts = []
        for slot in slots:
            task = new_task(slot.worker_id, None, TaskPriority(priority), payload)
            publisher.submit_task(slot, task, self.config.max_pending_tasks)
            parts.append((task, slot.tasks))
        return TaskHandle(parts, self._task_waits(publisher), metadata, merged=True)

    def submit_tasks(
        self,
        tasks: Iterable[tuple[str, Callable[..., Any] | str, Sequence[Any]]],
        *,
        priority: TaskPriority = TaskPriority.NORMAL,
    ) -> list[TaskHandle]:
        """`submit` for each ``(asset_id, fn, args)``, in order; return their handles.

        Raises what `submit` raises, at the first task that cannot be submitted (those before it were).
        """
        return [self.submit(asset_id, fn, *args, priority=priority) for asset_id, fn, args in tasks]

    @staticmethod
    def _task_payload(fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        function = resolve_callable(fn, "a task's fn", "function")
        name = getattr(function, "__qualname__", None) or repr(function)
        return pickled((function, args, kwargs), f"task {name} with its arguments")

    def _task_waits(self, publisher: Publisher) -> TaskWaits:
        return TaskWaits(self._changes, self._mode is _Mode.ASYNC, publisher.notify_soon)

    def get_book(self, asset_id: str, *, timeout: float | None = None) -> Any:
        """Return a `BookView` of ``asset_id`` that reflects every frame published before this call.

        A book whose worker is being replaced is returned as a ``stale`` placeholder (no levels) at once.

        Raises:
            UnknownAssetError: no `book` snapshot was ever published for ``asset_id``.
            PoolTimeoutError: no answer within ``timeout`` seconds.
            BrokenWorkerError: the owning worker was given up.
            PoolClosedError: the pool was shut down.
        """
        publisher = self._running_publisher("get_book")
        if not isinstance(asset_id, str):
            raise TypeError(f"asset_id must be a str, got {type(asset_id).__name__}")
        slot = self._core.slots[self._core.router[asset_id]]
        if slot.state is WorkerState.RECOVERING and not slot.recycling and slot.holds(asset_id):
            placeholder = BookView.stale_placeholder(asset_id)  # being rebuilt: say so rather than wait
            return _ready(placeholder) if self._mode is _Mode.ASYNC else placeholder
        reply = publisher.request_book(slot, asset_id)
        deadline = None if timeout is None else time.monotonic() + timeout

        def timed_out() -> PoolTimeoutError:
            return PoolTimeoutError(
                f"worker {slot.worker_id} did not answer get_book({asset_id!r}) within {timeout:g} s"
            )

        return self._wait(lambda: reply.done, deadline, timed_out, lambda: _book_of(reply, slot, asset_id))

    def mark_stale(self, asset_ids: Iterable[str]) -> Any:
        """Flag the books of ``asset_ids`` stale until a `book` for each is published; return how many.

        For feeds: call it when the connection that carried these assets drops, since updates may be lost
        until the service sends each book again. A marked book keeps its levels and still takes updates;
        `get_book` shows it ``stale`` and `get_status` counts it. Assets with no book are passed over.
        The mark travels behind every frame published before the call.

        Raises:
            TypeError: ``asset_ids`` is a single ``str``, or holds something that is not one.
            PoolClosedError: the pool was shut down.
        """
        marked = self._running_publisher("mark_stale").mark_stale(asset_ids)
        return _ready(marked) if self._mode is _Mode.ASYNC else marked

    def drop_books(self, asset_ids: Iterable[str]) -> Any:
        """Remove the books of ``asset_ids`` from their workers, giving their memory back; return how many
        were held.

        For assets no longer followed (`feeds.PolymarketFeed.unsubscribe` calls it): a book kept after
        its feed stopped would only grow stale, and a pool following a changing set of markets would grow
        without end. The removal travels behind every frame published before the call; afterwards
        `get_book` raises `UnknownAssetError`, the book leaves `total_books`, and a replaced worker does not
        rebuild it. A later `book` for the asset builds it anew. Assets with no book are passed over.

        Raises:
            TypeError: ``asset_ids`` is a single ``str``, or holds something that is not one.
            PoolClosedError: the pool was shut down.
        """
        dropped = self._running_publisher("drop_books").drop_books(asset_ids)
        return _ready(dropped) if self._mode is _Mode.ASYNC else dropped

    def restart_worker(self, worker_id: int) -> Any:
        """Replace worker ``worker_id`` now; its books are rebuilt exactly as after a crash.

        Returns once the old process has exited (the replacement then starts at once). An operator
        restart does not spend the restart budget.

        Raises:
            ValueError: no such worker.
            BrokenWorkerError: the worker has failed.
            PoolClosedError: the pool is not running.
        """
        self._running_publisher("restart_worker")
        if self._mode is _Mode.ASYNC:
            return self._core.restart_worker(worker_id)
        assert self._thread is not None
        self._thread.call(self._core.restart_worker, worker_id)
        return None

    def shutdown(self, wait: bool = True) -> Any:
        """Stop every worker: drain gracefully for ``shutdown_timeout``, then SIGTERM, then SIGKILL.

        Idempotent; returns once every worker has been reaped. With ``wait=False`` (``with`` form only)
        the stop is requested and this returns at once.
        """
        if self._mode is _Mode.ASYNC:
            self._fast_publisher = None
            return self._core.shutdown()
        if self._mode is _Mode.SYNC:
            if not wait:
                threading.Thread(target=self._stop_sync, name="pool-shutdown", daemon=True).start()
            else:
                self._stop_sync()
            return None
        if self._core.state is PoolState.CREATED:
            self._core.state = PoolState.STOPPED
        return _DONE if _in_event_loop() else None

    def get_status(self) -> PoolStatus:
        """The pool at a glance, from state the parent already holds: never waits on a worker."""
        core, publisher, watch = self._core, self._core.publisher, self._core.memory_watch
        return build_status(
            state=core.state,
            started_at=core.started_at,
            worker_count=self.config.worker_count,
            slots=core.slots,
            samples=watch.samples if watch is not None else {},
            memory=watch.memory if watch is not None else core.initial_memory,
            published=publisher.published if publisher else 0,
            rejected=publisher.rejected if publisher else 0,
            rejections=dict(publisher.rejections) if publisher else {},
            unroutable=publisher.unroutable if publisher else 0,
            rate=core.rate.rate(),
            feeds=self._feeds,
            unresponsive_after=self.config.unresponsive_after,
        )

    def get_stats(self) -> dict[int, WorkerStats]:
        """The last `WorkerStats` each worker reported (with its last acknowledgement or heartbeat)."""
        return {
            slot.worker_id: slot.process.stats
            for slot in self._core.slots
            if slot.process is not None and slot.process.stats is not None
        }

    def is_healthy(self) -> bool:
        """True when the pool is running and every worker is running and responsive (`WorkerStatus.responsive`)."""
        now, limit = time.monotonic(), self.config.unresponsive_after
        slots = self._core.slots
        return self._core.state is PoolState.RUNNING and all(is_responsive(slot, now, limit) for slot in slots)

    def get_alive_count(self) -> int:
        """How many worker processes are alive."""
        return alive_count(self._core.slots)

    def attach_feed(self, name: str, read: Callable[[], FeedStatus]) -> Callable[[], None]:
        """Show a market-data feed in `get_status` (``feeds[name]``, from ``read()`` at each call).

        Feeds attach themselves (`pool.feeds.PolymarketFeed` does while it runs); returns a function that
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
        return self._core.events.add_listener(listener)

    @property
    def state(self) -> PoolState:
        """The pool's lifecycle state."""
        return self._core.state

    def __repr__(self) -> str:
        return f"<PersistentWorkerPool {self._core.state.value} workers={self.config.worker_count}>"

    # ------------------------------------------------------------------------------------- internals

    @property
    def _changes(self) -> Changes:
        changes = self._core.changes
        assert changes is not None  # set before the pool runs; every caller has checked that it does
        return changes

    def _running_publisher(self, method: str) -> Publisher:
        """The publisher of a running pool, starting the pool on first use (with a warning)."""
        if self._mode is _Mode.NONE and self._core.state is PoolState.CREATED:
            self._refuse_in_event_loop(f"{method}() on a pool that was not started")
            self._core.log.warning(
                "pool_lazy_start",
                hint="use `with PersistentWorkerPool(config) as pool:` (or `async with`) so shutdown is guaranteed",
            )
            self._start_sync()
        self._core.check_running()
        assert self._core.publisher is not None
        return self._core.publisher

    def _wait(
        self,
        done: Callable[[], bool],
        deadline: float | None,
        timed_out: Callable[[], PoolError],
        result: Callable[[], T],
    ) -> T | Awaitable[T]:
        """Wait until ``done()`` in the caller's way (block, or return a coroutine), then give ``result()``."""
        if self._mode is _Mode.ASYNC:

            async def wait_async() -> T:
                if not await self._changes.wait_async(done, deadline):
                    raise timed_out()
                return result()

            return wait_async()
        if not self._changes.wait_sync(done, deadline):
            raise timed_out()
        return result()

    def _start_sync(self) -> None:
        with self._lifecycle_lock:
            self._mode = _Mode.SYNC
            thread = LoopThread()
            thread.start(self._core.serve)
            self._thread = thread
            self._fast_publisher, self._fast_result, self._turn_result = self._core.publisher, None, None

    def _stop_sync(self) -> None:
        with self._lifecycle_lock:
            thread = self._thread
            if thread is None:
                return
            self._fast_publisher = None
            try:
                thread.call(self._core.shutdown)
            finally:
                thread.stop()
                self._thread = None

    def _require_created(self, action: str) -> None:
        if self._core.state is not PoolState.CREATED or self._mode is not _Mode.NONE:
            raise PoolClosedError(
                f"cannot {action}: the pool is {self._core.state.value}; a pool runs once, create a new one"
            )

    def _refuse_in_event_loop(self, what: str) -> None:
        """The sync form's waits would block a running event loop: say what to use instead, start nothing."""
        if _in_event_loop():
            raise PoolError(
                f"{what} inside a running event loop would block that loop on every wait: use `async with "
                "PersistentWorkerPool(...) as pool:` there (the waiting methods are then coroutines), or run the "
                "sync code in a thread (anyio.to_thread.run_sync). Nothing was started"
            )


def _book_of(reply: Reply, slot: Slot, asset_id: str) -> BookView:
    if not reply.answered:
        slot.check_alive()
    if reply.book is None:
        raise UnknownAssetError(asset_id, slot.worker_id)
    return reply.book


class _Done:
    """An awaitable that is already done, of ``None``: what a method with nothing to wait for (the one-frame
    fast path of `publish`, `start` on a running pool) returns under ``async with``. One shared instance,
    since awaiting it changes nothing (it never yields to the loop)."""

    def __await__(self) -> Iterator[None]:
        return iter(())


_DONE = _Done()


class _Turn:
    """What the one-frame fast path of `publish` returns under ``async with`` when the frames it queued need
    the loop: awaiting it yields once, so the writers send them while the caller goes on publishing.

    Cancel-shielded: the frame is already accepted, and a cancellation delivered here would make a publish
    that succeeded look as if it had failed."""

    def __await__(self) -> Iterator[None]:
        return anyio.lowlevel.cancel_shielded_checkpoint().__await__()


_TURN = _Turn()


async def _ready(value: T) -> T:
    """An awaitable of ``value``: what a non-waiting method returns under ``async with``."""
    return value


def _in_event_loop() -> bool:
    """True when called from a task of a running asyncio or trio loop in this thread."""
    try:
        anyio.get_current_task()
    except RuntimeError:
        return False
    return True
