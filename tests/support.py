"""Helpers shared by the tests: the recorded fixtures, an independent reference book, condition waits."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import anyio
import msgspec
import psutil

from pool.models import BookEvent, Level, PoolEvent, PoolEventKind

FIXTURES = Path(__file__).parent / "fixtures" / "polymarket"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sequence_objects(name: str) -> list[bytes]:
    """The JSON lines of a ``sequence_*.txt`` file (label lines skipped), as raw bytes, in order."""
    return [line.strip() for line in fixture_bytes(name).splitlines() if line.startswith(b"{")]


class ReferenceBooks:
    """A deliberately naive order-book model (dicts of ``Decimal``), independent of ``models.OrderBook``.

    It is what the pool's books must equal: it knows the wire format through plain ``json`` and nothing
    of the pool's parsing, fixed-point units or routing.
    """

    def __init__(self) -> None:
        self.bids: dict[str, dict[Decimal, Decimal]] = {}
        self.asks: dict[str, dict[Decimal, Decimal]] = {}
        self.markets: dict[str, str] = {}
        self.clock = 0  # the latest timestamp applied

    def apply_frames(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            document = msgspec.json.decode(frame)
            for event in document if isinstance(document, list) else [document]:
                self.apply(event)

    def apply(self, event: dict[str, object]) -> None:
        if event.get("timestamp") is not None:
            self.clock = max(self.clock, int(str(event["timestamp"])))
        kind = event.get("event_type", "book")
        if kind == "book":
            asset = str(event["asset_id"])
            self.markets[asset] = str(event.get("market", ""))
            self.bids[asset] = {Decimal(level["price"]): Decimal(level["size"]) for level in event["bids"]}  # type: ignore[attr-defined]
            self.asks[asset] = {Decimal(level["price"]): Decimal(level["size"]) for level in event["asks"]}  # type: ignore[attr-defined]
        elif kind == "price_change":
            if "price_changes" in event:
                entries = event["price_changes"]
            elif "changes" in event:
                entries = [dict(c, asset_id=event["asset_id"]) for c in event["changes"]]  # type: ignore[attr-defined]
            else:
                entries = [event]
            for entry in entries:  # type: ignore[attr-defined]
                asset = entry["asset_id"]
                if asset not in self.bids:
                    continue
                side = self.bids[asset] if entry["side"] == "BUY" else self.asks[asset]
                price, size = Decimal(entry["price"]), Decimal(entry["size"])
                if size:
                    side[price] = size
                else:
                    side.pop(price, None)

    def snapshot(self, asset_id: str) -> bytes:
        """The current book as a `book` frame stamped with the latest timestamp applied."""
        bids, asks = self.levels(asset_id)
        return msgspec.json.encode(
            {
                "event_type": "book",
                "asset_id": asset_id,
                "market": self.markets[asset_id],
                "bids": [{"price": str(p), "size": str(s)} for p, s in reversed(bids)],
                "asks": [{"price": str(p), "size": str(s)} for p, s in reversed(asks)],
                "timestamp": str(self.clock),
            }
        )

    def levels(self, asset_id: str) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Bids and asks best-first."""
        bids = sorted(((p, s) for p, s in self.bids[asset_id].items() if s), reverse=True)
        asks = sorted((p, s) for p, s in self.asks[asset_id].items() if s)
        return bids, asks


class ReferenceSource:
    """A snapshot source (a sync callable) that serves the reference's current books.

    Tests apply each chunk to the reference under ``lock`` before publishing it, so a snapshot always
    covers everything published. ``failures`` makes that many calls raise first; ``gate``, when given,
    makes calls raise until it is set.
    """

    def __init__(self, reference: ReferenceBooks, *, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.reference = reference
        self.lock = threading.Lock()
        self.calls = 0
        self._failures = failures
        self._gate = gate

    def __call__(self, asset_ids: Sequence[str]) -> list[bytes]:
        self.calls += 1
        if self._failures > 0 or (self._gate is not None and not self._gate.is_set()):
            self._failures -= 1
            raise ConnectionError("snapshot service unavailable (test)")
        with self.lock:
            return [self.reference.snapshot(a) for a in asset_ids if a in self.reference.bids]


# Polymarket's py-clob-client `tests/test_utilities.py` (MIT), restated in FORMAT.md section 9: a book in the
# current ten-field form and the hash the exchange would send with it.
HASH_VECTOR = BookEvent(
    market="0xaabbcc",
    asset_id="100",
    timestamp=123456789,
    bids=[Level("0.3", "100"), Level("0.4", "100")],
    asks=[Level("0.6", "100"), Level("0.7", "100")],
    min_order_size="100",
    tick_size="0.01",
    neg_risk=False,
    last_trade_price="0.5",
    hash="0458ea5755c9f73d64a14636fa5c36ed460ec394",
)


def hashed_books() -> list[bytes]:
    """Every recorded book whose `hash` reproduces from its own fields (the October 2025 WebSocket book
    does not: it lacks the REST metadata), in file order."""
    return [
        fixture_bytes("ws_book_2024-09.json"),  # five fields: no timestamp
        fixture_bytes("rest_book_2024-09.json"),
        fixture_bytes("ws_book_2024-11.json"),  # six: a timestamp
        *(sequence_objects("sequence_2024-12_price_change_v1_changes.txt")[i] for i in (0, 2, 4)),
        *(sequence_objects("sequence_2025-10_price_change_v2.txt")[i] for i in (2, 4)),  # nine: REST metadata
    ]


def spoiled(book: BookEvent) -> BookEvent:
    """``book`` with the size of its best bid changed and its ``hash`` kept."""
    bids = [*book.bids[:-1], Level(book.bids[-1].price, book.bids[-1].size + "1")]
    return msgspec.structs.replace(book, bids=bids)


def market_resolved(market: str, asset_ids: Sequence[str], winner: str, outcome: str, timestamp: int) -> bytes:
    """A ``market_resolved`` frame in the shape Polymarket documents (docs.polymarket.com, market channel;
    no trustworthy recording exists: ``tests/fixtures/polymarket/SOURCES.md``)."""
    return msgspec.json.encode(
        {
            "event_type": "market_resolved",
            "id": "1031769",
            "market": market,
            "assets_ids": list(asset_ids),
            "winning_asset_id": winner,
            "winning_outcome": outcome,
            "event_message": {"id": "125819", "ticker": "t", "slug": "s", "title": "t", "description": "d"},
            "timestamp": str(timestamp),
            "tags": ["stocks"],
        }
    )


def rest_shape(frame: bytes) -> bytes:
    """A `book` frame as the REST API sends it: the same object without `event_type`."""
    book = msgspec.json.decode(frame)
    book.pop("event_type", None)
    return msgspec.json.encode(book)


def as_decimals(pairs: Iterable[tuple[str, str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(p), Decimal(s)) for p, s in pairs]


def event_asset_ids(events: Iterable[PoolEvent], kind: PoolEventKind) -> list[str]:
    """The asset ids named by ``events`` of ``kind``, sorted, with repeats."""
    return sorted(asset_id for event in events if event.kind is kind for asset_id in event.asset_ids or [])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


async def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """`wait_for` for async tests: poll ``predicate`` without blocking the event loop."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# Helper processes multiprocessing keeps for the whole session (not pool workers, never leaked by one).
_MULTIPROCESSING_HELPERS = ("resource_tracker", "forkserver")


def child_pids() -> set[int]:
    """Pids of this process's living children, less multiprocessing's own long-lived helpers."""
    children = set()
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                children.add(child.pid)  # a zombie is a leak too: nobody reaped it
                continue
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if not any(helper in command for helper in _MULTIPROCESSING_HELPERS):
            children.add(child.pid)
    return children


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry = dict(record.msg) if isinstance(record.msg, dict) else {"event": record.getMessage()}
        self.entries.append({**entry, "log_level": record.levelname.lower(), "logger": record.name})


@contextlib.contextmanager
def captured_logs(name: str = "pool") -> Iterator[list[dict[str, object]]]:
    """Every entry the library logs under ``name`` while the block runs, as event dicts with ``log_level``
    and ``logger`` added: the library's logs as an application's logging configuration receives them."""
    logger = logging.getLogger(name)
    capture, level = _Capture(), logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    try:
        yield capture.entries
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
