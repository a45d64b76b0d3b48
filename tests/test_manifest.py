"""The published formats on their own: each writer and its reader, round trips, hostile input; minisign."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from packager.errors import UntrustedManifest
from packager.manifest import (
    ListedTorrent,
    PhaseEntry,
    Release,
    TorrentEntry,
    listed_torrents,
    read_release_files,
    read_release_json,
    read_sha256sums,
    read_torrents_json,
    read_whitelist,
    release_json,
    sha256sums,
    torrents_json,
    whitelist,
    whitelist_hashes,
)
from tests.helpers import STAMP, WORD, torrent_entries, torrent_entry, unique_by_name

MANIFESTS = Path(__file__).parent.parent / "manifests"


def validate(data, name: str) -> None:
    schema = json.loads((MANIFESTS / f"{name}.schema.json").read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def test_entries_of_every_format_validate_and_round_trip():
    entries = [
        torrent_entry(),
        torrent_entry("r-audio-t1-00002", "hybrid", "b" * 40, "c" * 64),
        torrent_entry("r-art-00001", "v2", None, "d" * 64),
    ]
    data = json.loads(release_json("r", "0.1.0", [PhaseEntry("audio", "2025-01-01T00:00:00Z", 3)], entries))
    validate(data, "release")
    validate(json.loads(torrents_json(listed_torrents("r", "https://x.example/t", entries))), "torrents")
    for e in entries:
        assert TorrentEntry.from_json(e.to_json()) == e
    rows = json.loads(torrents_json(listed_torrents("r", "https://x.example/t", entries)))
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
    text = sha256sums([torrent_entry("r-b-00001"), torrent_entry("r-a-00001")]).decode()
    assert text.splitlines() == [
        f"{'1' * 64}  shards/r-a-00001.tar.zst",
        f"{'1' * 64}  shards/r-b-00001.tar.zst",
        f"{'2' * 64}  torrents/r-a-00001.tar.zst.torrent",
        f"{'2' * 64}  torrents/r-b-00001.tar.zst.torrent",
    ]


def test_whitelist_has_v1_and_truncated_v2_hashes_once():
    entries = [
        torrent_entry(),
        torrent_entry("r-audio-t1-00002", "hybrid", "B" * 40, "c" * 64),
        torrent_entry("r-x-00001", v1="a" * 40),
    ]
    assert whitelist(entries).decode().splitlines() == ["a" * 40, "b" * 40, "c" * 40]


# --- every format reads back what was written, and refuses what it did not write ----------------------------

PHASES = st.lists(st.builds(PhaseEntry, WORD, STAMP, st.integers(0, 10**6)), max_size=4)


@given(st.text(max_size=30), st.text(max_size=10), PHASES, st.lists(torrent_entries(), max_size=5))
def test_release_json_reads_back_what_was_written(release, version, phases, torrents):
    data = release_json(release, version, phases, torrents)
    assert read_release_json(data) == Release(release, version, tuple(phases), tuple(torrents))
    for e in torrents:
        assert TorrentEntry.from_json(e.to_json()) == e
    listed = read_release_files(data)
    assert [(f.name, f.shard, f.torrent, f.info_hash_v1, f.obsolete) for f in listed] == [
        (e.name, e.shard, e.torrent, e.info_hash_v1, e.obsolete) for e in torrents
    ]


def test_verify_reads_the_files_of_an_entry_with_fewer_fields_than_packager_writes():
    """An entry of name and files alone (an older packager's, a mirror's own) is read for its files; one
    without a shard file, or with a path outside the folder, is refused naming the entry."""
    shard = {"path": "shards/a.tar.zst", "size": 5, "sha256": "ab" * 32}
    doc = {"format": 1, "torrents": [{"name": "a", "files": [shard]}]}
    (listed,) = read_release_files(json.dumps(doc).encode())
    assert (listed.name, listed.shard.path, listed.torrent, listed.torrent_file) == (
        "a",
        shard["path"],
        None,
        None,
    )
    with pytest.raises(UntrustedManifest):
        read_release_json(json.dumps(doc).encode())  # the whole format wants every field
    doc["torrents"][0]["files"] = [{**shard, "path": "torrents/a.torrent"}]
    with pytest.raises(UntrustedManifest, match=r"torrents\[0\] \(a\) lists no shard file"):
        read_release_files(json.dumps(doc).encode())
    doc["torrents"][0]["files"] = [{**shard, "path": "../a.tar.zst"}]
    with pytest.raises(UntrustedManifest, match="not a plain relative path"):
        read_release_files(json.dumps(doc).encode())


@given(st.text(max_size=20), st.sampled_from(["", "https://m.example/t", "https://m.example/t/"]),
       st.lists(torrent_entries(), max_size=5))  # fmt: skip
def test_torrents_json_reads_back_what_was_written(release, base_url, torrents):
    rows = listed_torrents(release, base_url, torrents)
    assert read_torrents_json(torrents_json(rows)) == rows
    scraped = [
        ListedTorrent(**(r.as_dict() | {"seeders": 3, "stats_scraped_at": "2025-01-01"})) for r in rows
    ]
    assert read_torrents_json(torrents_json(scraped)) == scraped


@given(st.lists(torrent_entries(), max_size=6).map(unique_by_name))
def test_sha256sums_reads_back_what_was_written(torrents):
    assert read_sha256sums(sha256sums(torrents)) == {f.path: f.sha256 for e in torrents for f in e.files}


@given(st.lists(torrent_entries(), max_size=6))
def test_whitelist_reads_back_what_was_written(torrents):
    assert read_whitelist(whitelist(torrents)) == whitelist_hashes(torrents)


def _valid_doc() -> dict:
    phases = [PhaseEntry("audio", "2025-01-01T00:00:00Z", 1)]
    return json.loads(release_json("r", "0.1.0", phases, [torrent_entry()]))


def _with(change) -> bytes:
    doc = _valid_doc()
    change(doc, doc["torrents"][0])
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[]", "no `torrents` list"),
        (_with(lambda d, e: d.update(format=2)), "format 2 is not one this packager reads"),
        (_with(lambda d, e: e["files"][0].update(path="/etc/passwd")), "not a relative path"),
        (
            _with(lambda d, e: e["files"][0].update(path="shards/../../x.tar.zst")),
            "not a plain relative path",
        ),
        (_with(lambda d, e: e["files"][0].update(size=True)), "is not a byte count"),
        (_with(lambda d, e: e["files"][0].update(size=-1)), "is not a byte count"),
        (_with(lambda d, e: e["files"][1].update(sha256="x" * 64)), "is not 64 hex"),
        (_with(lambda d, e: e["files"].pop(0)), "lists no shard file"),
        (_with(lambda d, e: e.update(name=7)), "torrents[0].name is 7, expected str"),
        (_with(lambda d, e: e.update(items=True)), "torrents[0].items is True"),
        (_with(lambda d, e: e.update(format="v3")), "torrents[0].format is 'v3'"),
        (_with(lambda d, e: e.update(info_hash_v1="A" * 40)), "torrents[0].info_hash_v1"),
        (_with(lambda d, e: e.update(torrent_file="torrents/other.tar.zst.torrent")), "torrent_file"),
        (_with(lambda d, e: e["popularity"].update(min="high")), "popularity.min"),
        (_with(lambda d, e: d["phases"].append(["x"])), "phases[1] is not an object"),
    ],
)
def test_a_malformed_release_json_is_refused_naming_what(data, message):
    with pytest.raises(UntrustedManifest) as e:
        read_release_json(data, "mirror/release.json")
    assert message in e.value.message and e.value.exit_code == 2


@pytest.mark.parametrize(
    "line, message",
    [
        (b"1" * 64 + b" shards/x.tar.zst", "is not `<sha256 hex>  <path>`"),
        (b"zz  shards/x.tar.zst", "is not `<sha256 hex>  <path>`"),
        (b"1" * 64 + b"  /abs/x", "not a relative path"),
        (b"1" * 64 + b"  a/../b", "not a plain relative path"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_malformed_sha256sums_is_refused_naming_the_line(line, message):
    with pytest.raises(UntrustedManifest, match="line 1|UTF-8") as e:
        read_sha256sums(line + b"\n")
    assert message in e.value.message


def test_sha256sums_reads_coreutils_escapes_and_binary_markers():
    data = b"\\" + b"a" * 64 + b"  shards/x\\nz\n" + b"B" * 64 + b" *shards/b\n"
    assert read_sha256sums(data) == {"shards/x\nz": "a" * 64, "shards/b": "b" * 64}
    with pytest.raises(UntrustedManifest, match="listed twice"):
        read_sha256sums(b"a" * 64 + b"  s\n" + b"b" * 64 + b"  s\n")


@given(st.binary(max_size=300))
def test_hostile_bytes_are_read_or_refused_never_a_crash(data):
    for read in (read_release_json, read_release_files, read_sha256sums, read_torrents_json, read_whitelist):
        with contextlib.suppress(UntrustedManifest):
            read(data)


def test_sha256sums_reads_binary_markers_and_refuses_unsafe_paths():
    digest = "ab" * 32
    assert read_sha256sums(f"{digest}  shards/a.tar.zst\n{digest} *torrents/b\n".encode(), Path("S")) == {
        "shards/a.tar.zst": digest,
        "torrents/b": digest,
    }
    for bad in (f"{digest} shards/a", "xyz  a", f"{digest}  ../a", f"{digest}  /etc/passwd"):
        with pytest.raises(UntrustedManifest):
            read_sha256sums(bad.encode(), Path("S"))
