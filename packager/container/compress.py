"""zstd frames compressed straight into the writer's output buffers, with the GIL released throughout.

python-zstandard's C backend (`compressobj`) hands back a new bytes object per call, grown in 128 KiB steps by
realloc and memcpy while it holds the GIL: 1 GiB of incompressible input at level -1 cost 0.33 s of CPU in
one thread, but two such threads took 0.43 s of wall time for 2 GiB with 0.83 s of CPU, because every step
waits for the GIL and copies. Its cffi backend exposes libzstd itself (`lib.ZSTD_compressStream2`), which
compresses into memory we own and releases the GIL for the whole call: the same 2 GiB on two threads took
0.30 s wall, 0.60 s CPU, and the output lands where the hashers and the O_DIRECT writer read it, unmoved.

Both backends are the same libzstd build of the same wheel, driven the same way (streaming, pledged size,
content size and checksum flags), so they write identical bytes; tests/test_container.py checks that. A
one-shot `compress()` would not: zstd's one-shot and streaming paths cut matches differently (31 of 118
inputs differed here), and the shards' bytes are pinned. Without cffi the C backend is used, copying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zstandard

try:  # the cffi backend needs the cffi package; it is optional for python-zstandard
    from zstandard import backend_cffi as _cffi_zstd
except ImportError:  # pragma: no cover - exercised where cffi is missing
    _cffi_zstd = None

# Output space: (address, writable memoryview, capacity, fill) of the buffer being filled; the callback is
# given the new fill and returns the space to use next (a fresh buffer when the old one is full).
Space = tuple[int, memoryview, int, int]


class FrameCompressor:
    """Compresses one frame at a time of exactly `size` pledged bytes (zstd checks the count).

    `compress(data, space, advance)` and `end(space, advance)` write into caller-owned buffers: `space` is
    the current buffer, and `advance(fill)` records how far it is filled and returns the space to continue
    in. The frame's last four bytes are its Content_Checksum (XXH64 low 32 bits of the frame's input),
    kept in `tail` for the seek table.
    """

    def __init__(self, level: int):
        self.level = level
        self.tail = b""
        self.produced = 0  # compressed bytes of the current frame
        if _cffi_zstd is not None and _cffi_ok():
            self._impl: _CffiFrames | _ObjFrames = _CffiFrames(level)
        else:
            self._impl = _ObjFrames(level)

    @property
    def zero_copy(self) -> bool:
        return isinstance(self._impl, _CffiFrames)

    def begin(self, size: int) -> None:
        self.tail = b""
        self.produced = 0
        self._impl.begin(size)

    def compress(self, data: Any, space: Space, advance: Callable[[int], Space]) -> Space:
        if not len(data):
            return space
        return self._impl.run(self, data, False, space, advance)

    def end(self, space: Space, advance: Callable[[int], Space]) -> Space:
        return self._impl.run(self, b"", True, space, advance)

    def _wrote(self, view: memoryview, start: int, stop: int) -> None:
        if stop > start:
            self.produced += stop - start
            self.tail = (self.tail + bytes(view[max(start, stop - 4) : stop]))[-4:]


def _cffi_ok() -> bool:
    return _cffi_zstd.lib.ZSTD_versionNumber() == zstandard.ZSTD_VERSION[0] * 10000 + (
        zstandard.ZSTD_VERSION[1] * 100 + zstandard.ZSTD_VERSION[2]
    )


class _CffiFrames:
    def __init__(self, level: int):
        ffi, lib = _cffi_zstd.ffi, _cffi_zstd.lib
        self._ffi, self._lib = ffi, lib
        cctx = lib.ZSTD_createCCtx()
        if cctx == ffi.NULL:
            raise MemoryError("cannot allocate a zstd compression context")
        self._cctx = ffi.gc(cctx, lib.ZSTD_freeCCtx)
        # What python-zstandard's ZstdCompressor(level, write_content_size=True, write_checksum=True,
        # threads=0) sets; libzstd's other parameters keep their defaults in both.
        for param, value in (
            (lib.ZSTD_c_compressionLevel, level),
            (lib.ZSTD_c_contentSizeFlag, 1),
            (lib.ZSTD_c_checksumFlag, 1),
            (lib.ZSTD_c_dictIDFlag, 1),
        ):
            self._check(lib.ZSTD_CCtx_setParameter(self._cctx, param, value))
        self._in = ffi.new("ZSTD_inBuffer *")
        self._out = ffi.new("ZSTD_outBuffer *")

    def _check(self, result: int) -> int:
        if self._lib.ZSTD_isError(result):
            message = self._ffi.string(self._lib.ZSTD_getErrorName(result)).decode()
            raise zstandard.ZstdError(f"zstd compress error: {message}")
        return result

    def begin(self, size: int) -> None:
        self._check(self._lib.ZSTD_CCtx_reset(self._cctx, self._lib.ZSTD_reset_session_only))
        self._check(self._lib.ZSTD_CCtx_setPledgedSrcSize(self._cctx, size))

    def run(self, owner: FrameCompressor, data, last: bool, space: Space, advance) -> Space:
        ffi, lib = self._ffi, self._lib
        inp, out = self._in, self._out
        source = ffi.from_buffer(data) if len(data) else ffi.NULL
        inp.src, inp.size, inp.pos = source, len(data), 0
        mode = lib.ZSTD_e_end if last else lib.ZSTD_e_continue
        while True:
            address, view, capacity, fill = space
            out.dst, out.size, out.pos = ffi.cast("void *", address), capacity, fill
            left = self._check(lib.ZSTD_compressStream2(self._cctx, out, inp, mode))
            owner._wrote(view, fill, out.pos)
            space = advance(out.pos) if out.pos != fill or out.pos == capacity else space
            done = left == 0 if last else inp.pos == inp.size
            if done:
                return space


class _ObjFrames:
    """The C backend: compressobj's bytes copied into the output buffers."""

    def __init__(self, level: int):
        self._cctx = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True, threads=0
        )
        self._obj: Any = None

    def begin(self, size: int) -> None:
        self._obj = self._cctx.compressobj(size=size)

    def run(self, owner: FrameCompressor, data, last: bool, space: Space, advance) -> Space:
        chunk = memoryview(self._obj.flush() if last else self._obj.compress(data))
        pos = 0
        while pos < len(chunk):
            _, view, capacity, fill = space
            take = min(capacity - fill, len(chunk) - pos)
            view[fill : fill + take] = chunk[pos : pos + take]
            owner._wrote(view, fill, fill + take)
            pos += take
            space = advance(fill + take)
        return space
