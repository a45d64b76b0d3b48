"""Resuming a shard inside itself: an interrupted build continues from its last checkpoint with the bytes of
an uninterrupted one, and a damaged or hostile checkpoint or .part is refused, the shard rebuilt from 0."""

from __future__ import annotations

import base64
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
from hypothesis import given
from hypothesis import strategies as st

from packager import layout
from packager.build import BytesDone, build
from packager.catalog import IngestOptions, ingest
from packager.container import MemberSource, resume, write_shard
from packager.container.resume import Checkpoints
from packager.container.writer import ResumeMismatch
from packager.hashing import FileDigest, PieceMismatch, ShardHasher
from packager.plan import plan
from packager.torrent import read_torrent
from packager.workspace import Workspace

CHECKPOINT_EVERY = 2**20


@pytest.fixture(autouse=True)
def frequent_checkpoints(monkeypatch):
    monkeypatch.setattr(resume, "CHECKPOINT_EVERY_BYTES", CHECKPOINT_EVERY)


def rows(archive, n=14, seed=5) -> list[dict]:
    """Members of 0.3-3 MB (several frames of 64 KiB each), random bytes: one shard of ~20 MB."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.choice([300_000, 1_500_000, 3_000_000]) + rng.randrange(512)
        path = f"audio/{i % 3}/x{i:02d}.ogg"
        archive.add(path, rng.randbytes(size))
        out.append({"id": f"x{i:02d}", "path": path, "kind": "audio", "popularity": 40, "size": size})
    return out


def workspace_for(make_workspace, archive, name: str, fmt: str = "v1") -> Path:
    ws = make_workspace(name, audio_shard="200MB")
    if fmt != "v1":
        config = ws / layout.CONFIG
        text = config.read_text().replace('name = "audio"\n', f'name = "audio"\nformat = "{fmt}"\n')
        config.write_text(text)
    with Workspace.open(ws) as w:
        ingest(w, [archive.jsonl(rows(archive), f"{name}.jsonl")], IngestOptions())
        plan(w)
    return ws


def run_build(ws: Path, **kw):
    with Workspace.open(ws) as w:
        return build(w, jobs_count=1, **kw)


def files(ws: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for d in ("shards", "torrents")
        for p in sorted((ws / d).iterdir())
    }


def leftovers(ws: Path) -> list[str]:
    return sorted(
        p.name
        for d in ("shards", "torrents")
        for p in (ws / d).iterdir()
        if p.name.endswith((".part", ".checkpoint", ".seal", ".tmp")) or p.name.startswith(".")
    )


def _saved_offset(ws: Path) -> int:
    """The offset of the checkpoint in `ws` (0 if there is none yet)."""
    try:
        return _checkpoint_offset(next((ws / "shards").glob("*.checkpoint")))
    except (StopIteration, OSError, ValueError):
        return 0


def interrupt(ws: Path, after: int, kept: int | None = None) -> None:
    """Build until `after` input bytes are compressed and a checkpoint of at least `kept` bytes (`after` / 2)
    is saved, then interrupt (as Ctrl-C). The build is held there until the checkpoint comes: on a loaded
    machine the checkpoints lag the progress, and a stop at the first one found kept a prefix so short
    that the member in progress reached back to the frame a test damaged (so it was found by another
    check than the one that test is about)."""
    read = [0]
    kept = after // 2 if kept is None else kept

    def on_event(event):
        if isinstance(event, BytesDone):
            read[0] += event.n
            time.sleep(0.01)  # let the writer keep up, so that checkpoints are saved before the stop
            if read[0] >= after:
                # The stages behind this (the calling) thread write and checkpoint what it handed them.
                deadline = time.monotonic() + 30
                while _saved_offset(ws) < kept and time.monotonic() < deadline:
                    time.sleep(0.005)
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_build(ws, on_event=on_event)
    assert list((ws / "shards").glob("*.part")) and list((ws / "shards").glob("*.part.checkpoint"))


@pytest.fixture
def reference(make_workspace, archive) -> dict[str, str]:
    ws = workspace_for(make_workspace, archive, "reference")
    assert not run_build(ws).failed
    return files(ws)


@pytest.mark.parametrize("fmt", ["v1", "hybrid"])
def test_an_interrupted_shard_resumes_with_the_bytes_of_an_uninterrupted_build(make_workspace, archive, fmt):
    clean = workspace_for(make_workspace, archive, "clean", fmt)
    run_build(clean)
    ws = workspace_for(make_workspace, archive, "interrupted", fmt)
    interrupt(ws, after=12_000_000)
    report = run_build(ws)
    assert report.built and report.restarted == []
    [resumed] = report.resumed
    assert resumed.from_byte >= CHECKPOINT_EVERY, "it resumed from a checkpoint, not from byte 0"
    assert files(ws) == files(clean)
    assert leftovers(ws) == []


def kill_9(ws: Path, at: int) -> Path:
    """A build process killed with SIGKILL while it writes one big shard, once its .part has `at` bytes
    and a checkpoint; the .part."""
    driver = (
        "import sys, time\n"
        "from packager.container import resume\n"
        f"resume.CHECKPOINT_EVERY_BYTES = {CHECKPOINT_EVERY}\n"
        "from packager.build import build, BytesDone\n"
        "from packager.workspace import Workspace\n"
        "slow = lambda e: time.sleep(0.01) if isinstance(e, BytesDone) else None\n"
        "with Workspace.open(sys.argv[1]) as w:\n"
        "    build(w, jobs_count=1, on_event=slow)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    part = ws / "shards" / "t-audio-t2-00001.tar.zst.part"
    checkpoint = part.with_name(layout.checkpoint_name(part.name))
    proc = subprocess.Popen([sys.executable, "-c", driver, str(ws)], env=env)
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if part.exists() and part.stat().st_size >= at and checkpoint.exists():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed; more data"
    return part


@pytest.mark.slow
def test_kill_9_mid_shard_at_several_points_then_resume(make_workspace, archive, reference):
    """A build process killed with SIGKILL while it writes one big shard, three times; each restart goes on
    from the last checkpoint, and the shard comes out byte for byte as an uninterrupted build's."""
    ws = workspace_for(make_workspace, archive, "killed")
    for threshold in (5_000_000, 10_000_000, 15_000_000):
        kill_9(ws, threshold)
    report = run_build(ws)
    [resumed] = report.resumed
    assert resumed.from_byte >= 10_000_000 - 4 * CHECKPOINT_EVERY - 64 * 2**20 // 4
    assert files(ws) == reference
    assert leftovers(ws) == []


# --- damaged and hostile checkpoints and .part files -------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _rewrite_checkpoint(path: Path, change) -> None:
    """Edit the checkpoint's JSON and seal it again with a valid trailer: what a hostile file could be."""
    body = path.read_bytes()[:-32]
    magic, doc = body.split(b"\n", 1)
    doc = json.loads(doc)
    change(doc)
    body = magic + b"\n" + json.dumps(doc).encode()
    path.write_bytes(body + hashlib.sha256(body).digest())


def _bad_sha_state(doc: dict) -> None:
    state = bytearray(base64.b64decode(doc["sink_states"][0]))
    state[104] = 200  # the pending-block fill, an index into a 64-byte array inside OpenSSL
    doc["sink_states"][0] = base64.b64encode(bytes(state)).decode()


def _first_frame_size(cp: Path) -> int:
    body = cp.read_bytes()[:-32]
    entries = base64.b64decode(json.loads(body.split(b"\n", 1)[1])["entries"])
    return int.from_bytes(entries[:4], "little")


def _checkpoint_offset(cp: Path) -> int:
    return json.loads(cp.read_bytes()[:-32].split(b"\n", 1)[1])["offset"]


TAMPER = {
    "checkpoint with a flipped byte": lambda part, cp: _flip(cp, len(cp.read_bytes()) // 2),
    "checkpoint cut short": lambda part, cp: cp.write_bytes(cp.read_bytes()[:100]),
    "checkpoint with a hostile SHA-256 state": lambda part, cp: _rewrite_checkpoint(cp, _bad_sha_state),
    "checkpoint for more frames than written": lambda part, cp: _rewrite_checkpoint(
        cp, lambda d: d.update(offset=d["offset"] + 1)
    ),
    "checkpoint is a symlink": lambda part, cp: (cp.unlink(), cp.symlink_to("/dev/zero")),
    "checkpoint is a dangling symlink": lambda part, cp: (cp.unlink(), cp.symlink_to(cp.parent / "gone")),
    "checkpoint is a symlink loop": lambda part, cp: (cp.unlink(), cp.symlink_to(cp.name)),
    "part shorter than the checkpoint": lambda part, cp: os.truncate(part, _checkpoint_offset(cp) - 1),
    "part with a frame checksum changed": lambda part, cp: _flip(part, _first_frame_size(cp) - 1),
    "part changed inside the last frame": lambda part, cp: _flip(part, _checkpoint_offset(cp) - 3000),
    "part of random bytes": lambda part, cp: part.write_bytes(os.urandom(part.stat().st_size)),
    "part is a FIFO": lambda part, cp: (part.unlink(), os.mkfifo(part)),
    "part is a symlink": lambda part, cp: (
        part.rename(part.parent.parent / "moved"),
        part.symlink_to("../moved"),
    ),
}
# What the "rebuilt from byte 0" line says: a symlink was "[Errno 40] Too many levels of symbolic links",
# and a dangling or looping one was no line at all (exists() is False for both).
WHY = {
    "checkpoint is a symlink": "is not a regular file (a symlink)",
    "checkpoint is a dangling symlink": "is not a regular file (a symlink)",
    "checkpoint is a symlink loop": "is not a regular file (a symlink)",
    "part is a FIFO": "is not a regular file",
    "part is a symlink": "is not a regular file (a symlink)",
}


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_a_damaged_or_hostile_checkpoint_or_part_is_refused(make_workspace, archive, reference, tamper):
    ws = workspace_for(make_workspace, archive, "tampered")
    interrupt(ws, after=12_000_000)
    part = next((ws / "shards").glob("*.part"))
    TAMPER[tamper](part, part.with_name(layout.checkpoint_name(part.name)))
    report = run_build(ws)
    assert report.resumed == [] and len(report.restarted) == 1, report.as_dict()
    assert WHY.get(tamper, "") in report.restarted[0][1]
    assert files(ws) == reference
    assert leftovers(ws) == []


def test_a_checkpoint_of_other_settings_is_refused(make_workspace, archive):
    ws = workspace_for(make_workspace, archive, "changed")
    interrupt(ws, after=12_000_000)
    config = ws / layout.CONFIG
    config.write_text(config.read_text().replace("level = -1", "level = 1"))
    report = run_build(ws)
    assert report.resumed == [] and "another build" in report.restarted[0][1]
    clean = workspace_for(make_workspace, archive, "clean")
    (clean / layout.CONFIG).write_text(config.read_text())
    run_build(clean)
    assert files(ws) == files(clean)


# --- the writer and the hashers on their own --------------------------------------------------------------


def test_resuming_with_other_members_is_refused(tmp_path: Path) -> None:
    sources = []
    for i in range(4):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(random.Random(i).randbytes(600_000))
        sources.append(MemberSource(f"m{i}", f"a/{i}", "audio", 1.0, 600_000, f, 0))
    saved = []
    hasher = ShardHasher(2**16)
    cps = Checkpoints(save=saved.append, snapshots=hasher.snapshots, every_bytes=2**18)
    part = tmp_path / "s.part"
    with open(part, "wb") as out:
        write_shard(
            out, sources, level=1, frame_size=2**16, manifest_mtime=0, sinks=hasher.sinks, checkpoints=cps
        )
    cp = saved[len(saved) // 2]
    fd = os.open(part, os.O_RDONLY)
    try:
        point = resume.check_part(fd, cp, 2**16)
    finally:
        os.close(fd)
    renamed = [sources[0].__class__(**{**s.__dict__, "path": s.path + "x"}) for s in sources]
    restored = ShardHasher.resumed(2**16, False, cp.offset, cp.sink_states)
    with open(part, "r+b") as out, pytest.raises(ResumeMismatch):
        write_shard(
            out, renamed, level=1, frame_size=2**16, manifest_mtime=0, sinks=restored.sinks, resume=point
        )


@given(st.binary(min_size=0, max_size=200_000), st.data())
def test_a_hasher_resumed_from_its_snapshots_gives_the_same_hashes(data: bytes, draw) -> None:
    piece = draw.draw(st.sampled_from([2**14, 2**15, 2**17]))
    v2 = draw.draw(st.booleans())
    cut = draw.draw(st.integers(0, len(data)))
    whole = ShardHasher(piece, v2)
    whole.update(data)
    first = ShardHasher(piece, v2)
    first.update(data[:cut])
    states = tuple(snap() for snap in first.snapshots)
    second = ShardHasher.resumed(piece, v2, cut, states)
    for sink in second.piece_sinks:
        sink(memoryview(data[second.piece_start(cut) : cut]))
    second.update(data[cut:])
    assert second.finish() == whole.finish()
    check = ShardHasher.prefix_check(piece, cut, states)  # the kept prefix, checked in two reads
    check.update(memoryview(data[: cut // 3]))
    check.update(memoryview(data[cut // 3 : cut]))
    check.finish()
    if cut:
        damaged = draw.draw(st.integers(0, cut - 1))
        bad = bytearray(data[:cut])
        bad[damaged] ^= 1
        check = ShardHasher.prefix_check(piece, cut, states)
        with pytest.raises(PieceMismatch) as e:
            check.update(memoryview(bytes(bad)))
            check.finish()
        assert e.value.index == damaged // piece


def test_a_sha256_state_that_does_not_fit_its_length_is_refused() -> None:
    digest = FileDigest()
    digest.update(memoryview(b"x" * 100))
    state = digest.state()
    assert state is not None
    FileDigest(state, 100)  # fits
    for length in (99, 101, 2**40):
        with pytest.raises(ValueError, match="does not describe"):
            FileDigest(state, length)
    with pytest.raises(ValueError):
        FileDigest(state[:-1], 100)


def test_a_huge_checkpoint_is_refused_by_its_bound_not_a_made_up_size():
    """A 5 GB checkpoint was refused as '67108865 bytes' (what was read: the bound plus one)."""
    with pytest.raises(resume.CheckpointRejected) as e:
        resume.decode_checkpoint(b"\0" * (resume.MAX_CHECKPOINT_BYTES + 1), "job")
    assert f"more than {resume.MAX_CHECKPOINT_BYTES:,} bytes" in str(e.value)


# --- the kept prefix against the checkpoint's hashes ------------------------------------------------------


def _frame_middle(cp: Path, index: int) -> int:
    """A byte in the middle of frame `index`: no boundary check (magic, header, checksum) reaches it, nor
    the decompression of the member in progress (asserted: it is a frame of a member already finished)."""
    doc = json.loads(cp.read_bytes()[:-32].split(b"\n", 1)[1])
    entries = base64.b64decode(doc["entries"])
    sizes = [int.from_bytes(entries[i : i + 4], "little") for i in range(0, len(entries), 12)]
    decompressed = len(sizes) - doc["run_done"] // 2**16 if doc["run_done"] else len(sizes) - 1  # 64 KiB
    assert index < decompressed, "the checkpoint should be past the member of that frame"
    return sum(sizes[:index]) + sizes[index] // 2


@pytest.mark.parametrize("mtime", ["changed", "restored"])
def test_a_part_damaged_before_its_checkpoint_is_rebuilt_and_matches_its_torrent(
    make_workspace, archive, reference, mtime
):
    """A byte of a finished frame changed while the build was down (the boundaries and the member in
    progress intact): the .part's seal no longer matches (its ctime, even with the mtime put back), so the
    kept prefix is hashed again against the checkpoint's pieces, and the shard is rebuilt from byte 0
    instead of being recorded with bytes its torrent does not describe."""
    from typer.testing import CliRunner

    from packager.cli import app

    ws = workspace_for(make_workspace, archive, "damaged-prefix")
    interrupt(ws, after=12_000_000)
    part = next((ws / "shards").glob("*.part"))
    damaged = _frame_middle(part.with_name(layout.checkpoint_name(part.name)), 3)
    before = part.stat()
    _flip(part, damaged)
    if mtime == "restored":
        os.utime(part, ns=(before.st_atime_ns, before.st_mtime_ns))
    runner = CliRunner()
    result = runner.invoke(app, ["build", str(ws)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    piece = read_torrent(next((ws / "torrents").iterdir())).piece_size
    lines = [line for line in result.output.splitlines() if "rebuilt from byte 0" in line]
    assert len(lines) == 1 and "resumed" not in result.output, result.output
    assert f"piece {damaged // piece} (bytes" in lines[0], lines[0]
    assert files(ws) == reference
    assert leftovers(ws) == []
    checked = runner.invoke(app, ["verify", str(ws), "--pieces"], catch_exceptions=False)
    assert checked.exit_code == 0, checked.output


@pytest.mark.parametrize("which", ["checkpoint", "part"])
def test_a_directory_where_the_part_or_its_checkpoint_goes_is_refused_and_kept(
    make_workspace, archive, which
):
    """It was exit 3 (IsADirectoryError, from deleting it): now that shard fails with a message saying what
    to do, the directory and what is in it stay, and the next build, once it is moved, is whole."""
    from typer.testing import CliRunner

    from packager.cli import app

    ws = workspace_for(make_workspace, archive, f"dir-{which}")
    interrupt(ws, after=12_000_000)
    part = next((ws / "shards").glob("*.part"))
    target = part.with_name(layout.checkpoint_name(part.name)) if which == "checkpoint" else part
    target.unlink()
    (target / "keep").mkdir(parents=True)
    result = CliRunner().invoke(app, ["build", str(ws)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert f"{target.name} in {target.parent} is a directory" in " ".join(result.output.split())
    assert "move it away" in result.output and "Traceback" not in result.output
    assert (target / "keep").is_dir()
    (target / "keep").rmdir()
    target.rmdir()
    report = run_build(ws)
    assert report.built and not report.failed
    assert leftovers(ws) == []
