"""The pages of a publication: feed.xml (RSS 2.0, a .torrent enclosure per item, so that a client's RSS
rule picks up each new phase) and index.html (a static page of the phases and their magnets). Both are
rendered from the frozen release.json entries alone, so publishing again writes the same bytes.
"""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING

from . import __version__, layout
from .config import ReleaseConfig
from .manifest import PhaseEntry, TorrentEntry, torrent_url
from .units import format_size

if TYPE_CHECKING:
    from .signing import SigningKey  # minisign: a page only shows the key its caller loaded

TORRENT_MIME = "application/x-bittorrent"
# ezRSS's torrent namespace: infoHash / magnetURI / contentLength, read by RSS-aware torrent clients.
TORRENT_NS = "http://xmlns.ezrss.it/0.1/"
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)


# ---- feed.xml -------------------------------------------------------------------------------------------


def feed_xml(release: str, base_url: str, entries: Sequence[TorrentEntry]) -> bytes:
    """RSS 2.0, one item per torrent with its .torrent as enclosure, newest first (so a client's RSS rule
    downloads each new phase as it appears)."""
    ET.register_namespace("torrent", TORRENT_NS)
    rss = ET.Element("rss", {"version": "2.0"})
    channel = ET.SubElement(rss, "channel")
    newest = max((e.added for e in entries), default=None)
    _text(channel, "title", f"{release}: torrents")
    _text(channel, "link", base_url or layout.INDEX_HTML)
    _text(channel, "description", f"Every torrent of the {release} release, newest phase first.")
    _text(channel, "generator", f"packager {__version__}")
    if newest:
        _text(channel, "lastBuildDate", format_datetime(parse_stamp(newest), usegmt=True))
    for e in _newest_first(entries):
        url = torrent_url(base_url, e)
        item = ET.SubElement(channel, "item")
        _text(item, "title", e.name)
        _text(item, "link", url)
        _text(item, "description", _summary(e))
        _text(item, "category", e.phase)
        _text(item, "guid", e.info_hash_v1 or e.info_hash_v2 or e.name, isPermaLink="false")
        _text(item, "pubDate", format_datetime(parse_stamp(e.added), usegmt=True))
        ET.SubElement(item, "enclosure", {"url": url, "length": str(e.torrent.size), "type": TORRENT_MIME})
        _text(item, f"{{{TORRENT_NS}}}fileName", e.torrent_file.rsplit("/", 1)[-1])
        _text(item, f"{{{TORRENT_NS}}}contentLength", str(e.shard.size))
        _text(item, f"{{{TORRENT_NS}}}infoHash", e.info_hash_v1 or e.info_hash_v2_truncated or "")
        _text(item, f"{{{TORRENT_NS}}}magnetURI", e.magnet)
    ET.indent(rss)
    return ET.tostring(rss, encoding="utf-8", xml_declaration=True) + b"\n"


def _newest_first(entries: Sequence[TorrentEntry]) -> list[TorrentEntry]:
    """The torrents of each publication in release order, the latest publication first. Release order is
    append-only, so a publication's torrents are a contiguous run (also two in the same second)."""
    runs: list[list[TorrentEntry]] = []
    for e in entries:
        if runs and (runs[-1][0].phase, runs[-1][0].added) == (e.phase, e.added):
            runs[-1].append(e)
        else:
            runs.append([e])
    return [e for run in reversed(runs) for e in run]


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _popularity(e: TorrentEntry) -> str:
    return f"{e.popularity_max:g} .. {e.popularity_min:g}"


def _summary(e: TorrentEntry) -> str:
    tier = f", tier {e.tier}" if e.tier else ""
    return (
        f"phase {e.phase}{tier}: {_count(e.items, 'item')}, {format_size(e.data_size)} of content in a "
        f"{format_size(e.shard.size)} shard; popularity {_popularity(e)}"
    )


# ---- index.html -----------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light dark; --muted: #6a6a6a; --line: #8884; }
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; } h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; }
.muted, small { color: var(--muted); font-weight: normal; }
ul.torrents { list-style: none; padding: 0; margin: 0; }
li.torrent { border-top: 1px solid var(--line); padding: .6rem 0; }
.name { font-family: ui-monospace, monospace; font-weight: 600; overflow-wrap: anywhere; }
.facts { display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; margin: .2rem 0; font-size: .92rem; }
.links a { display: inline-block; margin-right: 1rem; padding: .2rem 0; }
code { overflow-wrap: anywhere; font-size: .9rem; }
table.phases { border-collapse: collapse; } table.phases td { padding: .1rem 1rem .1rem 0; }
"""


def index_html(
    config: ReleaseConfig,
    phases: Sequence[PhaseEntry],
    entries: Sequence[TorrentEntry],
    signing: SigningKey | None,
    index_magnet: str | None = None,
) -> bytes:
    """A static page, no scripts, no external resources: phases in order with their state, and per torrent
    its size, popularity range, item count, magnet and .torrent links; the member index's torrent too."""
    esc = html.escape
    published = {p.name: p for p in phases}
    order = [p.name for p in config.phases] + [
        p.name for p in phases if p.name not in {c.name for c in config.phases}
    ]
    total = sum(e.shard.size for e in entries)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(config.name)}: torrents</title>",
        f'<link rel="alternate" type="application/rss+xml" title="{esc(config.name)}" href="{layout.FEED}">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(config.name)}</h1>",
        f"<p>{_count(len(entries), 'torrent')}, {format_size(total)}, "
        f"in {len(phases)} of {len(order)} phases. "
        f'Machine-readable: <a href="{layout.STATEMENT}">{layout.STATEMENT}</a> (the publication statement: '
        "size and SHA-256 of every other file here), "
        f'<a href="{layout.RELEASE_JSON}">{layout.RELEASE_JSON}</a>, '
        f'<a href="{layout.TORRENTS_JSON}">{layout.TORRENTS_JSON}</a>, '
        f'<a href="{layout.FEED}">RSS feed</a>, <a href="{layout.SHA256SUMS}">{layout.SHA256SUMS}</a>, '
        f'<a href="{layout.MEMBER_INDEX}">{layout.MEMBER_INDEX}</a> (which torrent and pieces hold an item: '
        f"<code>packager locate . ID</code>; one item without its torrent: "
        "<code>packager fetch URL ID</code>).</p>",
        *_index_torrent(index_magnet),
        # A link only: live numbers would unfreeze this page, which is part of the publication.
        f'<p>How well each torrent is seeded: <a href="{layout.SWARM_HTML}">{layout.SWARM_HTML}</a> '
        f'(<a href="{layout.SWARM_JSON}">{layout.SWARM_JSON}</a>), updated by tracker scrapes; advisory and '
        "not signed.</p>",
    ]
    if signing is not None:
        parts.append(
            "<p>publication.json, SHA256SUMS and release.json are signed with the minisign key "
            f"<code>{esc(signing.public_key)}</code> "
            f"(id {esc(signing.key_id)}); compare it with one published elsewhere, then "
            f"<code>packager verify FOLDER --pubkey KEY.pub</code> (every file against publication.json; an "
            "older or mixed copy is refused), or "
            f"<code>minisign -Vm publication.json -P {esc(signing.public_key)}</code>.</p>"
        )
    parts.append('<table class="phases"><tbody>')
    for name in order:
        p = published.get(name)
        state = (
            f"published {esc(p.published_at[:10])}, {_count(p.torrents, 'torrent')}"
            if p
            else "not yet published"
        )
        link = f'<a href="#phase-{esc(name)}">{esc(name)}</a>' if p else esc(name)
        parts.append(f"<tr><td>{link}</td><td class=muted>{state}</td></tr>")
    parts.append("</tbody></table>")
    for name in order:
        p = published.get(name)
        if p is None:
            continue
        parts.append(
            f'<section id="phase-{esc(name)}"><h2>{esc(name)} '
            f"<small>published {esc(p.published_at)}</small></h2>"
        )
        parts.append('<ul class="torrents">')
        for e in (e for e in entries if e.phase == name):
            parts.append(_torrent_item(e))
        parts.append("</ul></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def _index_torrent(magnet: str | None) -> list[str]:
    if not magnet:
        return []
    return [
        "<p>The member index as a torrent of its own, to seed beside the shards: "
        f'<a class="torrent-file" href="{layout.MEMBER_INDEX_TORRENT}">{layout.MEMBER_INDEX_TORRENT}</a>, '
        f'<a class="magnet" href="{html.escape(magnet)}">magnet</a>.</p>'
    ]


def _torrent_item(e: TorrentEntry) -> str:
    esc = html.escape
    ih = e.info_hash_v1 or e.info_hash_v2 or ""
    facts = (
        [
            f"{format_size(e.shard.size)}",
            f"{_count(e.items, 'item')} ({format_size(e.data_size)})",
            f"popularity {_popularity(e)}",
        ]
        + ([f"tier {e.tier}"] if e.tier else [])
        + [f"added {e.added[:10]}"]
    )
    return (
        f'<li class="torrent" id="{esc(e.name)}"><div class="name">{esc(e.name)}</div>'
        f'<div class="facts">{"".join(f"<span>{esc(f)}</span>" for f in facts)}</div>'
        f'<div class="links"><a class="magnet" href="{esc(e.magnet)}">magnet</a>'
        f'<a class="torrent-file" href="{esc(e.torrent_file)}">.torrent</a>'
        f'<code class="muted">{esc(ih)}</code></div></li>'
    )
