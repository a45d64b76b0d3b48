"""Small helpers shared by several test modules."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import strategies as st

from packager import layout
from packager.manifest import FileEntry, TorrentEntry


def need(binary: str) -> str:
    """The path of a program the test drives, or a skip naming the Debian package list to install."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (Debian packages: see scripts/dev.sh)")
    return path


def sha256_of(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def wait_until(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll until `predicate()` holds or `seconds` pass; every wait in the tests is bounded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def seed_command(
    ws: Path, listen: str, status_port: int, lt_settings: Iterable[tuple[str, object]] = (), lsd: bool = False
) -> list[str]:
    """`packager seed` as a subprocess on loopback: no DHT, status JSON on `status_port`."""
    command = [
        sys.executable,
        "-m",
        "packager.cli",
        "seed",
        str(ws),
        "--listen",
        listen,
        "--no-dht",
        "--status-port",
        str(status_port),
    ]
    if not lsd:
        command.append("--no-lsd")
    return command + [f"--lt={k}={str(v).lower()}" for k, v in lt_settings]


# --- published formats: a fixed entry, and hypothesis strategies for any entry ------------------------------


def torrent_entry(
    name="r-audio-t1-00001", fmt="v1", v1="a" * 40, v2=None, added="2025-01-01T00:00:00Z"
) -> TorrentEntry:
    return TorrentEntry(
        name=name, phase="audio", tier="t1", popularity_min=10, popularity_max=99.5, items=3, data_size=1000,
        format=fmt, piece_size=16384, info_hash_v1=v1, info_hash_v2=v2,
        magnet=f"magnet:?xt=urn:{'btih:' + v1 if v1 else 'btmh:1220' + v2}&dn={name}.tar.zst",
        files=(FileEntry(f"shards/{name}.tar.zst", 900, "1" * 64),
               FileEntry(f"torrents/{name}.tar.zst.torrent", 200, "2" * 64)),
        added=added,
    )  # fmt: skip


WORD = st.from_regex(r"[a-z0-9][a-z0-9_]{0,8}", fullmatch=True)
HEX40 = st.from_regex(r"[0-9a-f]{40}", fullmatch=True)
HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
STAMP = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
NUMBER = st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False)
SIZE = st.integers(0, 2**50)


@st.composite
def torrent_entries(draw) -> TorrentEntry:
    name = f"{draw(WORD)}-{draw(WORD)}-{draw(st.integers(1, 99999)):05d}"
    fmt = draw(st.sampled_from(["v1", "hybrid", "v2"]))
    v1 = draw(HEX40) if fmt != "v2" else None
    v2 = draw(HEX64) if fmt != "v1" else None
    return TorrentEntry(
        name=name,
        phase=draw(WORD),
        tier=draw(st.none() | WORD),
        popularity_min=draw(NUMBER),
        popularity_max=draw(NUMBER),
        items=draw(SIZE),
        data_size=draw(SIZE),
        format=fmt,
        piece_size=draw(st.sampled_from([2**k for k in range(14, 27)])),
        info_hash_v1=v1,
        info_hash_v2=v2,
        magnet=f"magnet:?xt=urn:btih:{v1 or v2}&dn={draw(st.text(max_size=20))}",
        files=(
            FileEntry(layout.shard_file(name), draw(SIZE), draw(HEX64)),
            FileEntry(layout.torrent_file(name), draw(SIZE), draw(HEX64)),
        ),
        added=draw(STAMP),
        obsolete=draw(st.booleans()),
    )


def unique_by_name(items: list[TorrentEntry]) -> list[TorrentEntry]:
    return list({e.name: e for e in items}.values())
