"""Helpers of the supervision and fault tests: a quick pool config, tracked publishing, slot checks."""

from __future__ import annotations

from pool import PersistentWorkerPool, PoolConfig
from pool._wire._routing import slot_for
from pool.models import WorkerState
from tests.support import ReferenceBooks, ReferenceSource, as_decimals


def config(**overrides: object) -> PoolConfig:
    settings: dict[str, object] = {
        "worker_count": 2,
        "heartbeat_interval": 0.5,
        "shutdown_timeout": 5.0,
        "worker_startup_timeout": 20.0,
        "max_restarts": 20,
    }
    return PoolConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def assert_exact(pool: PersistentWorkerPool, reference: ReferenceBooks, asset_ids: list[str]) -> None:
    for asset_id in asset_ids:
        view = pool.get_book(asset_id)
        assert not view.stale, asset_id
        bids, asks = reference.levels(asset_id)
        assert as_decimals(view.bids) == bids, asset_id
        assert as_decimals(view.asks) == asks, asset_id


def publish_tracked(pool: PersistentWorkerPool, source: ReferenceSource, frames: list[bytes]) -> None:
    """Apply to the reference first (under the source's lock), then publish: a snapshot covers all published."""
    with source.lock:
        source.reference.apply_frames(frames)
    pool.publish(frames)


def running(pool: PersistentWorkerPool, worker_id: int) -> bool:
    return pool.get_status().workers[worker_id].status is WorkerState.RUNNING


def noticed(pool: PersistentWorkerPool, worker_id: int, pid: int) -> bool:
    """True once the pool has seen process ``pid`` of ``worker_id`` exit (it is replaced or recovering)."""
    worker = pool.get_status().workers[worker_id]
    return worker.pid != pid or worker.status is not WorkerState.RUNNING


def owned_by(pool: PersistentWorkerPool, asset_ids: list[str], worker_id: int) -> list[str]:
    return [a for a in asset_ids if slot_for(a, pool.config.worker_count) == worker_id]
