"""`packager fetch`: single items of a release, without downloading the shards that hold them.

For each id the member index (read in parts, each part checked) gives the torrent, the shard bytes of the
item's frames and the pieces covering them, its path and its hashes. Those bytes come from the first source
that works: a local copy of the shard (``auto``), the mirror's shards/ and the torrent's web seeds by HTTP
Range requests (``http``, and ``auto`` when one answers), or the swarm (``bittorrent``, and ``auto``
otherwise). The frames are decompressed by the container reader with bounded memory, the content checked
for size, xxh3-128 and SHA-256 and written atomically under DIR by its path, with extract's rules.

Authentication: with a public key, the signed publication statement (trust/) must verify and be no older
than what the trust file accepted; the index root must be the file it lists, every other index chunk is
checked against the SHA-256 the root chain gives, each .torrent against the statement and the index, and so
every byte a member is made of is checked against the signed publication before it is written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .. import layout, trust
from ..container.reader import check_member_name
from ..errors import EnvironmentProblem, PackagerError, RemoteError, UntrustedManifest, UsageError
from ..member_index import IndexedTorrent, Location, MemberIndex
from ..torrent import METAINFO_MAX_BYTES
from .bittorrent import SwarmPack, SwarmSettings, fetch_from_swarm
from .http import fetch_over_http
from .source import Source, open_source
from .work import Clock, Delivered, TorrentTransfer, Work, try_deliver

__all__ = ["FetchOptions", "FetchReport", "SwarmSettings", "Via", "fetch"]

SIGNATURE_MAX = 64 * 1024


class Via(StrEnum):
    AUTO = "auto"
    HTTP = "http"
    BITTORRENT = "bittorrent"


@dataclass(frozen=True)
class FetchOptions:
    via: Via = Via.AUTO
    pubkey: str | None = None  # a .pub file (path or text) or its base64 line; None: nothing authenticated
    trust_file: Path | None = None  # None: trust.default_trust_file()
    http_timeout: float = 30.0  # seconds for each published file or index part
    swarm: SwarmSettings = field(default_factory=SwarmSettings)


@dataclass
class FetchReport:
    source: str
    out_dir: Path
    items: list[Delivered]
    torrents: list[TorrentTransfer]
    index_bytes: int  # bytes of the member index read (root, directory, parts, torrent chunks)
    authenticated: str | None  # "publication N, key K" when a public key checked everything
    seconds: float
    notes: list[str] = field(default_factory=list)
    index_swarm_bytes: int | None = None  # payload downloaded through the index's torrent, when it was used

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "out_dir": str(self.out_dir),
            "authenticated": self.authenticated,
            "index_bytes": self.index_bytes,
            "index_swarm_bytes": self.index_swarm_bytes,
            "seconds": round(self.seconds, 3),
            "items": [
                {
                    "id": d.location.id,
                    "path": d.location.path,
                    "file": str(d.file),
                    "size": d.location.size,
                    "sha256": d.location.sha256,
                    "torrent": d.location.torrent.name,
                    "pieces": [d.location.first_piece, d.location.last_piece],
                    "frames_bytes": [
                        d.location.frames_offset,
                        d.location.frames_offset + d.location.frames_size,
                    ],
                    "via": d.via,
                    "from": d.source,
                    "bytes_fetched": d.bytes_fetched,
                    "seconds": round(d.seconds, 3),
                }
                for d in self.items
            ],
            "torrents": [
                {
                    "torrent": t.torrent.name,
                    "shard_size": t.torrent.shard_size,
                    "piece_size": t.torrent.piece_size,
                    "bytes_fetched": t.bytes_fetched,
                    "pieces": t.pieces,
                    "payload_download": t.payload_download,
                    "hash_failures": t.hash_failures,
                    "refused": t.refused,
                }
                for t in self.torrents
            ],
            "notes": self.notes,
        }


def fetch(
    source: str,
    ids: Iterable[str],
    out_dir: Path,
    options: FetchOptions = FetchOptions(),  # noqa: B008 - frozen
    on_note: Callable[[str], None] | None = None,
) -> FetchReport:
    """Fetch the items `ids` of the release at `source` into `out_dir` (see the module's docstring).

    UsageError (exit 2) for an id the index does not hold (before anything is downloaded), an unsafe or
    repeated path, or a source that is not a release; UntrustedManifest / PublicationRefused (exit 2) for a
    file that fails authentication; NoPeers and RemoteError (exit 3) when no source delivers in time.
    Items already written stay (each complete and checked); nothing partial is left under `out_dir`."""
    clock = Clock()
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        if on_note is not None:
            on_note(text)

    src = open_source(source, options.http_timeout)
    statement = _statement(src, options)
    root = statement.digest(layout.MEMBER_INDEX).sha256 if statement is not None else None
    index = MemberIndex(src.files, root, where=f"{src.label.rstrip('/')}/{layout.MEMBER_INDEX}")
    out_dir = Path(out_dir)
    works: list[Work] = []

    def work() -> Work:
        if not works:
            works.append(Work(out_dir))
        return works[0]

    pack = _PackOrSwarm(src, statement, index, options, work, note)
    index.files = pack
    try:
        wanted = list(dict.fromkeys(ids))
        found, missing = index.locate(wanted)
        if missing:
            raise UsageError(
                f"{src.label}: not in the member index: {', '.join(missing[:20])}"
                + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""),
                hint="ids are the catalog's; only published phases are indexed (`packager locate` says)",
            )
        _check_paths(src, found)
        delivered, transfers = _fetch_all(src, statement, found, work(), out_dir, options, note)
        index_swarm = pack.swarm.downloaded() if pack.swarm is not None else None
    finally:
        pack.close()
        for w in works:
            w.close()
    if statement is not None and statement.authenticated:
        trust.TrustFile(options.trust_file).accept(statement)
    order = {ident: k for k, ident in enumerate(wanted)}
    delivered.sort(key=lambda d: order[d.location.id])
    authenticated = (
        f"publication {statement.publication}, key {statement.key_id}"
        if statement is not None and statement.authenticated
        else None
    )
    return FetchReport(
        src.label,
        out_dir,
        delivered,
        transfers,
        index.bytes_read,
        authenticated,
        clock.seconds(),
        notes,
        index_swarm,
    )


def _fetch_all(
    src: Source, statement, found: list[Location], work: Work, out_dir: Path, options: FetchOptions, note
) -> tuple[list[Delivered], list[TorrentTransfer]]:
    """Each torrent's items from a local shard or HTTP, then what is left from the swarm, in one session."""
    groups: dict[int, list[Location]] = {}
    for loc in found:
        groups.setdefault(loc.torrent.n, []).append(loc)
    delivered: list[Delivered] = []
    transfers: list[TorrentTransfer] = []
    for_swarm = []
    for locations in groups.values():
        transfer = TorrentTransfer(locations[0].torrent)
        transfers.append(transfer)
        done, left, metainfo = _without_swarm(
            src, statement, locations, transfer, work, out_dir, options, note
        )
        delivered += done
        if left:
            metainfo = metainfo or _torrent(src, statement, transfer.torrent, options)
            for_swarm.append((transfer, metainfo, left))
    if for_swarm:
        delivered += fetch_from_swarm(for_swarm, work, out_dir, options.swarm, note)
    return delivered, transfers


class _PackOrSwarm:
    """The source's published files; the member index's pack through its own torrent when the source does
    not have the pack (a folder without members/members.pack, a mirror that does not serve it)."""

    def __init__(self, src: Source, statement, index: MemberIndex, options: FetchOptions, work, note):
        self.src, self.statement, self.index, self.options, self.work, self.note = (
            src, statement, index, options, work, note
        )  # fmt: skip
        self.swarm: SwarmPack | None = None

    def read_file(self, name: str, limit: int) -> bytes:
        return self.src.files.read_file(name, limit)

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        if self.swarm is None:
            try:
                return self.src.files.read_range(name, offset, size)
            except (UsageError, RemoteError) as e:
                made = self.index.root.torrent
                if self.options.via == Via.HTTP or made is None:
                    raise
                self.note(f"{e.message}; reading the member index through its torrent")
                data = self.src.files.read_file(made.file, METAINFO_MAX_BYTES)
                if self.statement is not None:
                    self.statement.check(made.file, data)
                self.swarm = SwarmPack(data, made.info_hash_v1, self.work(), self.options.swarm, self.note)
        return self.swarm.read(offset, size)

    def close(self) -> None:
        if self.swarm is not None:
            self.swarm.close()


def _statement(src: Source, options: FetchOptions) -> trust.Statement | None:
    """The publication statement, authenticated with the public key (required then); without a key, the
    statement if the source has one (it is then only checked for consistency, and proves nothing)."""
    where = f"{src.label.rstrip('/')}/{layout.STATEMENT}"
    pubkey = options.pubkey
    if pubkey and "\n" not in pubkey:  # a .pub file's path or the base64 line, not the file's text
        pubkey = trust.public_key_text(pubkey)
    try:
        data = src.files.read_file(layout.STATEMENT, trust.MAX_STATEMENT_BYTES)
        signature = (
            src.files.read_file(layout.signature_name(layout.STATEMENT), SIGNATURE_MAX)
            if options.pubkey
            else None
        )
    except PackagerError as e:
        if options.pubkey is None:
            return None
        raise UntrustedManifest(
            where,
            f"cannot be read, so nothing can be authenticated ({e.message})",
            hint="a signed release publishes publication.json and its .minisig beside release.json",
        ) from None
    trust_file = trust.TrustFile(options.trust_file) if options.pubkey else None
    return trust.load_statement(data, signature, pubkey, trust_file, where=where)


def _check_paths(src: Source, found: list[Location]) -> None:
    seen: dict[str, str] = {}
    for loc in found:
        check_member_name(f"{src.label} ({loc.torrent.name})", loc.path)
        if loc.path in seen:
            raise UsageError(
                f"{seen[loc.path]} and {loc.id} have the same path {loc.path!r}; fetch them apart"
            )
        seen[loc.path] = loc.id


def _torrent(src: Source, statement, torrent: IndexedTorrent, options: FetchOptions) -> bytes:
    """The torrent's .torrent, checked against the index (and the statement, when there is one)."""
    data = src.torrent_file(torrent.torrent_file, options.http_timeout)
    digest = hashlib.sha256(data).hexdigest()
    if digest != torrent.torrent_sha256 or len(data) != torrent.torrent_size:
        raise UntrustedManifest(
            f"{src.label.rstrip('/')}/{torrent.torrent_file}",
            f"SHA-256 {digest} ({len(data)} bytes), the member index says {torrent.torrent_sha256} "
            f"({torrent.torrent_size} bytes)",
            hint="the mirror's .torrent is not the published one; fetch it again or use another mirror",
        )
    if statement is not None:
        statement.check(torrent.torrent_file, data)
    return data


def _web_seeds(metainfo: bytes) -> list[str]:
    """The torrent's web seed URLs for its one file (BEP 19: a URL ending in / names a folder)."""
    import libtorrent as lt  # 0.3 s to import: only where a torrent is read

    params = lt.load_torrent_buffer(metainfo)
    name = params.ti.name()
    return [url + name if url.endswith("/") else url for url in params.url_seeds]


def _without_swarm(
    src: Source,
    statement,
    locations: list[Location],
    transfer: TorrentTransfer,
    work: Work,
    out_dir: Path,
    options: FetchOptions,
    note: Callable[[str], None],
) -> tuple[list[Delivered], list[Location], bytes | None]:
    """What a local shard and HTTP deliver: (delivered, left for the swarm, the .torrent if it was read)."""
    torrent = transfer.torrent
    delivered: list[Delivered] = []
    left = locations
    metainfo = None
    local = src.local_shard(torrent.shard_file, torrent.shard_size) if options.via == Via.AUTO else None
    if local is not None:
        fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        try:
            still = []
            for loc in left:
                clock = Clock()
                written, why = try_deliver(loc, fd, out_dir, str(local))
                if written is None:
                    transfer.refused.append(f"{local}: {loc.id}: {why}")
                    note(f"{local}: {why}; fetching {loc.id} elsewhere")
                    still.append(loc)
                else:
                    delivered.append(Delivered(loc, written, "local", str(local), 0, clock.seconds()))
            left = still
        finally:
            os.close(fd)
    if not left or options.via == Via.BITTORRENT:
        return delivered, left, metainfo
    urls = [u for u in [src.mirror_url(torrent.shard_file)] if u]
    try:
        metainfo = _torrent(src, statement, torrent, options)
        urls += [u for u in _web_seeds(metainfo) if u not in urls]
    except (EnvironmentProblem, UsageError) as e:  # no .torrent here: the mirror's own shards/ still may do
        if options.via == Via.HTTP and not urls:
            raise
        note(f"{torrent.torrent_file}: {e.message}")
    if not urls:
        if options.via == Via.HTTP:
            raise UsageError(
                f"{torrent.name}: no HTTP source: the torrent has no web seed and {src.label} is not a URL",
                hint="give a mirror's URL as SOURCE, or use --via bittorrent",
            )
        return delivered, left, metainfo
    done, left = fetch_over_http(left, urls, work, transfer, out_dir, note, options.http_timeout)
    delivered += done
    if left and options.via == Via.HTTP:
        raise HttpFailed(torrent.name, [loc.id for loc in left], transfer.refused)
    return delivered, left, metainfo


class HttpFailed(EnvironmentProblem):
    """Every HTTP source failed or sent bytes that were refused."""

    def __init__(self, torrent: str, ids: list[str], reasons: list[str]):
        self.torrent, self.ids, self.reasons = torrent, ids, reasons
        super().__init__(
            f"{torrent}: no HTTP source delivered {', '.join(ids)}: " + "; ".join(reasons[-4:]),
            hint="try another mirror, or --via bittorrent (or auto) to get them from the swarm",
        )
