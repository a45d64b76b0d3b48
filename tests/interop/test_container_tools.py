"""Our shards in the tools people already have: GNU tar, the zstd CLI, and pyzstd's seekable reader.

The format promise is that a shard is an ordinary .tar.zst to these, with nothing to warn about.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import pyzstd

from packager.container import RESERVED_MANIFEST_NAME, MemberSource, ShardReader, ShardWritten, write_shard
from tests.helpers import need

pytestmark = pytest.mark.interop

FRAME = 64 * 1024
MTIME = 1_735_689_600
# Names a tar tool could mangle: pax-only (non-ASCII, >100 bytes), spaces, and a member per frame edge case.
SPECS = [
    ("metadata/album.json", 1200, "text"),
    ("audio/Ünïcødé ♫ 日本語/01 - Track One.ogg", 3 * FRAME + 123, "random"),
    ("audio/" + "very long directory name " * 5 + "/02.ogg", FRAME, "random"),
    ("audio/   spaced   out   .ogg", FRAME - 512, "random"),
    ("art/empty.jpg", 0, "random"),
    ("art/one byte", 1, "random"),
]


@dataclass
class Shard:
    path: Path
    written: ShardWritten
    contents: dict[str, bytes]  # member path -> bytes


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # LC_ALL=C.UTF-8 and literal quoting: GNU tar would otherwise print non-ASCII names as octal escapes.
    env = os.environ | {"LC_ALL": "C.UTF-8"}
    return subprocess.run(args, input=stdin, capture_output=True, check=False, timeout=60, env=env)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Shard:
    base = tmp_path_factory.mktemp("shard")
    sources, contents = [], {}
    for i, (path, size, kind) in enumerate(SPECS):
        rng = random.Random(i)
        body = rng.randbytes(size) if kind == "random" else (b'{"title": "t\xc3\xa9st"}\n' * size)[:size]
        file = base / "src" / f"{i}"
        file.parent.mkdir(exist_ok=True)
        file.write_bytes(body)
        contents[path] = body
        sources.append(MemberSource(f"id{i}", path, kind, float(i), size, file, MTIME + i))
    out = base / "test-audio-00001.tar.zst"
    with open(out, "wb") as f:
        written = write_shard(f, sources, level=3, frame_size=FRAME, manifest_mtime=MTIME)
    return Shard(out, written, contents)


def test_gnu_tar_lists_the_members_and_the_manifest(shard: Shard) -> None:
    need("tar")
    names = run("tar", "--zstd", "--quoting-style=literal", "-tf", str(shard.path))
    assert names.returncode == 0 and names.stderr == b""
    assert names.stdout.decode().splitlines() == [*shard.contents, RESERVED_MANIFEST_NAME]
    verbose = run("tar", "--zstd", "--quoting-style=literal", "--numeric-owner", "-tvf", str(shard.path))
    assert verbose.returncode == 0 and verbose.stderr == b""
    lines = verbose.stdout.decode().splitlines()
    assert len(lines) == len(shard.contents) + 1
    for line, (path, body) in zip(
        lines, [*shard.contents.items(), (RESERVED_MANIFEST_NAME, None)], strict=True
    ):
        mode, owner, size, *_ = line.split()
        assert (mode, owner) == ("-rw-r--r--", "0/0")
        assert line.endswith(" " + path)
        if body is not None:
            assert int(size) == len(body)


def test_gnu_tar_extracts_the_exact_bytes(shard: Shard, tmp_path: Path) -> None:
    need("tar")
    done = run("tar", "--zstd", "-xf", str(shard.path), "-C", str(tmp_path))
    assert done.returncode == 0 and done.stderr == b""
    files = {str(p.relative_to(tmp_path)): p for p in tmp_path.rglob("*") if p.is_file()}
    assert set(files) == {*shard.contents, RESERVED_MANIFEST_NAME}
    for path, body in shard.contents.items():
        assert files[path].read_bytes() == body
        assert int(files[path].stat().st_mtime) == MTIME + list(shard.contents).index(path)
    lines = files[RESERVED_MANIFEST_NAME].read_bytes().split(b"\n")[:-1]
    assert len(lines) == len(shard.contents)


def test_zstd_tests_and_decompresses_the_whole_shard(shard: Shard) -> None:
    need("zstd")
    tested = run("zstd", "-t", str(shard.path))
    assert tested.returncode == 0, tested.stderr
    decompressed = run("zstd", "-dc", str(shard.path))
    assert decompressed.returncode == 0
    with ShardReader(shard.path) as reader:
        stream = b"".join(reader.read_frame(i) for i in range(len(reader.frames)))
    assert hashlib.sha256(decompressed.stdout).hexdigest() == hashlib.sha256(stream).hexdigest()
    assert len(stream) == shard.written.uncompressed_size
    # The same stream is a tar that Python's reader accepts with the same members.
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        assert tar.getnames() == [*shard.contents, RESERVED_MANIFEST_NAME]


def test_zstd_sees_the_frames_and_the_seek_table(shard: Shard) -> None:
    need("zstd")
    listed = run("zstd", "-lv", str(shard.path))
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout.decode()
    assert f"# Zstandard Frames: {shard.written.frames}" in text
    assert "# Skippable Frames: 1" in text
    assert "Check: XXH64" in text


def test_zstd_pipe_sha256sum_matches_the_uncompressed_stream(shard: Shard) -> None:
    need("zstd")
    need("sha256sum")
    piped = subprocess.run(
        f"zstd -dc '{shard.path}' | sha256sum", shell=True, capture_output=True, check=True, timeout=60
    )
    with ShardReader(shard.path) as reader:
        stream = b"".join(reader.read_frame(i) for i in range(len(reader.frames)))
    assert piped.stdout.split()[0].decode() == hashlib.sha256(stream).hexdigest()


def test_pyzstd_seekable_reader_finds_members_at_their_offsets(shard: Shard) -> None:
    with pyzstd.SeekableZstdFile(shard.path, "r") as f:
        assert f.seekable()
        for rec in shard.written.records:
            f.seek(rec.offset)
            assert f.read(rec.size) == shard.contents[rec.path]
        f.seek(0, os.SEEK_END)
        assert f.tell() == shard.written.uncompressed_size
