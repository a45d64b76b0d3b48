"""Small helpers shared by several test modules."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


def need(binary: str) -> str:
    """The path of a program the test drives, or a skip naming the Debian package list to install."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed (Debian packages: see scripts/dev.sh)")
    return path


def sha256_of(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def wait_until(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll until `predicate()` holds or `seconds` pass; every wait in the tests is bounded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def seed_command(
    ws: Path, listen: str, status_port: int, lt_settings: Iterable[tuple[str, object]] = (), lsd: bool = False
) -> list[str]:
    """`packager seed` as a subprocess on loopback: no DHT, status JSON on `status_port`."""
    command = [
        sys.executable,
        "-m",
        "packager.cli",
        "seed",
        str(ws),
        "--listen",
        listen,
        "--no-dht",
        "--status-port",
        str(status_port),
    ]
    if not lsd:
        command.append("--no-lsd")
    return command + [f"--lt={k}={str(v).lower()}" for k, v in lt_settings]
