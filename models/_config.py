"""`PoolConfig`: every setting of the pool, checked when it is built so that a bad value never starts one."""

import math
import os
from typing import Literal, get_args

import msgspec

__all__ = ["PoolConfig"]

# Workers always start as a fresh interpreter through the pool's own entry point, which never imports the
# user's __main__: multiprocessing's "fork" (unsafe beside threads) and "forkserver" (which imports
# __main__ in its server) cannot keep that promise, so they are refused with the reason.
StartMethod = Literal["spawn"]
_RETIRED_START_METHODS = {"fork", "forkserver"}
MemoryPolicy = Literal["recycle", "restart", "callback"]
Backend = Literal["process", "ray"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]

_DAY = 86_400.0

# field -> (type, minimum, maximum, inclusive minimum). Ranges are wide: they catch typos and units
# mistakes (a timeout of 0, a threshold of 75 meaning 75%), not unusual but deliberate choices.
_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "worker_count": (int, 1, 1024, True),
    "heartbeat_interval": (float, 0.0, 3600.0, False),
    "heartbeat_timeout": (float, 0.0, _DAY, False),
    "shutdown_timeout": (float, 0.0, _DAY, False),
    "worker_startup_timeout": (float, 0.0, _DAY, False),
    "snapshot_timeout": (float, 0.0, _DAY, False),
    "max_pending_messages": (int, 1, 100_000_000, True),
    "max_restarts": (int, 0, 1_000_000, True),
    "restart_window": (float, 0.0, _DAY, False),
    "memory_check_interval": (float, 0.0, 3600.0, False),
    "memory_mb_per_1000_books": (float, 0.0, 1_000_000.0, False),
    "worker_memory_cap_mb": (float, 0.0, 10_000_000.0, False),
    "worker_memory_limit_mb": (float, 0.0, 10_000_000.0, False),
    "memory_threshold": (float, 0.0, 1.0, False),
    "memory_recycle_ratio": (float, 0.0, 1.0, False),
    "task_timeout": (float, 0.0, _DAY, False),
    "task_max_retries": (int, 0, 100, True),
    "max_pending_tasks": (int, 1, 100_000_000, True),
    "task_window": (int, 1, 1_000_000, True),
    "best_bid_ask_resync_after": (int, 1, 1_000_000, True),
    "ray_num_cpus": (float, 0.0, 1024.0, True),
}


class PoolConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of a `PersistentWorkerPool`. Durations are seconds (float).

    Built from keyword arguments or decoded from TOML/JSON with msgspec; in both cases an unknown field or
    an out-of-range value raises before any process starts (``ValueError`` on construction,
    ``msgspec.ValidationError`` with the field's path on decode).

    Attributes:
        worker_count: worker processes, one shard of the books each. Default: the CPU count.
        heartbeat_interval: how often an idle worker reports its stats. Lower catches hangs sooner at the
            cost of one small message per worker per interval.
        heartbeat_timeout: silence after which a worker counts as hung; ``None`` means 3 intervals.
        shutdown_timeout: how long a graceful stop may take before workers are terminated, then killed.
        worker_startup_timeout: how long a worker may take to report ready.
        snapshot_timeout: how long one fetch from the snapshot source may take before it is abandoned
            and retried (with back-off). Raise it for a slow REST source and many assets.
        max_pending_messages: frames published to one worker and not yet applied. When reached, `publish`
            waits: this bounds the parent's memory at about this many frames per worker.
        start_method: how workers start: ``spawn``, a fresh interpreter running the pool's own entry point
            (it never re-runs your ``__main__``), the only method offered.
        max_restarts: abnormal exits of one worker tolerated within ``restart_window`` seconds.
        restart_window: the window for ``max_restarts``.
        memory_check_interval: how often the memory monitor samples every worker.
        memory_mb_per_1000_books: a worker's cap is this many MB per 1000 books it holds (at least 1000).
        worker_memory_cap_mb: an absolute per-worker cap that overrides the per-book rule.
        worker_memory_limit_mb: an OS-enforced backstop, off by default: each worker's ``RLIMIT_DATA``.
            Allocations past it fail with ``MemoryError`` inside the worker, however fast it grows; set
            it well above the cap, since it counts heap the worker has reserved, not only what it uses.
        memory_threshold: fraction of system memory in use above which the system counts as under pressure.
        memory_policy: what a breach of a worker's cap does: ``recycle``, ``restart`` or ``callback``.
        memory_recycle_ratio: under ``recycle``, the fraction of its cap at which a worker is recycled: below
            1, so that the worker stops growing before it reaches the cap (it is sent nothing more at once).
        task_timeout: the longest a task may run; past it the task fails with `TaskTimeoutError` and its
            worker is killed as hung (a worker running a task sends no heartbeat). ``None``: a task may run
            as long as ``heartbeat_timeout`` allows, after which its worker counts as hung.
        task_max_retries: how many times a task whose worker died while running it is run again, on the
            rebuilt book, before it fails with `BrokenWorkerError`.
        max_pending_tasks: tasks not yet finished that one worker may have; `submit` past it raises
            `TaskQueueFullError` (wait for some to finish, or raise the bound).
        task_window: tasks sent ahead to a worker, at most; the others wait in the parent by priority. Wider
            pipelines more small tasks (each costs a round trip); narrower lets priorities and `cancel` act
            on more of the tasks waiting (1: strictly by priority, one round trip per task).
        best_bid_ask_resync_after: quotes of a book's best bid and ask that disagree with it, in a row, after
            which the book is marked stale and handed to ``on_resync`` (a feed asks the service for a fresh
            `book`). The quotes are ``best_bid_ask`` events (sent to a feed with ``market_events``) and the
            ``best_bid``/``best_ask`` of every 2025 ``price_change`` entry (the token's best prices after it).
            One mismatch may be a ``best_bid_ask`` that overtook its `price_change`, or a glitch of the
            service; several in a row mean the book is wrong. Every mismatch is counted in
            ``get_status().checks``. ``None``: count only, never resync.
        verify_book_hash: recompute the exchange's ``hash`` of every `book` event and count whether it
            matched (``get_status().checks``). Off by default: it costs a SHA-1 of the book per `book`, the
            exchange's hash does not always reproduce (other clients report mismatches on live data), and a
            WebSocket `book` can be checked against the current hash only once the book has learnt the
            market's metadata from a REST snapshot. A mismatch is counted, never acted on.
        backend: where the workers run: ``process`` (child processes of this one) or ``ray`` (one Ray actor
            per worker, spread over the cluster's nodes; the ``ray`` extra).
        ray_address: the cluster to join under ``ray`` (``ray.init(address=...)``: ``"auto"``, or
            ``"ray://host:10001"``); ``None`` starts a local one, unless Ray is initialised already.
        ray_namespace: the Ray namespace of the pool's actors (``None``: Ray's default).
        ray_num_cpus: the CPUs each worker's actor reserves (what places one shard per CPU).
        ray_placement_group: reserve the workers' CPUs up front in a Ray placement group of one bundle per
            worker, with this strategy (``STRICT_SPREAD``: each worker on its own node); a slot's
            replacement takes its bundle. ``None`` (the default): no reservation, each actor is placed with
            the ``SPREAD`` scheduling strategy, and a replacement goes to any node with a free CPU.
    """

    worker_count: int = msgspec.field(default_factory=lambda: os.cpu_count() or 4)
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float | None = None
    shutdown_timeout: float = 10.0
    worker_startup_timeout: float = 30.0
    snapshot_timeout: float = 10.0
    max_pending_messages: int = 50_000
    start_method: StartMethod = "spawn"
    max_restarts: int = 5
    restart_window: float = 60.0
    memory_check_interval: float = 1.0
    memory_mb_per_1000_books: float = 100.0
    worker_memory_cap_mb: float | None = None
    worker_memory_limit_mb: float | None = None
    memory_threshold: float = 0.75
    memory_policy: MemoryPolicy = "recycle"
    memory_recycle_ratio: float = 0.9
    task_timeout: float | None = None
    task_max_retries: int = 1
    max_pending_tasks: int = 10_000
    task_window: int = 8
    best_bid_ask_resync_after: int | None = 3
    verify_book_hash: bool = False
    backend: Backend = "process"
    ray_address: str | None = None
    ray_namespace: str | None = None
    ray_num_cpus: float = 1.0
    ray_placement_group: PlacementStrategy | None = None

    def __post_init__(self) -> None:
        for name, (kind, low, high, low_inclusive) in _RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                raise TypeError(f"PoolConfig.{name} must be {'a number' if kind is float else 'an int'}, got {value!r}")
            too_low = value < low if low_inclusive else value <= low
            if too_low or value > high or (isinstance(value, float) and not math.isfinite(value)):
                bracket = "[" if low_inclusive else "("
                raise ValueError(f"PoolConfig.{name} must be in {bracket}{low:g}, {high:g}], got {value!r}")
        if not isinstance(self.verify_book_hash, bool):
            raise TypeError(f"PoolConfig.verify_book_hash must be a bool, got {self.verify_book_hash!r}")
        if self.start_method in _RETIRED_START_METHODS:
            raise ValueError(
                f"PoolConfig.start_method {self.start_method!r} is not offered: workers start as fresh interpreters "
                "through the pool's own entry point, so they never run your __main__ again (multiprocessing's "
                f"{self.start_method!r} cannot promise that); leave start_method unset"
            )
        for name, choices in (
            ("start_method", get_args(StartMethod)),
            ("memory_policy", get_args(MemoryPolicy)),
            ("backend", get_args(Backend)),
            ("ray_placement_group", (*get_args(PlacementStrategy), None)),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"PoolConfig.{name} must be one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}"
                )
        if self.ray_placement_group is not None and self.ray_num_cpus == 0:
            raise ValueError(
                "PoolConfig.ray_placement_group reserves ray_num_cpus CPUs a worker, so it needs ray_num_cpus > 0 "
                "(got 0); raise ray_num_cpus or leave ray_placement_group unset"
            )

    @property
    def effective_heartbeat_timeout(self) -> float:
        """``heartbeat_timeout``, or three heartbeat intervals when it is unset."""
        return self.heartbeat_timeout if self.heartbeat_timeout is not None else 3 * self.heartbeat_interval

    @property
    def unresponsive_after(self) -> float:
        """Silence after which a running worker is reported unresponsive (``WorkerStatus.responsive``): two
        heartbeat intervals, since a worker that can serve reads reports at least once an interval, or the
        heartbeat timeout if that is shorter."""
        return min(2 * self.heartbeat_interval, self.effective_heartbeat_timeout)
