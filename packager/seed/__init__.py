"""The seeder: one libtorrent 2.1 session seeding every published torrent for months; the tracker whitelist.

- selection.py: what to seed (published torrents whose shard files check out) and the whitelist;
- session.py: libtorrent itself: the settings pack, raw setting names, the listening session, add params;
- resume.py: fast-resume files under ``DIR/seed/``, written atomically in batches;
- events.py: the events, snapshots and report the seeder hands to its caller;
- status.py: the status port (JSON on 127.0.0.1) and its client;
- seeder.py: the Seeder, driven by alerts, and seed(), the one call for the CLI.

Only session.py and seeder.py import libtorrent, and this file imports none of them: what to seed, the
whitelist, the events and the status port are there for `push`, `tracker-whitelist` and `health` without it.

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
