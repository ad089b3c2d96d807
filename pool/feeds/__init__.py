"""Market-data sources for the pool: Polymarket's CLOB first (the ``polymarket`` extra).

`PolymarketFeed` streams the market channel into a pool over WebSocket; `PolymarketRestSource` fetches
current books over REST and plugs into the pool as its ``snapshot_source``, so a replaced worker rebuilds
its books from the exchange.
"""

from ._polymarket_feed import DEFAULT_WS_URL, MAX_ASSETS_PER_CONNECTION, PolymarketFeed
from ._polymarket_rest import DEFAULT_REST_URL, PolymarketRestSource, RestSourceError, UnknownBookError

__all__ = [
    "DEFAULT_REST_URL",
    "DEFAULT_WS_URL",
    "MAX_ASSETS_PER_CONNECTION",
    "PolymarketFeed",
    "PolymarketRestSource",
    "RestSourceError",
    "UnknownBookError",
]

for _cls in (PolymarketFeed, PolymarketRestSource, RestSourceError, UnknownBookError):
    _cls.__module__ = __name__  # reprs and docs show the public home, not the private module
del _cls
