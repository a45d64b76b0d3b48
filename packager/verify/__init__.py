"""Verify a downloaded release (all of it or part): file, piece and member level, with precise reports.

Trust order, highest first:

0. ``publication.json``, the signed publication statement (trust/): size and SHA-256 of every other
   published file; with a public key its signature must verify, it must not be expired nor older than the
   trust file's publication, and every manifest read below is checked against it (references.py);
1. ``release.json`` and ``SHA256SUMS``: size and SHA-256 of every shard and .torrent; authenticated through
   the statement (or, for a release without one, by their own signatures) when a public key is given;
2. each shard's .torrent, itself checked against those SHA-256s before it is used: v1 SHA-1 piece hashes,
   or the BEP 52 piece layer for a v2-only torrent;
3. the shard's own member manifest (size, xxh3-128, SHA-256 of each member) and seek table (XXH64 of each
   frame), which prove that a shard is consistent, not that it is the one published.

Levels: **file** (presence, size, SHA-256); **piece** (``pieces=True``, and automatically for a file whose
size or SHA-256 is wrong: the pieces to fetch again); **member** (``deep=True``: every frame decompressed on
its own as the bytes stream past, so a damaged frame never hides the frames after it; damaged members named
by id and path). With an authenticated .torrent, checking every piece covers every byte, so the whole-file
SHA-256 is then computed only for a file with a bad piece (to recognise a swapped file).

Each level reads each byte once; the levels asked for share one sequential read of a file, each on its own
thread, and files are checked in parallel; the pieces of one file, checked alone, are split across threads.
Memory per file is a few read chunks plus one decompressed chunk whatever the shard size, plus the member
manifest (one record per member).

The library never prints: progress goes to an ``on_event`` callback, the result is a VerifyReport.

Modules: `report` (options, events, the damage vocabulary, results), `references` (release.json,
SHA256SUMS, signatures), `passes` (one sequential read: SHA-256, pieces), `frames` (the member level),
`localize` (bad pieces and frames to members), `shard` (which reads one shard needs), `findings` (their
wording), `check` (the whole check).
"""

from .check import verify
from .report import (
    BytesRead,
    Check,
    Event,
    FileChecked,
    FileKind,
    FileResult,
    Finding,
    Level,
    MemberDamage,
    PassStarted,
    Severity,
    Status,
    VerifyOptions,
    VerifyReport,
    format_ranges,
    ranges,
)

__all__ = [
    "BytesRead",
    "Check",
    "Event",
    "FileChecked",
    "FileKind",
    "FileResult",
    "Finding",
    "Level",
    "MemberDamage",
    "PassStarted",
    "Severity",
    "Status",
    "VerifyOptions",
    "VerifyReport",
    "format_ranges",
    "ranges",
    "verify",
]
