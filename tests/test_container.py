"""The seekable .tar.zst shard: round trips, format details, random access, and every refusal."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import struct
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pyzstd
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packager.container import (
    RESERVED_MANIFEST_NAME,
    Frame,
    MemberRecord,
    MemberSource,
    ShardReader,
    ShardWritten,
    compress,
    manifest_line,
    write_shard,
    writer,
)
from packager.container import reader as reader_module
from packager.container.format import SeekTableError, read_frame_spans, read_seek_table
from packager.container.reader import FrameError, stream_frame
from packager.errors import ContainerError, MemberNotFound, ShardBuildError, ShardDamaged, UnsafeMemberName

FRAME = 4096  # small frames, so that members of a few KiB already span several
MTIME = 1_735_689_600


def content_for(seed: int, size: int) -> bytes:
    """Random bytes (stored raw by zstd) or text (really compressed), so both block kinds are exercised."""
    rng = random.Random(seed)
    if seed % 2:
        return rng.randbytes(size)
    words = [b"track", b"album", b"artist", b"\xc3\xa9t\xc3\xa9", b"popularity", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def make_sources(base: Path, specs: list[tuple[str, int]], **fields: object) -> list[MemberSource]:
    sources = []
    for i, (path, size) in enumerate(specs):
        file = base / "src" / f"{i}.bin"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content_for(i, size))
        values = {"kind": "audio", "popularity": 100 - i * 1.5, "mtime": MTIME + i} | fields
        sources.append(MemberSource(id=f"m{i}", path=path, size=size, source=file, **values))
    return sources


def build(shard: Path, members: object, frame_size: int = FRAME, **kwargs: object) -> ShardWritten:
    with open(shard, "wb") as out:
        return write_shard(out, members, level=3, frame_size=frame_size, manifest_mtime=MTIME, **kwargs)


def tar_stream(shard: Path) -> bytes:
    """The uncompressed tar stream, decoded by pyzstd independently of our reader."""
    return pyzstd.decompress(shard.read_bytes())


# --- strategies -------------------------------------------------------------------------------------------

component = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from([" ", "  a  b ", "x" * 70, "Ünïcødé ♫ 日本語", "-leading-dash", "trailing space "]),
).filter(lambda c: c not in (".", "..") and len(c.encode()) <= 255)

member_path = (
    st.lists(component, min_size=1, max_size=3).map("/".join).filter(lambda p: p.split("/")[0] != ".packager")
)

member_size = st.one_of(
    st.sampled_from([0, 1, 511, 512, 513, FRAME - 512, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 100]),
    st.integers(0, 4 * FRAME),
)


def no_file_dir_clash(paths: list[str]) -> bool:
    """A file and a directory of the same name cannot both be extracted."""
    dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    return not dirs.intersection(paths)


member_specs = st.lists(
    st.tuples(member_path, member_size), max_size=8, unique_by=lambda spec: spec[0]
).filter(lambda specs: no_file_dir_clash([p for p, _ in specs]))

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- round trip -------------------------------------------------------------------------------------------


@SETTINGS
@given(member_specs, st.sampled_from([FRAME, FRAME + 700, 64 * 1024]))
def test_round_trip_through_write_and_random_access(specs: list[tuple[str, int]], frame_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sources = make_sources(base, specs)
        shard = base / "s.tar.zst"
        progress: list[int] = []
        sunk = bytearray()
        written = build(shard, iter(sources), frame_size, sinks=[sunk.extend], on_progress=progress.append)
        data = shard.read_bytes()
        assert bytes(sunk) == data and written.compressed_size == len(data)
        assert sum(progress) == sum(size for _, size in specs)
        contents = {s.id: s.source.read_bytes() for s in sources}

        for src, rec in zip(sources, written.records, strict=True):
            body = contents[src.id]
            assert (rec.id, rec.path, rec.kind, rec.size) == (src.id, src.path, src.kind, src.size)
            assert rec.sha256 == hashlib.sha256(body).hexdigest()
            assert rec.xxh3_128 == xxhash.xxh3_128_hexdigest(body)

        with ShardReader(shard) as reader:
            assert len(reader.frames) == written.frames
            assert reader.manifest() == [replace(r, popularity=float(r.popularity)) for r in written.records]
            for src in sources:
                assert b"".join(reader.iter_member(reader.find(src.id))) == contents[src.id]
                assert reader.find(src.path).id == src.id
            out = base / "out"
            chosen = [s.id for s in sources[::2]]
            paths = reader.extract(chosen, out)
            for key, path in zip(chosen, paths, strict=True):
                assert path == out.joinpath(*reader.find(key).path.split("/"))
                assert path.read_bytes() == contents[key]
            assert not list(out.rglob("*.part"))
        check_layout(shard, written, sources, frame_size)


def check_layout(shard: Path, written: ShardWritten, sources: list[MemberSource], frame_size: int) -> None:
    """The tar stream, the frame cuts and the manifest as the format promises them."""
    stream = tar_stream(shard)
    assert len(stream) == written.uncompressed_size
    with ShardReader(shard) as reader:
        frames = reader.frames
    starts = {f.decompressed_offset for f in frames}
    assert all(0 < f.decompressed_size <= frame_size and f.decompressed_size % 512 == 0 for f in frames)

    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [s.path for s in sources] + [RESERVED_MANIFEST_NAME]
        for info, src, rec in zip(infos, sources, written.records, strict=False):
            assert info.offset in starts, "every member's header starts a frame"
            assert info.offset_data == rec.offset
            assert (info.size, info.mtime, info.mode, info.uid, info.gid) == (
                src.size,
                src.mtime,
                0o644,
                0,
                0,
            )
            assert (info.uname, info.gname, info.type) == ("", "", tarfile.REGTYPE)
            assert tar.extractfile(info).read() == src.source.read_bytes()
            holding_header = [f.index for f in frames if f.decompressed_offset <= info.offset]
            if rec.size:
                end = rec.offset + rec.size
                inside = [
                    f.index
                    for f in frames
                    if f.decompressed_offset < end
                    and rec.offset < f.decompressed_offset + f.decompressed_size
                ]
                assert (rec.first_frame, rec.last_frame) == (inside[0], inside[-1])
            else:
                assert rec.first_frame == rec.last_frame == holding_header[-1]
        manifest = infos[-1]
        assert manifest.offset in starts and manifest.mtime == MTIME
        # Split on "\n" only: str.splitlines() would also cut at U+0085 or U+2028 inside a name.
        lines = tar.extractfile(manifest).read().decode("utf-8").split("\n")[:-1]
    assert [json.loads(line)["id"] for line in lines] == [s.id for s in sources]
    assert stream.endswith(bytes(1024))


def test_output_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [("a/one.flac", 3 * FRAME + 5), ("b/ü.ogg", 0), ("c/" + "x" * 120, 700)]
    sources = make_sources(tmp_path, specs)
    build(tmp_path / "1.tar.zst", sources)
    build(tmp_path / "2.tar.zst", sources)
    assert (tmp_path / "1.tar.zst").read_bytes() == (tmp_path / "2.tar.zst").read_bytes()
    # The read size decides how input reaches the compressor; the bytes must not depend on it.
    monkeypatch.setattr(writer, "READ_CHUNK", 1000)
    build(tmp_path / "3.tar.zst", sources)
    assert (tmp_path / "1.tar.zst").read_bytes() == (tmp_path / "3.tar.zst").read_bytes()


def _frames(data: bytes) -> list[bytes]:
    count = struct.unpack("<I", data[-9:-5])[0]
    entries = struct.iter_unpack("<III", data[-9 - 12 * count : -9])
    frames, offset = [], 0
    for csize, _, _ in entries:
        frames.append(data[offset : offset + csize])
        offset += csize
    return frames


def test_frames_are_python_zstandards_streaming_output(tmp_path: Path) -> None:
    """The writer drives libzstd itself (zero copy); each frame must be what python-zstandard's own
    streaming compressor makes of the same bytes, as the shards written before it were."""
    sources = make_sources(tmp_path, [("a.ogg", 3 * 2**20 + 5), ("b.json", 200_000), ("c", 0)])
    with open(tmp_path / "s.tar.zst", "wb") as out:
        write_shard(out, sources, level=3, frame_size=2**20, manifest_mtime=MTIME)
    frames = _frames((tmp_path / "s.tar.zst").read_bytes())
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=True, threads=0)
    for frame in frames:
        content = pyzstd.decompress(frame)
        obj = cctx.compressobj(size=len(content))
        assert obj.compress(content) + obj.flush() == frame


@pytest.mark.parametrize("path", ["C backend of zstandard", "page cache", "no file descriptor"])
def test_every_io_path_writes_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    specs = [("a/one.flac", 3 * FRAME + 5), ("b/ü.ogg", 0), ("c.ogg", 4 * 2**20 + 3), ("d", 9000)]
    sources = make_sources(tmp_path, specs)
    build(tmp_path / "fast.tar.zst", sources)
    if path == "C backend of zstandard":
        monkeypatch.setattr(compress, "_cffi_zstd", None)
    elif path == "page cache":
        monkeypatch.setattr(writer, "DIRECT_READS", False)
        monkeypatch.setattr(writer, "DIRECT_WRITES", False)
    if path == "no file descriptor":
        out = io.BytesIO()
        write_shard(out, sources, level=3, frame_size=FRAME, manifest_mtime=MTIME)
        got = out.getvalue()
    else:
        build(tmp_path / "slow.tar.zst", sources)
        got = (tmp_path / "slow.tar.zst").read_bytes()
    assert got == (tmp_path / "fast.tar.zst").read_bytes()


def test_profile_accounts_for_every_thread(tmp_path: Path) -> None:
    profile: dict = {}
    sources = make_sources(tmp_path, [("a", 100_000)])
    build(tmp_path / "s.tar.zst", sources, sinks=[lambda view: None], profile=profile)
    threads = profile["threads"]
    assert set(threads) == {"main", "compress", "digest", "sink0", "write"}
    assert all(stage["cpu"] >= 0 for stage in threads.values())


def test_empty_shard_has_only_the_manifest(tmp_path: Path) -> None:
    written = build(tmp_path / "s.tar.zst", [])
    assert written.records == [] and written.frames == 1
    with ShardReader(tmp_path / "s.tar.zst") as reader:
        assert reader.manifest() == []
    with tarfile.open(fileobj=io.BytesIO(tar_stream(tmp_path / "s.tar.zst"))) as tar:
        assert tar.getnames() == [RESERVED_MANIFEST_NAME]


def test_frame_size_is_cut_to_tar_blocks_and_bounded(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [("a", 10_000)])
    written = build(tmp_path / "s.tar.zst", sources, frame_size=5000)
    with ShardReader(tmp_path / "s.tar.zst") as reader:
        assert [f.decompressed_size for f in reader.frames[:3]] == [4608, 4608, 1536]
    assert written.records[0].first_frame == 0 and written.records[0].last_frame == 2
    for bad in (511, 2**30 + 512):
        with pytest.raises(ValueError, match="frame size"):
            build(tmp_path / "t.tar.zst", sources, frame_size=bad)


def test_manifest_line_format() -> None:
    rec = MemberRecord("id-1", "dir/é x.ogg", "audio", 7.0, 12, "a" * 32, "b" * 64, 1536, 0, 1)
    assert (
        manifest_line(rec)
        == (
            '{"id":"id-1","path":"dir/é x.ogg","kind":"audio","popularity":7,"size":12,'
            f'"xxh3_128":"{"a" * 32}","sha256":"{"b" * 64}","offset":1536,"first_frame":0,"last_frame":1}}\n'
        ).encode()
    )
    assert b'"popularity":0.25,' in manifest_line(replace(rec, popularity=0.25))


# --- the seek table and frames ----------------------------------------------------------------------------


def test_seek_table_follows_the_zstd_seekable_format(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [("a", 2 * FRAME), ("b", 10), ("c", 0)])
    written = build(tmp_path / "s.tar.zst", sources)
    data = (tmp_path / "s.tar.zst").read_bytes()
    count, descriptor, magic = struct.unpack("<IBI", data[-9:])
    assert (count, descriptor, magic) == (written.frames, 0x80, 0x8F92EAB1)
    table_size = 8 + 12 * count + 9
    skip_magic, skip_size = struct.unpack("<II", data[-table_size : -table_size + 8])
    assert (skip_magic, skip_size) == (0x184D2A5E, 12 * count + 9)
    entries = list(struct.iter_unpack("<III", data[-table_size + 8 : -9]))
    stream = tar_stream(tmp_path / "s.tar.zst")
    offset = doffset = 0
    for csize, dsize, checksum in entries:
        frame = data[offset : offset + csize]
        params = zstandard.get_frame_parameters(frame)
        assert frame[:4] == b"\x28\xb5\x2f\xfd" and params.content_size == dsize and params.has_checksum
        assert checksum == xxhash.xxh64_intdigest(stream[doffset : doffset + dsize]) & 0xFFFFFFFF
        assert zstandard.ZstdDecompressor().decompress(frame) == stream[doffset : doffset + dsize]
        offset += csize
        doffset += dsize
    assert offset == len(data) - table_size


def test_frame_spans_are_the_seek_tables_frames(tmp_path: Path) -> None:
    """read_frame_spans (the member index's read) gives each frame's offsets and size as read_seek_table
    does, with checksums on or off."""
    sources = make_sources(tmp_path, [("a", 2 * FRAME), ("b", 10), ("c", 0), ("d", 3 * FRAME + 7)])
    build(tmp_path / "s.tar.zst", sources)
    data = (tmp_path / "s.tar.zst").read_bytes()

    def pread(size: int, offset: int) -> bytes:
        return data[offset : offset + size]

    frames = read_seek_table(pread, len(data))
    assert len(frames) > 5
    spans = read_frame_spans(pread, len(data))
    assert spans == [(f.compressed_offset, f.compressed_size, f.decompressed_offset) for f in frames]
    assert all(type(s) is tuple for s in spans)
    # The same table without checksums (8-byte entries).
    entries = b"".join(struct.pack("<II", f.compressed_size, f.decompressed_size) for f in frames)
    body = data[: frames[-1].compressed_offset + frames[-1].compressed_size]
    plain = body + struct.pack("<II", 0x184D2A5E, len(entries) + 9) + entries
    plain += struct.pack("<IBI", len(frames), 0, 0x8F92EAB1)
    assert read_frame_spans(lambda n, at: plain[at : at + n], len(plain)) == spans


def test_a_seek_table_cut_short_is_a_seek_table_error(tmp_path: Path) -> None:
    """A read that comes back short (the file truncated while read), and a table of fewer entries than its
    footer lists, are SeekTableErrors that say so: never an IndexError or a struct.error."""
    build(tmp_path / "s.tar.zst", make_sources(tmp_path, [("a", 2 * FRAME), ("b", 10)]))
    data = (tmp_path / "s.tar.zst").read_bytes()
    # The footer lists one frame more than the table holds.
    more = data[:-9] + struct.pack("<I", struct.unpack("<I", data[-9:-5])[0] + 1) + data[-5:]
    for read in (read_seek_table, read_frame_spans):
        with pytest.raises(SeekTableError, match="cut short"):
            read(lambda n, at: data[at : at + n][:-1], len(data))
        with pytest.raises(SeekTableError, match="cut short: 0 of"):
            read(lambda n, at: data[at : at + n] if at >= len(data) - 9 else b"", len(data))
        with pytest.raises(SeekTableError, match="skippable frame header is damaged|add up"):
            read(lambda n, at: more[at : at + n], len(more))


def test_manifest_is_found_from_the_last_frames_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 60 members make a manifest of several 4 KiB frames, so the walk back crosses more than one.
    sources = make_sources(tmp_path, [(f"dir/track {i:02d}.ogg", 2 * FRAME + i) for i in range(60)])
    shard = tmp_path / "s.tar.zst"
    written = build(shard, sources)
    manifest_first = written.records[-1].last_frame + 1
    assert written.frames - manifest_first >= 3

    # Wreck every member frame: a reader that touched one would fail.
    with ShardReader(shard) as reader:
        member_end = reader.frames[manifest_first].compressed_offset
    with open(shard, "r+b") as f:
        f.write(bytes(member_end))

    touched: list[int] = []
    read_bytes: list[int] = []
    real_read_frame, real_pread = ShardReader.read_frame, os.pread
    monkeypatch.setattr(
        ShardReader, "read_frame", lambda self, i: touched.append(i) or real_read_frame(self, i)
    )
    monkeypatch.setattr(os, "pread", lambda fd, n, off: read_bytes.append(n) or real_pread(fd, n, off))
    with ShardReader(shard) as reader:
        assert [r.id for r in reader.manifest()] == [s.id for s in sources]
        assert reader.find("m7").path == "dir/track 07.ogg"
    assert min(touched) == manifest_first
    assert sum(read_bytes) <= shard.stat().st_size - member_end + 16


def test_damaged_frame_fails_alone(tmp_path: Path) -> None:
    """verify --deep reads every frame and must go on after a bad one."""
    sources = make_sources(tmp_path, [("a", 3 * FRAME), ("b", 100)])
    shard = tmp_path / "s.tar.zst"
    build(shard, sources)
    with ShardReader(shard) as reader:
        victim = reader.frames[1]
    flip_byte(shard, victim.compressed_offset + victim.compressed_size // 2)
    with ShardReader(shard) as reader:
        with pytest.raises(ContainerError, match="frame 1"):
            reader.read_frame(1)
        assert reader.read_frame(2)
        assert b"".join(reader.iter_member(reader.find("b"))) == sources[1].source.read_bytes()
        with pytest.raises(ContainerError, match="no frame 99"):
            reader.read_frame(99)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


# --- extract ----------------------------------------------------------------------------------------------


def test_extract_detects_a_corrupted_member_and_leaves_nothing(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [("ok.ogg", 500), ("dir/bad.ogg", 2 * FRAME)])
    shard = tmp_path / "s.tar.zst"
    written = build(shard, sources)
    with ShardReader(shard) as reader:
        frame = reader.frames[written.records[1].last_frame]
    flip_byte(shard, frame.compressed_offset + frame.compressed_size // 2)
    out = tmp_path / "out"
    with ShardReader(shard) as reader:
        with pytest.raises((ShardDamaged, ContainerError)) as caught:
            reader.extract(["m1"], out)
        assert "dir/bad.ogg" in str(caught.value)
        assert [p for p in out.rglob("*") if p.is_file()] == []
        assert reader.extract(["ok.ogg"], out)[0].read_bytes() == sources[0].source.read_bytes()


def test_extract_checks_hashes_against_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames intact but a manifest that promises other bytes: the member is refused, not written."""
    real_record = writer._record
    monkeypatch.setattr(writer, "_record", lambda *a: replace(real_record(*a), sha256="0" * 64))
    sources = make_sources(tmp_path, [("a.ogg", 1000)])
    build(tmp_path / "s.tar.zst", sources)
    with (
        ShardReader(tmp_path / "s.tar.zst") as reader,
        pytest.raises(ShardDamaged, match="SHA-256") as caught,
    ):
        reader.extract(["m0"], tmp_path / "out")
    assert caught.value.member == "a.ogg" and caught.value.exit_code == 1
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "'..'"),
        ("a/../../evil", "'..'"),
        ("/etc/evil", "absolute"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("./a", "'.'"),
        ("a\0b", "NUL"),
    ],
)
def test_extract_refuses_unsafe_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, reason: str
) -> None:
    monkeypatch.setattr(writer, "_check_member", lambda m, shard: None)  # a hostile writer
    sources = make_sources(tmp_path, [("fine.ogg", 10), (name, 10)])
    build(tmp_path / "s.tar.zst", sources)
    out = tmp_path / "deep" / "out"
    with ShardReader(tmp_path / "s.tar.zst") as reader, pytest.raises(UnsafeMemberName, match=reason):
        reader.extract(["m0", "m1"], out)
    assert not out.exists(), "all names are checked before anything is written"
    assert not (tmp_path / "deep" / "evil").exists()


def test_extract_refuses_a_symlink_leading_out(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [("link/x.ogg", 10)])
    build(tmp_path / "s.tar.zst", sources)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    with ShardReader(tmp_path / "s.tar.zst") as reader, pytest.raises(UnsafeMemberName, match="symlink"):
        reader.extract(["m0"], out)
    assert list(elsewhere.iterdir()) == []


def test_find_by_id_then_path(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [("m1", 1), ("other", 2)])  # member m0's path is m1's id
    build(tmp_path / "s.tar.zst", sources)
    with ShardReader(tmp_path / "s.tar.zst") as reader:
        assert reader.find("m1").path == "other"
        assert reader.find("other").id == "m1"
        with pytest.raises(MemberNotFound, match="nope"):
            reader.find("nope")


# --- the writer's refusals --------------------------------------------------------------------------------


def write_one(tmp_path: Path, source: MemberSource) -> None:
    build(tmp_path / "s.tar.zst", [source], shard_name="t-audio-0001")


def test_size_mismatch_is_refused(tmp_path: Path) -> None:
    (src,) = make_sources(tmp_path, [("a.ogg", 11)])
    with pytest.raises(ShardBuildError, match="expected 10 bytes, found 11") as caught:
        write_one(tmp_path, replace(src, size=10))
    assert caught.value.shard == "t-audio-0001" and caught.value.path == str(src.source)


def test_vanished_source_is_refused(tmp_path: Path) -> None:
    (src,) = make_sources(tmp_path, [("a.ogg", 11)])
    src.source.unlink()
    with pytest.raises(ShardBuildError, match="vanished"):
        write_one(tmp_path, src)


def test_symlink_and_directory_sources_are_refused(tmp_path: Path) -> None:
    (src,) = make_sources(tmp_path, [("a.ogg", 11)])
    link = tmp_path / "link.ogg"
    link.symlink_to(src.source)
    with pytest.raises(ShardBuildError, match="symlink"):
        write_one(tmp_path, replace(src, source=link))
    with pytest.raises(ShardBuildError, match="not a regular file"):
        write_one(tmp_path, replace(src, source=tmp_path, size=4096))


def test_a_fifo_source_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    # A FIFO where the catalog (trusted sizes, or a file swapped after ingest) names a member: opening it
    # for reading waits for a writer that never comes, and the build hung with no output.
    (src,) = make_sources(tmp_path, [("a.ogg", 11)])
    fifo = tmp_path / "fifo.ogg"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def build() -> None:
        try:
            write_one(tmp_path, replace(src, source=fifo))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # release the blocked open so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY))
        worker.join(10)
        pytest.fail("opening a FIFO member waited for a writer")
    assert len(outcome) == 1 and isinstance(outcome[0], ShardBuildError), outcome
    assert "not a regular file" in str(outcome[0])


def test_unreadable_source_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (src,) = make_sources(tmp_path, [("a.ogg", 11)])
    real_open = os.open

    def denied(path: object, flags: int, *args: object) -> int:
        if Path(path) == src.source:  # chmod 0 would not stop root, who runs CI containers
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ShardBuildError, match="unreadable: Permission denied"):
        write_one(tmp_path, src)


@pytest.mark.parametrize(("delta", "message"), [(-1000, "found 2000 .*shrank"), (5, "found more .*grew")])
def test_a_file_changing_while_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delta: int, message: str
) -> None:
    (src,) = make_sources(tmp_path, [("a.ogg", 3000)])
    real_open = writer._open_source

    def open_then_change(m: MemberSource, shard: str) -> io.FileIO:
        f = real_open(m, shard)  # the size check at open passes; the file changes under the reader
        os.truncate(m.source, m.size + delta)
        return f

    monkeypatch.setattr(writer, "_open_source", open_then_change)
    with pytest.raises(ShardBuildError, match=message):
        write_one(tmp_path, src)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"path": ".packager/manifest.jsonl"}, "reserved"),
        ({"path": "../x"}, "unsafe"),
        ({"path": "a\udcff"}, "UTF-8"),
        ({"popularity": float("nan")}, "finite"),
    ],
)
def test_bad_member_fields_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    (src,) = make_sources(tmp_path, [("a.ogg", 1)])
    with pytest.raises(ShardBuildError, match=message):
        write_one(tmp_path, replace(src, **change))


def test_duplicates_are_refused(tmp_path: Path) -> None:
    a, b = make_sources(tmp_path, [("a.ogg", 1), ("b.ogg", 1)])
    for dup, message in ((replace(b, id=a.id), "duplicate id"), (replace(b, path=a.path), "duplicate path")):
        with pytest.raises(ShardBuildError, match=message):
            build(tmp_path / "s.tar.zst", [a, dup])


def test_sink_failure_reaches_the_caller(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [("a.ogg", 5 * FRAME)])

    def broken(data: object) -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        build(tmp_path / "s.tar.zst", sources, sinks=[broken])


def test_members_stream_from_a_generator(tmp_path: Path) -> None:
    sources = make_sources(tmp_path, [(f"{i}.ogg", 100) for i in range(5)])
    seen: list[str] = []

    def lazily() -> Iterator[MemberSource]:
        for s in sources:
            seen.append(s.id)
            yield s

    written = build(tmp_path / "s.tar.zst", lazily())
    assert [r.id for r in written.records] == seen == [s.id for s in sources]


# --- reading what is not a shard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"hello world, not a shard at all", "no zstd seek table"),
        (zstandard.ZstdCompressor().compress(b"plain zstd" * 100), "no zstd seek table"),
        (random.Random(1).randbytes(5000), "no zstd seek table"),
    ],
)
def test_non_shard_files_give_container_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.tar.zst"
    path.write_bytes(content)
    with pytest.raises(ContainerError, match=message):
        ShardReader(path)


def test_missing_file_gives_container_error(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="cannot open"):
        ShardReader(tmp_path / "nope.tar.zst")


def test_truncated_or_padded_shards_give_container_error(tmp_path: Path) -> None:
    build(tmp_path / "s.tar.zst", make_sources(tmp_path, [("a", 5000)]))
    data = (tmp_path / "s.tar.zst").read_bytes()
    for name, damaged in (("head", data[100:]), ("tail", data[:-1]), ("extra", b"x" + data)):
        path = tmp_path / f"{name}.tar.zst"
        path.write_bytes(damaged)
        with pytest.raises(ContainerError):
            ShardReader(path).manifest()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "line 2: not JSON"),
        (b'{"id":"x"}\n', "line 2: missing path, kind"),
        (b"[1, 2]\n", "line 2: not a JSON object"),
        (b'{"a":1},{"b":2}\n', "line 2: not JSON"),
    ],
)
def test_malformed_manifest_lines_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: bytes, message: str
) -> None:
    real_line = writer.manifest_line
    monkeypatch.setattr(writer, "manifest_line", lambda rec: real_line(rec) if rec.id == "m0" else line)
    build(tmp_path / "s.tar.zst", make_sources(tmp_path, [("a", 1), ("b", 2)]))
    with ShardReader(tmp_path / "s.tar.zst") as reader, pytest.raises(ContainerError, match=message):
        reader.manifest()


def test_wrongly_typed_manifest_fields_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_line = writer.manifest_line

    def lying(rec: MemberRecord) -> bytes:
        fields = json.loads(real_line(rec))
        return json.dumps(fields | {"size": True, "path": 7}).encode() + b"\n"

    monkeypatch.setattr(writer, "manifest_line", lying)
    build(tmp_path / "s.tar.zst", make_sources(tmp_path, [("a", 1)]))
    with ShardReader(tmp_path / "s.tar.zst") as reader, pytest.raises(ContainerError, match="path, size"):
        reader.manifest()


def test_manifest_pointing_outside_the_frames_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_record = writer._record
    monkeypatch.setattr(writer, "_record", lambda *a: replace(real_record(*a), last_frame=99))
    build(tmp_path / "s.tar.zst", make_sources(tmp_path, [("a", 1)]))
    with ShardReader(tmp_path / "s.tar.zst") as reader, pytest.raises(ContainerError, match="outside"):
        reader.manifest()


def test_seekable_zstd_without_a_manifest_gives_container_error(tmp_path: Path) -> None:
    """A valid seekable .tar.zst from another tool is readable frame by frame, but is not a shard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("song.ogg")
        info.size = 3000
        tar.addfile(info, io.BytesIO(bytes(3000)))
    path = tmp_path / "other.tar.zst"
    with pyzstd.SeekableZstdFile(path, "w", max_frame_content_size=1024) as f:
        f.write(buf.getvalue())
    with ShardReader(path) as reader:
        assert b"".join(reader.read_frame(i) for i in range(len(reader.frames))) == buf.getvalue()
        with pytest.raises(ContainerError, match="not a packager shard|last member"):
            reader.manifest()


def test_seek_table_entry_over_the_frame_limit_is_refused(tmp_path):
    """A hostile seek table must not make the reader allocate gigabytes for one frame."""
    import struct

    from packager.container import MAX_FRAME_SIZE, SEEKABLE_MAGIC, SKIPPABLE_MAGIC
    from packager.errors import ContainerError

    frame = zstandard.ZstdCompressor().compress(b"x" * 10)
    entry = struct.pack("<II", len(frame), MAX_FRAME_SIZE + 1)
    table = (
        struct.pack("<II", SKIPPABLE_MAGIC, len(entry) + 9)
        + entry
        + struct.pack("<IBI", 1, 0, SEEKABLE_MAGIC)
    )
    bad = tmp_path / "hostile.tar.zst"
    bad.write_bytes(frame + table)
    with pytest.raises(ContainerError, match="claims"):
        ShardReader(bad)


# --- memory bombs -------------------------------------------------------------------------------------------

_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-m", "packager.cli", *sys.argv[1:]], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def peak_rss(*args: object) -> int:
    """Peak RSS in bytes of `packager ARGS` run alone in a fresh process (so no earlier child counts)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, *map(str, args)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


@pytest.mark.slow
def test_extract_streams_a_1_gib_frame_with_bounded_memory(tmp_path: Path) -> None:
    size = 2**30 - 512  # with its 512-byte header, exactly one frame of MAX_FRAME_SIZE
    zeros = tmp_path / "zeros.bin"
    with open(zeros, "wb") as f:
        f.truncate(size)  # sparse: no disk used, and zstd shrinks it about 32000-fold
    source = MemberSource("bomb", "bomb.bin", "audio", 1.0, size, zeros, MTIME)
    shard = tmp_path / "bomb.tar.zst"
    build(shard, [source], frame_size=2**30)
    assert shard.stat().st_size < 64 * 2**10
    with ShardReader(shard) as reader:
        assert reader.frames[0].decompressed_size == 2**30
    baseline = peak_rss("extract", shard, "--list")
    peak = peak_rss("extract", shard, "bomb", "-o", tmp_path / "out")
    assert (tmp_path / "out" / "bomb.bin").stat().st_size == size
    # Decompressed whole, the frame alone took 1 GiB (2.1 GB peak with the copy); streamed, a few MiB.
    assert peak - baseline < 16 * 2**20, (peak, baseline)  # measured: +4 MiB


def _frame(data: bytes, listed: int | None = None, **params: object) -> tuple[bytes, Frame]:
    compressed = zstandard.ZstdCompressor(write_checksum=True, **params).compress(data)
    size = len(data) if listed is None else listed
    checksum = xxhash.xxh64_intdigest(data) & 0xFFFFFFFF
    return compressed, Frame(0, 0, len(compressed), 0, size, checksum)


def _streamed(compressed: bytes, frame: Frame) -> bytes:
    return b"".join(stream_frame(io.BytesIO(compressed).read, frame))


def test_stream_frame_refuses_a_frame_that_is_not_what_the_seek_table_says() -> None:
    data = content_for(2, 300_000)
    compressed, frame = _frame(data)
    assert _streamed(compressed, frame) == data
    chunks = list(stream_frame(io.BytesIO(compressed).read, frame))
    assert max(map(len, chunks)) <= reader_module.OUT_CHUNK
    with pytest.raises(FrameError, match="claims 300000 bytes in its header, the seek table 4096"):
        _streamed(*_frame(data, listed=4096))
    # No content size in the header: refused as soon as the output passes the listed size.
    unsized = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    blob = unsized.compress(data) + unsized.flush()
    with pytest.raises(FrameError, match="more than the 4096 bytes listed"):
        _streamed(blob, Frame(0, 0, len(blob), 0, 4096, None))
    with pytest.raises(FrameError, match="holds 300000 bytes, the seek table says 400000"):
        _streamed(blob, Frame(0, 0, len(blob), 0, 400_000, None))
    # A frame asking the decoder for a 1 GiB window.
    params = zstandard.ZstdCompressionParameters(window_log=30, write_content_size=False)
    huge = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = huge.compress(data) + huge.flush()
    with pytest.raises(FrameError, match="window"):
        _streamed(blob, Frame(0, 0, len(blob), 0, len(data), None))
    with pytest.raises(FrameError, match="seek table checksum"):
        _streamed(compressed, frame._replace(checksum=frame.checksum ^ 1))
    with pytest.raises(FrameError, match="damaged|holds"):
        _streamed(compressed[:-100], frame._replace(compressed_size=len(compressed) - 100))
    with pytest.raises(FrameError, match="zstd frame header"):
        _streamed(b"\0" * 100, frame._replace(compressed_size=100))
