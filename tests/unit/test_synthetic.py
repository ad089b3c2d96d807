"""The synthetic market: deterministic, well formed, and a truthful snapshot source."""

from __future__ import annotations

import anyio

from pool._parent._snapshots import SnapshotSource
from pool._service._synthetic import SyntheticMarket
from pool.models import BookEvent, BookStore, PriceChange, decode_frame
from tests.support import ReferenceBooks, as_decimals


class TestSyntheticMarket:
    def test_same_seed_same_bytes(self) -> None:
        first, second = SyntheticMarket(20, seed=3), SyntheticMarket(20, seed=3)
        assert first.snapshots() + list(first.updates(500)) == second.snapshots() + list(second.updates(500))

    def test_every_frame_decodes_and_all_shapes_appear(self) -> None:
        """Every frame is valid wire format; all event kinds and price_change shapes occur."""
        market = SyntheticMarket(50, seed=1)
        kinds = set()
        store = BookStore()
        for frame in market.snapshots() + list(market.updates(5_000)):
            for event in decode_frame(frame):
                store.apply(event)
                shape = getattr(event, "price_changes", None) is not None, getattr(event, "changes", None) is not None
                kinds.add((type(event).__name__, shape if type(event).__name__ == "PriceChange" else None))
        assert {kind for kind, _ in kinds} == {"BookEvent", "PriceChange", "LastTradePrice", "TickSizeChange"}
        assert {shape for kind, shape in kinds if kind == "PriceChange"} == {
            (False, False),
            (False, True),
            (True, False),
        }

    def test_fetch_returns_the_true_books(self) -> None:
        """After any stream, fetch() returns books equal to an independent reference built from the stream."""
        market = SyntheticMarket(40, seed=9)
        reference = ReferenceBooks()
        reference.apply_frames(market.snapshots() + list(market.updates(10_000)))
        assert isinstance(market, SnapshotSource)
        snapshots = anyio.run(market.fetch, market.asset_ids)
        assert len(snapshots) == 40
        for frame in snapshots:
            (event,) = decode_frame(frame)
            assert isinstance(event, BookEvent)
            bids, asks = reference.levels(event.asset_id)
            assert as_decimals((lv.price, lv.size) for lv in reversed(event.bids)) == bids
            assert as_decimals((lv.price, lv.size) for lv in reversed(event.asks)) == asks

    def test_the_2025_quotes_are_the_true_best_prices_and_live_shape_sends_only_that_shape(self) -> None:
        """Each ``price_changes`` entry quotes its token's true best bid and ask after it, so a store fed the
        stream checks every one and finds no mismatch; with ``live_shape`` every price change has that shape
        (two mirrored entries)."""
        for live_shape in (False, True):
            market = SyntheticMarket(50, seed=2, live_shape=live_shape)
            store = BookStore(quote_resync_after=1)
            shapes = set()
            for frame in market.snapshots() + list(market.updates(5_000)):
                for event in decode_frame(frame):
                    store.apply(event)
                    if isinstance(event, PriceChange):
                        shapes.add(len(event.price_changes) if event.price_changes is not None else "older")
            checks = store.checks()
            assert checks.best_bid_ask_checked > 100 and checks.best_bid_ask_mismatches == 0
            assert shapes == ({2} if live_shape else {2, "older"})
