"""Every file and folder name of a release workspace and of a published release, defined once.

A workspace (``DIR/``)                         A published release (``DIR/published/``, a mirror's folder)
  release.toml      the config                    release.json (+ .minisig)   every torrent of every phase
  state.sqlite      catalog, plan, build state     torrents.json               the list mirrors' scripts read
  shards/           <name>.tar.zst                 SHA256SUMS (+ .minisig)     coreutils checksums
  torrents/         <name>.tar.zst.torrent         whitelist.txt               opentracker's access list
                    members.torrent (`torrent`)    feed.xml, index.html        RSS and a static page
  published/        the published release          members/index.json          the member index's root
  seed/             <info-hash>.fastresume         members/members.pack        its parts (read in ranges)
  rejects.jsonl     rows --skip-invalid refused    torrents/members.torrent    the pack's own torrent
                                                   publication.json (+ .minisig)  the signed statement
                                                   publications/               earlier statements
                                                   swarm.json, swarm.html      live stats, unsigned
                                                   torrents/, shards/          as in the workspace

Paths recorded in state.sqlite and in release.json are relative POSIX paths built here (``shard_file``,
``torrent_file``), so the workspace and a mirror's folder share one shape.
"""

from __future__ import annotations

import re

# ---- the workspace ----------------------------------------------------------------------------------------
CONFIG = "release.toml"
STATE = "state.sqlite"
SHARDS = "shards"
TORRENTS = "torrents"
PUBLISHED = "published"
RESUME = "seed"  # the seeder's fast-resume files
REJECTS = "rejects.jsonl"

# ---- suffixes ---------------------------------------------------------------------------------------------
SHARD_SUFFIX = ".tar.zst"
TORRENT_SUFFIX = ".torrent"
PART_SUFFIX = ".part"  # a file being written; renamed into place when complete
CHECKPOINT_SUFFIX = ".checkpoint"  # beside a shard's .part: where an interrupted build resumes
SEAL_SUFFIX = ".seal"  # beside a shard's .part: its identity (fstat) as its writer last left it
RESUME_SUFFIX = ".fastresume"
SIGNATURE_SUFFIX = ".minisig"

# ---- the published release --------------------------------------------------------------------------------
RELEASE_JSON = "release.json"
TORRENTS_JSON = "torrents.json"
SHA256SUMS = "SHA256SUMS"
WHITELIST = "whitelist.txt"
FEED = "feed.xml"
INDEX_HTML = "index.html"
# The signed publication statement (trust/): size and SHA-256 of every other published file, a number that
# only grows, the SHA-256 of the previous statement; earlier statements stay published under STATEMENTS/.
STATEMENT = "publication.json"
STATEMENTS = "publications"
# The member index (member_index/): a small root, listed in the signed publication, and the pack of
# chunks it authenticates. The pack is also served by its own single-file v1 torrent, whose info-hash the
# root gives; the torrent's name is MEMBER_INDEX_PACK_NAME, so a client's save folder for it is members/.
MEMBER_INDEX_DIR = "members"
MEMBER_INDEX = f"{MEMBER_INDEX_DIR}/index.json"
MEMBER_INDEX_PACK_NAME = "members.pack"
MEMBER_INDEX_PACK = f"{MEMBER_INDEX_DIR}/{MEMBER_INDEX_PACK_NAME}"
MEMBER_INDEX_TORRENT = f"{TORRENTS}/{MEMBER_INDEX_DIR}.torrent"
# Live, advisory and unsigned (packager health): beside the publication, never part of it, so nothing may
# sign or checksum them; they change with every scrape.
SWARM_JSON = "swarm.json"
SWARM_HTML = "swarm.html"
LIVE_FILES = (SWARM_JSON, SWARM_HTML)
# A publish writes PUBLISHED_TMP<random>/ and swaps it in; the old folder may pass as PUBLISHED_OLD<random>/.
PUBLISHED_TMP = f"{PUBLISHED}.tmp-"
PUBLISHED_OLD = f"{PUBLISHED}.old-"


def statement_file(publication: int) -> str:
    """``publications/000003.json``: an earlier publication's statement, kept so the chain can be walked."""
    return f"{STATEMENTS}/{publication:06d}.json"


def shard_file_name(name: str) -> str:
    """A shard's file name, which is also its torrent's name: ``<name>.tar.zst``."""
    return f"{name}{SHARD_SUFFIX}"


def shard_file(name: str) -> str:
    """``shards/<name>.tar.zst``, relative to a workspace or a mirror's folder."""
    return f"{SHARDS}/{shard_file_name(name)}"


def torrent_file_name(name: str) -> str:
    return f"{shard_file_name(name)}{TORRENT_SUFFIX}"


def torrent_file(name: str) -> str:
    """``torrents/<name>.tar.zst.torrent``, relative to a workspace or a mirror's folder."""
    return f"{TORRENTS}/{torrent_file_name(name)}"


def shard_name(file_name: str) -> str | None:
    """The shard name of a ``<name>.tar.zst`` file name; None for any other name."""
    if file_name.endswith(SHARD_SUFFIX) and len(file_name) > len(SHARD_SUFFIX):
        return file_name[: -len(SHARD_SUFFIX)]
    return None


def part_name(file_name: str) -> str:
    return f"{file_name}{PART_SUFFIX}"


def checkpoint_name(part_file_name: str) -> str:
    """``<name>.tar.zst.part.checkpoint``: the state of the writer of ``<name>.tar.zst.part``."""
    return f"{part_file_name}{CHECKPOINT_SUFFIX}"


def seal_name(part_file_name: str) -> str:
    """``<name>.tar.zst.part.seal``: the ``.part``'s identity after its writer's last write, by which a
    restart tells that nothing touched the ``.part`` while the build was down (container/resume.py)."""
    return f"{part_file_name}{SEAL_SUFFIX}"


# One attempt's own temporary file, ``<name>.tar.zst.<attempt>.part``: a cluster worker writes there, so two
# attempts at one shard (a worker presumed dead may still be writing) never share a file.
_ATTEMPT_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_ATTEMPT_PART_RE = re.compile(r"^(.+)\.([A-Za-z0-9_-]{1,100})" + re.escape(PART_SUFFIX) + "$")


def attempt_part_name(file_name: str, attempt: str) -> str:
    if not _ATTEMPT_RE.match(attempt):
        raise ValueError(f"attempt id {attempt!r}: letters, digits, '_' and '-' only")
    return f"{file_name}.{attempt}{PART_SUFFIX}"


def attempt_part_glob(file_name_pattern: str) -> str:
    """A glob for the attempts' files of `file_name_pattern` (a glob itself); filter with attempt_part_of."""
    return f"{file_name_pattern}.*{PART_SUFFIX}"


def attempt_part_of(file_name: str) -> str | None:
    """The shard file name (``<name>.tar.zst``) an attempt's temporary file belongs to; None for any other."""
    match = _ATTEMPT_PART_RE.match(file_name)
    if match and shard_name(match.group(1)) is not None:
        return match.group(1)
    return None


def signature_name(file_name: str) -> str:
    """The minisign signature beside a published file: ``SHA256SUMS.minisig``."""
    return f"{file_name}{SIGNATURE_SUFFIX}"


def resume_file_name(key: str) -> str:
    return f"{key}{RESUME_SUFFIX}"
