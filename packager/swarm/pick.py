"""`packager pick`: which torrents a volunteer should seed, within the disk space they offer.

Anna's Archive's rule: rank by (seeders + 0.1 x leechers) x (mean size / size), fewest seeders per byte
first, plus a small random term so that two volunteers asking at the same moment do not all take the same
torrents (`--seed` makes the draw reproducible). Obsolete and embargoed torrents are skipped. Then a greedy
fill: take each torrent in that order if it still fits, skip it if not, and keep going. Equal scores go by
phase order, then name.

The member index's own torrent (members.pack) comes first whenever it has 10 seeders or fewer (or no count
yet) and no --phase is asked for: every lookup and every one-item fetch reads it, and it is a few bytes a
member, so the rule's "seeders per byte" would otherwise rank a needy index behind every needy shard, and a
well-seeded one ahead of nothing. Above 10 seeders it is left out.

The list comes from a workspace (its state's newest health run), a published folder (torrents.json and
swarm.json) or a mirror's URL of those two files. A mirror is not trusted: every reply is bounded in size
and time, an entry that does not have the expected types is ignored (and counted), and a .torrent fetched
for `--format torrent` is written only if its info-hash is the one torrents.json gives.
"""

from __future__ import annotations

import json
import random
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import RemoteError, TorrentError, UsageError
from ..fsutil import write_atomic
from ..layout import (
    CONFIG,
    MEMBER_INDEX,
    MEMBER_INDEX_TORRENT,
    PUBLISHED,
    STATE,
    SWARM_JSON,
    TORRENTS,
    TORRENTS_JSON,
)
from ..torrent import identity
from ..workspace import Workspace
from .live import LiveCounts, read_swarm_counts
from .model import INDEX_PHASE, IndexEntry, index_entry, published_index, swarm_view
from .net import display_url, http_get

LIST_MAX_BYTES = 64 * 1024 * 1024
TORRENT_MAX_BYTES = 10_000_000  # libtorrent's own limit for a .torrent
INDEX_ROOT_MAX_BYTES = 16 * 2**20  # as the member index's reader bounds members/index.json
FETCH_TIMEOUT = 60.0
LEECHER_WEIGHT = 0.1
SPREAD = 0.1  # the random term is drawn from [0, SPREAD): a tenth of a leecher-adjusted seeder
WELL_SEEDED = 10
FORMATS = ("magnet", "torrent", "json", "aria2")
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Candidate:
    name: str
    phase: str
    phase_rank: int  # release order of its phase
    size: int  # bytes a seeder stores
    btih: str | None
    info_hash_v2: str | None
    magnet: str
    torrent: str  # where its .torrent is: an http(s) URL or a local path
    file_name: str  # what to call the .torrent in a watched folder
    seeders: int | None
    leechers: int | None
    obsolete: bool = False
    embargo: bool = False
    member_index: bool = False  # the member index's own torrent, in no phase

    def score(self, mean_size: float) -> float:
        """Anna's Archive's: seeders per byte, relative to the mean size; no count means nobody seeds."""
        return ((self.seeders or 0) + LEECHER_WEIGHT * (self.leechers or 0)) * (mean_size / self.size)


@dataclass(frozen=True)
class Picked:
    candidate: Candidate
    score: float  # with the random term


@dataclass
class PickResult:
    source: str
    budget: int
    seed: int
    picked: list[Picked] = field(default_factory=list)
    considered: int = 0  # torrents ranked (after the phase filter, without obsolete and embargoed)
    skipped_too_big: int = 0
    obsolete: int = 0
    embargoed: int = 0
    malformed: int = 0  # entries of a mirror's list that were ignored
    notes: tuple[str, ...] = ()  # what could not be read but was not needed (a mirror's member index)
    counts_known: int = 0  # candidates with a seeder count
    smallest: int | None = None  # the smallest candidate's size
    min_seeders: int = 0  # the fewest seeders a candidate with a count has

    @property
    def total(self) -> int:
        return sum(p.candidate.size for p in self.picked)

    @property
    def well_seeded(self) -> bool:
        """Every candidate already has more than 10 seeders: the space would help less here."""
        return self.considered > 0 and self.counts_known == self.considered and self.min_seeders > WELL_SEEDED

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "budget": self.budget,
            "seed": self.seed,
            "total_size": self.total,
            "considered": self.considered,
            "skipped_too_big": self.skipped_too_big,
            "obsolete": self.obsolete,
            "embargoed": self.embargoed,
            "malformed": self.malformed,
            "notes": list(self.notes),
            "well_seeded": self.well_seeded,
            "smallest": self.smallest,
            "torrents": [
                {
                    "name": p.candidate.name,
                    "phase": p.candidate.phase,
                    "data_size": p.candidate.size,
                    "btih": p.candidate.btih,
                    "info_hash_v2": p.candidate.info_hash_v2,
                    "seeders": p.candidate.seeders,
                    "leechers": p.candidate.leechers,
                    "score": round(p.score, 6),
                    "magnet_link": p.candidate.magnet,
                    "torrent": p.candidate.torrent,
                }
                for p in self.picked
            ],
        }


# ---- ranking and filling --------------------------------------------------------------------------------


def rank(candidates: Sequence[Candidate], rng: random.Random, spread: float = SPREAD) -> list[Picked]:
    """Every candidate with its score plus a random term in [0, spread), best first; ties by phase order,
    then name. The draws follow (phase order, name), so a seed gives the same order for the same list in
    any order."""
    if not candidates:
        return []
    mean = sum(c.size for c in candidates) / len(candidates)
    stable = sorted(candidates, key=lambda c: (c.phase_rank, c.name))
    scored = [Picked(c, c.score(mean) + rng.random() * spread) for c in stable]
    return sorted(scored, key=lambda p: (p.score, p.candidate.phase_rank, p.candidate.name))


def fill(ranked: Sequence[Picked], budget: int) -> tuple[list[Picked], int]:
    """Greedy: take each in order if it still fits, else skip it and go on. (picked, skipped)."""
    picked, left, skipped = [], budget, 0
    for p in ranked:
        if p.candidate.size <= left:
            picked.append(p)
            left -= p.candidate.size
        else:
            skipped += 1
    return picked, skipped


def pick(
    source: str,
    budget: int,
    phases: Sequence[str] = (),
    seed: int | None = None,
    spread: float = SPREAD,
) -> PickResult:
    if budget <= 0:
        raise UsageError(f"--max-size {budget}: give the disk space to fill, e.g. 2TB")
    if not 0 <= spread <= 1:
        raise UsageError(f"--spread {spread:g}: must be between 0 and 1")
    everything, malformed, label, notes = load_candidates(source)
    known_phases = list(dict.fromkeys(c.phase for c in everything if not c.member_index))
    unknown = [p for p in phases if p not in known_phases]
    if unknown:
        raise UsageError(
            f"--phase {unknown[0]!r}: no such phase in {label}",
            hint=f"phases: {', '.join(known_phases) or '(none published)'}",
        )
    chosen = [c for c in everything if not c.member_index and (not phases or c.phase in phases)]
    candidates = [c for c in chosen if not c.obsolete and not c.embargo]
    seed = secrets.randbits(32) if seed is None else seed
    ranked = rank(candidates, random.Random(seed), spread)
    index = [c for c in everything if c.member_index and not phases and (c.seeders or 0) <= WELL_SEEDED]
    candidates += index
    picked, skipped = fill([Picked(c, 0.0) for c in index] + ranked, budget)
    known = [c.seeders for c in candidates if c.seeders is not None]
    return PickResult(
        source=label,
        budget=budget,
        seed=seed,
        picked=picked,
        considered=len(candidates),
        skipped_too_big=skipped,
        obsolete=sum(c.obsolete for c in chosen),
        embargoed=sum(c.embargo and not c.obsolete for c in chosen),
        malformed=malformed,
        notes=notes,
        counts_known=len(known),
        smallest=min((c.size for c in candidates), default=None),
        min_seeders=min(known, default=0),
    )


# ---- sources --------------------------------------------------------------------------------------------


def load_candidates(source: str) -> tuple[list[Candidate], int, str, tuple[str, ...]]:
    """(candidates, malformed entries ignored, a label for messages, notes on optional files that could not
    be read) from a workspace, a published folder (or its torrents.json) or an http(s) URL of a mirror's
    folder or torrents.json."""
    if re.match(r"^https?://", source, re.IGNORECASE):
        return _from_mirror(source)
    path = Path(source)
    if (path / CONFIG).is_file() and (path / STATE).is_file():
        return _from_workspace(path), 0, str(path), ()
    folder = path.parent if path.name == TORRENTS_JSON else path
    if (folder / TORRENTS_JSON).is_file():
        return (*_from_folder(folder), ())
    raise UsageError(
        f"{source}: neither a workspace, nor a published folder with {TORRENTS_JSON}, nor an http(s) URL",
        hint="pass a workspace, a mirror's folder, or e.g. https://mirror.example/music/torrents.json",
    )


def _from_workspace(workspace: Path) -> list[Candidate]:
    with Workspace.open(workspace) as ws:
        order = [p.name for p in ws.config.phases]
        index = published_index(workspace / PUBLISHED)
        view = swarm_view(ws.state, ws.config.name, order, history=False, index=index)
    if not view.torrents:
        raise UsageError(f"{workspace}: nothing is published yet", hint="publish a phase first")
    rank_of = {p: i for i, p in enumerate(order)}
    out = []
    if index is not None and view.index is not None:
        torrent = str(workspace / PUBLISHED / MEMBER_INDEX_TORRENT)
        index = index.with_trackers_of(t.magnet for t in view.torrents)
        out.append(_index_candidate(index, torrent, view.index.seeders, view.index.leechers))
    for t in view.torrents:
        local = workspace / PUBLISHED / t.torrent_file
        file_name = t.torrent_file.rsplit("/", 1)[-1]
        out.append(
            Candidate(
                name=t.name,
                phase=t.phase,
                phase_rank=rank_of.get(t.phase, len(rank_of)),
                size=t.size,
                btih=t.info_hash_v1,
                info_hash_v2=t.info_hash_v2,
                magnet=t.magnet,
                torrent=str(local if local.is_file() else workspace / t.torrent_file),
                file_name=file_name,
                seeders=t.seeders,
                leechers=t.leechers,
                obsolete=t.obsolete,
            )
        )
    return out


def _read_local(path: Path, limit: int) -> bytes:
    try:
        if not path.is_file():
            raise UsageError(f"{path}: not a regular file")
        if path.stat().st_size > limit:
            raise UsageError(f"{path}: {path.stat().st_size:,} bytes, over the limit of {limit:,}")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise UsageError(f"{path}: over the limit of {limit:,} bytes")
    return data


def _from_folder(folder: Path) -> tuple[list[Candidate], int, str]:
    listing = _read_local(folder / TORRENTS_JSON, LIST_MAX_BYTES)
    swarm = folder / SWARM_JSON
    counts = _swarm_counts(_read_local(swarm, LIST_MAX_BYTES), str(swarm)) if swarm.is_file() else ({}, {})

    def where(entry: dict, file_name: str) -> str:
        local = folder / TORRENTS / file_name
        if local.is_file():
            return str(local)
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            return ""
        return url if re.match(r"^https?://", url) else str(folder / url)

    candidates, malformed = parse_torrents_json(listing, str(folder / TORRENTS_JSON), counts, where)
    _add_index(candidates, published_index(folder), counts[1], str(folder / MEMBER_INDEX_TORRENT))
    return candidates, malformed, str(folder)


def _add_index(
    candidates: list[Candidate], index: IndexEntry | None, by_btih: dict[str, LiveCounts], torrent: str
) -> None:
    """The member index's torrent first, its counts from swarm.json (by its info-hash)."""
    if index is not None:
        index = index.with_trackers_of(c.magnet for c in candidates)
        live = by_btih.get(index.info_hash_v1)
        seeders, leechers = (live.seeders, live.leechers) if live else (None, None)
        candidates.insert(0, _index_candidate(index, torrent, seeders, leechers))


def _index_candidate(index: IndexEntry, torrent: str, seeders: int | None, leechers: int | None) -> Candidate:
    return Candidate(
        name=index.name,
        phase=INDEX_PHASE,
        phase_rank=-1,
        size=index.size,
        btih=index.info_hash_v1,
        info_hash_v2=None,
        magnet=index.magnet,
        torrent=torrent,
        file_name=MEMBER_INDEX_TORRENT.rsplit("/", 1)[-1],
        seeders=seeders,
        leechers=leechers,
        member_index=True,
    )


def _mirror_index(listing_url: str) -> tuple[IndexEntry | None, str | None]:
    """The member index's torrent as a mirror's members/index.json gives it, and a note when the mirror has
    the file but would not give it: the index is optional, so its refusal never stops the shards' pick."""
    url = urljoin(listing_url, MEMBER_INDEX)
    try:
        data = http_get(url, INDEX_ROOT_MAX_BYTES, FETCH_TIMEOUT, redirects=3).body
    except RemoteError as e:
        if e.reason == "HTTP 404":
            return None, None
        return None, f"{display_url(url)}: {e.reason}; the member index's torrent is left out"
    return index_entry(data, display_url(url)), None


def _from_mirror(url: str) -> tuple[list[Candidate], int, str, tuple[str, ...]]:
    try:
        _ = urlsplit(url).port  # a ValueError for a bad host or port
    except ValueError as e:  # an unclosed [ of an IPv6 host, a port over 65535
        raise UsageError(f"{url}: not a valid URL ({e})") from None
    listing_url = url if urlsplit(url).path.endswith(".json") else url.rstrip("/") + "/" + TORRENTS_JSON
    listing = http_get(listing_url, LIST_MAX_BYTES, FETCH_TIMEOUT, redirects=3)
    swarm_url = urljoin(listing.url, SWARM_JSON)
    try:
        swarm = http_get(swarm_url, LIST_MAX_BYTES, FETCH_TIMEOUT, redirects=3)
        counts = _swarm_counts(swarm.body, display_url(swarm_url))
    except RemoteError as e:
        if e.reason != "HTTP 404":
            raise
        counts = ({}, {})  # a mirror without live stats: the counts in torrents.json, if any

    def where(entry: dict, file_name: str) -> str:
        link = entry.get("url")
        return urljoin(listing.url, link) if isinstance(link, str) and link else ""

    candidates, malformed = parse_torrents_json(listing.body, display_url(listing.url), counts, where)
    index, note = _mirror_index(listing.url)
    _add_index(candidates, index, counts[1], urljoin(listing.url, MEMBER_INDEX_TORRENT))
    return candidates, malformed, display_url(listing.url), (note,) if note else ()


def _swarm_counts(data: bytes, label: str) -> tuple[dict[str, LiveCounts], dict[str, LiveCounts]]:
    try:
        return read_swarm_counts(data)
    except ValueError as e:
        raise UsageError(f"{label}: {e}") from None


def parse_torrents_json(
    data: bytes,
    label: str,
    counts: tuple[dict[str, LiveCounts], dict[str, LiveCounts]],
    where: Callable[[dict, str], str],
) -> tuple[list[Candidate], int]:
    """Candidates from a torrents.json (ours, or any list with Anna's Archive's field names); entries
    without a positive data_size, a magnet link and a 40-hex btih (or our 64-hex info_hash_v2) are counted
    as malformed and left out. Counts come from swarm.json (by name, then btih), else from the list."""
    try:
        rows = json.loads(data)
    except (ValueError, RecursionError):
        raise UsageError(f"{label}: not JSON") from None
    if not isinstance(rows, list):
        raise UsageError(f"{label}: not a list of torrents")
    by_name, by_btih = counts
    out, malformed, ranks = [], 0, {}
    for row in rows:
        c = _candidate(row, by_name, by_btih, ranks, where)
        if c is None:
            malformed += 1
        else:
            out.append(c)
    return out, malformed


def _candidate(row, by_name, by_btih, ranks: dict, where) -> Candidate | None:
    if not isinstance(row, dict):
        return None
    size, magnet = row.get("data_size"), row.get("magnet_link")
    btih, v2 = row.get("btih"), row.get("info_hash_v2")
    if type(size) is not int or size <= 0 or not isinstance(magnet, str) or not magnet.startswith("magnet:?"):
        return None
    btih = btih.lower() if isinstance(btih, str) and _HEX40.match(btih) else None
    v2 = v2.lower() if isinstance(v2, str) and _HEX64.match(v2) else None
    if btih is None and v2 is None:
        return None
    display = row.get("display_name")
    name = row.get("name") if isinstance(row.get("name"), str) else display
    if not isinstance(name, str) or not name:
        return None
    phase = row.get("phase") if isinstance(row.get("phase"), str) else row.get("group_name")
    phase = phase if isinstance(phase, str) else ""
    ranks.setdefault(phase, len(ranks))
    live = by_name.get(name) or (by_btih.get(btih) if btih else None)
    seeders = live.seeders if live else _small_int(row.get("seeders"))
    leechers = live.leechers if live else _small_int(row.get("leechers"))
    file_name = display if isinstance(display, str) and _safe_file_name(display) else f"{btih or v2}.torrent"
    return Candidate(
        name=name,
        phase=phase,
        phase_rank=ranks[phase],
        size=size,
        btih=btih,
        info_hash_v2=v2,
        magnet=magnet,
        torrent=where(row, file_name),
        file_name=file_name,
        seeders=seeders,
        leechers=leechers,
        obsolete=row.get("obsolete") is True,
        embargo=row.get("embargo") is True,
    )


def _small_int(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= 10_000_000 else None


def _safe_file_name(name: str) -> bool:
    return (
        name.endswith(".torrent")
        and len(name.encode()) <= 255
        and not name.startswith(".")
        and all(c.isprintable() and c not in "/\\" for c in name)
    )


# ---- outputs --------------------------------------------------------------------------------------------


def aria2_input(result: PickResult) -> str:
    """An aria2c input file (`aria2c -i FILE`): each torrent's .torrent (URL or path), else its magnet."""
    return "".join(f"{p.candidate.torrent or p.candidate.magnet}\n" for p in result.picked)


def write_torrents(result: PickResult, folder: Path) -> list[Path]:
    """Write each picked torrent's .torrent into `folder` (a client's watched folder), atomically, after
    checking its info-hash against the list. A file already there with the same bytes is left alone."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{folder}: cannot create the folder: {e.strerror or e}") from None
    written = []
    for p in result.picked:
        c = p.candidate
        data = _torrent_bytes(c)
        try:
            got = identity(data)
        except TorrentError as e:
            raise RemoteError(c.torrent, f"not a valid .torrent ({e.reason})") from None
        if (c.btih and got.info_hash_v1 != c.btih) or (c.info_hash_v2 and got.info_hash_v2 != c.info_hash_v2):
            raise RemoteError(
                display_url(c.torrent),
                f"its info-hash is {got.info_hash_v1 or got.info_hash_v2}, but the list says "
                f"{c.btih or c.info_hash_v2}; nothing written for it",
            )
        target = folder / c.file_name
        if not (target.is_file() and target.read_bytes() == data):
            write_atomic(target, data)
        written.append(target)
    return written


def _torrent_bytes(c: Candidate) -> bytes:
    if not c.torrent:
        raise UsageError(f"{c.name}: the list gives no .torrent URL", hint="use --format magnet for it")
    if re.match(r"^https?://", c.torrent):
        return http_get(c.torrent, TORRENT_MAX_BYTES, FETCH_TIMEOUT, redirects=3).body
    return _read_local(Path(c.torrent), TORRENT_MAX_BYTES)
