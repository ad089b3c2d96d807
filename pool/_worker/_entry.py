"""The worker process's entry point, which `pool._worker._bootstrap` calls once the worker is tied to its parent.

Starting through our own entry point, not ``multiprocessing``'s, is what lets the pool run wherever Python
runs: the worker never imports the user's ``__main__`` (so a script without a main guard is not run again,
and ``python -c``, standard input, IPython and notebooks work), and it is an ordinary, non-daemonic process
(so a handler may start processes of its own). The handler factory arrives pickled in the `Boot` message;
one defined in ``__main__`` was pickled by value, so nothing needs importing to rebuild it.

The parent owns shutdown: the worker ignores SIGINT (a Ctrl-C reaches the whole process group) and exits
on `Stop`, on the channel's EOF, or with its parent (``PR_SET_PDEATHSIG`` on Linux, set by the bootstrap).
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import socket
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from pool._wire._protocol import Boot, Fatal, Ready
from pool._wire._tally import Tally

from ._loop import WorkerLoop

__all__ = ["main", "serve"]


def main() -> None:
    """Run one worker: ``sys.argv`` is ``[SCRIPT, FD, PARENT_PID]``; FD is the channel's descriptor."""
    fd = int(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Our end of the channel must not leak into processes a handler starts: a child that held it would
    # keep the channel open after this worker died.
    os.set_inheritable(fd, False)
    serve(Connection(socket.socket(fileno=fd).detach()))


def serve(conn: Connection, *, keep_own_path: bool = False) -> None:
    """Be a worker over ``conn``: read `Boot`, build the handler, say `Ready`, and run the loop until told
    to stop or the channel ends. A Ray actor calls this too, over the connection it opened to the pool.

    The parent's ``sys.path`` goes first, so a factory pickled by reference imports as it did there. A
    child process has the parent's interpreter and takes that path as is; a Ray actor (``keep_own_path``)
    may be on another host, whose installation is behind entries that name nothing there, so it keeps
    its own entries after the parent's.
    """
    encoder = msgspec.msgpack.Encoder()
    try:
        boot = msgspec.msgpack.decode(conn.recv_bytes(), type=Boot)
    except (EOFError, OSError):
        return  # the parent gave up on us before we were told who we are
    sys.path[:] = [*boot.sys_path, *(entry for entry in sys.path if keep_own_path and entry not in boot.sys_path)]
    tally = Tally()
    stage = "limit"
    try:
        if boot.data_limit_bytes is not None:
            # The kernel refuses allocations past it, however fast the worker grows: a backstop for the
            # sampling monitor. Its hard limit too, so nothing in the worker can raise it again.
            resource.setrlimit(resource.RLIMIT_DATA, (boot.data_limit_bytes, boot.data_limit_bytes))
        stage = "load"
        factory: Any = pickle.loads(boot.factory) if boot.factory is not None else None
        stage = "build"
        handler = None if factory is None else factory(boot.worker_id) if boot.factory_takes_worker_id else factory()
        loop = WorkerLoop(boot, conn, handler, tally)
    except BaseException as exc:
        summary = traceback.format_exception_only(exc)[-1].strip()
        conn.send_bytes(encoder.encode(Fatal(stage, summary, traceback.format_exc())))
        raise SystemExit(1) from None
    conn.send_bytes(encoder.encode(Ready(os.getpid())))
    loop.run()
