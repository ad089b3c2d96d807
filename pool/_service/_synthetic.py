"""A deterministic synthetic market that speaks the Polymarket wire format.

It drives the ``python -m pool`` demo, the integration tests and the benchmarks. Assets come in binary
markets (two tokens each), traffic is Zipf-skewed (with ``skew=1.0`` and 1,000 assets the hottest one
carries about 13% of it), and every event kind and ``price_change`` shape the exchange has used appears:
one-level messages (the bulk), ``changes`` arrays, and ``price_changes`` arrays with a mirrored entry for
the market's other token. The same seed always gives the same bytes.

It also keeps the true current book of every token, so it is a `SnapshotSource` too (`fetch`): a worker
that dies during the demo is rebuilt exactly as it would be against the real exchange.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import msgspec

__all__ = ["SyntheticMarket"]

_TICK = 100  # prices are integers in hundredths (tick 0.01), 1..99
_START_MS = 1_760_000_000_000
_LEVELS_PER_SIDE = 20


class SyntheticMarket:
    """Polymarket-format frames (``bytes``) for ``assets`` tokens.

    Args:
        assets: number of tokens (rounded up to an even number: binary markets).
        seed: makes the stream reproducible.
        skew: Zipf exponent of asset popularity; 0 is uniform.
        levels: price levels per side in each initial book.
        books_after_trades: follow every trade with the asset's fresh `book`, as the exchange does ("when
            there is a trade that affects the book"); off by default, so a stream keeps its books' state
            (a stale mark, say) for the tests that watch it.
        live_shape: send every ``price_change`` in the one shape the exchange has sent since September 2025
            (``price_changes``: the level and its mirror on the market's other token, with quotes), as live
            traffic is; by default nine in ten are one-level messages and the rest the two older shapes.
    """

    def __init__(
        self,
        assets: int,
        *,
        seed: int = 0,
        skew: float = 1.0,
        levels: int = _LEVELS_PER_SIDE,
        books_after_trades: bool = False,
        live_shape: bool = False,
    ) -> None:
        if assets < 1:
            raise ValueError(f"assets must be at least 1, got {assets}")
        self._random = random.Random(seed)
        count = assets + assets % 2
        self.asset_ids = [str(self._random.getrandbits(252)).rjust(76, "1") for _ in range(count)]
        self.market_of = {asset_id: f"0x{index // 2:064x}" for index, asset_id in enumerate(self.asset_ids)}
        self._twin = {a: b for a, b in zip(self.asset_ids[::2], self.asset_ids[1::2], strict=True)}
        self._twin.update({b: a for a, b in self._twin.items()})
        self._mid = {asset_id: self._random.randint(20, 80) for asset_id in self.asset_ids}
        self._levels = levels
        self._books_after_trades = books_after_trades
        self._live_shape = live_shape
        # The true books: asset -> (bids, asks), each price in hundredths -> size string.
        self._books: dict[str, tuple[dict[int, str], dict[int, str]]] = {a: ({}, {}) for a in self.asset_ids}
        weights = [1.0 / (rank**skew) for rank in range(1, count + 1)]
        self._cumulative = list(itertools.accumulate(weights))
        self._clock = _START_MS

    def _now(self) -> int:
        self._clock += 1
        return self._clock

    def snapshots(self) -> list[bytes]:
        """One `book` frame per asset (what a subscription's initial dump delivers)."""
        return [self.book(asset_id) for asset_id in self.asset_ids]

    def book(self, asset_id: str) -> bytes:
        """A new random book around ``asset_id``'s mid, as a `book` frame (it becomes the true book)."""
        rnd, mid = self._random, self._mid[asset_id]
        bids, asks = self._books[asset_id]
        bids.clear()
        asks.clear()
        bids.update((p, f"{rnd.randint(1, 50_000) / 100:g}") for p in range(max(1, mid - self._levels), mid))
        asks.update(
            (p, f"{rnd.randint(1, 50_000) / 100:g}") for p in range(mid + 1, min(_TICK, mid + 1 + self._levels))
        )
        return self.snapshot(asset_id, self._now())

    def snapshot(self, asset_id: str, timestamp: int | None = None) -> bytes:
        """The true current book of ``asset_id`` as a `book` frame (bids ascending, asks descending)."""
        bids, asks = self._books[asset_id]
        return msgspec.json.encode(
            {
                "event_type": "book",
                "asset_id": asset_id,
                "market": self.market_of[asset_id],
                "bids": [{"price": _price(p), "size": bids[p]} for p in sorted(bids)],
                "asks": [{"price": _price(p), "size": asks[p]} for p in sorted(asks, reverse=True)],
                "timestamp": str(self._clock if timestamp is None else timestamp),
                "hash": f"{self._random.getrandbits(160):040x}",
            }
        )

    async def fetch(self, asset_ids: Sequence[str]) -> list[bytes]:
        """`SnapshotSource.fetch`: the true books now, stamped with the latest timestamp issued, so every
        update generated so far is inside them."""
        return [self.snapshot(asset_id) for asset_id in asset_ids if asset_id in self._books]

    def updates(self, count: int) -> Iterator[bytes]:
        """``count`` frames after the snapshots: 90% one-level ``price_change``, the rest the other shapes,
        trades (each followed by its asset's `book` with ``books_after_trades``) and the odd tick-size change,
        on Zipf-chosen assets."""
        rnd = self._random
        sent = 0
        while sent < count:
            sent += 1
            asset_id = rnd.choices(self.asset_ids, cum_weights=self._cumulative)[0]
            roll = rnd.random()
            if roll < 0.97 and self._live_shape:
                yield self._price_change_v2(asset_id)
            elif roll < 0.90:
                yield self._price_change_v0(asset_id)
            elif roll < 0.94:
                yield self._price_change_v1(asset_id)
            elif roll < 0.97:
                yield self._price_change_v2(asset_id)
            elif roll < 0.999:
                yield self._trade(asset_id)
                if self._books_after_trades and sent < count:
                    sent += 1
                    yield self.snapshot(asset_id, self._now())
            else:
                yield self._tick_size_change(asset_id)

    def _level(self, asset_id: str) -> tuple[str, str, str]:
        """A level change of ``asset_id``, applied to the true book."""
        side, price, size = self._pick_level(asset_id)
        self._set(asset_id, side, price, size)
        return side, _price(price), size

    def _pick_level(self, asset_id: str) -> tuple[str, int, str]:
        rnd, mid = self._random, self._mid[asset_id]
        side = rnd.choice(("BUY", "SELL"))
        offset = min(int(rnd.expovariate(0.3)) + 1, self._levels)
        price = max(1, mid - offset) if side == "BUY" else min(_TICK - 1, mid + offset)
        size = "0" if rnd.random() < 0.3 else f"{rnd.randint(1, 5_000_000) / 100:g}"
        return side, price, size

    def _set(self, asset_id: str, side: str, price: int, size: str) -> None:
        levels = self._books[asset_id][0 if side == "BUY" else 1]
        if size == "0":
            levels.pop(price, None)
        else:
            levels[price] = size

    def _price_change_v0(self, asset_id: str) -> bytes:
        side, price, size = self._level(asset_id)
        return msgspec.json.encode(
            {
                "asset_id": asset_id,
                "event_type": "price_change",
                "hash": f"{self._random.getrandbits(160):040x}",
                "market": self.market_of[asset_id],
                "price": price,
                "side": side,
                "size": size,
                "timestamp": str(self._now()),
            }
        )

    def _price_change_v1(self, asset_id: str) -> bytes:
        changes = [dict(zip(("side", "price", "size"), self._level(asset_id), strict=True)) for _ in range(3)]
        return msgspec.json.encode(
            {
                "asset_id": asset_id,
                "changes": changes,
                "event_type": "price_change",
                "hash": f"{self._random.getrandbits(160):040x}",
                "market": self.market_of[asset_id],
                "timestamp": str(self._now()),
            }
        )

    def _price_change_v2(self, asset_id: str) -> bytes:
        side, price, size = self._level(asset_id)
        twin = self._twin[asset_id]
        mirrored_side = "SELL" if side == "BUY" else "BUY"
        mirrored_hundredths = _TICK - round(float(price) * _TICK)
        self._set(twin, mirrored_side, mirrored_hundredths, size)
        mirrored_price = _price(mirrored_hundredths)
        entries = [
            {"asset_id": asset_id, "price": price, "size": size, "side": side},
            {"asset_id": twin, "price": mirrored_price, "size": size, "side": mirrored_side},
        ]
        for entry in entries:
            entry.update(hash=f"{self._random.getrandbits(160):040x}", **self._quote(entry["asset_id"]))
        return msgspec.json.encode(
            {
                "event_type": "price_change",
                "market": self.market_of[asset_id],
                "price_changes": entries,
                "timestamp": self._now(),  # a JSON number, as in the October 2025 recording
            }
        )

    def _quote(self, asset_id: str) -> dict[str, str]:
        """The token's true best bid and ask, as the exchange quotes them ("0" and "1" for an empty side)."""
        bids, asks = self._books[asset_id]
        return {"best_bid": _price(max(bids)) if bids else "0", "best_ask": _price(min(asks)) if asks else "1"}

    def _trade(self, asset_id: str) -> bytes:
        side, hundredths, _ = self._pick_level(asset_id)  # a trade does not change the book by itself
        price = _price(hundredths)
        return msgspec.json.encode(
            {
                "asset_id": asset_id,
                "event_type": "last_trade_price",
                "fee_rate_bps": "0",
                "market": self.market_of[asset_id],
                "price": price,
                "side": side,
                "size": f"{self._random.randint(1, 100_000) / 100:g}",
                "timestamp": str(self._now()),
            }
        )

    def _tick_size_change(self, asset_id: str) -> bytes:
        return msgspec.json.encode(
            {
                "asset_id": asset_id,
                "event_type": "tick_size_change",
                "market": self.market_of[asset_id],
                "new_tick_size": "0.01",
                "old_tick_size": "0.01",
                "timestamp": str(self._now()),
            }
        )


def _price(hundredths: int) -> str:
    return f"{hundredths / _TICK:g}"
