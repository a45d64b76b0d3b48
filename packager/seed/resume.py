"""Fast-resume files, ``DIR/seed/<info-hash>.fastresume``: what lets a restart skip re-hashing terabytes."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from .. import layout


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


class ResumeBuffer:
    """Resume data on its way to the store: which torrents were asked for theirs, what came back, and when
    the batch is written (one write for the alerts of about a second, not one per torrent)."""

    def __init__(self, store: ResumeStore, flush_delay: float):
        self.store, self.flush_delay = store, flush_delay
        self.outstanding: set[str] = set()
        self._items: dict[str, bytes] = {}
        self._first = 0.0

    def asked(self, key: str) -> None:
        self.outstanding.add(key)

    def received(self, key: str, data: bytes) -> None:
        self.outstanding.discard(key)
        if not self._items:
            self._first = time.monotonic()
        self._items[key] = data

    def refused(self, key: str) -> None:
        self.outstanding.discard(key)

    def due(self, now: float) -> bool:
        return bool(self._items) and now - self._first >= self.flush_delay

    def flush(self) -> tuple[int, OSError | None]:
        """Write what came back: (how many, None), or (how many were lost, the error) if the disk refused."""
        items, self._items = self._items, {}
        try:
            self.store.save_many(items)
        except OSError as e:
            return len(items), e
        return len(items), None
