"""Small helpers shared by several test modules."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import jsonschema
import libtorrent as lt
import pytest
from hypothesis import strategies as st

from packager import layout
from packager.build import build
from packager.catalog import IngestOptions, ingest
from packager.manifest import FileEntry, TorrentEntry
from packager.plan import plan
from packager.publish import publish
from packager.state import open_state
from packager.swarm.health import health
from packager.workspace import Workspace
from tests.interop.harness import seed_command, wait_until

__all__ = ["seed_command", "wait_until"]  # the harness's, for the tests that import them from here

MANIFESTS = Path(__file__).parent.parent / "manifests"


def need(binary: str) -> str:
    """The path of a program the test drives, or a skip naming the Debian package list to install."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (Debian packages: see scripts/dev.sh)")
    return path


def sha256_of(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def patience(seconds: float, most: float = 4.0) -> float:
    """`seconds` stretched by how busy the machine is (its 1-minute load average per core, from 1 to `most`
    times): a wait for real peers that a loaded machine does not fail by coincidence, and that still ends."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return seconds * min(most, max(1.0, load))


# --- published formats: a fixed entry, and hypothesis strategies for any entry ------------------------------


def torrent_entry(
    name="r-audio-t1-00001", fmt="v1", v1="a" * 40, v2=None, added="2025-01-01T00:00:00Z"
) -> TorrentEntry:
    return TorrentEntry(
        name=name, phase="audio", tier="t1", popularity_min=10, popularity_max=99.5, items=3, data_size=1000,
        format=fmt, piece_size=16384, info_hash_v1=v1, info_hash_v2=v2,
        magnet=f"magnet:?xt=urn:{'btih:' + v1 if v1 else 'btmh:1220' + v2}&dn={name}.tar.zst",
        files=(FileEntry(f"shards/{name}.tar.zst", 900, "1" * 64),
               FileEntry(f"torrents/{name}.tar.zst.torrent", 200, "2" * 64)),
        added=added,
    )  # fmt: skip


WORD = st.from_regex(r"[a-z0-9][a-z0-9_]{0,8}", fullmatch=True)
HEX40 = st.from_regex(r"[0-9a-f]{40}", fullmatch=True)
HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
STAMP = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
NUMBER = st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False)
SIZE = st.integers(0, 2**50)


@st.composite
def torrent_entries(draw) -> TorrentEntry:
    name = f"{draw(WORD)}-{draw(WORD)}-{draw(st.integers(1, 99999)):05d}"
    fmt = draw(st.sampled_from(["v1", "hybrid", "v2"]))
    v1 = draw(HEX40) if fmt != "v2" else None
    v2 = draw(HEX64) if fmt != "v1" else None
    return TorrentEntry(
        name=name,
        phase=draw(WORD),
        tier=draw(st.none() | WORD),
        popularity_min=draw(NUMBER),
        popularity_max=draw(NUMBER),
        items=draw(SIZE),
        data_size=draw(SIZE),
        format=fmt,
        piece_size=draw(st.sampled_from([2**k for k in range(14, 27)])),
        info_hash_v1=v1,
        info_hash_v2=v2,
        magnet=f"magnet:?xt=urn:btih:{v1 or v2}&dn={draw(st.text(max_size=20))}",
        files=(
            FileEntry(layout.shard_file(name), draw(SIZE), draw(HEX64)),
            FileEntry(layout.torrent_file(name), draw(SIZE), draw(HEX64)),
        ),
        added=draw(STAMP),
        obsolete=draw(st.booleans()),
    )


def unique_by_name(items: list[TorrentEntry]) -> list[TorrentEntry]:
    return list({e.name: e for e in items}.values())


# --- a small archive and workspace, built and published ----------------------------------------------------

SMALL_CONFIG = """\
[release]
name = "t"
root = "{root}"
mtime = 1735689600

[torrents]
trackers = [["http://127.0.0.1:6969/announce"]]

[[phases]]
name = "metadata"
kinds = ["metadata"]
shard_size = "1MB"
level = 3
frame_size = "64KiB"

[[phases]]
name = "audio"
kinds = ["audio"]
shard_size = "{audio_shard}"
level = -1
frame_size = "64KiB"

  [[phases.tiers]]
  name = "t1"
  min_popularity = 50

  [[phases.tiers]]
  name = "t2"
  max_popularity = 50

[[phases]]
name = "art"
kinds = ["art"]
shard_size = "100kB"
level = 1
frame_size = "64KiB"
"""


class Archive:
    """An archive root plus helpers to add files and write catalogs for them."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "archive"
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, path: str, data: bytes | int) -> int:
        body = data if isinstance(data, bytes) else bytes((i * 7 + len(path)) % 251 for i in range(data))
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(body)
        return len(body)

    def jsonl(self, rows: list[dict], name: str = "catalog.jsonl") -> Path:
        path = self.base / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path


def shard_members(ws: Path) -> dict[str, list[str]]:
    """shard name -> member ids in plan order."""
    with open_state(ws) as state:
        return {s.name: [m.id for m in state.iter_members(s.id)] for s in state.shards()}


def prepare(ws: Path, archive, rows, name="c.jsonl"):
    with Workspace.open(ws) as w:
        ingest(w, [archive.jsonl(rows, name)], IngestOptions())
        plan(w)


def run_build(ws: Path, jobs=1, **kw):
    with Workspace.open(ws) as w:
        return build(w, jobs_count=jobs, **kw)


def rows_for(archive, n=12, seed=3, size=(0, 40_000)):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        body = rng.randbytes(rng.randint(*size))
        path = f"audio/{i % 3}/tr {i:02d} é.ogg"
        archive.add(path, body)
        rows.append(
            {
                "id": f"t{i:02d}",
                "path": path,
                "kind": "audio",
                "popularity": rng.choice([5, 20, 70, 90]),
                "size": len(body),
            }
        )
    meta = b"".join(json.dumps({"n": i, "title": "x" * 50}).encode() + b"\n" for i in range(2000))
    archive.add("meta/all.jsonl", meta)
    rows.append({"id": "m", "path": "meta/all.jsonl", "kind": "metadata", "popularity": 0, "size": len(meta)})
    return rows


def digests(ws: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for d in ("shards", "torrents")
        for p in sorted((ws / d).iterdir())
    }


def schema(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.schema.json").read_text())


def validate(data, name: str) -> None:
    jsonschema.validate(data, schema(name), cls=jsonschema.Draft202012Validator)


def catalog(archive, n: int = 14, seed: int = 5, prefix: str = "t") -> list[dict]:
    """Audio files of 0-60 KB over both tiers (several shards of 100 kB, members spanning 16 KiB pieces and
    64 KiB frames), plus one metadata file."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        body = rng.randbytes(rng.choice([0, 700, 20_000, 45_000, 60_000, 90_000]))
        path = f"audio/{prefix}{i:02d}.ogg"
        archive.add(path, body)
        popularity = rng.choice([10, 45.5, 70])
        rows.append({"id": f"{prefix}{i:02d}", "path": path, "kind": "audio", "popularity": popularity,
                     "size": len(body)})  # fmt: skip
    if prefix == "t":
        meta = b"".join(json.dumps({"n": i, "title": "y" * 40}).encode() + b"\n" for i in range(1500))
        archive.add("meta/all.jsonl", meta)
        rows.append(
            {"id": "m", "path": "meta/all.jsonl", "kind": "metadata", "popularity": 0, "size": len(meta)}
        )
    return rows


def do_publish(ws: Path, phase: str, **kw):
    with Workspace.open(ws) as w:
        return publish(w, phase, **kw)


def folder_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def published_entries(ws: Path) -> list[tuple[int, dict]]:
    """(shard id, release.json entry) of every published torrent, in release order."""
    with open_state(ws) as state:
        rows = state.published_entries()
    return [(sid, json.loads(text)) for sid, _, text in rows]


def run_health(ws: Path, urls, **kw):
    """`packager health`'s library call on the workspace at `ws`."""
    with Workspace.open(ws) as workspace:
        return health(workspace, urls, **kw)


# --- libtorrent as the reference ---------------------------------------------------------------------------

LT_FLAGS = {"v1": lt.create_torrent.v1_only, "hybrid": 0, "v2": lt.create_torrent.v2_only}


def libtorrent_torrent(path: Path, piece_size: int, fmt: str, **extra) -> bytes:
    # no_attributes: keep `attr` out even if the file happens to be executable; our info dict never has it.
    files = lt.list_files(str(path), flags=lt.create_torrent.no_attributes)
    creator = lt.create_torrent(files, piece_size, flags=LT_FLAGS[fmt])
    for tier, urls in enumerate(extra.get("trackers", ())):
        for url in urls:
            creator.add_tracker(url, tier)
    for url in extra.get("web_seeds", ()):
        creator.add_url_seed(url)
    creator.set_priv(extra.get("private", False))
    if "created_by" in extra:
        creator.set_creator(extra["created_by"])
    if "comment" in extra:
        creator.set_comment(extra["comment"])
    creator.set_creation_date(extra.get("creation_date", 0))
    lt.set_piece_hashes(creator, str(path.parent))
    return lt.bencode(creator.generate())


def info_section(metainfo: bytes) -> bytes:
    return lt.torrent_info(metainfo).info_section()
