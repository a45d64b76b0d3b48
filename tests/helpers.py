"""Small helpers shared by several test modules."""

from __future__ import annotations

import hashlib
import shutil
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
