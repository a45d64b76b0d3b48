"""Publishing phases: the published folder, its formats, append-only entries, refusals, the member index."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import feedparser
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from packager import index_rows, layout, trust
from packager import publish as publish_module
from packager.cli import app
from packager.container import ShardReader, manifest_line
from packager.errors import ConfigError, PublishError
from packager.manifest import TorrentEntry
from packager.member_index import MemberIndex, member_rows
from packager.member_index import writer as index_writer
from packager.signing import generate_keypair, load_signing_key, verify_signature
from packager.state import open_state
from packager.torrent import identity
from packager.workspace import Workspace
from tests.helpers import catalog, do_publish, folder_digests, prepare, run_build, sha256_of, validate

PUBLISHED_FILES = {"release.json", "torrents.json", "SHA256SUMS", "feed.xml", "index.html", "whitelist.txt",
                   "members", "torrents", "swarm.json", "swarm.html", "publication.json",
                   "publications"}  # fmt: skip


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_publish_writes_every_file_and_each_validates(published):
    pub = published / layout.PUBLISHED
    assert {p.name for p in pub.iterdir()} == PUBLISHED_FILES  # no key configured: no signatures
    release = json.loads((pub / "release.json").read_text())
    validate(release, "release")
    validate(json.loads((pub / "torrents.json").read_text()), "torrents")
    with open_state(published) as state:
        shards = {s.name: s for s in state.shards()}
    names = [t["name"] for t in release["torrents"]]
    assert names[0] == "t-metadata-00001" and sorted(names[1:]) == sorted(n for n in shards if "audio" in n)
    assert [p["name"] for p in release["phases"]] == ["metadata", "audio"]
    assert [p["torrents"] for p in release["phases"]] == [1, len(names) - 1]
    sums = (pub / "SHA256SUMS").read_text().splitlines()
    assert sums == sorted(sums, key=lambda line: line.split("  ", 1)[1]) and len(sums) == 2 * len(names) + 3
    for name in (layout.MEMBER_INDEX, layout.MEMBER_INDEX_PACK, layout.MEMBER_INDEX_TORRENT):  # the index too
        assert f"{hashlib.sha256((pub / name).read_bytes()).hexdigest()}  {name}" in sums
    validate(json.loads((pub / layout.MEMBER_INDEX).read_text()), "member-index")
    for t in release["torrents"]:
        shard_path = published / t["files"][0]["path"]
        assert t["files"][0]["sha256"] == hashlib.sha256(shard_path.read_bytes()).hexdigest()
        assert t["files"][0]["size"] == shard_path.stat().st_size
        copy = pub / t["torrent_file"]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == t["files"][1]["sha256"]
        assert f"{t['files'][1]['sha256']}  {t['torrent_file']}" in sums
        assert t["data_size"] == shards[t["name"]].bytes and t["items"] == shards[t["name"]].items
        assert t["info_hash_v1"] in (pub / "whitelist.txt").read_text().split()
        # The member manifest read back from each shard matches its schema too.
        with ShardReader(shard_path) as reader:
            for rec in reader.manifest():
                validate(json.loads(manifest_line(rec)), "member-manifest")


def test_phase_two_leaves_phase_one_entries_identical_and_republishing_changes_nothing(built):
    do_publish(built, "metadata", now="2025-01-01T00:00:00Z")
    pub = built / layout.PUBLISHED
    first = json.loads((pub / "release.json").read_text())
    first_text = (pub / "release.json").read_text()
    do_publish(built, "audio", now="2025-02-01T00:00:00Z")
    second = json.loads((pub / "release.json").read_text())
    assert second["torrents"][: len(first["torrents"])] == first["torrents"]
    assert second["phases"][0] == first["phases"][0]
    # byte-identical: the entry's text in the first file appears unchanged in the second
    entry_text = first_text[
        first_text.index('    {\n      "name": "t-metadata') : first_text.index("\n  ]\n}")
    ]
    assert entry_text in (pub / "release.json").read_text()
    assert {t["added"] for t in second["torrents"][1:]} == {"2025-02-01T00:00:00Z"}
    before = folder_digests(pub)
    for phase in ("audio", "metadata", "audio"):
        report = do_publish(built, phase, now="2030-01-01T00:00:00Z")
        assert report.added == []
        assert folder_digests(pub) == before
    assert not list(built.glob("published.*"))


def test_refusals_name_the_phase_and_shards_and_write_nothing(built, archive):
    do_publish(built, "metadata")
    before = folder_digests(built / layout.PUBLISHED)
    with pytest.raises(ConfigError, match="no phase named 'nope'"):
        do_publish(built, "nope")
    with pytest.raises(PublishError, match="art: the phase has no shards"):
        do_publish(built, "art")
    # new audio items make new, unbuilt shards
    prepare(built, archive, catalog(archive, n=6, seed=9, prefix="late"), name="late.jsonl")
    with open_state(built) as state:
        unbuilt = [s.name for s in state.shards(phase="audio", state="planned")]
    assert unbuilt
    r = invoke("publish", built, "--phase", "audio")
    assert r.exit_code == 2 and "not built; nothing was published" in r.output
    assert all(name in r.output for name in unbuilt) and "packager build" in r.output
    # a failed shard is listed with its reason
    late = next(
        p for p in (archive.root / "audio").iterdir() if p.name.startswith("late") and p.stat().st_size
    )
    late.write_bytes(b"changed")
    run_build(built)
    r = invoke("publish", built, "--phase", "audio")
    assert r.exit_code == 2 and "failed" in r.output and late.name in r.output
    r = invoke("publish", built, "--phase", "nope")
    assert r.exit_code == 2 and "no phase named 'nope'" in r.output and "Traceback" not in r.output
    assert folder_digests(built / layout.PUBLISHED) == before
    with open_state(built) as state:
        assert [p for p, _ in state.publications()] == ["metadata"]


def test_new_shards_of_a_published_phase_are_appended(published, archive):
    pub = published / layout.PUBLISHED
    old = json.loads((pub / "release.json").read_text())
    prepare(published, archive, catalog(archive, n=5, seed=2, prefix="late"), name="late.jsonl")
    assert not run_build(published).failed
    report = do_publish(published, "audio", now="2031-01-01T00:00:00Z")
    assert report.added and all("audio" in n for n in report.added)
    new = json.loads((pub / "release.json").read_text())
    assert new["torrents"][: len(old["torrents"])] == old["torrents"]
    assert [t["name"] for t in new["torrents"][len(old["torrents"]) :]] == report.added
    assert new["phases"] == [p | {"torrents": p["torrents"] + len(report.added) * (p["name"] == "audio")}
                             for p in old["phases"]]  # fmt: skip
    with MemberIndex.open(pub) as idx:
        found, missing = idx.locate(["late00", "t00", "m"])
    assert not missing and found[0].torrent.name in report.added


def test_a_published_torrent_is_never_rewritten(published):
    pub = published / layout.PUBLISHED
    before = folder_digests(pub)
    # New trackers: `packager torrent` re-makes the workspace's .torrent files (same info-hashes).
    cfg = published / layout.CONFIG
    cfg.write_text(
        cfg.read_text().replace("http://127.0.0.1:6969/announce", "http://127.0.0.1:7070/announce")
    )
    assert invoke("torrent", published).exit_code == 0
    do_publish(published, "audio")
    assert folder_digests(pub) == before
    # With the published copy gone too, no file has the published bytes: refuse rather than rewrite.
    victim = next((pub / "torrents").iterdir())
    victim.unlink()
    with pytest.raises(PublishError, match="never rewritten"):
        do_publish(published, "audio")


def test_a_failed_publish_leaves_the_previous_folder_and_no_temporary_one(built, monkeypatch):
    do_publish(built, "metadata")
    pub = built / layout.PUBLISHED
    before = folder_digests(pub)
    (built / "published.tmp-dead").mkdir()  # left by a publish killed earlier

    def boom(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(publish_module, "_write_member_index", boom)
    with pytest.raises(OSError, match="disk full"):
        do_publish(built, "audio")
    assert folder_digests(pub) == before
    assert not list(built.glob("published.*"))
    with open_state(built) as state:  # nothing recorded: audio is still unpublished
        assert [p for p, _ in state.publications()] == ["metadata"] and len(state.published_entries()) == 1
    monkeypatch.undo()
    assert do_publish(built, "audio").added


def test_feed_is_rss2_with_one_torrent_enclosure_per_torrent_newest_first(built):
    do_publish(built, "metadata", now="2025-01-01T00:00:00Z")
    do_publish(built, "audio", now="2025-02-01T00:00:00Z")
    pub = built / layout.PUBLISHED
    release = json.loads((pub / "release.json").read_text())
    feed = feedparser.parse((pub / "feed.xml").read_bytes())
    assert not feed.bozo and feed.version == "rss20"
    assert len(feed.entries) == len(release["torrents"])
    audio = [t["name"] for t in release["torrents"] if t["phase"] == "audio"]
    assert [item.title for item in feed.entries] == audio + ["t-metadata-00001"]  # the oldest phase last
    for item in feed.entries:
        (enc,) = item.enclosures
        assert enc.type == "application/x-bittorrent"
        t = next(t for t in release["torrents"] if t["name"] == item.title)
        assert enc.href == "torrents/" + t["torrent_file"].split("/")[-1]  # no base_url in the test config
        assert int(enc.length) == t["files"][1]["size"]


def test_torrents_json_urls_use_the_base_url(built):
    cfg = built / layout.CONFIG
    cfg.write_text(cfg.read_text() + '\n[publish]\nbase_url = "https://example.org/t/torrents/"\n')
    do_publish(built, "metadata")
    (row,) = json.loads((built / layout.PUBLISHED / "torrents.json").read_text())
    assert row["url"] == "https://example.org/t/torrents/t-metadata-00001.tar.zst.torrent"
    assert row["display_name"] == "t-metadata-00001.tar.zst.torrent" and row["num_files"] == 1
    feed = feedparser.parse((built / layout.PUBLISHED / "feed.xml").read_bytes())
    assert feed.entries[0].enclosures[0].href == row["url"]


def test_index_html_lists_phases_torrents_and_magnets(published):
    page = (published / layout.PUBLISHED / "index.html").read_text()
    release = json.loads((published / layout.PUBLISHED / "release.json").read_text())
    for t in release["torrents"]:
        assert t["name"] in page and t["magnet"].replace("&", "&amp;") in page and t["torrent_file"] in page
    assert "art</td><td class=muted>not yet published" in page
    # The member index's own torrent, so that a volunteer can seed (and a downloader fetch) the index too.
    index_torrent = (published / layout.PUBLISHED / layout.MEMBER_INDEX_TORRENT).read_bytes()
    assert f'href="{layout.MEMBER_INDEX_TORRENT}"' in page
    assert identity(index_torrent).magnet.replace("&", "&amp;") in page
    # dependency-free: no script, nothing fetched from elsewhere
    assert "<script" not in page and "src=" not in page and 'rel="stylesheet"' not in page


def test_locate_gives_the_pieces_that_hold_each_member(published):
    pub = published / layout.PUBLISHED
    release = json.loads((pub / "release.json").read_text())
    by_name = {t["name"]: t for t in release["torrents"]}
    ids, spans = [], 0
    with open_state(published) as state:
        for s in state.shards():
            ids += [m.id for m in state.iter_members(s.id)]
    with MemberIndex.open(pub / "members" / "index.json") as idx:
        found, missing = idx.locate(ids)
    assert not missing and len(found) == len(ids)
    for loc in found:
        t = by_name[loc.torrent.name]
        files = {f["path"]: f for f in t["files"]}
        assert (loc.torrent.info_hash_v1, loc.torrent.magnet, loc.torrent.piece_size) == (
            t["info_hash_v1"],
            t["magnet"],
            t["piece_size"],
        )
        assert files[loc.torrent.shard_file]["sha256"] == loc.torrent.shard_sha256
        assert files[loc.torrent.torrent_file]["sha256"] == loc.torrent.torrent_sha256
        shard = published / loc.torrent.shard_file
        with ShardReader(shard) as reader:
            rec = reader.find(loc.id)
            frames = reader.frames
        fields = ("path", "offset", "size", "first_frame", "last_frame", "xxh3_128", "sha256")
        assert [getattr(loc, f) for f in fields] == [getattr(rec, f) for f in fields]
        # The piece range covers exactly the member's frames: from only those pieces' bytes the member
        # decompresses whole, and one piece fewer at either end would cut a frame.
        ps = loc.torrent.piece_size
        data = shard.read_bytes()
        start, end = loc.frames_offset, loc.frames_offset + loc.frames_size
        assert start == frames[loc.first_frame].compressed_offset
        assert loc.first_piece == start // ps and loc.last_piece == (end - 1) // ps
        assert loc.first_piece * ps <= start < (loc.first_piece + 1) * ps
        assert loc.last_piece * ps < end <= (loc.last_piece + 1) * ps
        pieces = data[loc.first_piece * ps : (loc.last_piece + 1) * ps]
        rel = start - loc.first_piece * ps
        frames_bytes = io.BytesIO(pieces[rel : rel + loc.frames_size])
        tar = zstandard.ZstdDecompressor().stream_reader(frames_bytes, read_across_frames=True).read()
        content = tar[loc.offset - loc.frames_tar_offset :][: loc.size]
        assert hashlib.sha256(content).hexdigest() == rec.sha256
        spans += loc.last_piece > loc.first_piece
    assert spans, "no member spans several pieces; make the test data bigger"


def test_the_member_index_is_seedable_as_its_own_torrent(published):
    """A single-file v1 torrent of the pack, whose info dict is libtorrent's own for that file, named by the
    index root (which so authenticates its pieces), whitelisted, seeded by `packager seed`."""
    import libtorrent as lt

    from packager.seed.selection import published_torrents, whitelist_hashes

    pub = published / layout.PUBLISHED
    root = json.loads((pub / layout.MEMBER_INDEX).read_text())
    info = lt.torrent_info(str(pub / layout.MEMBER_INDEX_TORRENT))
    assert info.num_files() == 1 and info.name() == "members.pack"
    assert str(info.info_hashes().v1) == root["torrent"]["info_hash_v1"]
    assert info.piece_length() == root["torrent"]["piece_size"] == 16384
    files = lt.list_files(str(pub / layout.MEMBER_INDEX_PACK), flags=lt.create_torrent.no_attributes)
    made = lt.create_torrent(files, info.piece_length(), flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(made, str(pub / layout.MEMBER_INDEX_DIR))
    assert lt.bencode(made.generate()[b"info"]) == info.info_section()
    assert root["torrent"]["info_hash_v1"] in (pub / "whitelist.txt").read_text().split()
    with Workspace.open(published) as ws:
        assert root["torrent"]["info_hash_v1"] in whitelist_hashes(ws)
        index = published_torrents(ws)[-1]
        assert (index.info_hash_v1, index.data, index.length) == (
            root["torrent"]["info_hash_v1"], (pub / layout.MEMBER_INDEX_PACK).resolve(),
            root["pack"]["size"])  # fmt: skip
        assert all(t.shard_id for t in published_torrents(ws, ["audio"]))  # a phase: shards only


def test_torrent_re_makes_the_index_torrent_with_the_new_trackers_and_web_seeds(published):
    """After a tracker or web seed change, `packager torrent` re-makes the index's torrent beside the shards'
    (same info-hash, from the published piece hashes); its web seed is the pack beside a mirror's shards/
    folder (the url-list names the file, BEP 19); the published copy stays as it was published."""
    from packager.torrent import read_torrent

    pub = published / layout.PUBLISHED
    before = (pub / layout.MEMBER_INDEX_TORRENT).read_bytes()
    config = published / layout.CONFIG
    seeds = 'web_seeds = ["https://a.example/music/shards/", "http://b.example/m/"]'
    text = config.read_text().replace("[torrents]\n", f"[torrents]\n{seeds}\n")
    config.write_text(text.replace("127.0.0.1:6969", "127.0.0.1:6970"))
    result = invoke("torrent", published)
    assert result.exit_code == 0 and "members.pack" in result.stdout, result.output
    remade, published_copy = read_torrent(published / layout.MEMBER_INDEX_TORRENT), read_torrent(
        pub / layout.MEMBER_INDEX_TORRENT)  # fmt: skip
    assert remade.info_hash_v1 == published_copy.info_hash_v1
    assert remade.web_seeds == ("https://a.example/music/members/members.pack",)
    assert remade.trackers == (("http://127.0.0.1:6970/announce",),)
    assert (pub / layout.MEMBER_INDEX_TORRENT).read_bytes() == before
    made = json.loads(invoke("torrent", published, "--json").stdout)
    assert made[-1]["member_index"] and made[-1]["info_hash_v1"] == remade.info_hash_v1
    # A private flag would change the info-hash: the published torrent is then seeded as it is.
    config.write_text(config.read_text().replace("[torrents]\n", "[torrents]\nprivate = true\n"))
    result = invoke("torrent", published)
    assert result.exit_code == 0 and "would change its info-hash" in result.stdout, result.output
    assert not (published / layout.MEMBER_INDEX_TORRENT).exists()


def test_locate_cli(published):
    r = invoke("locate", published / layout.PUBLISHED, "t03", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    (loc,) = data["found"]
    assert loc["id"] == "t03" and loc["pieces"] == loc["last_piece"] - loc["first_piece"] + 1
    r = invoke("locate", published / layout.PUBLISHED / layout.MEMBER_INDEX, "t03", "no-such-id")
    assert r.exit_code == 2 and "no-such-id" in r.output and "pieces" in r.output
    r = invoke("locate", published, "t03")  # the workspace: its published/ folder
    assert r.exit_code == 0 and "t03" in r.output
    r = invoke("locate", published / "nowhere", "t03")
    assert r.exit_code == 2 and "no member index" in r.output


def test_signed_publish_with_an_encrypted_key(built, tmp_path, monkeypatch):
    pw = tmp_path / "pw.txt"
    pw.write_text("correct horse\n")
    key = tmp_path / "keys" / "release.key"
    r = invoke("keygen", key, "--password-file", pw)
    assert r.exit_code == 0, r.output
    public = (tmp_path / "keys" / "release.pub").read_text()
    assert public.splitlines()[1] in r.output and "encrypted" in key.read_text()
    assert key.stat().st_mode & 0o077 == 0
    assert invoke("keygen", key, "--unencrypted").exit_code == 2  # never overwrites silently
    cfg = built / layout.CONFIG
    cfg.write_text(cfg.read_text() + f'\n[publish]\nsigning_key = "{key}"\n')
    bad = tmp_path / "bad.txt"
    bad.write_text("wrong\n")
    r = invoke("publish", built, "--phase", "metadata", "--password-file", bad)
    assert r.exit_code == 2 and "wrong password" in r.output
    assert not (built / layout.PUBLISHED).exists()
    monkeypatch.setenv("PACKAGER_KEY_PASSWORD", "correct horse")
    r = invoke("publish", built, "--phase", "metadata")
    assert r.exit_code == 0, r.output
    pub = built / layout.PUBLISHED
    for name in ("SHA256SUMS", "release.json"):
        comment = verify_signature(public, (pub / name).read_bytes(), (pub / f"{name}.minisig").read_bytes())
        assert f"file:{name}" in comment
    before = folder_digests(pub)
    assert invoke("publish", built, "--phase", "metadata").exit_code == 0
    assert folder_digests(pub) == before  # Ed25519 is deterministic and the timestamp is the publication's
    signing = load_signing_key(key, lambda: "correct horse")
    assert signing.public_key in (pub / "index.html").read_text()


def test_cli_publish_prints_where_the_index_is(built):
    r = invoke("publish", built, "--phase", "metadata")
    assert r.exit_code == 0, r.output
    assert str(built / layout.PUBLISHED / "index.html") in r.output and "not signed" in r.output
    r = invoke("publish", built, "--phase", "metadata", "--json")
    report = json.loads(r.stdout)
    assert report["added"] == [] and report["torrents"] == 1 and report["index_html"].endswith("index.html")


def test_frozen_entries_round_trip(published):
    with open_state(published) as state:
        for _, _, text in state.published_entries():
            assert TorrentEntry.from_json(text).to_json() == text


# ---- the publication statement ----------------------------------------------------------------------


def statement_of(folder: Path) -> trust.Statement:
    return trust.read_statement((folder / layout.STATEMENT).read_bytes())


def test_the_statement_lists_every_published_file_but_the_live_ones(published):
    pub = published / layout.PUBLISHED
    doc = json.loads((pub / layout.STATEMENT).read_bytes())
    validate(doc, "publication")
    statement = statement_of(pub)
    on_disk = {str(p.relative_to(pub)) for p in pub.rglob("*") if p.is_file()}
    assert set(statement.files) == on_disk - {layout.STATEMENT, *layout.LIVE_FILES}
    assert {"release.json", "torrents.json", "SHA256SUMS", "whitelist.txt", "feed.xml", "index.html",
            layout.MEMBER_INDEX, layout.MEMBER_INDEX_PACK,
            layout.statement_file(1)} <= set(statement.files)  # fmt: skip
    assert sum(rel.startswith("torrents/") for rel in statement.files) == 1 + len(
        json.loads((pub / "release.json").read_text())["torrents"]
    )  # fmt: skip  (and the member index's)
    for rel, digest in statement.files.items():
        assert (digest.size, digest.sha256) == ((pub / rel).stat().st_size, sha256_of(pub / rel))
    assert statement.release == "t" and statement.valid_until is None


def test_each_publication_chains_to_the_previous_one_and_republishing_changes_nothing(built):
    pub = built / layout.PUBLISHED
    do_publish(built, "metadata", now="2025-01-01T00:00:00Z")
    first = (pub / layout.STATEMENT).read_bytes()
    assert statement_of(pub).publication == 1 and statement_of(pub).previous is None
    assert not (pub / layout.STATEMENTS).exists()
    before = folder_digests(pub)
    report = do_publish(built, "metadata", now="2025-01-05T00:00:00Z")
    assert report.publication == 1 and folder_digests(pub) == before  # nothing changed: no new publication
    assert do_publish(built, "audio", now="2025-02-01T00:00:00Z").publication == 2
    second = statement_of(pub)
    assert second.publication == 2 and second.published_at == "2025-02-01T00:00:00Z"
    assert second.previous == trust.Previous(1, hashlib.sha256(first).hexdigest())
    assert (pub / layout.statement_file(1)).read_bytes() == first  # the chain stays published
    assert second.files[layout.statement_file(1)].sha256 == hashlib.sha256(first).hexdigest()
    assert do_publish(built, "audio", now="2025-03-01T00:00:00Z", refresh=True).publication == 3
    third = statement_of(pub)
    assert third.previous.sha256 == second.sha256 and _without_chain(third) == _without_chain(second)
    # The chain is kept in the state: a lost published/ comes back with every earlier statement intact (a
    # member index rebuilt from scratch is not byte-identical to an extended one, hence publication 4).
    everything = folder_digests(pub)
    shutil.rmtree(pub)
    assert do_publish(built, "audio", now="2025-04-01T00:00:00Z").publication in (3, 4)
    for n in (1, 2):
        rel = layout.statement_file(n)
        assert folder_digests(pub)[rel] == everything[rel]
    assert statement_of(pub).previous in (third.previous, trust.Previous(3, third.sha256))


def _without_chain(statement: trust.Statement) -> dict:
    return {k: v for k, v in statement.files.items() if not k.startswith(layout.STATEMENTS)}


def test_valid_until_is_renewed_before_half_of_it_has_passed(built):
    cfg = built / layout.CONFIG
    cfg.write_text(cfg.read_text() + '\n[publish]\nvalid_for = "10d"\n')
    pub = built / layout.PUBLISHED
    do_publish(built, "metadata", now="2025-01-01T00:00:00Z")
    assert statement_of(pub).valid_until == "2025-01-11T00:00:00Z"
    assert do_publish(built, "metadata", now="2025-01-05T23:00:00Z").publication == 1
    renewed = do_publish(built, "metadata", now="2025-01-06T01:00:00Z")
    assert renewed.publication == 2 and statement_of(pub).valid_until == "2025-01-16T01:00:00Z"
    cfg.write_text(cfg.read_text().replace('valid_for = "10d"', 'valid_for = "soon"'))
    with pytest.raises(ConfigError, match="publish.valid_for"):
        do_publish(built, "metadata")


def test_a_signed_statement_verifies_with_the_release_key(built, tmp_path):
    pair = generate_keypair(tmp_path / "keys" / "release.key", None)
    do_publish(built, "metadata", key=lambda: load_signing_key(pair.secret))
    pub = built / layout.PUBLISHED
    data, sig = (pub / layout.STATEMENT).read_bytes(), (pub / f"{layout.STATEMENT}.minisig").read_bytes()
    statement = trust.load_statement(data, sig, pair.public.read_text())
    assert statement.key_id == pair.key_id and "publication.json" in verify_signature(
        pair.public.read_text(), data, sig)  # fmt: skip
    # Signing for the first time changes index.html and adds signatures: a new publication.
    unsigned_then_signed = statement.publication
    assert unsigned_then_signed == 1
    do_publish(built, "audio")  # no key now: a new, unsigned statement
    assert not (pub / f"{layout.STATEMENT}.minisig").exists()
    assert (pub / f"{layout.statement_file(1)}.minisig").read_bytes() == sig  # earlier signatures kept


def test_keygen_hints_work_as_printed(built, tmp_path, monkeypatch):
    """keygen prints a release.toml line and a --key example; both must sign when used exactly as printed,
    from a folder that is neither the workspace nor the key's (relative paths: issue 13)."""
    import re

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = invoke("keygen", "keys/release.key", "--unencrypted")
    assert r.exit_code == 0, r.output
    config_line = re.search(r'(signing_key = "[^"]+")', r.output).group(1)
    key_flag = re.search(r"--key (\S+)", r.output).group(1)
    assert "taken from release.toml's folder" in r.output and "taken from the current folder" in r.output
    cfg = built / layout.CONFIG
    original = cfg.read_text()
    cfg.write_text(original + f"\n[publish]\n{config_line}\n")
    r = invoke("publish", built, "--phase", "metadata")
    assert r.exit_code == 0 and "signed by minisign key" in r.output, r.output
    cfg.write_text(original)
    r = invoke("publish", built, "--phase", "audio", "--key", key_flag)
    assert r.exit_code == 0 and "signed by minisign key" in r.output, r.output
    assert (built / layout.PUBLISHED / f"{layout.STATEMENT}.minisig").is_file()


def plain_member_rows(writer, state_path, torrents, frames_of):
    """The member index's rows read the plain way, each shard's members joined to their items row by
    row: the model for index_rows.add_built_members."""
    state = open_state(state_path.parent, readonly=True)
    writer.add_torrents(
        (n, entry, list(member_rows(state.iter_member_records(shard_id), frames_of(shard), n)))
        for n, entry, shard_id, shard in torrents
    )
    state.close()


def test_the_member_index_is_the_same_however_its_rows_are_read(make_workspace, archive, monkeypatch):
    """At scale the members' rows are read in two passes (by item rowid range), by two processes each with
    its own state connection and seek tables; a sparse range is read item by item: the same index, byte
    for byte, as the plain read."""
    rows = catalog(archive)
    digests = []
    modules = {"POOL_MEMBERS": index_writer, "WORKERS": index_writer, "RANGE_MEMBERS": index_rows}
    modules["SPARSE"] = index_rows
    defaults = {key: getattr(module, key) for key, module in modules.items()}
    for name, settings in (
        ("plain", {}),
        ("inline", {}),
        ("workers", {"POOL_MEMBERS": 0, "WORKERS": 2, "RANGE_MEMBERS": 3}),
        ("sparse", {"RANGE_MEMBERS": 3, "SPARSE": 10**6}),
    ):
        ws = make_workspace(name)
        prepare(ws, archive, rows)
        assert not run_build(ws).failed
        for key, module in modules.items():
            monkeypatch.setattr(module, key, settings.get(key, defaults[key]))
        if name == "plain":
            monkeypatch.setattr(publish_module, "add_built_members", plain_member_rows)
        else:
            monkeypatch.setattr(publish_module, "add_built_members", index_rows.add_built_members)
        do_publish(ws, "metadata")
        do_publish(ws, "audio")
        digests.append(folder_digests(ws / layout.PUBLISHED / layout.MEMBER_INDEX_DIR))
    assert digests[0] == digests[1] == digests[2] == digests[3] and len(digests[0]) == 2


@given(text=st.text())
def test_sqlite_json_quote_writes_any_text_as_orjson_does(text):
    """The member index's rows are joined from JSON text SQLite writes (state.iter_item_parts,
    iter_member_build_parts): its bytes must be orjson's, or the index would differ from the plain read."""
    import sqlite3

    import orjson

    db = sqlite3.connect(":memory:")
    assert db.execute("SELECT CAST(json_quote(?) AS BLOB)", (text,)).fetchone()[0] == orjson.dumps(text)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_built_member_whose_item_is_gone_is_refused(built, monkeypatch, sparse):
    """Read by item rowid range (a dense range in one scan, a sparse one item by item), a built member
    whose item is gone stops the index, naming its rowid (two shards cannot hold one item: members_item is
    unique)."""
    monkeypatch.setattr(index_rows, "RANGE_MEMBERS", 3)
    if sparse:
        monkeypatch.setattr(index_rows, "SPARSE", 10**6)
    with open_state(built) as state:
        rowid = state.db.execute(
            "SELECT m.item_rowid FROM members m JOIN shards s ON s.id = m.shard_id WHERE s.phase = 'audio' "
            "ORDER BY m.shard_id DESC, m.ord DESC LIMIT 1"
        ).fetchone()[0]
        state.db.execute("DELETE FROM items WHERE n = ?", (rowid,))
    do_publish(built, "metadata")
    with pytest.raises(PublishError, match=re.escape(f"1 built member(s) have no item, e.g. rowid {rowid}")):
        do_publish(built, "audio")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            "UPDATE member_builds SET last_frame = 10000 WHERE shard_id = ? AND ord = ?",
            r"member \d+ lies in frames \d+-10000, but the shard's seek table lists \d+ frames",
        ),
        (
            "UPDATE member_builds SET first_frame = -1 WHERE shard_id = ? AND ord = ?",
            r"member \d+ lies in frames -1-\d+",
        ),
        ("DELETE FROM members WHERE shard_id = ? AND ord = ?", r"has a build record but no plan"),
        (
            "DELETE FROM member_builds WHERE shard_id = ? AND ord = ?",
            r"member \d+ \(item rowid \d+\) has no build",
        ),
    ],
)
def test_a_build_record_that_does_not_match_the_shard_is_refused_by_name(built, damage, message):
    """A member whose frames are not the shard's (no IndexError, no member silently left out: -1 would
    have read the last frame), a build record of no planned member, a planned member with no build record:
    the index is refused, naming the shard and the member (State.index_gaps), and nothing is published."""
    do_publish(built, "metadata")
    before = folder_digests(built / layout.PUBLISHED)
    with open_state(built) as state:
        shard_id, name, ord_ = state.db.execute(
            "SELECT s.id, s.name, m.ord FROM members m JOIN shards s ON s.id = m.shard_id "
            "WHERE s.phase = 'audio' ORDER BY m.shard_id, m.ord LIMIT 1"
        ).fetchone()
        state.db.execute(damage, (shard_id, ord_))
    with pytest.raises(PublishError, match=message) as e:
        do_publish(built, "audio")
    assert e.value.subject == name and "cannot all be indexed" in str(e.value)
    assert folder_digests(built / layout.PUBLISHED) == before


def test_a_seek_table_that_cannot_be_read_is_refused_by_name(built, tmp_path):
    """The index reads each shard's seek table (read_frame_spans): a missing shard, or one cut short, is a
    PublishError naming it, not a traceback."""
    with pytest.raises(PublishError, match="cannot read it: No such file"):
        publish_module._shard_frames((str(tmp_path / "gone.tar.zst"), "gone"))
    shard = next((built / layout.SHARDS).rglob("*.tar.zst"))
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(PublishError, match="cut: cannot read the shard's seek table .*no zstd seek table"):
        publish_module._shard_frames((str(cut), "cut"))


@pytest.mark.parametrize("span", [2, 10**6])
def test_an_item_in_two_build_records_is_refused(built, tmp_path, span):
    """Pass 2 of the member index refuses a rowid range holding one item's record twice, whether the range
    is dense (a list by rowid: a second record would replace the first) or sparse (a dict)."""
    with open_state(built) as state:
        rowid = state.db.execute("SELECT MIN(item_rowid) FROM members").fetchone()[0]
    records = tmp_path / "00000"
    line = b'%d 1 0,0,0,0,1,0,"x","y"\n' % rowid
    records.write_bytes(zstandard.ZstdCompressor().compress(line + line))
    job = (str(built / layout.STATE), [str(records)], rowid, rowid + span)
    with pytest.raises(PublishError, match=f"item rowid {rowid} is a member of two built shards"):
        list(index_rows._range_rows(job))
