"""minisign keys and signatures: deterministic signing, encrypted keys, the public key's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.errors import PublishError, UsageError
from packager.signing import (
    NotMinisign,
    SignatureMismatch,
    generate_keypair,
    load_signing_key,
    public_key_id,
    public_key_path,
    verify_signature,
)


def test_keys_sign_deterministically_and_verify(tmp_path):
    pair = generate_keypair(tmp_path / "k.key", None)
    assert pair.public == tmp_path / "k.pub" and not pair.encrypted
    public = pair.public.read_text()
    assert public.startswith(f"untrusted comment: minisign public key {pair.key_id}\n")
    assert public.splitlines()[1] == pair.public_key
    key = load_signing_key(tmp_path / "k.key")
    assert key.key_id == pair.key_id
    sig = key.sign(b"hello\n", "SHA256SUMS", 1735689600)
    assert sig == key.sign(b"hello\n", "SHA256SUMS", 1735689600)
    assert verify_signature(public, b"hello\n", sig) == "timestamp:1735689600\tfile:SHA256SUMS\thashed"
    with pytest.raises(SignatureMismatch):
        verify_signature(pair.public_key, b"hellO\n", sig)
    with pytest.raises(NotMinisign):
        verify_signature(pair.public_key, b"hello\n", b"not a signature\n")
    with pytest.raises(NotMinisign):
        verify_signature("AAAA" * 14, b"hello\n", sig)
    assert public_key_id(pair.public_key) == pair.key_id
    with pytest.raises(NotMinisign):
        public_key_id("AAAA" * 14)
    with pytest.raises(UsageError, match="already exists"):
        generate_keypair(tmp_path / "k.key", None)


def test_encrypted_keys_need_the_right_password(tmp_path):
    generate_keypair(tmp_path / "enc.key", "s3cret")
    with pytest.raises(PublishError, match="no password was given"):
        load_signing_key(tmp_path / "enc.key")
    with pytest.raises(PublishError, match="wrong password"):
        load_signing_key(tmp_path / "enc.key", lambda: "guess")
    assert load_signing_key(tmp_path / "enc.key", lambda: "s3cret").public_key
    (tmp_path / "junk.key").write_text("not a key\n")
    with pytest.raises(PublishError, match="not a minisign secret key"):
        load_signing_key(tmp_path / "junk.key")
    with pytest.raises(PublishError, match="no such signing key"):
        load_signing_key(tmp_path / "missing.key")


def test_public_key_path():
    assert public_key_path(Path("keys/release.key")) == Path("keys/release.pub")
    assert public_key_path(Path("keys/release")) == Path("keys/release.pub")
    assert public_key_path(Path("keys/release.sec")) == Path("keys/release.sec.pub")
