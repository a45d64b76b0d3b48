"""Shared fixtures: a tiny archive on disk and a workspace over it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from packager import layout
from packager.workspace import Workspace
from tests.helpers import SMALL_CONFIG, Archive, catalog, do_publish, prepare, run_build

# No per-example deadline anywhere (a loaded CI machine is slower, not wrong); on CI the examples are
# derandomized so a run is repeatable, while developers' runs keep exploring new inputs.
settings.register_profile("dev", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _trust_file_in_tmp(tmp_path_factory, monkeypatch):
    """No test reads or writes the developer's own trust file (~/.local/share/packager/trust.json)."""
    monkeypatch.setenv("PACKAGER_TRUST_FILE", str(tmp_path_factory.mktemp("trust") / "trust.json"))


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


@pytest.fixture
def built(workspace, archive) -> Path:
    prepare(workspace, archive, catalog(archive))
    assert not run_build(workspace).failed
    return workspace


@pytest.fixture
def published(built) -> Path:
    do_publish(built, "metadata")
    do_publish(built, "audio")
    return built
