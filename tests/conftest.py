"""Shared fixtures: a tiny archive on disk and a workspace over it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from packager import layout
from packager.state import open_state
from packager.workspace import Workspace

# No per-example deadline anywhere (a loaded CI machine is slower, not wrong); on CI the examples are
# derandomized so a run is repeatable, while developers' runs keep exploring new inputs.
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SMALL_CONFIG = """\
[release]
name = "t"
root = "{root}"
mtime = 1735689600

[torrents]
trackers = [["http://127.0.0.1:6969/announce"]]

[[phases]]
name = "metadata"
kinds = ["metadata"]
shard_size = "1MB"
level = 3
frame_size = "64KiB"

[[phases]]
name = "audio"
kinds = ["audio"]
shard_size = "{audio_shard}"
level = -1
frame_size = "64KiB"

  [[phases.tiers]]
  name = "t1"
  min_popularity = 50

  [[phases.tiers]]
  name = "t2"
  max_popularity = 50

[[phases]]
name = "art"
kinds = ["art"]
shard_size = "100kB"
level = 1
frame_size = "64KiB"
"""


@pytest.fixture(autouse=True)
def _trust_file_in_tmp(tmp_path_factory, monkeypatch):
    """No test reads or writes the developer's own trust file (~/.local/share/packager/trust.json)."""
    monkeypatch.setenv("PACKAGER_TRUST_FILE", str(tmp_path_factory.mktemp("trust") / "trust.json"))


class Archive:
    """An archive root plus helpers to add files and write catalogs for them."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "archive"
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, path: str, data: bytes | int) -> int:
        body = data if isinstance(data, bytes) else bytes((i * 7 + len(path)) % 251 for i in range(data))
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(body)
        return len(body)

    def jsonl(self, rows: list[dict], name: str = "catalog.jsonl") -> Path:
        path = self.base / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(tmp_path)


@pytest.fixture
def make_workspace(tmp_path: Path, archive: Archive) -> Callable[..., Path]:
    def make(name: str = "ws", audio_shard: str = "100kB") -> Path:
        ws = tmp_path / name
        Workspace.init(ws, archive.root, "t").close()
        (ws / layout.CONFIG).write_text(
            SMALL_CONFIG.replace("{root}", str(archive.root)).replace("{audio_shard}", audio_shard),
            encoding="utf-8",
        )
        return ws

    return make


@pytest.fixture
def workspace(make_workspace) -> Path:
    return make_workspace()


def shard_members(ws: Path) -> dict[str, list[str]]:
    """shard name -> member ids in plan order."""
    with open_state(ws) as state:
        return {s.name: [m.id for m in state.iter_members(s.id)] for s in state.shards()}
