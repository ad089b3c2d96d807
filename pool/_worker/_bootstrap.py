"""The first code a worker process runs: the pool starts every worker as ``python <this file> FD PARENT_PID``.

It is run as a script, not imported, so that it runs before anything of ours is imported: importing the
pool takes about 0.1 s, and several times that on a loaded machine. A worker whose parent died while it was
starting therefore exits here, having outlived its parent by no more than the interpreter's own start-up;
from here on, Linux SIGKILLs it when the parent dies (``PR_SET_PDEATHSIG``). Only then does it import the
worker proper (`pool._worker._entry`), from the directory this copy of the pool lives in, so that a user's
own ``pool.py`` in the working directory cannot stand in for it.
"""

from __future__ import annotations

import os
import sys

_PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, and exit now if the parent is gone already."""
    if sys.platform == "linux":
        import contextlib
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):  # an exotic libc: the channel's EOF still ends us
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # Checked after the prctl, so there is no moment in which the parent could die unnoticed: a parent that
    # died before it leaves us re-parented (to init or a subreaper).
    if os.getppid() != parent_pid:
        os._exit(1)


if __name__ == "__main__":
    _die_with(int(sys.argv[2]))
    if not sys.flags.safe_path:
        del sys.path[0]  # this script's own directory, which holds the worker's private modules
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
    from pool._worker._entry import main

    main()
