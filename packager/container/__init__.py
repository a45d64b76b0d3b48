"""The shard container: a POSIX tar stream cut into independent zstd frames, with a zstd seek table.

Layout of a shard, in the order of its bytes::

    frame 0 ..            one member per run of frames: tar header + content + padding to 512
    ...                   (a member longer than frame_size continues in further frames)
    frame k .. n-1        the member manifest `.packager/manifest.jsonl` + the two end-of-archive blocks
    skippable frame       the seek table (zstd seekable format 0.1.0), checksum flag set

Every frame is a complete zstd frame with its content size and checksum, so `zstd -d` and `tar --zstd` read
the shard as an ordinary .tar.zst (they skip the skippable frame), while a reader that knows the seek table
decompresses only the frames it needs. Frames are cut on 512-byte tar block boundaries and hold at most
frame_size uncompressed bytes; a new frame starts at every member's header.

Modules: `format` (constants, seek table, tar headers, manifest lines), `writer` (write_shard), `reader`
(ShardReader), `scan` (the damage scan: frames and members of a shard that may be damaged).
"""

import importlib

from .format import (
    DEFAULT_FRAME_SIZE,
    MAX_FRAME_SIZE,
    RESERVED_MANIFEST_NAME,
    RESERVED_PREFIX,
    SEEKABLE_MAGIC,
    SKIPPABLE_MAGIC,
    Frame,
    MemberRecord,
    manifest_line,
    unsafe_name_reason,
)

# The writer (its threads, libzstd's cffi binding, the checkpoints) and the reader load on first use: a
# command that only reads shards, or only their format (verify --pieces), does not wait for the other.
_LAZY = {
    "ShardReader": "reader",
    "MemberSource": "writer",
    "ShardWritten": "writer",
    "write_shard": "writer",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "DEFAULT_FRAME_SIZE",
    "MAX_FRAME_SIZE",
    "RESERVED_MANIFEST_NAME",
    "RESERVED_PREFIX",
    "SEEKABLE_MAGIC",
    "SKIPPABLE_MAGIC",
    "Frame",
    "MemberRecord",
    "MemberSource",
    "ShardReader",
    "ShardWritten",
    "manifest_line",
    "unsafe_name_reason",
    "write_shard",
]
