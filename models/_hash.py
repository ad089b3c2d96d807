"""The exchange's ``hash`` of a book, recomputed to check a `book` event against it.

The service hashes a book summary as SHA-1 of its compact JSON, with ``hash`` blank, keys in the server's
order and every value the exact string it sent (``tests/fixtures/polymarket/FORMAT.md``, section 9, after
Polymarket's py-clob-client ``generate_orderbook_summary_hash``). The summary grew over time:

=================  ==========================================================================
September 2024     market, asset_id, hash, bids, asks
November 2024      + timestamp (after asset_id)
October 2025       + min_order_size, tick_size, neg_risk
December 2025      + last_trade_price
=================  ==========================================================================

A WebSocket `book` lacks ``min_order_size`` and ``neg_risk`` (a REST book has them) and carries
``last_trade_price`` only in the first dump, so the newest form can be computed only with what the book
learnt before: the metadata of an earlier REST snapshot and the price of its last trade. `check_hash` tries
every form it can compute; it calls a book *mismatched* only when it had all the newest form needs (or the
book predates timestamps) and none matched, and *unverifiable* when it lacked something and no form it
could compute matched. Other clients report hashes that do not reproduce even then (py-clob-client-v2
#117: a hash that matches only with the price of a trade 88 ms later), so a mismatch is counted, not acted on.
"""

from __future__ import annotations

import hashlib
from typing import Literal, TypeAlias

import msgspec

from ._messages import BookEvent

__all__ = ["HashCheck", "check_hash"]

HashCheck: TypeAlias = Literal["matched", "mismatched", "unverifiable"]

_encoder = msgspec.json.Encoder()


def _sha1(summary: dict[str, object]) -> str:
    return hashlib.sha1(_encoder.encode(summary)).hexdigest()


def check_hash(
    event: BookEvent,
    *,
    min_order_size: str | None = None,
    tick_size: str | None = None,
    neg_risk: bool | None = None,
    last_trade_price: str | None = None,
) -> HashCheck | None:
    """Whether ``event``'s ``hash`` is the hash of its own levels; ``None`` if it carries no hash.

    The keyword arguments are what the book knew before ``event`` (an earlier REST snapshot's metadata, the
    last trade's price); the event's own fields take precedence over them.
    """
    expected = event.hash.removeprefix("0x").lower()
    if not expected:
        return None
    head: dict[str, object] = {"market": event.market, "asset_id": event.asset_id}
    levels = {"bids": event.bids, "asks": event.asks}
    if event.timestamp is None:  # the September 2024 form, the only one without a timestamp: decisive
        return "matched" if _sha1({**head, "hash": "", **levels}) == expected else "mismatched"
    summary = {**head, "timestamp": str(event.timestamp), "hash": "", **levels}
    if _sha1(summary) == expected:
        return "matched"
    meta = {
        "min_order_size": event.min_order_size if event.min_order_size is not None else min_order_size,
        "tick_size": event.tick_size if event.tick_size is not None else tick_size,
        "neg_risk": event.neg_risk if event.neg_risk is not None else neg_risk,
    }
    if any(value is None for value in meta.values()):
        return "unverifiable"
    summary.update(meta)
    if _sha1(summary) == expected:
        return "matched"
    trade = event.last_trade_price if event.last_trade_price is not None else last_trade_price
    if trade is None:
        return "unverifiable"
    summary["last_trade_price"] = trade
    return "matched" if _sha1(summary) == expected else "mismatched"
