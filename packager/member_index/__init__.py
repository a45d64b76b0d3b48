"""The release-wide member index: item id -> torrent, path, hashes, shard bytes, frames and pieces.

format.py   the partition rule, a member's row, the root and the chunks: encoding, and decoding of
            hostile input
reader.py   a lookup through a folder, a mirror or the swarm, reading only the chunks it needs
buckets.py  the external sort: rows spilled to bucket files by hash prefix, sorted, cut into parts
writer.py   rows in, members.pack and index.json out (in worker processes at scale)

The tunables live in the module that reads them (format.PART_ROWS, writer.SORT_BYTES, writer.WORKERS,
writer.POOL_MEMBERS): set them there.
"""

from __future__ import annotations

from .format import IndexedTorrent, Location, bits_for, directory_bits, member_rows
from .reader import FolderFiles, IndexFiles, MemberIndex, published_folder
from .writer import IndexWritten, MemberIndexWriter

__all__ = [
    "FolderFiles",
    "IndexFiles",
    "IndexWritten",
    "IndexedTorrent",
    "Location",
    "MemberIndex",
    "MemberIndexWriter",
    "bits_for",
    "directory_bits",
    "member_rows",
    "published_folder",
]
