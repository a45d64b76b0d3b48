"""Checking one shard: which reads to run at the levels asked (levels asked together share a read), and
what they found; findings.py words it, localize.py places it in pieces and members."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import PackagerError, TorrentError, UntrustedManifest
from packager.fsutil import open_regular
from packager.layout import TORRENT_SUFFIX
from packager.torrent import METAINFO_MAX_BYTES, read_piece_hashes

from . import findings
from .passes import Consumer, PieceResult, Pieces, Sha256, check_pieces, read_pass
from .references import References, ShardRef
from .report import (
    BytesRead,
    Check,
    Event,
    FileChecked,
    FileKind,
    FileResult,
    PassStarted,
    Severity,
    Status,
    VerifyOptions,
)

if TYPE_CHECKING:
    from packager.container.scan import Layout
    from packager.torrent import PieceHashes

    from .frames import FrameStream, Members, TarWalk

# The member level (frames.py, localize.py and the container's scan: a third of verify's imports) is loaded
# where a check needs it, at --deep or when something is damaged: `verify --pieces` of a good release, whose
# start-up is part of its wait, never imports it.


def unfinished_names(name: str) -> tuple[str, ...]:
    """Names clients give a file while they download it: Transmission .part, qBittorrent .!qB (an option),
    uTorrent .!ut. (aria2 and libtorrent keep the real name: an unfinished file there shows as damaged.)"""
    return (f"{name}.part", f"{name}.!qB", f"{name}.!ut")


class _Refused(Exception):
    """fsutil.open_regular's refusal of a shard's .torrent; its argument says why ("is not a regular file",
    "cannot be read: ...", or _NOT_THERE)."""


_NOT_THERE = "not there"


def _read_torrent_file(path: Path, tr: FileResult) -> bytes | None:
    """A shard's .torrent, opened by fsutil.open_regular (a regular file only: a FIFO would block for ever,
    a link to /dev/zero never end) and read no further than libtorrent's limit. FileNotFoundError if it is
    not there; else None with `tr` damaged (a file to fetch again), or UntrustedManifest for an over-long
    one that no manifest gives a size for (nothing says it is damaged)."""
    try:
        f, st = open_regular(path, _Refused, missing=_NOT_THERE)
    except _Refused as e:
        if e.args[0] == _NOT_THERE:
            raise FileNotFoundError(path) from None
        findings.unusable_data(tr, e.args[0])
        return None
    with f:
        if st.st_size > METAINFO_MAX_BYTES:
            if tr.expected_size is None:
                over = f"{st.st_size} bytes, over libtorrent's {METAINFO_MAX_BYTES}"
                raise UntrustedManifest(tr.path, over)
            tr.size, tr.levels = st.st_size, [Check.SIZE]
            findings.torrent_size_mismatch(tr)
            return None
        return f.read(st.st_size + 1)  # one more, to see a file that grew since


@dataclass(frozen=True)
class Target:
    rel: str  # relative to the release folder, or as given
    path: Path
    ref: ShardRef | None
    refs: References
    in_scope_torrent: bool  # report the .torrent's own check as a file of its own


@dataclass(frozen=True)
class MemberCheck:
    """The member level of one shard: its layout, the stream that decompresses it, and the sink that judges
    members (against the manifest, or by their tar headers when the manifest is unreadable)."""

    layout: Layout
    sink: Members | TarWalk
    stream: FrameStream


def _check_of(consumer: Consumer) -> Check:
    if isinstance(consumer, Sha256):
        return Check.SHA256
    return Check.PIECES if isinstance(consumer, Pieces) else Check.MEMBERS  # else the FrameStream


class ShardCheck:
    """Checks one shard file at the levels asked, reading it once per level (levels asked together share a
    read), and localizes what it finds to pieces and members."""

    def __init__(
        self, target: Target, options: VerifyOptions, emit: Callable[[Event], None], threads: int = 1
    ):
        self.t, self.options, self.emit, self.threads = target, options, emit, threads
        self.torrent_trusted = False  # its own SHA-256 matched the release's manifests
        self.result = FileResult(target.rel, FileKind.SHARD)
        self.torrent_result: FileResult | None = None
        self.hashes: PieceHashes | None = None
        self.layout: Layout | None = None
        self.spans: list[tuple[int, int]] | None = None  # file bytes of each member, from the member index

    def run(self) -> list[FileResult]:
        results = self._run()
        for result in results:
            self.emit(FileChecked(result))
        return results

    def _run(self) -> list[FileResult]:
        ref, r = self.t.ref, self.result
        if ref is not None:
            r.expected_size, r.expected_sha256 = ref.size, ref.sha256
            self.hashes = self._load_torrent()
        elif self.t.refs.root is not None:
            r.status = Status.UNLISTED
            findings.unlisted(r)
        try:
            st = os.stat(self.t.path)
        except FileNotFoundError:
            r.status = Status.MISSING
            obsolete = ref is not None and ref.obsolete
            names = unfinished_names(self.t.path.name)
            unfinished = next((name for name in names if self.t.path.with_name(name).exists()), None)
            severity = Severity.NOTE if obsolete else Severity.MISSING
            findings.not_downloaded(r, severity, obsolete, unfinished)
            return self._results()
        except OSError as e:
            findings.unreadable(r, "stat", e.strerror)
            return self._results()
        if not stat.S_ISREG(st.st_mode):
            r.status = Status.NOT_A_SHARD
            findings.not_regular(r)
            return self._results()
        r.size = st.st_size
        if self.hashes is not None and r.expected_size is None:
            r.expected_size = self.hashes.length
        if r.expected_size is not None:
            r.levels.append(Check.SIZE)
            findings.size_mismatch(r)
        if r.expected_sha256 is None and self.hashes is None:
            self._check_alone()
        else:
            self._check_with_references()
        return self._results()

    def _results(self) -> list[FileResult]:
        return [r for r in (self.result, self.torrent_result) if r is not None]

    # -- references --

    def _load_torrent(self) -> PieceHashes | None:
        """The .torrent's piece hashes, once its size and SHA-256 match the release's manifests."""
        ref = self.t.ref
        if ref is None or ref.torrent_path is None:
            return None
        tr = FileResult(
            ref.torrent_path,
            FileKind.TORRENT,
            expected_size=ref.torrent_size,
            expected_sha256=ref.torrent_sha256,
        )
        if self.t.in_scope_torrent:
            self.torrent_result = tr
        places = self.t.refs.places(ref.torrent_path) + [
            self.t.path.with_name(self.t.path.name + TORRENT_SUFFIX)
        ]
        path = next((p for p in places if p.exists()), places[0])
        try:
            data = _read_torrent_file(path, tr)
        except FileNotFoundError:
            tr.status = Status.MISSING
            findings.not_downloaded(tr, Severity.MISSING if self.t.in_scope_torrent else Severity.NOTE)
            findings.pieces_unchecked(self.result, ref.torrent_path, "missing")
            return None
        except OSError as e:  # an I/O error while reading it
            findings.unreadable(tr, "read", e.strerror)
            data = None
        if data is not None:
            tr.size, tr.sha256 = len(data), hashlib.sha256(data).hexdigest()
            tr.levels = [Check.SIZE, Check.SHA256]
            if tr.expected_size is not None and tr.size != tr.expected_size:
                findings.torrent_size_mismatch(tr)
            if tr.expected_sha256 is not None and tr.sha256 != tr.expected_sha256:
                findings.sha256_mismatch(tr)
        if tr.status != Status.OK:
            findings.pieces_unchecked(self.result, ref.torrent_path, "damaged")
            if not self.t.in_scope_torrent:
                self.result.findings.extend(tr.findings)
                self.result.status = Status.DAMAGED
            return None
        try:
            hashes = read_piece_hashes(data, ref.torrent_path, ref.path.rsplit("/", 1)[-1])
        except TorrentError as e:
            raise UntrustedManifest(ref.torrent_path, e.reason) from None
        self.torrent_trusted = tr.expected_sha256 is not None
        described = (hashes.length, hashes.info_hash_v1, hashes.info_hash_v2)
        listed = (ref.size, ref.info_hash_v1, ref.info_hash_v2)
        if any(
            want is not None and str(want).lower() != str(got)
            for want, got in zip(listed, described, strict=True)
        ):
            raise UntrustedManifest(
                ref.torrent_path,
                f"describes {described} (bytes, info-hash v1, v2), release.json lists {listed}",
                hint="release.json contradicts its own .torrent: fetch the release's files again",
            )
        return hashes

    # -- which reads --

    def _check_with_references(self) -> None:
        r, o = self.result, self.options
        use_pieces = self.hashes is not None and (o.pieces or r.expected_sha256 is None)
        # An authenticated .torrent's pieces cover every byte, so with them the whole-file SHA-256 would
        # only repeat the check (and double the CPU); it is computed when a piece fails, to tell a swapped
        # file from a damaged one.
        sha = None
        if r.expected_sha256 is not None and not (use_pieces and self.torrent_trusted):
            sha = Sha256()
        pieces: PieceResult | None = None
        members = self._member_check() if o.deep else None
        if use_pieces and sha is None and members is None:
            pieces = self._check_pieces()  # alone, the pieces are checked in parallel
        else:
            piece_reader = Pieces(self.hashes) if use_pieces else None
            self._pass([c for c in (sha, piece_reader, members and members.stream) if c is not None])
            pieces = piece_reader.result() if piece_reader else None
        if sha is not None:
            self._sha256_found(sha)
        if r.status != Status.OK and pieces is None and self.hashes is not None:
            pieces = self._check_pieces()
        if pieces is not None and pieces.bad and sha is None and r.expected_sha256 is not None:
            sha = Sha256()
            self._pass([sha])
            self._sha256_found(sha)
        if r.status != Status.OK and pieces is None and members is None:
            findings.no_torrent_for_members(r)
            members = self._member_check()
            self._pass([members.stream])
        if pieces is not None:
            self._pieces_found(pieces)
        if members is not None:
            self._members_found(members)

    def _check_alone(self) -> None:
        """No release manifest and no .torrent: only the shard's own manifest and seek table can speak."""
        r = self.result
        layout = self._layout()
        from packager.container.scan import starts_with_tar_header  # the member level (see the top)

        if layout.records is None and not starts_with_tar_header(self.t.path, layout):
            r.status = Status.NOT_A_SHARD
            why = layout.table_problems[0] if layout.table_problems else layout.manifest_problem
            findings.not_a_shard(r, why)
            return
        if r.status == Status.OK:
            findings.checked_alone(r)
        members = self._member_check()
        self._pass([members.stream])
        self._members_found(members)

    # -- reading --

    def _layout(self) -> Layout:
        if self.layout is None:
            from packager.container.scan import read_layout  # the member level (see the top)

            self.layout = read_layout(self.t.path, self.result.size, self.result.expected_size)
            if self.layout.records is None and self.t.ref is not None:
                self._members_from_index(self.layout)
        return self.layout

    def _members_from_index(self, layout: Layout) -> None:
        """With the shard's own manifest unreadable, take its members from the release's member index
        (authenticated by the statement), so damaged and lost members are named by id and checked against
        the index's hashes; members whose frames lie past a cut get the file bytes they would be in."""
        try:
            found = self.t.refs.indexed_members(self.t.ref.name)
        except PackagerError as e:
            findings.index_unusable(self.result, e.message)
            return
        if not found:
            return
        from packager.container.format import MemberRecord  # loaded with the layout

        layout.records = [
            MemberRecord(
                m.id, m.path, "", 0.0, m.size, m.xxh3_128, m.sha256, m.offset, m.first_frame, m.last_frame
            )
            for m in found
        ]
        layout.last_frames = [m.last_frame for m in found]
        self.spans = [(m.frames_offset, m.frames_size) for m in found]
        # A frame scan takes each frame's size from its header, so one damaged header would shift every
        # later member; the index says where each member's frames start in the tar stream: re-anchor there.
        anchors = {m.frames_offset: m.frames_tar_offset for m in found}
        position = 0
        fixed = []
        for frame in layout.stream_frames:
            position = anchors.get(frame.compressed_offset, position)
            fixed.append(frame._replace(decompressed_offset=position))
            position += frame.decompressed_size
        if layout.partial is not None:
            layout.frames, layout.partial = fixed[:-1], fixed[-1]
        else:
            layout.frames = fixed

    def _member_check(self) -> MemberCheck:
        layout = self._layout()
        from .frames import FrameStream, Members, TarWalk  # the member level (see the top)

        sink = Members(layout) if layout.records is not None else TarWalk(layout.stream_frames)
        return MemberCheck(layout, sink, FrameStream(layout, sink))

    def _bytes_read(self, n: int) -> None:
        self.emit(BytesRead(self.t.rel, n))

    def _check_pieces(self) -> PieceResult:
        self.emit(PassStarted(self.t.rel, (Check.PIECES,), min(self.result.size, self.hashes.length)))
        pieces, read, problem = check_pieces(self.t.path, self.hashes, self.threads, self._bytes_read)
        self._read_done(read, problem)
        return pieces

    def _pass(self, consumers: list[Consumer]) -> None:
        self.emit(PassStarted(self.t.rel, tuple(_check_of(c) for c in consumers), self.result.size))
        read, problem = read_pass(self.t.path, consumers, self._bytes_read)
        self._read_done(read, (read, problem) if problem is not None else None)

    def _read_done(self, read: int, problem: tuple[int, str] | None) -> None:
        """`problem`: the first read error, (its offset, its message)."""
        self.result.bytes_read += read
        if problem is not None:
            findings.read_error(self.result, problem[1], problem[0])

    # -- what the reads found --

    def _sha256_found(self, sha: Sha256) -> None:
        r = self.result
        r.sha256 = sha.hash.hexdigest()
        r.levels.append(Check.SHA256)
        if r.sha256 != r.expected_sha256:
            findings.sha256_mismatch(r)

    def _pieces_found(self, pieces: PieceResult) -> None:
        r, h = self.result, pieces.hashes
        r.levels.append(Check.PIECES)
        r.pieces, r.piece_size, r.bad_pieces = h.count, h.piece_size, pieces.bad
        findings.pieces(r, pieces)
        if pieces.bad:
            layout = self._layout()
            from . import localize  # damage found: the member level (see the top)

            owners = localize.members_in_pieces(layout, pieces.bad, h.piece_size, self.spans)
            r.members_in_bad_pieces = owners.members
            unreadable = layout.manifest_problem if layout.records is None else None
            findings.members_in_pieces(r, owners, unreadable, self.options.deep)

    def _members_found(self, members: MemberCheck) -> None:
        r, layout, sink = self.result, members.layout, members.sink
        r.levels.append(Check.MEMBERS)
        findings.container(r, layout, members.stream.table_bad)
        piece_size = r.piece_size or (self.hashes.piece_size if self.hashes else None)
        # the member level (see the top)
        from . import localize
        from .frames import Members

        if isinstance(sink, Members):
            sink.lost(r.size or 0, self.spans)
            level = localize.manifest_members(layout, sink, piece_size, self.spans)
        else:
            level = localize.walked_members(layout, sink, piece_size, r.size)
        r.members = level.checked
        r.damaged_members.extend(found.damage for found in level.damaged if not found.manifest)
        findings.members(r, level, layout.manifest_problem, from_index=self.spans is not None)
