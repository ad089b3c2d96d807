"""Snapshot sources: the callable adapter and the validation of what a source returns."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from pool import CallableSnapshotSource, SnapshotSource
from pool._parent._snapshots import as_snapshot_source, snapshot_frames
from pool.models import BookEvent, Level, decode_frame

BOOK = (
    b'{"event_type":"book","asset_id":"a","market":"m","bids":[{"price":"0.1","size":"1"}],"asks":[],"timestamp":"7"}'
)


class TestSources:
    def test_sync_and_async_callables_are_sources(self) -> None:
        """A sync function (run in a thread) and an async one both become SnapshotSources."""

        def sync_fetch(asset_ids: Sequence[str]) -> list[bytes]:
            return [BOOK for _ in asset_ids]

        async def async_fetch(asset_ids: Sequence[str]) -> list[bytes]:
            return [BOOK for _ in asset_ids]

        for function in (sync_fetch, async_fetch):
            source = as_snapshot_source(function)
            assert isinstance(source, SnapshotSource) and isinstance(source, CallableSnapshotSource)
            assert anyio.run(source.fetch, ["a", "b"]) == [BOOK, BOOK]

    def test_a_source_object_passes_through_and_junk_is_refused(self) -> None:
        source = CallableSnapshotSource(lambda ids: [])
        assert as_snapshot_source(source) is source and as_snapshot_source(None) is None
        with pytest.raises(TypeError, match="callable"):
            as_snapshot_source(42)


class TestSnapshotFrames:
    def test_keeps_wanted_books_from_bytes_str_and_structs(self) -> None:
        struct = BookEvent(asset_id="b", market="m", bids=[], asks=[Level("0.9", "2")], timestamp=8)
        frames, skipped = snapshot_frames([BOOK, BOOK.decode().replace('"a"', '"c"'), struct], {"a", "b"})
        assert sorted(frames) == ["a", "b"] and skipped == []
        (event,) = decode_frame(frames["b"])
        assert isinstance(event, BookEvent) and event.asks == [Level("0.9", "2")] and event.timestamp == 8

    def test_what_is_not_a_readable_book_is_skipped_with_the_reason_and_the_rest_kept(self) -> None:
        """One bad item costs only its own asset (which then counts as missing), never the fetch."""
        frames, skipped = snapshot_frames(
            [
                b'{"event_type":"last_trade_price","asset_id":"a","price":"0.5","side":"BUY","size":"1"}',
                b'{"event_type":"book","asset_id":"b","bids":"none","asks":[]}',
                b"not json",
                42,  # type: ignore[list-item]  # what a broken source might return
                BOOK.decode().replace('"a"', '"c"'),
            ],
            {"a", "b", "c"},
        )
        assert sorted(frames) == ["c"]
        assert [reason.split(":")[0] for reason in skipped] == ["item 0", "item 1", "item 2", "item 3"]
        assert "not a `book`" in skipped[0] and "invalid `book`" in skipped[1] and "not valid JSON" in skipped[2]
