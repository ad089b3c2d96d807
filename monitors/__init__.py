"""Supervision of worker processes from the outside (memory, with psutil). Empty until the
MemoryMonitor lands; importable so the package layout is fixed from the start."""

__all__: list[str] = []
