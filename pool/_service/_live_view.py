"""The live view `worker-pool run` shows on a terminal: the pool, its feeds, one row per worker, recent events.

Drawn with rich (refreshed about twice a second by ``rich.live.Live``). The view keeps what a single
status cannot tell: each worker's message rate (from the last two statuses) and the recent lifecycle
events (from the pool's listener).
"""

from __future__ import annotations

import time
from collections import deque

from rich import box
from rich.bar import Bar
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from pool.models import BookChecks, ExitReason, FeedStatus, PoolEvent, PoolEventKind, PoolStatus, WorkerState

__all__ = ["LiveView"]

# The events an operator wants to see go by; started/live/recovered follow from them and would crowd them.
_SHOWN = {
    PoolEventKind.WORKER_EXITED,
    PoolEventKind.WORKER_HUNG,
    PoolEventKind.WORKER_RESTARTED,
    PoolEventKind.WORKER_FAILED,
    PoolEventKind.BOOK_STALE,
    PoolEventKind.MEMORY_BREACH,
    PoolEventKind.FRAME_QUARANTINED,
}
_STATE_STYLE = {
    WorkerState.RUNNING: "green",
    WorkerState.STARTING: "yellow",
    WorkerState.RECOVERING: "yellow",
    WorkerState.STOPPING: "cyan",
    WorkerState.STOPPED: "dim",
    WorkerState.FAILED: "bold red",
}
_MB = 1024 * 1024


class LiveView:
    """Renders a `PoolStatus` as a rich renderable; `note` is the pool listener that feeds it events."""

    def __init__(self, recent: int = 6) -> None:
        self._events: deque[tuple[float, PoolEvent]] = deque(maxlen=recent)
        self._last: tuple[float, dict[int, int]] | None = None

    def note(self, event: PoolEvent) -> None:
        if event.kind in _SHOWN and event.reason is not ExitReason.SHUTDOWN:  # a stop on request is no news
            self._events.append((time.time(), event))

    def render(self, status: PoolStatus) -> RenderableType:
        rates = self._worker_rates(status)
        memory = status.memory
        header = Text.assemble(
            ("worker-pool ", "bold"),
            (status.pool_status.value, "green" if status.pool_status.value == "running" else "yellow"),
            f"  up {status.uptime_seconds:,.0f} s  {status.messages_per_second:,.0f} msg/s"
            f"  books {status.total_books:,}  restarts {status.restarts}"
            f"  tasks {status.completed_tasks:,} done, {status.failed_tasks:,} failed"
            f"  system memory {memory.usage_percent:.0f}% (pressure above {memory.threshold:.0%})",
        )
        feeds = [_feed_line(feed) for _, feed in sorted(status.feeds.items())]
        if status.checks != BookChecks() or status.resolved_books:
            feeds.append(_checks_line(status))
        table = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
        for column, justify in (
            ("worker", "right"),
            ("pid", "right"),
            ("state", "left"),
            ("books", "right"),
            ("stale", "right"),
            ("memory / cap", "left"),
            ("msg/s", "right"),
            ("tasks waiting/done", "right"),
            ("restarts", "right"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for worker_id, worker in sorted(status.workers.items()):
            table.add_row(
                str(worker_id),
                str(worker.pid or "-"),
                Text(worker.status.value, style=_STATE_STYLE.get(worker.status, "")),
                f"{worker.books:,}",
                f"{worker.stale_books:,}",
                _memory_bar(worker.memory_bytes, worker.memory_cap_bytes),
                f"{rates.get(worker_id, 0.0):,.0f}",
                f"{worker.pending_tasks + worker.running_tasks:,}/{worker.completed_tasks + worker.failed_tasks:,}",
                str(worker.restarts),
            )
        events = Text("recent events: none" if not self._events else "recent events:\n", style="dim")
        for when, event in self._events:
            detail = f" ({event.detail})" if event.detail else ""
            events.append(
                f"  {time.strftime('%H:%M:%S', time.localtime(when))} worker {event.worker_id} "
                f"{event.kind.value}{detail}\n"
            )
        return Group(header, *feeds, table, events)

    def _worker_rates(self, status: PoolStatus) -> dict[int, float]:
        now = time.monotonic()
        counts = {worker_id: worker.messages for worker_id, worker in status.workers.items()}
        rates: dict[int, float] = {}
        if self._last is not None and now > self._last[0]:
            then, before = self._last
            rates = {w: max(0, counts[w] - before.get(w, 0)) / (now - then) for w in counts}
        self._last = (now, counts)
        return rates


def _memory_bar(used: int, cap: int | None) -> RenderableType:
    if not cap:
        return Text(f"{used / _MB:,.0f} MB")
    ratio = used / cap
    style = "red" if ratio >= 0.9 else "yellow" if ratio >= 0.7 else "green"
    bar = Bar(size=cap, begin=0, end=min(used, cap), width=12, color=style)
    table = Table.grid(padding=(0, 1))
    table.add_row(bar, Text(f"{used / _MB:,.0f}/{cap / _MB:,.0f} MB"))
    return table


def _checks_line(status: PoolStatus) -> Text:
    """What the books were checked against (the service's best bid and ask quotes, the exchange's hash) and the
    settled ones."""
    checks = status.checks
    line = Text(
        f"books checked: best bid/ask {checks.best_bid_ask_checked:,} ({checks.best_bid_ask_mismatches:,} "
        f"mismatched, {checks.best_bid_ask_resyncs:,} resynced)  hash {checks.hashes_matched:,} matched, "
        f"{checks.hashes_unverifiable:,} unverifiable  closed (settled) {status.resolved_books:,}"
    )
    if checks.hash_mismatches:
        line.append(f"  {checks.hash_mismatches:,} hash mismatches", style="yellow")
    return line


def _feed_line(feed: FeedStatus) -> Text:
    """A feed: whether it is connected, and the figures that say it is healthy; its troubles, if any, on a
    second line."""
    state = ("connected", "green") if feed.connected else ("disconnected", "bold red")
    age = "no frame yet" if feed.last_frame_age is None else f"last frame {feed.last_frame_age:.1f} s ago"
    line = Text.assemble(
        f"feed {feed.name} ",
        state,
        f"  {feed.connections_open}/{feed.connections} connections  {feed.subscribed:,} assets  "
        f"{feed.frames:,} frames  {feed.reconnects} reconnects  {age}",
        f"  {feed.resolved:,} resolved" if feed.resolved else "",
    )
    for count, what in (
        (feed.awaiting_books, "awaiting a book"),
        (feed.stalls, "stalls"),
        (feed.resubscribes, "resubscribed"),
        (feed.rate_limited, "rate-limited"),
        (feed.oversized, "oversized"),
        (feed.undelivered, "undelivered"),
    ):
        if count:
            line.append("\n " if line.plain.count("\n") == 0 else "")
            line.append(f"  {count:,} {what}", style="yellow")
    return line
