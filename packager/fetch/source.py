"""Where a fetch reads the release from: a workspace, a published folder (a mirror's copy), a mirror's URL,
or a torrents.json (a file or a URL). Each gives the published files (the statement, the member index, the
.torrent files) and says where a shard's bytes might be had without BitTorrent: a local shard file, the
mirror's own shards/ folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from .. import layout
from ..errors import UsageError
from ..manifest import read_torrents_json
from ..member_index import FolderFiles, IndexFiles
from ..swarm.net import display_url, http_get, http_range
from ..torrent import METAINFO_MAX_BYTES

TORRENTS_JSON_MAX = 64 * 2**20  # a release of 10^5 torrents lists about 60 MB


class HttpFiles:
    """Published files under a mirror's URL, read with bounded GETs and Range requests."""

    def __init__(self, base: str, timeout: float):
        self.base, self.timeout = base, timeout
        self.bytes = 0

    def url(self, name: str) -> str:
        return urljoin(self.base, quote(name))

    def read_file(self, name: str, limit: int) -> bytes:
        body = http_get(self.url(name), limit, self.timeout, redirects=3).body
        self.bytes += len(body)
        return body

    def read_range(self, name: str, offset: int, size: int) -> bytes:
        out = bytearray()
        http_range(self.url(name), offset, size, out.extend, self.timeout)
        self.bytes += len(out)
        return bytes(out)


@dataclass
class Source:
    label: str  # as the user gave it (a URL without credentials)
    files: IndexFiles  # the published folder's files
    shards: Path | None = None  # a local folder holding shards/<name>.tar.zst, when there is one
    mirror: str | None = None  # the mirror's published URL; its shards/ beside the published files
    listed: dict[str, str] = field(default_factory=dict)  # .torrent path -> URL, from a torrents.json

    def local_shard(self, shard_file: str, size: int) -> Path | None:
        """The shard file on this machine with the published size, if there is one."""
        if self.shards is None:
            return None
        path = self.shards / shard_file
        try:
            return path if path.is_file() and path.stat().st_size == size else None
        except OSError:
            return None

    def mirror_url(self, shard_file: str) -> str | None:
        return urljoin(self.mirror, quote(shard_file)) if self.mirror else None

    def torrent_file(self, torrent_file: str, timeout: float) -> bytes:
        """The .torrent's bytes, unchecked (the caller checks them against the index and the statement)."""
        url = self.listed.get(torrent_file)
        if url and urlsplit(url).scheme in ("http", "https"):
            return http_get(url, METAINFO_MAX_BYTES, timeout, redirects=3).body
        return self.files.read_file(torrent_file, METAINFO_MAX_BYTES)


def open_source(text: str, timeout: float) -> Source:
    """The release at `text`: an http(s) URL of a published folder or of its torrents.json, or a local
    workspace, published folder or torrents.json. UsageError (exit 2) if it is none of those."""
    try:
        scheme = urlsplit(text).scheme
    except ValueError as e:  # an unclosed [ of an IPv6 host
        raise UsageError(f"{text}: not a valid URL ({e})") from None
    if scheme in ("http", "https"):
        return _url_source(text, timeout)
    return _folder_source(Path(text))


def _url_source(url: str, timeout: float) -> Source:
    shown = display_url(url)
    if url.rsplit("?", 1)[0].endswith(layout.TORRENTS_JSON):
        base = urljoin(url, ".")
        data = http_get(url, TORRENTS_JSON_MAX, timeout, redirects=3).body
        listed = _listed(data, shown, base)
        return Source(shown, HttpFiles(base, timeout), mirror=base, listed=listed)
    base = url if url.endswith("/") else url + "/"
    return Source(shown, HttpFiles(base, timeout), mirror=base)


def _listed(data: bytes, where: str, base: str) -> dict[str, str]:
    """.torrent path -> absolute URL of every torrent a torrents.json lists."""
    out = {}
    for row in read_torrents_json(data, where):
        out[f"{layout.TORRENTS}/{row.display_name}"] = urljoin(base, row.url)
    return out


def _folder_source(path: Path) -> Source:
    if path.is_file() and path.name == layout.TORRENTS_JSON:
        folder = path.parent
        data = FolderFiles(folder).read_file(layout.TORRENTS_JSON, TORRENTS_JSON_MAX)
        # Relative `url`s are read from the folder itself; absolute ones (a base_url) over HTTP.
        return Source(str(path), FolderFiles(folder), shards=folder, listed=_listed(data, str(path), ""))
    if path.is_dir() and (path / layout.MEMBER_INDEX).is_file():
        # A workspace's published/ folder keeps no shards; the workspace beside it does.
        workspace = path.parent if (path.parent / layout.CONFIG).is_file() else None
        return Source(str(path), FolderFiles(path), shards=workspace or path)
    if path.is_dir() and (path / layout.PUBLISHED / layout.MEMBER_INDEX).is_file():
        return Source(str(path), FolderFiles(path / layout.PUBLISHED), shards=path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    raise UsageError(
        f"{path}: no published release here (no {layout.MEMBER_INDEX})",
        hint="give a workspace, a published folder, a mirror's URL (http/https) or a torrents.json",
    )
