"""The live swarm files of a published folder: swarm.json (for scripts and `packager pick`) and swarm.html
(for people), writer and reader.

They are advisory and unsigned, and change with every `packager health` run, so they are kept apart from
the publication: never listed in SHA256SUMS nor in anything signed, never rendered into index.html (which is
frozen with the publication and only links here). A mirror may serve them stale or not at all; nothing a
downloader checks depends on them. Schema: manifests/swarm.schema.json.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import write_atomic
from ..layout import INDEX_HTML, SWARM_HTML, SWARM_JSON
from ..units import format_size
from .model import BUCKET_NAMES, Summary, SwarmView, TorrentHealth

FORMAT = 1
ADVISORY = (
    "Live swarm statistics from tracker scrapes and the release's own seeder. Advisory and unsigned: it "
    "changes with every scrape and proves nothing about the files; check downloads against the signed "
    "release.json and SHA256SUMS."
)
HISTORY_COLUMNS = ("date", "seeders", "leechers", "completed")


def swarm_dict(view: SwarmView) -> dict:
    return {
        "format": FORMAT,
        "release": view.release,
        "advisory": ADVISORY,
        "generated_at": view.at,
        "sources": [
            {
                "source": s.source,
                "protocol": s.protocol,
                "answered": s.answered,
                "error": s.error,
                "seconds": s.seconds,
            }
            for s in view.sources
        ],
        "summary": [s.as_dict() for s in view.summaries],
        "history": [{"date": day, **_history_summary(s)} for day, s in view.history],
        "history_columns": list(HISTORY_COLUMNS),
        "torrents": [_torrent_dict(t) for t in view.torrents],
        "member_index": _torrent_dict(view.index) if view.index is not None else None,
    }


def _history_summary(s: Summary) -> dict:
    d = s.as_dict()
    return {k: d[k] for k in ("torrents", "bytes", "buckets", "share_bytes_4_or_more", "share_bytes_over_10")}


def _torrent_dict(t: TorrentHealth) -> dict:
    return {
        "name": t.name,
        "phase": t.phase,
        "tier": t.tier,
        "btih": t.info_hash_v1,
        "info_hash_v2": t.info_hash_v2,
        "data_size": t.size,
        "obsolete": t.obsolete,
        "seeders": t.seeders,
        "leechers": t.leechers,
        "completed": t.completed,
        "scraped_at": t.scraped_at,
        "bucket": t.bucket,
        "sources": [
            {"source": r.source, "seeders": r.seeders, "leechers": r.leechers, "completed": r.completed}
            for r in t.sources
        ],
        "history": [[d.day, d.seeders, d.leechers, d.completed] for d in t.history],
    }


def swarm_json(view: SwarmView) -> bytes:
    # One torrent a line: readable, diffable, and a tenth of the size of indenting every field.
    data = swarm_dict(view)
    torrents, index = data.pop("torrents"), data.pop("member_index")
    head = json.dumps(data, indent=1, ensure_ascii=False)
    line = json.dumps(index, ensure_ascii=False, separators=(",", ":"))
    rows = ",\n".join("  " + json.dumps(t, ensure_ascii=False, separators=(",", ":")) for t in torrents)
    return (head[:-2] + f',\n "member_index": {line},\n "torrents": [\n' + rows + "\n ]\n}\n").encode()


def live_files(view: SwarmView) -> dict[str, bytes]:
    return {SWARM_JSON: swarm_json(view), SWARM_HTML: swarm_html(view)}


def write_live_files(folder: Path, view: SwarmView) -> tuple[Path, ...]:
    """Replace swarm.json and swarm.html in a published folder (each atomically); nothing if the folder
    does not exist. Publish renders them too, from the same state, so a new publication keeps them."""
    folder = Path(folder)
    if not folder.is_dir():
        return ()
    written = []
    for name, data in live_files(view).items():
        write_atomic(folder / name, data)
        written.append(folder / name)
    return tuple(written)


# ---- reading swarm.json (a mirror's, so hostile) ----------------------------------------------------------


@dataclass(frozen=True)
class LiveCounts:
    seeders: int | None
    leechers: int | None
    completed: int | None
    scraped_at: str | None


def read_swarm_counts(data: bytes) -> tuple[dict[str, LiveCounts], dict[str, LiveCounts]]:
    """(by torrent name, by btih) from swarm.json bytes; ValueError naming what is wrong. Entries whose
    counts are not small non-negative integers are ignored: a wrong count must not make a torrent look
    seeded (or needy) on a lying mirror's word."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("torrents"), list):
        raise ValueError(f"not a packager swarm.json (format {FORMAT} with a list of torrents)")
    by_name, by_btih = {}, {}
    index = doc.get("member_index")
    for t in [*doc["torrents"], *([index] if isinstance(index, dict) else [])]:
        if not isinstance(t, dict):
            continue
        values = [t.get(k) for k in ("seeders", "leechers", "completed")]
        if not all(v is None or (type(v) is int and 0 <= v <= 10_000_000) for v in values):
            continue
        when = t.get("scraped_at") if isinstance(t.get("scraped_at"), str) else None
        counts = LiveCounts(*values, when)
        if isinstance(t.get("name"), str):
            by_name[t["name"]] = counts
        if isinstance(t.get("btih"), str):
            by_btih[t["btih"].lower()] = counts
    return by_name, by_btih


# ---- swarm.html -------------------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light dark; --muted: #6a6a6a; --line: #8884; }
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; } h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; }
.muted, small { color: var(--muted); }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { padding: .15rem .7rem .15rem 0; text-align: right; border-bottom: 1px solid var(--line); }
th:first-child, td:first-child { text-align: left; }
td.name { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.b0 { color: #c0392b; font-weight: 600; } .error { color: #c0392b; }
.bar { display: inline-block; height: .7rem; background: #2e86c1; vertical-align: middle; }
"""


def swarm_html(view: SwarmView) -> bytes:
    """A static page (no script, nothing fetched from elsewhere): the buckets per phase and tier, the
    sources and their errors, the torrents that need seeders most, and the daily history."""
    esc = html.escape
    s = view.release_summary
    when = f"scraped {esc(view.at)}" if view.at else "not scraped yet (run `packager health`)"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(view.release)}: swarm health</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(view.release)}: swarm health</h1>",
        f"<p class=muted>{when}. {esc(ADVISORY)} The release itself is listed in "
        f'<a href="{INDEX_HTML}">{INDEX_HTML}</a>; these numbers as JSON: '
        f'<a href="{SWARM_JSON}">{SWARM_JSON}</a>.</p>',
        f"<p>{s.torrents} torrents, {format_size(s.bytes)}: "
        f"{s.share_4_or_more:.0%} of the bytes are in at least 4 places, "
        f"{s.share_over_10:.0%} in more than 10.</p>",
        "<h2>Seeders per phase and tier</h2>",
        _summary_table(view.summaries),
    ]
    if view.sources:
        parts += ["<h2>Sources</h2>", _sources_table(view)]
    needy = sorted(
        (t for t in view.torrents if not t.obsolete),
        key=lambda t: (t.seeders if t.seeders is not None else -1, -t.size, t.name),
    )[:50]
    parts += [
        "<h2>Torrents that need seeders most</h2>",
        "<p class=muted>Fewest seeders first; <code>packager pick</code> makes a list for the space you "
        "have.</p>",
        _torrent_table(needy),
    ]
    if view.index is not None:
        parts += [
            "<h2>The member index</h2>",
            "<p class=muted>Its own torrent: seed it beside the shards, so a mirror or a downloader needs no "
            "HTTP to find which pieces hold an item.</p>",
            _torrent_table([view.index]),
        ]
    if view.history:
        parts += ["<h2>History</h2>", _history_table(view.history)]
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def _summary_table(summaries) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(n)} seeders</th>" for n in BUCKET_NAMES)
    rows = []
    for s in summaries:
        label = "all" if s.phase is None else esc(s.phase) if s.tier is None else f"&nbsp;&nbsp;{esc(s.tier)}"
        cells = "".join(
            f"<td>{s.buckets[n].torrents} <small>{format_size(s.buckets[n].bytes)}</small></td>"
            for n in BUCKET_NAMES
        )
        rows.append(
            f"<tr><td>{label}</td><td>{s.torrents}</td>{cells}"
            f"<td>{s.share_4_or_more:.0%}</td><td>{s.share_over_10:.0%}</td></tr>"
        )
    return (
        f'<div class="table"><table><thead><tr><th></th><th>torrents</th>{head}'
        "<th>bytes in &ge; 4</th><th>bytes in &gt; 10</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _sources_table(view: SwarmView) -> str:
    esc = html.escape
    rows = [
        f"<tr><td>{esc(s.source)}</td><td>{esc(s.protocol)}</td><td>{s.answered}</td>"
        f"<td>{s.seconds:.1f} s</td><td class=error>{esc(s.error or '')}</td></tr>"
        for s in view.sources
    ]
    return (
        '<div class="table"><table><thead><tr><th>source</th><th>protocol</th><th>torrents answered</th>'
        "<th>took</th><th>error</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _torrent_table(torrents) -> str:
    esc = html.escape
    rows = []
    for t in torrents:
        seeders = "?" if t.seeders is None else str(t.seeders)
        rows.append(
            f"<tr><td class=name>{esc(t.name)}</td><td>{format_size(t.size)}</td>"
            f'<td class="{"b0" if t.seeders == 0 else ""}">{seeders}</td>'
            f"<td>{'?' if t.leechers is None else t.leechers}</td>"
            f'<td><a href="{esc(t.magnet)}">magnet</a> <a href="{esc(t.torrent_file)}">.torrent</a></td></tr>'
        )
    return (
        '<div class="table"><table><thead><tr><th>torrent</th><th>size</th><th>seeders</th><th>leechers</th>'
        "<th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _history_table(history) -> str:
    rows = []
    for day, s in reversed(history):
        width = round(100 * s.share_4_or_more)
        rows.append(
            f"<tr><td>{html.escape(day)}</td><td>{s.buckets['0'].torrents}</td>"
            f'<td>{s.share_4_or_more:.0%} <span class=bar style="width:{width / 10:.1f}rem"></span></td>'
            f"<td>{s.share_over_10:.0%}</td></tr>"
        )
    return (
        '<div class="table"><table><thead><tr><th>day</th><th>torrents with 0 seeders</th>'
        "<th>bytes in &ge; 4</th><th>bytes in &gt; 10</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )
