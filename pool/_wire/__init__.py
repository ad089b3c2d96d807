"""The wire both sides share: the channel's messages and framing, and routing (asset id -> slot)."""
