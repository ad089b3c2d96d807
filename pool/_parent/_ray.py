"""The Ray backend (``PoolConfig(backend="ray")``): each slot's worker is a Ray actor, spread over the nodes.

Only the start differs from the process backend. The pool listens on this host's Ray node address; each
actor connects back with the token of its launch and runs the same worker over that TCP connection
(`pool._worker._ray_actor`). Batches, acknowledgements, heartbeats, requeue, rebuild from snapshots and
tasks are then the process backend's, unchanged: one write per batch, never a Ray call per message.

An actor that dies (``ray.kill``, its process killed, its node removed) fails its long ``run`` call; a
thread waiting on that call is how the pool sees the exit, as it sees a child's through a pidfd. A hung
actor misses heartbeats and is killed with ``ray.kill``. Every actor is created with ``max_restarts=0``:
the pool replaces a dead one itself, with its books rebuilt, which Ray's own restart (``__init__`` again,
empty) cannot do.
"""

from __future__ import annotations

import secrets
import signal
import socket
from collections.abc import Callable
from typing import Any

import anyio

from pool._exceptions import WorkerStartupError
from pool._wire._protocol import HELLO
from pool._worker import WorkerActor
from pool.models import PoolConfig, PoolEvent

from ._factories import PreparedFactory
from ._process import Launcher, WorkerProcess

__all__ = ["RayActor", "RayLauncher"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("PoolConfig(backend='ray') needs Ray: pip install 'persistent-worker-pool[ray]'") from exc
    return ray


class RayActor:
    """A worker's Ray actor, as `WorkerProcess` drives it (the `Runner` of the Ray backend)."""

    def __init__(self, ray: Any, actor: Any, run: Any, pid: int) -> None:
        self._ray = ray
        self._actor = actor
        self._run = run  # the ObjectRef of its `run` call, done when the worker ends
        self.pid = pid  # on its own node
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._code

    def kill(self) -> None:
        self._ray.kill(self._actor, no_restart=True)

    terminate = kill  # an actor has no gentler stop than the `Stop` message it was already sent

    def wait(self) -> int:
        """Block until the actor's `run` call has ended; 0 if the worker returned, -SIGKILL if the actor died."""
        if self._code is None:
            try:
                self._ray.get(self._run)
            except self._ray.exceptions.RayActorError:
                self._code = -signal.SIGKILL
            except Exception:
                self._code = 1
            else:
                self._code = 0
            # An actor outlives its call: the pool's reference to it would keep it alive, idle, until the
            # pool is collected. Its worker has ended, so it goes now.
            self._ray.kill(self._actor, no_restart=True)
        return self._code

    async def exited(self) -> None:
        await anyio.to_thread.run_sync(self.wait, abandon_on_cancel=True)


class RayLauncher(Launcher):
    """Starts each worker as a Ray actor with the SPREAD strategy, so the shards land on different nodes.

    Its workers measure their own memory: an actor may be on another host, where its pid names nothing.
    """

    workers_measure_memory = True

    def __init__(
        self, config: PoolConfig, factory: PreparedFactory | None, log: Any, emit: Callable[[PoolEvent], None]
    ) -> None:
        super().__init__(config, factory, log, emit)
        ray = self._ray = _import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=config.ray_address, namespace=config.ray_namespace, log_to_driver=True)
        self._host = ray.util.get_node_ip_address()
        self._actor_class = ray.remote(num_cpus=config.ray_num_cpus, max_restarts=0)(WorkerActor)
        self._reserving = anyio.Lock()
        self._group: Any = None  # the placement group, once reserved (ray_placement_group)
        self._pool_id = secrets.token_hex(4)

    async def _placement(self, worker_id: int) -> Any:
        """The scheduling strategy of slot ``worker_id``'s actor: SPREAD, or its bundle of the pool's
        placement group, reserved by the first launch (so a replacement takes the same bundle again).

        Raises:
            WorkerStartupError: the group could not be placed within ``worker_startup_timeout``; it has
                been removed, so nothing is left reserved.
        """
        strategy, timeout = self._config.ray_placement_group, self._config.worker_startup_timeout
        if strategy is None:
            return "SPREAD"
        async with self._reserving:
            if self._group is None:
                bundles = [{"CPU": self._config.ray_num_cpus}] * self._config.worker_count
                group = self._ray.util.placement_group(
                    bundles, strategy=strategy, name=f"persistent-worker-pool-{self._pool_id}"
                )
                ready, _ = await anyio.to_thread.run_sync(
                    lambda: self._ray.wait([group.ready()], timeout=timeout), abandon_on_cancel=True
                )
                if not ready:
                    self._ray.util.remove_placement_group(group)
                    nodes = sum(node["Alive"] and node["Resources"].get("CPU", 0) > 0 for node in self._ray.nodes())
                    cpus = self._ray.cluster_resources().get("CPU", 0)
                    raise WorkerStartupError(
                        f"the Ray placement group of {len(bundles)} bundles of {self._config.ray_num_cpus:g} CPU "
                        f"({strategy}) could not be placed within {timeout:g} s (worker_startup_timeout): the "
                        f"cluster has {cpus:g} CPUs on {nodes} live nodes with CPUs; use fewer workers, another "
                        "ray_placement_group, or none",
                        worker_id=0,
                        pid=None,
                    )
                self._group = group
        return self._ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(
            placement_group=self._group, placement_group_bundle_index=worker_id
        )

    async def launch(self, worker_id: int) -> WorkerProcess:
        token = secrets.token_bytes(HELLO.size - 8)
        # Named, so an operator (or a test) can find a worker's actor: ray.get_actor(name).
        name = f"persistent-worker-pool-{self._pool_id}-worker-{worker_id}-{token[:4].hex()}"
        placement = await self._placement(worker_id)
        # A listener of its own for each launch: launches run at once (a recycle's standby beside a
        # restart), and each actor must reach the launch that waits for it.
        listener = socket.create_server((self._host, 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        actor = self._actor_class.options(name=name, scheduling_strategy=placement).remote()
        run = actor.run.remote(self._host, port, token)
        try:
            with anyio.fail_after(self._config.worker_startup_timeout):
                sock, pid = await _accept(listener, token)
        except TimeoutError:
            self._ray.kill(actor, no_restart=True)
            raise WorkerStartupError(
                f"worker {worker_id}'s Ray actor did not connect within {self._config.worker_startup_timeout:g} s "
                "(worker_startup_timeout): the cluster may lack a free CPU for it (ray_num_cpus each), or its "
                f"nodes cannot reach {self._host}:{port}",
                worker_id=worker_id,
                pid=None,
            ) from None
        except BaseException:
            self._ray.kill(actor, no_restart=True)  # cancelled (the pool is stopping): no actor left behind
            raise
        finally:
            listener.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.adopt(worker_id, RayActor(self._ray, actor, run, pid), sock)

    async def close(self) -> None:
        if self._group is not None:
            self._ray.util.remove_placement_group(self._group)
        if self._owns_ray:
            self._ray.shutdown()


async def _accept(listener: socket.socket, token: bytes) -> tuple[socket.socket, int]:
    """The connection on ``listener`` that says hello with ``token``, and the pid it gives."""
    while True:
        await anyio.wait_readable(listener)
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            continue
        sock.settimeout(5.0)
        try:
            hello = await anyio.to_thread.run_sync(_read_exactly, sock, HELLO.size)
        except OSError:
            sock.close()
            continue
        their_token, pid = HELLO.unpack(hello)
        if their_token == token:
            sock.settimeout(None)
            return sock, pid
        sock.close()  # not our actor: a stranger on the port


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed before its hello")
        data += chunk
    return data
