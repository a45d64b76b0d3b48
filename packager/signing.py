"""minisign (Ed25519) keys and signatures: the key pair `packager keygen` writes, the signing key publish
uses, and the check a downloader makes. The `minisign` binary reads and verifies all of them.

minisign (the Python binding, 75 ms to import) is imported here only: callers import this module where a
key or a signature is actually used.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import minisign

from .errors import PublishError, UsageError
from .fsutil import write_atomic


def public_key_path(secret_path: Path) -> Path:
    """keys/release.key -> keys/release.pub (minisign's own pairing); any other name gets `.pub` appended."""
    secret_path = Path(secret_path)
    if secret_path.suffix == ".key":
        return secret_path.with_suffix(".pub")
    return secret_path.with_name(secret_path.name + ".pub")


@dataclass(frozen=True)
class KeyPairFiles:
    secret: Path
    public: Path
    public_key: str  # the base64 line users pass to `minisign -P`
    key_id: str
    encrypted: bool

    def as_dict(self) -> dict:
        return {
            "secret_key": str(self.secret),
            "signing_key": str(self.secret.resolve()),  # for release.toml, from any folder
            "public_key_file": str(self.public),
            "public_key": self.public_key,
            "key_id": self.key_id,
            "encrypted": self.encrypted,
        }


def generate_keypair(secret_path: Path, password: str | None, force: bool = False) -> KeyPairFiles:
    """Write a minisign Ed25519 key pair: the secret key (mode 0600; scrypt-encrypted unless `password` is
    None) and the public key beside it. Refuses to overwrite either unless `force`."""
    secret_path = Path(secret_path)
    if secret_path.is_dir() or not secret_path.name or secret_path.name in (".", ".."):
        raise UsageError(
            f"{secret_path}: is a folder; give the path of the key file to write",
            hint="e.g. packager keygen keys/release.key",
        )
    public_path = public_key_path(secret_path)
    if not force:
        for path in (secret_path, public_path):
            if path.exists():
                raise UsageError(f"{path}: already exists", hint="choose another path, or pass --force")
    if password is not None and not password:
        raise UsageError(
            "the password is empty", hint="give a password, or pass --unencrypted for automation"
        )
    pair = minisign.KeyPair.generate()
    secret, public = pair.secret_key, pair.public_key
    if password is not None:
        secret.encrypt(password)
    public.untrusted_comment = f"minisign public key {key_id(public)}"
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(secret_path, bytes(secret) + b"\n")
    public_path.write_bytes(bytes(public) + b"\n")
    return KeyPairFiles(
        secret_path, public_path, public.to_base64().decode(), key_id(public), password is not None
    )


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o600)


def key_id(public: minisign.PublicKey) -> str:
    # The public key is "Ed" + 8-byte key id + 32-byte key; minisign prints the id as a little-endian
    # number in hex (`minisign public key 5A0B...`).
    return _id_of(base64.b64decode(public.to_base64()))


def _id_of(raw: bytes) -> str:
    """The key id in a decoded key or signature line: the 8 bytes after the 2-byte algorithm."""
    return f"{int.from_bytes(raw[2:10], 'little'):X}"


def signature_key_id(signature: bytes) -> str | None:
    """The id of the key that made a .minisig file (its second line: algorithm, key id, signature); None
    where that line is not there to read."""
    lines = signature.splitlines()
    try:
        raw = base64.b64decode(lines[1], validate=True)
    except (IndexError, ValueError):
        return None
    return _id_of(raw) if len(raw) >= 10 else None


@dataclass
class SigningKey:
    secret: minisign.SecretKey
    public_key: str  # base64, as in the .pub file's second line
    key_id: str
    path: Path

    def sign(self, data: bytes, file_name: str, timestamp: int) -> bytes:
        """A minisign signature file for `data` (prehashed, as minisign 0.10+ makes by default).

        Ed25519 is deterministic and the trusted comment takes its timestamp from the publication, not the
        clock, so the same key signs the same file to the same bytes: re-publishing changes nothing.
        """
        trusted = f"timestamp:{timestamp}\tfile:{file_name}\thashed"
        sig = self.secret.sign(
            data,
            prehash=True,
            trusted_comment=trusted,
            untrusted_comment="signature from minisign secret key",
        )
        return bytes(sig) + b"\n"


def load_signing_key(path: Path, password: Callable[[], str] | None = None) -> SigningKey:
    """Read a minisign secret key; `password()` is called only if the key is encrypted."""
    path = Path(path)
    try:
        secret = minisign.SecretKey.from_file(path)
    except FileNotFoundError:
        raise PublishError(
            path, "no such signing key", hint="create one with `packager keygen KEYFILE`"
        ) from None
    except OSError as e:
        raise PublishError(path, f"cannot read the signing key: {e.strerror}") from None
    except (minisign.Error, ValueError) as e:
        raise PublishError(path, f"not a minisign secret key ({e})") from None
    if secret.is_encrypted():
        if password is None:
            raise PublishError(
                path,
                "the signing key is encrypted and no password was given",
                hint="pass --password-file FILE or set PACKAGER_KEY_PASSWORD",
            )
        try:
            secret.decrypt(password())
        except minisign.Error:
            raise PublishError(path, "wrong password for this signing key") from None
    public = secret.get_public_key()
    return SigningKey(secret, public.to_base64().decode(), key_id(public), path)


class SignatureMismatch(Exception):
    """A well-formed signature that does not match the data and the key (minisign's own words)."""


class KeyMismatch(SignatureMismatch):
    """A signature made by another key than the one given: both ids, as `minisign` prints them."""

    def __init__(self, given: str, signer: str):
        self.given, self.signer = given, signer
        super().__init__(f"signed by key {signer}, not by the key given ({given})")


class NotMinisign(Exception):
    """A signature or a public key that minisign cannot read (minisign's own words)."""


def public_key_id(line: str) -> str:
    """The key id of a public key's base64 line; NotMinisign if it is not one."""
    try:
        return key_id(minisign.PublicKey.from_base64(line))
    except (minisign.Error, ValueError) as e:
        raise NotMinisign(str(e)) from None


def verify_signature(public_key: str | bytes, data: bytes, signature: bytes) -> str:
    """Check a minisign signature; return its trusted comment. SignatureMismatch if it does not match,
    NotMinisign if the signature or the key is not minisign's."""
    try:
        if isinstance(public_key, bytes) or "\n" in public_key:
            text = public_key.decode() if isinstance(public_key, bytes) else public_key
            public_key = [line for line in text.splitlines() if line and not line.startswith("untrusted")][0]
        pk = minisign.PublicKey.from_base64(public_key)
        sig = minisign.Signature.from_bytes(signature.rstrip(b"\n"))
        signer = signature_key_id(signature)
        if signer is not None and signer != key_id(pk):
            raise KeyMismatch(key_id(pk), signer)
        pk.verify(data, sig)
    except minisign.VerifyError as e:  # a minisign.Error too: first
        raise SignatureMismatch(str(e)) from None
    except (minisign.Error, ValueError, IndexError) as e:  # UnicodeDecodeError is a ValueError
        raise NotMinisign(str(e)) from None
    return sig.trusted_comment
