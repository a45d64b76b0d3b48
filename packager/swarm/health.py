"""`packager health`: scrape every tracker of the release for every published torrent (the member index's
own included, reported apart from the shards' buckets), add what our own seeder's status port says, keep it
all in the state (history included) and rewrite the live, unsigned published/swarm.json and swarm.html.

A tracker that fails, is slow or lies is reported and never stops the run. Each source is asked in a thread
of its own against one deadline, and the run goes on when the deadline passes whatever a thread is still
doing (a host name that never resolves included), so a run takes at most the timeout and a little more.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import RemoteError, UsageError
from ..manifest import TorrentEntry
from ..state_scrapes import CountRow, SourceRow, record_run
from ..workspace import Workspace
from .live import swarm_dict, write_live_files
from .model import INDEX_ID, IndexEntry, SwarmView, published_index, swarm_view
from .net import display_url, http_get, safe_text
from .scrape import ScrapeResult, scrape

DEFAULT_TIMEOUT = 15.0
# Past the deadline, how long a source's thread still gets to hand over what it has.
GRACE = 1.0
# The status JSON of a seeder of 10^4 torrents is about 2 MB.
STATUS_MAX_BYTES = 64 * 1024 * 1024
SEEDER = "seeder"


@dataclass(frozen=True)
class HealthReport:
    view: SwarmView
    run: int
    live_files: tuple[Path, ...]
    seconds: float

    def as_dict(self) -> dict:
        return {**swarm_dict(self.view), "live_files": [str(p) for p in self.live_files]}


def health(
    ws: Workspace,
    trackers: Sequence[str] | None = None,
    status_port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    now: str | None = None,
) -> HealthReport:
    """Scrape, record one run in the state, rewrite the live files; see the module's docstring."""
    started = time.monotonic()
    state, config, workspace = ws.state, ws.config, ws.path
    entries = [(sid, TorrentEntry.from_json(text)) for sid, _, text in state.published_entries()]
    if not entries:
        raise UsageError(
            f"{workspace}: nothing is published yet, so there is no swarm to look at",
            hint=f"publish a phase first: `packager publish {workspace} --phase PHASE`",
        )
    urls = list(dict.fromkeys(trackers or [u for tier in config.trackers for u in tier]))
    for url in urls:
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:  # an unclosed [ of an IPv6 host
            scheme = ""
        if scheme not in ("udp", "http", "https"):
            raise UsageError(f"--tracker {url!r}: not a udp://, http:// or https:// tracker URL")
    if not urls and status_port is None:
        raise UsageError(
            "no tracker to scrape: release.toml's [torrents] trackers is empty",
            hint="add trackers there, or pass --tracker URL (or --status-port of our seeder)",
        )
    if not 0 < timeout < float("inf"):  # inf overflows a thread join; nan times every tracker out
        raise UsageError(f"--timeout {timeout:g}: must be a positive number of seconds")
    index = published_index(ws.published_dir)
    # The index's torrent is asked about like a shard's, under INDEX_ID; it stays out of every summary.
    targets: list = entries + ([(INDEX_ID, index)] if index is not None else [])
    hashes = list(dict.fromkeys(h for _, e in targets for h in _swarm_hashes(e)))
    at = now or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tasks: dict[str, Callable[[], object]] = {url: (lambda u=url: scrape(u, hashes, timeout)) for url in urls}
    if status_port is not None:
        tasks[SEEDER] = lambda: _seeder_states(status_port, timeout)
    done = _run_bounded(tasks, timeout)

    sources, rows = [], []
    for url in urls:
        result = done.get(url) or ScrapeResult(
            display_url(url), urlsplit(url).scheme.lower(), error=f"no answer within {timeout:g} s"
        )
        found = _tracker_rows(targets, result)
        sources.append(SourceRow(result.tracker, result.protocol, len(found), result.error, result.seconds))
        rows += found
    if status_port is not None:
        source, found = _seeder_rows(targets, status_port, done.get(SEEDER), timeout)
        sources.append(source)
        rows += found
    run = record_run(state, at, sources, rows)
    view = swarm_view(state, config.name, [p.name for p in config.phases], index=index)
    written = write_live_files(ws.published_dir, view)
    return HealthReport(view, run, written, round(time.monotonic() - started, 3))


def _swarm_hashes(e: TorrentEntry | IndexEntry) -> tuple[str, ...]:
    return tuple(h for h in (e.info_hash_v1, e.info_hash_v2_truncated) if h)


def _run_bounded(tasks: dict[str, Callable[[], object]], timeout: float) -> dict[str, object]:
    """Run each task in a daemon thread; what has finished by the deadline (plus GRACE) is returned."""
    done: dict[str, object] = {}

    def run(key: str, task: Callable[[], object]) -> None:
        try:
            done[key] = task()
        except Exception as e:  # a source's failure is a line in the report, never the end of the run
            done[key] = e

    threads = [
        threading.Thread(target=run, args=(k, t), name=f"health {k}", daemon=True) for k, t in tasks.items()
    ]
    for th in threads:
        th.start()
    deadline = time.monotonic() + timeout + GRACE
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    return dict(done)


def _tracker_rows(entries: list[tuple[int, TorrentEntry | IndexEntry]], result: object) -> list[CountRow]:
    if not isinstance(result, ScrapeResult):
        return []
    rows = []
    for sid, e in entries:
        said = [result.counts[h] for h in _swarm_hashes(e) if h in result.counts]
        if said:
            # A hybrid torrent has two swarms (v1 and v2 hash) that mostly hold the same peers.
            rows.append(
                CountRow(
                    sid,
                    result.tracker,
                    max(c.seeders for c in said),
                    max(c.leechers for c in said),
                    max(c.completed for c in said),
                )
            )
    return rows


def _seeder_states(port: int, timeout: float) -> dict[str, str]:
    """info-hash (v1, or full v2) -> state, from our seeder's status port. RemoteError if unusable."""
    url = f"http://127.0.0.1:{port}/"
    body = http_get(url, STATUS_MAX_BYTES, timeout).body
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise RemoteError(url, "the status port did not send JSON") from None
    torrents = data.get("torrents") if isinstance(data, dict) else None
    if not isinstance(torrents, list):
        raise RemoteError(url, "the status JSON has no list of torrents: is this `packager seed`?")
    states = {}
    for t in torrents:
        if isinstance(t, dict) and isinstance(t.get("info_hash"), str) and isinstance(t.get("state"), str):
            states[t["info_hash"].lower()] = t["state"]
    return states


def _seeder_rows(
    entries: list[tuple[int, TorrentEntry | IndexEntry]], port: int, result: object, timeout: float
) -> tuple[SourceRow, list[CountRow]]:
    """Our seeder is one seeder of each torrent it is seeding right now (it sees its peers, not the swarm,
    so it gives no leecher count)."""
    name = f"{SEEDER} 127.0.0.1:{port}"
    if result is None:
        return SourceRow(name, SEEDER, 0, f"no answer within {timeout:g} s", timeout), []
    if isinstance(result, Exception):
        reason = result.reason if isinstance(result, RemoteError) else safe_text(str(result))
        return SourceRow(name, SEEDER, 0, reason, 0.0), []
    assert isinstance(result, dict)
    rows = []
    for sid, e in entries:
        state = result.get((e.info_hash_v1 or e.info_hash_v2 or "").lower())
        if state is not None:
            rows.append(CountRow(sid, name, 1 if state == "seeding" else 0, None, None))
    return SourceRow(name, SEEDER, len(rows), None, 0.0), rows
