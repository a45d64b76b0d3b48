"""Commands: verify (being written)."""
