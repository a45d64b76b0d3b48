"""A release workspace at a path: its config, its state database and its lock. Every stage takes one.

``Workspace.open(DIR)`` loads and checks release.toml, then opens state.sqlite (in that order, so a folder
that is no workspace at all is reported by its missing release.toml). Commands that only read or mark the
state (remove, push, tracker-whitelist) open it with ``config=False``: a release.toml being edited does not
stop them, and the config is still loaded if asked for.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path

from . import layout
from .config import ReleaseConfig, default_config_text, load_config, parse_config
from .errors import UsageError, WorkspaceError
from .fsutil import folder_lock, workspace_lock
from .state import State, open_state


class Workspace:
    """One release workspace: ``config`` (typed release.toml), ``state`` (state.sqlite), paths, the lock."""

    def __init__(self, path: Path, state: State, config: ReleaseConfig | None = None):
        self.path = Path(path)
        self.state = state
        self._config = config

    @classmethod
    def open(cls, path: Path, *, config: bool = True, readonly: bool = False) -> Workspace:
        path = Path(path)
        loaded = load_config(path) if config else None
        return cls(path, open_state(path, readonly=readonly), loaded)

    @classmethod
    def init(cls, path: Path, root: Path, name: str | None = None) -> Workspace:
        """Create release.toml (commented defaults) and state.sqlite in a new or empty folder, and open it.
        release.toml is renamed into place last: a folder with both files is a finished init."""
        path, root = Path(path), Path(root).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(f"{root}: the archive root is not a folder", hint="pass --root ARCHIVE_FOLDER")
        if path.exists() and not path.is_dir():
            raise UsageError(
                f"{path}: exists and is not a folder", hint="choose a new folder for the workspace"
            )
        config_file, state_file = path / layout.CONFIG, path / layout.STATE
        if state_file.exists() and not config_file.exists():
            raise WorkspaceError(
                f"{path}: has a state.sqlite but no release.toml (an interrupted init, or a deleted config)",
                hint="restore release.toml, or remove the folder and run init again",
            )
        if config_file.exists() or state_file.exists():
            raise WorkspaceError(
                f"{path}: already a release workspace", hint="edit its release.toml, or choose a new folder"
            )
        name = re.sub(r"[^A-Za-z0-9._]+", "_", name or root.name or "release").strip("._") or "release"
        text = default_config_text(name, root)
        path.mkdir(parents=True, exist_ok=True)
        config = parse_config(text, config_file)
        tmp = path / layout.part_name(layout.CONFIG)
        tmp.write_text(text, encoding="utf-8")
        State(state_file, create=True).close()
        tmp.replace(config_file)
        return cls(path, open_state(path), config)

    @property
    def config(self) -> ReleaseConfig:
        if self._config is None:
            self._config = load_config(self.path)
        return self._config

    def close(self) -> None:
        self.state.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def locked(self, what: str) -> AbstractContextManager[None]:
        """One writer at a time (build, publish); EnvironmentProblem naming `what` if another one runs."""
        return workspace_lock(self.path, what)

    def seed_locked(self) -> AbstractContextManager[None]:
        """One seeder at a time per workspace: an flock on its seed/ folder (the resume files it owns), not
        on the workspace, so that build and publish go on while it seeds for months."""
        self.resume_dir.mkdir(exist_ok=True)
        return folder_lock(
            self.resume_dir,
            f"{self.path}: another packager seed is running in this workspace",
            "stop it first (Ctrl-C or SIGTERM saves its resume data), then start seed again",
        )

    # ---- paths, all from layout -----------------------------------------------------------------------

    def file(self, relative: str) -> Path:
        """A path recorded in the state (``shards/...``, ``torrents/...``) as a path on this machine."""
        return self.path / relative

    @property
    def shards_dir(self) -> Path:
        return self.path / layout.SHARDS

    @property
    def torrents_dir(self) -> Path:
        return self.path / layout.TORRENTS

    @property
    def published_dir(self) -> Path:
        return self.path / layout.PUBLISHED

    @property
    def resume_dir(self) -> Path:
        return self.path / layout.RESUME

    @property
    def rejects_file(self) -> Path:
        return self.path / layout.REJECTS

    def shard_path(self, name: str) -> Path:
        return self.path / layout.shard_file(name)

    def torrent_path(self, name: str) -> Path:
        return self.path / layout.torrent_file(name)
