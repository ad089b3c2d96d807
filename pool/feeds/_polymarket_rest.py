"""`PolymarketRestSource`: current order books from Polymarket's CLOB REST API, as a `SnapshotSource`.

The pool calls `fetch` when a worker is replaced, to rebuild the books it held. Books are asked for in
batches (``POST /books``, up to ``batch_size`` ids a request, a few requests at once); if the service
answers that the batch endpoint does not exist, each id is asked for alone (``GET /book?token_id=``).
A request that times out, cannot connect, or gets a 429 or 5xx answer is retried with exponential
backoff and jitter; the whole fetch must still fit in the pool's snapshot timeout (10 s), which the
defaults do. An asset the service does not know is left out of the result (the pool keeps its book
stale and hands it to ``on_resync``); `book` raises `UnknownBookError` for it.

A new HTTP client is made for each fetch, inside the event loop that runs it: recoveries are rare, and a
client bound to one loop would break a pool used under ``with`` (its loop runs in a thread of its own).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import msgspec

from pool.models._logging import get_logger

__all__ = ["DEFAULT_REST_URL", "PolymarketRestSource", "RestSourceError", "UnknownBookError"]

DEFAULT_REST_URL = "https://clob.polymarket.com"
_RETRIABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_NO_BATCH_ENDPOINT = frozenset({404, 405, 501})


class RestSourceError(Exception):
    """The REST service could not be reached or kept failing; the message says what and where."""


class UnknownBookError(RestSourceError, LookupError):
    """The service has no order book for this asset id (it answered 404 to ``GET /book``)."""

    def __init__(self, asset_id: str, detail: str) -> None:
        super().__init__(f"no order book for asset {asset_id}: {detail}")
        self.asset_id = asset_id


class _Book(msgspec.Struct):
    asset_id: str


class PolymarketRestSource:
    """A `SnapshotSource` over ``base_url``'s ``/books`` and ``/book`` endpoints.

    Args:
        base_url: the CLOB REST root (a local server in tests).
        timeout: seconds for one request (connect and read).
        attempts: tries per request before giving up (1 means no retry).
        backoff: seconds before the first retry; doubled each time, with up to 50% jitter added.
        batch_size: asset ids per ``POST /books`` request.
        concurrency: requests in flight at once.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_REST_URL,
        *,
        timeout: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.2,
        batch_size: int = 100,
        concurrency: int = 4,
    ) -> None:
        for name, value in (("timeout", timeout), ("attempts", attempts), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"PolymarketRestSource {name} must be positive, got {value!r}")
        if backoff < 0 or concurrency < 1:
            raise ValueError(f"backoff must be >= 0 and concurrency >= 1, got {backoff!r} and {concurrency!r}")
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._log = get_logger("pool.feeds.polymarket.rest").bind(base_url=self.base_url)

    def __repr__(self) -> str:
        return f"PolymarketRestSource({self.base_url!r})"

    async def fetch(self, asset_ids: Sequence[str]) -> list[bytes]:
        """The current books of as many of ``asset_ids`` as the service knows, as raw JSON objects.

        Raises:
            RestSourceError: a request still failed after every attempt (the pool retries the fetch).
        """
        books: list[bytes] = []
        batches = [list(asset_ids[i : i + self._batch_size]) for i in range(0, len(asset_ids), self._batch_size)]
        limiter = anyio.CapacityLimiter(self._concurrency)
        async with self._client() as client:

            async def one_batch(batch: list[str]) -> None:
                async with limiter:
                    books.extend(await self._batch(client, batch))

            try:
                async with anyio.create_task_group() as tasks:
                    for batch in batches:
                        tasks.start_soon(one_batch, batch)
            except* RestSourceError as failed:  # one clear error, not a group of the same one
                raise failed.exceptions[0] from None
        return books

    async def book(self, asset_id: str) -> bytes:
        """The current book of one asset (``GET /book``), as a raw JSON object.

        Raises:
            UnknownBookError: the service has no book for ``asset_id``.
            RestSourceError: the request still failed after every attempt.
        """
        async with self._client() as client:
            return await self._single(client, asset_id)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)

    async def _batch(self, client: httpx.AsyncClient, batch: list[str]) -> list[bytes]:
        answer = await self._request(client, "POST", "/books", json=[{"token_id": asset_id} for asset_id in batch])
        if answer.status_code in _NO_BATCH_ENDPOINT:
            self._log.info("rest_batch_unavailable", status=answer.status_code, detail="asking one book at a time")
            return [book for book in [await self._single_or_none(client, a) for a in batch] if book is not None]
        _raise_for_status(answer, "POST /books")
        try:
            raw_books = msgspec.json.decode(answer.content, type=list[msgspec.Raw])
            found = {msgspec.json.decode(raw, type=_Book).asset_id for raw in raw_books}
        except msgspec.ValidationError as exc:
            raise RestSourceError(f"POST /books answered something that is not a list of books: {exc}") from None
        missing = [asset_id for asset_id in batch if asset_id not in found]
        if missing:
            self._log.warning("rest_books_missing", count=len(missing), first=missing[0])
        return [bytes(raw) for raw in raw_books]

    async def _single_or_none(self, client: httpx.AsyncClient, asset_id: str) -> bytes | None:
        try:
            return await self._single(client, asset_id)
        except UnknownBookError as exc:
            self._log.warning("rest_book_unknown", asset_id=asset_id, detail=str(exc))
            return None

    async def _single(self, client: httpx.AsyncClient, asset_id: str) -> bytes:
        answer = await self._request(client, "GET", "/book", params={"token_id": asset_id})
        if answer.status_code == 404:
            raise UnknownBookError(asset_id, answer.text.strip() or "404 Not Found")
        _raise_for_status(answer, "GET /book")
        return answer.content

    async def _request(self, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on timeouts, connection errors, 429 and 5xx; other answers are returned."""
        delay, attempt = self._backoff, 1
        while True:
            try:
                answer = await client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if answer.status_code not in _RETRIABLE_STATUS:
                    return answer
                problem = f"HTTP {answer.status_code}"
            if attempt >= self._attempts:
                raise RestSourceError(f"{method} {self.base_url}{path} failed {attempt} times; last: {problem}")
            self._log.warning("rest_retry", method=method, path=path, attempt=attempt, problem=problem)
            await anyio.sleep(delay * (1 + random.random() / 2))
            delay, attempt = delay * 2, attempt + 1


def _raise_for_status(answer: httpx.Response, what: str) -> None:
    if answer.status_code != 200:
        raise RestSourceError(f"{what} answered HTTP {answer.status_code}: {answer.text[:200]}")
