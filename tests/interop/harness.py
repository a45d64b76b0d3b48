"""Real programs on 127.0.0.1, started and stopped: free ports, Debian's opentracker with a whitelist,
libtorrent sessions with discovery off, aria2c's command line, `packager seed` as a process, and a Dask
scheduler with its workers. The interop tests (through conftest.py's fixtures) and the benchmarks
(scripts/bench_*.py) both start their peers with this module, so a quirk learnt once (opentracker's user,
its whitelist thread, libtorrent's one connection per address) is handled in one place.

No pytest here: a failure is an exception (HarnessError) that a fixture turns into a test failure and a
benchmark into its own message. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
# A swarm of its own, so the readiness probe never shows up as a peer of a torrent under test.
PROBE_HASH = hashlib.sha1(b"packager interop probe").hexdigest()
# Every peer here is 127.0.0.1 (libtorrent otherwise keeps one connection per address); aria2c and
# Transmission 3 speak TCP only, so the seeder does too.
LT_SETTINGS = (
    ("allow_multiple_connections_per_ip", True),
    ("enable_outgoing_utp", False),
    ("enable_incoming_utp", False),
)


class HarnessError(RuntimeError):
    """A program under test did not start, or did not get ready in time."""


def wait_until(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll until `predicate()` holds or `seconds` pass; every wait is bounded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def stop(process: subprocess.Popen, seconds: float = 5) -> int | None:
    """SIGTERM, then SIGKILL after `seconds`; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


class PortPicker:
    """Ports free for TCP and UDP on 127.0.0.1 right now (opentracker and libtorrent listen on both),
    never the same one twice from one picker."""

    def __init__(self) -> None:
        self.handed_out: set[int] = set()

    def __call__(self) -> int:
        for _ in range(50):
            with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
                tcp.bind((LOOPBACK, 0))
                port = tcp.getsockname()[1]
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
            if port not in self.handed_out:
                self.handed_out.add(port)
                return port
        raise HarnessError("no free port on 127.0.0.1")


free_port = PortPicker()


# --- opentracker -----------------------------------------------------------------------------------------


@dataclass
class Tracker:
    port: int
    whitelist: Path
    process: subprocess.Popen
    log: Path
    home: Path

    @property
    def announce_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/announce"

    @property
    def udp_url(self) -> str:
        return f"udp://{LOOPBACK}:{self.port}/announce"

    def announce(self, info_hash_hex: str, port: int, event: str = "started", left: int = 0) -> bytes:
        query = (
            f"info_hash={quote_from_bytes(bytes.fromhex(info_hash_hex))}&peer_id=-PK0001-{port:012d}"
            f"&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&event={event}"
        )
        with urllib.request.urlopen(f"{self.announce_url}?{query}", timeout=2) as reply:
            return reply.read()

    def close(self) -> None:
        stop(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


def _opentracker_user() -> list[str]:
    # opentracker refuses to keep running as root ("Still running with root privileges?!") and setuid()s to
    # `nobody` by default; as another user that setuid fails and it exits silently, so name ourselves.
    if os.geteuid() == 0:
        return ["-u", "nobody"]
    return ["-u", pwd.getpwuid(os.geteuid()).pw_name]


def start_opentracker(hashes: Iterable[str], port: int | None = None, seconds: float = 10) -> Tracker:
    """Debian's opentracker (whitelist build) on 127.0.0.1 serving only the given hex info-hashes, on `port`
    when given (a release built for a tracker URL before the tracker runs). FileNotFoundError without the
    binary; HarnessError if it is not serving its whitelist within `seconds`. close() when done."""
    binary = shutil.which("opentracker")
    if binary is None:
        raise FileNotFoundError("opentracker not installed (Debian: apt install opentracker)")
    # Not a 0700 folder (pytest's tmp_path): opentracker reads the whitelist after dropping to `nobody`.
    home = Path(tempfile.mkdtemp(prefix="packager-opentracker-"))
    os.chmod(home, 0o755)
    whitelist = home / "whitelist.txt"
    whitelist.write_text("".join(f"{h.lower()}\n" for h in [*hashes, PROBE_HASH]))
    config = home / "opentracker.conf"
    # The Debian build is compiled with WANT_ACCESSLIST_WHITE; the path must be absolute.
    config.write_text(f"access.whitelist {whitelist}\n")
    whitelist.chmod(0o644)
    config.chmod(0o644)
    port = port or free_port()
    log = home / "opentracker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-i", LOOPBACK, "-p", str(port), "-P", str(port), "-f", str(config),
             *_opentracker_user()],
            cwd=home, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tracker = Tracker(port, whitelist, process, log, home)
    try:
        _wait_ready(tracker, seconds)
    except BaseException:
        tracker.close()
        raise
    return tracker


def _wait_ready(tracker: Tracker, seconds: float) -> None:
    reply = b""

    def answered() -> bool:
        nonlocal reply
        if tracker.process.poll() is not None:
            return True
        try:
            reply = tracker.announce(PROBE_HASH, port=1)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        # opentracker answers before its accesslist thread has read the whitelist: until then every hash,
        # the probe's too, gets "Requested download is not authorized".
        return b"8:interval" in reply

    wait_until(answered, seconds)
    if tracker.process.poll() is not None or b"8:interval" not in reply:
        raise HarnessError(
            f"opentracker on port {tracker.port} not serving its whitelist:"
            f" exit {tracker.process.poll()}, reply {reply[:200]!r},"
            f" log {tracker.log.read_bytes()[-1000:]!r}"
        )
    tracker.announce(PROBE_HASH, port=1, event="stopped")


# --- libtorrent -----------------------------------------------------------------------------------------


def loopback_settings(port: int = 0) -> dict:
    """A libtorrent session's settings for a peer on 127.0.0.1 whose peers come from the tracker only."""
    import libtorrent as lt  # the benchmarks that start no libtorrent peer do not load it

    return {
        "listen_interfaces": f"{LOOPBACK}:{port}",
        # Peers must come from the tracker only: no DHT, local discovery or port mapping.
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        **dict(LT_SETTINGS),
        # Shutdown otherwise waits up to 5 s for `stopped` announces.
        "stop_tracker_timeout": 1,
        "alert_mask": lt.alert_category.error
        | lt.alert_category.tracker
        | lt.alert_category.status
        | lt.alert_category.storage,
    }


# --- aria2c and `packager seed` ----------------------------------------------------------------------------


def aria2c_command(
    torrent: Path, out: Path, listen_port: int, stop_seconds: float, extra: Iterable[str] = ()
) -> list[str]:
    """aria2c downloading `torrent` into `out` once, from the peers its tracker gives (every other source
    off), leaving when done or after `stop_seconds` without a byte; `extra` options before the torrent."""
    binary = shutil.which("aria2c")
    if binary is None:
        raise FileNotFoundError("aria2c not installed (Debian: apt install aria2)")
    return [
        binary,
        "--no-conf=true",
        "--seed-time=0",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        f"--interface={LOOPBACK}",
        f"--listen-port={listen_port}",
        "--bt-tracker-interval=5",
        f"--bt-stop-timeout={int(stop_seconds)}",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        *extra,
        "-d",
        str(out),
        str(torrent),
    ]


def seed_command(
    ws: Path, listen: str, status_port: int, lt_settings: Iterable[tuple[str, object]] = (), lsd: bool = False
) -> list[str]:
    """`packager seed` as a subprocess on loopback: no DHT, status JSON on `status_port`."""
    command = [sys.executable, "-m", "packager.cli", "seed", str(ws), "--listen", listen, "--no-dht",
               "--status-port", str(status_port)]  # fmt: skip
    if not lsd:
        command.append("--no-lsd")
    return command + [f"--lt={k}={str(v).lower()}" for k, v in lt_settings]


def start_seeder(ws: Path, status_port: int, log: Path, listen: str | None = None) -> subprocess.Popen:
    """`packager seed ws` on 127.0.0.1 with LT_SETTINGS, its output to `log`; stop() it when done."""
    command = seed_command(ws, listen or f"{LOOPBACK}:{free_port()}", status_port, LT_SETTINGS)
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def tracker_ready(body: dict | None, count: int) -> bool:
    """`packager seed`'s status: every torrent seeding and announced (the tracker's reply in its column)."""
    if not body or body["states"].get("seeding") != count:
        return False
    return all(t["tracker"] and "peers from" in t["tracker"] for t in body["torrents"])


# --- Dask ------------------------------------------------------------------------------------------------


def dask_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("dask")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "dask", *args]


def _scheduler_address(file: Path) -> str | None:
    try:
        return json.loads(file.read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class DaskCluster:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1 (each worker a nanny with one worker
    process of one thread), each in its own process group, logs in `folder`. `pythonpath` is added to the
    workers' (the repository is always on it, so they import this checkout's packager)."""

    folder: Path
    pythonpath: tuple[str, ...] = ()
    scheduler: subprocess.Popen | None = None
    nannies: list[subprocess.Popen] = field(default_factory=list)
    address: str = ""

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*self.pythonpath, str(REPO)]))
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder, start_new_session=True
        )

    def start(self, workers: int = 2, worker_args: tuple[str, ...] = ()) -> DaskCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        file = self.folder / "scheduler.json"
        file.unlink(missing_ok=True)
        self.scheduler = self._start(
            "scheduler",
            dask_command("scheduler", "--host", LOOPBACK, "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(file)),
        )  # fmt: skip
        # The scheduler writes the file in place: it can exist, empty or half-written, before it is whole.
        if not wait_until(lambda: _scheduler_address(file), 30):
            raise HarnessError(f"the dask scheduler wrote no {file.name} in 30 s\n{self.logs()}")
        self.address = _scheduler_address(file)
        for i in range(workers):
            local = str(self.folder / f"worker{i}")
            one = ("--nthreads", "1", "--nworkers", "1", "--host", LOOPBACK, "--no-dashboard")
            command = dask_command("worker", self.address, *one, "--local-directory", local, *worker_args)
            self.nannies.append(self._start(f"worker{i}", command))
        self.wait_for_workers(workers)
        return self

    def worker_pids(self) -> set[int]:
        """The worker processes, children of our nannies (a killed one is replaced by its nanny)."""
        import psutil  # the tests that kill a worker need it; the benchmark does not

        pids = set()
        for nanny in self.nannies:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids.update(c.pid for c in psutil.Process(nanny.pid).children() if "python" in c.name())
        return pids

    def wait_for_workers(self, n: int, seconds: float = 60) -> None:
        from distributed import Client  # only where a cluster runs

        with Client(self.address, timeout=10, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=seconds)

    def stop(self) -> None:
        procs = [p for p in [*self.nannies, self.scheduler] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.folder.glob("*.log")))


@contextlib.contextmanager
def dask_cluster(
    folder: Path, workers: int = 2, worker_args: tuple[str, ...] = (), pythonpath: tuple[str, ...] = ()
) -> Iterator[DaskCluster]:
    cluster = DaskCluster(folder, pythonpath)
    try:
        yield cluster.start(workers, worker_args)
    finally:
        cluster.stop()
