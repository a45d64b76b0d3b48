"""The Seeder: one libtorrent session seeding a list of torrents, driven by its alerts; and seed(), the one
call for the CLI.

A Seeder starts (session, listening, torrents added in batches), then steps: it handles the alerts that
arrived, and does whatever periodic work is due (a snapshot each second, resume data every
``resume_interval``, the status rows of state.sqlite every ``db_interval``). close() saves every torrent's
resume data and records the totals. What it knows of each torrent is a _Tracked record; _StatusRows turns
the changed ones into seed_torrents rows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import libtorrent as lt

from ..config import SeedSettings
from ..errors import WorkspaceError
from ..state import SeedStatusRow, State
from ..workspace import Workspace
from .events import (
    Listening,
    Notice,
    SeedEvent,
    SeedReport,
    SeedSnapshot,
    Stopped,
    TorrentFault,
    TorrentsLoaded,
    TorrentView,
)
from .resume import ResumeBuffer, ResumeStore
from .selection import SeedProblem, SeedTorrent, check_files, published_torrents
from .session import RESUME_NOT_MODIFIED, add_params, hash_key, open_session, state_label
from .status import StatusServer


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    def view(self) -> TorrentView:
        t, st = self.torrent, self.status
        if st is None:
            return TorrentView(
                t.name, t.phase, t.key, "loading", 0, 0, self.uploaded, self.error, self.tracker
            )
        return TorrentView(
            t.name,
            t.phase,
            t.key,
            "error" if self.error else state_label(st),
            st.num_peers,
            st.upload_payload_rate,
            max(st.all_time_upload, self.uploaded),
            self.error or (st.error or None),
            self.tracker,
        )

    def status_row(self, now: str) -> SeedStatusRow:
        """Its seed_torrents row; the reply count and times it carries are then reset (they are added)."""
        view = self.view()
        row = SeedStatusRow(
            info_hash=self.torrent.key,
            shard_id=self.torrent.shard_id,
            state=view.state,
            uploaded=view.uploaded,
            peers=view.peers,
            tracker_replies=self.replies,
            last_reply_at=self.last_reply_at,
            last_reply_peers=self.last_reply_peers,
            tracker_error=self.tracker_error,
            tracker_error_at=self.tracker_error_at,
            error=self.error,
            error_at=self.error_at,
            updated_at=now,
        )
        self.replies = 0
        self.last_reply_at = self.tracker_error_at = None
        return row


class Seeder:
    """One libtorrent session seeding `torrents`. start(), then run() (or step()), then close()."""

    snapshot_interval = 1.0
    db_interval = 10.0
    resume_flush_delay = 1.0

    def __init__(
        self,
        resume: ResumeStore,
        torrents: Sequence[SeedTorrent],
        settings: SeedSettings,
        state: State | None = None,
        on_event: Callable[[SeedEvent], None] = lambda e: None,
        on_snapshot: Callable[[SeedSnapshot], None] = lambda s: None,
    ):
        self.torrents = list(torrents)
        self.settings = settings
        self.state = state
        self.on_event, self.on_snapshot = on_event, on_snapshot
        self.resume = ResumeBuffer(resume, self.resume_flush_delay)
        self.session: lt.session | None = None
        self.report = SeedReport()
        self.status_url: str | None = None
        self._started = time.monotonic()
        self._by_handle: dict[lt.torrent_handle, _Tracked] = {}
        self._by_key: dict[str, _Tracked] = {}
        self._pending_adds: dict[str, SeedTorrent] = {}
        self._rechecked: set[str] = set()
        self._listen: list[str] = []
        self._snapshot = SeedSnapshot(time.time(), 0.0, (), (), (), 0)
        self._lock = threading.Lock()
        self._next_snapshot = self._next_db = 0.0
        self._next_resume = time.monotonic() + settings.resume_interval
        self._dirty: set[str] = set()
        self._handlers: dict[type, Callable] = {
            lt.save_resume_data_alert: self._on_resume_data,
            lt.save_resume_data_failed_alert: self._on_resume_failed,
            lt.tracker_reply_alert: self._on_tracker_reply,
            lt.tracker_error_alert: self._on_tracker_error,
            lt.file_error_alert: self._on_file_error,
            lt.torrent_error_alert: self._on_torrent_error,
            lt.hash_failed_alert: self._on_hash_failed,
            lt.state_changed_alert: self._on_state_changed,
        }

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
        self.session, self._listen, failed = open_session(self.settings)
        self.on_event(Listening(tuple(self._listen), tuple(failed), self.status_url))
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

    def _add_batch(
        self, batch: Sequence[SeedTorrent], uploaded: dict[str, int], seconds: float = 120.0
    ) -> None:
        notice = lambda text: self.on_event(Notice(text))  # noqa: E731
        for t in batch:
            try:
                params, resumed = add_params(t, self.resume.store, uploaded, notice)
            except RuntimeError as e:
                self._fault(t, f"{t.torrent}: cannot load: {e}", added=False)
                continue
            if resumed:
                self.report.resumed += 1
            else:
                self.report.fresh += 1
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
        if self.resume.due(now):
            self._flush_resume()
        if now >= self._next_db:
            self._next_db = now + self.db_interval
            self._flush_db()

    def _drain(self) -> None:
        for a in self.session.pop_alerts():
            self._on_alert(a)

    # ---- alerts -------------------------------------------------------------------------------------------

    def _on_alert(self, a: lt.alert) -> None:
        if isinstance(a, lt.state_update_alert):
            for st in a.status:
                tracked = self._by_handle.get(st.handle)
                if tracked is not None:
                    tracked.status = st
                    self._dirty.add(tracked.torrent.key)
            self._publish_snapshot()
        elif isinstance(a, lt.add_torrent_alert):
            self._on_added(a)
        elif isinstance(a, lt.listen_failed_alert):
            self.on_event(Notice(f"listen failed: {a.listen_interface()}: {a.error.message()}"))
        elif isinstance(a, lt.alerts_dropped_alert):
            self.on_event(Notice("libtorrent dropped alerts: its queue was full"))
        elif isinstance(a, lt.torrent_alert):
            tracked = self._by_handle.get(a.handle)
            handler = next((self._handlers[c] for c in type(a).__mro__ if c in self._handlers), None)
            if tracked is not None and handler is not None:
                handler(tracked, a)

    def _on_added(self, a: lt.add_torrent_alert) -> None:
        ti = a.params.ti
        key = hash_key(ti.info_hashes()) if ti is not None else hash_key(a.params.info_hashes)
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

    def _on_resume_data(self, tracked: _Tracked, a: lt.save_resume_data_alert) -> None:
        self.resume.received(tracked.torrent.key, lt.write_resume_data_buf(a.params))
        tracked.uploaded = max(tracked.uploaded, a.params.total_uploaded)
        self._dirty.add(tracked.torrent.key)

    def _on_resume_failed(self, tracked: _Tracked, a: lt.save_resume_data_failed_alert) -> None:
        self.resume.refused(tracked.torrent.key)
        if a.error.value() != RESUME_NOT_MODIFIED:
            self.report.resume_failed += 1
            self.on_event(Notice(f"{tracked.torrent.name}: resume data not saved: {a.error.message()}"))

    def _on_tracker_reply(self, tracked: _Tracked, a: lt.tracker_reply_alert) -> None:
        tracked.replies += 1
        tracked.last_reply_at, tracked.last_reply_peers = _now_text(), a.num_peers
        tracked.tracker_error = None
        tracked.tracker = f"{a.num_peers} peers from {a.tracker_url()}"
        self._dirty.add(tracked.torrent.key)

    def _on_tracker_error(self, tracked: _Tracked, a: lt.tracker_error_alert) -> None:
        reason = a.failure_reason() or a.error.message()
        tracked.tracker_error, tracked.tracker_error_at = f"{a.tracker_url()}: {reason}", _now_text()
        tracked.tracker = f"error: {reason}"
        self._dirty.add(tracked.torrent.key)

    def _on_file_error(self, tracked: _Tracked, a: lt.file_error_alert) -> None:
        # libtorrent pauses the torrent itself; pausing again makes that explicit and harmless.
        tracked.handle.pause()
        if tracked.error is None:
            self._fault(tracked.torrent, f"{a.filename()}: {a.error.message()}")

    def _on_torrent_error(self, tracked: _Tracked, a: lt.torrent_error_alert) -> None:
        if tracked.error is None:
            self._fault(tracked.torrent, a.error.message())

    def _on_hash_failed(self, tracked: _Tracked, a: lt.hash_failed_alert) -> None:
        if tracked.error is None:
            # In seed mode a piece is checked when first served; a mismatch means the file changed.
            self._fault(tracked.torrent, f"piece {a.piece_index} does not match its hash: the shard changed")

    def _on_state_changed(self, tracked: _Tracked, a: lt.state_changed_alert) -> None:
        if a.state == lt.torrent_status.states.checking_files:
            self._rechecked.add(tracked.torrent.key)

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

    def _publish_snapshot(self) -> None:
        snap = SeedSnapshot(
            at=time.time(),
            uptime=time.monotonic() - self._started,
            listen=tuple(self._listen),
            torrents=tuple(t.view() for t in self._by_key.values()),
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
                self.resume.asked(key)
                asked += 1
        return asked

    def _flush_resume(self) -> None:
        count, error = self.resume.flush()
        if error is None:
            self.report.resume_saved += count
            return
        self.report.resume_failed += count
        folder = self.resume.store.folder
        self.on_event(Notice(f"{folder}: cannot write resume data: {error.strerror or error}"))

    def _flush_db(self) -> None:
        if self.state is None or not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        now = _now_text()
        rows = [self._by_key[key].status_row(now) for key in keys if key in self._by_key]
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
        while self.resume.outstanding and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            self._drain()
        missing = len(self.resume.outstanding)
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
        self.report.uploaded = sum(t.view().uploaded for t in self._by_key.values())
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
    """Seed the published torrents of `phases` (default: all published) until `stop` or `duration`; the
    settings default to the workspace's [seed] table.

    WorkspaceError when no torrent can be seeded; ListenError or EnvironmentProblem for ports in use, or
    for another seed already running in this workspace (one at a time: they would share resume files).
    """
    with ws.seed_locked():
        return _seed(ws, phases, settings, stop, duration, status_port, on_event, on_snapshot)


def _seed(
    ws: Workspace,
    phases: Sequence[str] | None,
    settings: SeedSettings | None,
    stop: threading.Event | None,
    duration: float | None,
    status_port: int | None,
    on_event: Callable[[SeedEvent], None],
    on_snapshot: Callable[[SeedSnapshot], None],
) -> SeedReport:
    settings = settings or ws.config.seed
    torrents = published_torrents(ws, phases)
    seeder = Seeder(
        ResumeStore(ws.resume_dir), torrents, settings, ws.state, on_event=on_event, on_snapshot=on_snapshot
    )
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
