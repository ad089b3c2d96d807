"""The worker process's entry point: the pool starts every worker as ``python -c <our code> FD PARENT_PID``.

Starting through our own entry point, not ``multiprocessing``'s, is what lets the pool run wherever Python
runs: the worker never imports the user's ``__main__`` (so a script without a main guard is not run again,
and ``python -c``, standard input, IPython and notebooks work), and it is an ordinary, non-daemonic process
(so a handler may start processes of its own). The handler factory arrives pickled in the `Boot` message;
one defined in ``__main__`` was pickled by value, so nothing needs importing to rebuild it.

The parent owns shutdown: the worker ignores SIGINT (a Ctrl-C reaches the whole process group) and exits
on `Stop`, on the channel's EOF, or with its parent (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import ctypes
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

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def main() -> None:
    """Run one worker: ``sys.argv`` is ``[-c, FD, PARENT_PID]``, the channel's descriptor and the parent's pid."""
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent_pid)
    # Our end of the channel must not leak into processes a handler starts: a child that held it would
    # keep the channel open after this worker died.
    os.set_inheritable(fd, False)
    conn = Connection(socket.socket(fileno=fd).detach())
    encoder = msgspec.msgpack.Encoder()
    try:
        boot = msgspec.msgpack.decode(conn.recv_bytes(), type=Boot)
    except (EOFError, OSError):
        return  # the parent gave up on us before we were told who we are
    sys.path[:] = boot.sys_path
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


def _die_with(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so a killed parent leaves no orphan."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc; the channel's EOF still ends us
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
