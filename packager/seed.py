"""The seeder: one libtorrent 2.1 session seeding every published torrent for months; the tracker whitelist.

Disk I/O. libtorrent 2.1 chooses its disk back end when the session is made, through
``session_params.disk_io_constructor``. The Python binding exposes that field as a write-only *string*:
"pread_disk_io_constructor", "posix_disk_io_constructor" or "mmap_disk_io_constructor"; anything else (and
the getter, which always answers "default_disk_io_constructor") means the default, which on 64-bit Linux is
mmap. We ask for pread: 2.1's pread back end reads with pread(2) into its own bounded buffers, so thousands of
multi-GB shards are not mapped into our address space and RSS stays what we allocate (the tests check
/proc/self/maps). The setting ``mmap_file_size_cutoff`` only concerns the mmap back end.

Adding. Every published torrent whose shard file exists with its recorded length is added; the others are
reported and left out. A torrent with fast-resume data under ``DIR/seed/`` resumes from it; one without is
added in seed mode (we built the file and recorded its hashes; libtorrent checks each piece lazily the first
time it serves it). Neither way re-hashes a file at start. Torrents are added with ``async_add_torrent`` in
batches, not auto-managed, with libtorrent's active limits lifted: nothing queues, every torrent announces.

The loop. Alerts drive everything: add results, state updates (snapshots for the live table and the status
port), tracker replies and errors, file errors (that torrent is paused and reported, the rest seed on), and
resume data, written atomically (temp file, one filesystem sync, rename) every ``resume_interval`` and at
shutdown. Per-torrent upload totals, tracker replies and errors go to ``seed_torrents`` in state.sqlite.

The library never prints: it reports through ``on_event`` and ``on_snapshot`` callbacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import libtorrent as lt

from . import layout
from .config import parse_size
from .errors import ConfigError, EnvironmentProblem, ListenError, UsageError, WorkspaceError
from .fsutil import write_atomic
from .hashing import swarm_hashes
from .manifest import whitelist_hashes as _whitelist_of
from .state import SeedStatusRow, State
from .workspace import Workspace

DISK_IO = "pread_disk_io_constructor"
CHOKERS = ("round_robin", "fastest_upload", "anti_leech")
DEFAULT_LISTEN = "0.0.0.0:6881,[::]:6881"

_ALERTS = (
    lt.alert_category.error | lt.alert_category.status | lt.alert_category.tracker | lt.alert_category.storage
)
# Flags a resumed torrent must not keep: we manage no queue, and a seeder never downloads.
_CLEARED_FLAGS = (
    lt.torrent_flags.auto_managed
    | lt.torrent_flags.paused
    | lt.torrent_flags.upload_mode
    | lt.torrent_flags.share_mode
    | lt.torrent_flags.stop_when_ready
)
_RESUME_NOT_MODIFIED = 143  # libtorrent's errors::resume_data_not_modified
_STATE_NAMES = {
    lt.torrent_status.states.queued_for_checking: "queued for check",
    lt.torrent_status.states.checking_files: "checking",
    lt.torrent_status.states.downloading_metadata: "metadata",
    lt.torrent_status.states.downloading: "incomplete",
    lt.torrent_status.states.finished: "finished",
    lt.torrent_status.states.seeding: "seeding",
    lt.torrent_status.states.checking_resume_data: "loading",
}


# ---- settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSettings:
    """How the session runs: release.toml's [seed] table, then command-line flags. Checked on creation."""

    listen: str = DEFAULT_LISTEN  # libtorrent listen_interfaces: comma-separated HOST:PORT
    upload_limit: int = 0  # bytes per second for the whole session; 0: unlimited
    connections_limit: int = 8000  # high_performance_seed's figure
    upload_slots: int = -1  # unchoked peers; -1 (high_performance_seed): all, so the choker rarely matters
    dht: bool = True
    lsd: bool = False  # local discovery multicasts every info-hash on the LAN: useless in a data centre
    port_mapping: bool = False  # UPnP / NAT-PMP, for a seeder behind a home router
    seed_choking: str = "round_robin"  # round_robin | fastest_upload | anti_leech, when upload slots run out
    resume_interval: float = 300.0  # seconds between fast-resume saves
    batch_size: int = 500  # torrents per async_add_torrent batch
    shutdown_timeout: float = 60.0  # seconds to wait for resume data at shutdown
    libtorrent: tuple[tuple[str, bool | int | str], ...] = ()  # raw settings_pack overrides, applied last

    def __post_init__(self) -> None:
        if not isinstance(self.listen, str) or not self.listen.strip():
            raise UsageError(f"listen {self.listen!r}: expected HOST:PORT[,HOST:PORT...]")
        if self.seed_choking not in CHOKERS:
            raise UsageError(f"seed choking {self.seed_choking!r} is not one of {', '.join(CHOKERS)}")
        for name in ("upload_limit", "connections_limit", "batch_size"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "upload_limit" else 1)
            ):
                raise UsageError(f"{name} {value!r}: expected a positive number")
        if (
            isinstance(self.upload_slots, bool)
            or not isinstance(self.upload_slots, int)
            or self.upload_slots < -1
        ):
            raise UsageError(f"upload_slots {self.upload_slots!r}: expected -1 (all) or a number of peers")
        for name in ("resume_interval", "shutdown_timeout"):
            if not isinstance(getattr(self, name), int | float) or getattr(self, name) <= 0:
                raise UsageError(f"{name} {getattr(self, name)!r}: expected seconds above 0")
        object.__setattr__(
            self, "libtorrent", tuple(check_libtorrent_setting(k, v) for k, v in self.libtorrent)
        )

    def session_settings(self) -> dict:
        """The settings_pack: high_performance_seed(), our choices over it, then the raw overrides."""
        pack = lt.high_performance_seed()
        pack.update(
            {
                "listen_interfaces": self.listen,
                "upload_rate_limit": self.upload_limit,
                "connections_limit": self.connections_limit,
                "unchoke_slots_limit": self.upload_slots,
                "enable_dht": self.dht,
                "enable_lsd": self.lsd,
                "enable_upnp": self.port_mapping,
                "enable_natpmp": self.port_mapping,
                "seed_choking_algorithm": int(lt.seed_choking_algorithm_t.names[self.seed_choking]),
                # -1 lifts each limit: thousands of torrents, all active, all announcing. Our torrents are not
                # auto-managed either, so nothing queues them.
                "active_seeds": -1,
                "active_limit": -1,
                "active_tracker_limit": -1,
                "active_dht_limit": -1,
                "active_lsd_limit": -1,
                # The port asked for or an error: firewalls and port forwards are set up for that port, and a
                # seeder that silently moved to port+1 (libtorrent's default) would be unreachable.
                "max_retry_port_bind": 0,
                "listen_system_port_fallback": False,
                "alert_mask": _ALERTS,
                # A state_update_alert a second may list every torrent; room for bursts of tracker replies.
                "alert_queue_size": 200_000,
                # A shutdown waits this long for `stopped` announces.
                "stop_tracker_timeout": 3,
            }
        )
        pack.update(dict(self.libtorrent))
        return pack

    def with_overrides(self, **flags) -> SeedSettings:
        """A copy with every flag that is not None applied (the command line wins over release.toml)."""
        given = {k: v for k, v in flags.items() if v is not None}
        if "libtorrent" in given:
            given["libtorrent"] = (*self.libtorrent, *given["libtorrent"])
        return replace(self, **given)


def check_libtorrent_setting(name: str, value) -> tuple[str, bool | int | str]:
    """A (name, value) pair valid for libtorrent's settings_pack; a string value is converted to its type."""
    defaults = lt.default_settings()
    if name not in defaults:
        raise UsageError(
            f"libtorrent setting {name!r} does not exist",
            hint="see https://www.libtorrent.org/reference-Settings.html for the names",
        )
    kind = type(defaults[name])
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool and text in ("true", "1", "yes", "false", "0", "no"):
            value = text in ("true", "1", "yes")
        elif kind is int and text.lstrip("-").isdigit():
            value = int(text)
    if type(value) is not kind:
        raise UsageError(f"libtorrent setting {name}={value!r}: expected {kind.__name__}")
    return name, value


def parse_libtorrent_flag(text: str) -> tuple[str, bool | int | str]:
    """'NAME=VALUE' from the command line."""
    name, sep, value = text.partition("=")
    if not sep:
        raise UsageError(
            f"--lt {text!r}: expected NAME=VALUE", hint="e.g. --lt allow_multiple_connections_per_ip=true"
        )
    return check_libtorrent_setting(name.strip(), value)


_TABLE_KEYS = {
    "listen": str,
    "upload_limit": (str, int),
    "connections_limit": int,
    "upload_slots": int,
    "dht": bool,
    "lsd": bool,
    "port_mapping": bool,
    "seed_choking": str,
    "resume_interval": (int, float),
    "batch_size": int,
    "shutdown_timeout": (int, float),
    "libtorrent": dict,
}


def settings_from_table(table: dict, file: Path) -> SeedSettings:
    """SeedSettings from release.toml's [seed] table; ConfigError names the key."""
    values: dict = {}
    for key, raw in table.items():
        if key not in _TABLE_KEYS:
            raise ConfigError(file, f"seed.{key}", "unknown key", ", ".join(sorted(_TABLE_KEYS)))
        kind = _TABLE_KEYS[key]
        if not isinstance(raw, kind) or (isinstance(raw, bool) and kind is not bool):
            raise ConfigError(file, f"seed.{key}", f"{raw!r} has the wrong type")
        values[key] = raw
    try:
        if "upload_limit" in values:
            values["upload_limit"] = parse_size(values["upload_limit"])
        if "libtorrent" in values:
            values["libtorrent"] = tuple(values["libtorrent"].items())
        return SeedSettings(**values)
    except ValueError as e:
        raise ConfigError(file, "seed.upload_limit", str(e), "bytes per second, e.g. 50MB") from None
    except UsageError as e:
        raise ConfigError(file, "seed", e.message) from None


def load_seed_settings(workspace: Path) -> SeedSettings:
    """The [seed] table of DIR/release.toml, or the defaults."""
    path = Path(workspace) / layout.CONFIG
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkspaceError(f"{path}: not found: is this a release workspace?") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(path, "(file)", f"cannot be read: {e}") from None
    table = data.get("seed", {})
    if not isinstance(table, dict):
        raise ConfigError(path, "seed", "expected a [seed] table")
    return settings_from_table(table, path)


# ---- what to seed -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedTorrent:
    """A published torrent and its shard file, with absolute paths."""

    shard_id: int
    name: str
    phase: str
    data: Path  # the shard file
    length: int | None  # recorded at build time; None if the shard is no longer built
    torrent: Path
    info_hash_v1: str | None
    info_hash_v2: str | None  # full 64 hex

    @property
    def key(self) -> str:
        """The name of its resume file and its row in seed_torrents: the v1 info-hash, else the v2 one."""
        return self.info_hash_v1 or self.info_hash_v2 or ""

    @property
    def swarm_hashes(self) -> tuple[str, ...]:
        """What trackers see: the v1 info-hash and the v2 one truncated to 20 bytes (BEP 52)."""
        return swarm_hashes(self.info_hash_v1, self.info_hash_v2)


@dataclass(frozen=True)
class SeedProblem:
    """A torrent that is not seeded, and why."""

    name: str
    info_hash: str
    reason: str


def published_torrents(ws: Workspace, phases: Sequence[str] | None = None) -> list[SeedTorrent]:
    """Every published torrent of the given phases (default: all published phases), in release order."""
    check_published(ws.state, phases)
    folder = ws.path.resolve()
    rows = ws.state.seedable(list(phases) if phases else None)
    return [
        SeedTorrent(
            r.shard_id,
            r.name,
            r.phase,
            folder / (r.file or layout.shard_file(r.name)),
            r.length,
            folder / r.torrent_file,
            r.info_hash_v1,
            r.info_hash_v2,
        )
        for r in rows
    ]


def check_published(state: State, phases: Sequence[str] | None) -> None:
    """UsageError unless something is published and every phase asked for is."""
    published = [phase for phase, _ in state.publications()]
    if not published:
        raise UsageError(
            "nothing is published yet", hint="publish a phase first: packager publish DIR --phase NAME"
        )
    unknown = [p for p in phases or () if p not in published]
    if unknown:
        raise UsageError(
            f"phase {unknown[0]!r} is not published", hint=f"published phases: {', '.join(published)}"
        )


def check_files(torrents: Iterable[SeedTorrent]) -> tuple[list[SeedTorrent], list[SeedProblem]]:
    """(torrents whose .torrent and shard file exist with the recorded length, problems of the others)."""
    ready, problems = [], []
    for t in torrents:
        reason = None
        if t.length is None:
            reason = "the shard is not built (its file went missing since the build)"
        elif not t.torrent.is_file():
            reason = f"{t.torrent}: the .torrent file is missing"
        else:
            try:
                size = t.data.stat().st_size
            except FileNotFoundError:
                reason = f"{t.data}: missing"
            except OSError as e:
                reason = f"{t.data}: {e.strerror or e}"
            else:
                if size != t.length:
                    which = "too short" if size < t.length else "too long"
                    reason = f"{t.data}: {which}: {size} instead of {t.length} bytes"
        if reason is None:
            ready.append(t)
        else:
            problems.append(SeedProblem(t.name, t.key, reason))
    return ready, problems


def whitelist_hashes(ws: Workspace, phases: Sequence[str] | None = None) -> list[str]:
    """opentracker's whitelist: the v1 info-hash and the truncated v2 info-hash of each published torrent."""
    check_published(ws.state, phases)
    return _whitelist_of(ws.state.seedable(list(phases) if phases else None))


def write_whitelist(path: Path, hashes: Iterable[str]) -> int:
    """Write one hash per line, atomically (opentracker may re-read it at any SIGHUP). The number written."""
    lines = [f"{h}\n" for h in hashes]
    _write_atomic(Path(path), "".join(lines).encode())
    return len(lines)


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as e:
        raise EnvironmentProblem(f"{path}: cannot write: {e.strerror or e}") from e


# ---- fast-resume files ------------------------------------------------------------------------------------


def _syncfs(fd: int) -> bool:
    """Flush one filesystem (Linux syncfs(2)): one journal commit for a whole batch of resume files."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs(fd) == 0
    except (OSError, AttributeError):
        return False


class ResumeStore:
    """``DIR/seed/<info-hash>.fastresume``: each written atomically, a batch made durable by one sync."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / layout.resume_file_name(key)

    def load(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def save_many(self, items: dict[str, bytes]) -> None:
        """Temp files, then one sync of their filesystem, then renames, then a sync of the folder: a crash at
        any point leaves each resume file old or new, never partial. OSError if the disk refuses."""
        if not items:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        done: list[tuple[Path, Path]] = []
        try:
            for key, data in items.items():
                tmp = self.folder / f".{key}.{pid}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                done.append((tmp, self.path(key)))
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if not _syncfs(fd):
                    for tmp, _ in done:
                        with open(tmp, "rb+") as f:
                            os.fsync(f.fileno())
                for tmp, final in done:
                    os.replace(tmp, final)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            for tmp, _ in done:
                tmp.unlink(missing_ok=True)
            raise


# ---- events and snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listening:
    endpoints: tuple[str, ...]
    failed: tuple[str, ...]  # interfaces that could not be opened while others could
    status_url: str | None = None


@dataclass(frozen=True)
class TorrentsLoaded:
    added: int
    resumed: int  # from fast-resume data
    fresh: int  # in seed mode
    not_added: tuple[SeedProblem, ...]
    seconds: float


@dataclass(frozen=True)
class TorrentFault:
    """A torrent stopped seeding: a file error (it is paused) or a failed add."""

    name: str
    info_hash: str
    reason: str


@dataclass(frozen=True)
class Notice:
    text: str


@dataclass(frozen=True)
class Stopped:
    resume_saved: int
    resume_failed: int
    seconds: float


SeedEvent = Listening | TorrentsLoaded | TorrentFault | Notice | Stopped


@dataclass(frozen=True)
class TorrentView:
    name: str
    phase: str
    info_hash: str
    state: str  # seeding | paused | error | checking | loading | ...
    peers: int
    upload_rate: int  # payload bytes per second
    uploaded: int  # all-time payload bytes
    error: str | None = None
    tracker: str | None = None  # the last tracker reply or error, in words


@dataclass(frozen=True)
class SeedSnapshot:
    at: float  # Unix seconds
    uptime: float
    listen: tuple[str, ...]
    torrents: tuple[TorrentView, ...]
    not_added: tuple[SeedProblem, ...]
    rechecked: int  # torrents libtorrent had to hash-check since the start (0 when resume data is used)
    status_url: str | None = None

    @property
    def upload_rate(self) -> int:
        return sum(t.upload_rate for t in self.torrents)

    @property
    def uploaded(self) -> int:
        return sum(t.uploaded for t in self.torrents)

    @property
    def peers(self) -> int:
        return sum(t.peers for t in self.torrents)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.torrents:
            out[t.state] = out.get(t.state, 0) + 1
        if self.not_added:
            out["not added"] = len(self.not_added)
        return out

    def as_dict(self, torrents: bool = True) -> dict:
        """The JSON the status port serves; without the per-torrent list when `torrents` is False."""
        out = {
            "at": datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uptime": round(self.uptime, 1),
            "listen": list(self.listen),
            "torrents_total": len(self.torrents),
            "states": self.counts(),
            "peers": self.peers,
            "upload_rate": self.upload_rate,
            "uploaded": self.uploaded,
            "rechecked": self.rechecked,
            "not_added": [asdict(p) for p in self.not_added],
        }
        if torrents:
            out["torrents"] = [asdict(t) for t in self.torrents]
        return out


@dataclass
class SeedReport:
    """What a seeding run did, for the CLI's closing lines and --json."""

    torrents: int = 0
    resumed: int = 0
    fresh: int = 0
    not_added: list[SeedProblem] = field(default_factory=list)
    faults: list[TorrentFault] = field(default_factory=list)
    uploaded: int = 0
    seconds: float = 0.0
    resume_saved: int = 0
    resume_failed: int = 0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "not_added": [asdict(p) for p in self.not_added],
            "faults": [asdict(f) for f in self.faults],
        }


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash_key(hashes: lt.info_hash_t) -> str:
    return str(hashes.v1) if hashes.has_v1() else str(hashes.v2)


def read_status(port: int, path: str = "/", timeout: float = 2) -> dict | None:
    """What a running seeder's --status-port serves (on 127.0.0.1), or None when nothing answers yet:
    for monitoring scripts, the benchmark and the tests alike."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


def _state_label(st: lt.torrent_status) -> str:
    if st.errc.value():
        return "error"
    if st.paused:
        return "paused"
    return _STATE_NAMES.get(st.state, str(st.state))


@dataclass
class _Tracked:
    """Our running record of one added torrent."""

    torrent: SeedTorrent
    handle: lt.torrent_handle
    status: lt.torrent_status | None = None
    error: str | None = None
    error_at: str | None = None
    tracker: str | None = None
    replies: int = 0  # since the last flush to state.sqlite
    last_reply_at: str | None = None
    last_reply_peers: int | None = None
    tracker_error: str | None = None
    tracker_error_at: str | None = None
    uploaded: int = 0


# ---- the seeder -------------------------------------------------------------------------------------------


class Seeder:
    """One libtorrent session seeding `torrents`. start(), then run() (or step()), then close()."""

    snapshot_interval = 1.0
    db_interval = 10.0
    resume_flush_delay = 1.0

    def __init__(
        self,
        workspace: Path,
        torrents: Sequence[SeedTorrent],
        settings: SeedSettings,
        state: State | None = None,
        on_event: Callable[[SeedEvent], None] = lambda e: None,
        on_snapshot: Callable[[SeedSnapshot], None] = lambda s: None,
    ):
        self.workspace = Path(workspace)
        self.torrents = list(torrents)
        self.settings = settings
        self.state = state
        self.on_event, self.on_snapshot = on_event, on_snapshot
        self.resume = ResumeStore(self.workspace / layout.RESUME)
        self.session: lt.session | None = None
        self.report = SeedReport()
        self.status_url: str | None = None
        self._started = time.monotonic()
        self._by_handle: dict[lt.torrent_handle, _Tracked] = {}
        self._by_key: dict[str, _Tracked] = {}
        self._pending_adds: dict[str, SeedTorrent] = {}
        self._rechecked: set[str] = set()
        self._resume_buffer: dict[str, bytes] = {}
        self._resume_first = 0.0
        self._resume_outstanding: set[str] = set()
        self._listen: list[str] = []
        self._listen_failed: list[str] = []
        self._snapshot = SeedSnapshot(time.time(), 0.0, (), (), (), 0)
        self._lock = threading.Lock()
        self._next_snapshot = self._next_db = 0.0
        self._next_resume = time.monotonic() + settings.resume_interval
        self._dirty: set[str] = set()

    @property
    def added(self) -> int:
        """Torrents in the session."""
        return len(self._by_key)

    def handles(self) -> dict[str, lt.torrent_handle]:
        """info-hash -> libtorrent handle of every torrent in the session."""
        return {key: tracked.handle for key, tracked in self._by_key.items()}

    # ---- start --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the session, make sure it listens, and add every torrent whose files check out."""
        self._started = time.monotonic()
        params = lt.session_params()
        params.settings = self.settings.session_settings()
        params.disk_io_constructor = DISK_IO
        self.session = lt.session(params)
        self._wait_listening()
        ready, problems = check_files(self.torrents)
        self.report.not_added.extend(problems)
        uploaded = self.state.seed_uploaded() if self.state is not None else {}
        t0 = time.monotonic()
        for i in range(0, len(ready), self.settings.batch_size):
            self._add_batch(ready[i : i + self.settings.batch_size], uploaded)
        self.report.torrents = len(self._by_key)
        self._record_not_added(problems)
        self.on_event(
            TorrentsLoaded(
                len(self._by_key),
                self.report.resumed,
                self.report.fresh,
                tuple(self.report.not_added),
                time.monotonic() - t0,
            )
        )
        self.session.post_torrent_updates()

    def _wait_listening(self, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        settle = None
        while time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            for a in self.session.pop_alerts():
                if isinstance(a, lt.listen_succeeded_alert):
                    if a.socket_type == lt.socket_type_t.tcp:
                        self._listen.append(
                            f"{a.address}:{a.port}" if ":" not in a.address else f"[{a.address}]:{a.port}"
                        )
                elif isinstance(a, lt.listen_failed_alert):
                    self._listen_failed.append(f"{a.listen_interface()}: {a.error.message()}")
            if (self._listen or self._listen_failed) and settle is None:
                settle = time.monotonic() + 0.3  # the other interfaces report within moments
            if settle is not None and time.monotonic() > settle:
                break
        if not self._listen:
            self._shutdown_session()
            raise ListenError(self.settings.listen, self._listen_failed)
        self.on_event(Listening(tuple(self._listen), tuple(self._listen_failed), self.status_url))

    def _params(self, t: SeedTorrent, uploaded: dict[str, int]) -> lt.add_torrent_params:
        fresh = lt.load_torrent_file(str(t.torrent))
        params = None
        data = self.resume.load(t.key)
        if data:
            try:
                params = lt.read_resume_data(data)
            except RuntimeError as e:
                self.on_event(Notice(f"{t.name}: unreadable resume data ({e}); seeding it in seed mode"))
            else:
                if _hash_key(params.info_hashes) != _hash_key(fresh.ti.info_hashes()):
                    params = None
        if params is None:
            params = fresh
            params.flags |= lt.torrent_flags.seed_mode
            params.total_uploaded = uploaded.get(t.key, 0)
            self.report.fresh += 1
        else:
            # The trackers of the current .torrent, not those saved with the resume data: `packager torrent`
            # may have rewritten them. (Resume data with trackers also sets the deprecated override_trackers
            # flag, under which libtorrent ignores the .torrent's list.) A seeder has no use for web seeds.
            params.trackers, params.tracker_tiers = fresh.trackers, fresh.tracker_tiers
            params.url_seeds = []
            params.ti = fresh.ti
            self.report.resumed += 1
        params.save_path = str(t.data.parent)
        params.flags &= ~_CLEARED_FLAGS
        return params

    def _add_batch(
        self, batch: Sequence[SeedTorrent], uploaded: dict[str, int], seconds: float = 120.0
    ) -> None:
        for t in batch:
            try:
                params = self._params(t, uploaded)
            except RuntimeError as e:
                self._fault(t, f"{t.torrent}: cannot load: {e}", added=False)
                continue
            self._pending_adds[t.key] = t
            self.session.async_add_torrent(params)
        deadline = time.monotonic() + seconds
        while self._pending_adds and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            self._drain()
        for key, t in list(self._pending_adds.items()):
            self._fault(t, f"libtorrent did not confirm the add within {seconds:.0f} s", added=False)
            del self._pending_adds[key]

    # ---- the loop -----------------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, duration: float | None = None) -> None:
        """Seed until `stop` is set or `duration` seconds have passed."""
        stop = stop or threading.Event()
        end = None if duration is None else time.monotonic() + duration
        while not stop.is_set() and (end is None or time.monotonic() < end):
            self.step()

    def step(self, wait_ms: int = 200) -> None:
        """Handle the alerts that arrive within `wait_ms`, then do whatever periodic work is due."""
        self.session.wait_for_alert(wait_ms)
        self._drain()
        now = time.monotonic()
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.snapshot_interval
            self.session.post_torrent_updates()
        if now >= self._next_resume:
            self._next_resume = now + self.settings.resume_interval
            self.save_resume(only_if_modified=True)
        if self._resume_buffer and now - self._resume_first >= self.resume_flush_delay:
            self._flush_resume()
        if now >= self._next_db:
            self._next_db = now + self.db_interval
            self._flush_db()

    def _drain(self) -> None:
        for a in self.session.pop_alerts():
            self._on_alert(a)

    def _on_alert(self, a: lt.alert) -> None:
        if isinstance(a, lt.state_update_alert):
            for st in a.status:
                tracked = self._by_handle.get(st.handle)
                if tracked is not None:
                    tracked.status = st
                    self._dirty.add(tracked.torrent.key)
            self._publish_snapshot()
            return
        if isinstance(a, lt.add_torrent_alert):
            self._on_added(a)
            return
        if isinstance(a, lt.listen_failed_alert):
            self.on_event(Notice(f"listen failed: {a.listen_interface()}: {a.error.message()}"))
            return
        if isinstance(a, lt.alerts_dropped_alert):
            self.on_event(Notice("libtorrent dropped alerts: its queue was full"))
            return
        if not isinstance(a, lt.torrent_alert):
            return
        tracked = self._by_handle.get(a.handle)
        if tracked is None:
            return
        key = tracked.torrent.key
        if isinstance(a, lt.save_resume_data_alert):
            self._resume_outstanding.discard(key)
            if not self._resume_buffer:
                self._resume_first = time.monotonic()
            self._resume_buffer[key] = lt.write_resume_data_buf(a.params)
            tracked.uploaded = max(tracked.uploaded, a.params.total_uploaded)
            self._dirty.add(key)
        elif isinstance(a, lt.save_resume_data_failed_alert):
            self._resume_outstanding.discard(key)
            if a.error.value() != _RESUME_NOT_MODIFIED:
                self.report.resume_failed += 1
                self.on_event(Notice(f"{tracked.torrent.name}: resume data not saved: {a.error.message()}"))
        elif isinstance(a, lt.tracker_reply_alert):
            tracked.replies += 1
            tracked.last_reply_at, tracked.last_reply_peers = _now_text(), a.num_peers
            tracked.tracker_error = None
            tracked.tracker = f"{a.num_peers} peers from {a.tracker_url()}"
            self._dirty.add(key)
        elif isinstance(a, lt.tracker_error_alert):
            reason = a.failure_reason() or a.error.message()
            tracked.tracker_error, tracked.tracker_error_at = f"{a.tracker_url()}: {reason}", _now_text()
            tracked.tracker = f"error: {reason}"
            self._dirty.add(key)
        elif isinstance(a, lt.file_error_alert):
            # libtorrent pauses the torrent itself; pausing again makes that explicit and harmless.
            tracked.handle.pause()
            if tracked.error is None:
                self._fault(tracked.torrent, f"{a.filename()}: {a.error.message()}")
        elif isinstance(a, lt.torrent_error_alert):
            if tracked.error is None:
                self._fault(tracked.torrent, a.error.message())
        elif isinstance(a, lt.hash_failed_alert) and tracked.error is None:
            # In seed mode a piece is checked when first served; a mismatch means the file changed.
            self._fault(tracked.torrent, f"piece {a.piece_index} does not match its hash: the shard changed")
        elif isinstance(a, lt.state_changed_alert) and a.state == lt.torrent_status.states.checking_files:
            self._rechecked.add(key)

    def _on_added(self, a: lt.add_torrent_alert) -> None:
        ti = a.params.ti
        key = _hash_key(ti.info_hashes()) if ti is not None else _hash_key(a.params.info_hashes)
        t = self._pending_adds.pop(key, None)
        if t is None:
            return
        if a.error.value():
            self._fault(t, f"libtorrent refused it: {a.error.message()}", added=False)
            return
        tracked = _Tracked(t, a.handle, uploaded=a.params.total_uploaded)
        self._by_handle[a.handle] = tracked
        self._by_key[key] = tracked
        self._dirty.add(key)

    def _fault(self, t: SeedTorrent, reason: str, added: bool = True) -> None:
        fault = TorrentFault(t.name, t.key, reason)
        self.report.faults.append(fault)
        tracked = self._by_key.get(t.key)
        if tracked is not None:
            tracked.error, tracked.error_at = reason, _now_text()
            self._dirty.add(t.key)
        if not added:
            self.report.not_added.append(SeedProblem(t.name, t.key, reason))
        self.on_event(fault)

    # ---- snapshots ----------------------------------------------------------------------------------------

    def _view(self, tracked: _Tracked) -> TorrentView:
        t, st = tracked.torrent, tracked.status
        if st is None:
            return TorrentView(
                t.name, t.phase, t.key, "loading", 0, 0, tracked.uploaded, tracked.error, tracked.tracker
            )
        state = "error" if tracked.error else _state_label(st)
        return TorrentView(
            t.name,
            t.phase,
            t.key,
            state,
            st.num_peers,
            st.upload_payload_rate,
            max(st.all_time_upload, tracked.uploaded),
            tracked.error or (st.error or None),
            tracked.tracker,
        )

    def _publish_snapshot(self) -> None:
        snap = SeedSnapshot(
            at=time.time(),
            uptime=time.monotonic() - self._started,
            listen=tuple(self._listen),
            torrents=tuple(self._view(t) for t in self._by_key.values()),
            not_added=tuple(self.report.not_added),
            rechecked=len(self._rechecked),
            status_url=self.status_url,
        )
        with self._lock:
            self._snapshot = snap
        self.on_snapshot(snap)

    def snapshot(self) -> SeedSnapshot:
        """The latest snapshot; safe to call from any thread (the status server does)."""
        with self._lock:
            return self._snapshot

    # ---- persistence --------------------------------------------------------------------------------------

    def save_resume(self, only_if_modified: bool) -> int:
        """Ask libtorrent for the resume data of every torrent; the alerts bring it in. The number asked."""
        flags = lt.save_resume_flags_t.only_if_modified if only_if_modified else 0
        asked = 0
        for key, tracked in self._by_key.items():
            if tracked.handle.is_valid():
                tracked.handle.save_resume_data(flags)
                self._resume_outstanding.add(key)
                asked += 1
        return asked

    def _flush_resume(self) -> None:
        items, self._resume_buffer = self._resume_buffer, {}
        try:
            self.resume.save_many(items)
        except OSError as e:
            self.report.resume_failed += len(items)
            self.on_event(Notice(f"{self.resume.folder}: cannot write resume data: {e.strerror or e}"))
        else:
            self.report.resume_saved += len(items)

    def _status_rows(self, keys: Iterable[str]) -> list[SeedStatusRow]:
        now = _now_text()
        rows = []
        for key in keys:
            tracked = self._by_key.get(key)
            if tracked is None:
                continue
            view = self._view(tracked)
            rows.append(
                SeedStatusRow(
                    info_hash=key,
                    shard_id=tracked.torrent.shard_id,
                    state=view.state,
                    uploaded=view.uploaded,
                    peers=view.peers,
                    tracker_replies=tracked.replies,
                    last_reply_at=tracked.last_reply_at,
                    last_reply_peers=tracked.last_reply_peers,
                    tracker_error=tracked.tracker_error,
                    tracker_error_at=tracked.tracker_error_at,
                    error=tracked.error,
                    error_at=tracked.error_at,
                    updated_at=now,
                )
            )
            tracked.replies = 0
            tracked.last_reply_at = tracked.tracker_error_at = None
        return rows

    def _flush_db(self) -> None:
        if self.state is None or not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        rows = self._status_rows(keys)
        with self.state.transaction():
            self.state.record_seed_status(rows)

    def _record_not_added(self, problems: Iterable[SeedProblem]) -> None:
        if self.state is None:
            return
        shard_of = {t.key: t.shard_id for t in self.torrents}
        now = _now_text()
        rows = [
            SeedStatusRow(
                p.info_hash,
                shard_of.get(p.info_hash, 0),
                "not added",
                0,
                0,
                error=p.reason,
                error_at=now,
                updated_at=now,
            )
            for p in problems
            if p.info_hash
        ]
        with self.state.transaction():
            self.state.record_seed_status(rows)

    # ---- shutdown -----------------------------------------------------------------------------------------

    def close(self) -> SeedReport:
        """Save every torrent's resume data (waiting at most shutdown_timeout), record the totals, and close
        the session. Safe to call twice."""
        if self.session is None:
            return self.report
        t0 = time.monotonic()
        self.session.pause()
        self.save_resume(only_if_modified=False)
        deadline = t0 + self.settings.shutdown_timeout
        while self._resume_outstanding and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            self._drain()
        missing = len(self._resume_outstanding)
        if missing:
            self.report.resume_failed += missing
            self.on_event(
                Notice(
                    f"resume data of {missing} torrents not received in "
                    f"{self.settings.shutdown_timeout:g} s; they resume from older data"
                )
            )
        self._flush_resume()
        self._dirty.update(self._by_key)
        self._flush_db()
        self.report.uploaded = sum(self._view(t).uploaded for t in self._by_key.values())
        self.report.seconds = time.monotonic() - self._started
        self._shutdown_session()
        self.on_event(Stopped(self.report.resume_saved, self.report.resume_failed, time.monotonic() - t0))
        return self.report

    def _shutdown_session(self) -> None:
        session, self.session = self.session, None
        self._by_handle.clear()
        for tracked in self._by_key.values():
            tracked.status = None
        del session  # the destructor joins libtorrent's threads after the `stopped` announces


# ---- the status port --------------------------------------------------------------------------------------


class StatusServer:
    """GET http://127.0.0.1:PORT/ answers the latest snapshot as JSON; /summary the same without the list of
    torrents (a few hundred bytes whatever their number). Port 0 picks a free port."""

    def __init__(self, port: int, snapshot: Callable[[], SeedSnapshot]):
        get = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
                path = self.path.split("?")[0]
                if path not in ("/", "/status", "/summary"):
                    self.send_error(404)
                    return
                body = json.dumps(get().as_dict(torrents=path != "/summary")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # the library never prints
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            raise EnvironmentProblem(
                f"127.0.0.1:{port}: cannot serve the status: {e.strerror or e}",
                hint="choose another --status-port",
            ) from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="seed-status", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---- one call for the CLI ---------------------------------------------------------------------------------


def seed(
    ws: Workspace,
    phases: Sequence[str] | None = None,
    settings: SeedSettings | None = None,
    *,
    stop: threading.Event | None = None,
    duration: float | None = None,
    status_port: int | None = None,
    on_event: Callable[[SeedEvent], None] = lambda e: None,
    on_snapshot: Callable[[SeedSnapshot], None] = lambda s: None,
) -> SeedReport:
    """Seed the published torrents of `phases` (default: all published) until `stop` or `duration`.

    WorkspaceError when no torrent can be seeded; ListenError or EnvironmentProblem for ports in use.
    """
    settings = settings or load_seed_settings(ws.path)
    torrents = published_torrents(ws, phases)
    seeder = Seeder(ws.path, torrents, settings, state=ws.state, on_event=on_event, on_snapshot=on_snapshot)
    server = StatusServer(status_port, seeder.snapshot) if status_port is not None else None
    try:
        if server is not None:
            seeder.status_url = server.url
        seeder.start()
        if not seeder.added:
            problems = [f"{p.name}: {p.reason}" for p in seeder.report.not_added]
            raise WorkspaceError(
                f"nothing to seed: none of the {len(torrents)} published torrents can be added:\n  "
                + "\n  ".join(problems[:20]),
                hint="rebuild the missing shards with `packager build DIR`",
            )
        seeder.run(stop, duration)
    finally:
        with contextlib.suppress(Exception):
            if server is not None:
                server.close()
        report = seeder.close()
    return report
