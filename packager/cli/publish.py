"""Commands: publish (being written)."""
