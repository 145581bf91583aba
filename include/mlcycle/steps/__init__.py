"""One module per step; each exposes one typed function returning a small frozen result."""
