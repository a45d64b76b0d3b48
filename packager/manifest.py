"""The published manifests: release.json and torrents.json entries, SHA256SUMS, the opentracker whitelist,
minisign signatures, and the release-wide member index.

Formats are stable once published; `manifests/*.schema.json` describes each JSON one, and the tests validate
what we write against them. Every writer here is a pure function of its input (no clock, no randomness), so
the same published torrents give byte-identical files: publishing twice changes nothing, and a torrent's
release.json entry, frozen in state.sqlite when first published, never changes afterwards.

The member index is a SQLite file, not the release state: this module owns its schema and its two queries
(build and lookup), as container.py owns the tar format. Why SQLite and not zstd JSONL per phase: a lookup
is a B-tree search (measured: 14 us warm, 0.6 ms from a cold page cache at 10^6 and at 10^7 rows, and
O(log n) beyond), while a JSONL file has to be decompressed and scanned up to the id (0.38 s per 10^6
rows, so about 40 s per lookup at 10^8). See README "Publishing".
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import minisign

from . import layout
from .errors import PublishError, UsageError
from .fsutil import write_atomic
from .hashing import swarm_hashes, truncated_v2

FORMAT = 1


def json_number(value: float) -> int | float:
    """An integral popularity as an int ("7", not "7.0"), as in the member manifest."""
    number = float(value)
    return int(number) if number.is_integer() else number


# --- release.json entries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the published folder / a mirror's folder
    size: int
    sha256: str

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class TorrentEntry:
    """One torrent as release.json lists it. Frozen when first published."""

    name: str  # <release>-<phase>[-<tier>]-<seq>
    phase: str
    tier: str | None
    popularity_min: int | float
    popularity_max: int | float
    items: int
    data_size: int  # sum of the member sizes (uncompressed content)
    format: str
    piece_size: int
    info_hash_v1: str | None
    info_hash_v2: str | None  # the full SHA-256 (64 hex); trackers see its first 40
    magnet: str
    files: tuple[FileEntry, FileEntry]  # the shard, then its .torrent
    added: str  # ISO 8601 UTC, when the torrent was first published
    obsolete: bool = False

    @property
    def shard(self) -> FileEntry:
        return self.files[0]

    @property
    def torrent(self) -> FileEntry:
        return self.files[1]

    @property
    def torrent_file(self) -> str:
        return self.torrent.path

    @property
    def info_hash_v2_truncated(self) -> str | None:
        """BEP 52: trackers, DHT and the handshake carry the v2 info-hash truncated to 20 bytes."""
        return truncated_v2(self.info_hash_v2)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "phase": self.phase,
            "tier": self.tier,
            "popularity": {"min": self.popularity_min, "max": self.popularity_max},
            "items": self.items,
            "data_size": self.data_size,
            "format": self.format,
            "piece_size": self.piece_size,
            "info_hash_v1": self.info_hash_v1,
            "info_hash_v2": self.info_hash_v2,
            "magnet": self.magnet,
            "torrent_file": self.torrent_file,
            "files": [f.as_dict() for f in self.files],
            "added": self.added,
            "obsolete": self.obsolete,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TorrentEntry:
        d = json.loads(text)
        shard, torrent = (FileEntry(f["path"], f["size"], f["sha256"]) for f in d["files"])
        return cls(
            name=d["name"],
            phase=d["phase"],
            tier=d["tier"],
            popularity_min=d["popularity"]["min"],
            popularity_max=d["popularity"]["max"],
            items=d["items"],
            data_size=d["data_size"],
            format=d["format"],
            piece_size=d["piece_size"],
            info_hash_v1=d["info_hash_v1"],
            info_hash_v2=d["info_hash_v2"],
            magnet=d["magnet"],
            files=(shard, torrent),
            added=d["added"],
            obsolete=d["obsolete"],
        )


@dataclass(frozen=True)
class PhaseEntry:
    name: str
    published_at: str
    torrents: int

    def as_dict(self) -> dict:
        return {"name": self.name, "published_at": self.published_at, "torrents": self.torrents}


def _dump(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def release_json(
    release: str, version: str, phases: Sequence[PhaseEntry], entries: Sequence[TorrentEntry]
) -> bytes:
    """release.json: every torrent of every published phase, phases in publication order."""
    return _dump(
        {
            "format": FORMAT,
            "release": release,
            "packager_version": version,
            "phases": [p.as_dict() for p in phases],
            "torrents": [e.as_dict() for e in entries],
        }
    )


def torrent_url(base_url: str, entry: TorrentEntry) -> str:
    """The .torrent's URL under `[publish] base_url`; relative to the published folder without one."""
    file_name = entry.torrent_file.rsplit("/", 1)[-1]
    if not base_url:
        return entry.torrent_file
    return base_url + ("" if base_url.endswith("/") else "/") + file_name


def torrents_json(release: str, base_url: str, entries: Sequence[TorrentEntry]) -> bytes:
    """torrents.json for mirrors: Anna's Archive's field names (and meanings) where they apply.

    As there, `data_size` is what a seeder stores (the shard file), `display_name` the .torrent's file name,
    `added_to_torrents_list_at` a date, and the scrape fields are null until a tracker scrape fills them.
    """
    rows = []
    for e in entries:
        rows.append(
            {
                "url": torrent_url(base_url, e),
                "top_level_group_name": release,
                "group_name": e.phase,
                "display_name": e.torrent_file.rsplit("/", 1)[-1],
                "added_to_torrents_list_at": e.added[:10],
                "btih": e.info_hash_v1,
                "magnet_link": e.magnet,
                "torrent_size": e.torrent.size,
                "num_files": 1,
                "data_size": e.shard.size,
                "obsolete": e.obsolete,
                "embargo": False,
                "seeders": None,
                "leechers": None,
                "completed": None,
                "stats_scraped_at": None,
                "name": e.name,
                "phase": e.phase,
                "tier": e.tier,
                "info_hash_v2": e.info_hash_v2,
                "sha256": e.shard.sha256,
            }
        )
    return _dump(rows)


def sha256sums(entries: Iterable[TorrentEntry]) -> bytes:
    """coreutils format, `<hex>  <path>`, sorted by path: `sha256sum -c` works in a mirror's folder."""
    lines = sorted((f.path, f.sha256) for e in entries for f in e.files)
    for path, _ in lines:
        # Shard names are [A-Za-z0-9._-]; coreutils would need its backslash escape for anything odder.
        if "\\" in path or "\n" in path:
            raise ValueError(f"{path!r} needs escaping in SHA256SUMS")
    return "".join(f"{digest}  {path}\n" for path, digest in lines).encode()


def whitelist(entries: Iterable[TorrentEntry]) -> bytes:
    """opentracker's access.whitelist: one 40-hex info-hash a line, v1 and truncated v2 (BEP 52)."""
    return "".join(f"{h}\n" for h in whitelist_hashes(entries)).encode()


def whitelist_hashes(torrents: Iterable) -> list[str]:
    """The whitelist's hashes, in order, once each, of anything with `info_hash_v1` and `info_hash_v2`."""
    seen = {h.lower(): None for t in torrents for h in swarm_hashes(t.info_hash_v1, t.info_hash_v2)}
    return list(seen)


# --- minisign ---------------------------------------------------------------------------------------------


def public_key_path(secret_path: Path) -> Path:
    """keys/release.key -> keys/release.pub (minisign's own pairing); any other name gets `.pub` appended."""
    secret_path = Path(secret_path)
    if secret_path.suffix == ".key":
        return secret_path.with_suffix(".pub")
    return secret_path.with_name(secret_path.name + ".pub")


@dataclass(frozen=True)
class KeyPairFiles:
    secret: Path
    public: Path
    public_key: str  # the base64 line users pass to `minisign -P`
    key_id: str
    encrypted: bool


def generate_keypair(secret_path: Path, password: str | None, force: bool = False) -> KeyPairFiles:
    """Write a minisign Ed25519 key pair: the secret key (mode 0600; scrypt-encrypted unless `password` is
    None) and the public key beside it. Refuses to overwrite either unless `force`."""
    secret_path = Path(secret_path)
    if secret_path.is_dir() or not secret_path.name or secret_path.name in (".", ".."):
        raise UsageError(
            f"{secret_path}: is a folder; give the path of the key file to write",
            hint="e.g. packager keygen keys/release.key",
        )
    public_path = public_key_path(secret_path)
    if not force:
        for path in (secret_path, public_path):
            if path.exists():
                raise UsageError(f"{path}: already exists", hint="choose another path, or pass --force")
    if password is not None and not password:
        raise UsageError(
            "the password is empty", hint="give a password, or pass --unencrypted for automation"
        )
    pair = minisign.KeyPair.generate()
    secret, public = pair.secret_key, pair.public_key
    if password is not None:
        secret.encrypt(password)
    public.untrusted_comment = f"minisign public key {_key_id(public)}"
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(secret_path, bytes(secret) + b"\n")
    public_path.write_bytes(bytes(public) + b"\n")
    return KeyPairFiles(
        secret_path, public_path, public.to_base64().decode(), _key_id(public), password is not None
    )


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o600)


def _key_id(public: minisign.PublicKey) -> str:
    # The public key is "Ed" + 8-byte key id + 32-byte key; minisign prints the id as a little-endian
    # number in hex (`minisign public key 5A0B...`).
    raw = base64.b64decode(public.to_base64())
    return f"{int.from_bytes(raw[2:10], 'little'):X}"


@dataclass
class SigningKey:
    secret: minisign.SecretKey
    public_key: str  # base64, as in the .pub file's second line
    key_id: str
    path: Path

    def sign(self, data: bytes, file_name: str, timestamp: int) -> bytes:
        """A minisign signature file for `data` (prehashed, as minisign 0.10+ makes by default).

        Ed25519 is deterministic and the trusted comment takes its timestamp from the publication, not the
        clock, so the same key signs the same file to the same bytes: re-publishing changes nothing.
        """
        trusted = f"timestamp:{timestamp}\tfile:{file_name}\thashed"
        sig = self.secret.sign(
            data,
            prehash=True,
            trusted_comment=trusted,
            untrusted_comment="signature from minisign secret key",
        )
        return bytes(sig) + b"\n"


def load_signing_key(path: Path, password: Callable[[], str] | None = None) -> SigningKey:
    """Read a minisign secret key; `password()` is called only if the key is encrypted."""
    path = Path(path)
    try:
        secret = minisign.SecretKey.from_file(path)
    except FileNotFoundError:
        raise PublishError(
            path, "no such signing key", hint="create one with `packager keygen KEYFILE`"
        ) from None
    except OSError as e:
        raise PublishError(path, f"cannot read the signing key: {e.strerror}") from None
    except (minisign.Error, ValueError) as e:
        raise PublishError(path, f"not a minisign secret key ({e})") from None
    if secret.is_encrypted():
        if password is None:
            raise PublishError(
                path,
                "the signing key is encrypted and no password was given",
                hint="pass --password-file FILE or set PACKAGER_KEY_PASSWORD",
            )
        try:
            secret.decrypt(password())
        except minisign.Error:
            raise PublishError(path, "wrong password for this signing key") from None
    public = secret.get_public_key()
    return SigningKey(secret, public.to_base64().decode(), _key_id(public), path)


def verify_signature(public_key: str | bytes, data: bytes, signature: bytes) -> str:
    """Check a minisign signature; return its trusted comment. minisign.VerifyError if it does not match."""
    if isinstance(public_key, bytes) or "\n" in public_key:
        text = public_key.decode() if isinstance(public_key, bytes) else public_key
        public_key = [line for line in text.splitlines() if line and not line.startswith("untrusted")][0]
    pk = minisign.PublicKey.from_base64(public_key)
    sig = minisign.Signature.from_bytes(signature.rstrip(b"\n"))
    pk.verify(data, sig)
    return sig.trusted_comment


# --- the member index -------------------------------------------------------------------------------------

INDEX_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE torrents (
    n INTEGER PRIMARY KEY,          -- position in release.json's torrents, from 1
    name TEXT NOT NULL UNIQUE,
    phase TEXT NOT NULL,
    tier TEXT,
    info_hash_v1 TEXT,
    info_hash_v2 TEXT,
    magnet TEXT NOT NULL,
    torrent_file TEXT NOT NULL,     -- torrents/<name>.tar.zst.torrent
    shard_file TEXT NOT NULL,       -- shards/<name>.tar.zst
    shard_size INTEGER NOT NULL,
    piece_size INTEGER NOT NULL
);
CREATE TABLE members (
    id TEXT PRIMARY KEY,
    torrent INTEGER NOT NULL,       -- torrents.n
    offset INTEGER NOT NULL,        -- of the content in the shard's tar stream (uncompressed)
    size INTEGER NOT NULL,
    first_frame INTEGER NOT NULL,   -- the zstd frames holding the content, inclusive
    last_frame INTEGER NOT NULL,
    frames_offset INTEGER NOT NULL, -- shard file bytes [frames_offset, frames_offset + frames_size)
    frames_size INTEGER NOT NULL,   --   hold those frames, which decompress to the tar stream
    frames_tar_offset INTEGER NOT NULL,  -- from this offset on
    first_piece INTEGER NOT NULL,   -- the torrent pieces covering those bytes, inclusive
    last_piece INTEGER NOT NULL
) WITHOUT ROWID;
"""
_MEMBER_COLUMNS = (
    "offset",
    "size",
    "first_frame",
    "last_frame",
    "frames_offset",
    "frames_size",
    "frames_tar_offset",
    "first_piece",
    "last_piece",
)
_TORRENT_COLUMNS = (
    "name",
    "phase",
    "tier",
    "info_hash_v1",
    "info_hash_v2",
    "magnet",
    "torrent_file",
    "shard_file",
    "shard_size",
    "piece_size",
)


@dataclass(frozen=True)
class Location:
    """Where an item lies: which torrent, which bytes of its shard, which pieces to fetch for it alone."""

    id: str
    torrent: str
    phase: str
    tier: str | None
    info_hash_v1: str | None
    info_hash_v2: str | None
    magnet: str
    torrent_file: str
    shard_file: str
    shard_size: int
    piece_size: int
    offset: int
    size: int
    first_frame: int
    last_frame: int
    frames_offset: int
    frames_size: int
    frames_tar_offset: int
    first_piece: int
    last_piece: int

    @property
    def pieces(self) -> int:
        return self.last_piece - self.first_piece + 1


def member_rows(
    locations: Iterable[tuple[str, int, int, int, int]], frames: Sequence, piece_size: int
) -> Iterator[tuple]:
    """Index rows (id, offset, size, frames..., pieces) from (id, size, offset, first_frame, last_frame) and
    the shard's seek table (container.Frame objects): the pieces are those covering the member's frames,
    since a frame is the smallest unit that can be decompressed."""
    for ident, size, offset, first, last in locations:
        start = frames[first].compressed_offset
        end = frames[last].compressed_offset + frames[last].compressed_size
        yield (
            ident,
            offset,
            size,
            first,
            last,
            start,
            end - start,
            frames[first].decompressed_offset,
            start // piece_size,
            (end - 1) // piece_size,
        )


class MemberIndex:
    """The release-wide member index file (see INDEX_SCHEMA)."""

    def __init__(self, path: Path, db: sqlite3.Connection):
        self.path, self.db = Path(path), db

    @classmethod
    def create(cls, path: Path, release: str, base: Path | None = None) -> MemberIndex:
        """A new index at `path`, starting as a copy of `base` (an earlier index) when given."""
        path = Path(path)
        if base is not None:
            shutil.copyfile(base, path)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=OFF")  # written in a temporary folder, renamed only when complete
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA temp_store=FILE")
        if base is None:
            db.executescript(INDEX_SCHEMA)
            db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", str(FORMAT)), ("release", release)])
        return cls(path, db)

    @classmethod
    def open(cls, path: Path) -> MemberIndex:
        path = Path(path)
        if path.is_dir():
            path = path / layout.MEMBER_INDEX
        if not path.is_file():
            raise UsageError(
                f"{path}: no member index here",
                hint=f"pass the published folder or its {layout.MEMBER_INDEX}",
            )
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as e:
            db.close()
            raise UsageError(f"{path}: not a packager member index ({e})") from None
        if not row or row[0] != str(FORMAT):
            db.close()
            raise UsageError(f"{path}: unknown member index format {row and row[0]}")
        return cls(path, db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> MemberIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def torrent_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM torrents ORDER BY n")]

    def add_torrents(self, torrents: Iterable[tuple[int, TorrentEntry, Iterable[tuple]]]) -> None:
        """Add (n, entry, member_rows(...)) torrents. Rows are staged, then inserted in id order: sorted
        appends to the B-tree, much faster than random inserts at 10^8 rows."""
        db = self.db
        db.execute("BEGIN")
        db.execute(f"CREATE TEMP TABLE stage (id TEXT, torrent INTEGER, {', '.join(_MEMBER_COLUMNS)})")
        for n, e, rows in torrents:
            db.execute(
                f"INSERT INTO torrents (n, {', '.join(_TORRENT_COLUMNS)}) VALUES ({', '.join('?' * 11)})",
                (
                    n,
                    e.name,
                    e.phase,
                    e.tier,
                    e.info_hash_v1,
                    e.info_hash_v2,
                    e.magnet,
                    e.torrent_file,
                    e.shard.path,
                    e.shard.size,
                    e.piece_size,
                ),
            )
            db.executemany(
                "INSERT INTO temp.stage VALUES (?,?,?,?,?,?,?,?,?,?,?)", ((r[0], n, *r[1:]) for r in rows)
            )
        clash = db.execute(
            "SELECT s.id, t.name FROM temp.stage s JOIN members m ON m.id = s.id "
            "JOIN torrents t ON t.n = m.torrent LIMIT 1"
        ).fetchone()
        if clash:
            db.execute("ROLLBACK")
            raise PublishError(self.path, f"item {clash[0]!r} is already indexed in {clash[1]}")
        db.execute("INSERT INTO members SELECT * FROM temp.stage ORDER BY id")
        db.execute("DROP TABLE temp.stage")
        db.execute("COMMIT")

    def locate(self, ids: Iterable[str]) -> tuple[list[Location], list[str]]:
        """(found locations, ids not in the index), in the order asked."""
        found, missing = [], []
        cols = ", ".join(f"t.{c}" for c in _TORRENT_COLUMNS)
        member_cols = ", ".join(f"m.{c}" for c in _MEMBER_COLUMNS)
        sql = f"SELECT {cols}, {member_cols} FROM members m JOIN torrents t ON t.n = m.torrent WHERE m.id = ?"
        for ident in ids:
            row = self.db.execute(sql, (ident,)).fetchone()
            if row is None:
                missing.append(ident)
                continue
            found.append(Location(ident, *row))
        return found, missing
