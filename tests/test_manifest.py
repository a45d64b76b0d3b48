"""The manifest formats on their own: entries, SHA256SUMS, whitelist, piece ranges, minisign keys."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import minisign
import pytest

from packager.container import Frame
from packager.errors import PublishError, UsageError
from packager.manifest import (
    FileEntry,
    PhaseEntry,
    TorrentEntry,
    generate_keypair,
    load_signing_key,
    member_rows,
    public_key_path,
    release_json,
    sha256sums,
    torrents_json,
    verify_signature,
    whitelist,
)

MANIFESTS = Path(__file__).parent.parent / "manifests"


def validate(data, name: str) -> None:
    schema = json.loads((MANIFESTS / f"{name}.schema.json").read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def entry(
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


def test_entries_of_every_format_validate_and_round_trip():
    entries = [
        entry(),
        entry("r-audio-t1-00002", "hybrid", "b" * 40, "c" * 64),
        entry("r-art-00001", "v2", None, "d" * 64),
    ]
    data = json.loads(release_json("r", "0.1.0", [PhaseEntry("audio", "2025-01-01T00:00:00Z", 3)], entries))
    validate(data, "release")
    validate(json.loads(torrents_json("r", "https://x.example/t", entries)), "torrents")
    for e in entries:
        assert TorrentEntry.from_json(e.to_json()) == e
    rows = json.loads(torrents_json("r", "https://x.example/t", entries))
    assert rows[0]["url"] == "https://x.example/t/r-audio-t1-00001.tar.zst.torrent"
    assert (
        rows[2]["btih"] is None
        and rows[0]["data_size"] == 900
        and rows[0]["added_to_torrents_list_at"] == "2025-01-01"
    )
    bad = data | {"torrents": [data["torrents"][0] | {"format": "v2"}]}
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, "release")  # a v2 torrent with a v1 hash and none of its own


def test_sha256sums_is_coreutils_format_sorted_by_path():
    text = sha256sums([entry("r-b-00001"), entry("r-a-00001")]).decode()
    assert text.splitlines() == [
        f"{'1' * 64}  shards/r-a-00001.tar.zst",
        f"{'1' * 64}  shards/r-b-00001.tar.zst",
        f"{'2' * 64}  torrents/r-a-00001.tar.zst.torrent",
        f"{'2' * 64}  torrents/r-b-00001.tar.zst.torrent",
    ]


def test_whitelist_has_v1_and_truncated_v2_hashes_once():
    entries = [
        entry(),
        entry("r-audio-t1-00002", "hybrid", "B" * 40, "c" * 64),
        entry("r-x-00001", v1="a" * 40),
    ]
    assert whitelist(entries).decode().splitlines() == ["a" * 40, "b" * 40, "c" * 40]


def frames_of(sizes: list[int]) -> list[Frame]:
    """Frames of the given compressed sizes, each 4096 bytes decompressed."""
    frames, offset = [], 0
    for i, size in enumerate(sizes):
        frames.append(Frame(i, offset, size, i * 4096, 4096, None))
        offset += size
    return frames


def test_piece_range_covers_the_member_frames():
    frames = frames_of([100, 16284, 1, 16384, 50])  # frame 1 ends exactly at the end of piece 0
    locations = [
        ("a", 10, 512, 0, 0),  # inside piece 0
        ("b", 9000, 4608, 1, 1),  # frame 1 ends on the piece boundary: still piece 0 only
        ("c", 0, 8704, 2, 2),  # an empty member: the frame of its header, first byte of piece 1
        ("d", 9000, 12800, 3, 4),  # frames 3-4: bytes 16385..32818, pieces 1-2
    ]
    rows = {r[0]: r for r in member_rows(locations, frames, 16384)}
    # (id, offset, size, first_frame, last_frame, frames_offset, frames_size, frames_tar_offset, pieces)
    assert rows["a"] == ("a", 512, 10, 0, 0, 0, 100, 0, 0, 0)
    assert rows["b"][5:] == (100, 16284, 4096, 0, 0)
    assert rows["c"][5:] == (16384, 1, 8192, 1, 1)
    assert rows["d"][5:] == (16385, 16434, 12288, 1, 2)


def test_keys_sign_deterministically_and_verify(tmp_path):
    pair = generate_keypair(tmp_path / "k.key", None)
    assert pair.public == tmp_path / "k.pub" and not pair.encrypted
    public = pair.public.read_text()
    assert public.startswith(f"untrusted comment: minisign public key {pair.key_id}\n")
    assert public.splitlines()[1] == pair.public_key
    key = load_signing_key(tmp_path / "k.key")
    assert key.key_id == pair.key_id
    sig = key.sign(b"hello\n", "SHA256SUMS", 1735689600)
    assert sig == key.sign(b"hello\n", "SHA256SUMS", 1735689600)
    assert verify_signature(public, b"hello\n", sig) == "timestamp:1735689600\tfile:SHA256SUMS\thashed"
    with pytest.raises(minisign.VerifyError):
        verify_signature(pair.public_key, b"hellO\n", sig)
    with pytest.raises(UsageError, match="already exists"):
        generate_keypair(tmp_path / "k.key", None)


def test_encrypted_keys_need_the_right_password(tmp_path):
    generate_keypair(tmp_path / "enc.key", "s3cret")
    with pytest.raises(PublishError, match="no password was given"):
        load_signing_key(tmp_path / "enc.key")
    with pytest.raises(PublishError, match="wrong password"):
        load_signing_key(tmp_path / "enc.key", lambda: "guess")
    assert load_signing_key(tmp_path / "enc.key", lambda: "s3cret").public_key
    (tmp_path / "junk.key").write_text("not a key\n")
    with pytest.raises(PublishError, match="not a minisign secret key"):
        load_signing_key(tmp_path / "junk.key")
    with pytest.raises(PublishError, match="no such signing key"):
        load_signing_key(tmp_path / "missing.key")


def test_public_key_path():
    assert public_key_path(Path("keys/release.key")) == Path("keys/release.pub")
    assert public_key_path(Path("keys/release")) == Path("keys/release.pub")
    assert public_key_path(Path("keys/release.sec")) == Path("keys/release.sec.pub")
