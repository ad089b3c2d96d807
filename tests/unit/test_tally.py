"""The log tally: the first event after a quiet interval goes out at once; the rest of it, as one count."""

from __future__ import annotations

from pool._wire._tally import Tally


class TestTally:
    def test_first_at_once_then_one_entry_per_interval_with_the_count_and_the_first_example(self) -> None:
        tally = Tally(interval=1.0)
        tally.note("frame_rejected", "warning", reason="first")
        [first] = tally.release(now=100.0)
        assert (first.event, first.count, first.example) == ("frame_rejected", 1, {"reason": "first"})
        for index in range(500):
            tally.note("frame_rejected", "warning", reason=f"later {index}")
        tally.note("handler_failed", "warning", 3, callback="on_trade")
        assert tally.release(now=100.5) == []  # within the interval: held back
        assert tally.due_in(now=100.5) == 0.5
        entries = {entry.event: entry for entry in tally.release(now=101.0)}
        assert entries["frame_rejected"].count == 500 and entries["frame_rejected"].example == {"reason": "later 0"}
        assert entries["handler_failed"].count == 3
        assert not tally and tally.release(now=200.0) == []
        assert tally.due_in(now=200.0) == float("inf")  # nothing pending: a worker waits for its heartbeat

    def test_force_releases_everything_now(self) -> None:
        tally = Tally(interval=60.0)
        tally.note("a", "info")
        tally.release(now=0.0)
        tally.note("a", "info")
        assert tally.release(now=1.0) == []
        assert [entry.count for entry in tally.release(now=1.0, force=True)] == [1]
