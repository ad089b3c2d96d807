"""The channel's batching: bounded by frame count and by bytes, order and content kept."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pool._wire._protocol import MAX_BATCH_BYTES, MAX_BATCH_FRAMES, split_batches


def test_small_frames_are_cut_by_count() -> None:
    frames = [b"x" * 100] * (2 * MAX_BATCH_FRAMES + 3)
    assert [len(batch) for batch in split_batches(frames)] == [MAX_BATCH_FRAMES, MAX_BATCH_FRAMES, 3]


def test_large_frames_are_cut_by_bytes_and_a_huge_one_goes_alone() -> None:
    big = b"x" * (MAX_BATCH_BYTES // 3)
    huge = b"y" * (MAX_BATCH_BYTES + 1)
    batches = split_batches([big, big, big, big, huge, b"z"])
    assert [len(batch) for batch in batches] == [3, 1, 1, 1]
    assert batches[2] == [huge]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=MAX_BATCH_BYTES // 2), max_size=12))
def test_batches_keep_every_frame_in_order_within_both_bounds(sizes: list[int]) -> None:
    frames = [bytes([index % 256]) * size for index, size in enumerate(sizes)]
    batches = split_batches(frames)
    assert [frame for batch in batches for frame in batch] == frames
    for batch in batches:
        assert batch and len(batch) <= MAX_BATCH_FRAMES
        assert len(batch) == 1 or sum(map(len, batch)) <= MAX_BATCH_BYTES
