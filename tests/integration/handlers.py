"""Handler factories the integration tests hand to worker processes (module level, so they pickle)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


class RecordingHandler:
    """Appends one line per callback, ``<callback> <asset_id>``, to ``<directory>/worker-<id>.log``."""

    def __init__(self, directory: str, worker_id: int) -> None:
        self._fd = os.open(Path(directory) / f"worker-{worker_id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def _record(self, name: str, book: Any) -> None:
        os.write(self._fd, f"{name} {book.asset_id}\n".encode())

    def on_snapshot(self, book: Any, event: Any) -> None:
        self._record("on_snapshot", book)

    def on_price_change(self, book: Any, event: Any) -> None:
        self._record("on_price_change", book)

    def on_trade(self, book: Any, event: Any) -> None:
        self._record("on_trade", book)

    def on_tick_size_change(self, book: Any, event: Any) -> None:
        self._record("on_tick_size_change", book)


class FailingHandler:
    """Raises from every price-change callback (the book update must still stand)."""

    def on_price_change(self, book: Any, event: Any) -> None:
        raise RuntimeError(f"handler bug on {book.asset_id}")


def failing_handler(worker_id: int) -> FailingHandler:
    return FailingHandler()


def broken_factory(worker_id: int) -> Any:
    raise RuntimeError(f"cannot build a handler for worker {worker_id}")


class StubbornHandler:
    """Ignores SIGTERM and never returns from a snapshot callback: only SIGKILL stops this worker."""

    def __init__(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def on_snapshot(self, book: Any, event: Any) -> None:
        while True:
            time.sleep(0.05)


def stubborn_handler(worker_id: int) -> StubbornHandler:
    return StubbornHandler()


class SlowHandler:
    """Takes ``delay`` seconds per snapshot, so a fast publisher runs into max_pending_messages."""

    def __init__(self, delay: float) -> None:
        self._delay = delay

    def on_snapshot(self, book: Any, event: Any) -> None:
        time.sleep(self._delay)


def slow_handler(delay: float, worker_id: int) -> SlowHandler:
    return SlowHandler(delay)


class CrashingHandler:
    """Ends its process with exit code 3 on the first snapshot it sees (in the chosen worker only)."""

    def on_snapshot(self, book: Any, event: Any) -> None:
        os._exit(3)


def crashing_handler(target_worker: int, worker_id: int) -> CrashingHandler | None:
    return CrashingHandler() if worker_id == target_worker else None


class MemoryHog:
    """Keeps ``chunk_kb`` KB more alive on every price change it sees (in the chosen worker only)."""

    def __init__(self, chunk_kb: int) -> None:
        self._chunk = chunk_kb * 1024
        self._kept: list[bytearray] = []

    def on_price_change(self, book: Any, event: Any) -> None:
        self._kept.append(bytearray(b"x" * self._chunk))  # written, so the pages are really resident


class RecordingHog(MemoryHog, RecordingHandler):
    """A `MemoryHog` that records its snapshots as `RecordingHandler` does."""

    def __init__(self, chunk_kb: int, directory: str, worker_id: int) -> None:
        MemoryHog.__init__(self, chunk_kb)
        RecordingHandler.__init__(self, directory, worker_id)

    on_price_change = MemoryHog.on_price_change


def memory_hog(target_worker: int, chunk_kb: int, worker_id: int) -> MemoryHog | None:
    return MemoryHog(chunk_kb) if worker_id == target_worker else None


def recording_hog(target_worker: int, chunk_kb: int, directory: str, worker_id: int) -> RecordingHog | None:
    return RecordingHog(chunk_kb, directory, worker_id) if worker_id == target_worker else None


def _write_marker(path: str) -> None:
    Path(path).write_text("ran")


class ProcessStartingHandler:
    """Starts (and joins) a multiprocessing child from its snapshot callback: only a non-daemonic worker may."""

    def __init__(self, marker: str) -> None:
        self._marker = marker

    def on_snapshot(self, book: Any, event: Any) -> None:
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=_write_marker, args=(self._marker,))
        child.start()
        child.join(30)


def process_starting_handler(marker: str, worker_id: int) -> ProcessStartingHandler:
    return ProcessStartingHandler(marker)


class PrintingHandler:
    """Prints one line per snapshot: it must reach the worker's stdout, which is the parent's."""

    def on_snapshot(self, book: Any, event: Any) -> None:
        # One write per line: two workers share the stdout, and with PYTHONUNBUFFERED a plain print writes
        # the text and its newline separately, so lines of the two could interleave.
        print(f"snapshot {book.asset_id}\n", end="", flush=True)


def _refuse_to_load(name: str) -> Any:
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)


class Unloadable:
    """Pickles fine in the parent and fails to unpickle in a worker, like a factory whose module the worker
    cannot import."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _refuse_to_load, ("gone",)


def handler_with(resource: Any, worker_id: int) -> None:
    return None


class SteadyLeak:
    """Leaks ``mb_per_second`` MB a second from a thread of its own, whatever the traffic: the handler that
    outgrows its cap every few seconds, as a slow leak in user code would."""

    def __init__(self, mb_per_second: float) -> None:
        self._kept: list[bytearray] = []
        self._step = int(mb_per_second * 1024 * 1024 / 100)  # every 10 ms
        threading.Thread(target=self._leak, daemon=True).start()

    def _leak(self) -> None:
        while True:
            self._kept.append(bytearray(b"x" * self._step))  # written, so the pages are really resident
            time.sleep(0.01)

    def on_price_change(self, book: Any, event: Any) -> None:
        pass


def steady_leak(mb_per_second: float, worker_id: int) -> SteadyLeak:
    return SteadyLeak(mb_per_second)


class PoisonedHandler:
    """Never returns from the price change whose hash is ``marker``, every time it sees it (a poison frame)."""

    def __init__(self, marker: str) -> None:
        self._marker = marker

    def on_price_change(self, book: Any, event: Any) -> None:
        while event.hash == self._marker:
            time.sleep(0.05)


def poisoned_handler(marker: str, worker_id: int) -> PoisonedHandler:
    return PoisonedHandler(marker)
