"""Commands: seed (being written)."""
