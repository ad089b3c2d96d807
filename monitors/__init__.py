"""Supervision of worker processes from the outside: memory, sampled with psutil.

Imports `models` only; it observes pids and numbers it is handed and never touches a process.
"""

from ._memory import CallbackHandle, MemoryInfo, MemoryMonitor, SystemMemoryInfo

__all__ = ["CallbackHandle", "MemoryInfo", "MemoryMonitor", "SystemMemoryInfo"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
