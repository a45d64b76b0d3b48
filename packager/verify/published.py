"""Published files that hold data rather than describe it: the member index's pack and its torrent. With a
statement, a whole-folder check finds each one's bytes against it; one that no publication lists is damaged
(exit 1, fetch it again), as a shard is, not an edited manifest. The pack's bad pieces are named through the
index's own torrent when that torrent is good."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable

from packager import layout
from packager.errors import PackagerError
from packager.torrent import read_piece_hashes

from . import findings
from .passes import check_pieces
from .references import References
from .report import BytesRead, Check, Event, FileChecked, FileKind, FileResult, PassStarted


def damaged_data_files(refs: References, threads: int, emit: Callable[[Event], None]) -> list[FileResult]:
    """A FileResult for each of `refs.damaged` (statement-listed data files whose bytes no publication
    lists): size, SHA-256 and, for the pack, its pieces."""
    out = []
    for rel in refs.damaged:
        listed = refs.statement.statement.files[rel]
        kind = FileKind.TORRENT if rel == layout.MEMBER_INDEX_TORRENT else FileKind.MEMBER_INDEX
        r = FileResult(rel, kind, expected_size=listed.size, expected_sha256=listed.sha256)
        _check(r, refs, threads, emit)
        emit(FileChecked(r))
        out.append(r)
    return out


def _check(r: FileResult, refs: References, threads: int, emit: Callable[[Event], None]) -> None:
    path = refs.root / r.path
    try:
        st = os.stat(path)
    except OSError as e:
        findings.unreadable(r, "stat", e.strerror)
        return
    if not stat.S_ISREG(st.st_mode):
        findings.not_regular_data(r)
        return
    r.size = st.st_size
    r.levels.append(Check.SIZE)
    findings.size_mismatch(r)
    # The pack's pieces say where it is damaged (its SHA-256 is already known not to be the listed one);
    # without them the SHA-256 is the evidence, taken only at the listed size (a file of any size is not).
    hashes = _pack_pieces(refs) if r.path == layout.MEMBER_INDEX_PACK else None
    if hashes is None:
        if r.size == r.expected_size:
            _sha256(r, path, emit)
        return
    emit(PassStarted(r.path, (Check.PIECES,), min(r.size, hashes.length)))
    result, read, problem = check_pieces(path, hashes, threads, lambda n: emit(BytesRead(r.path, n)))
    r.bytes_read += read
    r.levels.append(Check.PIECES)
    r.pieces, r.piece_size, r.bad_pieces = hashes.count, hashes.piece_size, result.bad
    findings.pieces(r, result)
    if problem:
        findings.read_error(r, problem[1], problem[0])


def _sha256(r: FileResult, path, emit: Callable[[Event], None]) -> None:
    emit(PassStarted(r.path, (Check.SHA256,), r.size))
    with path.open("rb") as f:
        r.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    r.bytes_read += r.size
    emit(BytesRead(r.path, r.size))
    r.levels.append(Check.SHA256)
    findings.data_sha256_mismatch(r)


def _pack_pieces(refs: References):
    """The pack's piece hashes from the index's torrent, if that torrent is the published one."""
    rel = layout.MEMBER_INDEX_TORRENT
    listed = refs.statement.statement.files.get(rel)
    if listed is None or rel in refs.damaged:
        return None
    path = refs.root / rel
    try:
        if not path.is_file() or path.stat().st_size != listed.size:
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            return None
        return read_piece_hashes(data, rel, layout.MEMBER_INDEX_PACK_NAME)
    except (OSError, PackagerError):
        return None
