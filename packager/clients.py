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
(same info-hash) is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import ClientError, UsageError
from .hashing import truncated_v2
from .seed.selection import SeedTorrent

SCHEMES = ("qbittorrent+http", "qbittorrent+https", "transmission+http", "transmission+https")
DEFAULT_PORTS = {"qbittorrent": 8080, "transmission": 9091}
# How long to wait for a client to show the torrents it accepted, and for their state to settle.
APPEAR_SECONDS = 20.0


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


def parse_client_url(url: str) -> ClientURL:
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise UsageError(
            f"--client {url!r}: not a client URL",
            hint="e.g. qbittorrent+http://admin:secret@127.0.0.1:8080 or transmission+http://127.0.0.1:9091",
        )
    kind, protocol = parts.scheme.lower().split("+")
    try:
        port = parts.port or DEFAULT_PORTS[kind]
    except ValueError as e:
        raise UsageError(f"--client {url!r}: {e}") from None
    path = parts.path.rstrip("/")
    if kind == "transmission" and not path:
        path = "/transmission/rpc"
    return ClientURL(
        kind,
        protocol,
        parts.hostname,
        port,
        path,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(frozen=True)
class PushResult:
    name: str
    info_hash: str
    result: str  # added | present | failed
    detail: str = ""  # the client's state for the torrent, or why it failed


class _Client:
    """What push needs from a client."""

    def present(self) -> set[str]:  # lowercase info-hashes the client has (v1, and v2 where it knows them)
        raise NotImplementedError

    def add(self, t: SeedTorrent, metainfo: bytes) -> str | None:  # None, or why the client refused
        raise NotImplementedError

    def states(self, hashes: Iterable[str]) -> dict[str, str]:  # info-hash -> the client's state word
        raise NotImplementedError


class _QBittorrent(_Client):
    def __init__(self, url: ClientURL, data_path: str, category: str | None, tags: Sequence[str]):
        import qbittorrentapi

        self.errors = (qbittorrentapi.APIError,)
        self.url, self.data_path, self.category, self.tags = url, data_path, category, list(tags)
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
        except qbittorrentapi.LoginFailed as e:
            raise ClientError(
                url.display,
                f"login refused: {e}",
                hint="put the Web UI user and password in the URL: qbittorrent+http://USER:PASS@HOST:PORT",
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

    def add(self, t: SeedTorrent, metainfo: bytes) -> str | None:
        try:
            answer = self.client.torrents_add(
                torrent_files={t.torrent.name: metainfo},
                save_path=self.data_path,
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
        # qBittorrent 4.x names a hybrid torrent by its v1 hash, a v2-only one by its truncated v2 hash.
        return {t["hash"].lower(): t["state"] for t in self._info(hashes)}


class _Transmission(_Client):
    def __init__(self, url: ClientURL, data_path: str, labels: Sequence[str]):
        import transmission_rpc

        self.transmission_rpc = transmission_rpc
        self.url, self.data_path, self.labels = url, data_path, list(labels)
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
        except transmission_rpc.TransmissionAuthError as e:
            raise ClientError(
                url.display,
                f"login refused: {e}",
                hint="put the RPC user and password in the URL: transmission+http://USER:PASS@HOST:PORT",
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

    def add(self, t: SeedTorrent, metainfo: bytes) -> str | None:
        try:
            added = self.client.add_torrent(metainfo, download_dir=self.data_path, paused=False)
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


def connect(url: ClientURL, data_path: str, category: str | None = None, tags: Sequence[str] = ()) -> _Client:
    if url.kind == "qbittorrent":
        return _QBittorrent(url, data_path, category, tags)
    return _Transmission(url, data_path, tags)


def push(
    torrents: Sequence[SeedTorrent],
    client_url: str,
    data_path: str,
    category: str | None = None,
    tags: Sequence[str] = (),
    on_result: Callable[[PushResult], None] = lambda r: None,
    settle_seconds: float = APPEAR_SECONDS,
) -> list[PushResult]:
    """Add every torrent the client does not have yet, its data at `data_path` on the client's machine.

    A torrent is `present` when the client already has its info-hash, `added` when the client took it (the
    detail is its state once it shows up), `failed` with the client's reason otherwise.
    """
    url = parse_client_url(client_url)
    if not data_path:
        raise UsageError(
            "--data-path is empty", hint="the folder holding the shard files on the client's machine"
        )
    client = connect(url, data_path, category, tags)
    have = client.present()
    results: list[PushResult] = []
    added: list[SeedTorrent] = []
    for t in torrents:
        if any(h in have for h in (*t.swarm_hashes, t.info_hash_v2) if h):
            result = PushResult(t.name, t.key, "present")
        else:
            try:
                metainfo = Path(t.torrent).read_bytes()
            except OSError as e:
                result = PushResult(t.name, t.key, "failed", f"{t.torrent}: {e.strerror or e}")
            else:
                reason = client.add(t, metainfo)
                result = PushResult(t.name, t.key, "failed" if reason else "added", reason or "")
                if not reason:
                    added.append(t)
        results.append(result)
        if result.result != "added":
            on_result(result)
    return _settle(client, results, added, on_result, settle_seconds)


def _client_hash(t: SeedTorrent) -> str:
    return t.info_hash_v1 or truncated_v2(t.info_hash_v2) or ""


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
    wanted = {_client_hash(t) for t in added}
    deadline = time.monotonic() + seconds
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = client.states(wanted)
        if wanted <= set(states) and not any(_transient(s) for s in states.values()):
            break
        time.sleep(0.25)
    by_key = {t.key: _client_hash(t) for t in added}
    out = []
    for r in results:
        if r.result == "added":
            state = states.get(by_key[r.info_hash])
            r = PushResult(
                r.name,
                r.info_hash,
                "added" if state else "failed",
                state or f"accepted, but not listed by the client within {seconds:g} s",
            )
            on_result(r)
        out.append(r)
    return out


def _transient(state: str) -> bool:
    """Client states that settle within moments: qBittorrent's metaDL / checkingResumeData / moving, and
    Transmission's queued checks (a full verify of a large shard is not waited for)."""
    return state in ("metaDL", "checkingResumeData", "moving", "allocating", "unknown", "check pending")
