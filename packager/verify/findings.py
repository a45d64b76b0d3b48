"""Every finding verify reports, worded in one place: each function adds to a FileResult what a user reads
about one thing found (shard.py decides what to check, localize.py where the damage is)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .report import FileResult, Level, Severity, Status, ranges

if TYPE_CHECKING:  # (the container and localize modules are for damage: a clean check never loads them)
    from packager.container.scan import Layout

    from .localize import MemberLevel, PieceOwners
    from .passes import PieceResult

DAMAGE, MISSING, BAD_INPUT, NOTE = Severity.DAMAGE, Severity.MISSING, Severity.BAD_INPUT, Severity.NOTE
_NAMED = 5  # members named in the note on bad pieces before "and N more"


def pieces_text(span: tuple[int, int]) -> str:
    return f"piece {span[0]}" if span[0] == span[1] else f"pieces {span[0]}-{span[1]}"


# --- the file ---------------------------------------------------------------------------------------------


def unlisted(r: FileResult) -> None:
    r.add(Level.FILE, NOTE, "not listed in the release's manifests; checked against its own manifest only")


def not_downloaded(r: FileResult, severity: Severity, obsolete: bool = False, unfinished: str | None = None):
    r.add(
        Level.FILE,
        severity,
        "not downloaded"
        + (" (obsolete torrent)" if obsolete else "")
        + (f"; an unfinished download is there as {unfinished}" if unfinished else ""),
    )


def unreadable(r: FileResult, what: str, reason: str) -> None:
    r.add(Level.FILE, DAMAGE, f"cannot {what}: {reason}")


def read_error(r: FileResult, problem: str, offset: int) -> None:
    r.add(Level.FILE, DAMAGE, problem, offset=offset)


def not_regular(r: FileResult) -> None:
    r.add(Level.FILE, BAD_INPUT, "not a regular file")


def not_regular_data(r: FileResult) -> None:
    """A data file the statement lists (the member index's pack or torrent) with something else at its name:
    damage, to fetch again, as a damaged pack is."""
    r.add(Level.FILE, DAMAGE, "not a regular file: fetch it again")


def unusable_data(r: FileResult, why: str) -> None:
    """A file to fetch again that fsutil.open_regular refused: `why` is its reason ("is not a regular file",
    "cannot be read: ...")."""
    r.add(Level.FILE, DAMAGE, f"{why}: fetch it again")


def not_a_shard(r: FileResult, why: str | None) -> None:
    r.add(Level.FILE, BAD_INPUT, f"not a packager shard: {why}")


def checked_alone(r: FileResult) -> None:
    r.add(
        Level.FILE,
        NOTE,
        "no release.json, SHA256SUMS or .torrent found: checked against the shard's own "
        "manifest and seek table only, which proves it consistent, not authentic",
    )


def size_mismatch(r: FileResult) -> None:
    """A shard shorter or longer than the release says."""
    if r.size < r.expected_size:
        r.add(
            Level.FILE,
            DAMAGE,
            f"truncated: {r.size} bytes, expected {r.expected_size} "
            f"({r.expected_size - r.size} missing from byte {r.size})",
            offset=r.size,
        )
    elif r.size > r.expected_size:
        r.add(
            Level.FILE,
            DAMAGE,
            f"{r.size - r.expected_size} bytes of trailing data after byte {r.expected_size}; "
            f"truncating the file to {r.expected_size} bytes may repair it",
            offset=r.expected_size,
        )


def torrent_size_mismatch(tr: FileResult) -> None:
    tr.add(Level.FILE, DAMAGE, f"{tr.size} bytes, expected {tr.expected_size}")


def sha256_mismatch(r: FileResult) -> None:
    r.add(Level.FILE, DAMAGE, f"SHA-256 is {r.sha256}, expected {r.expected_sha256}")


def data_sha256_mismatch(r: FileResult) -> None:
    """A data file the statement lists (the member index's root, pack or torrent) whose bytes no publication
    has: damaged in transit or on disk, as a shard would be, not a manifest someone edited."""
    if r.sha256 != r.expected_sha256:
        r.add(Level.FILE, DAMAGE, f"SHA-256 is {r.sha256}, expected {r.expected_sha256}: fetch it again")


def swapped(r: FileResult, other: str) -> None:
    r.add(
        Level.FILE,
        DAMAGE,
        f"holds {other} (its SHA-256 matches that shard): the files are swapped or "
        f"misnamed; rename it rather than downloading again",
    )


# --- pieces -----------------------------------------------------------------------------------------------


def pieces_unchecked(r: FileResult, torrent: str, why: str) -> None:
    r.add(Level.PIECE, NOTE, f"{torrent} is {why}: pieces cannot be checked")


def pieces(r: FileResult, result: PieceResult) -> None:
    h = result.hashes
    if not result.bad:
        if r.status != Status.OK:
            r.add(Level.PIECE, NOTE, f"all {h.count} pieces ({h.kind}) are good")
        return
    absent = set(range(result.absent_from, h.count)) if result.absent_from is not None else set()
    for span in ranges(set(result.bad) - absent):
        fail = "fails" if span[0] == span[1] else "fail"
        _bad_pieces(r, span, h.piece_size, f"of {h.count} {fail} the {h.kind} check: fetch again")
    for span in ranges(absent):
        _bad_pieces(r, span, h.piece_size, f"of {h.count} cut off by the end of the file: fetch again")


def _bad_pieces(r: FileResult, span: tuple[int, int], piece_size: int, what: str) -> None:
    r.add(Level.PIECE, DAMAGE, f"{pieces_text(span)} {what}", pieces=span, offset=span[0] * piece_size)


def members_in_pieces(r: FileResult, owners: PieceOwners, manifest_problem: str | None, deep: bool) -> None:
    """What the bad pieces hold; `manifest_problem` when the manifest cannot say."""
    if manifest_problem is not None and not deep:
        r.add(
            Level.MEMBER,
            NOTE,
            f"the member manifest is unreadable ({manifest_problem}): "
            "run with --deep to name the members in the bad pieces from their tar headers",
        )
    elif owners.members:
        shown = ", ".join(f"{i or '-'} ({p})" for i, p in owners.members[:_NAMED])
        more = len(owners.members) - _NAMED
        r.add(
            Level.MEMBER,
            NOTE,
            f"the bad pieces hold {len(owners.members)} member(s): {shown}"
            + (f" and {more} more" if more > 0 else ""),
        )
    if owners.tail:
        r.add(Level.MEMBER, NOTE, "the bad pieces include the seek table at the end of the file")


# --- members ----------------------------------------------------------------------------------------------


def no_torrent_for_members(r: FileResult) -> None:
    r.add(Level.MEMBER, NOTE, "no .torrent to localize the damage by pieces: checking every member instead")


def container(r: FileResult, layout: Layout, table_bad: list[str]) -> None:
    """The seek table's own damage, and bytes appended after it."""
    for problem in layout.table_problems + table_bad:
        r.add(Level.MEMBER, DAMAGE, f"seek table: {problem}", offset=layout.frames_end)
    trailing = layout.trailing_from
    if trailing is not None and trailing != r.expected_size:
        r.add(
            Level.MEMBER,
            DAMAGE,
            f"{r.size - trailing} bytes of trailing data after the seek table, from byte "
            f"{trailing}; truncating the file to {trailing} bytes may repair it",
            offset=trailing,
        )


def index_unusable(r: FileResult, why: str) -> None:
    r.add(Level.MEMBER, NOTE, f"the release's member index cannot name the members: {why}")


def members(
    r: FileResult, level: MemberLevel, manifest_problem: str | None, from_index: bool = False
) -> None:
    from packager.container.format import RESERVED_MANIFEST_NAME  # the member level has it loaded

    if from_index:
        r.add(
            Level.MEMBER,
            DAMAGE,
            f"the member manifest is unreadable ({manifest_problem}): members are named from the release's "
            "member index and checked against its hashes",
        )
    if level.named_from_headers:
        r.add(
            Level.MEMBER,
            DAMAGE,
            f"the member manifest is unreadable ({manifest_problem}): members are named "
            "from their tar headers, without ids, and checked by their frame checksums only",
        )
    for found in level.damaged:
        d = found.damage
        if found.manifest:
            what = "the member manifest" if level.named_from_headers else f"the member manifest {d.path}"
            r.add(Level.MEMBER, DAMAGE, f"{what}: {d.reason}", member_path=RESERVED_MANIFEST_NAME)
            continue
        if level.named_from_headers:
            message = f"member ({d.path}): {d.reason}"
        else:
            where = f" ({pieces_text(d.pieces)})" if d.pieces else ""
            message = f"member {d.id} ({d.path}){where}: {d.reason}"
        r.add(
            Level.MEMBER,
            DAMAGE,
            message,
            frames=d.frames,
            pieces=d.pieces,
            member_id=d.id,
            member_path=d.path,
            offset=found.offset,
        )
    for run in level.lost:
        what = "the last run of frames, which holds the member manifest" if run.holds_manifest else "a member"
        r.add(
            Level.MEMBER,
            DAMAGE,
            f"frames {run.frames[0]}-{run.frames[1]} (from byte {run.offset}): {what} whose tar header "
            f"cannot be read, so not even its path is known: {run.reason}",
            frames=run.frames,
            pieces=run.pieces,
            offset=run.offset,
        )
    if level.lost_after is not None:
        r.add(
            Level.MEMBER,
            DAMAGE,
            f"nothing after byte {level.lost_after} can be read without the seek table: "
            "any later members, the member manifest and the seek table are lost",
            offset=level.lost_after,
        )
