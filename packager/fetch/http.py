"""Fetching over HTTP: Range requests for a member's frames against the mirror's shards/ and the torrent's
web seeds (BEP 19 url-list), in turn. Every reply is bounded (http_range: exact Content-Range and size, a
deadline); bytes are checked where they matter, as the member's size, xxh3-128 and SHA-256 from the
authenticated index, so a whole piece never has to be fetched for its SHA-1. Bytes refused, or a URL that
fails, send the member to the next URL.

Members whose frames overlap or touch share one request (their frames are contiguous in the shard)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentProblem, RemoteError
from ..member_index import Location
from ..swarm.net import display_url, http_range
from .work import Clock, Delivered, TorrentTransfer, Work, try_deliver

# A Range reply may take the base timeout (FetchOptions.http_timeout, 30 s) plus a second per MIN_RATE bytes
# (a 5 MB track: 35 s): a server slower than that is taken for a server that never ends.
MIN_RATE = 1 << 20


@dataclass(frozen=True)
class Run:
    """Members whose frames are contiguous: one Range request."""

    start: int
    end: int
    members: tuple[Location, ...]


def runs_of(locations: Iterable[Location]) -> list[Run]:
    """Members grouped into runs of overlapping or adjacent frames, in shard order."""
    out: list[list] = []
    for loc in sorted(locations, key=lambda x: (x.frames_offset, x.id)):
        end = loc.frames_offset + loc.frames_size
        if out and loc.frames_offset <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
            out[-1][2].append(loc)
        else:
            out.append([loc.frames_offset, end, [loc]])
    return [Run(s, e, tuple(m)) for s, e, m in out]


def fetch_over_http(
    locations: list[Location],
    urls: list[str],
    work: Work,
    transfer: TorrentTransfer,
    out_dir: Path,
    note: Callable[[str], None],
    seconds: float = 30.0,
) -> tuple[list[Delivered], list[Location]]:
    """(delivered, not delivered) after trying `urls` in turn for every run of `locations`."""
    spool = work.spool(transfer.torrent)
    size = transfer.torrent.shard_size
    delivered: list[Delivered] = []
    left: list[Location] = []
    dead: set[str] = set()
    for run in runs_of(locations):
        clock = Clock()
        pending = list(run.members)
        for url in urls:
            if not pending or url in dead:
                continue
            start = min(loc.frames_offset for loc in pending)
            end = max(loc.frames_offset + loc.frames_size for loc in pending)
            shown = display_url(url)
            timeout = seconds + (end - start) / MIN_RATE
            try:
                http_range(url, start, end - start, spool.writer(start), timeout, total=size)
            except RemoteError as e:
                dead.add(url)
                transfer.refused.append(e.message)
                note(f"{e.message}; trying the next source")
                continue
            except EnvironmentProblem:
                raise
            transfer.bytes_fetched += end - start
            share = (end - start) // len(pending)
            still = []
            for loc in pending:
                written, why = try_deliver(loc, spool.fd, out_dir, shown)
                if written is None:
                    transfer.refused.append(f"{shown}: {loc.id}: {why}")
                    note(f"{shown} sent bytes that are not {loc.id}'s ({why}); trying the next source")
                    still.append(loc)
                else:
                    delivered.append(Delivered(loc, written, "http", shown, share, clock.seconds()))
            pending = still
        left += pending
    return delivered, left
