"""What the release says the files should be: the publication statement (publication.json), release.json,
SHA256SUMS, found beside or above the files, authenticated when a public key is given, merged and
cross-checked.

With a statement (trust/) every manifest read is checked against it before use, and for a whole release
folder every file it lists; files of an earlier publication are named as such (MixedPublication). With a
public key the statement is required, its signature checked, and its number checked against the trust file
(an older publication is refused): release.json and SHA256SUMS are then authenticated through it, their own
signatures being for the stock minisign tool. Without a statement (a release published before it existed, or
no key) release.json and SHA256SUMS stand on their own signatures, as before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from packager import layout
from packager.errors import (
    FileNotAuthenticated,
    MixedPublication,
    PublicationRefused,
    UntrustedManifest,
)
from packager.fsutil import read_regular
from packager.layout import (
    PUBLISHED,
    RELEASE_JSON,
    SHA256SUMS,
    SHARD_SUFFIX,
    SHARDS,
    TORRENT_SUFFIX,
    TORRENTS,
)
from packager.manifest import read_release_files, read_sha256sums

if TYPE_CHECKING:
    from packager import trust

# release.json of 3000 torrents is ~3 MB: a hostile mirror's "release.json" of gigabytes is refused unread.
MAX_MANIFEST_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ShardRef:
    """What the release says about one shard and its .torrent; None where no manifest says."""

    name: str
    path: str  # relative to the release folder: shards/<name>.tar.zst
    size: int | None = None
    sha256: str | None = None
    torrent_path: str | None = None
    torrent_size: int | None = None
    torrent_sha256: str | None = None
    info_hash_v1: str | None = None
    info_hash_v2: str | None = None
    obsolete: bool = False


@dataclass(frozen=True)
class References:
    root: Path | None  # the folder verify was pointed at, or found above the files
    shards: dict[str, ShardRef]  # by relative shard path
    sources: tuple[str, ...]
    authenticated: bool
    bases: tuple[Path, ...] = ()  # folders the manifests' relative paths are looked up under, in order
    statement: trust.FolderStatement | None = None
    not_downloaded: tuple[str, ...] = ()  # files the statement lists that this (whole) folder lacks
    unlisted: tuple[str, ...] = field(default=())  # files beside the manifests that the statement omits
    damaged: tuple[str, ...] = ()  # listed data files (the member index's) whose bytes no publication has

    def indexed_members(self, torrent: str) -> list | None:
        """The members of `torrent` as the release's member index lists them (member_index.Location,
        in shard order), its root checked against the statement when there is one; None without an index.
        PackagerError (UntrustedManifest) for an index that is not the published one."""
        if self.root is None or not (self.root / layout.MEMBER_INDEX).is_file():
            return None
        # 10 ms to import (orjson, the index's readers): only a shard whose own manifest is lost needs it
        from packager.member_index import FolderFiles, MemberIndex

        digest = None
        if self.statement is not None:
            listed = self.statement.statement.files.get(layout.MEMBER_INDEX)
            if listed is None:
                return None
            digest = listed.sha256
        with MemberIndex(FolderFiles(self.root), root_sha256=digest) as index:
            return sorted(index.members_of(torrent), key=lambda loc: loc.offset)

    def places(self, rel: str) -> list[Path]:
        return [base / rel for base in self.bases]


def is_release_root(folder: Path) -> bool:
    return any((folder / name).exists() for name in (RELEASE_JSON, SHA256SUMS, TORRENTS)) or any(
        (folder / PUBLISHED / name).exists() for name in (RELEASE_JSON, SHA256SUMS)
    )


def manifest_folder(root: Path) -> tuple[Path, tuple[Path, ...]]:
    """Where the manifests of the release at `root` are, and the folders their relative paths resolve
    under: a mirror holds everything in one folder; a workspace keeps them in published/ (torrents there
    too) and the shards in its own shards/."""
    manifests = (RELEASE_JSON, SHA256SUMS)
    here = any((root / name).exists() for name in manifests)
    if not here and any((root / PUBLISHED / name).exists() for name in manifests):
        return root / PUBLISHED, (root / PUBLISHED, root)
    if root.name == PUBLISHED and (root.parent / SHARDS).is_dir():
        return root, (root, root.parent)
    return root, (root,)


def find_release_root(start: Path) -> Path | None:
    """`start` or the nearest folder above it (two levels at most) that holds release.json, SHA256SUMS or
    torrents/: a shard sits in the release folder or in its shards/ folder."""
    folder = start.resolve()
    for candidate in (folder, folder.parent, folder.parent.parent):
        if is_release_root(candidate):
            return candidate
    return None


def parse_release_json(data: bytes, where: Path) -> list[ShardRef]:
    """The shards release.json lists, with their .torrent files, sizes and SHA-256s (manifest.py reads it and
    refuses whatever is malformed)."""
    return [
        ShardRef(
            name=e.name,
            path=e.shard.path,
            size=e.shard.size,
            sha256=e.shard.sha256,
            torrent_path=e.torrent_file,
            torrent_size=e.torrent.size if e.torrent else None,
            torrent_sha256=e.torrent.sha256 if e.torrent else None,
            info_hash_v1=e.info_hash_v1,
            info_hash_v2=e.info_hash_v2,
            obsolete=e.obsolete,
        )
        for e in read_release_files(data, where)
    ]


def _refs_from_sums(sums: dict[str, str]) -> list[ShardRef]:
    refs = []
    for path, digest in sums.items():
        if path.endswith(SHARD_SUFFIX):
            name = path.rsplit("/", 1)[-1][: -len(SHARD_SUFFIX)]
            torrent = layout.torrent_file(name)
            refs.append(ShardRef(name, path, None, digest, torrent, None, sums.get(torrent)))
    return refs


def _refs_from_torrents(root: Path) -> list[ShardRef]:
    """Without manifests, the torrents/ folder says which shards exist (and nothing authenticates it)."""
    refs = []
    for p in sorted((root / TORRENTS).glob(f"*{SHARD_SUFFIX}{TORRENT_SUFFIX}")):
        name = p.name[: -len(SHARD_SUFFIX + TORRENT_SUFFIX)]
        refs.append(ShardRef(name, layout.shard_file(name), torrent_path=layout.torrent_file(name)))
    return refs


def _authenticate(path: Path, data: bytes, pubkey: str) -> str:
    """The trusted comment of `path`'s minisign signature; UntrustedManifest if it is missing or wrong."""
    # minisign costs 75 ms to import, and only a verify given --pubkey needs it.
    from packager.signing import NotMinisign, SignatureMismatch, verify_signature

    sig_path = path.with_name(layout.signature_name(path.name))
    hint = (
        f"fetch {path.name} and {sig_path.name} again from the publisher; "
        "trust nothing in this folder until they verify"
    )
    try:
        signature = sig_path.read_bytes()
    except FileNotFoundError:
        raise UntrustedManifest(
            sig_path, f"missing, so {path.name} cannot be authenticated", hint=hint
        ) from None
    try:
        return verify_signature(pubkey, data, signature)
    except SignatureMismatch as e:
        raise UntrustedManifest(
            path, f"does not match its signature {sig_path.name} ({e})", hint=hint
        ) from None
    except NotMinisign as e:
        raise UntrustedManifest(
            sig_path,
            f"not a minisign signature, or the key is not a minisign public key ({e})",
            hint="pass the publisher's public key file (.pub) or its base64 line",
        ) from None


def load_references(
    root: Path | None,
    pubkey: str | None,
    trust_file: trust.TrustFile | None = None,
    whole: bool = False,
    now: datetime | None = None,
) -> References:
    """The release's manifests at `root`, authenticated when `pubkey` is given, merged, cross-checked.

    With `whole` (a release folder was given) every file the statement lists is checked too. Raises
    PublicationRefused (no statement with a key, a bad signature, expired, older than `trust_file` has
    seen), MixedPublication (files of several publications, or edited ones), UntrustedManifest."""
    if root is None:
        if pubkey:
            raise UntrustedManifest(
                ".",
                "no release.json or SHA256SUMS found next to or above the files",
                hint="verify the release folder, or drop --pubkey",
            )
        return References(None, {}, (), False)
    root, bases = manifest_folder(root)
    statement = _folder_statement(root, pubkey, trust_file, now)
    if pubkey and statement is None:
        raise PublicationRefused(
            root / layout.STATEMENT,
            "missing: without the signed publication statement an older or mixed copy of the release cannot "
            "be told from the current one",
            hint=f"fetch {layout.STATEMENT} and its .minisig from the publisher (a release published before "
            "they existed must be published again)",
        )
    found: dict[str, bytes] = {}
    for name in (RELEASE_JSON, SHA256SUMS):
        if not (root / name).exists():
            continue
        found[name] = read_regular(root / name, MAX_MANIFEST_BYTES)
    sources = []
    not_downloaded: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()
    damaged: tuple[str, ...] = ()
    if statement is not None:
        not_downloaded, unlisted, damaged = _check_statement(statement, root, found, whole)
        s = statement.statement
        how = f"signature good, key {s.key_id}" if s.authenticated else "unauthenticated"
        sources.append(f"{layout.STATEMENT} (publication {s.publication} of {s.published_at}; {how})")
        sources += [f"{name} (as {layout.STATEMENT} lists it)" for name in found]
    elif pubkey:
        if not found:
            raise UntrustedManifest(
                root,
                "no release.json or SHA256SUMS here to authenticate",
                hint="point verify at the release folder that holds them",
            )
        from packager import trust  # (loaded by _folder_statement: a key was given)

        key = trust.public_key_text(pubkey)
        for name, data in found.items():
            comment = _authenticate(root / name, data, key)
            sources.append(f"{name} (signature good: {comment})")
    else:
        sources += [f"{name} (unauthenticated)" for name in found]
    sums = read_sha256sums(found[SHA256SUMS], root / SHA256SUMS) if SHA256SUMS in found else None
    if RELEASE_JSON in found:
        refs = parse_release_json(found[RELEASE_JSON], root / RELEASE_JSON)
        if sums is not None:
            _cross_check(refs, sums, root)
    elif sums is not None:
        refs = _refs_from_sums(sums)
    else:
        refs = _refs_from_torrents(root)
        if refs:
            sources.append(f"{TORRENTS}/*{TORRENT_SUFFIX} (unauthenticated)")
    return References(
        root,
        {r.path: r for r in refs},
        tuple(sources),
        bool(pubkey),
        bases,
        statement,
        not_downloaded,
        unlisted,
        damaged,
    )


def _folder_statement(
    root: Path, pubkey: str | None, trust_file: trust.TrustFile | None, now: datetime | None
) -> trust.FolderStatement | None:
    """The folder's publication statement (read_folder_statement), None if it has none. trust/ is loaded
    only for a folder with a statement or a check given a key: an unsigned release never needs it, and
    its `verify --pieces` start-up is part of the wait."""
    path = root / layout.STATEMENT
    if not pubkey and not path.exists() and not path.is_symlink():  # read_folder_statement's own test
        return None
    from packager import trust  # see the docstring

    key = trust.public_key_text(pubkey) if pubkey else None
    return trust.read_folder_statement(root, key, trust_file if pubkey else None, now)


def _check_statement(
    fs: trust.FolderStatement, root: Path, found: dict[str, bytes], whole: bool
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Check the manifests read (and with `whole`, every file the statement lists) against the statement;
    MixedPublication naming each file that differs and the publication it is from. Returns the listed files
    absent from the folder, the files there that no statement lists (whole folder only), and the listed
    data files (the member index's pack and torrent) that are in no publication: damaged, not edited."""
    s = fs.statement
    wrong: list[tuple[str, int | None]] = []
    for name, data in found.items():
        try:
            s.check(name, data)
        except FileNotAuthenticated:
            wrong.append((name, s.publication_of(name, hashlib.sha256(data).hexdigest(), fs.history)))
    missing: list[str] = []
    damaged: list[str] = []
    if whole:
        # The .torrent files are checked with their shards, against release.json (itself checked here): a
        # damaged one is reported there, and never used.
        for rel in sorted(r for r in set(s.files) - set(found) if not _is_torrent(r)):
            path = root / rel
            if not path.exists() and not path.is_symlink():
                missing.append(rel)
                continue
            try:
                s.check_file(rel, path)
            except FileNotAuthenticated:
                n = _publication_of_file(fs, rel, path)
                if n is None and rel in _DATA_FILES:  # a directory or FIFO there too: data to fetch again
                    damaged.append(rel)
                else:
                    wrong.append((rel, n))
    if wrong:
        raise MixedPublication(root, s.publication, sorted(wrong))
    unlisted = tuple(_unlisted(root, s)) if whole else ()
    return tuple(missing), unlisted, tuple(damaged)


# Data with a torrent of its own, checked by verify as a shard is: damage there is a file to fetch again.
_DATA_FILES = (layout.MEMBER_INDEX, layout.MEMBER_INDEX_PACK, layout.MEMBER_INDEX_TORRENT)


def _is_torrent(rel: str) -> bool:
    """A shard's .torrent (checked with its shard); the member index's own is checked as any file."""
    return rel.startswith(f"{TORRENTS}/") and rel.endswith(SHARD_SUFFIX + TORRENT_SUFFIX)


def _publication_of_file(fs: trust.FolderStatement, rel: str, path: Path) -> int | None:
    """The publication whose statement lists the file at `path` (hashed only if some statement lists a file
    of its size at `rel`, and only if it is a regular file)."""
    sizes = {st.files[rel].size for st in (fs.statement, *fs.history) if rel in st.files}
    try:
        if not path.is_file() or path.stat().st_size not in sizes:
            return None
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
    return fs.statement.publication_of(rel, digest, fs.history)


def _unlisted(root: Path, s: trust.Statement) -> list[str]:
    """Published-looking files beside the manifests that the statement does not list (shards aside, which
    release.json lists; live files aside, which are never signed)."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/", 1)[0] == SHARDS or not path.is_file() or rel in s.files:
            continue
        if rel in (layout.STATEMENT, layout.signature_name(layout.STATEMENT), *layout.LIVE_FILES):
            continue
        out.append(rel)
    return out


def _cross_check(refs: list[ShardRef], sums: dict[str, str], root: Path) -> None:
    for ref in refs:
        for path, digest in ((ref.path, ref.sha256), (ref.torrent_path, ref.torrent_sha256)):
            if path and digest and path in sums and sums[path] != digest:
                raise UntrustedManifest(
                    root / SHA256SUMS,
                    f"{path}: {sums[path]} here, but {digest} in release.json",
                    hint="the two manifests come from different publications; fetch both again",
                )
