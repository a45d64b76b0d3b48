"""The seeder: one libtorrent 2.1 session seeding every published torrent for months; the tracker whitelist.

- selection.py: what to seed (published torrents whose shard files check out) and the whitelist;
- session.py: libtorrent itself: the settings pack, raw setting names, the listening session, add params;
- resume.py: fast-resume files under ``DIR/seed/``, written atomically in batches;
- events.py: the events, snapshots and report the seeder hands to its caller;
- status.py: the status port (JSON on 127.0.0.1) and its client;
- seeder.py: the Seeder, driven by alerts, and seed(), the one call for the CLI.

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
from .resume import ResumeStore
from .seeder import Seeder, seed
from .selection import (
    SeedProblem,
    SeedTorrent,
    check_files,
    check_published,
    published_torrents,
    whitelist_hashes,
    write_whitelist,
)
from .session import DISK_IO, check_libtorrent_setting, parse_libtorrent_flag, session_settings
from .status import StatusServer, read_status

__all__ = [
    "DISK_IO",
    "Listening",
    "Notice",
    "ResumeStore",
    "SeedEvent",
    "SeedProblem",
    "SeedReport",
    "SeedSnapshot",
    "SeedTorrent",
    "Seeder",
    "StatusServer",
    "Stopped",
    "TorrentFault",
    "TorrentView",
    "TorrentsLoaded",
    "check_files",
    "check_libtorrent_setting",
    "check_published",
    "parse_libtorrent_flag",
    "published_torrents",
    "read_status",
    "seed",
    "session_settings",
    "whitelist_hashes",
    "write_whitelist",
]
