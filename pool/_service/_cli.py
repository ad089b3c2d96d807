"""The ``worker-pool`` command (also ``python -m pool``): run the pool as a service.

``worker-pool run`` starts a pool on the built-in simulated market (a deterministic exchange simulator
that is also the pool's snapshot source, so a killed worker is rebuilt exactly) and publishes its stream
at ``--rate``. On a terminal it shows a live view (one row per worker); otherwise it logs a status line
every few seconds. With ``--metrics-port`` it serves Prometheus metrics on ``/metrics`` and the status on
``/health``. SIGTERM or SIGINT drains and stops it gracefully; a second SIGINT kills every worker at once.

``worker-pool status --url URL`` prints the JSON status of a pool run with ``--metrics-port``.

Exit codes: 0 a clean stop (``status``: the pool is running); 1 a runtime failure (a worker failed,
applied nothing, a frame was rejected, or the stop was forced; ``status``: the pool is degraded or cannot
be reached); 2 bad usage or configuration (the message names the key, the value and what is allowed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import logging
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec

from pool import BrokenWorkerError, PersistentWorkerPool, PoolError
from pool.models import PoolConfig, PoolStatus, WorkerState, WorkerStats
from pool.models._logging import get_logger

from ._config_sources import ENV_PREFIX, ConfigError, load_config
from ._logging import configure_logging
from ._synthetic import SyntheticMarket

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Updates are published in chunks of at most this many: big enough to amortise a publish call, small
# enough to keep the offered rate smooth.
_CHUNK = 500
_LEVELS = ("debug", "info", "warning", "error")
_READ_TIMEOUT = 2.0  # seconds /metrics and /health wait for the pool's loop before answering 503


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser().parse_args(argv)  # a usage error exits 2 here, with argparse's message
    if args.command == "status":
        return _status(args.url, args.timeout)
    terminal = sys.stdout.isatty() and not args.no_live
    live = terminal and _rich_installed()
    _configure_logging(args.log_format, args.log_level, _live_console() if live else None)
    if terminal and not live:
        get_logger("pool.cli").warning(
            "live_view_unavailable", hint="pip install 'persistent-worker-pool[cli]' for the live view; logging status"
        )
    try:
        config = load_config(
            args.config, os.environ, {"worker_count": args.workers}, flag_names={"worker_count": "--workers"}
        )
        _check_run_flags(args)
    except ConfigError as exc:
        print(f"worker-pool: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return anyio.run(_run, args, config, live)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place: nothing was running yet
        print("worker-pool: interrupted while starting", file=sys.stderr)
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-pool", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the pool on a market until --duration ends or a signal stops it",
        description=(
            "Run the pool on the simulated market, or on Polymarket's (--source polymarket --assets ID,...). "
            "Pool settings come from --config (TOML, the fields of "
            f"PoolConfig), then the environment ({ENV_PREFIX}<FIELD>, e.g. {ENV_PREFIX}WORKER_COUNT=4), "
            "then the flags; each overrides the one before."
        ),
    )
    run.add_argument("--config", type=Path, metavar="FILE", help="a TOML file of PoolConfig fields")
    run.add_argument("--workers", type=int, help="worker processes (overrides worker_count)")
    run.add_argument(
        "--source",
        choices=("simulated", "polymarket"),
        default="simulated",
        help="where the market data comes from (default: the built-in simulated market)",
    )
    run.add_argument(
        "--assets",
        help="simulated: how many books (default: 1000); polymarket: the token ids, comma-separated",
    )
    run.add_argument("--assets-file", type=Path, metavar="FILE", help="polymarket: token ids, one a line")
    run.add_argument("--ws-url", help="polymarket: the market channel (default: Polymarket's)")
    run.add_argument("--rest-url", help="polymarket: the CLOB REST root, for snapshots (default: Polymarket's)")
    run.add_argument(
        "--market-events",
        action="store_true",
        default=None,
        help="polymarket: also take best_bid_ask (checked against the books) and market_resolved (closes them)",
    )
    run.add_argument(
        "--rate", type=float, default=20_000, help="simulated: updates per second offered (default: 20000)"
    )
    run.add_argument("--duration", type=float, help="seconds to run (default: until SIGTERM or SIGINT)")
    run.add_argument("--seed", type=int, default=0, help="seed of the simulated market (default: 0)")
    run.add_argument("--status-interval", type=float, default=2.0, help="seconds between status log lines (default: 2)")
    run.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="log lines as text for a person or JSON lines (default: console on a terminal, else json)",
    )
    run.add_argument("--log-level", choices=_LEVELS, default="info", help="the least severe level logged")
    run.add_argument(
        "--metrics-port", type=int, help="serve /metrics (Prometheus) and /health on this port (0: any free one)"
    )
    run.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default: 127.0.0.1, local only)"
    )
    run.add_argument("--no-live", action="store_true", help="log status lines even when stdout is a terminal")
    status = commands.add_parser(
        "status",
        help="print the JSON status of a pool run with --metrics-port",
        description="GET URL/health and print the pool's status. Exit 0 if it is running, 1 if it is "
        "degraded or cannot be reached.",
    )
    status.add_argument("--url", required=True, help="where the pool serves, e.g. http://127.0.0.1:9464")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default: 5)")
    return parser


def _check_run_flags(args: argparse.Namespace) -> None:
    """The flags that are not `PoolConfig` fields, checked before anything starts; sets ``args.asset_ids``
    (polymarket) or ``args.asset_count`` (simulated)."""
    if args.source == "polymarket":
        args.asset_ids = _polymarket_assets(args.assets, args.assets_file)
        if importlib.util.find_spec("httpx") is None or importlib.util.find_spec("wsproto") is None:
            raise ConfigError(
                "command line: --source polymarket needs httpx and wsproto: "
                "pip install 'persistent-worker-pool[polymarket]'"
            )
    else:
        for flag, given in (
            ("--assets-file", args.assets_file),
            ("--ws-url", args.ws_url),
            ("--rest-url", args.rest_url),
            ("--market-events", args.market_events),
        ):
            if given is not None:
                raise ConfigError(f"command line: {flag} is for --source polymarket")
        try:
            args.asset_count = int(args.assets) if args.assets is not None else 1000
        except ValueError:
            raise ConfigError(f"command line: --assets {args.assets}: the simulated market takes a number") from None
    for name, value, rule in (
        ("--assets", args.assets, args.source == "polymarket" or args.asset_count >= 1),
        ("--rate", args.rate, args.rate > 0),
        ("--duration", args.duration, args.duration is None or args.duration > 0),
        ("--status-interval", args.status_interval, args.status_interval > 0),
        ("--metrics-port", args.metrics_port, args.metrics_port is None or 0 <= args.metrics_port <= 65535),
    ):
        if not rule:
            allowed = "a port number, 0 to 65535" if name == "--metrics-port" else "must be positive"
            raise ConfigError(f"command line: {name} {value}: {allowed}")
    if args.metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            "command line: --metrics-port needs prometheus-client: pip install 'persistent-worker-pool[metrics]'"
        )


def _polymarket_assets(assets: str | None, assets_file: Path | None) -> list[str]:
    """The token ids of --assets (comma-separated) and --assets-file (one a line; ``#`` comments)."""
    ids = [part.strip() for part in (assets or "").split(",") if part.strip()]
    if assets_file is not None:
        try:
            lines = assets_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"{assets_file}: cannot read the assets file ({exc.strerror or exc})") from None
        ids += [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    if not ids:
        raise ConfigError("command line: --source polymarket needs token ids: --assets ID[,ID...] or --assets-file")
    bad = [asset_id for asset_id in ids if not asset_id.isdigit()]
    if bad:
        raise ConfigError(f"command line: --assets {bad[0]!r}: a Polymarket token id is a decimal number")
    return list(dict.fromkeys(ids))


def _configure_logging(log_format: str, level: str, live_console: Any = None) -> None:
    """Log lines to stderr (stdout carries the final status): text on a terminal, else JSON lines.

    Under the live view, lines are printed through its console instead, so they scroll above the view
    rather than through it.
    """
    json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    output: TextIO | _ConsoleFile = sys.stderr if live_console is None else _ConsoleFile(live_console)
    configure_logging(json_lines=json_lines, level=getattr(logging, level.upper()), stream=output)


class _ConsoleFile:
    """A file-like object for the log handler that prints each line through a rich console."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def write(self, text: str) -> None:
        if text.strip():
            self._console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    def flush(self) -> None:
        """Nothing to flush: the console writes at once."""


def _rich_installed() -> bool:
    """The live view needs rich, from the `cli` extra; without it the run logs status lines instead."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _live_console() -> Any:
    from rich import get_console  # the console `rich.live.Live` draws on, so logs scroll above the view

    return get_console()


class _Stop:
    """What the signal watcher decided: stop gracefully (first signal), or force (a second SIGINT)."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        self.forced = False
        self.drain = anyio.CancelScope()  # the wait for published frames to be applied; a force cancels it


async def _watch_signals(stop: _Stop, pool: PersistentWorkerPool) -> None:
    log = get_logger("pool.cli")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.requested.is_set():
                log.info("stop_requested", signal=name, detail="draining; a second SIGINT forces")
                stop.requested.set()
            elif signum == signal.SIGINT and not stop.forced:
                stop.forced = True
                log.warning("stop_forced", signal=name, detail="killing every worker")
                stop.drain.cancel()
                for worker in pool.get_status().workers.values():
                    if worker.pid is not None:
                        _kill(worker.pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(pid, signal.SIGKILL)


async def _run(args: argparse.Namespace, config: PoolConfig, live: bool) -> int:
    log = get_logger("pool.cli")
    source = _PolymarketSource(args) if args.source == "polymarket" else _SimulatedSource(args)
    stop = _Stop()
    try:
        status = await _serve(args, config, source, stop, live)
    except PoolError as exc:
        log.error("run_failed", error=str(exc))
        return EXIT_FAILURE
    except ConfigError as exc:  # found only once serving began: the metrics port could not be bound
        print(f"worker-pool: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(msgspec.json.format(msgspec.json.encode(status)).decode(), flush=True)
    return _exit_code(status, stop.forced, every_worker_busy=args.source == "simulated")


class _SimulatedSource:
    """The built-in market: publishes its books, then its stream at --rate; it is its own snapshot source."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.market = SyntheticMarket(args.asset_count, seed=args.seed)
        self.snapshots: Any = self.market
        self.on_resync: Any = None  # the market answers for every book: nothing is left to resync
        self.assets = len(self.market.asset_ids)

    async def run(self, pool: PersistentWorkerPool, args: argparse.Namespace, stop: _Stop, started: Any) -> None:
        await pool.publish(self.market.snapshots())
        started()
        await _publish_until_stopped(pool, self.market, args, stop)


class _PolymarketSource:
    """Polymarket's CLOB: the WebSocket feed publishes; the REST source rebuilds replaced workers."""

    def __init__(self, args: argparse.Namespace) -> None:
        from pool.feeds import DEFAULT_REST_URL, DEFAULT_WS_URL, PolymarketRestSource  # the `polymarket` extra

        self.ids: list[str] = args.asset_ids
        self.snapshots: Any = PolymarketRestSource(args.rest_url or DEFAULT_REST_URL)
        self.url = args.ws_url or DEFAULT_WS_URL
        self.assets = len(self.ids)
        self._feed: Any = None

    async def on_resync(self, asset_ids: list[str]) -> None:
        """Books the REST source could not give back: the feed asks the service for them again."""
        if self._feed is not None:
            await self._feed.resubscribe(asset_ids)

    async def run(self, pool: PersistentWorkerPool, args: argparse.Namespace, stop: _Stop, started: Any) -> None:
        from pool.feeds import PolymarketFeed

        self._feed = PolymarketFeed(pool, self.ids, url=self.url, market_events=bool(args.market_events))
        async with self._feed:
            started()
            with anyio.move_on_after(args.duration if args.duration is not None else math.inf):
                await stop.requested.wait()


async def _serve(
    args: argparse.Namespace, config: PoolConfig, source: _SimulatedSource | _PolymarketSource, stop: _Stop, live: bool
) -> PoolStatus:
    """Run the pool until the duration ends or a signal stops it; return its last status."""
    log = get_logger("pool.cli")
    pool = PersistentWorkerPool(config, snapshot_source=source.snapshots, on_resync=source.on_resync)
    failure: PoolError | ConfigError | None = None
    # The signal watcher and the view outlive the pool's block, so a second SIGINT during its graceful
    # stop still forces it, and the view shows the stop. The metrics port is bound before any worker
    # starts, so a port in use fails the run at once.
    async with anyio.from_thread.BlockingPortal() as portal, anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, stop, pool)
        try:
            with _metrics_server(args, portal, pool) as port, _reporter(args, pool, live) as report:
                async with pool:
                    tasks.start_soon(report)

                    def started() -> None:
                        log.info(
                            "run_started",
                            source=args.source,
                            workers=config.worker_count,
                            assets=source.assets,
                            metrics_port=port,
                        )

                    await source.run(pool, args, stop, started)
                    drained = anyio.move_on_after(config.shutdown_timeout)
                    with stop.drain, drained, contextlib.suppress(BrokenWorkerError):
                        await pool.flush()
        except (PoolError, ConfigError) as exc:  # raised after the task groups, unwrapped: `_run` reports it
            failure = exc
        tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return pool.get_status()


@contextlib.contextmanager
def _metrics_server(
    args: argparse.Namespace, portal: anyio.from_thread.BlockingPortal, pool: PersistentWorkerPool
) -> Iterator[int | None]:
    """Serve /metrics and /health while the block runs, if --metrics-port asks; yield the bound port."""
    if args.metrics_port is None:
        yield None
        return
    from ._metrics import MetricsServer  # the `metrics` extra is needed only here

    async def snapshot() -> tuple[PoolStatus, dict[int, WorkerStats]]:
        return pool.get_status(), pool.get_stats()

    def read() -> tuple[PoolStatus, dict[int, WorkerStats]]:
        # On a connection's thread: the pool is read on its own event loop, never halfway through a change,
        # and never waited for without a bound (a loop busy stopping answers late or not at all: 503).
        future = portal.start_task_soon(snapshot)
        try:
            return future.result(timeout=_READ_TIMEOUT)
        except concurrent.futures.CancelledError:
            raise RuntimeError("the pool's event loop stopped before it answered") from None
        finally:
            future.cancel()

    try:
        server = MetricsServer(read, args.metrics_host, args.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {args.metrics_port}: cannot listen on {args.metrics_host}:{args.metrics_port} "
            f"({exc.strerror or exc}); choose a free port, or 0 for any free one"
        ) from None
    with server:
        yield server.port


@contextlib.contextmanager
def _reporter(args: argparse.Namespace, pool: PersistentWorkerPool, live: bool) -> Iterator[Any]:
    """Yield the task that shows the pool: a live view on a terminal, else status log lines."""
    log = get_logger("pool.cli")
    if not live:

        async def log_lines() -> None:
            while True:
                await anyio.sleep(args.status_interval)
                _log_status(log, pool.get_status())

        yield log_lines
        return
    from rich.live import Live

    from ._live_view import LiveView

    view = LiveView()
    remove_listener = pool.add_listener(view.note)
    with Live(view.render(pool.get_status()), refresh_per_second=2, transient=False) as screen:

        async def refresh() -> None:
            while True:
                await anyio.sleep(0.5)
                screen.update(view.render(pool.get_status()))

        yield refresh
        screen.update(view.render(pool.get_status()))
    remove_listener()


async def _publish_until_stopped(
    pool: PersistentWorkerPool, market: SyntheticMarket, args: argparse.Namespace, stop: _Stop
) -> None:
    """Publish at --rate until the duration ends or a stop is requested.

    If a worker fails for good, publishing stops (its frames would have nowhere to go) but the run goes
    on, degraded, until it is stopped: /health says 503 meanwhile, and the exit code will be 1.
    """
    log = get_logger("pool.cli")
    started = time.monotonic()
    sent = 0
    publishing = True
    while not stop.requested.is_set():
        now = time.monotonic()
        if args.duration is not None and now - started >= args.duration:
            return
        due = min(int((now - started) * args.rate) - sent, _CHUNK)
        if publishing and due > 0:
            try:
                await pool.publish(list(market.updates(due)))
            except BrokenWorkerError as exc:
                publishing = False
                log.error("publishing_stopped", error=str(exc), detail="a worker failed for good; stop to exit")
            sent += due
        else:
            with anyio.move_on_after(min(0.01, _CHUNK / args.rate) if publishing else 0.5):
                await stop.requested.wait()


def _log_status(log: Any, status: PoolStatus) -> None:
    log.info(
        "pool_status",
        state=status.pool_status.value,
        uptime_s=round(status.uptime_seconds, 1),
        applied=status.messages_applied,
        rate=round(status.messages_per_second),
        books=status.total_books,
        alive=f"{status.alive_workers}/{status.worker_count}",
        restarts=status.restarts,
        rejected=status.frames_rejected,
    )


def _status(url: str, timeout: float) -> int:
    """``worker-pool status``: print the /health answer of a running pool."""
    target = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as answer:
            body, code = answer.read(), answer.status
    except urllib.error.HTTPError as exc:  # 503: degraded or stopping; the body is still the status
        body, code = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"worker-pool: error: cannot reach {target}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        print(msgspec.json.format(body).decode())
    except msgspec.DecodeError:
        print(f"worker-pool: error: {target} answered {code} with something that is not JSON", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if code == 200 else EXIT_FAILURE


def _exit_code(status: PoolStatus, forced: bool, *, every_worker_busy: bool) -> int:
    """1 if the stop was forced or a worker failed; on the simulated market also if a frame was rejected or a
    worker applied nothing (a real feed may send odd frames, and a few assets may leave a worker idle)."""
    workers = status.workers.values()
    if forced or any(worker.status is WorkerState.FAILED for worker in workers):
        return EXIT_FAILURE
    if every_worker_busy and (status.frames_rejected or not all(worker.messages > 0 for worker in workers)):
        return EXIT_FAILURE
    return EXIT_OK
