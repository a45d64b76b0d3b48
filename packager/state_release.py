"""The queries of a published release and of its seeder: publications, signed statements, the torrents to
seed and what the seeder last saw of them. State takes them in (State(ReleaseQueries)), so callers ask a
State as for any other query."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from .state_schema import SeedableRow, SeedStatusRow, TorrentFacts


class ReleaseQueries:
    db: sqlite3.Connection

    def publications(self) -> list[tuple[str, str]]:
        """(phase, published_at) in the order the phases were first published."""
        return self.db.execute("SELECT phase, published_at FROM publications ORDER BY rowid").fetchall()

    def published_entries(self) -> list[tuple[int, str, str]]:
        """(shard_id, phase, entry JSON) of every published torrent, in release order."""
        return self.db.execute("SELECT shard_id, phase, entry FROM published_torrents ORDER BY n").fetchall()

    def torrent_facts(self, shard_id: int) -> TorrentFacts | None:
        row = self.db.execute(
            "SELECT b.file, b.length, b.sha256, b.piece_size, t.file, t.format, t.info_hash_v1, "
            "t.info_hash_v2, t.magnet, t.torrent_sha256, t.torrent_size FROM builds b "
            "JOIN torrents t ON t.shard_id = b.shard_id WHERE b.shard_id = ?",
            (shard_id,),
        ).fetchone()
        return TorrentFacts(*row) if row else None

    def record_publication(
        self, phase: str, published_at: str, entries: Iterable[tuple[int, str, str]]
    ) -> None:
        """Record a phase as published (its first date stays) and append (shard_id, phase, entry JSON) rows
        for its newly published torrents. Call inside a transaction."""
        self.db.execute(
            "INSERT OR IGNORE INTO publications (phase, published_at) VALUES (?, ?)", (phase, published_at)
        )
        self.db.executemany("INSERT INTO published_torrents (shard_id, phase, entry) VALUES (?,?,?)", entries)

    def statements(self) -> list[tuple[int, str, bytes, bytes | None]]:
        """(publication, sha256, statement bytes, signature bytes or None) of every statement, in order."""
        return self.db.execute("SELECT n, sha256, body, signature FROM statements ORDER BY n").fetchall()

    def record_statement(self, n: int, sha256: str, body: bytes, signature: bytes | None) -> None:
        """Append publication `n`'s statement. Call inside the transaction that records the publication."""
        self.db.execute("INSERT INTO statements VALUES (?, ?, ?, ?)", (n, sha256, body, signature))

    # ---- seed -----------------------------------------------------------------------------------

    def seedable(self, phases: Iterable[str] | None = None) -> list[SeedableRow]:
        """Published torrents in release order, optionally of some phases only. file and length are None for
        a shard that is no longer built (its file went missing): still published, so still whitelisted."""
        sql = (
            "SELECT s.id, s.name, s.phase, b.file, b.length, t.file, t.info_hash_v1, t.info_hash_v2 "
            "FROM published_torrents p JOIN shards s ON s.id = p.shard_id "
            "JOIN torrents t ON t.shard_id = s.id LEFT JOIN builds b ON b.shard_id = s.id"
        )
        args: list = []
        if phases is not None:
            args = list(phases)
            sql += f" WHERE s.phase IN ({','.join('?' * len(args))})"
        return [SeedableRow(*r) for r in self.db.execute(sql + " ORDER BY p.n", args)]

    def seed_uploaded(self) -> dict[str, int]:
        """info-hash -> all-time bytes uploaded, as the seeder last recorded it."""
        return dict(self.db.execute("SELECT info_hash, uploaded FROM seed_torrents"))

    def record_seed_status(self, rows: Iterable[SeedStatusRow]) -> None:
        """Upsert the seeder's latest view of its torrents. Uploaded totals only grow; tracker_replies is
        added; a None reply or error time keeps the stored one; a reply clears a stored tracker error."""
        self.db.executemany(
            "INSERT INTO seed_torrents (info_hash, shard_id, state, uploaded, peers, tracker_replies, "
            "last_reply_at, last_reply_peers, tracker_error, tracker_error_at, error, error_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(info_hash) DO UPDATE SET "
            "shard_id=excluded.shard_id, state=excluded.state, uploaded=MAX(uploaded, excluded.uploaded), "
            "peers=excluded.peers, "
            "tracker_replies=tracker_replies + excluded.tracker_replies, "
            "last_reply_at=COALESCE(excluded.last_reply_at, last_reply_at), "
            "last_reply_peers=COALESCE(excluded.last_reply_peers, last_reply_peers), "
            "tracker_error=CASE WHEN excluded.last_reply_at IS NOT NULL AND excluded.tracker_error IS NULL "
            "THEN NULL ELSE COALESCE(excluded.tracker_error, tracker_error) END, "
            "tracker_error_at=COALESCE(excluded.tracker_error_at, tracker_error_at), "
            "error=excluded.error, error_at=COALESCE(excluded.error_at, error_at), "
            "updated_at=excluded.updated_at",
            (
                (
                    r.info_hash,
                    r.shard_id,
                    r.state,
                    r.uploaded,
                    r.peers,
                    r.tracker_replies,
                    r.last_reply_at,
                    r.last_reply_peers,
                    r.tracker_error,
                    r.tracker_error_at,
                    r.error,
                    r.error_at,
                    r.updated_at,
                )
                for r in rows
            ),
        )

    def seed_status(self) -> list[SeedStatusRow]:
        return [
            SeedStatusRow(*r)
            for r in self.db.execute(
                "SELECT info_hash, shard_id, state, uploaded, peers, tracker_replies, last_reply_at, "
                "last_reply_peers, tracker_error, tracker_error_at, error, error_at, updated_at "
                "FROM seed_torrents ORDER BY shard_id"
            )
        ]
