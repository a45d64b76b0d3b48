"""`packager push` of v1, hybrid and v2 torrents into qbittorrent-nox and transmission-daemon: what push
reports is what each client lists and seeds, under whichever hash the client names a torrent by, and the
password (from a file) appears in no output."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from packager.seed.selection import INDEX_NAME
from tests.helpers import prepare, run_build, wait_until

from .conftest import QBT_SEEDING, index_hash, shards_of

pytestmark = pytest.mark.interop

QBT_PASSWORD = "adminadmin"  # qbittorrent-nox 4.5's default Web UI password


@pytest.fixture
def formats_release(make_workspace, archive):
    """Published: metadata as v1, audio as hybrid (two tiers), art as v2."""
    ws = make_workspace(audio_shard="400kB")
    config = ws / layout.CONFIG
    text = config.read_text()
    text = text.replace('name = "audio"\n', 'name = "audio"\nformat = "hybrid"\n')
    text = text.replace('name = "art"\n', 'name = "art"\nformat = "v2"\n')
    config.write_text(text)
    rows = []
    for i, (kind, popularity) in enumerate([("metadata", 0), ("audio", 80), ("audio", 20), ("art", 5)]):
        path = f"{kind}/f{i}.bin"
        size = archive.add(path, os.urandom(150_000 + 1000 * i))
        rows.append({"id": f"i{i}", "path": path, "kind": kind, "popularity": popularity, "size": size})
    prepare(ws, archive, rows)
    assert not run_build(ws).failed
    for phase in ("metadata", "audio", "art"):
        result = CliRunner().invoke(app, ["publish", str(ws), "--phase", phase])
        assert result.exit_code == 0, result.output
    return ws


def push(ws, url, *extra, env=None):
    result = CliRunner(env=env).invoke(
        app, ["push", str(ws), "--client", url, "--data-path", str(ws / "shards"), *extra, "--json"]
    )
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("[") else None


def formats_of(ws) -> dict[str, str]:
    torrents = shards_of(ws)
    assert len(torrents) == 4
    with_v2 = json.loads((ws / "published" / "release.json").read_text())["torrents"]
    return {t["name"]: t["format"] for t in with_v2}


def test_push_v1_hybrid_and_v2_into_qbittorrent(formats_release, qbittorrent, tmp_path):  # noqa: F811
    import qbittorrentapi

    ws = formats_release
    formats = formats_of(ws)
    assert sorted(set(formats.values())) == ["hybrid", "v1", "v2"]
    secret = tmp_path / "qbt-password"
    secret.write_text(QBT_PASSWORD + "\n")
    url = f"qbittorrent+http://admin@127.0.0.1:{qbittorrent.port}"
    result, report = push(ws, url, "--password-file", str(secret), "--category", "formats")
    assert result.exit_code == 0, result.output
    assert QBT_PASSWORD not in result.output
    # The shards' torrents in each format, and the member index's own (v1, its data in published/members/).
    assert {r["name"]: r["result"] for r in report} == dict.fromkeys([*formats, INDEX_NAME], "added")
    assert all(r["detail"] for r in report)  # the state qBittorrent listed each one in

    client = qbittorrentapi.Client(host=f"http://127.0.0.1:{qbittorrent.port}", username="admin",
                                   password=QBT_PASSWORD)  # fmt: skip
    release = {t["name"]: t for t in json.loads((ws / "published" / "release.json").read_text())["torrents"]}
    release[INDEX_NAME] = {"info_hash_v1": index_hash(ws), "info_hash_v2": None}

    def listed() -> dict[str, dict]:
        """Our torrent name -> qBittorrent's entry, matched by any hash qBittorrent gives."""
        out = {}
        for t in client.torrents_info(category="formats"):
            names = {t.get("hash"), t.get("infohash_v1"), t.get("infohash_v2")} - {None, ""}
            for name, e in release.items():
                ours = {e["info_hash_v1"], e["info_hash_v2"], (e["info_hash_v2"] or "")[:40]} - {None, ""}
                if names & ours:
                    out[name] = t
        return out

    assert wait_until(lambda: all(t["state"] in QBT_SEEDING for t in listed().values()), 30, step=0.2)
    got = listed()
    assert set(got) == {*formats, INDEX_NAME}  # push's report is what the client lists ...
    for name, t in got.items():
        assert t["progress"] == 1 and t["state"] in QBT_SEEDING, (name, t["state"])  # ... and seeds
    hybrid = next(n for n, f in formats.items() if f == "hybrid")
    # The reason push once said "not listed": qBittorrent names a hybrid torrent by its truncated v2 hash.
    assert got[hybrid]["hash"] == release[hybrid]["info_hash_v2"][:40]

    again, report = push(ws, url, env={"PACKAGER_CLIENT_PASSWORD": QBT_PASSWORD})
    assert again.exit_code == 0 and {r["result"] for r in report} == {"present"}
    wrong, _ = push(ws, url, env={"PACKAGER_CLIENT_PASSWORD": "not-the-password"})
    assert wrong.exit_code == 3 and "login refused" in wrong.output and "not-the-password" not in wrong.output


def test_push_v1_hybrid_and_v2_into_transmission(formats_release, transmission):  # noqa: F811
    import transmission_rpc

    ws = formats_release
    formats = formats_of(ws)
    release = {t["name"]: t for t in json.loads((ws / "published" / "release.json").read_text())["torrents"]}
    release[INDEX_NAME] = {"info_hash_v1": index_hash(ws), "info_hash_v2": None}
    result, report = push(ws, f"transmission+http://127.0.0.1:{transmission.port}")
    outcome = {r["name"]: r["result"] for r in report}
    client = transmission_rpc.Client(host="127.0.0.1", port=transmission.port, timeout=10)

    def listed() -> dict[str, object]:
        by_hash = {t.hash_string.lower(): t for t in client.get_torrents()}
        return {n: by_hash[h] for n, e in release.items() for h in [e["info_hash_v1"] or ""] if h in by_hash}

    assert wait_until(lambda: all(t.status.value == "seeding" for t in listed().values()), 30, step=0.2)
    got = listed()
    assert set(got) == {n for n, r in outcome.items() if r == "added"}  # what push says it added is listed
    assert all(t.status.value == "seeding" and t.percent_done == 1 for t in got.values())
    # Transmission 3.00 takes the v1 torrent and refuses the hybrid and v2 ones (any info dict with a file
    # tree); push says so and exits 3.
    expected = {n: "added" if f == "v1" else "failed" for n, f in formats.items()}
    assert outcome == {**expected, INDEX_NAME: "added"}  # and the member index's torrent (v1)
    assert result.exit_code == 3
    for r in report:
        if r["result"] == "failed":
            assert r["detail"], r
