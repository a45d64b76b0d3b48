"""Sizes as release.toml and the command line write them ("50GB", "16MiB") and as people read them, and the
torrent choices that config checks at load (the format names, the piece-size bounds).

Each is defined once, here, in a module that imports nothing but `re`: config, torrent, manifest and every
command need them, and `packager verify --pieces`, whose start-up is part of a mirror's wait, must not load
config for them (its dataclasses and tomllib were 10 ms of that start-up).
"""

from __future__ import annotations

import re
from typing import Any

FORMATS = ("v1", "hybrid", "v2")
# BEP 52 requires v2 pieces of at least one 16 KiB merkle leaf; 64 MiB stays far below the 128-256 MiB that
# libtorrent and others refuse, and 64 MiB x 2^12 pieces covers a 256 GiB shard.
PIECE_SIZE_MIN, PIECE_SIZE_MAX = 16 * 1024, 64 * 1024 * 1024

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: Any) -> int:
    """'50GB' -> 50_000_000_000, '16MiB' -> 16_777_216, 4096 -> 4096. ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative size: {value}")
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(n: int | float) -> str:
    """Human-readable size in powers of 1000, as disks and torrents are usually sold and shown."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_binary(n: int) -> str:
    """Sizes that are powers of two (piece and frame sizes) read best in KiB/MiB/GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
