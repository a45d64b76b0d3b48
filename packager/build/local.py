"""The local executor: shards built inline (one at a time) or in a pool of spawned processes on this
machine, each settled by the coordinator as it finishes."""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..errors import EnvironmentProblem
from .coordinator import Coordinator
from .shard import BytesDone, ShardJob, ShardResult, ShardStarted, write_one


def default_jobs() -> int:
    """One shard at a time per two cores: a shard writer keeps about 1.8 cores busy on its own (reading and
    compressing, member hashes, output hashes and writing run on four threads), so one writer per core only
    adds contention. Measured with bench.py build on 2 cores: --jobs 1 2.65-2.75 s, --jobs 2 2.71-2.96 s."""
    return max(1, (os.cpu_count() or 2) // 2)


_progress_queue: multiprocessing.Queue | None = None


def _init_worker(q: multiprocessing.Queue) -> None:
    global _progress_queue
    _progress_queue = q
    parent = os.getppid()

    def watch_parent() -> None:
        # A killed coordinator (kill -9, OOM) would otherwise leave its workers blocked forever, maybe
        # still writing a .part that the next build wants.
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def _write_in_worker(job: ShardJob) -> ShardResult:
    q = _progress_queue
    assert q is not None
    q.put(ShardStarted(job.name, job.planned_bytes))
    return write_one(job, lambda n: q.put(BytesDone(job.name, n)))


def build_inline(coordinator: Coordinator, todo: list[tuple[ShardJob, str]]) -> None:
    on_event = coordinator.on_event
    for job, fmt in todo:
        on_event(ShardStarted(job.name, job.planned_bytes))
        try:
            result = write_one(job, lambda n, name=job.name: on_event(BytesDone(name, n)))
        except Exception as e:  # noqa: BLE001 - settled per shard
            coordinator.settle(job, fmt, None, e)
        else:
            coordinator.settle(job, fmt, result, None)


def build_pool(coordinator: Coordinator, todo: list[tuple[ShardJob, str]], workers: int) -> None:
    # spawn, not fork: the coordinator runs threads (progress display, queue feeder) that fork would copy
    # in an arbitrary state.
    ctx = multiprocessing.get_context("spawn")
    progress: multiprocessing.Queue = ctx.Queue()
    stop = threading.Event()
    on_event = coordinator.on_event

    def pump() -> None:
        while not stop.is_set():
            try:
                on_event(progress.get(timeout=0.1))
            except queue.Empty:
                continue

    pumper = threading.Thread(target=pump, name="progress-pump", daemon=True)
    pumper.start()
    try:
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(progress,)
        ) as pool:
            pending: dict[Future, tuple[ShardJob, str]] = {}
            queue_jobs = list(todo)
            while queue_jobs or pending:
                while queue_jobs and len(pending) < workers * 2:
                    job, fmt = queue_jobs.pop(0)
                    pending[pool.submit(_write_in_worker, job)] = (job, fmt)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job, fmt = pending.pop(fut)
                    error = fut.exception()
                    if isinstance(error, BrokenProcessPool):
                        raise EnvironmentProblem(
                            f"a build worker died ({error})", hint="retry; with --jobs 1 no worker is used"
                        )
                    coordinator.settle(job, fmt, None if error else fut.result(), error)
    finally:
        stop.set()
        pumper.join()
        while True:  # deliver the last progress events
            try:
                on_event(progress.get_nowait())
            except (queue.Empty, OSError, ValueError):
                break
