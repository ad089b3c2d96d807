"""Who a frame is for, read without parsing the rest of it: the parent routes frames to workers by these
few fields, and a feed spread over several connections tells its connections' frames apart by them.

Everything but the asset ids (and whether an event is a book) is skipped unparsed, which is what makes
this cheap enough to run on every frame in the one parent process.
"""

import msgspec

__all__ = ["FrameIds", "RouteEntry", "frame_ids_decoder"]


class RouteEntry(msgspec.Struct, gc=False):
    asset_id: str


class FrameIds(msgspec.Struct, gc=False):
    """The only fields read of an event: who it is for."""

    asset_id: str | None = None
    price_changes: list[RouteEntry] | None = None
    event_type: str | None = None
    bids: msgspec.Raw = msgspec.Raw()  # left unparsed; non-empty means a book (REST shapes have no event_type)

    @property
    def is_book(self) -> bool:
        return self.event_type == "book" or (self.event_type is None and len(self.bids) > 0)


# A frame is one event or an array of them. Raises msgspec.DecodeError for anything else.
frame_ids_decoder = msgspec.json.Decoder(FrameIds | list[FrameIds])
