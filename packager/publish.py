"""Publish a phase: release.json, torrents.json, SHA256SUMS (+ minisign), feed.xml, index.html, the
opentracker whitelist, the member index and the phase's .torrent files, under ``DIR/published/``, and the
signed publication statement that lists every one of them (trust/).

A phase is published only when every one of its shards is built. Each newly published torrent's release.json
entry is frozen in state.sqlite (``published_torrents``) in the same transaction that records the
publication, and every published file is rendered from those frozen entries alone: publishing again changes
no byte, and a later phase only appends. A new statement (the next publication number) is written only when
the folder's files differ from those the last statement lists, or its `valid_until` needs renewing. The
folder is written as ``published.tmp-<random>/`` and swapped into place in one step (renameat2
RENAME_EXCHANGE), so no reader ever sees a half-written published/.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, layout, trust
from .config import ReleaseConfig
from .container.format import SeekTableError, read_frame_spans
from .errors import PackagerError, PublishError
from .fsutil import file_sha256, fsync_dir, fsync_file, write_durable
from .hashing import ShardHashes
from .index_rows import add_built_members
from .manifest import (
    FileEntry,
    PhaseEntry,
    TorrentEntry,
    json_number,
    listed_torrents,
    release_json,
    sha256sums,
    torrents_json,
    whitelist,
)
from .member_index import MemberIndex, MemberIndexWriter
from .pages import STAMP, feed_xml, index_html, parse_stamp
from .state import ShardRow, TorrentFacts
from .swarm.live import live_files
from .swarm.model import published_index, swarm_view
from .torrent import TorrentSpec, build_metainfo, identity, read_piece_hashes, web_seed_url, write_torrent
from .workspace import Workspace

if TYPE_CHECKING:
    from .signing import SigningKey  # minisign: publish only calls a key its caller loaded


@dataclass(frozen=True)
class PublishReport:
    phase: str
    published_at: str
    added: list[str]  # torrents newly published by this run
    torrents: int  # torrents in the release now
    folder: Path
    signed_by: str | None  # minisign key id
    publication: int = 0  # the number of the statement published/ now holds

    @property
    def index_html(self) -> Path:
        return self.folder / layout.INDEX_HTML

    def as_dict(self) -> dict:
        return {
            "phase": self.phase,
            "published_at": self.published_at,
            "added": self.added,
            "torrents": self.torrents,
            "folder": str(self.folder),
            "index_html": str(self.index_html),
            "signed_by": self.signed_by,
            "publication": self.publication,
        }


@dataclass(frozen=True)
class _Published:
    shard_id: int
    entry: TorrentEntry


def _now() -> str:
    return datetime.now(UTC).strftime(STAMP)


# ---- the entry point ------------------------------------------------------------------------------------


def publish(
    ws: Workspace,
    phase: str,
    key: Callable[[], SigningKey] | None = None,
    now: str | None = None,
    refresh: bool = False,
) -> PublishReport:
    """Publish `phase` (all of its shards must be built) and rewrite published/ from the frozen entries.

    `key` is called once the phase is known to be publishable (so a password prompt never precedes a
    refusal). Idempotent: with nothing new, the folder is rewritten to the same bytes, unless `refresh`
    asks for a new statement (a new publication number and `valid_until`) over the same files.
    """
    state = ws.state
    ws.config.phase(phase)  # ConfigError naming the phases
    with ws.locked("publish"):
        _remove_leftovers(ws.path)
        existing = [
            _Published(sid, TorrentEntry.from_json(text)) for sid, _, text in state.published_entries()
        ]
        fresh = _fresh_shards(ws, phase, {p.shard_id for p in existing})
        signing = key() if key is not None else None
        stamp = now or _now()
        publications = state.publications()
        first_time = phase not in dict(publications)
        published_at = stamp if first_time else dict(publications)[phase]
        if first_time:
            publications.append((phase, published_at))
        added = [_Published(row.id, _entry(row, facts, stamp)) for row, facts in fresh]
        everything = existing + added
        phases = [
            PhaseEntry(name, at, sum(p.entry.phase == name for p in everything)) for name, at in publications
        ]
        final = ws.published_dir
        tmp = ws.path / f"{layout.PUBLISHED_TMP}{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _write_folder(tmp, final, ws, everything, phases, signing)
            statement = _write_statement(tmp, ws, signing, stamp, refresh)
            if added or first_time or statement.new:
                frozen = [(p.shard_id, phase, p.entry.to_json()) for p in added]
                with state.transaction():
                    state.record_publication(phase, published_at, frozen)
                    if statement.new:
                        state.record_statement(*statement.row)
            # Killed between the commit and the swap, the next publish writes the same folder again.
            _swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return PublishReport(
        phase,
        published_at,
        [p.entry.name for p in added],
        len(everything),
        final,
        signing.key_id if signing else None,
        statement.row[0],
    )


def _fresh_shards(ws: Workspace, phase: str, published: set[int]) -> list[tuple[ShardRow, TorrentFacts]]:
    """The phase's shards not yet published, each with its build facts; PublishError listing every shard
    that stops the phase from being published."""
    state, workspace = ws.state, ws.path
    shards = state.shards(phase=phase)
    if not shards:
        raise PublishError(
            phase,
            "the phase has no shards",
            hint=f"plan and build it first: `packager plan DIR`, then `packager build DIR --phase {phase}`",
        )
    fresh = [s for s in shards if s.id not in published]
    unbuilt = [
        f"{s.name}: {s.state}" + (f" ({s.error})" if s.error else "") for s in fresh if s.state != "built"
    ]
    if unbuilt:
        raise PublishError(
            phase,
            f"{len(unbuilt)} of its {len(shards)} shards are not built; nothing was published",
            unbuilt,
            hint=f"build them: `packager build {workspace} --phase {phase}`",
        )
    out, problems = [], []
    for s in fresh:
        facts = state.torrent_facts(s.id)
        if facts is None:
            problems.append(f"{s.name}: built, but has no torrent (run `packager torrent {workspace}`)")
            continue
        problems += _check_files(workspace, facts)
        out.append((s, facts))
    if problems:
        raise PublishError(phase, "shard or torrent files do not match what the build recorded", problems)
    return out


def _check_files(workspace: Path, facts: TorrentFacts) -> list[str]:
    problems = []
    shard = workspace / facts.file
    try:
        if shard.stat().st_size != facts.length:
            problems.append(f"{facts.file}: {shard.stat().st_size} bytes, the build recorded {facts.length}")
    except FileNotFoundError:
        problems.append(f"{facts.file}: missing (run `packager build {workspace}` to write it again)")
    torrent = workspace / facts.torrent_file
    if not torrent.is_file():
        problems.append(f"{facts.torrent_file}: missing (run `packager torrent {workspace}`)")
    elif file_sha256(torrent) != facts.torrent_sha256:
        problems.append(f"{facts.torrent_file}: its SHA-256 is not the one recorded when it was made")
    return problems


def _entry(row: ShardRow, facts: TorrentFacts, added: str) -> TorrentEntry:
    return TorrentEntry(
        name=row.name,
        phase=row.phase,
        tier=row.tier or None,
        popularity_min=json_number(row.pop_min),
        popularity_max=json_number(row.pop_max),
        items=row.items,
        data_size=row.bytes,
        format=facts.format,
        piece_size=facts.piece_size,
        info_hash_v1=facts.info_hash_v1,
        info_hash_v2=facts.info_hash_v2,
        magnet=facts.magnet,
        added=added,
        files=(
            FileEntry(facts.file, facts.length, facts.sha256),
            FileEntry(facts.torrent_file, facts.torrent_size, facts.torrent_sha256),
        ),
    )


# ---- writing the folder ---------------------------------------------------------------------------------


def _write_folder(
    tmp: Path,
    final: Path,
    ws: Workspace,
    everything: list[_Published],
    phases: list[PhaseEntry],
    signing: SigningKey | None,
) -> None:
    config, state = ws.config, ws.state
    entries = [p.entry for p in everything]
    (tmp / layout.TORRENTS).mkdir()
    for e in entries:
        _place_torrent(e, tmp, final, ws.path)
    # The member index first: SHA256SUMS (signed) lists its files, so that what a lookup reads is
    # authenticated (the root directly; each chunk through the SHA-256 the root gives for it).
    index_files, index_hash = _write_member_index(tmp, final, ws, everything)
    sums = sha256sums(entries, index_files)
    release = release_json(config.name, __version__, phases, entries)
    files = {
        layout.RELEASE_JSON: release,
        layout.TORRENTS_JSON: torrents_json(listed_torrents(config.name, config.base_url, entries)),
        layout.SHA256SUMS: sums,
        layout.WHITELIST: whitelist([*entries, IndexSwarm(index_hash)]),
        layout.FEED: feed_xml(config.name, config.base_url, entries),
        layout.INDEX_HTML: index_html(config, phases, entries, signing, _index_magnet(tmp)),
    }
    if signing is not None:
        # The newest publication date, not the clock: the same key then signs to the same bytes.
        latest = max([e.added for e in entries] + [p.published_at for p in phases])
        when = int(parse_stamp(latest).timestamp())
        for name in (layout.SHA256SUMS, layout.RELEASE_JSON):
            files[layout.signature_name(name)] = signing.sign(files[name], name, when)
    for name, data in files.items():
        write_durable(tmp / name, data)
    # Live and advisory: rendered from the state's scrape history and rewritten by `packager health`; never
    # part of what is signed or checksummed (swarm/live.py).
    view = swarm_view(
        state,
        config.name,
        [p.name for p in config.phases],
        entries=_entry_pairs(everything),
        index=published_index(tmp),
    )
    for name, data in live_files(view).items():
        write_durable(tmp / name, data)
    fsync_dir(tmp / layout.TORRENTS)
    fsync_dir(tmp)


def _index_magnet(tmp: Path) -> str:
    """The member index torrent's magnet, as its .torrent gives it (trackers and web seeds included)."""
    return identity((tmp / layout.MEMBER_INDEX_TORRENT).read_bytes()).magnet


def _entry_pairs(everything: list[_Published]) -> list[tuple[int, TorrentEntry]]:
    return [(p.shard_id, p.entry) for p in everything]


def _place_torrent(e: TorrentEntry, tmp: Path, final: Path, workspace: Path) -> None:
    """Put the published .torrent in place: the previous published copy (hard-linked) or the workspace's,
    whichever has the SHA-256 frozen in the entry. A torrent re-made since (new trackers) is not taken."""
    target = tmp / e.torrent_file
    for source, link in ((final / e.torrent_file, True), (workspace / e.torrent_file, False)):
        if (
            source.is_file()
            and source.stat().st_size == e.torrent.size
            and file_sha256(source) == e.torrent.sha256
        ):
            if link:
                with contextlib.suppress(OSError):
                    os.link(source, target)
                    return
            shutil.copyfile(source, target)
            fsync_file(target)
            return
    raise PublishError(
        e.torrent_file,
        "no copy with the SHA-256 it was published with is left "
        f"({e.torrent.sha256}); published torrents are never rewritten",
        hint=f"restore it from a backup of {layout.PUBLISHED}/ or of the workspace",
    )


@dataclass(frozen=True)
class IndexSwarm:
    """The member index's own torrent, as the whitelist sees it."""

    info_hash_v1: str
    info_hash_v2: str | None = None


_INDEX_FILES = (layout.MEMBER_INDEX, layout.MEMBER_INDEX_PACK, layout.MEMBER_INDEX_TORRENT)


def _write_member_index(
    tmp: Path, final: Path, ws: Workspace, everything: list[_Published]
) -> tuple[list[tuple[str, str]], str]:
    """Write members/ and the index's torrent into `tmp`: ((path, SHA-256) of those files, the torrent's
    info-hash). The previous index is linked as it is when it lists the same torrents, and extended when it
    lists the first ones (its members are read from it, only the new shards' seek tables are read);
    otherwise it is built anew from every shard."""
    names = [p.entry.name for p in everything]
    previous, known = None, []
    try:
        previous = MemberIndex.open(final)
        known = previous.torrent_names()
    except PackagerError:  # none, damaged or from another version: built anew
        previous, known = None, []
    folder = tmp / layout.MEMBER_INDEX_DIR
    made = previous.root.torrent if previous is not None else None
    if known and known == names and made is not None and _link_index(final, tmp):
        return [(f, file_sha256(tmp / f)) for f in _INDEX_FILES], made.info_hash_v1
    base = previous if known and names[: len(known)] == known else None
    start = len(known) if base is not None else 0
    config = ws.config
    with MemberIndexWriter(folder, config.name, base, private=config.private, source=config.source) as writer:
        add_built_members(
            writer,
            ws.state.path,
            [
                (n, p.entry, p.shard_id, (str(ws.file(p.entry.shard.path)), p.entry.name))
                for n, p in enumerate(everything[start:], start + 1)
            ],
            _shard_frames,
        )
        written = writer.finish()
    fsync_dir(folder)
    metainfo = index_metainfo(config, written.hashes)
    write_durable(tmp / layout.MEMBER_INDEX_TORRENT, metainfo)
    files = [
        (layout.MEMBER_INDEX, written.root_sha256),
        (layout.MEMBER_INDEX_PACK, written.pack_sha256),
        (layout.MEMBER_INDEX_TORRENT, hashlib.sha256(metainfo).hexdigest()),
    ]
    return files, written.torrent.info_hash_v1


def index_metainfo(config: ReleaseConfig, hashes: ShardHashes) -> bytes:
    """The index's .torrent: a single-file v1 torrent of the pack, with the release's trackers, and as web
    seed the pack's URL beside each web seed folder that serves a mirror's shards/ (the pack lives in
    members/, not shards/, so a web seed folder named otherwise gives the index none)."""
    name = layout.MEMBER_INDEX_PACK_NAME
    seeds = tuple(
        web_seed_url(base.rstrip("/")[: -len(layout.SHARDS)] + layout.MEMBER_INDEX_DIR, name)
        for base in config.web_seeds
        if base.rstrip("/").endswith("/" + layout.SHARDS)
    )
    spec = TorrentSpec(
        name=name,
        hashes=hashes,
        format="v1",
        trackers=config.trackers,
        web_seeds=seeds,
        private=config.private,
        source=config.source,
        created_by=f"packager {__version__}",
        creation_date=config.creation_date,
    )
    return build_metainfo(spec)


@dataclass(frozen=True)
class IndexTorrentRemade:
    info_hash_v1: str  # of the published pack's torrent
    written: Path | None  # the workspace's torrents/members.torrent; None when it was not written
    reason: str = ""  # why not


def remake_index_torrent(config: ReleaseConfig, workspace: Path) -> IndexTorrentRemade | None:
    """`packager torrent` for the member index: write the workspace's torrents/members.torrent for the
    published pack with release.toml's current trackers and web seeds, from the published .torrent's piece
    hashes (the pack is not read), so `packager seed` and `push` announce it where the shards now announce.
    None before the first publish. Not written when the config would change the info-hash (private flag,
    source tag): the published index keeps its torrent, as a published shard keeps its own."""
    folder = Path(workspace) / layout.PUBLISHED
    published = folder / layout.MEMBER_INDEX_TORRENT
    if not published.is_file():
        return None
    with MemberIndex.open(folder) as index:
        made, pack_sha256 = index.root.torrent, index.root.pack_sha256
    if made is None:
        return None
    pieces = read_piece_hashes(published.read_bytes(), published, layout.MEMBER_INDEX_PACK_NAME)
    hashes = ShardHashes(pieces.length, bytes.fromhex(pack_sha256), pieces.piece_size, pieces.v1 or b"")
    metainfo = index_metainfo(config, hashes)
    got = identity(metainfo).info_hash_v1
    target = Path(workspace) / layout.MEMBER_INDEX_TORRENT
    if got != made.info_hash_v1:
        target.unlink(missing_ok=True)
        return IndexTorrentRemade(
            made.info_hash_v1,
            None,
            f"release.toml (private or source) would change its info-hash to {got}: the published "
            "torrent is seeded as it is",
        )
    write_torrent(target, metainfo)
    return IndexTorrentRemade(made.info_hash_v1, target)


def _link_index(final: Path, tmp: Path) -> bool:
    (tmp / layout.MEMBER_INDEX_DIR).mkdir()
    try:
        for name in _INDEX_FILES:
            os.link(final / name, tmp / name)
    except OSError:
        shutil.rmtree(tmp / layout.MEMBER_INDEX_DIR)
        (tmp / layout.MEMBER_INDEX_TORRENT).unlink(missing_ok=True)
        return False
    return True


def _shard_frames(shard: tuple) -> list[tuple[int, int, int]]:
    """The seek table of a published shard, (its path on this machine, its name): what its members'
    frames are, as container.read_frame_spans gives them. Run by the index's worker processes too, so it
    takes names, not objects."""
    path, name = shard
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return read_frame_spans(lambda size, offset: os.pread(fd, size, offset), os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except (OSError, SeekTableError) as e:
        reason = e.whole_file if isinstance(e, SeekTableError) else f"cannot read it: {e.strerror}"
        raise PublishError(
            name,
            f"cannot read the shard's seek table for the member index: {reason}",
            hint="the index needs each published shard once; put the shard back in shards/",
        ) from None


# ---- the publication statement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _StatementWritten:
    row: tuple[int, str, bytes, bytes | None]  # (publication, sha256, body, signature), as in the state
    new: bool  # a new publication, to record with the rest of this publish


def _write_statement(
    tmp: Path, ws: Workspace, signing: SigningKey | None, stamp: str, refresh: bool
) -> _StatementWritten:
    """Write publication.json (+ .minisig) and the earlier statements (publications/) into the finished
    folder `tmp`. The last recorded statement is kept when it lists exactly these files and its validity
    still holds; otherwise the next one is made, chained to it by its SHA-256."""
    state, config = ws.state, ws.config
    core = trust.folder_digests(tmp)
    recorded = state.statements()
    last = trust.read_statement(recorded[-1][2]) if recorded else None
    if last is not None and not refresh and _lists(last, core) and _fresh(last, config.valid_for, stamp):
        earlier, current, new = recorded[:-1], recorded[-1], False
    else:
        earlier, new = recorded, True
    _write_statements(tmp, earlier)
    if new:
        files = core | _statement_digests(earlier)
        number = last.publication + 1 if last else 1
        previous = trust.Previous(last.publication, last.sha256) if last else None
        valid_until = None
        if config.valid_for is not None:
            valid_until = _stamp_after(stamp, config.valid_for)
        body = trust.statement_json(config.name, number, stamp, files, previous, valid_until)
        when = int(parse_stamp(stamp).timestamp())
        signature = signing.sign(body, layout.STATEMENT, when) if signing else None
        current = (number, hashlib.sha256(body).hexdigest(), body, signature)
    write_durable(tmp / layout.STATEMENT, current[2])
    if current[3] is not None:
        write_durable(tmp / layout.signature_name(layout.STATEMENT), current[3])
    return _StatementWritten(current, new)


def _write_statements(tmp: Path, rows: Sequence[tuple[int, str, bytes, bytes | None]]) -> None:
    if not rows:
        return
    folder = tmp / layout.STATEMENTS
    folder.mkdir()
    for n, _, body, signature in rows:
        write_durable(tmp / layout.statement_file(n), body)
        if signature is not None:
            write_durable(tmp / layout.signature_name(layout.statement_file(n)), signature)
    fsync_dir(folder)


def _statement_digests(rows: Sequence[tuple[int, str, bytes, bytes | None]]) -> dict[str, trust.FileDigest]:
    out = {}
    for n, digest, body, signature in rows:
        out[layout.statement_file(n)] = trust.FileDigest(len(body), digest)
        if signature is not None:
            sig = layout.signature_name(layout.statement_file(n))
            out[sig] = trust.FileDigest(len(signature), hashlib.sha256(signature).hexdigest())
    return out


def _is_earlier_statement(rel: str) -> bool:
    return rel.startswith(f"{layout.STATEMENTS}/")


def _lists(statement: trust.Statement, files: dict[str, trust.FileDigest]) -> bool:
    """Whether `statement` lists exactly `files` (apart from the earlier statements it lists too)."""
    return {rel: d for rel, d in statement.files.items() if not _is_earlier_statement(rel)} == files


def _fresh(statement: trust.Statement, valid_for: int | None, stamp: str) -> bool:
    """Whether `statement`'s validity is the one the config asks for, with over half of it still ahead
    (as Debian re-signs its Release files well before their Valid-Until)."""
    if valid_for is None:
        return statement.valid_until is None
    if statement.valid_until != _stamp_after(statement.published_at, valid_for):
        return False
    left = parse_stamp(statement.valid_until) - parse_stamp(stamp)
    return left.total_seconds() > valid_for / 2


def _stamp_after(stamp: str, seconds: int) -> str:
    return datetime.fromtimestamp(parse_stamp(stamp).timestamp() + seconds, UTC).strftime(STAMP)


# ---- files, the lock and the swap -----------------------------------------------------------------------


def _remove_leftovers(workspace: Path) -> None:
    """Temporary folders of a publish that was killed; never a finished published/."""
    for stale in [*workspace.glob(f"{layout.PUBLISHED_TMP}*"), *workspace.glob(f"{layout.PUBLISHED_OLD}*")]:
        shutil.rmtree(stale, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Make the finished `tmp` folder `final`; the old one is removed afterwards."""
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)  # it holds the previous folder now
    else:
        # Without renameat2, published/ is missing for an instant, but never half-written.
        old = final.with_name(f"{layout.PUBLISHED_OLD}{secrets.token_hex(4)}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    fsync_dir(final.parent)
