"""The Ray backend on a real Ray cluster simulated on this machine (a head without CPUs, two worker nodes):
exact books over a mixed stream, through an actor killed with ``ray.kill`` and a node removed, with no actor
left behind."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pool import PersistentWorkerPool, WorkerStartupError
from pool._service._synthetic import SyntheticMarket
from pool.models import ExitReason, PoolEvent, PoolEventKind
from tests.integration import handlers, task_functions
from tests.integration.supervised import assert_exact, config, publish_tracked, running
from tests.support import ReferenceBooks, ReferenceSource, as_decimals, wait_for

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# Fast failure detection for the test cluster: a removed node is declared dead within about a second.
_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": _SYSTEM_CONFIG},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(autouse=True)
def no_leaked_processes(cluster: Cluster) -> Iterator[None]:
    """Here, instead of the suite's check for child processes (Ray keeps processes of its own: the cluster's
    daemons, idle workers): no actor outlives the test's pool."""
    yield
    wait_for(lambda: not alive_actors(), timeout=30, what="no actor left")


def alive_actors() -> list[Any]:
    from ray.util.state import list_actors

    return list(list_actors(filters=[("state", "=", "ALIVE")]))


def ray_pool(source: ReferenceSource, **overrides: object) -> PersistentWorkerPool:
    return PersistentWorkerPool(config(backend="ray", **overrides), snapshot_source=source)


def test_books_are_exact_and_the_actors_are_spread_and_gone_after(cluster: Cluster) -> None:
    market = SyntheticMarket(100, seed=501)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    with ray_pool(source) as pool:
        publish_tracked(pool, source, market.snapshots() + list(market.updates(5_000)))
        pool.flush(timeout=30)
        assert_exact(pool, reference, market.asset_ids)
        actors = alive_actors()
        assert len(actors) == 2 and len({actor.node_id for actor in actors}) == 2  # one a node (SPREAD)
        assert pool.submit(market.asset_ids[0], task_functions.levels).result(timeout=10)
        assert all(worker.pid != os.getpid() for worker in pool.get_status().workers.values())


def test_an_actor_killed_mid_stream_is_replaced_and_rebuilt_exactly(cluster: Cluster) -> None:
    market = SyntheticMarket(100, seed=503)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    events: list[PoolEvent] = []
    with ray_pool(source) as pool:
        pool.add_listener(events.append)
        publish_tracked(pool, source, market.snapshots())
        updates = list(market.updates(10_000))
        publish_tracked(pool, source, updates[:5_000])
        ray.kill(ray.get_actor(actor_of(pool, 0).name), no_restart=True)
        publish_tracked(pool, source, updates[5_000:])
        wait_for(lambda: pool.get_status().workers[0].restarts == 1 and running(pool, 0), timeout=60, what="restart")
        pool.flush(timeout=30)
        assert_exact(pool, reference, market.asset_ids)
        assert pool.get_status().workers[0].last_exit_reason is ExitReason.KILLED
        kinds = [event.kind for event in events if event.worker_id == 0]
        assert PoolEventKind.WORKER_EXITED in kinds and PoolEventKind.WORKER_RECOVERED in kinds


def test_a_hung_actor_misses_heartbeats_and_is_replaced(cluster: Cluster) -> None:
    """An actor stopped with SIGSTOP is alive to Ray but silent: the pool's heartbeat check kills it with
    ``ray.kill`` and rebuilds its books on a new actor."""
    market = SyntheticMarket(60, seed=507)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    with ray_pool(source, heartbeat_interval=0.2, heartbeat_timeout=1.0) as pool:
        publish_tracked(pool, source, market.snapshots())
        pid = pool.get_status().workers[1].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        publish_tracked(pool, source, list(market.updates(3_000)))
        wait_for(lambda: pool.get_status().workers[1].restarts == 1 and running(pool, 1), timeout=60, what="restart")
        pool.flush(timeout=30)
        assert_exact(pool, reference, market.asset_ids)
        assert pool.get_status().workers[1].last_exit_reason is ExitReason.HANG


def test_a_node_removed_mid_stream_loses_no_book(cluster: Cluster) -> None:
    """Worker 0's node is removed while frames flow: the pool sees its actor die, starts a replacement on
    the node left, and rebuilds its books exactly; then the node comes back for the next tests."""
    market = SyntheticMarket(100, seed=505)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    with ray_pool(source) as pool:
        publish_tracked(pool, source, market.snapshots())
        updates = list(market.updates(10_000))
        publish_tracked(pool, source, updates[:5_000])
        doomed = actor_of(pool, 0).node_id
        node = next(n for n in cluster.list_all_nodes() if n.node_id == doomed)
        cluster.remove_node(node)
        publish_tracked(pool, source, updates[5_000:])
        wait_for(lambda: pool.get_status().workers[0].restarts == 1 and running(pool, 0), timeout=60, what="restart")
        pool.flush(timeout=30)
        assert_exact(pool, reference, market.asset_ids)
        assert actor_of(pool, 0).node_id != doomed
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()


def actor_of(pool: PersistentWorkerPool, worker_id: int) -> Any:
    """The Ray state record of the actor that runs ``worker_id`` now."""
    pid = pool.get_status().workers[worker_id].pid
    return next(actor for actor in alive_actors() if actor.pid == pid)


@pytest.mark.anyio
async def test_the_async_form_on_ray_on_asyncio_and_trio(cluster: Cluster, anyio_backend: str) -> None:
    market = SyntheticMarket(60, seed=509)
    reference = ReferenceBooks()
    async with PersistentWorkerPool(config(backend="ray")) as pool:
        frames = market.snapshots() + list(market.updates(3_000))
        reference.apply_frames(frames)
        await pool.publish(frames)
        await pool.flush(timeout=30)
        for asset_id in market.asset_ids:
            view = await pool.get_book(asset_id)
            assert (as_decimals(view.bids), as_decimals(view.asks)) == reference.levels(asset_id)
        assert await pool.submit(market.asset_ids[0], task_functions.levels).result(timeout=10)


def test_a_leaking_actor_is_held_to_its_cap_by_the_memory_it_reports(cluster: Cluster) -> None:
    """An actor's pid names nothing on another host, so a Ray worker measures its own USS and the pool
    holds that to the cap: a leak of 40 MB/s is recycled by handing the books over, again and again, and
    no book is ever stale or wrong."""
    market = SyntheticMarket(100, seed=511)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    pool = PersistentWorkerPool(
        config(backend="ray", worker_memory_cap_mb=_LEAK_CAP_MB, memory_check_interval=0.2),
        handler_factory=functools.partial(handlers.steady_leak, 40),
        snapshot_source=source,
    )
    stale_seen = []
    with pool:
        publish_tracked(pool, source, market.snapshots())
        deadline = time.monotonic() + 60
        while min(worker.recycles for worker in pool.get_status().workers.values()) < 2:
            assert time.monotonic() < deadline, "no two recycles of each worker within 60 s"
            publish_tracked(pool, source, list(market.updates(200)))
            if pool.get_book(market.asset_ids[0], timeout=30).stale:
                stale_seen.append(market.asset_ids[0])
            time.sleep(0.02)
        pool.flush(timeout=30)
        assert_exact(pool, reference, market.asset_ids)
        # The replacements are held to the cap by what they report, as their predecessors were.
        cap = _LEAK_CAP_MB * 2**20
        wait_for(
            lambda: all(w.memory_cap_bytes == cap for w in pool.get_status().workers.values()),
            timeout=10,
            what="memory",
        )
        status = pool.get_status()
    assert stale_seen == []
    assert all(worker.recycles_by_cause == {"handoff": worker.recycles} for worker in status.workers.values())
    assert all(worker.last_exit_reason is ExitReason.MEMORY for worker in status.workers.values())
    peak = max(worker.peak_memory_bytes for worker in status.workers.values())
    assert 0 < peak <= 1.1 * cap, f"{peak / 2**20:.1f} MB against a cap of {_LEAK_CAP_MB} MB"


# A Ray actor starts at about 60 MB private (Ray's own modules); the leak grows it past this in seconds.
_LEAK_CAP_MB = 150


def test_a_strict_spread_placement_group_puts_each_worker_on_its_node_and_keeps_it_there(cluster: Cluster) -> None:
    """``ray_placement_group="STRICT_SPREAD"`` reserves one bundle a worker, on distinct nodes; a killed
    actor's replacement takes the same bundle (so the same node) and its books are rebuilt exactly; the
    group is removed with the pool."""
    from ray.util import placement_group_table

    market = SyntheticMarket(60, seed=513)
    reference = ReferenceBooks()
    source = ReferenceSource(reference)
    with ray_pool(source, ray_placement_group="STRICT_SPREAD") as pool:
        publish_tracked(pool, source, market.snapshots())
        nodes = {worker_id: actor_of(pool, worker_id).node_id for worker_id in (0, 1)}
        assert nodes[0] != nodes[1]
        ray.kill(ray.get_actor(actor_of(pool, 1).name), no_restart=True)
        publish_tracked(pool, source, list(market.updates(3_000)))
        wait_for(lambda: pool.get_status().workers[1].restarts == 1 and running(pool, 1), timeout=60, what="restart")
        pool.flush(timeout=30)
        assert_exact(pool, reference, market.asset_ids)
        assert actor_of(pool, 1).node_id == nodes[1]
    assert all(group["state"] == "REMOVED" for group in placement_group_table().values())


def test_a_placement_group_the_cluster_cannot_hold_fails_the_start_clearly_and_leaves_nothing(
    cluster: Cluster,
) -> None:
    """Three workers STRICT_SPREAD over two nodes cannot be placed: the pool does not start, says why and
    what to change, and neither an actor nor a reservation is left behind."""
    from ray.util import placement_group_table

    pool = ray_pool(
        ReferenceSource(ReferenceBooks()), worker_count=3, ray_placement_group="STRICT_SPREAD", worker_startup_timeout=3
    )
    with pytest.raises(WorkerStartupError, match=r"could not be placed within 3 s.*4 CPUs on 2 live nodes with CPUs"):
        pool.start()
    assert alive_actors() == []
    assert all(group["state"] == "REMOVED" for group in placement_group_table().values())
