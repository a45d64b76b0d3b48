"""Building on a Dask cluster: real `dask scheduler` and `dask worker` processes on 127.0.0.1.

The scheduler listens on a port the kernel picks (--port 0) and tells it through its scheduler file; every
wait is bounded; every process started here is killed, by its process group, at teardown.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.build import BytesDone, ShardStarted, build
from packager.cli import app
from packager.cluster import pack_members, unpack_members
from packager.demo import DEMO_CONFIG, generate_archive
from packager.errors import EnvironmentProblem
from packager.state import MemberRow, open_state
from packager.workspace import Workspace
from tests.helpers import digests, prepare, wait_until
from tests.interop.harness import DaskCluster, dask_cluster, free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as c:
        yield c


@pytest.fixture
def ready(cluster) -> DaskCluster:
    """The module's cluster with both workers up (a test before may have killed one)."""
    cluster.wait_for_workers(2)
    return cluster


# ---- data -------------------------------------------------------------------------------------------------

SLOW_LEVEL = 15  # zstd level 15 takes ~30 ms per MB of random data: time enough to kill a writer mid-shard


def slow_rows(archive, files=24, size=1_000_000, seed=5) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(files):
        path = f"audio/{i % 4}/{i:03d}.ogg"
        archive.add(path, rng.randbytes(size))
        rows.append(
            {"id": f"a{i:03d}", "path": path, "kind": "audio", "popularity": 60 + i % 7, "size": size}
        )
    return rows


def slow_workspace(make_workspace, name: str) -> Path:
    ws = make_workspace(name, audio_shard="3MB")
    cfg = ws / layout.CONFIG
    text = cfg.read_text().replace("level = -1", f"level = {SLOW_LEVEL}")
    cfg.write_text(text + "\n[build]\nconnect_timeout = 5\n")
    return ws


def attempt_files(ws: Path) -> list[Path]:
    folder = ws / layout.SHARDS
    if not folder.exists():
        return []
    return [p for p in folder.iterdir() if layout.attempt_part_of(p.name)]


def leftovers(ws: Path) -> list[str]:
    return [p.name for p in (ws / layout.SHARDS).iterdir() if p.name.endswith(layout.PART_SUFFIX)]


def pid_of(attempt: Path) -> int:
    """The writing process, from the attempt's name ``<name>.tar.zst.<host>-<pid>-<random>.part``."""
    return int(attempt.name.removesuffix(layout.PART_SUFFIX).rsplit("-", 2)[1])


def built_names(ws: Path) -> set[str]:
    with open_state(ws) as state:
        return {s.name for s in state.shards(state="built")}


def all_names(ws: Path) -> set[str]:
    with open_state(ws) as state:
        return {s.name for s in state.shards()}


# ---- tests with a cluster ---------------------------------------------------------------------------------


def test_demo_release_on_the_cluster_is_byte_identical_to_the_local_pool(ready, tmp_path):
    catalog = generate_archive(tmp_path / "archive")
    spaces = {}
    for name in ("local", "cluster"):
        ws = tmp_path / name
        Workspace.init(ws, tmp_path / "archive", "demo").close()
        (ws / layout.CONFIG).write_text(DEMO_CONFIG.replace("{root}", str(tmp_path / "archive")))
        with Workspace.open(ws) as w:
            from packager.catalog import IngestOptions, ingest
            from packager.plan import plan

            ingest(w, [catalog], IngestOptions())
            plan(w)
        spaces[name] = ws
    with Workspace.open(spaces["local"]) as w:
        assert not build(w, jobs_count=2).failed
    events = []
    with Workspace.open(spaces["cluster"]) as w:
        report = build(w, scheduler=ready.address, on_event=events.append)
        planned = {s.name: s.bytes for s in w.state.shards()}
    assert not report.failed and set(report.built) == set(planned)
    assert digests(spaces["cluster"]) == digests(spaces["local"])
    assert leftovers(spaces["cluster"]) == []
    # The progress bars' events came from the workers: a start and every input byte of each shard.
    started = {e.name: e.total for e in events if isinstance(e, ShardStarted)}
    assert started == planned
    done: dict[str, int] = {}
    for e in events:
        if isinstance(e, BytesDone):
            done[e.name] = done.get(e.name, 0) + e.n
    assert done == {name: n for name, n in planned.items() if n}


def test_a_worker_killed_while_it_writes_a_shard(ready, make_workspace, archive):
    """SIGKILL the worker process writing a shard: the shard is retried on a worker, every shard comes out
    byte-identical to the local build, and the dead attempt's file is gone."""
    rows = slow_rows(archive)
    reference = slow_workspace(make_workspace, "reference")
    prepare(reference, archive, rows)
    with Workspace.open(reference) as w:
        assert not build(w, jobs_count=1).failed
    ws = slow_workspace(make_workspace, "cluster")
    prepare(ws, archive, rows)
    events = []

    def run():
        with Workspace.open(ws) as w:
            return build(w, scheduler=ready.address, on_event=events.append)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run)
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and not running.done() and time.monotonic() < deadline:
            for part in attempt_files(ws):
                with contextlib.suppress(FileNotFoundError):
                    if part.stat().st_size >= 256 * 1024 and pid_of(part) in ready.worker_pids():
                        os.kill(pid_of(part), signal.SIGKILL)
                        killed = part
                        break
            time.sleep(0.002)
        report = running.result(timeout=120)
    assert killed is not None, "the build finished before a worker could be killed; make the data bigger"
    shard = layout.attempt_part_of(killed.name).removesuffix(layout.SHARD_SUFFIX)
    assert not report.failed and set(report.built) == all_names(ws)
    assert digests(ws) == digests(reference)
    assert leftovers(ws) == []
    assert [e.name for e in events if isinstance(e, ShardStarted)].count(shard) >= 2, "it was tried again"


def _freeze_a_writer(cluster: DaskCluster, ws: Path, shard_bytes: int) -> tuple[int, Path] | None:
    """SIGSTOP a worker that is writing a shard, and return (its pid, its attempt file): frozen before it
    wrote half of the shard's bytes, it cannot have finished the attempt. None (and no worker stopped) if
    no attempt was caught early enough."""
    for part in attempt_files(ws):
        pid = pid_of(part)
        if pid not in cluster.worker_pids():
            continue
        os.kill(pid, signal.SIGSTOP)
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_size < shard_bytes // 2:
                return pid, part
        os.kill(pid, signal.SIGCONT)
    return None


def test_a_killed_coordinator_loses_no_committed_shard(ready, make_workspace, archive):
    """SIGKILL the coordinator with one shard committed and another being written. The writer is frozen
    (SIGSTOP) mid-shard until then, so that moment comes on a loaded machine too: the build was once
    over before the test could catch it."""
    rows = slow_rows(archive, seed=6)
    reference = slow_workspace(make_workspace, "reference")
    prepare(reference, archive, rows)
    with Workspace.open(reference) as w:
        assert not build(w, jobs_count=1).failed
    ws = slow_workspace(make_workspace, "cluster")
    prepare(ws, archive, rows)
    proc = subprocess.Popen(
        [sys.executable, "-m", "packager.cli", "build", str(ws), "--scheduler", ready.address],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shard_bytes = 3 * rows[0]["size"]  # the workspace's 3 MB shards of 1 MB files
    try:
        assert wait_until(lambda: _freeze_a_writer(ready, ws, shard_bytes) is not None, 60, step=0.002), (
            "no attempt was seen writing a shard"
        )
        # The other worker goes on: kill the coordinator once it committed a shard.
        assert wait_until(lambda: proc.poll() is None and built_names(ws), 60, step=0.005), (
            "no shard was committed"
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pid in ready.worker_pids():
            os.kill(pid, signal.SIGCONT)
    committed = built_names(ws)
    assert committed and committed != all_names(ws)
    # The thawed attempt sees that nobody wants it any more, and removes its own file.
    assert wait_until(lambda: not attempt_files(ws), 30), attempt_files(ws)
    with Workspace.open(ws) as w:
        report = build(w, scheduler=ready.address)
    assert set(report.built) == all_names(ws) - committed and report.skipped == len(committed)
    assert not report.failed
    assert digests(ws) == digests(reference)
    assert leftovers(ws) == []


def test_attempts_of_a_killed_coordinator_stop_and_remove_their_files(ready, make_workspace, archive):
    """Dask cannot interrupt a task; an attempt notices at its next progress event that nobody wants it."""
    rows = slow_rows(archive, files=2, size=6_000_000, seed=8)
    ws = slow_workspace(make_workspace, "cluster")
    cfg = ws / layout.CONFIG
    slower = cfg.read_text().replace(f"level = {SLOW_LEVEL}", "level = 19").replace('"64KiB"', '"4MiB"')
    cfg.write_text(slower)  # about 1 s per shard, two PROGRESS_INTERVALs
    prepare(ws, archive, rows)
    proc = subprocess.Popen(
        [sys.executable, "-m", "packager.cli", "build", str(ws), "--scheduler", ready.address],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: proc.poll() is None and attempt_files(ws), 60, step=0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert wait_until(lambda: not attempt_files(ws), 10), attempt_files(ws)
    assert not built_names(ws)


def test_a_worker_that_sees_another_archive_fails_that_shard_naming_its_host(ready, workspace, archive):
    rows = []
    for i in range(9):
        path = f"audio/{i}.ogg"
        rows.append(
            {
                "id": f"x{i}",
                "path": path,
                "kind": "audio",
                "popularity": 70,
                "size": archive.add(path, 40_000),
            }
        )
    prepare(workspace, archive, rows)
    archive.add(rows[4]["path"], 123)  # the file the workers see is not the catalogued one
    r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", ready.address])
    assert r.exit_code == 2, r.output
    assert f"on worker host {socket.gethostname()}" in r.output and rows[4]["path"] in r.output
    assert "Traceback" not in r.output
    with open_state(workspace) as state:
        states = [s.state for s in state.shards()]
    assert states.count("failed") == 1 and states.count("built") == len(states) - 1
    assert leftovers(workspace) == []


@pytest.mark.slow
def test_a_lost_scheduler_stops_the_build_and_the_next_build_continues(tmp_path, make_workspace, archive):
    rows = slow_rows(archive, files=30, seed=7)
    reference = slow_workspace(make_workspace, "reference")
    prepare(reference, archive, rows)
    with Workspace.open(reference) as w:
        assert not build(w, jobs_count=1).failed
    ws = slow_workspace(make_workspace, "cluster")
    (ws / layout.CONFIG).write_text(
        (ws / layout.CONFIG).read_text().replace("connect_timeout = 5", "connect_timeout = 2")
    )
    prepare(ws, archive, rows)
    with dask_cluster(tmp_path / "dask1") as first, ThreadPoolExecutor(1) as pool:

        def run():
            with Workspace.open(ws) as w:
                return build(w, scheduler=first.address)

        running = pool.submit(run)
        assert wait_until(lambda: running.done() or built_names(ws), 60, step=0.005)
        os.killpg(first.scheduler.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(EnvironmentProblem, match="lost the Dask scheduler"):
            running.result(timeout=60)
        assert time.monotonic() - started < 20
    committed = built_names(ws)
    assert committed and committed != all_names(ws)
    with dask_cluster(tmp_path / "dask2") as second, Workspace.open(ws) as w:
        report = build(w, scheduler=second.address)
    assert set(report.built) == all_names(ws) - committed and not report.failed
    assert digests(ws) == digests(reference)


def build_on(workspace: Path, scheduler: str) -> subprocess.CompletedProcess:
    """`packager build WORKSPACE --scheduler SCHEDULER` in its own process, bounded at 30 s."""
    return subprocess.run(
        [sys.executable, "-m", "packager.cli", "build", str(workspace), "--scheduler", scheduler],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=30,
    )


def rows_of(archive, n: int, size: int = 40_000) -> list[dict]:
    rows = []
    for i in range(n):
        path = f"audio/{i}.ogg"
        rows.append(
            {"id": f"x{i}", "path": path, "kind": "audio", "popularity": 70, "size": archive.add(path, size)}
        )
    return rows


# ---- without a cluster ------------------------------------------------------------------------------------


def test_an_unreachable_scheduler_is_an_environment_error_in_bounded_time(workspace, archive):
    prepare(
        workspace,
        archive,
        [{"id": "a", "path": "a.ogg", "kind": "audio", "popularity": 1, "size": archive.add("a.ogg", 10)}],
    )
    cfg = workspace / layout.CONFIG
    cfg.write_text(cfg.read_text() + "\n[build]\nconnect_timeout = 1\n")
    started = time.monotonic()
    r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    assert r.exit_code == 3, r.output
    assert "cannot reach the Dask scheduler" in r.output and "Traceback" not in r.output
    assert time.monotonic() - started < 15
    with open_state(workspace) as state:
        assert {s.state for s in state.shards()} == {"planned"}


def test_the_scheduler_from_release_toml_and_bad_addresses(workspace, archive):
    prepare(
        workspace,
        archive,
        [{"id": "a", "path": "a.ogg", "kind": "audio", "popularity": 1, "size": archive.add("a.ogg", 10)}],
    )
    cfg = workspace / layout.CONFIG
    cfg.write_text(
        cfg.read_text() + f'\n[build]\nscheduler = "tcp://127.0.0.1:{free_port()}"\nconnect_timeout = 1\n'
    )
    r = CliRunner().invoke(app, ["build", str(workspace)])
    assert r.exit_code == 3 and "cannot reach the Dask scheduler" in r.output
    r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", "http://x"])
    assert r.exit_code == 2 and "not a Dask scheduler address" in r.output
    r = CliRunner().invoke(app, ["build", str(workspace), "--local"])
    assert r.exit_code == 0, r.output
    assert built_names(workspace) == all_names(workspace)


def test_without_distributed_the_flag_says_how_to_install_it(workspace, archive, monkeypatch):
    prepare(
        workspace,
        archive,
        [{"id": "a", "path": "a.ogg", "kind": "audio", "popularity": 1, "size": archive.add("a.ogg", 10)}],
    )
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", "tcp://127.0.0.1:8786"])
    assert r.exit_code == 3, r.output
    assert "pip install 'packager[cluster]'" in r.output and "Traceback" not in r.output


def test_stale_attempt_files_are_removed_by_the_next_build(workspace, archive):
    prepare(
        workspace,
        archive,
        [{"id": "a", "path": "a.ogg", "kind": "audio", "popularity": 1, "size": archive.add("a.ogg", 10)}],
    )
    with open_state(workspace) as state:
        name = state.shards()[0].name
    shards = workspace / layout.SHARDS
    shards.mkdir()
    stale = shards / layout.attempt_part_name(layout.shard_file_name(name), "node7-4242-abcdef")
    stale.write_bytes(b"half a shard")
    unrelated = shards / "notes.txt.x.part"
    unrelated.write_bytes(b"not ours")
    with Workspace.open(workspace) as w:
        assert build(w, jobs_count=1).built == [name]
    assert not stale.exists() and unrelated.exists()


def test_members_travel_with_the_task_unchanged():
    rows = [
        MemberRow(0, "3Kx9AbCdEfGhIjKlMnOpQr", "audio/ab/cd/tr é 01.ogg", "audio", 73.25, 4_123_456, None),
        MemberRow(1, "m", "meta/x.jsonl", "metadata", 1e-300, 0, 1735689600),
    ]
    assert unpack_members(pack_members(iter(rows))) == rows


def test_attempt_names_never_pass_for_a_shard_or_its_part():
    name = layout.shard_file_name("rel.tar.zst.x-audio-00001")
    assert layout.attempt_part_of(layout.part_name(name)) is None
    assert layout.attempt_part_of(layout.attempt_part_name(name, "h-1-ab")) == name
    with pytest.raises(ValueError):
        layout.attempt_part_name(name, "../x")


def test_a_worker_whose_code_changed_after_the_check_stops_the_build_and_fails_no_shard(
    tmp_path, workspace, archive
):
    """A worker that passes the start check but runs other code when it builds (it joined later, or its
    code was swapped) refused every shard it was given, and Dask, seeing it free at once, gave it the next:
    one stale machine failed most of the release. Now the first refusal stops the build, naming it."""
    preload = tmp_path / "stale.py"
    preload.write_text(
        "import itertools\n"
        "import packager.cluster as c\n"
        "real, calls = c.build_fingerprint(), itertools.count()\n"
        "# the first call is the start check's; then the code is another\n"
        "stale = 'packager 0.0.1, libzstd 1.0.0, code 000000000000'\n"
        "c.build_fingerprint = lambda: real if next(calls) == 0 else stale\n"
    )
    rows = rows_of(archive, 6)
    prepare(workspace, archive, rows)
    with dask_cluster(tmp_path / "dask", workers=1, worker_args=("--preload", str(preload))) as stale:
        r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", stale.address])
    assert r.exit_code == 3, r.output
    assert "code 000000000000" in r.output and "the build stopped" in r.output, r.output
    assert "tcp://127.0.0.1:" in r.output and "Traceback" not in r.output
    with open_state(workspace) as state:
        assert {s.state for s in state.shards()} == {"planned"}  # not failed: nothing is wrong with them
    assert leftovers(workspace) == []


def test_an_address_that_is_a_worker_not_the_scheduler(ready, workspace, archive):
    prepare(workspace, archive, rows_of(archive, 1))
    from distributed import Client

    with Client(ready.address, timeout=10, set_as_default=False) as client:
        worker = next(iter(client.scheduler_info()["workers"]))
    r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", worker])
    assert r.exit_code == 3, r.output
    assert "is a Dask Worker, not a scheduler" in r.output and "Traceback" not in r.output


def test_an_interrupted_coordinator_leaves_no_attempt_file(ready, make_workspace, archive):
    """Ctrl-C: exit 130, and no attempt's file outlives the build, not even one that finished writing just
    before (its worker saw it unwanted only when it was done, and the coordinator never adopted it)."""
    ws = slow_workspace(make_workspace, "cluster")
    prepare(ws, archive, slow_rows(archive, seed=9))
    proc = subprocess.Popen(
        [sys.executable, "-m", "packager.cli", "build", str(ws), "--scheduler", ready.address],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # A shell's background job starts with SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the build Ctrl-C's default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert wait_until(lambda: proc.poll() is None and built_names(ws) and attempt_files(ws), 60, 0.005)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"interrupted" in stderr and b"Traceback" not in stderr
    assert wait_until(lambda: not attempt_files(ws), 5), attempt_files(ws)


@pytest.mark.parametrize("server", ["silent", "http"])
def test_a_port_that_is_not_a_dask_scheduler_is_refused_in_bounded_time(server, workspace, archive):
    """distributed.Client's timeout bounds the TCP connect, not the handshake after it: a port that
    accepts and never answers (a stopped scheduler, a tarpit), or an HTTP server waiting for a request
    line, held `build` forever."""
    import http.server
    import threading

    prepare(workspace, archive, rows_of(archive, 1))
    cfg = workspace / layout.CONFIG
    cfg.write_text(cfg.read_text() + "\n[build]\nconnect_timeout = 1\n")
    if server == "http":
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        port, stop = httpd.server_address[1], httpd.shutdown
    else:
        listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever reads
        port, stop = listener.getsockname()[1], listener.close
    try:
        started = time.monotonic()
        r = build_on(workspace, f"tcp://127.0.0.1:{port}")
    finally:
        stop()
    assert r.returncode == 3, r.stderr
    assert "did not answer as a Dask server within 1 s" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - started < 15
    with open_state(workspace) as state:
        assert {s.state for s in state.shards()} == {"planned"}


def test_tls_and_ucx_addresses_without_their_setup_are_a_message(workspace, archive):
    prepare(workspace, archive, rows_of(archive, 1))
    for address in ("tls://127.0.0.1:9", "ucx://127.0.0.1:9"):
        r = CliRunner().invoke(app, ["build", str(workspace), "--scheduler", address])
        assert r.exit_code == 3, r.output
        assert f"cannot reach the Dask scheduler at {address}" in r.output and "Traceback" not in r.output


def test_a_cluster_that_loses_every_worker_stops_the_build(tmp_path, make_workspace, archive):
    """Dask keeps a task without a worker waiting forever (a Slurm allocation that ended, every machine
    down): the build waited with it, silently. Now it stops after connect_timeout, keeping what it built."""
    ws = slow_workspace(make_workspace, "cluster")
    cfg = ws / layout.CONFIG
    cfg.write_text(cfg.read_text().replace("connect_timeout = 5", "connect_timeout = 2"))
    prepare(ws, archive, slow_rows(archive, seed=10))
    with dask_cluster(tmp_path / "dask", workers=1) as one:
        proc = subprocess.Popen(
            [sys.executable, "-m", "packager.cli", "build", str(ws), "--scheduler", one.address],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(
                lambda: proc.poll() is None and built_names(ws) and attempt_files(ws), 60, 0.005
            )
            os.killpg(one.nannies[0].pid, signal.SIGKILL)  # the nanny and its worker: nobody restarts it
            _, stderr = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 3, stderr
    committed = built_names(ws)
    assert (
        "lost its workers" in stderr and f"{len(committed)} shards built in this run are committed" in stderr
    )
    assert committed and attempt_files(ws) == [] and "Traceback" not in stderr


def test_a_scheduler_that_never_connects_is_not_said_to_have_accepted(workspace, archive):
    """A host that does not resolve or a black-holed address never accepts a connection: the message said
    "it accepted the connection but did not answer", sending the operator to look for the wrong server."""
    prepare(workspace, archive, rows_of(archive, 1))
    cfg = workspace / layout.CONFIG
    cfg.write_text(cfg.read_text() + "\n[build]\nconnect_timeout = 1\n")
    r = build_on(workspace, "tcp://nowhere.invalid:8786")
    assert r.returncode == 3, r.stderr
    assert "cannot reach the Dask scheduler at tcp://nowhere.invalid:8786" in r.stderr
    assert "accepted the connection" not in r.stderr and "Traceback" not in r.stderr
