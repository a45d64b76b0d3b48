"""What every transport shares: the temporary folder of one fetch, the spool a torrent's fetched bytes are
written to (at their own offsets, sparse: disk use is the bytes fetched), and the delivery of one member
from bytes holding its frames (decompressed by the container reader, checked, written atomically)."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..container.reader import write_member
from ..container.scan import content_from_frames
from ..errors import ContainerError, ShardDamaged
from ..member_index import IndexedTorrent, Location

WORK_PREFIX = ".packager-fetch-"


@dataclass
class Delivered:
    """One item written under DIR, and what it cost."""

    location: Location
    file: Path
    via: str  # "local", "http" or "bittorrent"
    source: str  # the shard file, URL or swarm it came from
    bytes_fetched: int  # its share of the bytes transferred for it (shared requests and pieces split evenly)
    seconds: float


@dataclass
class TorrentTransfer:
    """What was transferred for one torrent, over every transport tried."""

    torrent: IndexedTorrent
    bytes_fetched: int = 0
    pieces: list[int] = field(default_factory=list)  # pieces downloaded (BitTorrent)
    refused: list[str] = field(default_factory=list)  # bytes refused or sources that failed, and why
    hash_failures: int = 0  # pieces libtorrent refused (a lying peer), then fetched again
    payload_download: int | None = None  # libtorrent's total_payload_download for the torrent


class Spool:
    """A torrent's fetched bytes at their offsets in a sparse temporary file."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def writer(self, offset: int) -> Callable[[bytes], None]:
        """A sink writing consecutive chunks from `offset` on (for a streamed HTTP body)."""
        position = offset

        def write(chunk: bytes) -> None:
            nonlocal position
            view = memoryview(chunk)
            while view:
                n = os.pwrite(self.fd, view, position)
                view, position = view[n:], position + n

        return write

    def close(self) -> None:
        os.close(self.fd)


class Work:
    """The temporary folder of one fetch: DIR/.packager-fetch-<random>/, removed when the fetch ends,
    whatever happens; one left by a killed fetch is removed by the next fetch into DIR."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f"{WORK_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.folder = out_dir / f"{WORK_PREFIX}{secrets.token_hex(4)}"
        self.folder.mkdir()
        self._spools: dict[int, Spool] = {}

    def spool(self, torrent: IndexedTorrent) -> Spool:
        if torrent.n not in self._spools:
            self._spools[torrent.n] = Spool(self.folder / f"{torrent.n}.spool")
        return self._spools[torrent.n]

    def subfolder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(exist_ok=True)
        return path

    def close(self) -> None:
        for spool in self._spools.values():
            spool.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Work:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def deliver(loc: Location, fd: int, out_dir: Path, label: str) -> Path:
    """Write `loc`'s member under `out_dir` from file `fd` holding its frames at their shard offsets;
    ContainerError or ShardDamaged (nothing written) if those bytes are not its frames or not its content."""
    end = loc.frames_offset + loc.frames_size
    chunks = content_from_frames(
        fd, loc.frames_offset, end, loc.frames_tar_offset, loc.offset, loc.size, label
    )
    return write_member(out_dir, loc, chunks, label)


def try_deliver(loc: Location, fd: int, out_dir: Path, label: str) -> tuple[Path | None, str | None]:
    """(written file, None), or (None, why the bytes were refused)."""
    try:
        return deliver(loc, fd, out_dir, label), None
    except (ContainerError, ShardDamaged) as e:
        return None, e.message


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.start
