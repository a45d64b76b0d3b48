"""Building shards: the state machine around the container writer, failures, determinism, resume."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager.catalog import IngestOptions, ingest
from packager.cli import app
from packager.container import ShardReader
from packager.errors import CatalogError
from packager.plan import plan
from packager.state import open_state
from packager.workspace import Workspace
from tests.helpers import digests, prepare, rows_for, run_build


def test_build_writes_shards_torrents_and_state(workspace, archive):
    rows = rows_for(archive)
    prepare(workspace, archive, rows)
    report = run_build(workspace)
    assert not report.failed and len(report.built) >= 3
    with open_state(workspace) as state:
        shards = state.shards()
        assert {s.state for s in shards} == {"built"}
        for s in shards:
            f = workspace / "shards" / f"{s.name}.tar.zst"
            extras = state.shard_extras(s.id)
            assert extras["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
            assert extras["length"] == f.stat().st_size
            assert (workspace / extras["torrent"]).exists() and extras["magnet"].startswith("magnet:?")
            with ShardReader(f) as reader:
                got = {r.id: r for r in reader.manifest()}
                assert list(got) == [m.id for m in state.iter_members(s.id)]
                for r in got.values():
                    assert b"".join(reader.iter_member(r)) == (archive.root / r.path).read_bytes()
    assert run_build(workspace).built == []  # nothing left to do; nothing rewritten


def test_each_torrent_names_its_own_file_under_every_web_seed(workspace, archive):
    from packager import layout
    from packager.torrent import read_torrent

    config = workspace / layout.CONFIG
    seeds = 'web_seeds = ["https://a.example/music/shards", "http://b.example/m/"]'
    config.write_text(config.read_text().replace("[torrents]\n", f"[torrents]\n{seeds}\n"))
    prepare(workspace, archive, rows_for(archive, n=4))
    assert not run_build(workspace).failed
    for t in sorted((workspace / "torrents").iterdir()):
        name = t.name.removesuffix(".torrent")
        info = read_torrent(t)
        assert info.web_seeds == (f"https://a.example/music/shards/{name}", f"http://b.example/m/{name}")


def test_changed_input_fails_only_its_shard(workspace, archive):
    rows = rows_for(archive, size=(30_000, 40_000))
    prepare(workspace, archive, rows)
    victim = rows[0]
    (archive.root / victim["path"]).write_bytes(b"shorter")
    report = run_build(workspace, jobs=2)
    assert len(report.failed) == 1
    name, reason = report.failed[0]
    assert victim["path"] in reason and "7" in reason and str(victim["size"]) in reason
    assert report.built, "the other shards still finish"
    assert not list((workspace / "shards").glob("*.part"))
    assert not (workspace / "shards" / f"{name}.tar.zst").exists()
    r = CliRunner().invoke(app, ["status", str(workspace), "--json"])
    states = {s["name"]: s["state"] for s in json.loads(r.output)["shards"]}
    assert states[name] == "failed"
    # Put the file back: the next build retries the failed shard only.
    archive.add(victim["path"], b"\0" * victim["size"])
    again = run_build(workspace)
    assert again.built == [name] and again.failed == []


def test_same_catalog_gives_identical_bytes_with_any_jobs_and_row_order(make_workspace, archive):
    rows = rows_for(archive, n=18)
    results = []
    for n, jobs in enumerate((1, 2)):
        ws = make_workspace(f"ws{n}")
        shuffled = rows[:]
        random.Random(n).shuffle(shuffled)
        prepare(ws, archive, shuffled, name=f"c{n}.jsonl")
        assert not run_build(ws, jobs=jobs).failed
        results.append(digests(ws))
    assert results[0] == results[1]
    assert any(k.endswith(".torrent") for k in results[0])


def test_interrupted_rename_is_completed(workspace, archive):
    prepare(workspace, archive, rows_for(archive))
    run_build(workspace)
    shard = sorted((workspace / "shards").iterdir())[0]
    before = shard.read_bytes()
    shard.rename(shard.with_name(shard.name + ".part"))
    report = run_build(workspace)
    assert report.recovered == [shard.name] and report.built == []
    assert shard.read_bytes() == before


def test_missing_built_shard_is_rebuilt_identically(workspace, archive):
    prepare(workspace, archive, rows_for(archive))
    run_build(workspace)
    shard = sorted((workspace / "shards").iterdir())[0]
    before = shard.read_bytes()
    shard.unlink()
    assert run_build(workspace).built == [shard.name.removesuffix(".tar.zst")]
    assert shard.read_bytes() == before


def test_build_cli_exit_codes(workspace, archive):
    rows = rows_for(archive)
    prepare(workspace, archive, rows)
    (archive.root / rows[0]["path"]).unlink()
    r = CliRunner().invoke(app, ["build", str(workspace), "--jobs", "1"])
    assert r.exit_code == 2 and rows[0]["path"] in r.output and "failed" in r.output
    r = CliRunner().invoke(app, ["build", str(workspace), "--phase", "nope"])
    assert r.exit_code == 2 and "no phase named 'nope'" in r.output


@pytest.mark.slow
def test_kill_at_any_moment_then_resume_gives_identical_bytes(make_workspace, archive):
    """kill -9 a build subprocess at several points while it writes; the resumed build matches a clean one."""
    rng = random.Random(11)
    rows = []
    for i in range(24):
        body = rng.randbytes(1_500_000)
        archive.add(f"audio/big{i}.ogg", body)
        rows.append(
            {
                "id": f"b{i:02d}",
                "path": f"audio/big{i}.ogg",
                "kind": "audio",
                "popularity": 40 + i % 3,
                "size": len(body),
            }
        )
    reference = make_workspace("reference", audio_shard="5MB")
    prepare(reference, archive, rows)
    run_build(reference)
    expected = digests(reference)
    assert len(expected) == 16  # eight shards of three files, and their torrents

    ws = make_workspace("killed", audio_shard="5MB")
    prepare(ws, archive, rows)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    kills = 0
    for threshold in (1, 2_000_000, 4_000_000, 1_000_000, 3_000_000):
        proc = subprocess.Popen(
            [sys.executable, "-m", "packager.cli", "build", str(ws), "--jobs", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            parts = list((ws / "shards").glob("*.part")) if (ws / "shards").exists() else []
            if any(p.exists() and p.stat().st_size >= threshold for p in parts):
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        proc.wait(timeout=30)
    assert kills >= 3, "the build finished before it could be killed; make the data bigger"
    run_build(ws)
    assert digests(ws) == expected
    leftovers = [
        p
        for d in ("shards", "torrents")
        for p in (ws / d).iterdir()
        if p.name.endswith(".part") or p.name.startswith(".")
    ]
    assert leftovers == []


@pytest.mark.parametrize("fmt", ["v1", "hybrid", "v2"])
def test_built_torrents_match_libtorrent_hashing_the_shards_itself(make_workspace, archive, fmt):
    """The .torrent made from one-pass hashes equals what libtorrent makes by reading each finished shard."""
    from tests.helpers import info_section, libtorrent_torrent

    ws = make_workspace(f"ws-{fmt}")
    cfg = ws / "release.toml"
    cfg.write_text(cfg.read_text().replace('frame_size = "64KiB"', f'frame_size = "64KiB"\nformat = "{fmt}"'))
    prepare(ws, archive, rows_for(archive, n=15))
    assert not run_build(ws).failed
    with open_state(ws) as state:
        for s in state.shards():
            shard = ws / "shards" / f"{s.name}.tar.zst"
            torrent = ws / "torrents" / f"{s.name}.tar.zst.torrent"
            piece_size = state.build_hashes(s.id).piece_size
            ours = info_section(torrent.read_bytes())
            theirs = info_section(libtorrent_torrent(shard, piece_size, fmt))
            assert ours == theirs, s.name


def test_a_second_build_in_the_same_workspace_is_refused(workspace, archive):
    from packager.errors import EnvironmentProblem
    from packager.fsutil import workspace_lock

    prepare(workspace, archive, rows_for(archive))
    with (
        workspace_lock(workspace, "build"),
        pytest.raises(EnvironmentProblem, match="another packager build"),
    ):
        run_build(workspace)
    assert not (workspace / "shards").exists() or not list((workspace / "shards").iterdir())
    assert run_build(workspace).built


def test_a_failed_shard_is_fixed_by_reingesting_the_corrected_row(workspace, archive):
    """A file that changed after planning fails its shard; ingesting its new size lets the shard build.
    Once built, the same change is refused (the shard's bytes are final)."""
    rows = rows_for(archive, n=6, size=(30_000, 40_000))
    prepare(workspace, archive, rows)
    victim = rows[0]
    archive.add(victim["path"], b"grown" * 10_000)
    failed = run_build(workspace)
    assert len(failed.failed) == 1
    fixed = [dict(r, size=50_000) if r is victim else r for r in rows]
    with Workspace.open(workspace) as w:
        report = ingest(w, [archive.jsonl(fixed, "fixed.jsonl")], IngestOptions())
    assert report.changed == 1
    again = run_build(workspace)
    assert again.built == [failed.failed[0][0]] and not again.failed
    archive.add(victim["path"], b"shrunk")
    refused = [dict(r, size=6) if r is victim else r for r in rows]
    with Workspace.open(workspace) as w, pytest.raises(CatalogError, match="cannot change"):
        ingest(w, [archive.jsonl(refused, "refused.jsonl")], IngestOptions())


def test_remove_items_before_and_after_their_shard_is_built(workspace, archive):
    from packager.errors import UsageError
    from packager.plan import remove_items

    rows = rows_for(archive, n=9, size=(10_000, 20_000))
    prepare(workspace, archive, rows)
    with Workspace.open(workspace) as w:
        state = w.state
        shard = state.shards(phase="audio")[0]
        members = [m.id for m in state.iter_members(shard.id)]
        assert len(members) >= 3
        gone = members[1]  # a gap in the middle of the plan's order
        (archive.root / next(r["path"] for r in rows if r["id"] == gone)).unlink()  # the file vanished too
        with pytest.raises(UsageError, match="unknown"):
            remove_items(w, [gone, "no-such-id"])
        assert [r.outcome.split()[0] for r in remove_items(w, [gone])] == ["dropped"]
    assert not run_build(workspace).failed
    with Workspace.open(workspace) as w:
        state = w.state
        with ShardReader(workspace / "shards" / f"{shard.name}.tar.zst") as reader:
            written = [r.id for r in reader.manifest()]
        assert written == [m for m in members if m != gone]
        recorded = state.db.execute(
            "SELECT i.id, mb.sha256 FROM member_builds mb JOIN members m ON m.shard_id = mb.shard_id "
            "AND m.ord = mb.ord JOIN items i ON i.rowid = m.item_rowid WHERE mb.shard_id = ? ORDER BY mb.ord",
            (shard.id,),
        ).fetchall()
        assert [i for i, _ in recorded] == written
        stays = written[0]
        assert remove_items(w, [stays])[0].outcome.startswith("stays in")
        assert remove_items(w, [stays])[0].outcome == "already removed"
        assert [m.id for m in state.iter_members(shard.id)] == written  # a built shard never changes


def test_a_full_disk_stops_the_build_without_failing_shards(workspace, archive, monkeypatch):
    import errno

    import packager.build.local
    from packager.errors import EnvironmentProblem

    prepare(workspace, archive, rows_for(archive))

    def full(job, on_progress=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(job.part_path))

    monkeypatch.setattr(packager.build.local, "write_one", full)  # the inline executor's shard build
    with pytest.raises(EnvironmentProblem, match="No space left"):
        run_build(workspace)
    with open_state(workspace) as state:
        assert {s.state for s in state.shards()} == {"planned"}


def test_build_with_unplanned_items_says_to_run_plan(workspace, archive):
    rows = rows_for(archive, n=6)
    with Workspace.open(workspace) as w:
        ingest(w, [archive.jsonl(rows)], IngestOptions())
    r = CliRunner().invoke(app, ["build", str(workspace)])
    assert r.exit_code == 2 and "not planned into shards yet" in r.output and "packager plan" in r.output
    with Workspace.open(workspace) as w:
        plan(w)
    assert CliRunner().invoke(app, ["build", str(workspace)]).exit_code == 0
    more = []
    for i in range(3):
        size = archive.add(f"later/{i}.ogg", 1000 + i)
        more.append(
            {"id": f"later{i}", "path": f"later/{i}.ogg", "kind": "audio", "popularity": 7, "size": size}
        )
    with Workspace.open(workspace) as w:
        ingest(w, [archive.jsonl(rows + more, "c2.jsonl")], IngestOptions())
    r = CliRunner().invoke(app, ["build", str(workspace), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["unplanned"]["items"] == 3
    r = CliRunner().invoke(app, ["build", str(workspace)])
    assert r.exit_code == 0 and "3 ingested items" in r.output and f"packager plan {workspace}" in r.output


def test_a_shard_lost_after_new_listening_figures_is_rebuilt_byte_identical(workspace, archive):
    """New popularity for built items is recorded, and a lost shard is rebuilt from the popularity it was
    planned with: the same bytes as published (its manifest records popularity)."""
    rows = rows_for(archive, n=6, size=(1000, 5000))
    prepare(workspace, archive, rows)
    assert run_build(workspace).built
    shards = sorted((workspace / "shards").glob("*.tar.zst"))
    first = {p.name: p.read_bytes() for p in shards}
    refreshed = [dict(r, popularity=r["popularity"] + 3) for r in rows]
    with Workspace.open(workspace) as w:
        assert ingest(w, [archive.jsonl(refreshed, "refresh.jsonl")], IngestOptions()).changed == len(rows)
    for p in shards:
        p.unlink()
    assert run_build(workspace).built
    assert {p.name: p.read_bytes() for p in sorted((workspace / "shards").glob("*.tar.zst"))} == first


def test_a_negative_jobs_count_is_refused_with_the_default_build_help_gives(workspace):
    """The error said '0 (one per core)' while --help (and the pool) say 0 is one per two cores."""
    from packager.errors import UsageError

    with pytest.raises(UsageError) as e:
        run_build(workspace, jobs=-1)
    assert "0 (one per two cores)" in str(e.value)


@pytest.mark.parametrize("where", ["torrent", "shard"])
def test_a_directory_at_a_shards_final_name_or_its_torrents_is_refused_before_the_work(
    workspace, archive, where
):
    """A directory at torrents/<name>.torrent made the build fail after the work (exit 3, 'Is a directory'),
    the shard just built deleted and left 'planned'; one at shards/<name> failed with the hint meant for
    changed catalog files. Now that shard is refused before it is written, with what to do (exit 2), the
    directory and what is in it stay, the other shards are built, and once it is moved the build is whole."""
    from packager import layout

    prepare(workspace, archive, rows_for(archive, n=6))
    with open_state(workspace) as state:
        shards = state.shards()
    name = shards[0].name
    rel = layout.torrent_file(name) if where == "torrent" else layout.shard_file(name)
    target = workspace / rel
    (target / "keep").mkdir(parents=True)
    r = CliRunner().invoke(app, ["build", str(workspace), "--jobs", "1"])
    said = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert f"{target.name} in {target.parent} is a directory, where the build keeps a file of its own" in said
    assert "move it away" in said and "restore those files" not in said and "Traceback" not in said
    assert (target / "keep").is_dir()
    with open_state(workspace) as state:
        states = {s.name: s.state for s in state.shards()}
    assert states[name] == "failed" and all(s == "built" for n, s in states.items() if n != name)
    assert not list((workspace / "shards").glob("*.part*"))
    (target / "keep").rmdir()
    target.rmdir()
    report = run_build(workspace)
    assert report.built == [name] and not report.failed
    assert (workspace / layout.shard_file(name)).is_file() and (
        workspace / layout.torrent_file(name)
    ).is_file()
