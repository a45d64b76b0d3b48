"""A catalog row as a reader gives it, before any check, and what every reader shares."""

from __future__ import annotations

from typing import NamedTuple

KNOWN_FIELDS = ("id", "path", "kind", "popularity", "size", "mtime")
KNOWN_SET = frozenset(KNOWN_FIELDS)
REQUIRED_FIELDS = ("id", "path", "kind", "popularity")
# A line of a text catalog may be at most this long: a longer one is refused and skipped to its end, so a
# file that never ends a line costs bounded memory.
MAX_LINE = 32 * 2**20


class RawRow(NamedTuple):
    """One row as read from a catalog, before validation. (A NamedTuple: a frozen dataclass costs 0.6 s
    per million rows just to construct.)"""

    source: str
    line: int
    fields: dict | None  # None when the line could not be decoded at all
    error: str | None = None
    fp: int | None = None  # a JSON Lines row's line_fingerprint()
