"""The publication statement and the trust file on their own: format, hostile input, signatures, rollback."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from packager import layout, trust
from packager.errors import FileNotAuthenticated, PublicationRefused, UntrustedManifest
from packager.signing import generate_keypair, load_signing_key
from packager.trust import trustfile
from tests.helpers import HEX64

MANIFESTS = Path(__file__).parent.parent / "manifests"
T0 = "2025-01-01T00:00:00Z"


def schema(name: str) -> dict:
    return json.loads((MANIFESTS / f"{name}.schema.json").read_text())


def digest(data: bytes) -> trust.FileDigest:
    return trust.FileDigest(len(data), hashlib.sha256(data).hexdigest())


FILES = {"release.json": b'{"a": 1}\n', "torrents/x.tar.zst.torrent": b"d4:infod", "SHA256SUMS": b""}


def chain(count: int, release: str = "r", valid_until: str | None = None) -> list[bytes]:
    """`count` statements chained one to the next, each listing FILES plus the earlier statements."""
    out: list[bytes] = []
    for n in range(1, count + 1):
        files = {rel: digest(data) for rel, data in FILES.items()}
        files |= {layout.statement_file(i + 1): digest(body) for i, body in enumerate(out)}
        files["feed.xml"] = digest(f"feed {n}".encode())  # a file that changes with every publication
        previous = trust.Previous(n - 1, hashlib.sha256(out[-1]).hexdigest()) if out else None
        out.append(trust.statement_json(release, n, T0, files, previous, valid_until))
    return out


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    pair = generate_keypair(tmp_path_factory.mktemp("keys") / "k.key", None)
    return pair, load_signing_key(pair.secret)


def sign(key, data: bytes) -> bytes:
    return key[1].sign(data, layout.STATEMENT, 1735689600)


# ---- format ------------------------------------------------------------------------------------------------


STAMP = st.datetimes(datetime(2000, 1, 1), datetime(2200, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")
)
PATHS = st.lists(st.from_regex(r"[a-z0-9._-]{1,12}", fullmatch=True), min_size=1, max_size=3).map("/".join)


@given(
    st.dictionaries(PATHS, st.tuples(st.integers(0, 2**62), HEX64), max_size=20),
    st.integers(1, 10**6),
    STAMP,
    st.none() | STAMP,
    HEX64,
)
def test_statement_round_trips_and_matches_its_schema(raw, number, at, until, previous_hash):
    never = ("publication.json", "swarm.json")
    files = {p: trust.FileDigest(size, h) for p, (size, h) in raw.items()
             if all(part not in (".", "..") for part in p.split("/")) and p not in never}  # fmt: skip
    previous = None
    if number > 1:
        previous = trust.Previous(number - 1, previous_hash)
        files[layout.statement_file(number - 1)] = trust.FileDigest(10, previous_hash)
    data = trust.statement_json("rel.1", number, at, files, previous, until)
    jsonschema.validate(json.loads(data), schema("publication"), cls=jsonschema.Draft202012Validator)
    s = trust.read_statement(data)
    assert (s.release, s.publication, s.published_at, s.valid_until, s.previous) == (
        "rel.1", number, at, until, previous)  # fmt: skip
    assert dict(s.files) == files and s.sha256 == hashlib.sha256(data).hexdigest() and s.key_id is None
    assert trust.statement_json("rel.1", number, at, files, previous, until) == data  # deterministic


def hostile(**change) -> bytes:
    doc = json.loads(chain(2)[1])
    doc.update(change)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"format": 1, "torrents": []}', "not a packager publication statement"),
        (hostile(format=2), "format 2"),
        (hostile(publication=0), "publication is 0"),
        (hostile(publication=True), "publication is True"),
        (hostile(publication=2.0), "publication is 2.0"),
        (hostile(publication=2**80), "publication is"),
        (hostile(publication=3), "names publication 1 as its previous"),
        (hostile(previous=None), "names no previous statement"),
        (hostile(release="../etc"), "release is"),
        (hostile(published_at="2025-02-30T00:00:00Z"), "not a real date"),
        (hostile(valid_until="tomorrow"), "valid_until is"),
        (hostile(files={"a": 1}), "files is not a list"),
        (hostile(files=[{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]), "not a plain relative"),
        (hostile(files=[{"path": "a/../b", "size": 1, "sha256": "0" * 64}]), "'..' component"),
        (hostile(files=[{"path": "a\x1b[2Jb", "size": 1, "sha256": "0" * 64}]), "not a plain relative"),
        (hostile(files=[{"path": "a\\b", "size": 1, "sha256": "0" * 64}]), "not a plain relative"),
        (hostile(files=[{"path": "x" * 2000, "size": 1, "sha256": "0" * 64}]), "longer than"),
        (hostile(files=[{"path": "a", "size": -1, "sha256": "0" * 64}]), "files[0].size is -1"),
        (hostile(files=[{"path": "a", "size": 1, "sha256": "0" * 63}]), "files[0].sha256"),
        (hostile(files=[{"path": "a", "size": 1, "sha256": "A" * 64}]), "files[0].sha256"),
        (hostile(files=[{"path": "swarm.json", "size": 1, "sha256": "0" * 64}]), "cannot be part"),
        (hostile(files=[{"path": "publication.json", "size": 1, "sha256": "0" * 64}]), "cannot be part"),
        (hostile(files=[{"path": "a", "size": 1, "sha256": "0" * 64}] * 2), "listed twice"),
        (hostile(files=[]), "publications/000001.json not at all"),
    ],
)
def test_hostile_statements_are_refused_naming_what_is_wrong(data, reason):
    with pytest.raises(UntrustedManifest, match=reason.replace("[", r"\[").replace("(", r"\(")):
        trust.read_statement(data)


def test_counts_and_sizes_are_bounded(monkeypatch):
    monkeypatch.setattr(trust.statement, "MAX_FILES", 3)
    with pytest.raises(UntrustedManifest, match="lists 4 files, more than 3"):
        trust.read_statement(chain(1)[0])
    monkeypatch.setattr(trust.statement, "MAX_STATEMENT_BYTES", 100)
    with pytest.raises(UntrustedManifest, match="more than a statement may hold"):
        trust.read_statement(chain(1)[0])


# ---- checking files against it -------------------------------------------------------------------------


def test_check_accepts_the_listed_bytes_and_refuses_any_other(tmp_path):
    s = trust.read_statement(chain(1)[0])
    assert s.check("release.json", FILES["release.json"]) == FILES["release.json"]
    for data, reason in (
        (b'{"a": 2}\n', "SHA-256"),
        (b'{"a": 1}\n\n', "more than the 9 bytes"),
        (b"{", "1 bytes"),
    ):
        with pytest.raises(FileNotAuthenticated, match=reason) as e:
            s.check("release.json", data)
        assert e.value.publication == 1 and e.value.exit_code == 2
    with pytest.raises(FileNotAuthenticated, match="not part of publication 1"):
        s.check("members.sqlite", b"")
    checker = s.checker("torrents/x.tar.zst.torrent")
    checker.update(b"d4:")
    checker.update(b"infod")
    checker.finish()
    on_disk = tmp_path / "release.json"
    on_disk.write_bytes(FILES["release.json"])
    s.check_file("release.json", on_disk)
    on_disk.write_bytes(b"x" * 10**6)
    with pytest.raises(FileNotAuthenticated, match="1000000 bytes, publication 1 lists 9"):
        s.check_file("release.json", on_disk)
    on_disk.unlink()
    os.mkfifo(on_disk)  # a file that never ends: refused before a byte is read
    with pytest.raises(FileNotAuthenticated, match="not a regular file"):
        s.check_file("release.json", on_disk)
    on_disk.unlink()
    on_disk.symlink_to("/dev/zero")
    with pytest.raises(FileNotAuthenticated, match="cannot be read|not a regular file"):
        s.check_file("release.json", on_disk)


def test_publication_of_names_the_newest_publication_that_lists_the_bytes():
    statements = [trust.read_statement(body) for body in chain(3)]
    newest, history = statements[-1], statements[:-1]
    feed = {n: hashlib.sha256(f"feed {n}".encode()).hexdigest() for n in (1, 2, 3)}
    assert newest.publication_of("feed.xml", feed[2], history) == 2
    assert newest.publication_of("feed.xml", feed[3], history) == 3
    assert newest.publication_of("release.json", digest(FILES["release.json"]).sha256, history) == 3
    assert newest.publication_of("feed.xml", "0" * 64, history) is None


# ---- signatures ----------------------------------------------------------------------------------------


def test_load_statement_authenticates_with_the_key(key, tmp_path):
    data = chain(1)[0]
    public = key[0].public.read_text()
    s = trust.load_statement(data, sign(key, data), public)
    assert s.key_id == key[0].key_id and s.authenticated
    assert trust.load_statement(data, None, None).key_id is None  # no key: consistency only
    line = public.splitlines()[1]
    assert trust.load_statement(data, sign(key, data), line).key_id == key[0].key_id
    other = load_signing_key(generate_keypair(tmp_path / "other.key", None).secret)
    edited = data.replace(b'"feed.xml"', b'"feed.xmL"')
    for args, reason in (
        ((data, None, public), "has no signature"),
        ((edited, sign(key, data), public), "does not match its signature"),
        (
            (data, other.sign(data, "publication.json", 1), public),
            f"signed by key {other.key_id}, not by the key given \\({key[0].key_id}\\)",
        ),
        ((data, b"untrusted comment: x\nnot base64\n", public), "not a minisign signature"),
        ((data, b"x" * 10**6, public), "not a minisign signature"),
    ):
        with pytest.raises(PublicationRefused, match=reason):
            trust.load_statement(*args)


def test_an_expired_statement_is_refused():
    data = chain(1, valid_until="2025-01-02T00:00:00Z")[0]
    assert trust.load_statement(data, None, None, now=datetime(2025, 1, 1, 12, tzinfo=UTC))
    with pytest.raises(PublicationRefused, match="expired at 2025-01-02T00:00:00Z") as e:
        trust.load_statement(data, None, None, now=datetime(2025, 1, 2, 0, 0, 1, tzinfo=UTC))
    assert e.value.exit_code == 2


# ---- the trust file ------------------------------------------------------------------------------------


def test_trust_file_refuses_rollback_and_forks_and_follows_the_chain(key, tmp_path):
    public = key[0].public.read_text()
    tf = trust.TrustFile(tmp_path / "state" / "trust.json")
    bodies = chain(4)
    s = [trust.load_statement(b, sign(key, b), public, tf) for b in bodies]
    assert tf.accept(s[2]) and not tf.accept(s[1]) and not tf.accept(s[2])  # never goes down
    doc = json.loads(tf.path.read_text())
    jsonschema.validate(doc, schema("trust"), cls=jsonschema.Draft202012Validator)
    assert doc["trusted"][0]["publication"] == 3 and doc["trusted"][0]["sha256"] == s[2].sha256
    for older in bodies[:2]:
        refused = r"is publication \d \(.*\), older than the publication 3"
        with pytest.raises(PublicationRefused, match=refused) as e:
            trust.load_statement(older, sign(key, older), public, tf)
        assert (e.value.trusted, e.value.exit_code) == (3, 2)
    assert trust.load_statement(bodies[2], sign(key, bodies[2]), public, tf).publication == 3
    assert trust.load_statement(bodies[3], sign(key, bodies[3]), public, tf).publication == 4
    # Another history signed with the same key: same number, or a later one not containing ours.
    fork = chain(4, release="r")  # same files...
    forked = [trust.statement_json("r", 3, "2025-06-01T00:00:00Z", json_files(fork[2]),
                                   trust.read_statement(fork[2]).previous)]  # fmt: skip
    with pytest.raises(PublicationRefused, match="does not continue the publication 3"):
        trust.load_statement(forked[0], sign(key, forked[0]), public, tf)
    # Without a key nothing is authenticated, so nothing is checked against (or written to) the trust file.
    assert trust.load_statement(bodies[0], None, None, tf).publication == 1
    assert not tf.accept(trust.read_statement(bodies[3]))
    # Other releases (or keys) have their own entries.
    r2 = chain(1, release="other")[0]
    assert tf.accept(trust.load_statement(r2, sign(key, r2), public, tf))
    assert {t["release"] for t in json.loads(tf.path.read_text())["trusted"]} == {"r", "other"}


def json_files(body: bytes) -> dict[str, trust.FileDigest]:
    files = dict(trust.read_statement(body).files)
    files["feed.xml"] = digest(b"a different feed")
    return files


@pytest.mark.parametrize(
    "content",
    [b"{", b'{"format": 9, "trusted": []}', b'{"format": 1, "trusted": [{"release": "r"}]}', b"[]" * 10**7],
)
def test_a_damaged_trust_file_is_refused_with_what_to_do(key, tmp_path, content):
    tf = trust.TrustFile(tmp_path / "trust.json")
    tf.path.write_bytes(content)
    body = chain(1)[0]
    with pytest.raises(UntrustedManifest, match="trust") as e:
        trust.load_statement(body, sign(key, body), key[0].public.read_text(), tf)
    assert e.value.hint and "backup" in e.value.hint


def test_default_trust_file_location(monkeypatch, tmp_path):
    monkeypatch.delenv(trust.TRUST_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert trust.default_trust_file() == tmp_path / "xdg" / "packager" / "trust.json"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert trust.default_trust_file() == Path.home() / ".local" / "share" / "packager" / "trust.json"
    monkeypatch.setenv(trust.TRUST_FILE_ENV, str(tmp_path / "t.json"))
    assert trust.default_trust_file() == tmp_path / "t.json"


def test_a_trust_file_too_big_says_so_in_a_sentence(key, tmp_path):
    """The message read 'the trust file more than 16777216 bytes'."""
    tf = trust.TrustFile(tmp_path / "trust.json")
    tf.path.write_bytes(b" " * (trustfile.MAX_TRUST_FILE_BYTES + 1))
    body = chain(1)[0]
    with pytest.raises(UntrustedManifest) as e:
        trust.load_statement(body, sign(key, body), key[0].public.read_text(), tf)
    assert f"the trust file is more than {trustfile.MAX_TRUST_FILE_BYTES:,} bytes" in e.value.reason
