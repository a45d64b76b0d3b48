"""The seal of a shard's .part (container/resume.py): a restart whose .part nothing touched since the build
stopped goes on without reading the kept bytes again; a touch, an edit, a copy put in its place, or a seal
that is missing, damaged or not a regular file, and they are read again and checked. The same bytes come
out either way."""

from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.build import shard as build_shard
from packager.cli import app
from packager.container import resume
from packager.container.resume import (
    FLIGHT_NS,
    SEAL_BYTES,
    UNCHANGED,
    UNCHANGED_BUT_LAST_WRITE,
    PartSeal,
    encode_seal,
    read_seal,
    seal_verdict,
)
from tests.test_build_resume import (
    CHECKPOINT_EVERY,
    _checkpoint_offset,
    _flip,
    _frame_middle,
    files,
    interrupt,
    leftovers,
    run_build,
    workspace_for,
)
from tests.test_build_resume import (
    kill_9 as kill_9_build,
)


@pytest.fixture(autouse=True)
def frequent_checkpoints(monkeypatch):
    monkeypatch.setattr(resume, "CHECKPOINT_EVERY_BYTES", CHECKPOINT_EVERY)


@pytest.fixture
def reference(make_workspace, archive) -> dict[str, str]:
    ws = workspace_for(make_workspace, archive, "reference")
    assert not run_build(ws).failed
    return files(ws)


class PartReads:
    """Bytes this process reads from a shard's .part (os.pread and os.preadv, on any thread), and how many
    times the kept prefix's full check (PrefixCheck) starts."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        self.checks = 0
        lock = threading.Lock()
        real_pread, real_preadv = os.pread, os.preadv

        def count(fd: int, n: int) -> None:
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return
            if name.endswith(layout.PART_SUFFIX):
                with lock:
                    self.bytes += n

        def pread(fd, n, offset):
            data = real_pread(fd, n, offset)
            count(fd, len(data))
            return data

        def preadv(fd, buffers, offset, *flags):
            n = real_preadv(fd, buffers, offset, *flags)
            count(fd, n)
            return n

        reads = self

        class CountedCheck(resume.PrefixCheck):
            def __init__(self, *args, **kw):
                reads.checks += 1
                super().__init__(*args, **kw)

        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(os, "preadv", preadv)
        monkeypatch.setattr(build_shard, "PrefixCheck", CountedCheck)


def kill_9(ws: Path, at: int = 12_000_000) -> Path:
    """test_build_resume's kill -9 of a build, once its .part has `at` bytes and a checkpoint, which
    leaves a seal; the .part."""
    part = kill_9_build(ws, at)
    assert part.with_name(layout.seal_name(part.name)).exists()
    return part


def stop_after_checkpoint(monkeypatch, beyond: int) -> None:
    """The build stops (KeyboardInterrupt, as from Ctrl-C) right after it saves a checkpoint past byte
    `beyond`: raised on the stage thread that saves it, and raised again by the writer's calling thread.
    A stop at a byte, whatever the load: a stop from the progress callback could come after the last
    checkpoint (the writer compresses up to 24 MiB ahead of what it has written)."""
    real = build_shard.write_atomic

    def save(path: Path, data: bytes) -> None:
        real(path, data)
        offset = json.loads(data[:-32].split(b"\n", 1)[1])["offset"] if path.suffix == ".checkpoint" else 0
        if offset > beyond:
            raise KeyboardInterrupt

    monkeypatch.setattr(build_shard, "write_atomic", save)


def seal_of(part: Path) -> Path:
    return part.with_name(layout.seal_name(part.name))


def test_a_part_untouched_since_a_kill_9_resumes_without_reading_its_kept_bytes_again(
    make_workspace, archive, reference, monkeypatch
):
    ws = workspace_for(make_workspace, archive, "killed")
    part = kill_9(ws)
    kept = _checkpoint_offset(part.with_name(layout.checkpoint_name(part.name)))
    reads = PartReads(monkeypatch)
    result = CliRunner().invoke(app, ["build", str(ws)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = f"from byte {kept:,} (the kept "
    assert line in result.output and "unchanged since the build stopped" in result.output, result.output
    assert ": not read again)" in result.output, result.output
    assert reads.checks == 0
    # What is read: each frame's first and last bytes, the member in progress, the unfinished piece.
    assert 0 < reads.bytes < kept / 2, (reads.bytes, kept)
    assert files(ws) == reference
    assert leftovers(ws) == []


def test_a_touch_alone_has_the_kept_bytes_read_again_and_the_shard_resumes(
    make_workspace, archive, reference, monkeypatch
):
    ws = workspace_for(make_workspace, archive, "touched")
    part = kill_9(ws)
    kept = _checkpoint_offset(part.with_name(layout.checkpoint_name(part.name)))
    time.sleep(3 * FLIGHT_NS / 1e9)  # a touch long after the write the build was killed in
    os.utime(part)
    reads = PartReads(monkeypatch)
    result = CliRunner().invoke(app, ["build", str(ws), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [resumed] = json.loads(result.output)["resumed"]
    # The size too if the kill came while a write was in flight (the seal was taken as it began).
    assert resumed.pop("kept") in [
        "changed since the build stopped (its mtime, ctime)",
        "changed since the build stopped (its size, mtime, ctime)",
    ]
    assert resumed == {
        "shard": part.name.removesuffix(".tar.zst.part"),
        "from_byte": kept,
        "kept_read_again": True,
    }
    assert reads.checks == 1 and reads.bytes >= kept
    assert files(ws) == reference
    assert leftovers(ws) == []


def test_check_kept_reads_them_again_though_the_seal_holds(make_workspace, archive, reference, monkeypatch):
    ws = workspace_for(make_workspace, archive, "doubted")
    interrupt(ws, after=12_000_000)
    reads = PartReads(monkeypatch)
    result = CliRunner().invoke(app, ["build", str(ws), "--check-kept"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(the kept " in result.output and "(--check-kept): read again and checked)" in result.output
    assert reads.checks == 1
    assert files(ws) == reference


def _replace_by_copy(part: Path) -> None:
    copy = part.with_name("copy")
    shutil.copy2(part, copy)  # the same bytes and mtime, in another inode
    os.replace(copy, part)


def _seal_of_other_file(part: Path) -> None:
    other = part.with_name("other")
    other.write_bytes(b"x")
    seal_of(part).write_bytes(encode_seal(os.stat(other)))
    other.unlink()


SEAL_TAMPER = {
    "seal missing": (lambda part: seal_of(part).unlink(), "not sealed"),
    "seal empty": (lambda part: seal_of(part).write_bytes(b""), "not sealed"),
    "seal truncated": (
        lambda part: seal_of(part).write_bytes(seal_of(part).read_bytes()[:-1]),
        "with a damaged seal",
    ),
    "seal longer": (lambda part: seal_of(part).write_bytes(seal_of(part).read_bytes() + b"\0"), "damaged"),
    "seal of garbage": (lambda part: seal_of(part).write_bytes(os.urandom(SEAL_BYTES)), "damaged"),
    "seal of another file": (_seal_of_other_file, "replaced since the build stopped (another file"),
    "seal is a symlink": (
        lambda part: (seal_of(part).rename(part.parent.parent / "s"), seal_of(part).symlink_to("../s")),
        "not sealed",
    ),
    "seal is a FIFO": (lambda part: (seal_of(part).unlink(), os.mkfifo(seal_of(part))), "not sealed"),
    "seal is a directory": (lambda part: (seal_of(part).unlink(), seal_of(part).mkdir()), "not sealed"),
    "part replaced by a copy of itself": (_replace_by_copy, "replaced since the build stopped (another file"),
    "part with its mode changed": (
        lambda part: part.chmod(0o600),
        "changed since the build stopped (its ctime)",
    ),
}


@pytest.mark.parametrize("tamper", list(SEAL_TAMPER))
def test_a_seal_that_does_not_vouch_for_the_part_has_the_kept_bytes_read_again(
    make_workspace, archive, reference, tamper
):
    ws = workspace_for(make_workspace, archive, "sealed")
    interrupt(ws, after=12_000_000)
    part = next((ws / "shards").glob("*.part"))
    change, why = SEAL_TAMPER[tamper]
    change(part)
    report = run_build(ws)
    assert not report.failed and report.restarted == [], report.as_dict()
    [resumed] = report.resumed
    assert resumed.read_again and why in resumed.why, resumed
    if tamper == "seal is a directory":  # someone else's: kept, and not in the way of the build
        assert seal_of(part).is_dir()
        seal_of(part).rmdir()
    assert files(ws) == reference
    if tamper == "seal is a symlink":  # replaced, not written through
        assert len((part.parent.parent / "s").read_bytes()) == SEAL_BYTES
    assert leftovers(ws) == []


def test_the_seal_holds_after_an_interrupt_and_is_gone_after_the_shard_is_built(make_workspace, archive):
    ws = workspace_for(make_workspace, archive, "interrupted")
    interrupt(ws, after=12_000_000)
    part = next((ws / "shards").glob("*.part"))
    assert seal_verdict(read_seal(seal_of(part)), os.stat(part)).intact
    report = run_build(ws)
    [resumed] = report.resumed
    assert not resumed.read_again and resumed.why in (UNCHANGED, UNCHANGED_BUT_LAST_WRITE)
    assert leftovers(ws) == []


def test_a_restart_stopped_before_its_check_passed_leaves_no_seal_so_the_next_one_checks(
    make_workspace, archive, reference, monkeypatch
):
    """Damage in the kept bytes, found only by reading them: a restart that reads them again but is
    stopped before it gets there must not seal the .part as it writes on, or the restart after it would
    trust the damage (and record a shard whose bytes its torrent does not describe)."""
    ws = workspace_for(make_workspace, archive, "twice")
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        stop_after_checkpoint(m, beyond=4_000_000)
        run_build(ws)
    part = next((ws / "shards").glob("*.part"))
    checkpoint = part.with_name(layout.checkpoint_name(part.name))
    first = _checkpoint_offset(checkpoint)
    st = part.stat()
    _flip(part, _frame_middle(checkpoint, 3))
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime tells

    gate = threading.Event()
    stalled = []

    class StalledCheck(resume.PrefixCheck):
        """The full check held at its first bytes until the build stops."""

        def __init__(self, fd, end, update, finish):
            stalled.append(end)
            super().__init__(fd, end, lambda view: (gate.wait(30), update(view)), finish)

        def cancel(self):
            gate.set()
            super().cancel()

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(build_shard, "PrefixCheck", StalledCheck)
        stop_after_checkpoint(m, beyond=first)
        run_build(ws)
    assert stalled == [first], "the restart resumed, with the full check"
    assert _checkpoint_offset(checkpoint) > first
    assert not seal_verdict(read_seal(seal_of(part)), os.stat(part)).intact
    report = run_build(ws)
    assert report.resumed == [] and "differs from its recorded SHA-1" in report.restarted[0][1], report
    assert files(ws) == reference
    assert leftovers(ws) == []


# --- the seal on its own ---------------------------------------------------------------------------------


def _stat(**kw) -> SimpleNamespace:
    fields = dict(st_dev=1, st_ino=2, st_size=3, st_mtime_ns=1_000_000_004, st_ctime_ns=1_000_000_005)
    return SimpleNamespace(**{**fields, **kw})


@pytest.mark.parametrize(
    "now, why",
    [
        (_stat(), UNCHANGED),
        (_stat(st_size=4), "changed since the build stopped (its size)"),
        (_stat(st_mtime_ns=7, st_ctime_ns=8), "changed since the build stopped (its mtime, ctime)"),
        (_stat(st_ino=9), "replaced since the build stopped (another file: its inode)"),
        (_stat(st_dev=9), "replaced since the build stopped (another file: its inode)"),
    ],
)
def test_a_seal_names_what_changed(now, why):
    assert seal_verdict(encode_seal(_stat()), now) == (why == UNCHANGED, why)


T0 = 1_700_000_000_123_456_789
SEALED = _stat(st_size=4096, st_mtime_ns=T0 - 10**9 + 1, st_ctime_ns=T0 - 10**9 + 1)
FLIGHT = (T0 - 3_000_000, T0, 4096, 4096 + 2**20)  # coarse and fine clocks, the bytes being written


@pytest.mark.parametrize(
    "now, intact",
    [
        (_stat(st_size=4096 + 2**20, st_mtime_ns=T0 + 5, st_ctime_ns=T0 + 5), True),  # the write done
        (_stat(st_size=4096 + 2**19, st_mtime_ns=T0 - 10, st_ctime_ns=T0 - 10), True),  # half of it
        (_stat(st_size=4096 + 2**20, st_mtime_ns=T0 + FLIGHT_NS - 1, st_ctime_ns=T0 + FLIGHT_NS - 1), True),
        (_stat(st_size=4096 + 2**20, st_mtime_ns=T0 + FLIGHT_NS + 1, st_ctime_ns=T0 + FLIGHT_NS + 1), False),
        (_stat(st_size=4096, st_mtime_ns=T0 - 3_000_001, st_ctime_ns=T0 - 3_000_001), False),  # before it
        (_stat(st_size=4096 + 2**20 + 1, st_mtime_ns=T0 + 5, st_ctime_ns=T0 + 5), False),  # longer
        (_stat(st_size=4095, st_mtime_ns=T0 + 5, st_ctime_ns=T0 + 5), False),  # shorter than before it
        (_stat(st_size=4096 + 2**20, st_mtime_ns=T0 + 5, st_ctime_ns=T0 + 6), False),  # chmod'ed after
    ],
)
def test_a_seal_taken_as_a_write_began_vouches_only_for_what_that_write_can_do(now, intact):
    """Killed while a write is in flight, the .part's size and times are the write's, not the seal's: the
    seal taken as it began says which they can be (its byte range; both times stamped as it began)."""
    verdict = seal_verdict(encode_seal(SEALED, FLIGHT), now)
    assert verdict.intact == intact, verdict
    assert verdict.why == (UNCHANGED_BUT_LAST_WRITE if intact else verdict.why)


def test_a_write_cut_short_after_its_seal_is_vouched_for_and_a_later_touch_is_not(tmp_path):
    part, path = tmp_path / "s.part", tmp_path / "s.part.seal"
    seal = PartSeal(path, armed=True)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        seal.after(fd)
        seal.before(fd, 4096, 8192)
        os.pwrite(fd, b"b" * 4096, 4096)  # killed here, before seal.after()
        assert seal_verdict(read_seal(path), os.fstat(fd)) == (True, UNCHANGED_BUT_LAST_WRITE)
        time.sleep(3 * FLIGHT_NS / 1e9)
        os.utime(part)
        assert not seal_verdict(read_seal(path), os.fstat(fd)).intact
    finally:
        os.close(fd)
        seal.close()


def test_a_file_system_with_coarse_timestamps_is_not_trusted():
    """A ctime in whole milliseconds (FAT, exFAT, HFS+, ext3's small inodes): a write right after the
    writer's last one could keep the same ctime, so the seal proves nothing there."""
    coarse = _stat(st_mtime_ns=2_000_000_000, st_ctime_ns=2_000_000_000)
    assert "coarse" in seal_verdict(encode_seal(coarse), coarse).why


def test_a_write_after_the_last_seal_is_seen(tmp_path):
    """Killed between a write and its seal: the seal is older than the .part, and says so."""
    part = tmp_path / "s.part"
    seal = PartSeal(tmp_path / "s.part.seal", armed=True)
    with open(part, "wb") as f:
        f.write(b"a" * 4096)
        f.flush()
        seal.after(f.fileno())
        assert seal_verdict(read_seal(tmp_path / "s.part.seal"), os.fstat(f.fileno())).why == UNCHANGED
        os.pwrite(f.fileno(), b"b", 0)  # same size, and no seal.before(): not the writer's
        assert "ctime" in seal_verdict(read_seal(tmp_path / "s.part.seal"), os.fstat(f.fileno())).why
    seal.close()


def test_a_seal_is_never_written_through_a_link(tmp_path):
    """Whatever is at the seal's name (a hard link to someone's file) is replaced, not written into."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.link(victim, tmp_path / "s.part.seal")
    seal = PartSeal(tmp_path / "s.part.seal", armed=True)
    fd = os.open(victim, os.O_RDONLY)
    try:
        seal.after(fd)
    finally:
        os.close(fd)
        seal.close()
    assert victim.read_bytes() == b"keep me"
    assert len((tmp_path / "s.part.seal").read_bytes()) == SEAL_BYTES


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


@pytest.mark.skipif(not _kernel_at_least(6, 13), reason="multigrain timestamps came with Linux 6.13")
def test_two_writes_a_microsecond_apart_get_different_ctimes_here(tmp_path):
    """What the seal leans on: a change after an fstat gets a fine-grained ctime (Linux 6.13's multigrain
    timestamps); before that, the ctime ticked with the kernel clock (1-10 ms) and two writes inside one
    tick shared it."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        same = 0
        for _ in range(200):
            os.pwrite(fd, b"x", 0)
            before = os.fstat(fd).st_ctime_ns
            t = time.perf_counter_ns()
            while time.perf_counter_ns() - t < 1000:
                pass
            os.pwrite(fd, b"y", 0)
            same += os.fstat(fd).st_ctime_ns == before
    finally:
        os.close(fd)
    assert same == 0
