"""release.toml -> typed, validated, frozen dataclasses.

Every value is checked when the file is loaded, and a bad one is reported with its key (``phases[2].level``)
and what is allowed, so a release engineer never learns about a typo from a half-built shard.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import layout
from .errors import ConfigError, UsageError
from .units import FORMATS, PIECE_SIZE_MAX, PIECE_SIZE_MIN, parse_size

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
RELEASE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._]*$")
# zstd's fastest negative level through its strongest ultra level.
LEVEL_MIN, LEVEL_MAX = -7, 22
# The seek table stores each frame's decompressed size as a u32; 1 GiB keeps far inside it.
FRAME_SIZE_MIN, FRAME_SIZE_MAX = 64 * 1024, 1 << 30
# Tar members carry mtime in an 11-digit octal ustar field: up to the year 2242.
USTAR_MTIME_LIMIT = 8**11
# Dask's comm schemes with a host and a port (inproc:// is in-process only, useless to a CLI).
SCHEDULER_RE = re.compile(
    r"^(tcp|tls|ws|wss|ucx)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$"
)

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> int:
    """'30d' -> 2592000 seconds ('90m', '12h', '2w'; a bare int is seconds). ValueError on anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _DURATION_RE.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


@dataclass(frozen=True)
class Tier:
    name: str
    min_popularity: float | None = None  # inclusive
    max_popularity: float | None = None  # exclusive

    def admits(self, popularity: float) -> bool:
        return (self.min_popularity is None or popularity >= self.min_popularity) and (
            self.max_popularity is None or popularity < self.max_popularity
        )


@dataclass(frozen=True)
class Phase:
    name: str
    kinds: tuple[str, ...]
    tiers: tuple[Tier, ...]
    shard_size: int
    level: int
    frame_size: int
    format: str = "v1"
    piece_size: int | None = None  # None: the automatic rule
    min_popularity: float | None = None
    max_popularity: float | None = None

    @property
    def tiered(self) -> bool:
        return len(self.tiers) > 1 or self.tiers[0].name != ""

    def shard_name(self, release: str, tier: str, seq: int) -> str:
        parts = [release, self.name] + ([tier] if tier else []) + [f"{seq:05d}"]
        return "-".join(parts)


def check_scheduler_address(address: str) -> str:
    """A Dask scheduler address ``tcp://HOST:PORT`` (or tls://, ws://, wss://, ucx://); ValueError if not."""
    match = SCHEDULER_RE.match(address)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"{address!r} is not a Dask scheduler address")
    return address


@dataclass(frozen=True)
class BuildSettings:
    """``[build]``: where shards are built. No scheduler: the local process pool."""

    scheduler: str | None = None  # tcp://HOST:PORT of a Dask distributed scheduler
    connect_timeout: float = 10.0  # seconds to reach the scheduler, and the longest it may have no workers
    retries: int = 2  # extra tries of a shard whose attempt raised (worker deaths: the scheduler's own count)


@dataclass(frozen=True)
class ReleaseConfig:
    path: Path
    name: str
    root: Path
    mtime: int
    phases: tuple[Phase, ...]
    trackers: tuple[tuple[str, ...], ...] = ()
    web_seeds: tuple[str, ...] = ()
    private: bool = False
    source: str | None = None
    creation_date: int | None = None
    base_url: str = ""
    signing_key: Path | None = None
    seed: SeedSettings = field(default_factory=lambda: SeedSettings())
    valid_for: int | None = None  # seconds a publication statement stays valid (its valid_until); None: ever
    build: BuildSettings = BuildSettings()

    @property
    def kinds(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for phase in self.phases:
            seen.update(dict.fromkeys(phase.kinds))
        return tuple(seen)

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise ConfigError(
            self.path, "phases", f"no phase named {name!r}", allowed=", ".join(p.name for p in self.phases)
        )


# ---- [seed]: how `packager seed` runs its libtorrent session ----------------------------------------------

CHOKERS = ("round_robin", "fastest_upload", "anti_leech")
DEFAULT_LISTEN = "0.0.0.0:6881,[::]:6881"


@dataclass(frozen=True)
class SeedSettings:
    """How the session runs: release.toml's [seed] table, then command-line flags. Checked on creation, except
    the names in `libtorrent`, which only libtorrent knows: seed/session.py checks them making the session."""

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
    origin: Path | None = field(default=None, compare=False)  # the release.toml they came from, for messages

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
        for name, value in self.libtorrent:
            if not isinstance(name, str) or not isinstance(value, bool | int | str):
                raise UsageError(f"libtorrent setting {name}={value!r}: expected a boolean, number or string")

    def with_overrides(self, **flags) -> SeedSettings:
        """A copy with every flag that is not None applied (the command line wins over release.toml)."""
        given = {k: v for k, v in flags.items() if v is not None}
        if "libtorrent" in given:
            given["libtorrent"] = (*self.libtorrent, *given["libtorrent"])
        return replace(self, **given)


_SEED_KEYS = {
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


def _seed_settings(table: Any, file: Path) -> SeedSettings:
    """SeedSettings from release.toml's [seed] table; ConfigError names the key."""
    if not isinstance(table, dict):
        raise ConfigError(file, "seed", "expected a [seed] table")
    values: dict = {}
    for key, raw in table.items():
        if key not in _SEED_KEYS:
            raise ConfigError(file, f"seed.{key}", "unknown key", ", ".join(sorted(_SEED_KEYS)))
        kind = _SEED_KEYS[key]
        if not isinstance(raw, kind) or (isinstance(raw, bool) and kind is not bool):
            raise ConfigError(file, f"seed.{key}", f"{raw!r} has the wrong type")
        values[key] = raw
    try:
        if "upload_limit" in values:
            values["upload_limit"] = parse_size(values["upload_limit"])
        if "libtorrent" in values:
            values["libtorrent"] = tuple(values["libtorrent"].items())
        return SeedSettings(**values, origin=file)
    except ValueError as e:
        raise ConfigError(file, "seed.upload_limit", str(e), "bytes per second, e.g. 50MB") from None
    except UsageError as e:
        raise ConfigError(file, "seed", e.message) from None


class _Reader:
    """Pulls typed values out of a TOML table, naming the key in every error."""

    def __init__(self, file: Path, table: dict[str, Any], prefix: str):
        self.file, self.table, self.prefix = file, table, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str, allowed: str | None = None) -> ConfigError:
        return ConfigError(self.file, self.key(name), reason, allowed)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., allowed: str | None = None):
        if name not in self.table:
            if default is ...:
                raise self.fail(name, "missing", allowed)
            return default
        value = self.table[name]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(name, f"expected a number, got {value!r}", allowed)
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(name, f"expected {want}, got {value!r}", allowed)
        return value

    def size(self, name: str, default: Any = ..., lo: int = 1, hi: int | None = None) -> int:
        raw = self.get(name, (str, int), default)
        try:
            value = parse_size(raw)
        except ValueError:
            raise self.fail(name, f"not a size: {raw!r}", "a number of bytes or e.g. 50GB, 16MiB") from None
        if value < lo or (hi is not None and value > hi):
            top = f" and at most {hi} bytes" if hi else ""
            raise self.fail(name, f"{raw!r} is out of range", f"at least {lo} bytes{top}")
        return value

    def popularity(self, name: str) -> float | None:
        value = self.get(name, (int, float), None)
        if value is not None and not math.isfinite(value):
            raise self.fail(name, f"not a finite number: {value!r}")
        return None if value is None else float(value)

    def unknown_keys(self, known: set[str]) -> None:
        extra = sorted(set(self.table) - known)
        if extra:
            raise self.fail(extra[0], "unknown key", ", ".join(sorted(known)))


def _piece_size(reader: _Reader) -> int | None:
    raw = reader.get("piece_size", (str, int), "auto")
    if raw == "auto":
        return None
    try:
        value = parse_size(raw)
    except ValueError:
        value = -1
    if value < PIECE_SIZE_MIN or value > PIECE_SIZE_MAX or value & (value - 1):
        raise reader.fail(
            "piece_size", f"{raw!r} is not allowed", '"auto" or a power of two from 16KiB to 64MiB'
        )
    return value


def _range(reader: _Reader) -> tuple[float | None, float | None]:
    lo, hi = reader.popularity("min_popularity"), reader.popularity("max_popularity")
    if lo is not None and hi is not None and lo >= hi:
        raise reader.fail("max_popularity", f"{hi:g} is not above min_popularity {lo:g}")
    return lo, hi


def _tiers(file: Path, raw: Any, prefix: str) -> tuple[Tier, ...]:
    if raw is None:
        return (Tier(""),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(file, prefix, "expected a non-empty list of [[phases.tiers]] tables")
    tiers, names = [], set()
    for i, table in enumerate(raw):
        r = _Reader(file, table, f"{prefix}[{i}]")
        r.unknown_keys({"name", "min_popularity", "max_popularity"})
        name = r.get("name", str)
        if not NAME_RE.match(name) or name in names:
            raise r.fail(
                "name", f"{name!r} is invalid or repeated", "a unique name of lowercase letters, digits and _"
            )
        names.add(name)
        tiers.append(Tier(name, *_range(r)))
    return tuple(tiers)


def _phase(file: Path, table: Any, index: int) -> Phase:
    prefix = f"phases[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(file, prefix, "expected a [[phases]] table")
    r = _Reader(file, table, prefix)
    r.unknown_keys(
        {
            "name",
            "kinds",
            "tiers",
            "shard_size",
            "level",
            "frame_size",
            "format",
            "piece_size",
            "min_popularity",
            "max_popularity",
        }
    )
    name = r.get("name", str)
    if not NAME_RE.match(name):
        raise r.fail("name", f"{name!r} is not a valid phase name", "lowercase letters, digits and _")
    kinds = r.get("kinds", list)
    if not kinds or not all(isinstance(k, str) and NAME_RE.match(k) for k in kinds):
        raise r.fail(
            "kinds",
            f"{kinds!r} is not a list of kind names",
            'a non-empty list such as ["audio"] (lowercase letters, digits and _)',
        )
    level = r.get("level", int, 3)
    if not LEVEL_MIN <= level <= LEVEL_MAX:
        raise r.fail("level", f"{level} is out of range", f"an integer from {LEVEL_MIN} to {LEVEL_MAX}")
    fmt = r.get("format", str, "v1")
    if fmt not in FORMATS:
        raise r.fail("format", f"{fmt!r} is not a torrent format", ", ".join(FORMATS))
    lo, hi = _range(r)
    return Phase(
        name=name,
        kinds=tuple(kinds),
        tiers=_tiers(file, table.get("tiers"), f"{prefix}.tiers"),
        shard_size=r.size("shard_size"),
        level=level,
        frame_size=r.size("frame_size", 16 * 2**20, FRAME_SIZE_MIN, FRAME_SIZE_MAX),
        format=fmt,
        piece_size=_piece_size(r),
        min_popularity=lo,
        max_popularity=hi,
    )


def _url_parses(url: str) -> bool:
    """Whether urlsplit takes it, host and port too: an unclosed [ or a port over 65535 is its ValueError
    (a traceback in build, torrent and health)."""
    try:
        parts = urlsplit(url)
        return parts.hostname is not None and (parts.port is None or parts.port > 0)
    except ValueError:
        return False


def _trackers(r: _Reader) -> tuple[tuple[str, ...], ...]:
    raw = r.get("trackers", list, [])
    tiers = []
    for tier in raw:
        urls = [tier] if isinstance(tier, str) else tier
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise r.fail("trackers", f"{tier!r} is not a tracker URL or a list of them")
        for url in urls:
            if not re.match(r"^(https?|udp)://[^/\s]+", url) or not _url_parses(url):
                raise r.fail("trackers", f"{url!r} is not a tracker URL", "http://, https:// or udp:// URLs")
        if urls:
            tiers.append(tuple(urls))
    return tuple(tiers)


def _web_seeds(r: _Reader) -> tuple[str, ...]:
    seeds = r.get("web_seeds", list, [])
    for url in seeds:
        # Each torrent's url-list entry is this folder URL + its shard's file name (torrent.web_seed_url).
        if (
            not isinstance(url, str)
            or not re.match(r"^https?://[^/\s?#]+[^\s?#]*$", url)
            or not _url_parses(url)
        ):
            raise r.fail(
                "web_seeds",
                f"{url!r} is not a web seed URL",
                "http:// or https:// URLs of the folder serving the shard files, without ? or #",
            )
    return tuple(seeds)


def _build_settings(r: _Reader) -> BuildSettings:
    r.unknown_keys({"scheduler", "connect_timeout", "retries"})
    scheduler = r.get("scheduler", str, None) or None
    if scheduler is not None:
        try:
            check_scheduler_address(scheduler)
        except ValueError:
            raise r.fail(
                "scheduler", f"{scheduler!r} is not a Dask scheduler address", '"tcp://HOST:PORT"'
            ) from None
    timeout = r.get("connect_timeout", (int, float), 10)
    if not 0 < timeout <= 3600:
        raise r.fail("connect_timeout", f"{timeout} is out of range", "seconds, above 0 and at most 3600")
    retries = r.get("retries", int, 2)
    if not 0 <= retries <= 100:
        raise r.fail("retries", f"{retries} is out of range", "an integer from 0 to 100")
    return BuildSettings(scheduler=scheduler, connect_timeout=float(timeout), retries=retries)


def parse_config(text: str, path: Path) -> ReleaseConfig:
    """Parse and validate release.toml text; relative paths resolve against the file's folder."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", str(e)) from None
    top = _Reader(path, data, "")
    top.unknown_keys({"release", "torrents", "publish", "phases", "seed", "build"})
    seed = _seed_settings(data["seed"], path) if "seed" in data else SeedSettings(origin=path)
    rel = _Reader(path, top.get("release", dict), "release")
    rel.unknown_keys({"name", "root", "mtime", "creation_date"})
    name = rel.get("name", str)
    if not RELEASE_NAME_RE.match(name):
        raise rel.fail("name", f"{name!r} cannot start a file name", "letters, digits, '.' and '_'")
    root = Path(rel.get("root", str)).expanduser()
    if not root.is_absolute():
        root = path.parent / root
    tor = _Reader(path, top.get("torrents", dict, {}), "torrents")
    tor.unknown_keys({"trackers", "web_seeds", "private", "source"})
    build = _build_settings(_Reader(path, top.get("build", dict, {}), "build"))
    pub = _Reader(path, top.get("publish", dict, {}), "publish")
    pub.unknown_keys({"base_url", "signing_key", "valid_for"})
    key = pub.get("signing_key", str, None)
    valid_for = _valid_for(pub)
    phases_raw = top.get("phases", list)
    if not phases_raw:
        raise top.fail("phases", "at least one [[phases]] table is needed")
    phases = tuple(_phase(path, t, i) for i, t in enumerate(phases_raw))
    names = [p.name for p in phases]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(path, f"phases[{i}].name", f"phase {n!r} is defined twice")
    for label in ("mtime", "creation_date"):
        value = rel.get(label, int, None)
        if value is not None and not 0 <= value < USTAR_MTIME_LIMIT:
            raise rel.fail(
                label, f"{value} is out of range", f"Unix seconds from 0 to {USTAR_MTIME_LIMIT - 1}"
            )
    return ReleaseConfig(
        path=path,
        name=name,
        root=root,
        mtime=rel.get("mtime", int, 0),
        creation_date=rel.get("creation_date", int, None),
        phases=phases,
        trackers=_trackers(tor),
        web_seeds=_web_seeds(tor),
        private=tor.get("private", bool, False),
        source=tor.get("source", str, "") or None,
        base_url=pub.get("base_url", str, ""),
        signing_key=Path(os.path.normpath(path.parent / Path(key).expanduser())) if key else None,
        seed=seed,
        valid_for=valid_for,
        build=build,
    )


def _valid_for(pub: _Reader) -> int | None:
    raw = pub.get("valid_for", (str, int), None)
    if raw is None:
        return None
    try:
        seconds = parse_duration(raw)
    except ValueError:
        raise pub.fail("valid_for", f"not a duration: {raw!r}", "e.g. 30d, 12h, 2w") from None
    if not 3600 <= seconds <= 100 * 365 * 86400:
        raise pub.fail("valid_for", f"{raw!r} is out of range", "from 1h to 100 years")
    return seconds


def load_config(workspace: Path) -> ReleaseConfig:
    path = Path(workspace) / layout.CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path,
            "(file)",
            "not found: is this a release workspace?",
            allowed="a folder made by `packager init DIR --root ARCHIVE`",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, "(file)", f"cannot be read: {e}") from None
    return parse_config(text, path)


def default_config_text(name: str, root: Path) -> str:
    # Beside this module (package data), read as a file: importlib.resources cost every command 8-20 ms.
    template = (Path(__file__).parent / "release_template.toml").read_text(encoding="utf-8")
    root_text = str(root).replace("\\", "\\\\").replace('"', '\\"')
    return template.replace("{name}", name).replace("{root}", root_text)
