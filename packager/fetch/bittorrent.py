"""Fetching through the swarm: one libtorrent session, each torrent added with every piece at priority 0
but those holding the members' frames, which get deadlines (set_piece_deadline, alert_when_available: each
arrives as a read_piece_alert once libtorrent has checked it against the .torrent's SHA-1). Pieces are
written to the fetch's spool; libtorrent's own storage is a sparse file in the fetch's temporary folder,
removed with it, so disk use stays at the pieces fetched. Peers come from the trackers (and the DHT when
enabled); web seeds are left out (HTTP is the other transport). A piece that fails its hash (a lying peer)
is refused by libtorrent, which bans the peer that sent bad blocks and fetches the piece again elsewhere;
each failure is counted. When pieces stop arriving, trackers are asked again every few seconds; after
`timeout` seconds without every piece, EnvironmentProblem (exit 3) says which pieces no peer sent. Peers
given by address (a seedbox of one's own) are dialled as well."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

from .. import layout
from ..errors import EnvironmentProblem, ListenError, UntrustedManifest, UsageError
from ..member_index import Location
from ..seed.session import DISK_IO, check_libtorrent_setting
from .work import Clock, Delivered, TorrentTransfer, Work, try_deliver

ALERTS = (
    lt.alert_category.error | lt.alert_category.status | lt.alert_category.tracker | lt.alert_category.storage
)
REANNOUNCE_SECONDS = 5.0  # without a new piece for this long, ask the trackers (and the DHT) again
DEADLINE_MS = 1000  # the first piece's deadline; the others follow it in shard order
_DEBUG = bool(os.environ.get("PACKAGER_FETCH_DEBUG"))  # every libtorrent alert as a note


@dataclass(frozen=True)
class SwarmSettings:
    listen: str = "0.0.0.0:0,[::]:0"
    dht: bool = True
    timeout: float = 300.0
    libtorrent: tuple[tuple[str, object], ...] = ()  # raw settings, checked
    peers: tuple[tuple[str, int], ...] = ()  # (host, port) of peers to dial besides those the trackers give


def parse_peer(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT from the command line."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--peer {text!r}: expected HOST:PORT", hint="e.g. --peer 192.0.2.7:6881")
    return host, int(port)


class NoPeers(EnvironmentProblem):
    """No peer sent the pieces in time."""

    def __init__(self, what: list[str], seconds: float):
        self.what, self.seconds = what, seconds
        super().__init__(
            f"no peer sent the pieces within {seconds:g} s: " + "; ".join(what),
            hint="the torrents may have no seeders now: try again later or with a longer --timeout, use "
            "--via http with a mirror's URL or web seed, or see who seeds them (packager health)",
        )


@dataclass
class _Wanted:
    """One torrent in the session: the pieces it needs and the members waiting for them."""

    handle: lt.torrent_handle
    transfer: TorrentTransfer
    members: list[Location]
    pieces: set[int]
    got: set[int] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    clock: Clock = field(default_factory=Clock)
    peers_seen: int = 0


def _settings(s: SwarmSettings) -> dict:
    pack = {
        "listen_interfaces": s.listen,
        "enable_dht": s.dht,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": ALERTS,
        "stop_tracker_timeout": 1,
        # Announce to every tracker of every tier: the more peers, the sooner the pieces come.
        "announce_to_all_tiers": True,
        "announce_to_all_trackers": True,
        # libtorrent waits min_reconnect_time (60 s) after any connection to a peer before it dials that peer
        # again. The member index's torrent is added with no piece wanted, so it is "finished" and drops the
        # seeds it meets; the first read then wants a piece, and the one seeder it knew stays out of reach
        # for 60 s (the fetch-swarm test's load-dependent 60 s stall, when the read came after that drop).
        "min_reconnect_time": 2,
    }
    pack.update(dict(check_libtorrent_setting(k, v) for k, v in s.libtorrent))
    return pack


def _session(settings: SwarmSettings) -> lt.session:
    """A session that listens on some interface (every connection, outgoing too, goes through one): a
    --listen that opens none is ListenError at once, not --timeout seconds of "no peer sent the pieces"."""
    params = lt.session_params()
    params.settings = _settings(settings)
    params.disk_io_constructor = DISK_IO
    session = lt.session(params)
    failed: list[str] = []
    deadline = time.monotonic() + 5
    settle = None
    while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
        session.wait_for_alert(100)
        for a in session.pop_alerts():  # no torrent yet: only the session's own alerts are dropped
            if isinstance(a, lt.listen_succeeded_alert):
                return session
            if isinstance(a, lt.listen_failed_alert):
                failed.append(f"{a.listen_interface()}: {a.error.message()}")
                settle = settle or time.monotonic() + 0.3  # the other interfaces report within moments
    if failed:
        del session  # the destructor joins libtorrent's threads
        raise ListenError(settings.listen, failed)
    return session


def fetch_from_swarm(
    groups: list[tuple[TorrentTransfer, bytes, list[Location]]],
    work: Work,
    out_dir: Path,
    settings: SwarmSettings,
    note: Callable[[str], None],
) -> list[Delivered]:
    """Fetch the members of every (transfer, .torrent bytes, members) group through one session; each
    .torrent must be authenticated already. NoPeers if some pieces did not come in time."""
    session = _session(settings)
    wanted: list[_Wanted] = []
    delivered: list[Delivered] = []
    try:
        for transfer, metainfo, members in groups:
            wanted.append(_add(session, transfer, metainfo, members, work))
            _dial(wanted[-1].handle, settings)
        _run(session, wanted, work, out_dir, settings, note, delivered)
    finally:
        for w in wanted:
            st = w.handle.status()
            w.transfer.payload_download = st.total_payload_download
            w.transfer.bytes_fetched += st.total_payload_download
            session.remove_torrent(w.handle, lt.session.delete_files)
        session.pause()
        del session  # the destructor joins libtorrent's threads
    return delivered


def _add(
    session: lt.session, transfer: TorrentTransfer, metainfo: bytes, members: list[Location], work: Work
):
    p = lt.load_torrent_buffer(metainfo)
    pieces = {i for loc in members for i in range(loc.first_piece, loc.last_piece + 1)}
    p.url_seeds = []
    p.save_path = str(work.subfolder(f"bt-{transfer.torrent.n}"))
    p.storage_mode = lt.storage_mode_t.storage_mode_sparse
    p.piece_priorities = [7 if i in pieces else 0 for i in range(p.ti.num_pieces())]
    p.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused | lt.torrent_flags.seed_mode)
    handle = session.add_torrent(p)
    for k, piece in enumerate(sorted(pieces)):
        handle.set_piece_deadline(piece, DEADLINE_MS * (k + 1), lt.deadline_flags_t.alert_when_available)
    transfer.pieces = sorted(pieces)
    return _Wanted(handle, transfer, members, pieces)


def _run(session, wanted, work, out_dir, settings, note, delivered) -> None:
    by_hash = {_key(w.handle): w for w in wanted}
    deadline = time.monotonic() + settings.timeout
    last_progress = time.monotonic()
    while any(len(w.done) < len(w.members) for w in wanted):
        now = time.monotonic()
        if now > deadline:
            raise NoPeers([_missing(w) for w in wanted if len(w.done) < len(w.members)], settings.timeout)
        if now - last_progress > REANNOUNCE_SECONDS:
            for w in wanted:
                if w.pieces - w.got:
                    w.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
                    if settings.dht:
                        w.handle.force_dht_announce()
                    _dial(w.handle, settings)
            last_progress = now
        session.wait_for_alert(200)
        for a in session.pop_alerts():
            if _DEBUG:
                note(f"libtorrent: {type(a).__name__}: {a.message()}")
            w = by_hash.get(_key(a.handle)) if isinstance(a, lt.torrent_alert) else None
            if w is None:
                continue
            if isinstance(a, lt.read_piece_alert) and a.piece in w.pieces and a.piece not in w.got:
                if a.error.value():
                    note(
                        f"{w.transfer.torrent.name}: piece {a.piece} could not be read ({a.error.message()})"
                    )
                    w.handle.read_piece(a.piece)
                    continue
                work.spool(w.transfer.torrent).writer(a.piece * w.transfer.torrent.piece_size)(a.buffer)
                w.got.add(a.piece)
                last_progress = time.monotonic()
                _deliver_ready(w, work, out_dir, note, delivered)
            elif isinstance(a, lt.piece_finished_alert) and a.piece_index in w.pieces:
                w.handle.read_piece(a.piece_index)  # in case the deadline's alert was not asked in time
            elif isinstance(a, lt.hash_failed_alert):
                w.transfer.hash_failures += 1
                note(f"{w.transfer.torrent.name}: piece {a.piece_index} failed its SHA-1: refused")
            elif isinstance(a, lt.tracker_error_alert):
                w.transfer.refused.append(f"tracker {a.tracker_url()}: {a.error_message() or a.message()}")


def _dial(handle: lt.torrent_handle, settings: SwarmSettings) -> None:
    for peer in settings.peers:
        handle.connect_peer(peer)


def _key(handle: lt.torrent_handle) -> str:
    return str(handle.info_hashes().get_best())


def _deliver_ready(w: _Wanted, work: Work, out_dir: Path, note, delivered: list[Delivered]) -> None:
    label = f"{w.transfer.torrent.name} (swarm)"
    for loc in w.members:
        if loc.id in w.done or not set(range(loc.first_piece, loc.last_piece + 1)) <= w.got:
            continue
        written, why = try_deliver(loc, work.spool(w.transfer.torrent).fd, out_dir, label)
        w.done.add(loc.id)
        if written is None:
            # The pieces passed their SHA-1 against the authenticated .torrent, so the release itself is
            # inconsistent (its index and its shard disagree): nothing to fetch again.
            raise _Inconsistent(w.transfer.torrent.name, loc.id, why or "")
        size = w.transfer.torrent.piece_size * loc.pieces
        delivered.append(Delivered(loc, written, "bittorrent", label, size, w.clock.seconds()))


def _missing(w: _Wanted) -> str:
    missing = sorted(w.pieces - w.got)
    st = w.handle.status()
    shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
    trackers = "; ".join(w.transfer.refused[-2:])
    return (
        f"{w.transfer.torrent.name}: {len(missing)} of {len(w.pieces)} pieces missing ({shown}), "
        f"{st.num_peers} peers connected" + (f", {trackers}" if trackers else "")
    )


class _Inconsistent(EnvironmentProblem):
    exit_code = 1

    def __init__(self, torrent: str, ident: str, why: str):
        super().__init__(
            f"{torrent}: {ident}: its pieces passed their SHA-1 but are not the member the index describes "
            f"({why})",
            hint="the published index and shard disagree; tell the publisher",
        )


class SwarmPack:
    """The member index's pack read through its own torrent, for a source that does not hold the pack: the
    pieces covering each range asked are fetched (priorities and deadlines, as for a shard) and kept for
    the next range. The .torrent must have the info-hash the index root names (so its SHA-1s, and the
    pieces libtorrent checks with them, are those of the published pack)."""

    def __init__(self, metainfo: bytes, info_hash: str, work: Work, settings: SwarmSettings, note):
        params = lt.load_torrent_buffer(metainfo)
        got = str(params.ti.info_hashes().v1)
        if got != info_hash:
            raise UntrustedManifest(
                layout.MEMBER_INDEX_TORRENT, f"info-hash {got}, the member index root says {info_hash}"
            )
        self.settings, self.note = settings, note
        self.session = _session(settings)
        params.url_seeds = []
        params.save_path = str(work.subfolder("bt-index"))
        params.storage_mode = lt.storage_mode_t.storage_mode_sparse
        params.piece_priorities = [0] * params.ti.num_pieces()
        params.flags &= ~(
            lt.torrent_flags.auto_managed | lt.torrent_flags.paused | lt.torrent_flags.seed_mode
        )
        self.handle = self.session.add_torrent(params)
        self.piece_size = params.ti.piece_length()
        self.pieces: dict[int, bytes] = {}
        self.hash_failures = 0
        _dial(self.handle, settings)

    def read(self, offset: int, size: int) -> bytes:
        first, last = offset // self.piece_size, (offset + size - 1) // self.piece_size
        wanted = [p for p in range(first, last + 1) if p not in self.pieces]
        for k, piece in enumerate(wanted):
            self.handle.piece_priority(piece, 7)
            self.handle.set_piece_deadline(
                piece, DEADLINE_MS * (k + 1), lt.deadline_flags_t.alert_when_available
            )
        deadline = time.monotonic() + self.settings.timeout
        progress = time.monotonic()
        while any(p not in self.pieces for p in wanted):
            now = time.monotonic()
            if now > deadline:
                missing = [p for p in wanted if p not in self.pieces]
                raise NoPeers(
                    [f"the member index's torrent: pieces {missing[:8]} missing, "
                     f"{self.handle.status().num_peers} peers connected"],
                    self.settings.timeout,
                )  # fmt: skip
            if now - progress > REANNOUNCE_SECONDS:
                self.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
                _dial(self.handle, self.settings)
                progress = now
            self.session.wait_for_alert(200)
            for a in self.session.pop_alerts():
                if isinstance(a, lt.read_piece_alert) and not a.error.value() and a.piece in wanted:
                    self.pieces[a.piece] = bytes(a.buffer)
                    progress = time.monotonic()
                elif isinstance(a, lt.piece_finished_alert) and a.piece_index in wanted:
                    self.handle.read_piece(a.piece_index)
                elif isinstance(a, lt.hash_failed_alert):
                    self.hash_failures += 1
                    self.note(f"the member index's torrent: piece {a.piece_index} failed its SHA-1: refused")
        data = b"".join(self.pieces[p] for p in range(first, last + 1))
        start = offset - first * self.piece_size
        return data[start : start + size]

    def downloaded(self) -> int:
        return self.handle.status().total_payload_download

    def close(self) -> None:
        self.session.remove_torrent(self.handle, lt.session.delete_files)
        self.session.pause()
        del self.session
