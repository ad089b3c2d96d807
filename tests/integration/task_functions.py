"""Task functions the integration tests run in worker processes (module level, so they pickle by reference).

Each works on a live `OrderBook` through its public reading methods; `vwap_to_buy` is also applied to a
reference book in the parent, so the two results can be compared exactly.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any


def vwap(asks: Sequence[tuple[Decimal, Decimal]], shares: Decimal) -> Decimal | None:
    """The average price of buying ``shares`` up the asks (best first), or ``None`` if they are too thin."""
    left, cost = shares, Decimal(0)
    for price, size in asks:
        take = min(left, size)
        cost += take * price
        left -= take
        if not left:
            return cost / shares
    return None


def vwap_to_buy(book: Any, shares: str) -> Decimal | None:
    asks = [(Decimal(price), Decimal(size)) for price, size in book.view().asks]
    return vwap(asks, Decimal(shares))


def levels(book: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    view = book.view()
    return list(view.bids), list(view.asks)


def depth_of_all(books: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    return {asset_id: book.depth for asset_id, book in books.items()}


def started_at(book: Any) -> int:
    """When it ran, in this worker's clock: the worker runs its tasks one at a time, so this orders them."""
    return time.monotonic_ns()


def sleep_then_levels(book: Any, seconds: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    time.sleep(seconds)
    return levels(book)


def raise_value_error(book: Any) -> None:
    raise ValueError(f"no signal for {book.asset_id[:8]}")


def return_a_lock(book: Any) -> Any:
    return threading.Lock()


def kill_own_worker(book: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def spin_forever(book: Any) -> None:
    while True:
        time.sleep(0.05)
