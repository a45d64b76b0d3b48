"""Hostile shards at the member level: every member `extract` would refuse is damage for `verify --deep`,
named; the manifest and the tar headers must agree; nothing may hide between listed members.

The shards are made by hand here (frames, manifest and seek table from container.format), since our own
writer cannot make them.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest
import xxhash
import zstandard
from typer.testing import CliRunner

from packager.cli import app
from packager.container import RESERVED_MANIFEST_NAME, MemberRecord, ShardReader, manifest_line
from packager.container.format import TAR_BLOCK, encode_seek_table, seek_checksum, tar_header
from packager.errors import UnsafeMemberName
from packager.verify import VerifyOptions, verify

MTIME = 1_735_689_600


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type, info.linkname = size, MTIME, 0o644, kind, linkname
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _pad(n: int) -> bytes:
    return b"\0" * (-n % TAR_BLOCK)


class Member:
    """One run of frames: a tar header (possibly lying) and content; `listed` overrides the manifest."""

    def __init__(self, name, content=b"", kind=tarfile.REGTYPE, linkname="", listed=None, header_size=None,
                 after=b"", unlisted=False):  # fmt: skip
        self.name, self.content, self.kind, self.linkname = name, content, kind, linkname
        self.listed = listed or {}
        self.header_size = len(content) if header_size is None else header_size
        self.after, self.unlisted = after, unlisted


def hostile_shard(path: Path, members: list[Member]) -> Path:
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    frames, entries, records = [], [], []
    pos = 0
    for m in members:
        head = _header(m.name, m.header_size, m.kind, m.linkname)
        run = head + m.content + _pad(len(m.content)) + m.after
        index = len(frames)
        frames.append(run)
        if not m.unlisted:
            fields = {"id": f"id-{len(records)}", "path": m.name, "kind": "audio", "popularity": 1.0,
                      "size": len(m.content), "xxh3_128": xxhash.xxh3_128(m.content).hexdigest(),
                      "sha256": hashlib.sha256(m.content).hexdigest(), "offset": pos + len(head),
                      "first_frame": index, "last_frame": index} | m.listed  # fmt: skip
            records.append(MemberRecord(**fields))
        pos += len(run)
    body = b"".join(manifest_line(r) for r in records)
    frames.append(
        tar_header(RESERVED_MANIFEST_NAME, len(body), MTIME) + body + _pad(len(body)) + b"\0" * 1024
    )
    out = bytearray()
    for data in frames:
        c = cctx.compress(data)
        out += c
        entries.append((len(c), len(data), seek_checksum(xxhash.xxh64_intdigest(data))))
    path.write_bytes(bytes(out) + encode_seek_table(entries))
    return path


def deep(path: Path):
    report = verify([path], VerifyOptions(deep=True))
    return report, report.files[0]


def damaged(path: Path) -> dict[str | None, str]:
    report, r = deep(path)
    assert report.exit_code() == 1, [f.message for f in r.findings]
    return {d.path: d.reason for d in r.damaged_members} | {
        f.member_path: f.message for f in r.findings if f.member_path == RESERVED_MANIFEST_NAME
    }


GOOD = Member("a/good.ogg", b"x" * 1000)


def test_a_hand_made_shard_is_good_when_honest(tmp_path):
    shard = hostile_shard(tmp_path / "s.tar.zst", [GOOD, Member("b/2.ogg", b"y" * 700), Member("c/empty")])
    report, r = deep(shard)
    assert report.exit_code() == 0 and r.members == 3, [f.message for f in r.findings]
    with ShardReader(shard) as reader:
        assert [rec.path for rec in reader.manifest()] == ["a/good.ogg", "b/2.ogg", "c/empty"]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (Member("/etc/cron.d/evil", b"* * * * * root sh\n"), "extract refuses its path '/etc/cron.d/evil'"),
        (Member("../../.bashrc", b"evil\n"), "'..' component"),
        (Member("a/./b", b"z"), "'.' component"),
        (Member("link", kind=tarfile.SYMTYPE, linkname="/etc"), "symbolic link to '/etc'"),
        (Member("hard", kind=tarfile.LNKTYPE, linkname="a/good.ogg"), "hard link to 'a/good.ogg'"),
        (Member("tty", kind=tarfile.CHRTYPE), "character device"),
        (Member("disk", kind=tarfile.BLKTYPE), "block device"),
        (Member("pipe", kind=tarfile.FIFOTYPE), "FIFO"),
        (Member("folder", kind=tarfile.DIRTYPE), "directory"),
        (Member("a/real.ogg", b"q" * 300, listed={"path": "a/listed.ogg"}),
         "its tar header names 'a/real.ogg', the manifest 'a/listed.ogg'"),
        (Member("a/size.ogg", b"q" * 300, header_size=200),
         "its tar header gives 200 bytes, the manifest 300"),
        (Member("a/tail.ogg", b"q" * 300, after=_header("evil.sh", 5) + b"rm -rf" + _pad(6)),
         "bytes after its content and padding"),
    ],
)  # fmt: skip
def test_every_member_extract_would_refuse_is_damage_named(tmp_path, member, reason):
    shard = hostile_shard(tmp_path / "s.tar.zst", [GOOD, member, Member("z/last.ogg", b"w" * 10)])
    found = damaged(shard)
    listed = member.listed.get("path", member.name)
    assert set(found) == {listed}, found
    assert reason in found[listed]
    r = CliRunner().invoke(app, ["verify", str(shard), "--deep"])
    assert r.exit_code == 1 and listed in r.output and reason in r.output


def test_a_member_hidden_between_listed_ones_is_found(tmp_path):
    hidden = Member("evil-link", kind=tarfile.SYMTYPE, linkname="/", unlisted=True)
    shard = hostile_shard(tmp_path / "s.tar.zst", [GOOD, hidden, Member("b/next.ogg", b"n" * 50)])
    found = damaged(shard)
    # The hidden run is counted as the next member's first frame: its header is not that member's.
    assert list(found) == ["b/next.ogg"] and "symbolic link" in found["b/next.ogg"]
    before_manifest = hostile_shard(tmp_path / "t.tar.zst", [GOOD, hidden])
    found = damaged(before_manifest)
    assert "'evil-link' the manifest does not list" in found[RESERVED_MANIFEST_NAME]


def test_extract_refuses_what_verify_refuses(tmp_path):
    shard = hostile_shard(tmp_path / "s.tar.zst", [GOOD, Member("../escape", b"e")])
    with ShardReader(shard) as reader, pytest.raises(UnsafeMemberName, match="'..' component"):
        reader.extract(["id-1"], tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_without_a_manifest_unsafe_members_named_from_their_headers(tmp_path):
    shard = hostile_shard(tmp_path / "s.tar.zst", [GOOD, Member("link", kind=tarfile.SYMTYPE, linkname="/")])
    data = shard.read_bytes()
    with ShardReader(shard) as reader:
        cut = reader.frames[-1].compressed_offset  # the manifest's frame and the seek table lost
    shard.write_bytes(data[:cut])
    report, r = deep(shard)
    assert report.exit_code() == 1
    named = {d.path: d.reason for d in r.damaged_members}
    assert "symbolic link to '/'" in named["link"] and "a/good.ogg" not in named


# ---- nothing to verify ------------------------------------------------------------------------------------


def test_nothing_to_verify_is_bad_input(tmp_path, workspace, archive):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, workspace):
        r = CliRunner().invoke(app, ["verify", str(target)])
        assert r.exit_code == 2 and f"no shard found under {target}" in r.output, r.output
    from tests.helpers import catalog, prepare

    prepare(workspace, archive, catalog(archive))  # ingested and planned, nothing built
    (workspace / "shards").mkdir(exist_ok=True)
    r = CliRunner().invoke(app, ["verify", str(workspace), "--json"])
    assert r.exit_code == 2 and "no shard found" in r.output
