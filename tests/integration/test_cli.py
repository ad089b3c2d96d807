"""The ``worker-pool`` command, run for real in a subprocess: exit codes, signals, config precedence."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pool._service._metrics import FEED_METRIC_NAMES, IDLE_TIMEOUT, METRIC_NAMES
from pool._service._synthetic import SyntheticMarket
from tests.integration.clob_server import ClobServer
from tests.integration.market_server import MarketServer
from tests.integration.sharded_market import ShardedMarketServer
from tests.support import market_resolved, wait_for

# Small and quick: the simulated market with 200 books at 5,000 updates/s.
QUICK = ["--assets", "200", "--rate", "5000", "--status-interval", "0.5", "--log-format", "json"]


class Cli:
    """``python -m pool ARGS`` in a subprocess; its stderr lines are collected as they arrive."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pool", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []  # stderr lines taken off the queue so far
        self._arriving: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._arriving.put(line)

    def wait_for_event(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first JSON log line with this ``event`` (earlier lines are kept in `lines`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._arriving.get(timeout=0.1)
            except queue.Empty:
                assert self.process.poll() is None, f"the CLI exited ({self.process.returncode}) before {event!r}"
                continue
            self.lines.append(line)
            record = json.loads(line)
            if record.get("event") == event:
                return dict(record)
        raise AssertionError(f"no {event!r} log line within {timeout} s; saw {self.events()}")

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        """Wait for the exit and the last stderr line; return (exit code, stdout)."""
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)  # stderr ends when the CLI and its workers have all exited
        while not self._arriving.empty():
            self.lines.append(self._arriving.get())
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self.close()
        return self.process.returncode, stdout

    def close(self) -> None:
        """Close our ends of its pipes, once the reader has seen the end of stderr."""
        self._reader.join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def events(self) -> list[str]:
        return [json.loads(line).get("event") for line in self.lines if line.startswith("{")]


def worker_pids(status: dict[str, Any]) -> list[int]:
    return [worker["pid"] for worker in status["workers"].values() if worker["pid"] is not None]


def assert_gone(pids: list[int]) -> None:
    def gone() -> bool:
        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)

    wait_for(gone, timeout=5, what=f"worker processes {pids} to be gone")


@pytest.fixture
def start_cli() -> Iterator[Callable[..., Cli]]:
    """Starts CLI runs; every one is killed at the test's end, whatever happened."""
    runs: list[Cli] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Cli:
        runs.append(Cli(*args, env=env))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        run.close()


@pytest.mark.timeout(60)
def test_run_for_a_duration_exits_0_with_every_worker_applying(start_cli: Callable[..., Cli]) -> None:
    run = start_cli("run", "--workers", "2", "--duration", "3", *QUICK)
    code, stdout = run.finish()
    assert code == 0
    status = json.loads(stdout)
    assert status["worker_count"] == 2
    assert all(worker["messages"] > 0 for worker in status["workers"].values())
    assert_gone(worker_pids(status))


@pytest.mark.timeout(60)
def test_sigterm_drains_and_exits_0_within_the_shutdown_timeout(start_cli: Callable[..., Cli]) -> None:
    run = start_cli("run", "--workers", "2", *QUICK, env={"WORKER_POOL_SHUTDOWN_TIMEOUT": "5"})
    run.wait_for_event("run_started")
    run.wait_for_event("pool_status")  # it is publishing
    run.process.send_signal(signal.SIGTERM)
    began = time.monotonic()
    code, stdout = run.finish(timeout=30)
    assert time.monotonic() - began < 5 + 2  # shutdown_timeout, plus the interpreter's own exit
    assert code == 0
    assert "stop_requested" in run.events()
    status = json.loads(stdout)
    assert status["messages_applied"] >= status["messages_published"] > 0  # drained: nothing left pending
    assert_gone(worker_pids(status))


@pytest.mark.timeout(60)
def test_a_second_sigint_forces_the_stop_and_exits_1(start_cli: Callable[..., Cli]) -> None:
    # A long graceful window, so that only the forced path can end the run quickly.
    run = start_cli("run", "--workers", "2", *QUICK, env={"WORKER_POOL_SHUTDOWN_TIMEOUT": "60"})
    run.wait_for_event("pool_status")
    run.process.send_signal(signal.SIGINT)
    run.wait_for_event("stop_requested")
    run.process.send_signal(signal.SIGINT)
    run.wait_for_event("stop_forced")
    code, stdout = run.finish(timeout=30)
    assert code == 1
    assert_gone(worker_pids(json.loads(stdout)))


@pytest.mark.timeout(60)
def test_a_bad_toml_value_exits_2_naming_the_key(tmp_path: Path, start_cli: Callable[..., Cli]) -> None:
    config = tmp_path / "pool.toml"
    config.write_text("worker_count = 0\n")
    run = start_cli("run", "--config", str(config), "--duration", "1", *QUICK)
    code, stdout = run.finish()
    assert code == 2 and stdout == ""
    errors = "".join(run.lines)
    assert "pool.toml: worker_count = 0:" in errors and "[1, 1024]" in errors


@pytest.mark.timeout(90)
def test_environment_beats_the_file_and_flags_beat_the_environment(
    tmp_path: Path, start_cli: Callable[..., Cli]
) -> None:
    config = tmp_path / "pool.toml"
    config.write_text("worker_count = 3\n")
    env = {"WORKER_POOL_WORKER_COUNT": "2"}
    by_env = start_cli("run", "--config", str(config), "--duration", "1", *QUICK, env=env)
    code, stdout = by_env.finish()
    assert code == 0 and json.loads(stdout)["worker_count"] == 2
    by_flag = start_cli("run", "--config", str(config), "--workers", "1", "--duration", "1", *QUICK, env=env)
    code, stdout = by_flag.finish()
    assert code == 0 and json.loads(stdout)["worker_count"] == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run", "--rate", "0"],
        ["run", "--workers", "two"],
        ["run", "--workers", "0"],
        ["run", "--metrics-port", "70000"],
        ["run", "--assets", "many"],
        ["run", "--ws-url", "ws://127.0.0.1:1"],
        ["run", "--market-events"],
        ["run", "--source", "polymarket"],
        ["run", "--source", "polymarket", "--assets", "12,abc"],
        ["nonsense"],
    ],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "pool", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "worker-pool" in done.stderr and "error" in done.stderr
    if args[1:2] == ["--workers"]:
        assert "--workers" in done.stderr and "worker_count" not in done.stderr  # named as it was typed


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "worker-pool"
    done = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--duration" in done.stdout and "WORKER_POOL_" in done.stdout


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[str, float]:
    """The samples of /metrics as {'name{labels}': value}."""
    code, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def status_command(port: int) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "worker-pool"
    return subprocess.run(
        [str(script), "status", "--url", f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
    )


@pytest.mark.timeout(90)
def test_metrics_health_and_status_through_the_cli(start_cli: Callable[..., Cli]) -> None:
    """/metrics has every documented name with values that move; /health and `status` follow the pool's
    state: 200 and exit 0 while running, 503 and exit 1 once a worker has failed for good."""
    no_restarts = {"WORKER_POOL_MAX_RESTARTS": "0", "WORKER_POOL_HEARTBEAT_INTERVAL": "0.2"}
    run = start_cli("run", "--workers", "2", "--metrics-port", "0", *QUICK, env=no_restarts)
    port = run.wait_for_event("run_started")["metrics_port"]

    def every_name_present() -> bool:  # the memory ratio appears with the monitor's first sample
        return all(any(sample.startswith(name) for sample in scrape(port)) for name in METRIC_NAMES)

    wait_for(every_name_present, timeout=20, what=f"every one of {METRIC_NAMES} on /metrics")
    first = scrape(port)
    assert first['worker_pool_state{worker_pool_state="running"}'] == 1.0
    assert first['worker_pool_worker_up{worker="0"}'] == 1.0
    assert first['worker_pool_batch_apply_seconds_bucket{le="+Inf",worker="0"}'] >= 0

    moving = ("worker_pool_messages_total", "worker_pool_updates_total", "worker_pool_batch_apply_seconds_count")

    def moved() -> bool:
        now = scrape(port)
        keys = [f'{name}{{worker="{worker}"}}' for worker in "01" for name in moving]
        return all(now[key] > first.get(key, 0) for key in keys)

    wait_for(moved, timeout=20, what="per-worker counters to move between scrapes")
    code, body = http_get(f"http://127.0.0.1:{port}/health")
    status = json.loads(body)
    assert code == 200 and status["pool_status"] == "running"
    answer = status_command(port)
    assert answer.returncode == 0 and json.loads(answer.stdout)["pool_status"] == "running"

    victim = status["workers"]["0"]["pid"]
    os.kill(victim, signal.SIGKILL)  # no restart budget: the worker fails for good
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 503, timeout=20, what="/health to say 503")
    assert json.loads(http_get(f"http://127.0.0.1:{port}/health")[1])["pool_status"] == "degraded"
    assert scrape(port)['worker_pool_worker_up{worker="0"}'] == 0.0
    answer = status_command(port)
    assert answer.returncode == 1 and json.loads(answer.stdout)["pool_status"] == "degraded"

    run.process.send_signal(signal.SIGTERM)
    code, stdout = run.finish(timeout=30)
    assert code == 1  # a worker failed
    assert_gone(worker_pids(json.loads(stdout)))


@pytest.mark.timeout(60)
def test_a_metrics_port_in_use_fails_the_run_with_a_clear_error(start_cli: Callable[..., Cli]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start_cli("run", "--metrics-port", str(port), "--duration", "5", *QUICK)
        code, stdout = run.finish()
    assert code == 2 and stdout == ""
    assert any(line.startswith(f"worker-pool: error: --metrics-port {port}: cannot listen") for line in run.lines)


def test_status_of_nothing_listening_exits_1() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        answer = status_command(probe.getsockname()[1])
    assert answer.returncode == 1 and "cannot reach" in answer.stderr


class Terminal:
    """``python -m pool ARGS`` with stdout on a pseudo-terminal, so that it draws the live view."""

    def __init__(self, *args: str) -> None:
        self._leader, follower = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pool", *args],
            stdout=follower,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "140", "TERM": "xterm"},
        )
        os.close(follower)
        self.text = ""  # everything shown so far, escape codes and carriage returns removed

    def read_until(self, done: Callable[[str], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.text):
            assert time.monotonic() < deadline, f"timed out; the screen ends with {self.text[-1500:]!r}"
            if not self._read(0.1):
                assert done(self.text), f"the terminal closed; it ends with {self.text[-1500:]!r}"

    def read_to_end(self, timeout: float = 30.0) -> None:
        """Read until the terminal closes, that is until every process holding it has exited, so that
        ``text`` holds all they wrote (a frame that merely looks complete may still be arriving)."""
        deadline = time.monotonic() + timeout
        while self._read(0.1):
            assert time.monotonic() < deadline, f"still open; the screen ends with {self.text[-1500:]!r}"

    def _read(self, wait: float) -> bool:
        """Read what arrived within ``wait``; False once the terminal has closed (the run is over)."""
        if select.select([self._leader], [], [], wait)[0]:
            try:
                chunk = os.read(self._leader, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            self.text += re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chunk.decode(errors="replace")).replace("\r", "")
        return True

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        os.close(self._leader)


@pytest.mark.timeout(60)
def test_on_a_terminal_without_rich_the_run_logs_status_lines_and_says_why() -> None:
    """rich comes with the `cli` extra: without it, a run on a terminal still works, logging status lines
    and a hint naming the extra, and exits 0."""
    leader, follower = pty.openpty()
    hide_rich = (
        "import sys; sys.modules['rich'] = None; from pool._service._cli import main; sys.exit(main(sys.argv[1:]))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", hide_rich, "run", "--duration", "2", *QUICK],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=50,
            check=False,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert "live_view_unavailable" in events and "pool_status" in events
    assert "persistent-worker-pool[cli]" in done.stderr


def last_view(text: str) -> str:
    """The last frame of the live view on the screen so far (from its table header), or ''."""
    start = text.rfind("memory / cap")
    return text[start:] if start >= 0 else ""


def worker_rows(view: str) -> dict[str, list[str]]:
    """The live view's rows by worker id: id, pid, state, books, ..., restarts."""
    rows = {}
    for line in view.splitlines():
        cells = line.split()
        if len(cells) >= 7 and cells[0].isdigit() and cells[1].isdigit():
            rows[cells[0]] = cells
    return rows


@pytest.mark.timeout(90)
def test_the_live_view_shows_every_worker_and_a_killed_one_coming_back() -> None:
    """On a terminal the run draws one row per worker; a worker SIGKILLed mid-run shows its exit and
    restart in the view, its row comes back running with one restart, and the run goes on to exit 0."""
    terminal = Terminal("run", "--workers", "3", "--assets", "300", "--rate", "5000")
    try:

        def all_running(text: str) -> bool:  # frames drawn during start-up show them "starting"
            rows = worker_rows(last_view(text))
            return len(rows) == 3 and all(row[2] == "running" for row in rows.values())

        terminal.read_until(all_running)
        rows = worker_rows(last_view(terminal.text))
        assert "worker-pool running" in terminal.text
        victim = int(rows["1"][1])
        os.kill(victim, signal.SIGKILL)

        def came_back(text: str) -> bool:
            row = worker_rows(last_view(text)).get("1")
            return (
                "worker 1 worker_restarted" in text
                and row is not None
                and row[1] != str(victim)
                and row[2] == "running"
                and row[-1] == "1"
            )

        terminal.read_until(came_back)
        assert "worker 1 worker_exited" in terminal.text
        terminal.process.send_signal(signal.SIGTERM)
        terminal.read_to_end()
        assert terminal.process.wait(timeout=30) == 0  # a worker that came back is not a failure
        final = json.loads(terminal.text[terminal.text.index('\n{\n  "pool_status"') :])
        assert final["restarts"] == 1 and all(worker["messages"] > 0 for worker in final["workers"].values())
    finally:
        terminal.close()


@pytest.mark.timeout(90)
def test_the_polymarket_source_runs_on_local_servers(tmp_path: Path, start_cli: Callable[..., Cli]) -> None:
    """`--source polymarket` against a local market channel and CLOB: the feed fills every book, its
    figures are in the status and on /metrics, and the run stops cleanly."""
    market = SyntheticMarket(40, seed=31)
    assets = tmp_path / "assets.txt"
    assets.write_text("# the tokens to follow\n" + "\n".join(market.asset_ids) + "\n")
    with MarketServer(market.snapshots(), list(market.updates(500))) as server, ClobServer(server.rest_books) as clob:
        run = start_cli(
            "run", "--source", "polymarket", "--assets-file", str(assets), "--ws-url", server.url,
            "--rest-url", clob.url, "--workers", "2", "--metrics-port", "0", "--log-format", "json",
        )  # fmt: skip
        port = run.wait_for_event("run_started")["metrics_port"]
        wait_for(server.finished.is_set, timeout=30, what="the market server to send its whole stream")

        def fed() -> bool:
            samples = scrape(port)
            return samples.get('worker_pool_feed_frames_total{feed="polymarket"}', 0) >= server.sent

        wait_for(fed, timeout=30, what="the feed to have published every frame")
        samples = scrape(port)
        for name in FEED_METRIC_NAMES:
            assert any(sample.startswith(name) for sample in samples), f"{name} missing from /metrics"
        assert samples['worker_pool_feed_connected{feed="polymarket"}'] == 1.0
        run.process.send_signal(signal.SIGTERM)
        code, stdout = run.finish(timeout=30)
    assert code == 0
    status = json.loads(stdout)
    assert status["total_books"] == len(market.asset_ids)
    assert status["feeds"] == {}  # the feed detached when the run stopped
    assert status["messages_published"] >= server.sent


@pytest.mark.timeout(90)
def test_the_polymarket_source_takes_thousands_of_assets(tmp_path: Path, start_cli: Callable[..., Cli]) -> None:
    """1,200 token ids in a file, with --market-events: the feed opens 6 connections of 200 and every book
    comes; quotes of 200 books all agree with them and one market settles (its two books closed); /metrics
    shows all of it, and the run stops cleanly with every book held."""
    market = SyntheticMarket(1_200, seed=33)
    assets = tmp_path / "assets.txt"
    assets.write_text("\n".join(market.asset_ids) + "\n")
    with ShardedMarketServer(market.snapshots()) as server:
        run = start_cli(
            "run", "--source", "polymarket", "--assets-file", str(assets), "--ws-url", server.url,
            "--rest-url", "http://127.0.0.1:1", "--workers", "2", "--metrics-port", "0", "--log-format", "json",
            "--market-events",
        )  # fmt: skip
        port = run.wait_for_event("run_started")["metrics_port"]

        def every_book() -> bool:
            samples = scrape(port)
            return (
                samples.get('worker_pool_feed_connections_open{feed="polymarket"}') == 6.0
                and samples.get('worker_pool_feed_awaiting_books{feed="polymarket"}') == 0.0
            )

        wait_for(every_book, timeout=60, what="6 connections and every book")
        server.quote(market.asset_ids[:200])
        settled = market.asset_ids[:2]  # one market's two tokens
        server.publish([market_resolved(market.market_of[settled[0]], settled, settled[0], "Yes", 1_770_000_000_000)])

        def checked() -> bool:
            samples = scrape(port)
            quotes = sum(
                samples.get(f'worker_pool_book_checks_total{{check="best_bid_ask_checked",worker="{w}"}}', 0)
                for w in "01"
            )
            return quotes == 200 and samples.get('worker_pool_feed_resolved{feed="polymarket"}') == 2.0

        wait_for(checked, timeout=30, what="200 quotes checked and a market settled, on /metrics")
        run.process.send_signal(signal.SIGTERM)
        code, stdout = run.finish(timeout=30)
    assert code == 0
    status = json.loads(stdout)
    assert status["total_books"] == 1_200 and status["resolved_books"] == 2
    assert status["checks"]["best_bid_ask_checked"] == 200 and status["checks"]["best_bid_ask_mismatches"] == 0
    assert len(server.clients) == 6 and all(client.market_events for client in server.clients)


@pytest.mark.timeout(60)
def test_a_client_stalled_halfway_through_a_request_blocks_neither_health_nor_shutdown(
    start_cli: Callable[..., Cli],
) -> None:
    """One client sends half a header and goes quiet: others are still answered, the stalled connection is
    closed after the idle timeout, and SIGTERM while another stalled client is connected still ends the run
    within its shutdown timeout."""
    run = start_cli("run", "--workers", "2", "--metrics-port", "0", *QUICK, env={"WORKER_POOL_SHUTDOWN_TIMEOUT": "5"})
    port = run.wait_for_event("run_started")["metrics_port"]
    half = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the server waits for more
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(half)
        started = time.monotonic()
        code, _ = http_get(f"http://127.0.0.1:{port}/health")
        assert code == 200 and time.monotonic() - started < 2.0
        assert scrape(port)['worker_pool_state{worker_pool_state="running"}'] == 1.0
        assert stalled.recv(1024) == b""  # closed by the server, with nothing sent back
        assert time.monotonic() - started < IDLE_TIMEOUT + 2.0

    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(half)
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, timeout=5, what="/health")
        stopping = time.monotonic()
        run.process.send_signal(signal.SIGTERM)
        code, stdout = run.finish(timeout=5 + 10)
        assert time.monotonic() - stopping < 5 + 2.0
    assert code == 0
    assert_gone(worker_pids(json.loads(stdout)))
