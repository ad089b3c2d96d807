"""The Ray backend's worker: a Ray actor that opens a channel back to the pool, then is a worker like any other.

The actor's one call, `WorkerActor.run`, lasts as long as the worker: it returns once the pool says stop
or the channel ends, and it fails if the actor dies (killed, or its node removed). The pool watches that
call to learn of the exit, as it watches a child process's pidfd.
"""

from __future__ import annotations

import os
import socket
from multiprocessing.connection import Connection

from pool._wire._protocol import HELLO

from ._entry import serve

__all__ = ["WorkerActor"]

_CONNECT_TIMEOUT = 30.0


class WorkerActor:
    """Made a Ray actor class by the pool (`ray.remote(WorkerActor)`), with the pool's resources."""

    def run(self, host: str, port: int, token: bytes) -> None:
        sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acknowledgements are small and urgent
        sock.sendall(HELLO.pack(token, os.getpid()))
        serve(Connection(sock.detach()), keep_own_path=True)
