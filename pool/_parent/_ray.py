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

    def __init__(self, ray: Any, actor: Any, run: Any, pid: int, local: bool) -> None:
        self._ray = ray
        self._actor = actor
        self._run = run  # the ObjectRef of its `run` call, done when the worker ends
        self.pid = pid
        self.local = local
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
    """Starts each worker as a Ray actor with the SPREAD strategy, so the shards land on different nodes."""

    def __init__(
        self, config: PoolConfig, factory: PreparedFactory | None, log: Any, emit: Callable[[PoolEvent], None]
    ) -> None:
        super().__init__(config, factory, log, emit)
        ray = self._ray = _import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=config.ray_address, namespace=config.ray_namespace, log_to_driver=True)
        self._host = ray.util.get_node_ip_address()
        self._listener = socket.create_server((self._host, 0))
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]
        self._actor_class = ray.remote(num_cpus=config.ray_num_cpus, max_restarts=0)(WorkerActor)
        self._accepting = anyio.Lock()
        self._pool_id = secrets.token_hex(4)

    async def launch(self, worker_id: int) -> WorkerProcess:
        token = secrets.token_bytes(HELLO.size - 8)
        # Named, so an operator (or a test) can find a worker's actor: ray.get_actor(name).
        name = f"persistent-worker-pool-{self._pool_id}-worker-{worker_id}-{token[:4].hex()}"
        actor = self._actor_class.options(name=name, scheduling_strategy="SPREAD").remote()
        run = actor.run.remote(self._host, self._port, token)
        try:
            with anyio.fail_after(self._config.worker_startup_timeout):
                sock, pid = await self._accept(token)
        except TimeoutError:
            self._ray.kill(actor, no_restart=True)
            raise WorkerStartupError(
                f"worker {worker_id}'s Ray actor did not connect within {self._config.worker_startup_timeout:g} s "
                "(worker_startup_timeout): the cluster may lack a free CPU for it (ray_num_cpus each), or its "
                f"nodes cannot reach {self._host}:{self._port}",
                worker_id=worker_id,
                pid=None,
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local = sock.getpeername()[0] == self._host  # on this host: its pid is one psutil can sample here
        return self.adopt(worker_id, RayActor(self._ray, actor, run, pid, local), sock)

    async def _accept(self, token: bytes) -> tuple[socket.socket, int]:
        """The connection of the actor launched with ``token`` (one launch accepts at a time)."""
        async with self._accepting:
            while True:
                await anyio.wait_readable(self._listener)
                try:
                    sock, _ = self._listener.accept()
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
                sock.close()  # a late actor of a launch that timed out

    async def close(self) -> None:
        self._listener.close()
        if self._owns_ray:
            self._ray.shutdown()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed before its hello")
        data += chunk
    return data
