"""The live view, rendered through rich's recording console over a real pool, through a SIGKILL."""

from __future__ import annotations

import io
import os
import signal

import pytest
from rich.console import Console

from pool import PersistentWorkerPool, PoolConfig
from pool._service._live_view import LiveView
from pool._service._synthetic import SyntheticMarket
from pool.models import FeedStatus
from tests.support import wait_for


def rendered(view: LiveView, pool: PersistentWorkerPool) -> str:
    console = Console(record=True, width=140, file=io.StringIO(), color_system=None)
    console.print(view.render(pool.get_status()))
    return console.export_text()


def feed_status(*, connected: bool) -> FeedStatus:
    return FeedStatus(
        name="polymarket", connected=connected, reconnects=2, frames=1_234, bytes=99_000, oversized=0,
        undelivered=7, subscribed=40, last_frame_age=0.5, connections=3, connections_open=2, stalls=1,
        awaiting_books=5,
    )  # fmt: skip


@pytest.mark.timeout(60)
def test_one_row_per_worker_and_a_restart_shows_while_the_run_goes_on() -> None:
    market = SyntheticMarket(300, seed=4)
    view = LiveView()
    config = PoolConfig(worker_count=3, heartbeat_interval=0.2)
    with PersistentWorkerPool(config, snapshot_source=market) as pool:
        pool.add_listener(view.note)
        pool.publish(market.snapshots())
        pool.publish(list(market.updates(3_000)))
        pool.flush()
        text = rendered(view, pool)
        assert "worker-pool running" in text and "recent events: none" in text
        pids = {worker_id: worker.pid for worker_id, worker in pool.get_status().workers.items()}
        for worker_id, pid in pids.items():
            assert any(line.split()[:3] == [str(worker_id), str(pid), "running"] for line in text.splitlines())

        victim = pids[1]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pool.get_status().workers[1].restarts == 1 and pool.is_healthy(), what="the restart")
        pool.publish(list(market.updates(1_000)))  # the run goes on
        pool.flush()
        text = rendered(view, pool)
        assert "worker 1 worker_exited" in text and "worker 1 worker_restarted" in text
        new_pid = pool.get_status().workers[1].pid
        row = next(line.split() for line in text.splitlines() if line.split()[:2] == ["1", str(new_pid)])
        assert row[2] == "running" and row[-1] == "1"  # the restarts column
        assert "OrderBook(" in pool.submit(market.asset_ids[0], repr).result(timeout=10)
        text = rendered(view, pool)
        assert "tasks 1 done, 0 failed" in text
        assert sorted(line.split()[-2] for line in text.splitlines() if line.split()[2:3] == ["running"]) == [
            "0/0",
            "0/0",
            "0/1",
        ]  # the tasks column: waiting or running / done, per worker
        pool.attach_feed("polymarket", lambda: feed_status(connected=False))
        text = rendered(view, pool)
        lines = text.splitlines()
        at = next(n for n, line in enumerate(lines) if line.startswith("feed polymarket"))
        line = lines[at] + lines[at + 1]  # its troubles go on the next line
        assert "disconnected" in line and "2 reconnects" in line and "7 undelivered" in line
        assert "2/3 connections" in line and "1 stalls" in line and "5 awaiting a book" in line
    # The pool's own stop is no news: the shutdown exits are not listed.
    assert "exit code 0" not in rendered(view, pool)
