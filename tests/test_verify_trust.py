"""Verify as a hostile mirror would test it: rollback, a mix of two publications, each published file edited,
an expired statement, the trust file, and locate's member index (issue 13).

One workspace is built once; publication 1 (phase metadata) and publication 2 (+ phase audio), both signed,
are copied out as mirror folders (the published files plus shards/). Each case lays out a folder from them
with hard links, changes what it attacks, and runs verify as a downloader whose trust file holds what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from packager import layout, trust
from packager.cli import app
from packager.errors import MixedPublication, PackagerError
from packager.signing import generate_keypair, load_signing_key
from packager.verify import VerifyOptions, verify
from packager.workspace import Workspace
from tests.helpers import SMALL_CONFIG, Archive, catalog, do_publish, prepare, run_build


class Pubs:
    """Two signed publications of one release, as mirror folders, and a trust file that saw the second."""

    def __init__(self, base: Path):
        archive = Archive(base)
        self.ws = base / "ws"
        Workspace.init(self.ws, archive.root, "t").close()
        (self.ws / layout.CONFIG).write_text(
            SMALL_CONFIG.replace("{root}", str(archive.root)).replace("{audio_shard}", "100kB")
        )
        prepare(self.ws, archive, catalog(archive))
        assert not run_build(self.ws).failed
        self.keys = generate_keypair(base / "keys" / "release.key", None)
        self.pub = str(self.keys.public)
        self.folders: dict[int, Path] = {}
        for n, (phase, when) in enumerate(
            [("metadata", "2025-01-01T00:00:00Z"), ("audio", "2025-02-01T00:00:00Z")], 1
        ):
            report = do_publish(self.ws, phase, key=lambda: load_signing_key(self.keys.secret), now=when)
            assert report.publication == n
            folder = base / f"pub{n}"
            shutil.copytree(self.ws / layout.PUBLISHED, folder)
            (folder / layout.SHARDS).mkdir()
            names = [
                e["files"][0]["path"] for e in json.loads((folder / "release.json").read_text())["torrents"]
            ]
            for rel in names:
                os.link(self.ws / rel, folder / rel)
            for live in layout.LIVE_FILES:
                (folder / live).unlink(missing_ok=True)  # unsigned and advisory: not part of what is compared
            self.folders[n] = folder
        self.trust2 = base / "trust-2.json"
        assert (
            verify([self.folders[2]], VerifyOptions(pubkey=self.pub, trust_file=self.trust2)).exit_code() == 0
        )
        assert json.loads(self.trust2.read_text())["trusted"][0]["publication"] == 2

    def files(self, n: int) -> dict[str, Path]:
        folder = self.folders[n]
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}

    def trust_file(self, dest: Path) -> Path:
        shutil.copy(self.trust2, dest)
        return dest


@pytest.fixture(scope="module")
def pubs(tmp_path_factory) -> Pubs:
    return Pubs(tmp_path_factory.mktemp("pubs"))


def lay_out(dest: Path, choice: dict[str, Path]) -> Path:
    for rel, source in choice.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(source, dest / rel)
    dest.mkdir(exist_ok=True)
    return dest


def copy_of(pubs: Pubs, n: int, dest: Path, edit: str | None = None) -> Path:
    """Publication `n` laid out at `dest`, with `edit` a real copy (so it can be changed)."""
    files = pubs.files(n)
    folder = lay_out(dest, {rel: p for rel, p in files.items() if rel != edit})
    if edit:
        shutil.copy(files[edit], folder / edit)
    return folder


def run(pubs: Pubs, folder: Path, trust_file: Path, *more: str):
    return CliRunner().invoke(
        app, ["verify", str(folder), "--pubkey", pubs.pub, "--trust-file", str(trust_file), *more]
    )


# ---- rollback ---------------------------------------------------------------------------------------------


def test_a_full_rollback_to_the_previous_publication_is_refused(pubs, tmp_path):
    tf = pubs.trust_file(tmp_path / "trust.json")
    before = tf.read_bytes()
    r = run(pubs, pubs.folders[1], tf)
    assert r.exit_code == 2, r.output
    assert (
        "is publication 1" in r.output
        and "older than the publication 2" in r.output
        and "rollback" in r.output
    )
    assert tf.read_bytes() == before
    # A downloader who never saw publication 2 accepts publication 1, and then refuses nothing newer.
    fresh = tmp_path / "fresh.json"
    assert run(pubs, pubs.folders[1], fresh).exit_code == 0
    assert run(pubs, pubs.folders[2], fresh).exit_code == 0
    assert json.loads(fresh.read_text())["trusted"][0]["publication"] == 2


def test_a_statement_forked_from_the_trusted_history_is_refused(pubs, tmp_path):
    tf = pubs.trust_file(tmp_path / "trust.json")
    folder = copy_of(pubs, 2, tmp_path / "m", edit=layout.STATEMENT)
    s = trust.read_statement((folder / layout.STATEMENT).read_bytes())
    files = dict(s.files)
    files["feed.xml"] = trust.FileDigest(1, "0" * 64)
    forged = trust.statement_json("t", 2, "2025-03-01T00:00:00Z", files, s.previous)  # a second publication 2
    key = load_signing_key(pubs.keys.secret)
    (folder / layout.STATEMENT).write_bytes(forged)
    sig = folder / layout.signature_name(layout.STATEMENT)
    sig.unlink()
    sig.write_bytes(key.sign(forged, layout.STATEMENT, 1))
    r = run(pubs, folder, tf)
    assert r.exit_code == 2 and "does not continue the publication 2" in r.output


# ---- mix and match ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("old", ["release.json", "SHA256SUMS", "feed.xml", "index.html", "torrents.json",
                                 "whitelist.txt", "members/index.json", "members/members.pack"])  # fmt: skip
def test_a_file_of_the_previous_publication_is_named_as_such(pubs, tmp_path, old):
    choice = pubs.files(2) | {old: pubs.files(1)[old]}
    signature = layout.signature_name(old)
    if signature in pubs.files(1):
        choice[signature] = pubs.files(1)[signature]  # validly signed, but older
    folder = lay_out(tmp_path / "m", choice)
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"))
    assert r.exit_code == 2, r.output
    assert f"{old}: from publication 1" in r.output and "statement is publication 2" in r.output


def test_the_old_statement_with_the_new_files_is_refused(pubs, tmp_path):
    """Publication 1's (validly signed) statement over publication 2's files, for a downloader who never saw
    publication 2: the files are newer than the statement says."""
    choice = pubs.files(2)
    for name in (layout.STATEMENT, layout.signature_name(layout.STATEMENT)):
        choice[name] = pubs.files(1)[name]
    folder = lay_out(tmp_path / "m", choice)
    with pytest.raises(MixedPublication) as e:
        verify([folder], VerifyOptions(pubkey=pubs.pub, trust_file=tmp_path / "fresh.json"))
    assert ("release.json", None) in e.value.files and e.value.publication == 1
    assert not (tmp_path / "fresh.json").exists()


# ---- every published file edited -------------------------------------------------------------------------


def _published(pubs: Pubs) -> list[str]:
    return sorted(rel for rel in pubs.files(2) if not rel.startswith(f"{layout.SHARDS}/"))


def test_each_published_file_edited_is_refused(pubs, tmp_path):
    names = _published(pubs)
    assert len(names) > 15 and "publications/000001.json.minisig" in names
    tf = pubs.trust_file(tmp_path / "trust.json")
    before = tf.read_bytes()
    for n, rel in enumerate(names):
        folder = copy_of(pubs, 2, tmp_path / f"m{n}", edit=rel)
        data = bytearray((folder / rel).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / rel).write_bytes(data)
        r = run(pubs, folder, tf)
        if rel.startswith(f"{layout.TORRENTS}/") or rel in (layout.MEMBER_INDEX_PACK, layout.MEMBER_INDEX):
            # A .torrent is checked with its shard against release.json, the member index (its pack, root and
            # torrent) against the statement: data, reported damaged (never used), not an edited manifest.
            assert r.exit_code == 1 and rel in r.output and "damaged" in r.output, r.output
        else:
            assert r.exit_code == 2, (rel, r.output)
            assert rel in r.output, (rel, r.output)
        assert tf.read_bytes() == before


def test_a_foreign_file_in_the_folder_is_noted_not_trusted(pubs, tmp_path):
    folder = copy_of(pubs, 2, tmp_path / "m")
    (folder / "torrents" / "evil.tar.zst.torrent").write_bytes(b"d4:infodee")
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"))
    assert r.exit_code == 0 and "torrents/evil.tar.zst.torrent: not part of publication 2" in r.output


# ---- expiry and the trust file ----------------------------------------------------------------------------


def test_an_expired_publication_is_refused(tmp_path, workspace, archive):
    prepare(workspace, archive, catalog(archive))
    assert not run_build(workspace).failed
    cfg = workspace / layout.CONFIG
    cfg.write_text(cfg.read_text() + '\n[publish]\nvalid_for = "1h"\n')
    keys = generate_keypair(tmp_path / "k.key", None)
    do_publish(workspace, "metadata", key=lambda: load_signing_key(keys.secret), now="2025-01-01T00:00:00Z")
    r = CliRunner().invoke(app, ["verify", str(workspace), "--pubkey", str(keys.public)])
    assert r.exit_code == 2 and "expired at 2025-01-01T01:00:00Z" in r.output


def test_the_trust_file_moves_only_after_a_fully_good_check(pubs, tmp_path):
    tf = tmp_path / "trust.json"
    folder = copy_of(pubs, 2, tmp_path / "m", edit="shards/t-audio-t1-00001.tar.zst")
    shard = folder / "shards" / "t-audio-t1-00001.tar.zst"
    good = shard.read_bytes()
    shard.write_bytes(good[:-10] + b"0123456789")
    r = run(pubs, folder, tf)
    assert r.exit_code == 1 and "not updated" in r.output and not tf.exists()
    shard.unlink()
    assert run(pubs, folder, tf).exit_code == 1 and not tf.exists()  # missing
    r = run(pubs, folder, tf, "--partial")
    assert r.exit_code == 0 and "publication 2" in r.output and "accepted" in r.output
    assert json.loads(tf.read_text())["trusted"][0]["publication"] == 2
    shard.write_bytes(good)
    r = run(pubs, folder, tf, "--json")
    doc = json.loads(r.stdout)
    assert doc["publications"][0]["trust"] == "already trusted" and doc["publications"][0]["publication"] == 2
    # Without a key the statement still catches a mix, and the trust file is neither read nor written.
    r = CliRunner().invoke(app, ["verify", str(pubs.folders[1]), "--trust-file", str(tf)])
    assert r.exit_code == 0 and "not authenticated" in r.output


def test_the_trust_file_default_location_is_used(pubs, tmp_path, monkeypatch):
    monkeypatch.delenv("PACKAGER_TRUST_FILE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    r = CliRunner().invoke(app, ["verify", str(pubs.folders[2]), "--pubkey", pubs.pub])
    assert r.exit_code == 0, r.output
    assert (
        json.loads((tmp_path / "xdg" / "packager" / "trust.json").read_text())["trusted"][0]["release"] == "t"
    )


# ---- locate -----------------------------------------------------------------------------------------------


def test_locate_checks_the_member_index_against_the_statement(pubs, tmp_path):
    tf = pubs.trust_file(tmp_path / "trust.json")
    args = ["--pubkey", pubs.pub, "--trust-file", str(tf)]
    good = CliRunner().invoke(app, ["locate", str(pubs.folders[2]), "t03", *args])
    assert good.exit_code == 0, good.output
    index = ["members/index.json", "members/members.pack"]
    older = lay_out(tmp_path / "old", pubs.files(2) | {rel: pubs.files(1)[rel] for rel in index})
    r = CliRunner().invoke(app, ["locate", str(older / "members" / "index.json"), "m", *args])
    assert r.exit_code == 2 and "is from publication 1" in r.output, r.output
    edited = copy_of(pubs, 2, tmp_path / "edited", edit=index[0])
    data = bytearray((edited / index[0]).read_bytes())
    data[len(data) // 2] ^= 1
    (edited / index[0]).write_bytes(data)
    for extra in (args, []):  # the unsigned statement still tells, without a key
        r = CliRunner().invoke(app, ["locate", str(edited), "t03", *extra])
        assert r.exit_code == 2 and index[0] in r.output and "SHA-256" in r.output, r.output
    r = CliRunner().invoke(app, ["locate", str(pubs.folders[1]), "m", *args])
    assert r.exit_code == 2 and "rollback" in r.output


# ---- the property -----------------------------------------------------------------------------------------


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mix_of_two_publications_is_refused_or_exactly_the_newer(pubs, tmp_path_factory, data):
    """Any subset of the files of publications 1 and 2, verified with the trust file from 2: refused, or
    exactly publication 2 (every file of it, each as published)."""
    old, new = pubs.files(1), pubs.files(2)
    # Start from one publication and change a few files: mostly-right folders are the ones that test the
    # check (a folder missing half its files is refused for that alone).
    start = data.draw(st.sampled_from([1, 2]), label="start")
    choice = dict(new if start == 2 else old)
    every = sorted(set(old) | set(new))
    for rel in data.draw(st.lists(st.sampled_from(every), max_size=4, unique=True), label="changed"):
        options = [None] + [files[rel] for files in (old, new) if rel in files]
        source = data.draw(st.sampled_from(options), label=rel)
        if source is None:
            choice.pop(rel, None)
        else:
            choice[rel] = source
    base = tmp_path_factory.mktemp("mix")
    folder = lay_out(base / "m", choice)
    tf = pubs.trust_file(base / "trust.json")
    before = tf.read_bytes()
    try:
        code = verify([folder], VerifyOptions(pubkey=pubs.pub, trust_file=tf)).exit_code()
    except PackagerError as e:
        assert e.exit_code == 2, e
        code = 2
    exactly_new = set(choice) == set(new) and all(
        choice[rel].read_bytes() == new[rel].read_bytes() for rel in new
    )
    assert (code == 0) == exactly_new, (code, {r: str(p.parent.name) for r, p in choice.items()})
    assert tf.read_bytes() == before  # publication 2 was already trusted; nothing older ever replaces it
    shutil.rmtree(base)


# ---- the member index when a shard's own tail is lost ------------------------------------------------------


def _shard_with_members(pubs: Pubs, least: int = 3):
    from packager.container import ShardReader

    for rel, path in pubs.files(2).items():
        if rel.startswith("shards/"):
            with ShardReader(path) as reader:
                frames, records = reader.frames, reader.manifest()
            if len(records) >= least:
                return rel, frames, records
    raise AssertionError("no shard with enough members")


def test_a_lost_tail_names_the_damaged_member_from_the_member_index(pubs, tmp_path):
    rel, frames, records = _shard_with_members(pubs)
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    data = bytearray((folder / rel).read_bytes())
    victim = next(r for r in records[1:] if r.size)
    frame = frames[victim.first_frame]
    data[frame.compressed_offset + frame.compressed_size // 2] ^= 0xFF  # inside a block, not the frame header
    tail = frames[records[-1].last_frame + 1].compressed_offset  # the manifest's frames and the seek table
    data[tail:] = bytes(len(data) - tail)
    (folder / rel).write_bytes(data)
    report = verify([folder / rel], VerifyOptions(deep=True, pubkey=pubs.pub, trust_file=tmp_path / "t.json"))
    r = report.files[0]
    assert report.exit_code() == 1
    assert [(d.id, d.path) for d in r.damaged_members] == [(victim.id, victim.path)], [
        d.reason for d in r.damaged_members
    ]
    assert any("named from the release's member index" in f.message for f in r.findings)
    # A lone copy has no index: no id can be given, at best a path from a tar header.
    lone = tmp_path / "lone" / Path(rel).name
    lone.parent.mkdir()
    lone.write_bytes(data)
    report = verify([lone], VerifyOptions(deep=True))
    assert report.exit_code() == 1 and all(d.id is None for d in report.files[0].damaged_members)


def test_a_truncated_shard_names_every_member_lost_after_the_cut(pubs, tmp_path):
    rel, frames, records = _shard_with_members(pubs)
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    data = (folder / rel).read_bytes()
    cut_member = next(r for r in records[1:] if r.size > 100)
    cut = (
        frames[cut_member.first_frame].compressed_offset + frames[cut_member.first_frame].compressed_size // 2
    )
    (folder / rel).write_bytes(data[:cut])
    lost = [rec.id for rec in records[records.index(cut_member) :]]
    report = verify([folder / rel], VerifyOptions(deep=True, pubkey=pubs.pub, trust_file=tmp_path / "t.json"))
    r = report.files[0]
    assert [d.id for d in r.damaged_members] == lost, [f.message for f in r.findings]
    assert all(d.pieces is not None for d in r.damaged_members)
    assert any("the file ends at byte" in d.reason for d in r.damaged_members[1:])
    # The piece level alone (automatic for a short file) names them too, from the index.
    r = verify([folder / rel], VerifyOptions(pubkey=pubs.pub, trust_file=tmp_path / "t.json")).files[0]
    assert set(lost) <= {i for i, _ in r.members_in_bad_pieces}  # (and any sharing the cut's piece)


def test_a_damaged_frame_header_does_not_shift_the_members_after_it(pubs, tmp_path):
    """A frame scan takes each frame's size from its header; the member index re-anchors the members after
    a header that lies about its size, so only the member in that frame is damaged."""
    from packager.container.scan import frame_header

    rel, frames, records = _shard_with_members(pubs)
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    data = bytearray((folder / rel).read_bytes())
    victim = next(r for r in records[1:] if r.size)
    frame = frames[victim.first_frame]
    header = frame_header(bytes(data[frame.compressed_offset : frame.compressed_offset + 18]))
    fcs_len = 4 if header.content_size >= 65536 + 256 else 2
    data[frame.compressed_offset + header.size - fcs_len] ^= 0x01  # the content size's low byte
    tail = frames[records[-1].last_frame + 1].compressed_offset
    data[tail:] = bytes(len(data) - tail)
    (folder / rel).write_bytes(data)
    r = verify(
        [folder / rel], VerifyOptions(deep=True, pubkey=pubs.pub, trust_file=tmp_path / "t.json")
    ).files[0]
    assert [d.id for d in r.damaged_members] == [victim.id], [d.reason for d in r.damaged_members]


def test_a_manifest_that_never_ends_is_refused_unread(pubs, tmp_path):
    folder = copy_of(pubs, 2, tmp_path / "m")
    (folder / "release.json").unlink()
    os.mkfifo(folder / "release.json")  # a reader that trusted it would block for ever
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"))
    assert r.exit_code == 2 and "release.json" in r.output and "not a regular file" in r.output
    (folder / "release.json").unlink()
    (folder / "release.json").write_bytes(b" " * (10 * 2**20))
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust2.json"))
    assert r.exit_code == 2 and "release.json: listed by no publication" in r.output


@pytest.mark.parametrize("command", [["verify"], ["locate", "t03"], ["fetch", "t03"]])
@pytest.mark.parametrize("key", ["", "  "])
def test_an_empty_pubkey_is_refused_not_read_as_no_key(pubs, tmp_path, command, key):
    """`--pubkey "$KEY"` with KEY unset: verify said 'all good' (exit 0) and locate answered, both without
    authenticating anything; fetch blamed the mirror for a missing signature."""
    name, *ids = command
    args = [name, str(pubs.folders[2]), *ids, "--pubkey", key, "--trust-file", str(tmp_path / "t.json")]
    if name == "fetch":
        args += ["-o", str(tmp_path / "out")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--pubkey" in r.output and "empty" in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["verify"], ["locate", "t03"], ["fetch", "t03"]])
def test_a_wrong_pubkey_names_the_key_given_and_the_key_that_signed(pubs, tmp_path, command):
    """A statement signed by another key said 'does not match its signature (incompatible key
    identifiers)': which key signed it, and which was given, is what the user needs to tell a wrong key file
    from a forged release."""
    other = generate_keypair(tmp_path / "other.key", None)
    name, *ids = command
    args = [name, str(pubs.folders[2]), *ids, "--pubkey", str(other.public)]
    args += ["--trust-file", str(tmp_path / "t.json")]
    args += ["-o", str(tmp_path / "out")] if name == "fetch" else []
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"signed by key {pubs.keys.key_id}, not by the key given ({other.key_id})" in text, text
    assert "Traceback" not in r.output and not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("cut", [False, True])
def test_a_damaged_member_index_pack_is_damage_with_its_bad_pieces(pubs, tmp_path, cut):
    """A flipped byte in members.pack was 'not one publication ... listed by no publication', exit 2: it is
    damage, like a shard's, and the index's own torrent names the pieces to fetch again."""
    rel = layout.MEMBER_INDEX_PACK
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    data = bytearray((folder / rel).read_bytes())
    at = len(data) - 10 if not cut else len(data) - 5
    data[at] ^= 0x01
    (folder / rel).write_bytes(bytes(data[:-3]) if cut else bytes(data))
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"), "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    (pack,) = [f for f in doc["files"] if f["path"] == rel]
    pieces = -(-len(data) // pack["piece_size"])
    assert pack["status"] == "damaged" and pack["bad_pieces"] == [pieces - 1], pack
    assert pack["expected_sha256"] == trust.read_folder_statement(folder, None).statement.files[rel].sha256
    if cut:
        assert pack["size"] == len(data) - 3 and pack["expected_size"] == len(data)
    assert doc["publications"][0]["trust"] == "not updated: the check found problems"
    human = run(pubs, folder, pubs.trust_file(tmp_path / "trust2.json"))
    assert f"piece {pieces - 1} of {pieces}" in " ".join(human.output.split()), human.output


def test_a_damaged_member_index_torrent_is_damage_and_its_pack_still_checked(pubs, tmp_path):
    rel = layout.MEMBER_INDEX_TORRENT
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    (folder / rel).write_bytes((folder / rel).read_bytes()[:-1])
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"), "--json")
    assert r.exit_code == 1, r.output
    files = {f["path"]: f for f in json.loads(r.stdout)["files"]}
    assert files[rel]["status"] == "damaged" and files[rel]["kind"] == "torrent"
    assert layout.MEMBER_INDEX_PACK not in files  # good (against the statement), so not listed


def test_a_flipped_byte_in_the_member_index_root_is_damage_of_that_file(pubs, tmp_path):
    """members/index.json with a byte flipped was 'not one publication ... listed by no publication (edited,
    or foreign)', exit 2, where the same flip in the pack it describes is damage: the same now (exit 1),
    named, to fetch again; a check that needs the index (a shard's manifest lost) says it cannot use it."""
    rel = layout.MEMBER_INDEX
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    data = bytearray((folder / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / rel).write_bytes(data)
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"), "--json")
    assert r.exit_code == 1, r.output
    files = {f["path"]: f for f in json.loads(r.stdout)["files"]}
    listed = trust.read_folder_statement(folder, None).statement.files[rel]
    assert files[rel]["status"] == "damaged" and files[rel]["expected_sha256"] == listed.sha256
    assert [f["path"] for f in files.values() if f["status"] != "ok"] == [rel]
    human = " ".join(run(pubs, folder, pubs.trust_file(tmp_path / "t2.json")).output.split())
    assert f"{rel} " in human and "fetch it again" in human and "listed by no publication" not in human


@pytest.mark.parametrize("rel", [layout.MEMBER_INDEX_PACK, layout.MEMBER_INDEX_TORRENT, layout.MEMBER_INDEX])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_member_index_file_that_is_not_a_file_is_damage(pubs, tmp_path, rel, kind):
    """A directory or FIFO where the statement lists the pack or its torrent: damage to fetch again (exit 1),
    never read (a FIFO would block), never 'listed by no publication' or an errno."""
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    (folder / rel).unlink()
    os.mkfifo(folder / rel) if kind == "fifo" else (folder / rel).mkdir()
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"), "--json")
    assert r.exit_code == 1, r.output
    files = {f["path"]: f for f in json.loads(r.stdout)["files"]}
    assert files[rel]["status"] == "damaged", files[rel]
    assert "not a regular file" in json.dumps(files[rel])


@pytest.mark.parametrize("rel", [layout.RELEASE_JSON, layout.TORRENTS_JSON])
def test_a_manifest_that_is_a_directory_is_refused_by_name(pubs, tmp_path, rel):
    folder = copy_of(pubs, 2, tmp_path / "m", edit=rel)
    (folder / rel).unlink()
    (folder / rel).mkdir()
    r = run(pubs, folder, pubs.trust_file(tmp_path / "trust.json"))
    assert r.exit_code == 2, r.output
    assert "Is a directory" not in r.output and "Traceback" not in r.output, r.output
    if rel == layout.RELEASE_JSON:
        assert "release.json: is not a regular file" in r.output, r.output
