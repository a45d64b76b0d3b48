"""The signed publication statement and the downloader's trust file: no rollback, no mix-and-match.

Each `packager publish` that changes the published folder writes one statement, ``publication.json``, signed
with the release's minisign key (``publication.json.minisig``; the stock ``minisign -V`` verifies it). It
lists the path, size and SHA-256 of every other file of the published folder (release.json, torrents.json,
SHA256SUMS and the signatures, whitelist.txt, feed.xml, index.html, the member index, every .torrent, the
earlier statements) except the live, unsigned files of ``layout.LIVE_FILES``; a publication number that
only grows; the SHA-256 of the previous statement; and optionally ``valid_until``. Earlier statements stay
published as ``publications/<n>.json`` (+ ``.minisig``), each listed with its SHA-256 by every later one, so
the chain can be walked and a file found to belong to an older publication says which.

The models: The Update Framework's snapshot and timestamp roles (a signed list of every metadata file with
its hash, so files of two publications cannot be mixed; version numbers a client remembers and never lets go
down, so an old but validly signed publication is refused), and Debian's signed Release file with
``Valid-Until`` (an expiry, so a mirror cannot serve a frozen publication for ever).

A downloader keeps a small trust file (default ``$XDG_DATA_HOME/packager/trust.json``, that is
``~/.local/share/packager/trust.json``; ``--trust-file`` or ``$PACKAGER_TRUST_FILE`` choose another): per
release and signing key, the last publication it accepted and that statement's SHA-256. A statement older
than it, another statement with the same number, or a newer one whose chain does not contain it is refused.
The trust file is updated atomically, and only by a caller whose whole check succeeded (``TrustFile.accept``),
as TUF's clients must not persist metadata that failed a later step.

Everything read here may be hostile: the statement, its signature and the trust file are read with a size
bound, as regular files only; JSON nesting is bounded by the parser (a RecursionError is a refusal); counts,
numbers and paths are checked one by one. Errors: PublicationRefused (the statement as a whole),
FileNotAuthenticated (one file), UntrustedManifest (anything malformed), all exit 2.

Modules: `statement` (the format: writer, reader, the checks of a file against it, bounded reads, what a
publication lists), `check` (authentication: load_statement, a folder's statement and files), `trustfile`
(the downloader's trust file).
"""

from ..fsutil import read_regular  # bounded reads live in fsutil, shared with verify
from .check import (
    FolderStatement,
    authenticate,
    check_published_file,
    key_id_of,
    load_statement,
    public_key_text,
    read_folder_statement,
)
from .statement import (
    FORMAT,
    KIND,
    MAX_FILES,
    MAX_SIGNATURE_BYTES,
    MAX_STATEMENT_BYTES,
    FileCheck,
    FileDigest,
    Previous,
    Statement,
    folder_digests,
    read_statement,
    statement_json,
)
from .trustfile import TRUST_FILE_ENV, Trusted, TrustFile, default_trust_file

__all__ = [
    "FORMAT",
    "KIND",
    "MAX_FILES",
    "MAX_SIGNATURE_BYTES",
    "MAX_STATEMENT_BYTES",
    "TRUST_FILE_ENV",
    "FileCheck",
    "FileDigest",
    "FolderStatement",
    "Previous",
    "Statement",
    "TrustFile",
    "Trusted",
    "authenticate",
    "check_published_file",
    "default_trust_file",
    "folder_digests",
    "key_id_of",
    "load_statement",
    "public_key_text",
    "read_folder_statement",
    "read_regular",
    "read_statement",
    "statement_json",
]
