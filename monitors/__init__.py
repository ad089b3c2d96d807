"""Supervision of worker processes from the outside: memory, sampled with psutil.

Imports `models` only; it observes pids and numbers it is handed and never touches a process.
"""

from ._memory import CallbackHandle, MemoryInfo, MemoryMonitor, SystemMemoryInfo, WorkerTarget

__all__ = ["CallbackHandle", "MemoryInfo", "MemoryMonitor", "SystemMemoryInfo", "WorkerTarget"]

for _name in ("CallbackHandle", "MemoryInfo", "MemoryMonitor", "SystemMemoryInfo"):  # a type alias has no module
    globals()[_name].__module__ = __name__
del _name
