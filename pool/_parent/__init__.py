"""The parent side: the pool's face and the parts behind it."""
