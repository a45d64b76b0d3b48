"""Authenticating a publication: the statement's minisign signature, its expiry and the trust file's
rollback and fork checks (load_statement, the one entry point for every reader of a release), and the
check of a published folder's files against it, naming the publication a file of a mixed set is from."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from .. import layout
from ..errors import FileNotAuthenticated, PublicationRefused, UntrustedManifest, UsageError
from ..fsutil import read_bounded
from .statement import MAX_SIGNATURE_BYTES, MAX_STATEMENT_BYTES, Statement, read_statement
from .trustfile import TrustFile


def public_key_text(pubkey: str) -> str:
    """The key given to `--pubkey`: a .pub file's content, or the base64 line itself. UsageError otherwise."""
    path = Path(pubkey)
    try:
        if path.is_file():
            return read_bounded(path, MAX_SIGNATURE_BYTES, pubkey).decode("utf-8")
        if path.exists():  # a FIFO or a device: never read (it may never end)
            raise UsageError(f"{pubkey}: not a regular file", hint="pass the .pub file or its base64 line")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{pubkey}: cannot read the public key: {e}") from None
    if not re.fullmatch(r"[A-Za-z0-9+/]{40,}={0,2}", pubkey.strip()):
        raise UsageError(f"{pubkey}: no such public key file", hint="pass the .pub file or its base64 line")
    return pubkey.strip()


def key_id_of(pubkey: str) -> str:
    """The minisign key id (as `minisign` prints it) of a public key's text; UsageError if it is not one."""
    from ..signing import NotMinisign, public_key_id  # minisign, 75 ms to import: only where a key is read

    try:
        return public_key_id(_key_line(pubkey))
    except NotMinisign as e:
        raise UsageError(f"not a minisign public key ({e})", hint="pass the publisher's .pub file") from None


def _key_line(pubkey: str) -> str:
    lines = [
        line.strip() for line in pubkey.splitlines() if line.strip() and not line.startswith("untrusted")
    ]
    return lines[0] if lines else ""


def authenticate(
    data: bytes, signature: bytes | None, pubkey: str, where: Path | str = layout.STATEMENT
) -> str:
    """The key id, if `signature` (a .minisig file's bytes) is `pubkey`'s signature of `data`;
    PublicationRefused otherwise. `pubkey` is a .pub file's text or its base64 line."""
    # minisign, 75 ms to import: only where a signature is checked
    from ..signing import KeyMismatch, NotMinisign, SignatureMismatch, verify_signature

    sig_name = layout.signature_name(Path(str(where)).name)
    name = Path(str(where)).name
    hint = f"fetch {name} and {sig_name} again from the publisher; trust nothing until they verify"
    if signature is None:
        raise PublicationRefused(
            where, f"has no signature ({sig_name}), so it cannot be authenticated", hint=hint
        )
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise PublicationRefused(
            where, f"{sig_name} is {len(signature)} bytes: not a minisign signature", hint=hint
        )
    key_id = key_id_of(pubkey)
    try:
        verify_signature(_key_line(pubkey), data, signature)
    except KeyMismatch as e:
        raise PublicationRefused(where, f"is {e}", hint=_wrong_key_hint(e)) from None
    except SignatureMismatch as e:
        raise PublicationRefused(where, f"does not match its signature {sig_name} ({e})", hint=hint) from None
    except NotMinisign as e:
        raise PublicationRefused(where, f"{sig_name} is not a minisign signature ({e})", hint=hint) from None
    return key_id


def _wrong_key_hint(e) -> str:
    return (
        f"pass the publisher's public key: if {e.signer} is not the id the publisher announces, these files "
        "are not the publisher's; if it is, the key given is another release's"
    )


def load_statement(
    data: bytes,
    signature: bytes | None,
    pubkey: str | None,
    trust: TrustFile | None = None,
    now: datetime | None = None,
    where: Path | str = layout.STATEMENT,
) -> Statement:
    """The statement in `data`, authenticated and checked; the one entry point for every reader of a release.

    `data` and `signature` are the bytes of ``publication.json`` and ``publication.json.minisig`` from
    anywhere (a folder, an HTTP mirror, the swarm); `signature` may be None when `pubkey` is None.
    With `pubkey` (a .pub file's text or its base64 line) the signature must verify (else
    PublicationRefused) and the returned statement has ``key_id`` set; without it nothing is authenticated
    and only the statement's own consistency is checked. An expired statement (``valid_until`` before `now`,
    default the clock) is PublicationRefused. With `trust` and `pubkey`, the statement must not be older than,
    nor fork from, the publication `trust` accepted last for this release and key (PublicationRefused naming
    both); the trust file is NOT updated: call ``trust.accept(statement)`` once everything the caller read
    has passed ``statement.check(relpath, data)`` (or ``check_file`` / ``checker``).

    Example (the fetch command's use)::

        trust = TrustFile()  # or TrustFile(Path(args.trust_file))
        statement = load_statement(get("publication.json"), get("publication.json.minisig"), pubkey, trust)
        root = statement.check("members/index.json", get("members/index.json"))  # FileNotAuthenticated
        ...
        trust.accept(statement)
    """
    if len(data) > MAX_STATEMENT_BYTES:
        raise UntrustedManifest(where, f"more than {MAX_STATEMENT_BYTES} bytes: not a publication statement")
    key_id = authenticate(data, signature, pubkey, where) if pubkey is not None else None
    statement = read_statement(data, where)
    statement = replace(statement, key_id=key_id)
    if statement.expired(now):
        raise PublicationRefused(
            where,
            f"publication {statement.publication} expired at {statement.valid_until} (valid_until); a mirror "
            "may be serving a frozen copy",
            seen=statement.publication,
            hint="fetch the current publication from the publisher or another mirror",
        )
    if trust is not None and key_id is not None:
        trust.check(statement)
    return statement


@dataclass(frozen=True)
class FolderStatement:
    """A statement read from a folder, with its earlier statements (those present) and its bytes."""

    statement: Statement
    data: bytes
    signature: bytes | None
    history: tuple[Statement, ...]  # earlier statements found under publications/, each checked by hash


def read_folder_statement(
    folder: Path, pubkey: str | None, trust: TrustFile | None = None, now: datetime | None = None
) -> FolderStatement | None:
    """load_statement() on ``folder/publication.json`` (+ its .minisig), and the earlier statements under
    ``folder/publications/`` that the current one lists (each checked against its listed SHA-256; absent ones
    are skipped). None if the folder holds no statement."""
    folder = Path(folder)
    path = folder / layout.STATEMENT
    if not path.exists() and not path.is_symlink():
        return None
    data = read_bounded(path, MAX_STATEMENT_BYTES, path)
    sig_path = folder / layout.signature_name(layout.STATEMENT)
    signature = read_bounded(sig_path, MAX_SIGNATURE_BYTES, sig_path) if sig_path.exists() else None
    statement = load_statement(data, signature, pubkey, trust, now, where=path)
    return FolderStatement(statement, data, signature, tuple(_history(folder, statement)))


def check_published_file(
    folder: Path,
    relpath: str,
    pubkey: str | None,
    trust: TrustFile | None = None,
    now: datetime | None = None,
) -> FolderStatement | None:
    """Authenticate one published file on disk before it is used (locate's member index): load the folder's
    statement (required with `pubkey`, which is a --pubkey argument: a .pub path or a base64 line) and check
    ``folder/relpath`` against it; FileNotAuthenticated naming the publication the file is from, if another.
    None when the folder has no statement and no key was given (nothing to check against)."""
    key = public_key_text(pubkey) if pubkey else None
    fs = read_folder_statement(folder, key, trust if key else None, now)
    if fs is None:
        if key:
            raise PublicationRefused(
                Path(folder) / layout.STATEMENT,
                f"missing, so {relpath} cannot be authenticated",
                hint=f"fetch {layout.STATEMENT} and its .minisig from the publisher, or drop --pubkey",
            )
        return None
    s = fs.statement
    path = Path(folder) / relpath
    try:
        s.check_file(relpath, path)
    except FileNotAuthenticated as e:
        digest = None
        if path.is_file() and relpath in s.files:
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        older = s.publication_of(relpath, digest, fs.history) if digest else None
        if older is not None:
            raise FileNotAuthenticated(
                relpath,
                s.publication,
                f"is from publication {older}, but {layout.STATEMENT} is publication {s.publication}: "
                "a mixed set",
                from_publication=older,
                hint="fetch it again from the publisher or from the mirror its statement came from",
            ) from None
        raise e from None
    return fs


def _history(folder: Path, statement: Statement) -> Iterable[Statement]:
    for n in range(statement.publication - 1, 0, -1):
        rel = layout.statement_file(n)
        listed = statement.files.get(rel)
        path = folder / rel
        if listed is None or not path.is_file() or path.stat().st_size != listed.size:
            continue
        data = read_bounded(path, MAX_STATEMENT_BYTES, path)
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            continue
        try:
            yield read_statement(data, path)
        except UntrustedManifest:
            continue  # listed with this hash by a checked statement, so written by the publisher; skip it
