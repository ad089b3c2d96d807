"""Which worker slot owns an asset: jump consistent hashing over BLAKE2b.

Why not ``hash()``: Python salts string hashes per process, and the parent and every worker must agree.
Why jump hashing (Lamping & Veach, 2014): it needs no ring or table, spreads keys evenly, and when the
number of slots grows from n to n+1 only 1/(n+1) of the assets move, which a future resharding relies on.
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["Router", "slot_for"]

_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 2862933555777941757

# Router caches asset -> slot. Clearing it when it fills bounds memory against a feed that invents asset
# ids; a real pool holds far fewer assets, so the bound costs nothing in practice (about 200 bytes each).
_ROUTE_CACHE_SIZE = 1_000_000


def slot_for(asset_id: str, slots: int) -> int:
    """Return the slot in ``range(slots)`` that owns ``asset_id``; the same in every process and run."""
    key = int.from_bytes(blake2b(asset_id.encode(), digest_size=8).digest(), "little")
    bucket, jump = -1, 0
    while jump < slots:
        bucket = jump
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


class Router:
    """`slot_for` with a cache, for the per-message path (a dict hit instead of a BLAKE2b digest)."""

    __slots__ = ("_cache", "slots")

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a router needs at least one slot, got {slots}")
        self.slots = slots
        self._cache: dict[str, int] = {}

    def __call__(self, asset_id: str) -> int:
        slot = self._cache.get(asset_id)
        if slot is None:
            if len(self._cache) >= _ROUTE_CACHE_SIZE:
                self._cache.clear()
            slot = self._cache[asset_id] = slot_for(asset_id, self.slots)
        return slot
