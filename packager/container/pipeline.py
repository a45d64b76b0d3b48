"""The shard writer's plumbing: reusable page-aligned buffers handed between threads, and ordered stages.

A buffer is filled once (by a read, or by zstd), then read by every consumer it is handed to, in place; the
last consumer to release it returns it to its pool. Reusing a fixed set of buffers means no allocation and no
page fault per chunk, bounds the memory in flight, and gives the producer its backpressure: it waits for a
free buffer when a consumer lags. Buffers are page-aligned (one anonymous mmap per pool), which is what
O_DIRECT writes need.

A stage is one thread calling its handler for each item in submission order, so each consumer sees the stream
in order and the output cannot depend on timing. After a failure the stages keep draining (skipping the work,
still releasing buffers), so that no producer waits forever; the first failure is re-raised to the producer.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

PAGE = mmap.PAGESIZE
# How often a waiting producer wakes to report progress: a caller's progress callback is also where a
# cluster attempt learns that it is no longer wanted (cluster.py), so it must keep coming while work goes on.
WAKE = 0.1


class Failure:
    """The first exception raised by any stage; shared by all stages of one shard."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def set(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error

    def check(self) -> None:
        if self.error is not None:
            raise self.error


class Buffer:
    """One pooled buffer: `view` over its whole capacity, `fill` bytes of it in use."""

    __slots__ = ("view", "address", "capacity", "fill", "skip", "offset", "marks", "_refs", "_lock", "_pool")

    def __init__(self, pool: BufferPool, view: memoryview, address: int):
        self.view = view
        self.address = address
        self.capacity = view.nbytes
        self.fill = 0
        self.skip = 0  # leading bytes already consumed elsewhere (a resumed shard's partial first block)
        self.offset = 0  # where the buffer's first byte goes in the output file
        self.marks: list = []  # (position in the buffer, checkpoint) pairs, in order
        self._refs = 0
        self._lock = threading.Lock()
        self._pool = pool

    def share(self, consumers: int) -> None:
        self._refs = consumers
        if not consumers:
            self._pool.put_back(self)

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self._pool.put_back(self)

    @property
    def data(self) -> memoryview:
        return self.view[self.skip : self.fill]


class BufferPool:
    """`count` page-aligned buffers of `size` bytes (rounded up to whole pages) in one anonymous mmap."""

    def __init__(self, count: int, size: int, stats: dict[str, float] | None = None, name: str = ""):
        size = -(-size // PAGE) * PAGE
        self._map = mmap.mmap(-1, count * size)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        whole = memoryview(self._map)
        self._free: queue.SimpleQueue[Buffer] = queue.SimpleQueue()
        self._all = []
        for i in range(count):
            buf = Buffer(self, whole[i * size : (i + 1) * size], base + i * size)
            self._all.append(buf)
            self._free.put(buf)
        self._stats = stats
        self._wait_key = f"waiting for a free {name} buffer"

    def get(self, on_wait: Callable[[], None] | None = None) -> Buffer:
        """A free buffer, waiting for one; while it waits, `on_wait()` is called every WAKE seconds."""
        start = time.perf_counter() if self._stats is not None else 0.0
        if on_wait is None:
            buf = self._free.get()
        else:
            while True:
                try:
                    buf = self._free.get(timeout=WAKE)
                    break
                except queue.Empty:
                    on_wait()
        if self._stats is not None:
            self._stats[self._wait_key] = self._stats.get(self._wait_key, 0.0) + time.perf_counter() - start
        buf.fill = buf.skip = 0
        buf.marks = []
        return buf

    def put_back(self, buf: Buffer) -> None:
        self._free.put(buf)

    def close(self) -> None:
        for buf in self._all:
            buf.view.release()
        self._all.clear()
        with contextlib.suppress(BufferError):  # a view still held (a failed stage's); the GC frees it
            self._map.close()


class Stage:
    """A thread that calls `handle(item)` for every item put, in order; `close()` waits for the last one.

    With `stats`, it accounts its own busy CPU and wall time and its idle time, for the profile.
    """

    _STOP = object()

    def __init__(
        self,
        name: str,
        handle: Callable[[Any], None],
        failure: Failure,
        on_skip: Callable[[Any], None] = lambda item: None,
        stats: dict[str, dict[str, float]] | None = None,
        batch: int = 1,
    ):
        self.name = name
        self._batch = batch  # > 1: `handle` takes a list of up to `batch` items, as many as are waiting
        self._handle = handle
        self._on_skip = on_skip  # releases what an item holds when the work is skipped after a failure
        self._failure = failure
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stats = None if stats is None else stats.setdefault(name, {})
        self._thread = threading.Thread(target=self._run, name=f"shard-{name}", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        stats = self._stats
        if stats is not None:
            cpu0, wall0, idle = time.thread_time(), time.perf_counter(), 0.0
        get, handle, failure = self._queue.get, self._handle, self._failure
        while True:
            if stats is not None:
                t = time.perf_counter()
                item = get()
                idle += time.perf_counter() - t
            else:
                item = get()
            if item is self._STOP:
                break
            stop = False
            if self._batch > 1:
                item = [item]
                while len(item) < self._batch and not self._queue.empty():
                    more = get()
                    if more is self._STOP:
                        stop = True
                        break
                    item.append(more)
            if failure.error is not None:
                for one in item if self._batch > 1 else (item,):
                    self._on_skip(one)
            else:
                try:
                    handle(item)  # releases what the items hold, also when it raises
                except BaseException as exc:  # handed to the producer through `failure`
                    failure.set(exc)
            if stop:
                break
        if stats is not None:
            stats["cpu"] = time.thread_time() - cpu0
            stats["wall"] = time.perf_counter() - wall0
            stats["idle (waiting for input)"] = idle

    def close(self, on_wait: Callable[[], None] | None = None) -> None:
        """Wait until every item put has been handled; `on_wait()` every WAKE seconds meanwhile."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            while True:
                self._thread.join(None if on_wait is None else WAKE)
                if not self._thread.is_alive():
                    break
                on_wait()
