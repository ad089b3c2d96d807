"""Prometheus metrics and a health endpoint for a running pool (the optional ``metrics`` extra).

Metrics are read from the pool at scrape time by a custom collector, not pushed on every message: the
parent already keeps every figure (`get_status` costs about 11 us), so a scrape costs one status read
and the hot path nothing. The HTTP server is the standard library's WSGI server (prometheus-client's
exposition) with a thread per connection, so one slow or stalled client never holds up a liveness
probe; every connection has an idle timeout (`IDLE_TIMEOUT`), and the server never waits for a handler
to stop, so a client still connected cannot hold up the pool's shutdown. It reads the pool through the
event loop that owns it, with a bound, so it never sees a half-updated status and answers 503 when the
loop cannot answer in time.

Counters come from the workers' own stats, so they restart from zero when a worker process is replaced,
as a restarted process's counters do; Prometheus's ``rate()`` and ``increase()`` handle such resets.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import msgspec
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from pool.models import (
    BATCH_SECONDS_BOUNDS,
    BookChecks,
    PoolState,
    PoolStatus,
    RecycleCause,
    Rejection,
    WorkerState,
    WorkerStats,
)

__all__ = ["FEED_METRIC_NAMES", "IDLE_TIMEOUT", "METRIC_NAMES", "MetricsServer", "PoolCollector"]

Snapshot = tuple[PoolStatus, dict[int, WorkerStats]]

# Seconds a connection may send nothing (halfway through a request or between two) before it is closed.
IDLE_TIMEOUT = 5.0

# Every metric family this module exposes (counters get ``_total`` on the wire).
METRIC_NAMES = (
    "worker_pool_messages",
    "worker_pool_updates",
    "worker_pool_errors",
    "worker_pool_handler_errors",
    "worker_pool_frames_dropped",
    "worker_pool_frames_quarantined",
    "worker_pool_rejections",
    "worker_pool_restarts",
    "worker_pool_books",
    "worker_pool_stale_books",
    "worker_pool_resolved_books",
    "worker_pool_book_checks",
    "worker_pool_memory_bytes",
    "worker_pool_memory_ratio",
    "worker_pool_memory_peak_bytes",
    "worker_pool_memory_cap_bytes",
    "worker_pool_recycles",
    "worker_pool_worker_up",
    "worker_pool_state",
    "worker_pool_batch_apply_seconds",
    "worker_pool_tasks",
    "worker_pool_tasks_finished",
)
_REASONS: tuple[str, ...] = get_args(Rejection)
_RECYCLE_CAUSES: tuple[str, ...] = get_args(RecycleCause)
_CHECKS: tuple[str, ...] = BookChecks.__struct_fields__

# The families of attached feeds (`PoolStatus.feeds`), labelled by ``feed``; absent when no feed runs.
FEED_METRIC_NAMES = (
    "worker_pool_feed_connected",
    "worker_pool_feed_reconnects",
    "worker_pool_feed_frames",
    "worker_pool_feed_bytes",
    "worker_pool_feed_last_frame_age_seconds",
    "worker_pool_feed_connections",
    "worker_pool_feed_connections_open",
    "worker_pool_feed_stalls",
    "worker_pool_feed_resubscribes",
    "worker_pool_feed_rate_limited",
    "worker_pool_feed_awaiting_books",
    "worker_pool_feed_duplicates",
    "worker_pool_feed_resolved",
)


class PoolCollector(Collector):
    """Turns one status read of the pool into Prometheus metric families, labelled by ``worker``."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        status, stats = self._read()
        labels = ["worker"]
        messages = CounterMetricFamily("worker_pool_messages", "Frames applied by the worker slot.", labels=labels)
        updates = CounterMetricFamily("worker_pool_updates", "Book updates applied (this process).", labels=labels)
        errors = CounterMetricFamily("worker_pool_errors", "Malformed frames and events skipped.", labels=labels)
        handler_errors = CounterMetricFamily(
            "worker_pool_handler_errors", "Exceptions raised by the user's handler.", labels=labels
        )
        dropped = CounterMetricFamily(
            "worker_pool_frames_dropped",
            "Frames dropped from a recovering worker's full buffer (their books were fetched again or marked stale).",
            labels=labels,
        )
        quarantined = CounterMetricFamily(
            "worker_pool_frames_quarantined",
            "Frames skipped for good because each hung two of the worker's processes in turn.",
            labels=labels,
        )
        rejections = CounterMetricFamily(
            "worker_pool_rejections",
            "Malformed frames and events skipped, by the parent or a worker, by reason.",
            labels=["reason"],
        )
        restarts = CounterMetricFamily("worker_pool_restarts", "Replacements of the slot's process.", labels=labels)
        books = GaugeMetricFamily("worker_pool_books", "Books held by the worker.", labels=labels)
        stale = GaugeMetricFamily(
            "worker_pool_stale_books", "Books waiting for a snapshot (may have missed updates).", labels=labels
        )
        resolved = GaugeMetricFamily(
            "worker_pool_resolved_books", "Books closed because their market settled.", labels=labels
        )
        checks = CounterMetricFamily(
            "worker_pool_book_checks",
            "Books checked against the service's best bid/ask quotes and the exchange's hash, by outcome "
            "(models.BookChecks).",
            labels=[*labels, "check"],
        )
        memory = GaugeMetricFamily(
            "worker_pool_memory_bytes", "Worker memory, as the monitor measures it.", labels=labels
        )
        ratio = GaugeMetricFamily("worker_pool_memory_ratio", "Worker memory over its cap.", labels=labels)
        peak = GaugeMetricFamily(
            "worker_pool_memory_peak_bytes", "Highest memory sample of any of the slot's processes.", labels=labels
        )
        cap = GaugeMetricFamily("worker_pool_memory_cap_bytes", "The worker's memory cap.", labels=labels)
        recycles = CounterMetricFamily(
            "worker_pool_recycles",
            "Replacements of the worker for memory, by cause (models.RecycleCause).",
            labels=[*labels, "cause"],
        )
        up = GaugeMetricFamily("worker_pool_worker_up", "1 while the worker is running, else 0.", labels=labels)
        apply_time = HistogramMetricFamily(
            "worker_pool_batch_apply_seconds", "Time to decode and apply one batch of frames.", labels=labels
        )
        tasks = GaugeMetricFamily(
            "worker_pool_tasks", "Tasks pending or running now, by state.", labels=[*labels, "state"]
        )
        finished = CounterMetricFamily(
            "worker_pool_tasks_finished", "Tasks finished, by state.", labels=[*labels, "state"]
        )
        for worker_id, worker in sorted(status.workers.items()):
            label = [str(worker_id)]
            messages.add_metric(label, worker.messages)
            errors.add_metric(label, worker.errors)
            handler_errors.add_metric(label, worker.handler_errors)
            dropped.add_metric(label, worker.frames_dropped)
            quarantined.add_metric(label, worker.frames_quarantined)
            tasks.add_metric([*label, "pending"], worker.pending_tasks)
            tasks.add_metric([*label, "running"], worker.running_tasks)
            finished.add_metric([*label, "completed"], worker.completed_tasks)
            finished.add_metric([*label, "failed"], worker.failed_tasks)
            finished.add_metric([*label, "cancelled"], worker.cancelled_tasks)
            restarts.add_metric(label, worker.restarts)
            books.add_metric(label, worker.books)
            stale.add_metric(label, worker.stale_books)
            resolved.add_metric(label, worker.resolved_books)
            for check in _CHECKS:
                checks.add_metric([*label, check], getattr(worker.checks, check))
            memory.add_metric(label, worker.memory_bytes)
            if worker.memory_ratio is not None:
                ratio.add_metric(label, worker.memory_ratio)
            if worker.memory_cap_bytes is not None:
                cap.add_metric(label, worker.memory_cap_bytes)
            peak.add_metric(label, worker.peak_memory_bytes)
            for cause in _RECYCLE_CAUSES:
                recycles.add_metric([*label, cause], worker.recycles_by_cause.get(cause, 0))
            up.add_metric(label, 1.0 if worker.status is WorkerState.RUNNING else 0.0)
            worker_stats = stats.get(worker_id)
            if worker_stats is not None:
                updates.add_metric(label, worker_stats.updates_applied)
                apply_time.add_metric(
                    label, _cumulative(worker_stats.batch_seconds_buckets), worker_stats.processing_time_ms / 1e3
                )
        for reason in _REASONS:  # every reason, zeros too: a rate over a series that appears late is wrong
            rejections.add_metric([reason], status.rejections.get(reason, 0))
        state = StateSetMetricFamily(
            "worker_pool_state",
            "The pool's state.",
            value={s.value: s is status.pool_status for s in PoolState},
        )
        yield from (messages, updates, errors, rejections, restarts, books, stale, resolved, checks)
        yield from (memory, ratio, peak, cap, recycles)
        yield from (up, state, apply_time, handler_errors, dropped, quarantined, tasks, finished)
        yield from _feed_metrics(status)


def _feed_metrics(status: PoolStatus) -> Iterator[Metric]:
    """One sample per attached feed (`PoolStatus.feeds`), labelled by ``feed``."""
    labels = ["feed"]
    connected = GaugeMetricFamily("worker_pool_feed_connected", "1 while the feed is connected.", labels=labels)
    reconnects = CounterMetricFamily("worker_pool_feed_reconnects", "Reconnections of the feed.", labels=labels)
    frames = CounterMetricFamily("worker_pool_feed_frames", "Frames the feed received.", labels=labels)
    received = CounterMetricFamily("worker_pool_feed_bytes", "Bytes of those frames.", labels=labels)
    age = GaugeMetricFamily(
        "worker_pool_feed_last_frame_age_seconds", "Seconds since the feed's last frame.", labels=labels
    )
    gauges: dict[str, GaugeMetricFamily] = {
        "connections": GaugeMetricFamily("worker_pool_feed_connections", "Connections the feed keeps.", labels=labels),
        "connections_open": GaugeMetricFamily(
            "worker_pool_feed_connections_open", "Of those, the ones open now.", labels=labels
        ),
        "awaiting_books": GaugeMetricFamily(
            "worker_pool_feed_awaiting_books", "Assets subscribed to whose book has not come yet.", labels=labels
        ),
        "resolved": GaugeMetricFamily(
            "worker_pool_feed_resolved",
            "Assets followed until their market settled (books kept closed).",
            labels=labels,
        ),
    }
    counters: dict[str, CounterMetricFamily] = {
        "stalls": CounterMetricFamily(
            "worker_pool_feed_stalls", "Connections replaced for sending no data while answering PING.", labels=labels
        ),
        "resubscribes": CounterMetricFamily(
            "worker_pool_feed_resubscribes", "Assets subscribed to again: their book did not come.", labels=labels
        ),
        "rate_limited": CounterMetricFamily(
            "worker_pool_feed_rate_limited", "Connection attempts answered with HTTP 429.", labels=labels
        ),
        "duplicates": CounterMetricFamily(
            "worker_pool_feed_duplicates", "Frames dropped: another connection delivers them.", labels=labels
        ),
    }
    for name, feed in sorted(status.feeds.items()):
        connected.add_metric([name], 1.0 if feed.connected else 0.0)
        reconnects.add_metric([name], feed.reconnects)
        frames.add_metric([name], feed.frames)
        received.add_metric([name], feed.bytes)
        if feed.last_frame_age is not None:
            age.add_metric([name], feed.last_frame_age)
        for field, gauge in gauges.items():
            gauge.add_metric([name], getattr(feed, field))
        for field, counter in counters.items():
            counter.add_metric([name], getattr(feed, field))
    yield from (connected, reconnects, frames, received, age, *gauges.values(), *counters.values())


def _cumulative(counts: Iterable[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets, ``+Inf`` last."""
    bounds = [f"{bound:g}" for bound in BATCH_SECONDS_BOUNDS] + ["+Inf"]
    total, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append((bound, float(total)))
    return buckets


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # `StreamRequestHandler` sets it on the socket: a stalled read raises, the thread ends

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every few seconds would drown the pool's own lines."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, none of them waited for: `shutdown` returns once the accept loop has."""

    daemon_threads = True
    block_on_close = False


class MetricsServer:
    """``GET /metrics`` (Prometheus text) and ``GET /health`` (the status JSON; 200 while the pool is
    running, 503 when it is degraded, stopping or unreachable) on ``host:port``, served from a thread.

    Args:
        read: returns the pool's status and stats; it is called on a connection's thread, so it must be
            safe there and bounded (the CLI passes one that runs ``get_status`` on the pool's event loop
            and gives up after a few seconds). ``RuntimeError`` or ``TimeoutError`` from it is answered
            with 503 ``unreachable``.
        port: 0 picks a free port; `port` then tells which.
    """

    def __init__(self, read: Callable[[], Snapshot], host: str = "127.0.0.1", port: int = 0) -> None:
        self._read = read
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PoolCollector(read))
        self._metrics_app = make_wsgi_app(registry)
        self._server: WSGIServer = make_server(
            host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="pool-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/metrics", "/health"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /health\n"]
        try:
            if path == "/metrics":
                return list(self._metrics_app(environ, start_response))
            status, _ = self._read()
        except (RuntimeError, TimeoutError) as exc:  # the pool's loop is gone (stopping) or did not answer
            body = msgspec.json.encode({"pool_status": "unreachable", "error": str(exc) or type(exc).__name__})
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [body]
        healthy = status.pool_status is PoolState.RUNNING
        start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [msgspec.json.encode(status)]
