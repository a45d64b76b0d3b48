"""Durable file writes, shared by every stage: nothing half-written is ever left under a final name.

A write goes to a hidden temporary name in the same folder, is fsynced, renamed over the final name, and
the folder is fsynced, since on Linux the rename itself is durable only once its directory is.

And bounded reads of files that may be hostile (published manifests, a downloaded .torrent): a regular
file only, opened without blocking (a FIFO never answers), read no further than a bound.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import EnvironmentProblem, UntrustedManifest


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


def read_rest(fd: int, view: memoryview, pos: int, n: int, want: int) -> int:
    """After a read that brought `n` of `want` bytes into `view` from offset `pos` of `fd`: read the rest,
    O_DIRECT off (a short read mid-file leaves the next offsets unaligned), stopping at the file's end.
    Returns the bytes now in `view`: fewer than `want` if the file ends first."""
    set_direct(fd, False)
    while n < want:
        more = os.preadv(fd, [view[n:want]], pos + n)
        if not more:
            break
        n += more
    return n


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


class NotRegularFile(OSError):
    """A path to be replaced by a new file is there, and is not a regular file."""


def refuse_non_regular(path: Path) -> None:
    """NotRegularFile (an OSError: its strerror says why) if `path` is there and is not a regular file. A
    file is put in place by a rename, which replaces whatever has the name: as root, `--output /dev/null`
    would replace the device for every program; a FIFO a script reads, or a symlink, would be replaced
    instead of written through."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(
            errno.EEXIST,
            f"is there and is {file_type(info.st_mode)}, not a regular file: it would be replaced",
            str(path),
        )


def file_type(mode: int) -> str:
    """What a file of this st_mode is, in a message's words ("a pipe", "a folder", ...)."""
    return (
        "a regular file" if stat.S_ISREG(mode)
        else "a symlink" if stat.S_ISLNK(mode)
        else "a folder" if stat.S_ISDIR(mode)
        else "a pipe" if stat.S_ISFIFO(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "not a file"
    )  # fmt: skip


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a reader, even after a crash, sees the old file or the whole new one.
    OSError is the caller's to turn into its own error (NotRegularFile for a path that is not a regular
    file: refuse_non_regular); the temporary file is removed first."""
    path = Path(path)
    refuse_non_regular(path)
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


# ---- bounded reads of files that may be hostile ----------------------------------------------------------


def read_regular(path: Path, limit: int) -> bytes:
    """A published file's bytes for a reader: a regular file (not a FIFO or a device) of at most `limit`
    bytes, else UntrustedManifest naming it."""
    return read_bounded(path, limit, path)


def open_regular(
    path: Path, refuse: Callable[[str], Exception], missing: str = "missing"
) -> tuple[BinaryIO, os.stat_result]:
    """`path` opened for reading if it is a regular file (never blocking on a FIFO), with its stat; else
    `refuse(why)` raised: `missing`, "cannot be read: …" or "is not a regular file" (a directory, a FIFO,
    a device: checked before fdopen, which refuses a directory with a bare errno)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise refuse(missing) from None
    except OSError as e:
        raise refuse(f"cannot be read: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise refuse("is not a regular file")
    return os.fdopen(fd, "rb"), info


def read_bounded(path: Path, limit: int, where: Path | str) -> bytes:
    """A regular file's bytes, at most `limit`: UntrustedManifest for a FIFO, a device, a bigger file."""
    f, info = open_regular(path, lambda why: UntrustedManifest(where, why))
    with f:
        # read(n) allocates n bytes up front: ask for what the file holds (one more to see it grew).
        data = f.read(min(limit, info.st_size) + 1)
    if len(data) > limit:
        raise UntrustedManifest(where, f"is more than {limit:,} bytes: not what it claims to be")
    return data
