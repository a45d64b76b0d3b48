"""Push published torrents to a seedbox client that already has the shard files: qBittorrent or Transmission.

The client is named by one URL whose scheme says which API to speak:

    qbittorrent+http://USER:PASS@HOST:8080          qBittorrent Web API (qbittorrent-api)
    qbittorrent+https://USER:PASS@HOST/qbt           ... behind a reverse proxy, under a path
    transmission+http://USER:PASS@HOST:9091          Transmission RPC (transmission-rpc), at /transmission/rpc
    transmission+https://HOST/custom/rpc             ... under another RPC path

qBittorrent adds each torrent with hash checking skipped (libtorrent's seed mode: it trusts the files and
checks each piece when it first serves it), automatic torrent management off, the save path given, the
"Original" content layout, a category and tags. Transmission has no skip-check: it verifies every torrent
it is given, then seeds; labels need Transmission 3.00 (RPC 16) or later. A torrent the client already has
(same info-hash, in any of its forms: v1, truncated v2, full v2) is left alone.

The member index's own torrent downloads members.pack, whose folder is members/, not shards/: it is added
with a save path of its own (index_save_path), so the client finds the pack instead of downloading it again.

The password should not travel in the URL, where `ps` shows it to every user of the machine: push takes it
from a file or from $PACKAGER_CLIENT_PASSWORD as well, and no message or report ever contains it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from . import layout
from .errors import ClientError, UsageError
from .hashing import truncated_v2
from .seed.selection import SeedTorrent

SCHEMES = ("qbittorrent+http", "qbittorrent+https", "transmission+http", "transmission+https")
DEFAULT_PORTS = {"qbittorrent": 8080, "transmission": 9091}
# How long to wait for a client to show the torrents it accepted, and for their state to settle.
APPEAR_SECONDS = 20.0
PASSWORD_ENV = "PACKAGER_CLIENT_PASSWORD"
_PASSWORD_FILE_MAX = 4096


def client_password(password_file: Path | None, environ: dict[str, str]) -> str | None:
    """The client's password: `password_file`'s first line, else $PACKAGER_CLIENT_PASSWORD, else None
    (then the URL's, if it has one)."""
    if password_file is not None:
        path = Path(password_file)
        try:
            if not path.is_file():
                raise UsageError(f"--password-file {path}: not a regular file")
            with path.open("rb") as f:
                text = f.read(_PASSWORD_FILE_MAX).decode("utf-8")
        except OSError as e:
            raise UsageError(f"--password-file {path}: cannot read it: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--password-file {path}: not UTF-8 text") from None
        password = text.splitlines()[0] if text else ""
        if not password:
            raise UsageError(f"--password-file {path}: its first line is empty")
        return password
    return environ.get(PASSWORD_ENV) or None


def url_has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


@dataclass(frozen=True)
class ClientURL:
    kind: str  # qbittorrent | transmission
    protocol: str  # http | https
    host: str
    port: int
    path: str
    username: str | None
    password: str | None

    @property
    def display(self) -> str:
        """The URL without its password, for messages."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}+{self.protocol}://{user}{host}:{self.port}{self.path}"


def _redacted(url: str) -> str:
    """`url` with any password replaced by ***, for messages about a URL that failed to parse."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"


def parse_client_url(url: str, password: str | None = None) -> ClientURL:
    """The client URL, its password replaced by `password` when one is given (from a file or the
    environment)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # an unclosed or misplaced [ of an IPv6 address
        hostname = None
    if hostname is None or parts.scheme.lower() not in SCHEMES:
        raise UsageError(
            f"--client {_redacted(url)!r}: not a client URL",
            hint="e.g. qbittorrent+http://admin:secret@127.0.0.1:8080 or transmission+http://127.0.0.1:9091",
        )
    kind, protocol = parts.scheme.lower().split("+")
    try:
        port = parts.port or DEFAULT_PORTS[kind]
    except ValueError as e:
        raise UsageError(f"--client {_redacted(url)!r}: {e}") from None
    path = parts.path.rstrip("/")
    if kind == "transmission" and not path:
        path = "/transmission/rpc"
    return ClientURL(
        kind,
        protocol,
        hostname,
        port,
        path,
        unquote(parts.username) if parts.username else None,
        password if password is not None else unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(frozen=True)
class PushResult:
    name: str
    info_hash: str
    result: str  # added | present | failed
    detail: str = ""  # the client's state for the torrent, or why it failed
    save_path: str = ""  # the folder the client was told holds its data


class _Client:
    """What push needs from a client."""

    def present(self) -> set[str]:  # lowercase info-hashes the client has (v1, and v2 where it knows them)
        raise NotImplementedError

    def add(self, t: SeedTorrent, metainfo: bytes, save_path: str) -> str | None:  # None, or why refused
        raise NotImplementedError

    def states(self, hashes: Iterable[str]) -> dict[str, str]:
        """Every form of info-hash the client shows for the torrents asked (v1, truncated v2, full v2)
        -> the client's state word."""
        raise NotImplementedError


class _QBittorrent(_Client):
    def __init__(self, url: ClientURL, category: str | None, tags: Sequence[str]):
        import qbittorrentapi  # 0.1 s to import, and only `push --client qbittorrent+...` needs it

        self.errors = (qbittorrentapi.APIError,)
        self.url, self.category, self.tags = url, category, list(tags)
        host = f"{url.protocol}://{url.host if ':' not in url.host else f'[{url.host}]'}:{url.port}{url.path}"
        self.client = qbittorrentapi.Client(
            host=host,
            username=url.username,
            password=url.password,
            REQUESTS_ARGS={"timeout": 30},
            DISABLE_LOGGING_DEBUG_OUTPUT=True,
        )
        try:
            self.client.auth_log_in()
        except qbittorrentapi.LoginFailed:
            raise ClientError(
                url.display,
                "login refused: wrong user or password",
                hint="give the Web UI user in the URL (qbittorrent+http://USER@HOST:PORT) and the password "
                "with --password-file or $PACKAGER_CLIENT_PASSWORD",
            ) from None
        except qbittorrentapi.APIConnectionError as e:
            raise ClientError(
                url.display, f"cannot connect: {e}", hint="is qbittorrent-nox running with its Web UI on?"
            ) from None
        except self.errors as e:
            raise ClientError(url.display, f"{type(e).__name__}: {e}") from None
        if category:
            try:
                if category not in self.client.torrents_categories():
                    self.client.torrents_create_category(name=category)
            except self.errors as e:
                raise ClientError(url.display, f"cannot create category {category!r}: {e}") from None

    def present(self) -> set[str]:
        have: set[str] = set()
        for t in self._info():
            for key in ("hash", "infohash_v1", "infohash_v2"):
                value = t.get(key)
                if value:
                    have.add(value.lower())
        return have

    def _info(self, hashes: Iterable[str] | None = None):
        try:
            return self.client.torrents_info(torrent_hashes=list(hashes) if hashes is not None else None)
        except self.errors as e:
            raise ClientError(self.url.display, f"cannot list torrents: {e}") from None

    def add(self, t: SeedTorrent, metainfo: bytes, save_path: str) -> str | None:
        try:
            answer = self.client.torrents_add(
                torrent_files={t.torrent.name: metainfo},
                save_path=save_path,
                is_skip_checking=True,
                is_paused=False,
                use_auto_torrent_management=False,
                content_layout="Original",
                category=self.category or None,
                tags=self.tags or None,
            )
        except self.errors as e:
            return f"{type(e).__name__}: {e}"
        return None if str(answer).strip().lower().startswith("ok") else f"qBittorrent answered {answer!r}"

    def states(self, hashes: Iterable[str]) -> dict[str, str]:
        # qBittorrent 4.4+ built on libtorrent 2 names a torrent by its "best" hash: a hybrid one by its
        # truncated v2 hash, not the v1 one, and answers `hashes=` only for that name. So ask for every form
        # and key the answer by every hash the client gives (infohash_v1 / infohash_v2 since Web API 2.8).
        out = {}
        for t in self._info(hashes):
            for key in ("hash", "infohash_v1", "infohash_v2"):
                value = t.get(key)
                if value:
                    out[value.lower()] = t["state"]
                    if len(value) == 64:
                        out[truncated_v2(value.lower())] = t["state"]
        return out


class _Transmission(_Client):
    def __init__(self, url: ClientURL, labels: Sequence[str]):
        import transmission_rpc  # 0.12 s to import, and only `push --client transmission+...` needs it

        self.transmission_rpc = transmission_rpc
        self.url, self.labels = url, list(labels)
        try:
            self.client = transmission_rpc.Client(
                protocol=url.protocol,
                host=url.host,
                port=url.port,
                path=url.path,
                username=url.username,
                password=url.password,
                timeout=30,
            )
        except transmission_rpc.TransmissionAuthError:
            raise ClientError(
                url.display,
                "login refused: wrong user or password",
                hint="give the RPC user in the URL (transmission+http://USER@HOST:PORT) and the password "
                "with --password-file or $PACKAGER_CLIENT_PASSWORD",
            ) from None
        except transmission_rpc.TransmissionError as e:
            raise ClientError(
                url.display,
                f"cannot connect: {e}",
                hint="is transmission-daemon running, with this host in its rpc-whitelist?",
            ) from None

    def present(self) -> set[str]:
        try:
            return {t.hash_string.lower() for t in self.client.get_torrents(arguments=["id", "hashString"])}
        except self.transmission_rpc.TransmissionError as e:
            raise ClientError(self.url.display, f"cannot list torrents: {e}") from None

    def add(self, t: SeedTorrent, metainfo: bytes, save_path: str) -> str | None:
        try:
            added = self.client.add_torrent(metainfo, download_dir=save_path, paused=False)
            if self.labels:
                # Transmission 3.00 (RPC 16) takes labels in torrent-set only; torrent-add ignores them.
                self.client.change_torrent(added.id, labels=self.labels)
        except self.transmission_rpc.TransmissionError as e:
            return str(e)
        return None

    def states(self, hashes: Iterable[str]) -> dict[str, str]:
        wanted = {h.lower() for h in hashes}
        try:
            got = self.client.get_torrents(arguments=["id", "hashString", "status"])
        except self.transmission_rpc.TransmissionError as e:
            raise ClientError(self.url.display, f"cannot list torrents: {e}") from None
        return {
            t.hash_string.lower(): str(getattr(t.status, "value", t.status))
            for t in got
            if t.hash_string.lower() in wanted
        }


def connect(url: ClientURL, category: str | None = None, tags: Sequence[str] = ()) -> _Client:
    if url.kind == "qbittorrent":
        return _QBittorrent(url, category, tags)
    return _Transmission(url, tags)


def index_save_path(data_path: str, torrents: Sequence[SeedTorrent], index_path: str | None = None) -> str:
    """Where the client finds the member index's pack (members.pack), given `data_path`, the folder of the
    shard files as the client's machine sees it: `index_path` when given; this workspace's
    published/members/ when `data_path` is this workspace's own shards/ folder (the client sees our files);
    the members/ folder beside a folder named shards/ (a mirror's layout, as SHA256SUMS lists it); else
    `data_path` itself (one download folder holding every torrent's file: their names never collide)."""
    if index_path:
        return index_path
    ours = {os.path.normpath(str(t.data.parent)) for t in torrents if not t.is_index}
    index = next((t for t in torrents if t.is_index), None)
    if index is not None and os.path.normpath(data_path) in ours:
        return str(index.data.parent)
    folder = PurePosixPath(data_path.rstrip("/") or "/")
    if folder.name == layout.SHARDS:
        return str(folder.parent / layout.MEMBER_INDEX_DIR)
    return data_path


def push(
    torrents: Sequence[SeedTorrent],
    client_url: str,
    data_path: str,
    category: str | None = None,
    tags: Sequence[str] = (),
    on_result: Callable[[PushResult], None] = lambda r: None,
    settle_seconds: float = APPEAR_SECONDS,
    password: str | None = None,
    index_path: str | None = None,
) -> list[PushResult]:
    """Add every torrent the client does not have yet, its data at `data_path` on the client's machine
    (the member index's torrent at index_save_path()).

    A torrent is `present` when the client already has its info-hash, `added` when the client took it and
    lists it (the detail is its state), `failed` with the client's reason otherwise. `password` replaces
    the URL's.
    """
    url = parse_client_url(client_url, password)
    if not data_path:
        raise UsageError(
            "--data-path is empty", hint="the folder holding the shard files on the client's machine"
        )
    client = connect(url, category, tags)
    have = client.present()
    results: list[PushResult] = []
    added: list[SeedTorrent] = []
    index_folder = index_save_path(data_path, torrents, index_path)
    for t in torrents:
        folder = index_folder if t.is_index else data_path
        if any(h in have for h in (*t.swarm_hashes, t.info_hash_v2) if h):
            result = PushResult(t.name, t.key, "present", save_path=folder)
        else:
            try:
                metainfo = Path(t.torrent).read_bytes()
            except OSError as e:
                result = PushResult(t.name, t.key, "failed", f"{t.torrent}: {e.strerror or e}", folder)
            else:
                reason = client.add(t, metainfo, folder)
                result = PushResult(t.name, t.key, "failed" if reason else "added", reason or "", folder)
                if not reason:
                    added.append(t)
        results.append(result)
        if result.result != "added":
            on_result(result)
    return _settle(client, results, added, on_result, settle_seconds)


def _hash_forms(t: SeedTorrent) -> tuple[str, ...]:
    """Every name a client may list the torrent under: v1, truncated v2, full v2."""
    return tuple(h for h in (t.info_hash_v1, truncated_v2(t.info_hash_v2), t.info_hash_v2) if h)


def _settle(
    client: _Client,
    results: list[PushResult],
    added: list[SeedTorrent],
    on_result: Callable[[PushResult], None],
    seconds: float,
) -> list[PushResult]:
    """Wait (bounded) until the client lists every added torrent, and put its state in the detail."""
    if not added:
        return results
    forms = {t.key: _hash_forms(t) for t in added}
    asked = sorted({h for hs in forms.values() for h in hs if len(h) == 40})
    deadline = time.monotonic() + seconds
    states: dict[str, str] = {}

    def state_of(key: str) -> str | None:
        return next((states[h] for h in forms[key] if h in states), None)

    while time.monotonic() < deadline:
        states = client.states(asked)
        found = [state_of(key) for key in forms]
        if all(found) and not any(_transient(s) for s in found):
            break
        time.sleep(0.25)
    out = []
    for r in results:
        if r.result == "added":
            state = state_of(r.info_hash)
            r = replace(
                r,
                result="added" if state else "failed",
                detail=state or f"accepted, but not listed by the client within {seconds:g} s",
            )
            on_result(r)
        out.append(r)
    return out


def _transient(state: str) -> bool:
    """Client states that settle within moments: qBittorrent's metaDL / checkingResumeData / moving, and
    Transmission's queued checks (a full verify of a large shard is not waited for)."""
    return state in ("metaDL", "checkingResumeData", "moving", "allocating", "unknown", "check pending")
