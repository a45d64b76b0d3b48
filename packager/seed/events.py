"""What the seeder reports: events as they happen, snapshots of every torrent, and the closing report. The
library never prints; the CLI renders these, and the status port serves the snapshots as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from .selection import SeedProblem


@dataclass(frozen=True)
class Listening:
    endpoints: tuple[str, ...]
    failed: tuple[str, ...]  # interfaces that could not be opened while others could
    status_url: str | None = None


@dataclass(frozen=True)
class TorrentsLoaded:
    added: int
    resumed: int  # from fast-resume data
    fresh: int  # in seed mode
    not_added: tuple[SeedProblem, ...]
    seconds: float


@dataclass(frozen=True)
class TorrentFault:
    """A torrent stopped seeding: a file error (it is paused) or a failed add."""

    name: str
    info_hash: str
    reason: str


@dataclass(frozen=True)
class Notice:
    text: str


@dataclass(frozen=True)
class Stopped:
    resume_saved: int
    resume_failed: int
    seconds: float


SeedEvent = Listening | TorrentsLoaded | TorrentFault | Notice | Stopped


@dataclass(frozen=True)
class TorrentView:
    name: str
    phase: str
    info_hash: str
    state: str  # seeding | paused | error | checking | loading | ...
    peers: int
    upload_rate: int  # payload bytes per second
    uploaded: int  # all-time payload bytes
    error: str | None = None
    tracker: str | None = None  # the last tracker reply or error, in words


@dataclass(frozen=True)
class SeedSnapshot:
    at: float  # Unix seconds
    uptime: float
    listen: tuple[str, ...]
    torrents: tuple[TorrentView, ...]
    not_added: tuple[SeedProblem, ...]
    rechecked: int  # torrents libtorrent had to hash-check since the start (0 when resume data is used)
    status_url: str | None = None

    @property
    def upload_rate(self) -> int:
        return sum(t.upload_rate for t in self.torrents)

    @property
    def uploaded(self) -> int:
        return sum(t.uploaded for t in self.torrents)

    @property
    def peers(self) -> int:
        return sum(t.peers for t in self.torrents)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.torrents:
            out[t.state] = out.get(t.state, 0) + 1
        if self.not_added:
            out["not added"] = len(self.not_added)
        return out

    def as_dict(self, torrents: bool = True) -> dict:
        """The JSON the status port serves; without the per-torrent list when `torrents` is False."""
        out = {
            "at": datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uptime": round(self.uptime, 1),
            "listen": list(self.listen),
            "torrents_total": len(self.torrents),
            "states": self.counts(),
            "peers": self.peers,
            "upload_rate": self.upload_rate,
            "uploaded": self.uploaded,
            "rechecked": self.rechecked,
            "not_added": [asdict(p) for p in self.not_added],
        }
        if torrents:
            out["torrents"] = [asdict(t) for t in self.torrents]
        return out


@dataclass
class SeedReport:
    """What a seeding run did, for the CLI's closing lines and --json."""

    torrents: int = 0
    resumed: int = 0
    fresh: int = 0
    not_added: list[SeedProblem] = field(default_factory=list)
    faults: list[TorrentFault] = field(default_factory=list)
    uploaded: int = 0
    seconds: float = 0.0
    resume_saved: int = 0
    resume_failed: int = 0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "not_added": [asdict(p) for p in self.not_added],
            "faults": [asdict(f) for f in self.faults],
        }
