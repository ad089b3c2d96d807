"""Snapshot sources: where a replacement worker gets the current books of the slot it takes over.

The contract (what a REST source must do to plug in): ``await source.fetch(asset_ids)`` returns an
iterable of Polymarket `book` snapshots, each a raw JSON frame (``bytes``/``str``, the shape of
``GET /book``: ``event_type`` optional) or a decoded `models.BookEvent`, for as many of ``asset_ids`` as it
can. Each snapshot must be *current*: it includes every update published before ``fetch`` was called,
and its ``timestamp`` is not earlier than any of them. Assets it does not return stay stale, and are
handed to ``on_resync``. Raising (or timing out) makes the pool retry with backoff.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from pool.models import BookEvent, MessageError, RejectedEvent, decode_frame

__all__ = ["CallableSnapshotSource", "Snapshot", "SnapshotSource", "as_snapshot_source", "snapshot_frames"]

Snapshot: TypeAlias = bytes | str | BookEvent

_encoder = msgspec.json.Encoder()


@runtime_checkable
class SnapshotSource(Protocol):
    """Anything with ``async fetch(asset_ids) -> Iterable[Snapshot]``."""

    async def fetch(self, asset_ids: Sequence[str]) -> Iterable[Snapshot]:
        """Return current `book` snapshots for ``asset_ids`` (see the module docstring)."""
        ...


class CallableSnapshotSource:
    """A `SnapshotSource` made from a plain function, sync or async, taking the asset ids.

    A sync function runs in a daemon thread of its own, so a blocking HTTP client does not stall the pool,
    and one that never returns is abandoned by the fetch timeout (its late result is ignored) and holds up
    neither shutdown nor the interpreter's exit. (anyio's worker threads cannot do this: a cancelled call
    keeps its thread, and on asyncio that thread is joined when the interpreter exits.)
    """

    def __init__(self, function: Callable[[Sequence[str]], Iterable[Snapshot] | Awaitable[Iterable[Snapshot]]]) -> None:
        if not callable(function):
            raise TypeError(f"a snapshot source must be callable or have `fetch`, got {type(function).__name__}")
        self._function = function

    async def fetch(self, asset_ids: Sequence[str]) -> Iterable[Snapshot]:
        if inspect.iscoroutinefunction(self._function):
            result: Any = await self._function(asset_ids)
        else:
            result = await _in_daemon_thread(self._function, asset_ids)
            if inspect.isawaitable(result):
                result = await result
        return list(result)

    def __repr__(self) -> str:
        return f"CallableSnapshotSource({self._function!r})"


async def _in_daemon_thread(function: Callable[[Sequence[str]], Any], asset_ids: Sequence[str]) -> Any:
    """``function(asset_ids)`` in a new daemon thread; cancelling the wait abandons the call."""
    finished = anyio.Event()
    outcome: list[tuple[bool, Any]] = []
    token = anyio.lowlevel.current_token()

    def run() -> None:
        try:
            outcome.append((True, function(asset_ids)))
        except BaseException as exc:  # handed to the waiting task, which re-raises it
            outcome.append((False, exc))
        with contextlib.suppress(anyio.RunFinishedError):  # the loop has ended: nobody waits any more
            anyio.from_thread.run_sync(finished.set, token=token)

    threading.Thread(target=run, name="snapshot-source", daemon=True).start()
    await finished.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def as_snapshot_source(source: Any) -> SnapshotSource | None:
    """Accept a `SnapshotSource`, a sync or async callable, or ``None``.

    Raises:
        TypeError: ``source`` is none of those.
    """
    if source is None or isinstance(source, SnapshotSource):
        return source
    return CallableSnapshotSource(source)


def snapshot_frames(snapshots: Iterable[Snapshot], wanted: set[str]) -> tuple[dict[str, bytes], list[str]]:
    """Sort what a source returned: one `book` frame per wanted asset (the last one wins), and why each
    item that is not a readable `book` was skipped (its asset, if it is one, then counts as missing)."""
    frames: dict[str, bytes] = {}
    skipped: list[str] = []
    for index, snapshot in enumerate(snapshots):
        try:
            events = [snapshot] if isinstance(snapshot, BookEvent) else decode_frame(snapshot)
        except (MessageError, TypeError) as exc:
            skipped.append(f"item {index}: {exc}")
            continue
        for event in events:
            if isinstance(event, BookEvent):
                if event.asset_id in wanted:
                    frames[event.asset_id] = _encoder.encode(event)
            elif isinstance(event, RejectedEvent):
                skipped.append(f"item {index}: {event.message}")
            else:
                skipped.append(f"item {index}: a {type(event).__name__}, not a `book`")
    return frames, skipped
