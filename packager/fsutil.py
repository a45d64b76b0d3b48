"""Durable file writes, shared by every stage: nothing half-written is ever left under a final name.

A write goes to a hidden temporary name in the same folder, is fsynced, renamed over the final name, and
the folder is fsynced, since on Linux the rename itself is durable only once its directory is.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import EnvironmentProblem


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a small or rare file (a .torrent, a shard recovered after a crash); shards being
    written are hashed as they are written, never read back for this."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def set_direct(fd: int, on: bool = True) -> bool:
    """O_DIRECT on (or off) for `fd`; False if the file system refuses it (tmpfs, some FUSE)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write and fsync `path` in place (for files inside a temporary folder that is renamed as a whole)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a reader, even after a crash, sees the old file or the whole new one.
    OSError is the caller's to turn into its own error; the temporary file is removed first."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_durable(tmp, data, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def workspace_lock(workspace: Path, what: str) -> Iterator[None]:
    """One writer at a time per workspace (build, publish): an flock on the workspace folder itself, so
    there is no lock file to go stale; the kernel drops it when the process dies, even by kill -9."""
    with folder_lock(
        workspace,
        f"{workspace}: another packager build or publish is running in this workspace",
        f"wait for it to finish, then run {what} again",
    ):
        yield


@contextmanager
def folder_lock(folder: Path, busy: str, hint: str) -> Iterator[None]:
    """An exclusive flock on `folder`, or EnvironmentProblem(`busy`, `hint`) if another process holds it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EnvironmentProblem(busy, hint=hint) from None
        yield
    finally:
        os.close(fd)
