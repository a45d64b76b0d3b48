"""`packager push` without a real client: the password from a file or the environment and never in any
output, and a torrent found under whichever hash the client names it by (qBittorrent: a hybrid torrent by
its truncated v2 hash). The real clients are in tests/interop/test_swarm_push.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from packager import clients
from packager.cli import app
from packager.clients import PASSWORD_ENV, client_password, parse_client_url, push
from packager.errors import UsageError
from packager.seed.selection import SeedTorrent
from tests.fake_tracker import unused_port

V1 = "a" * 40
V2 = "b" * 64


def torrent(tmp_path, name, v1, v2) -> SeedTorrent:
    path = tmp_path / f"{name}.torrent"
    path.write_bytes(b"d4:infod4:name1:xee")
    return SeedTorrent(1, name, "audio", tmp_path / name, 1, path, v1, v2)


class QbtLike(clients._Client):
    """Names a torrent by its best hash (the truncated v2 one when it has v2) and answers only that name."""

    def __init__(self):
        self.have: dict[str, SeedTorrent] = {}

    def present(self) -> set[str]:
        return set()

    def add(self, t, metainfo, save_path):
        self.have[(t.info_hash_v2 or "")[:40] or t.info_hash_v1] = t
        return None

    def states(self, hashes):
        return {h: "stalledUP" for h in hashes if h in self.have}


def test_a_hybrid_torrent_listed_under_its_v2_hash_is_added(tmp_path, monkeypatch):
    fake = QbtLike()
    monkeypatch.setattr(clients, "connect", lambda *a, **k: fake)
    torrents = [torrent(tmp_path, "v1", V1, None), torrent(tmp_path, "hybrid", "c" * 40, V2),
                torrent(tmp_path, "v2", None, "d" * 64)]  # fmt: skip
    results = push(torrents, "qbittorrent+http://admin@127.0.0.1:1", "/data", settle_seconds=2)
    assert [(r.name, r.result, r.detail) for r in results] == [
        ("v1", "added", "stalledUP"),
        ("hybrid", "added", "stalledUP"),
        ("v2", "added", "stalledUP"),
    ]


class Recording(QbtLike):
    def __init__(self):
        super().__init__()
        self.folders: dict[str, str] = {}

    def add(self, t, metainfo, save_path):
        self.folders[t.name] = save_path
        return super().add(t, metainfo, save_path)


def test_the_member_index_torrent_gets_the_folder_of_its_pack(tmp_path, monkeypatch):
    """Its data is members/members.pack: members/ beside a mirror's shards/, the workspace's own
    published/members/ when the client sees the workspace, one download folder when all is in one."""
    shards, members = tmp_path / "ws" / "shards", tmp_path / "ws" / "published" / "members"
    shard = SeedTorrent(1, "s", "audio", shards / "s.tar.zst", 1, tmp_path / "s.torrent", V1, None)
    index = SeedTorrent(0, "member index", "member index", members / "members.pack", 1,
                        tmp_path / "members.torrent", "c" * 40, None)  # fmt: skip
    for t in (shard, index):
        t.torrent.write_bytes(b"d4:infod4:name1:xee")
    cases = [
        ("/srv/music/shards", None, "/srv/music/members"),  # a mirror's layout, as README shows it
        ("/srv/music/shards/", None, "/srv/music/members"),
        (str(shards), None, str(members)),  # this workspace, as the client sees it
        ("/downloads", None, "/downloads"),  # every torrent's file in one folder
        ("/srv/music/shards", "/elsewhere/idx", "/elsewhere/idx"),  # --index-path
    ]
    for data_path, index_path, expected in cases:
        fake = Recording()
        monkeypatch.setattr(clients, "connect", lambda *a, fake=fake, **k: fake)
        results = push([shard, index], "qbittorrent+http://h:1", data_path, settle_seconds=2,
                       index_path=index_path)  # fmt: skip
        assert fake.folders == {"s": data_path, "member index": expected}, data_path
        assert [(r.name, r.result, r.save_path) for r in results] == [
            ("s", "added", data_path), ("member index", "added", expected)]  # fmt: skip


def test_a_torrent_the_client_never_lists_fails_after_the_bound(tmp_path, monkeypatch):
    fake = QbtLike()
    fake.add = lambda t, metainfo, save_path: None  # accepted, never listed
    monkeypatch.setattr(clients, "connect", lambda *a, **k: fake)
    (result,) = push(
        [torrent(tmp_path, "x", V1, None)], "qbittorrent+http://h:1", "/data", settle_seconds=0.5
    )
    assert result.result == "failed" and "not listed by the client within 0.5 s" in result.detail


def test_password_from_a_file_then_the_environment_then_the_url(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\nsecond line\n")
    assert client_password(secret, {PASSWORD_ENV: "from-env"}) == "from-file"
    assert client_password(None, {PASSWORD_ENV: "from-env"}) == "from-env"
    assert client_password(None, {}) is None
    url = parse_client_url("qbittorrent+http://admin:in-url@h:1", "from-file")
    assert url.password == "from-file" and "from-file" not in url.display
    assert parse_client_url("qbittorrent+http://admin:in-url@h:1").password == "in-url"
    (tmp_path / "empty").write_text("")
    for bad in (tmp_path / "empty", tmp_path / "missing", tmp_path):
        with pytest.raises(UsageError):
            client_password(bad, {})


def test_a_bad_client_url_is_never_echoed_with_its_password():
    for url in ("qbittorrent+http://admin:hunter2@h:99999", "deluge+http://admin:hunter2@h:1"):
        with pytest.raises(UsageError) as e:
            parse_client_url(url)
        assert "hunter2" not in str(e.value) and "admin:***@" in str(e.value)


def test_cli_warns_about_a_password_in_the_url_and_never_prints_it(published):
    port = unused_port()
    for scheme in ("qbittorrent+http", "transmission+http"):
        result = CliRunner().invoke(
            app,
            [
                "push",
                str(published),
                "--client",
                f"{scheme}://admin:hunter2@127.0.0.1:{port}",
                "--data-path",
                "/d",
            ],
        )
        assert result.exit_code == 3, result.output
        assert "password in --client is visible to every user" in result.output
        assert "hunter2" not in result.output and "admin@127.0.0.1" in result.output
        quiet = CliRunner(env={PASSWORD_ENV: "hunter2"}).invoke(
            app,
            ["push", str(published), "--client", f"{scheme}://admin@127.0.0.1:{port}", "--data-path", "/d"],
        )
        assert (
            quiet.exit_code == 3
            and "visible to every user" not in quiet.output
            and "hunter2" not in quiet.output
        )


def test_a_client_url_with_a_broken_ipv6_host_is_a_usage_error():
    """urlsplit's 'Invalid IPv6 URL' ValueError was a traceback (exit 1)."""
    for url in (
        "qbittorrent+http://admin:hunter2@[::1:8080",
        "transmission+http://[::1:9091/transmission/rpc",
    ):
        with pytest.raises(UsageError) as e:
            parse_client_url(url)
        assert "hunter2" not in str(e.value) and "not a client URL" in str(e.value)
