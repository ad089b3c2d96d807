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


class Router(dict[str, int]):
    """`slot_for` behind a dict: ``router[asset_id]`` is a plain dict hit on the per-message path, and only
    a new asset pays for a BLAKE2b digest (in ``__missing__``)."""

    __slots__ = ("slots",)

    def __init__(self, slots: int) -> None:
        super().__init__()
        if slots < 1:
            raise ValueError(f"a router needs at least one slot, got {slots}")
        self.slots = slots

    def __missing__(self, asset_id: str) -> int:
        if len(self) >= _ROUTE_CACHE_SIZE:
            self.clear()
        slot = self[asset_id] = slot_for(asset_id, self.slots)
        return slot
