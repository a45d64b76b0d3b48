"""libtorrent, and only here: the settings pack, the checks of raw setting names, the listening session, and
the add parameters of each torrent (from its fast-resume data, or in seed mode).

Disk I/O. libtorrent 2.1 chooses its disk back end when the session is made, through
``session_params.disk_io_constructor``. The Python binding exposes that field as a write-only *string*:
"pread_disk_io_constructor", "posix_disk_io_constructor" or "mmap_disk_io_constructor"; anything else (and
the getter, which always answers "default_disk_io_constructor") means the default, which on 64-bit Linux is
mmap. We ask for pread: 2.1's pread back end reads with pread(2) into its own bounded buffers, so thousands of
multi-GB shards are not mapped into our address space and RSS stays what we allocate (the tests check
/proc/self/maps). The setting ``mmap_file_size_cutoff`` only concerns the mmap back end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import libtorrent as lt

from ..config import SeedSettings
from ..errors import ConfigError, ListenError, UsageError
from .resume import ResumeStore
from .selection import SeedTorrent

DISK_IO = "pread_disk_io_constructor"
ALERTS = (
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
RESUME_NOT_MODIFIED = 143  # libtorrent's errors::resume_data_not_modified
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


_SETTINGS_DOC = "the names and types of https://www.libtorrent.org/reference-Settings.html"


def _raw_settings(settings: SeedSettings) -> dict:
    """The [seed.libtorrent] table and --lt flags, checked; a bad one from release.toml is a ConfigError
    naming `seed.libtorrent.NAME` (flags were checked as they were parsed)."""
    checked = {}
    for name, value in settings.libtorrent:
        try:
            checked.update([check_libtorrent_setting(name, value)])
        except UsageError as e:
            if settings.origin is None:
                raise
            raise ConfigError(settings.origin, f"seed.libtorrent.{name}", e.message, _SETTINGS_DOC) from None
    return checked


def session_settings(settings: SeedSettings) -> dict:
    """The settings_pack: high_performance_seed(), our choices over it, then the raw overrides."""
    pack = lt.high_performance_seed()
    pack.update(
        {
            "listen_interfaces": settings.listen,
            "upload_rate_limit": settings.upload_limit,
            "connections_limit": settings.connections_limit,
            "unchoke_slots_limit": settings.upload_slots,
            "enable_dht": settings.dht,
            "enable_lsd": settings.lsd,
            "enable_upnp": settings.port_mapping,
            "enable_natpmp": settings.port_mapping,
            "seed_choking_algorithm": int(lt.seed_choking_algorithm_t.names[settings.seed_choking]),
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
            "alert_mask": ALERTS,
            # A state_update_alert a second may list every torrent; room for bursts of tracker replies.
            "alert_queue_size": 200_000,
            # A shutdown waits this long for `stopped` announces.
            "stop_tracker_timeout": 3,
        }
    )
    pack.update(_raw_settings(settings))
    return pack


# ---- the session ------------------------------------------------------------------------------------------


def open_session(settings: SeedSettings, seconds: float = 10.0) -> tuple[lt.session, list[str], list[str]]:
    """A session on pread disk I/O that listens: (session, TCP endpoints, interfaces that failed).
    ListenError, the session closed, when no interface could be opened."""
    params = lt.session_params()
    params.settings = session_settings(settings)
    params.disk_io_constructor = DISK_IO
    session = lt.session(params)
    listen: list[str] = []
    failed: list[str] = []
    deadline = time.monotonic() + seconds
    settle = None
    while time.monotonic() < deadline:
        session.wait_for_alert(100)
        for a in session.pop_alerts():
            if isinstance(a, lt.listen_succeeded_alert):
                if a.socket_type == lt.socket_type_t.tcp:
                    listen.append(
                        f"{a.address}:{a.port}" if ":" not in a.address else f"[{a.address}]:{a.port}"
                    )
            elif isinstance(a, lt.listen_failed_alert):
                failed.append(f"{a.listen_interface()}: {a.error.message()}")
        if (listen or failed) and settle is None:
            settle = time.monotonic() + 0.3  # the other interfaces report within moments
        if settle is not None and time.monotonic() > settle:
            break
    if not listen:
        del session  # the destructor joins libtorrent's threads
        raise ListenError(settings.listen, failed)
    return session, listen, failed


def add_params(
    t: SeedTorrent, resume: ResumeStore, uploaded: dict[str, int], notice: Callable[[str], None]
) -> tuple[lt.add_torrent_params, bool]:
    """(add_torrent_params, whether they come from fast-resume data) for one torrent. RuntimeError if its
    .torrent cannot be loaded."""
    fresh = lt.load_torrent_file(str(t.torrent))
    params = None
    data = resume.load(t.key)
    if data:
        try:
            params = lt.read_resume_data(data)
        except RuntimeError as e:
            notice(f"{t.name}: unreadable resume data ({e}); seeding it in seed mode")
        else:
            if hash_key(params.info_hashes) != hash_key(fresh.ti.info_hashes()):
                params = None
    resumed = params is not None
    if params is None:
        params = fresh
        params.flags |= lt.torrent_flags.seed_mode
        params.total_uploaded = uploaded.get(t.key, 0)
    else:
        # The trackers of the current .torrent, not those saved with the resume data: `packager torrent`
        # may have rewritten them. (Resume data with trackers also sets the deprecated override_trackers
        # flag, under which libtorrent ignores the .torrent's list.) A seeder has no use for web seeds.
        params.trackers, params.tracker_tiers = fresh.trackers, fresh.tracker_tiers
        params.url_seeds = []
        params.ti = fresh.ti
    params.save_path = str(t.data.parent)
    params.flags &= ~_CLEARED_FLAGS
    return params, resumed


def hash_key(hashes: lt.info_hash_t) -> str:
    return str(hashes.v1) if hashes.has_v1() else str(hashes.v2)


def state_label(st: lt.torrent_status) -> str:
    if st.errc.value():
        return "error"
    if st.paused:
        return "paused"
    return _STATE_NAMES.get(st.state, str(st.state))
