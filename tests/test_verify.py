"""Verifying downloads: file, piece and member level, partial downloads, signatures, and fault injection.

One small release (v1, hybrid and v2 torrents; members spanning several 64 KiB frames) is built once per
module and laid out as a mirror. Each fault case copies only the files it changes (the rest are hard
links), injects the fault and checks that verify finds it in the right file, pieces and members, against
an oracle that compares the damaged bytes with the originals frame by frame.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import minisign
import pytest
import zstandard
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.container import RESERVED_MANIFEST_NAME, Frame, MemberRecord, ShardReader
from packager.errors import MixedPublication, PublicationRefused, UntrustedManifest, UsageError
from packager.publish import publish
from packager.signing import generate_keypair, load_signing_key
from packager.verify import (
    BytesRead,
    Check,
    FileChecked,
    FileKind,
    Level,
    PassStarted,
    Severity,
    Status,
    VerifyOptions,
    ranges,
    verify,
)
from packager.workspace import Workspace
from tests.helpers import SMALL_CONFIG, Archive, prepare, run_build

FAULT_CASES = 240


# --- the release, built once ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    name: str
    rel: str  # shards/<name>.tar.zst
    data: bytes
    frames: list[Frame]
    records: list[MemberRecord]
    piece_size: int
    format: str
    torrent_rel: str


@dataclass(frozen=True)
class Release:
    workspace: Path
    mirror: Path
    shards: dict[str, ShardInfo]  # by rel
    public_key: str  # base64 line
    pub_file: Path


def _rows(archive: Archive) -> list[dict]:
    rng = random.Random(7)
    rows = []
    for i in range(30):
        body = rng.randbytes(rng.choice([0, 300, rng.randint(1, 150_000), rng.randint(70_000, 200_000)]))
        path = f"audio/{i % 3}/t{i:02d} é.ogg"
        archive.add(path, body)
        rows.append(
            {
                "id": f"a{i:02d}",
                "path": path,
                "kind": "audio",
                "popularity": rng.choice([5, 20, 70, 90]),
                "size": len(body),
            }
        )
    meta = b"".join(json.dumps({"n": i, "x": rng.randbytes(20).hex()}).encode() + b"\n" for i in range(6000))
    archive.add("meta/all.jsonl", meta)
    rows.append({"id": "m", "path": "meta/all.jsonl", "kind": "metadata", "popularity": 0, "size": len(meta)})
    for i in range(12):
        body = rng.randbytes(rng.randint(5_000, 30_000))
        archive.add(f"art/{i}.jpg", body)
        rows.append(
            {"id": f"art{i}", "path": f"art/{i}.jpg", "kind": "art", "popularity": i, "size": len(body)}
        )
    return rows


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    """Built and published (signed) once; `mirror` is a downloader's folder: the published files + shards/."""
    base = tmp_path_factory.mktemp("release")
    archive = Archive(base)
    ws = base / "ws"
    Workspace.init(ws, archive.root, "t").close()
    config = SMALL_CONFIG.replace("{root}", str(archive.root)).replace("{audio_shard}", "400kB")
    config = config.replace('name = "art"\nkinds = ["art"]', 'name = "art"\nkinds = ["art"]\nformat = "v2"')
    config = config.replace('kinds = ["metadata"]', 'kinds = ["metadata"]\nformat = "hybrid"')
    (ws / layout.CONFIG).write_text(config, encoding="utf-8")
    prepare(ws, archive, _rows(archive))
    assert not run_build(ws).failed
    keys = generate_keypair(base / "keys" / "release.key", password=None)
    with Workspace.open(ws) as w:
        for phase in ("metadata", "audio", "art"):
            publish(w, phase, key=lambda: load_signing_key(keys.secret))
    mirror = base / "mirror"
    shutil.copytree(ws / layout.PUBLISHED, mirror)
    shutil.copytree(ws / "shards", mirror / "shards")
    doc = json.loads((mirror / "release.json").read_text())
    shards = {}
    for entry in doc["torrents"]:
        rel = entry["files"][0]["path"]
        with ShardReader(mirror / rel) as reader:
            frames, records = reader.frames, reader.manifest()
        data = (mirror / rel).read_bytes()
        shards[rel] = ShardInfo(
            entry["name"],
            rel,
            data,
            frames,
            records,
            entry["piece_size"],
            entry["format"],
            entry["torrent_file"],
        )
    formats = {s.format for s in shards.values()}
    assert formats == {"v1", "hybrid", "v2"}, formats
    assert any(r.last_frame > r.first_frame for s in shards.values() for r in s.records), (
        "multi-frame members"
    )
    return Release(ws, mirror, shards, keys.public_key, keys.public)


def copy_mirror(release: Release, dest: Path, change: set[str] = frozenset()) -> Path:
    """A copy of the mirror: hard links, except real copies of the files in `change`."""
    for src in release.mirror.rglob("*"):
        target = dest / src.relative_to(release.mirror)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        rel = str(src.relative_to(release.mirror))
        if rel in change or rel.endswith(".json") or rel.startswith("SHA256SUMS"):
            shutil.copyfile(src, target)
        else:
            os.link(src, target)
    return dest


def check(paths, **options) -> object:
    return verify([paths] if isinstance(paths, Path) else paths, VerifyOptions(**options))


def by_path(report) -> dict:
    return {r.path: r for r in report.files}


# --- clean release ----------------------------------------------------------------------------------------


def test_untouched_release_is_clean_at_every_level(release):
    events = []
    report = verify(
        [release.mirror],
        VerifyOptions(pieces=True, deep=True, pubkey=str(release.pub_file)),
        on_event=events.append,
    )
    assert report.exit_code() == 0, [f.message for f in report.all_findings()]
    assert report.authenticated and any("signature good" in s for s in report.sources)
    files = by_path(report)
    assert len(files) == 2 * len(release.shards)
    for rel, info in release.shards.items():
        r = files[rel]
        assert r.status == "ok" and r.levels == ["size", "pieces", "members"]
        assert r.members == len(info.records) and not r.damaged_members and not r.bad_pieces
        assert r.pieces == -(-len(info.data) // info.piece_size)
        assert r.bytes_read == len(info.data), "three levels, one read"
        assert files[info.torrent_rel].status == "ok"
    assert not [f for f in report.all_findings() if f.severity != Severity.NOTE]
    started = [e for e in events if isinstance(e, PassStarted)]
    assert sum(e.n for e in events if isinstance(e, BytesRead)) == sum(e.total for e in started)
    assert len([e for e in events if isinstance(e, FileChecked)]) == len(files)


def test_default_level_reads_each_shard_once_for_its_sha256(release):
    report = check(release.mirror)
    assert report.exit_code() == 0
    for rel, info in release.shards.items():
        r = by_path(report)[rel]
        assert r.levels == ["size", "sha256"] and r.bytes_read == len(info.data) and r.sha256
    notes = [f.message for f in report.findings]
    assert any("unauthenticated" in n for n in notes)


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_do_not_change_the_result(release, jobs):
    a = check(release.mirror, pieces=True, deep=True, jobs=jobs).as_dict()
    b = check(release.mirror, pieces=True, deep=True, jobs=1).as_dict()
    assert a == b


# --- the oracle -------------------------------------------------------------------------------------------


def bad_pieces_oracle(info: ShardInfo, data: bytes) -> set[int]:
    length, size = len(info.data), info.piece_size
    return {
        i
        for i in range(-(-length // size))
        if data[i * size : min((i + 1) * size, length)] != info.data[i * size : min((i + 1) * size, length)]
    }


def damaged_frames_oracle(info: ShardInfo, data: bytes) -> set[int]:
    """Frames whose bytes no longer decompress to what they held (a changed byte that zstd ignores, such as
    a larger window size, leaves the frame good)."""
    dctx = zstandard.ZstdDecompressor()
    bad = set()
    for f in info.frames:
        end = f.compressed_offset + f.compressed_size
        old, new = info.data[f.compressed_offset : end], data[f.compressed_offset : end]
        if old == new:
            continue
        try:
            if dctx.decompress(new, max_output_size=f.decompressed_size) == dctx.decompress(old):
                continue
        except zstandard.ZstdError:
            pass
        bad.add(f.index)
    return bad


def owners(info: ShardInfo, frames: set[int]) -> set[int]:
    """Member indexes whose run of frames includes one of `frames`; len(records) for the manifest."""
    out = set()
    for f in frames:
        out.add(next((j for j, r in enumerate(info.records) if r.last_frame >= f), len(info.records)))
    return out


def table_start(info: ShardInfo) -> int:
    last = info.frames[-1]
    return last.compressed_offset + last.compressed_size


# --- fault injection --------------------------------------------------------------------------------------


def flip(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    if rng.random() < 0.15:  # aim at the container's own structures too
        region = rng.choice(["table", "manifest", "header"])
        lo, hi = {
            "table": (len(data) - 40, len(data)),
            "manifest": (len(data) // 2, len(data)),
            "header": (0, 64),
        }[region]
    else:
        lo, hi = 0, len(data)
    for _ in range(rng.choice([1, 1, 1, 2, 5])):
        pos = rng.randrange(max(lo, 0), hi)
        out[pos] ^= rng.randrange(1, 256)
    return bytes(out), "flip"


def assert_localized(info: ShardInfo, data: bytes, r) -> None:
    """The report on one damaged shard names exactly the pieces and members the oracle finds."""
    assert r.status == "damaged", r.findings
    assert set(r.bad_pieces) == bad_pieces_oracle(info, data)
    frames = damaged_frames_oracle(info, data)
    present = {f.index for f in info.frames if f.compressed_offset < len(data)}
    members = owners(info, frames)
    manifest_ok = len(info.records) not in members
    if manifest_ok:
        assert {m.id for m in r.damaged_members} == {info.records[j].id for j in members}
        for m in r.damaged_members:
            record = next(rec for rec in info.records if rec.id == m.id)
            assert m.path == record.path and m.frames[1] == record.last_frame
            assert (
                set(range(m.pieces[0], m.pieces[1] + 1)) & set(r.bad_pieces)
                or not r.bad_pieces
                or m.pieces is None
            )
    elif any("named from the release's member index" in f.message for f in r.findings):
        # The manifest is unreadable, and the release's member index names the members, by id: every
        # member with a damaged or absent frame, and any whose frames a frame scan could not reach.
        named = {m.id: m for m in r.damaged_members}
        assert all(m.id is not None for m in r.damaged_members)
        assert {info.records[j].id for j in members if j < len(info.records)} <= set(named), r.findings
        for ident in set(named) - {info.records[j].id for j in members if j < len(info.records)}:
            assert "cannot be found" in named[ident].reason or "lost" in named[ident].reason, r.findings
    else:
        # The manifest is unreadable: members are named by path from their tar headers. A member whose
        # header frame is intact must be named; one whose header frame is damaged may be (if its header
        # decoded before the damage), else a lost run of frames must cover it; one whose header is past
        # the end of the file cannot be named.
        assert any(f.member_path == RESERVED_MANIFEST_NAME or "manifest" in f.message for f in r.findings)
        named = {m.path for m in r.damaged_members}
        assert all(m.id is None for m in r.damaged_members)
        assert named <= {info.records[j].path for j in members if j < len(info.records)}
        for j in members - {len(info.records)}:
            first, path = (info.records[j - 1].last_frame + 1 if j else 0), info.records[j].path
            if first not in present:
                assert path not in named
            elif first not in frames:
                assert path in named, (path, r.findings)
            elif path not in named:
                assert any(
                    f.frames and f.frames[0] <= first <= f.frames[1] and "tar header" in f.message
                    for f in r.findings
                ), (path, r.findings)
    if not frames and not members and len(data) >= len(info.data):
        assert not r.damaged_members
        hit_table = data[table_start(info) : len(info.data)] != info.data[table_start(info) :]
        if hit_table:
            assert any("seek table" in f.message for f in r.findings)


@pytest.mark.parametrize("seed", range(FAULT_CASES))
def test_fault_is_detected_and_localized(release, tmp_path, seed):
    rng = random.Random(seed)
    rels = sorted(release.shards)
    victim = rng.choice(rels)
    info = release.shards[victim]
    kind = rng.choices(["flip", "truncate", "append", "delete", "swap"], [10, 4, 2, 1, 1])[0]
    other = rng.choice([r for r in rels if r != victim])
    mirror = copy_mirror(release, tmp_path / "m", {victim, other} if kind == "swap" else {victim})
    path = mirror / victim
    data = info.data
    if kind == "flip":
        data, _ = flip(rng, data)
    elif kind == "truncate":
        data = data[: rng.randrange(0, len(data))]
    elif kind == "append":
        data = data + rng.randbytes(rng.randint(1, 70_000))
    if kind == "delete":
        path.unlink()
    elif kind == "swap":
        path.write_bytes(release.shards[other].data)
        (mirror / other).write_bytes(info.data)
    else:
        path.write_bytes(data)
    if data == info.data and kind in ("flip",):
        pytest.skip("the flips cancelled out")
    deep = seed % 4 != 3  # one case in four checks the default level: automatic pieces, members from pieces
    report = check(mirror, pieces=seed % 2 == 0, deep=deep, pubkey=release.public_key)
    files = by_path(report)
    flagged = {p for p, r in files.items() if r.status != "ok"}
    if kind == "delete":
        assert flagged == {victim} and files[victim].status == "missing"
        assert report.exit_code() == 1 and report.exit_code(partial=True) == 0
        assert {f.severity for f in files[victim].findings} == {Severity.MISSING}
        return
    if kind == "swap":
        assert flagged == {victim, other}
        for mine, theirs in ((victim, other), (other, victim)):
            assert any(f"holds {theirs}" in f.message for f in files[mine].findings)
            if deep:
                assert files[mine].damaged_members == []  # each is a sound shard, under the wrong name
        assert report.exit_code(partial=True) == 1
        return
    assert flagged == {victim}, [(p, r.findings) for p, r in files.items() if p in flagged]
    r = files[victim]
    assert report.exit_code(partial=True) == 1 and report.exit_code() == 1
    assert set(r.bad_pieces) == bad_pieces_oracle(info, data)
    if kind == "append":
        assert not r.bad_pieces and not r.damaged_members
        assert any("trailing data" in f.message for f in r.findings)
    if kind == "truncate":
        assert any("truncated" in f.message for f in r.findings)
    if deep:
        assert_localized(info, data, r)
    else:
        expected = {
            info.records[j].id
            for j in owners(info, damaged_frames_oracle(info, data))
            if j < len(info.records)
        }
        listed = {i for i, _ in r.members_in_bad_pieces if i}
        if r.members_in_bad_pieces or "manifest is unreadable" not in str(r.findings):
            assert expected <= listed or any("manifest is unreadable" in f.message for f in r.findings)


# --- specific faults --------------------------------------------------------------------------------------


def _big_member_shard(release: Release) -> ShardInfo:
    """The shard with the most members among those holding a member of several frames."""
    multi = [s for s in release.shards.values() if any(r.last_frame > r.first_frame for r in s.records)]
    return max(multi, key=lambda s: len(s.records))


def test_a_damaged_frame_does_not_hide_the_frames_after_it(release, tmp_path):
    info = _big_member_shard(release)
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    data = bytearray(info.data)
    # Damage the second member's first frame and the last member's last frame.
    targets = [info.records[1], info.records[-1]]
    for rec in targets:
        frame = info.frames[rec.last_frame]
        data[frame.compressed_offset + frame.compressed_size // 2] ^= 0xFF
    (mirror / info.rel).write_bytes(data)
    r = by_path(check(mirror, deep=True))[info.rel]
    assert {m.id for m in r.damaged_members} == {rec.id for rec in targets}
    assert r.members == len(info.records)


def test_seek_table_entries_damaged_blame_the_table_not_the_members(release, tmp_path):
    info = _big_member_shard(release)
    n = len(info.frames)
    table = len(info.data) - 9 - 12 * n  # the entries: compressed size, decompressed size, checksum
    for field_offset, what in ((4, "decompressed size"), (8, "checksum"), (0, "compressed size")):
        data = bytearray(info.data)
        data[table + 12 * (n // 2) + field_offset] ^= 0x01
        mirror = copy_mirror(release, tmp_path / what.replace(" ", "-"), {info.rel})
        (mirror / info.rel).write_bytes(data)
        r = by_path(check(mirror, deep=True, pieces=True))[info.rel]
        assert r.status == "damaged" and not r.damaged_members, (what, r.findings)
        assert any(f.message.startswith("seek table:") for f in r.findings), (what, r.findings)
        assert r.members == len(info.records)


def test_truncated_shard_names_the_member_it_ends_in(release, tmp_path):
    info = _big_member_shard(release)
    rec = max(info.records, key=lambda r: r.last_frame - r.first_frame)
    frame = info.frames[rec.last_frame]  # a continuation frame: its header is in an earlier frame
    cut = frame.compressed_offset + frame.compressed_size // 2
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    (mirror / info.rel).write_bytes(info.data[:cut])
    report = check(mirror, deep=True)
    r = by_path(report)[info.rel]
    # The manifest went with the end of the file; the release's member index names every member lost.
    lost = info.records[info.records.index(rec) :]
    assert [(m.id, m.path) for m in r.damaged_members] == [(x.id, x.path) for x in lost]
    assert (
        min(r.bad_pieces) == cut // info.piece_size
        and max(r.bad_pieces) == (len(info.data) - 1) // info.piece_size
    )
    messages = " ".join(f.message for f in r.findings)
    assert "truncated" in messages and "cut off by the end of the file" in messages
    # A lone copy, without the index: the member cut in half, named from its tar header, and the rest lost.
    lone = tmp_path / "lone" / Path(info.rel).name
    lone.parent.mkdir()
    lone.write_bytes(info.data[:cut])
    r = check(lone, deep=True).files[0]
    assert [(m.id, m.path) for m in r.damaged_members] == [(None, rec.path)]
    assert any(
        "any later members, the member manifest and the seek table are lost" in f.message for f in r.findings
    )


def test_a_cut_seek_table_leaves_every_member_good(release, tmp_path):
    info = _big_member_shard(release)
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    data = info.data[: table_start(info) + 10]
    (mirror / info.rel).write_bytes(data)
    r = by_path(check(mirror, deep=True))[info.rel]
    assert r.status == "damaged" and not r.damaged_members and r.members == len(info.records)
    assert set(r.bad_pieces) == bad_pieces_oracle(info, data) and r.bad_pieces
    assert any(f.message.startswith("seek table:") for f in r.findings)


def test_a_damaged_manifest_frame_leaves_every_member_named(release, tmp_path):
    info = _big_member_shard(release)
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    data = bytearray(info.data)
    manifest_frame = info.frames[info.records[-1].last_frame + 1]
    data[manifest_frame.compressed_offset + manifest_frame.compressed_size // 2] ^= 0x04
    (mirror / info.rel).write_bytes(data)
    r = by_path(check(mirror, deep=True))[info.rel]
    # Named and checked from the release's member index: all good but the manifest.
    assert r.status == "damaged" and not r.damaged_members and r.members == len(info.records)
    assert any(
        "member manifest" in f.message and f"frame {manifest_frame.index}" in f.message for f in r.findings
    )
    # A lone copy names its members from their tar headers instead.
    lone = tmp_path / "lone" / Path(info.rel).name
    lone.parent.mkdir()
    lone.write_bytes(data)
    r = check(lone, deep=True).files[0]
    assert r.status == "damaged" and not r.damaged_members and r.members == len(info.records)
    assert any("member manifest" in f.message and f.frames == (manifest_frame.index,) * 2 for f in r.findings)


def test_partial_download_missing_files_are_not_damage(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    gone = sorted(release.shards)[:2]
    for rel in gone:
        (mirror / rel).unlink()
    report = check(mirror, pieces=True)
    files = by_path(report)
    assert {p for p, r in files.items() if r.status == "missing"} == set(gone)
    assert Severity.DAMAGE not in {f.severity for f in report.all_findings()}
    assert report.exit_code() == 1 and report.exit_code(partial=True) == 0
    # A client's unfinished download under another name is pointed at, still missing.
    (mirror / (gone[1] + ".part")).write_bytes(b"\0" * 100)
    r = by_path(check(mirror))[gone[1]]
    assert r.status == "missing" and "unfinished download" in r.findings[0].message
    # A preallocated, half-downloaded file is damage: its missing pieces must still be fetched.
    info = release.shards[gone[0]]
    half = info.data[: len(info.data) // 2] + bytes(len(info.data) - len(info.data) // 2)
    (mirror / gone[0]).write_bytes(half)
    report = check(mirror)
    r = by_path(report)[gone[0]]
    assert r.status == "damaged" and set(r.bad_pieces) == bad_pieces_oracle(info, half)
    assert report.exit_code(partial=True) == 1


def test_shards_folder_and_single_files_find_the_release(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    rel = sorted(release.shards)[0]
    report = check(mirror / "shards", pubkey=release.public_key)
    assert len(report.files) == len(release.shards) and report.exit_code() == 0
    one = check(mirror / rel, pubkey=str(release.pub_file), pieces=True)
    assert [r.path for r in one.files] == [rel] and one.exit_code() == 0
    assert one.files[0].levels == ["size", "pieces"]


def test_a_workspace_and_its_published_folder_verify_in_place(release):
    for target in (release.workspace, release.workspace / layout.PUBLISHED, release.workspace / "shards"):
        report = check(target, pubkey=str(release.pub_file))
        files = by_path(report)
        assert report.exit_code() == 0, (target, [f.message for f in report.all_findings()])
        assert set(release.shards) <= set(files)
        assert all(files[rel].levels == ["size", "sha256"] for rel in release.shards)


def test_a_lone_shard_is_checked_against_its_own_manifest(release, tmp_path):
    info = _big_member_shard(release)
    lone = tmp_path / "downloads" / Path(info.rel).name
    lone.parent.mkdir()
    lone.write_bytes(info.data)
    report = check(lone)
    r = report.files[0]
    assert report.exit_code() == 0 and r.levels == ["members"] and r.members == len(info.records)
    assert any("own manifest" in f.message for f in r.findings)
    data = bytearray(info.data)
    rec = info.records[2]
    frame = info.frames[rec.last_frame]
    data[frame.compressed_offset + 20] ^= 0x40
    lone.write_bytes(data)
    r = check(lone).files[0]
    assert [m.id for m in r.damaged_members] == [rec.id] and r.damaged_members[0].pieces is None


def test_a_file_that_is_not_a_shard_is_bad_input(tmp_path):
    junk = tmp_path / "x.tar.zst"
    junk.write_bytes(os.urandom(5000))
    report = check(junk)
    assert report.files[0].status == "not a shard" and report.exit_code() == 2
    plain = tmp_path / "plain.tar.zst"
    plain.write_bytes(zstandard.ZstdCompressor().compress(b"\0" * 10240))
    assert check(plain).exit_code() == 2
    with pytest.raises(UsageError):
        check(tmp_path / "nowhere")


def test_a_frame_claiming_a_huge_size_is_refused_not_allocated(tmp_path):
    """23 bytes that claim a 4 EiB zstd frame: bad input, not a MemoryError from believing the claim."""
    header = (0xFD2FB528).to_bytes(4, "little") + bytes([0b11100000]) + (2**62).to_bytes(8, "little")
    hostile = tmp_path / "x.tar.zst"
    hostile.write_bytes(header + ((10 << 3) | 1).to_bytes(3, "little") + b"x" * 10)
    report = check(hostile)
    assert report.files[0].status == "not a shard" and report.exit_code() == 2
    assert "claims 4611686018427387904 bytes" in report.files[0].findings[0].message


def test_an_unlisted_shard_is_noted_and_checked_alone(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    info = next(iter(release.shards.values()))
    (mirror / "shards" / "stray.tar.zst").write_bytes(info.data)
    r = by_path(check(mirror))["shards/stray.tar.zst"]
    assert r.status == "unlisted" and r.levels == ["members"]


def test_a_damaged_torrent_is_reported_and_not_used(release, tmp_path):
    info = release.shards[sorted(release.shards)[0]]
    mirror = copy_mirror(release, tmp_path / "m", {info.torrent_rel, info.rel})
    torrent = bytearray((mirror / info.torrent_rel).read_bytes())
    torrent[len(torrent) // 2] ^= 0x01
    (mirror / info.torrent_rel).write_bytes(torrent)
    data = bytearray(info.data)
    data[100] ^= 1
    (mirror / info.rel).write_bytes(data)
    report = check(mirror)
    files = by_path(report)
    assert files[info.torrent_rel].status == "damaged"
    r = files[info.rel]
    assert r.status == "damaged" and "pieces" not in r.levels and "members" in r.levels  # members instead
    assert r.damaged_members and report.exit_code() == 1


@pytest.mark.parametrize("kind", ["fifo", "endless", "directory", "huge"])
def test_a_torrent_that_is_not_a_torrent_file_is_damage_not_a_hang(release, tmp_path, kind):
    """A FIFO at the .torrent's name blocked verify for ever, and /dev/zero behind a link filled memory:
    each is a damaged .torrent now (exit 1, fetch it again), read no further than libtorrent's 10 MB."""
    info = release.shards[sorted(release.shards)[0]]
    mirror = copy_mirror(release, tmp_path / "m")
    torrent = mirror / info.torrent_rel
    torrent.unlink()
    {
        "fifo": lambda: os.mkfifo(torrent),
        "endless": lambda: torrent.symlink_to("/dev/zero"),
        "directory": lambda: torrent.mkdir(),
        "huge": lambda: torrent.write_bytes(b"d" * 11_000_000),
    }[kind]()
    report = check(mirror, pieces=True)
    files = by_path(report)
    t = files[info.torrent_rel]
    assert t.status == "damaged" and report.exit_code() == 1
    size = (release.mirror / info.torrent_rel).stat().st_size
    refused = "is not a regular file: fetch it again"
    expected = f"11000000 bytes, expected {size}" if kind == "huge" else refused
    assert [f.message for f in t.findings] == [expected]
    r = files[info.rel]
    assert r.status == "ok" and r.levels == ["size", "sha256"]  # checked without its pieces
    assert any("pieces cannot be checked" in f.message for f in r.findings)
    # The shard given alone: its .torrent is no file of the check, so the shard carries the damage.
    alone = by_path(check(mirror / info.rel, pieces=True))[info.rel]
    assert alone.status == "damaged" and expected in [f.message for f in alone.findings]


def test_without_manifests_the_torrents_speak(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    for name in ("release.json", "release.json.minisig", "SHA256SUMS", "SHA256SUMS.minisig"):
        (mirror / name).unlink()
    info = release.shards[sorted(release.shards)[-1]]
    (mirror / info.rel).unlink()
    (mirror / info.rel).write_bytes(info.data[:-1000])
    report = check(mirror)
    r = by_path(report)[info.rel]
    assert r.levels[:2] == ["size", "pieces"] and set(r.bad_pieces) == bad_pieces_oracle(
        info, info.data[:-1000]
    )
    assert any("torrents/*.torrent (unauthenticated)" in s for s in report.sources)


# --- signatures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", ["release.json", "SHA256SUMS"])
def test_a_tampered_manifest_is_refused(release, tmp_path, manifest):
    mirror = copy_mirror(release, tmp_path / "m")
    target = mirror / manifest
    text = target.read_text()
    victim = release.shards[sorted(release.shards)[0]]
    forged = hashlib.sha256(b"evil").hexdigest()
    target.write_text(text.replace(hashlib.sha256(victim.data).hexdigest(), forged))
    assert target.read_text() != text
    edited = f"{manifest}: listed by no publication"
    with pytest.raises(MixedPublication, match=edited):
        check(mirror, pubkey=release.public_key)
    result = CliRunner().invoke(app, ["verify", str(mirror), "--pubkey", str(release.pub_file)])
    assert result.exit_code == 2 and edited in result.output
    # Without a key the (unauthenticated) statement still tells; without it, the forgery contradicts the
    # other manifest, and verify refuses to pick a side; their own signatures still tell with a key.
    assert CliRunner().invoke(app, ["verify", str(mirror)]).exit_code == 2
    (mirror / "publication.json").unlink()
    result = CliRunner().invoke(app, ["verify", str(mirror)])
    assert result.exit_code == 2 and "in release.json" in result.output and victim.rel in result.output
    # Forged consistently in both, only the signature can tell: unsigned, the shard is reported as damaged.
    other = mirror / ({"release.json", "SHA256SUMS"} - {manifest}).pop()
    other.write_text(other.read_text().replace(hashlib.sha256(victim.data).hexdigest(), forged))
    report = check(mirror)
    assert any("unauthenticated" in f.message for f in report.findings)
    assert by_path(report)[victim.rel].status == "damaged"


def test_missing_or_foreign_signatures_are_refused(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    (mirror / "publication.json.minisig").unlink()
    with pytest.raises(PublicationRefused, match="has no signature"):
        check(mirror, pubkey=release.public_key)
    (mirror / "publication.json").unlink()
    with pytest.raises(PublicationRefused, match="publication.json: missing"):
        check(mirror, pubkey=release.public_key)
    other = minisign.KeyPair.generate().public_key.to_base64().decode()
    mirror2 = copy_mirror(release, tmp_path / "m2")
    with pytest.raises(UntrustedManifest):
        check(mirror2, pubkey=other)
    lone = tmp_path / "lone" / "x.tar.zst"
    lone.parent.mkdir()
    lone.write_bytes(next(iter(release.shards.values())).data)
    with pytest.raises(UntrustedManifest, match="no release.json"):
        check(lone, pubkey=release.public_key)


def test_an_unauthenticated_torrent_does_not_replace_the_sha256(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    for name in ("release.json", "release.json.minisig", "SHA256SUMS.minisig", "publication.json"):
        (mirror / name).unlink()
    sums = mirror / "SHA256SUMS"
    sums.write_text("".join(line for line in sums.read_text().splitlines(True) if "torrents/" not in line))
    info = release.shards[sorted(release.shards)[1]]
    report = check(mirror, pieces=True)
    r = by_path(report)[info.rel]
    assert report.exit_code() == 0 and r.levels == ["size", "sha256", "pieces"]
    data = bytearray(info.data)
    data[len(data) // 3] ^= 0x01
    (mirror / info.rel).unlink()
    (mirror / info.rel).write_bytes(data)
    r = by_path(check(mirror, pieces=True))[info.rel]
    assert r.status == "damaged" and r.bad_pieces == sorted(bad_pieces_oracle(info, bytes(data)))


def test_release_json_contradicting_its_torrent_is_refused(release, tmp_path):
    mirror = copy_mirror(release, tmp_path / "m")
    doc = json.loads((mirror / "release.json").read_text())
    entry = next(e for e in doc["torrents"] if e["info_hash_v1"])
    entry["info_hash_v1"] = "0" * 40
    (mirror / "release.json").write_text(json.dumps(doc))
    (mirror / "SHA256SUMS").unlink()
    (mirror / "publication.json").unlink()  # else refused before: release.json is not the one it lists
    with pytest.raises(UntrustedManifest, match="contradicts|lists"):
        check(mirror)


def test_a_public_key_path_that_does_not_exist_is_a_usage_error(release, tmp_path):
    with pytest.raises(UsageError, match="no such public key file"):
        check(release.mirror, pubkey=str(tmp_path / "nope.pub"))


def test_memory_stays_flat_whatever_the_shard_size(tmp_path):
    """A 96 MB shard checked at every level never has more than a few read chunks in memory."""
    import tracemalloc

    from packager.container import MemberSource, write_shard
    from packager.hashing import ShardHasher
    from packager.torrent import TorrentSpec, build_metainfo

    sources = []
    for i in range(6):
        src = tmp_path / f"src{i}"
        src.write_bytes(os.urandom(16 * 2**20))
        sources.append(MemberSource(f"m{i}", f"a/{i}.ogg", "audio", 1, 16 * 2**20, src, 0))
    (tmp_path / "shards").mkdir()
    (tmp_path / "torrents").mkdir()
    shard = tmp_path / "shards" / "big.tar.zst"
    hasher = ShardHasher(256 * 1024)
    with open(shard, "wb") as out:
        write_shard(out, sources, level=-1, frame_size=2**20, manifest_mtime=0, sinks=hasher.sinks)
    hashes = hasher.finish()
    metainfo = build_metainfo(TorrentSpec(name=shard.name, hashes=hashes, format="v1"))
    (tmp_path / "torrents" / "big.tar.zst.torrent").write_bytes(metainfo)
    (tmp_path / "SHA256SUMS").write_text(
        f"{hashes.sha256.hex()}  shards/big.tar.zst\n"
        f"{hashlib.sha256(metainfo).hexdigest()}  torrents/big.tar.zst.torrent\n"
    )
    tracemalloc.start()
    try:
        report = check(tmp_path, pieces=True, deep=True, jobs=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.exit_code() == 0 and report.files[0].members == 6
    assert hashes.length > 96 * 10**6 and peak < 40 * 2**20, peak


def test_ranges():
    assert ranges([7, 1, 2, 3, 9, 8]) == [(1, 3), (7, 9)]


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_table_json_and_exit_codes(release, tmp_path):
    info = _big_member_shard(release)
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    data = bytearray(info.data)
    rec = info.records[1]
    frame = info.frames[rec.first_frame]
    data[frame.compressed_offset + frame.compressed_size // 2] ^= 0x10
    (mirror / info.rel).write_bytes(data)
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(mirror), "--deep", "--pubkey", release.public_key])
    assert result.exit_code == 1, result.output
    assert info.rel in result.output and "damaged" in result.output and rec.id in result.output
    assert "bad pieces" in result.output
    result = runner.invoke(app, ["verify", str(mirror), "--deep", "--json", "-j", "2"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 1 and doc["summary"]["damaged"] == 1
    entry = next(f for f in doc["files"] if f["path"] == info.rel)
    assert [m["id"] for m in entry["damaged_members"]] == [rec.id]
    assert any(f.get("member_id") == rec.id for f in doc["findings"])
    (mirror / info.rel).unlink()
    result = runner.invoke(app, ["verify", str(mirror), "--partial"])
    assert result.exit_code == 0 and "missing" in result.output
    result = runner.invoke(app, ["verify", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "error:" in result.output


def test_help_has_an_example():
    result = CliRunner().invoke(app, ["verify", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--pubkey" in result.output


def test_the_damage_vocabulary_keeps_its_json_strings():
    """The enums' values are what --json has always printed; scripts compare against them."""
    assert [s.value for s in Severity] == ["damage", "missing", "bad input", "note"]
    assert [s.value for s in Level] == ["release", "file", "piece", "member"]
    assert [s.value for s in Status] == ["ok", "damaged", "missing", "not a shard", "unlisted"]
    assert [s.value for s in FileKind] == ["shard", "torrent", "member index"]
    assert [s.value for s in Check] == ["size", "sha256", "pieces", "members"]
    assert json.dumps({Status.NOT_A_SHARD: [Severity.BAD_INPUT]}) == '{"not a shard": ["bad input"]}'


def test_cli_prints_member_paths_literally(tmp_path):
    from packager.container import MemberSource, write_shard

    src = tmp_path / "src"
    src.write_bytes(os.urandom(5000))
    shard = tmp_path / "x.tar.zst"
    members = [MemberSource("i[1]", "audio/[live] [bold]x.ogg", "audio", 1, 5000, src, 0)]
    with open(shard, "wb") as out:
        write_shard(out, members, level=1, frame_size=4096, manifest_mtime=0)
    with ShardReader(shard) as reader:
        frame = reader.frames[0]
    data = bytearray(shard.read_bytes())
    data[frame.compressed_offset + frame.compressed_size // 2] ^= 1
    shard.write_bytes(data)
    result = CliRunner().invoke(app, ["verify", str(shard)])
    assert result.exit_code == 1 and "member i[1] (audio/[live] [bold]x.ogg)" in result.output


def test_a_public_key_that_is_a_fifo_is_named_so(release, tmp_path):
    """It was 'no such public key file', for a file that is there (and was never read: it never ends)."""
    fifo = tmp_path / "key.pub"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        check(release.mirror, pubkey=str(fifo))


@pytest.mark.parametrize("jobs", ["-3", "-1"])
def test_a_negative_jobs_count_is_refused_as_build_refuses_it(release, jobs):
    """`verify -j -3` was accepted (and ran one file at a time); build refuses it, naming what 0 means."""
    r = CliRunner().invoke(app, ["verify", str(release.mirror), "-j", jobs])
    assert r.exit_code == 2, r.output
    assert f"--jobs {jobs}: must be 0 (one per core) or more" in r.output and "Traceback" not in r.output
    with pytest.raises(UsageError, match="one per core"):
        check(release.mirror, jobs=int(jobs))
    assert CliRunner().invoke(app, ["verify", str(release.mirror), "-j", "0"]).exit_code == 0


def test_the_piece_check_reads_into_a_page_aligned_buffer():
    """The kernel copies page-cache pages into a buffer 16 bytes past a page boundary (where malloc puts a
    bytearray's) at under half the speed: the piece check's buffer starts on a page (bench.py verify)."""
    import ctypes
    import mmap

    from packager.verify.passes import READ_CHUNK, _page_aligned

    for size in (1, 4096, READ_CHUNK):
        buffer = _page_aligned(size)
        assert len(buffer) == size and not buffer.readonly
        assert ctypes.addressof(ctypes.c_char.from_buffer(buffer)) % mmap.PAGESIZE == 0


def test_map_on_threads_keeps_order_and_raises_the_first_failure():
    """verify's one thread pool (concurrent.futures, which loads logging, is not on its path): results in
    the order of the items, at most `workers` at once, and after a failure no new item is started."""
    import threading
    import time

    from packager.verify.passes import map_on_threads

    running, most, lock = 0, 0, threading.Lock()

    def slow_square(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return n * n

    assert map_on_threads(slow_square, range(12), 3) == [n * n for n in range(12)]
    assert most == 3
    assert map_on_threads(slow_square, [], 4) == []
    started = []

    def fails_at_two(n: int) -> int:
        started.append(n)
        if n == 2:
            raise ValueError("two")
        return n

    with pytest.raises(ValueError, match="two"):
        map_on_threads(fails_at_two, range(100), 2)
    assert 2 in started and len(started) <= 4


def _v1_shard(release: Release, pieces: int = 8) -> ShardInfo:
    return next(
        s for s in release.shards.values() if s.format == "v1" and len(s.data) > pieces * s.piece_size
    )


@pytest.mark.parametrize("whole_read_fails", [True, False])
def test_an_unreadable_piece_is_a_bad_piece_and_the_check_goes_on(
    release, tmp_path, monkeypatch, whole_read_fails
):
    """A bad sector: the read error fails the piece it falls in, at its byte, and every later piece is still
    read and checked. It was 'cut off by the end of the file' for every piece after it, good or not. The
    disk either fails the whole read that touches the sector, or returns the bytes before it (a short
    read) and fails the next read."""
    info = _v1_shard(release)
    size = info.piece_size
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    data = bytearray(info.data)
    data[5 * size + 7] ^= 1  # damage after the bad sector too
    (mirror / info.rel).write_bytes(data)
    sector = range(2 * size + 100, 2 * size + 4196)
    inode = (mirror / info.rel).stat().st_ino
    real = os.preadv

    def failing(fd, buffers, offset):
        want = sum(len(b) for b in buffers)
        if os.fstat(fd).st_ino != inode or offset + want <= sector.start or offset >= sector.stop:
            return real(fd, buffers, offset)
        if offset < sector.start and not whole_read_fails:
            return real(fd, [memoryview(buffers[0])[: sector.start - offset]], offset)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    report = check(mirror / info.rel, pieces=True)
    r = report.files[0]
    assert r.bad_pieces == [2, 5] and r.status == "damaged" and report.exit_code() == 1
    errors = [f for f in r.findings if "read error" in f.message]
    assert len(errors) == 1 and 2 * size <= errors[0].offset <= sector.start
    assert errors[0].message == f"read error at byte {errors[0].offset}: Input/output error"
    assert not any("cut off" in f.message for f in r.findings)


@pytest.mark.parametrize("span_pieces, read", [(1, 5000), (3, 2 * 16384 + 1)])
def test_the_pieces_are_shared_out_in_spans_whatever_their_size(
    release, tmp_path, monkeypatch, span_pieces, read
):
    """The piece check's threads take spans of pieces as they go: with spans of a piece or a few, and reads
    that end inside pieces, every damaged piece is found and no other."""
    from packager.verify import passes

    info = _v1_shard(release)
    monkeypatch.setattr(passes, "SPAN", span_pieces * info.piece_size)
    monkeypatch.setattr(passes, "READ_CHUNK", read)
    mirror = copy_mirror(release, tmp_path / "m", {info.rel})
    data = bytearray(info.data)
    for at in (0, 3 * info.piece_size - 1, 3 * info.piece_size, len(data) - 1):
        data[at] ^= 0x40
    (mirror / info.rel).write_bytes(data)
    r = check(mirror / info.rel, pieces=True).files[0]
    assert r.bad_pieces == sorted(bad_pieces_oracle(info, bytes(data))) and len(r.bad_pieces) == 4
    assert r.bytes_read >= len(data)
    (mirror / info.rel).write_bytes(info.data[: 4 * info.piece_size + 10])  # cut short, inside a span
    r = check(mirror / info.rel, pieces=True).files[0]
    assert r.bad_pieces == list(range(4, -(-len(info.data) // info.piece_size)))
