"""Build shards on a Dask distributed cluster: the local pool's shard build, spread over the data machines.

Each shard is one Dask task, :func:`attempt_shard`, which runs :func:`packager.build.write_one` (the same
call the local pool makes) on a worker and returns the shard's hashes and member records. The coordinating
process, and it alone, then commits the shard to state.sqlite exactly as a local build does
(``build.Coordinator.settle``), one transaction per finished shard, so a lost scheduler or a killed
coordinator loses no finished shard: the next ``build`` goes on from the state.

Choices, and why:

- **Members travel with the task** (zstd-compressed JSON, ~40 bytes a member), instead of each worker
  reading state.sqlite on the shared filesystem: state.sqlite is in WAL mode so that a build can read while
  the coordinator commits, and WAL needs shared memory, which a network filesystem does not give between
  machines (sqlite.org/wal.html). A worker needs the archive and the shards folder, nothing else.
- **One temporary file per attempt**, ``<name>.tar.zst.<host>-<pid>-<random>.part``, and the coordinator
  renames the winning attempt's file into place (then settles it as a local build does). A worker that the
  scheduler presumes dead (frozen, cut off, its nanny gone) may still be writing; with a shared ``.part``
  its writes would land inside the retry's file and the rename would publish a mix. A lock does not help
  exactly then: fcntl/flock locks over NFS live on a lease that is lost with the machine, and a lock on a
  name does not stop a process that already has the file open. With unique names a stray attempt can only
  ever write its own file, which is deleted when the shard settles and again at the next build's start.
- **Retries**: a worker that dies mid-shard is the scheduler's to reschedule on another worker (its
  ``distributed.scheduler.allowed-failures``, 3 by default, then ``KilledWorker``); an attempt that raises
  is retried by Dask ``retries`` (``[build] retries``, default 2). An attempt that finds the archive
  disagreeing with the catalog (a file missing, another size) is not retried: it fails the shard at once,
  naming the worker's host, because the catalog and the archive disagree there and another try on the
  same data cannot agree. A shard that fails on every try is marked failed; the others finish.
- **Progress** comes from the workers as events on a topic of this build (``Worker.log_event`` ->
  ``Client.subscribe_topic``): a start, then the input bytes read, at most one event every
  ``PROGRESS_INTERVAL`` seconds per running shard whatever its speed (at 400 MB/s one per 200 MB), so a
  hundred workers send the scheduler at most 200 small messages a second. They are consumed on the
  coordinator's main thread, which also settles shards, so a late event never reaches a settled shard.
- **Abandoned attempts stop**: Dask cannot interrupt a running task, so an attempt checks, at each progress
  event, whether the scheduler still wants its task (its coordinator died, or the build was stopped) and
  stops, removing its file, instead of writing the rest of a shard for nobody.
- **Same bytes or nothing**: a shard is byte-identical only if the worker runs the same packager code and
  the same libzstd. Every worker's fingerprint is compared with the coordinator's before the first
  submission (a mismatch stops the build, naming the hosts), and again by each attempt (a worker that
  joined later with other code refuses the shard).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import queue
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import zstandard

from . import __version__, layout
from .build.coordinator import DISK_FULL_ERRNOS, Coordinator
from .build.shard import BytesDone, ShardJob, ShardResult, ShardStarted, write_one
from .errors import EnvironmentProblem, ShardBuildError
from .state import MemberRow

INSTALL_HINT = "on this machine and on every worker: pip install 'packager[cluster]'"
PROGRESS_INTERVAL = 0.5  # seconds between progress events of one running shard
_POLL = 0.2  # seconds the coordinator waits for a finished shard before it looks at the events again
_THREADS_TTL = 2.0  # seconds the cluster's thread count is reused before it is asked again


def build_on_cluster(
    coordinator: Coordinator, todo: list[tuple[ShardJob, str]], address: str, jobs: int
) -> None:
    """Build `todo` (jobs in plan order, with their torrent format) on the Dask cluster at `address`,
    keeping `jobs` shards per worker thread in flight (0: two, one running and the next one waiting)."""
    distributed = _import_distributed()
    settings = coordinator.ws.config.build
    cluster_build = None
    try:
        with _quiet_dask_logs(), _connect(distributed, address, settings.connect_timeout) as client:
            _check_workers(client, address, settings.connect_timeout)
            cluster_build = _ClusterBuild(distributed, client, coordinator, address, jobs or 2)
            cluster_build.run(todo)
    finally:
        # Stopped or interrupted: now that the client is closed, the scheduler has released every task of
        # this build, so an attempt still running will see itself unwanted and remove its own file; these
        # are the files of attempts that finished first, or were about to start, and that nobody settles.
        for job in cluster_build.in_flight.values() if cluster_build is not None else ():
            _discard_attempts(job)


def _import_distributed():
    try:
        import distributed  # 0.5 s to import, an optional extra: only a build given a scheduler needs it
    except ImportError:
        raise EnvironmentProblem(
            "--scheduler needs Dask distributed, which is not installed", hint=INSTALL_HINT
        ) from None
    return distributed


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """distributed logs reconnects and worker losses to stderr, some with tracebacks, across our progress
    bars; every outcome that matters reaches the user as a shard failure or an EnvironmentProblem. Its
    loggers (distributed.client, ...) write through the handlers of the `distributed` logger."""
    handlers = logging.getLogger("distributed").handlers
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)


@contextlib.contextmanager
def _connect(distributed, address: str, timeout: float):
    _probe(distributed, address, timeout)
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, and whatever a comm backend raises
        raise _unreachable(address, f"{type(e).__name__}: {e}") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=min(timeout, 5))


def _unreachable(address: str, why: str) -> EnvironmentProblem:
    tls = " (tls:// needs Dask's TLS settings, distributed.comm.tls, on every machine)"
    return EnvironmentProblem(
        f"cannot reach the Dask scheduler at {address}: {why}",
        hint="start one with `dask scheduler` (see README, Building on a cluster) or check the address"
        + (tls if address.startswith("tls://") else "")
        + "; `build --local` builds on this machine",
    )


def _accepts(address: str, timeout: float) -> bool:
    """Whether HOST:PORT of a tcp:// or tls:// address takes a TCP connection: Dask's handshake timing out
    says nothing of it (a name that never resolves, a black-holed address or a silent port all time out)."""
    from distributed.comm.addressing import parse_address, parse_host_port  # the caller imported distributed

    try:
        scheme, loc = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return True  # ucx, inproc: no plain TCP to try; keep the old wording
        with socket.create_connection(parse_host_port(loc), timeout=min(timeout, 5)):
            return True
    except (OSError, ValueError):
        return False


def _probe(distributed, address: str, timeout: float) -> None:
    """Connect and ask the server what it is, all within `timeout`. distributed.Client's own timeout bounds
    the TCP connect but not the handshake after it, so a port that accepts and never answers (an HTTP
    server, a stopped scheduler, a firewall's tarpit) held the build forever."""
    import asyncio  # 50 ms to import; a local build (which imports this module too) never needs it

    from distributed.comm import connect  # the caller imported distributed (and so asyncio) already

    async def ask() -> object:
        args = distributed.Security().get_connection_args("client")  # TLS from the Dask config
        comm = await connect(address, timeout=timeout, **args)
        try:
            await comm.write({"op": "identity", "n_workers": 0, "reply": True})  # a scheduler's, kept short
            reply = await comm.read()
            if not (isinstance(reply, dict) and "type" in reply):  # another server's identity takes no args
                await comm.write({"op": "identity", "reply": True})
                reply = await comm.read()
            return reply
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(ask(), timeout))
    except TimeoutError:
        why = (
            f"it accepted the connection but did not answer as a Dask server within {timeout:g} s"
            if _accepts(address, timeout)
            else f"no connection within {timeout:g} s (is the host name right and the machine up?)"
        )
        raise _unreachable(address, why) from None
    except Exception as e:  # noqa: BLE001 - refused, unresolvable, TLS not configured, no UCX: all "cannot"
        why = str(e).splitlines()[0] if str(e) else ""
        raise _unreachable(address, f"{type(e).__name__}: {why}" if why else type(e).__name__) from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise EnvironmentProblem(
            f"{address} is a Dask {kind}, not a scheduler" if kind else f"{address} is not a Dask scheduler",
            hint="give the scheduler's address (`dask scheduler` prints it: Scheduler at tcp://...)",
        )


def _check_workers(client, address: str, timeout: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        raise EnvironmentProblem(
            f"the Dask scheduler at {address} has no workers (waited {timeout:g} s)",
            hint=f"start workers on the data machines: dask worker {address} --nworkers N --nthreads 1",
        ) from None
    ours = build_fingerprint()
    try:
        theirs = client.run(worker_fingerprint)
    except Exception as e:  # noqa: BLE001 - a worker without packager fails to unpickle the call
        raise EnvironmentProblem(
            f"the workers of {address} cannot run packager: {type(e).__name__}: {e}", hint=INSTALL_HINT
        ) from None
    wrong = sorted(f"{addr} on host {host} ({fp})" for addr, (host, fp) in theirs.items() if fp != ours)
    if wrong:
        raise EnvironmentProblem(
            f"workers run other packager code or another libzstd than this machine ({ours}), so their "
            f"shards would differ: {', '.join(wrong)}",
            hint=_SAME_CODE,
        )


_SAME_CODE = (
    "install the same packager version (and python-zstandard) on every machine, and restart its workers "
    "(a worker keeps the code it loaded)"
)


# ---- the worker side --------------------------------------------------------------------------------------


@functools.cache
def build_fingerprint() -> str:
    """What decides a shard's bytes besides its input: packager's code and libzstd. Short, for messages."""
    h = hashlib.sha256(f"{zstandard.ZSTD_VERSION}|{zstandard.__version__}".encode())
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    zstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    return f"packager {__version__}, libzstd {zstd}, code {h.hexdigest()[:12]}"


def worker_fingerprint() -> tuple[str, str]:
    return socket.gethostname(), build_fingerprint()


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt sends back: the shard's hashes and records, or why this worker refused it."""

    host: str
    attempt: str
    result: ShardResult | None
    refused: str | None = None
    path: str | None = None  # the file a refusal is about
    seconds: float = 0.0  # spent in write_one

    @property
    def other_code(self) -> bool:
        """Refused because the worker runs other code: it refuses before choosing an attempt name. (A
        property, not a field: an older worker's outcome, unpickled here, must answer it as well.)"""
        return self.refused is not None and not self.attempt


class AttemptAbandoned(Exception):
    """The scheduler released this attempt's task (its build stopped, or it runs elsewhere)."""


def attempt_shard(job: ShardJob, members: bytes, topic: str, fingerprint: str) -> AttemptOutcome:
    """One attempt at one shard, on a Dask worker: write it under this attempt's own temporary name."""
    # On a Dask worker, where distributed is loaded already.
    from distributed import get_worker
    from distributed.worker import thread_state

    host = socket.gethostname()
    if fingerprint != build_fingerprint():
        where = f"worker {get_worker().address} on host {host}"
        return AttemptOutcome(
            host, "", None, f"{where} runs {build_fingerprint()}, the coordinator {fingerprint}"
        )
    job = replace(job, attempt=_attempt_id(host))
    progress = _Progress(get_worker(), getattr(thread_state, "key", None), topic, job.name, job.attempt)
    progress.start(job.planned_bytes)
    started = time.perf_counter()
    try:
        result = write_one(job, progress, members=unpack_members(members))
    except ShardBuildError as e:
        return AttemptOutcome(host, job.attempt, None, f"{e.reason}, on worker host {host}", e.path)
    except Exception as e:
        e.add_note(f"on worker host {host}")
        raise
    progress.flush()
    try:  # a coordinator stopped while this attempt wrote its last bytes will never adopt the file
        progress.check_wanted()
    except AttemptAbandoned:
        job.part_path.unlink(missing_ok=True)
        raise
    return AttemptOutcome(host, job.attempt, result, seconds=time.perf_counter() - started)


def _attempt_id(host: str) -> str:
    """``<host>-<pid>-<random>``: unique per attempt, and it tells an operator which machine and process
    write a temporary file."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', host)[:60]}-{os.getpid()}-{secrets.token_hex(3)}"


class _Progress:
    """The attempt's on_progress: input bytes summed, sent as one event per PROGRESS_INTERVAL."""

    def __init__(self, worker, key, topic: str, shard: str, attempt: str):
        self.worker, self.key, self.topic, self.shard, self.attempt = worker, key, topic, shard, attempt
        self.pending = 0
        self.last = time.monotonic()

    def start(self, planned: int) -> None:
        self.worker.log_event(self.topic, [self.shard, self.attempt, "start", planned])

    def __call__(self, n: int) -> None:
        self.pending += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.flush()
            self.check_wanted()

    def flush(self) -> None:
        if self.pending:
            self.worker.log_event(self.topic, [self.shard, self.attempt, "bytes", self.pending])
            self.pending = 0

    def check_wanted(self) -> None:
        task = self.worker.state.tasks.get(self.key) if self.key is not None else None
        if task is None or task.state == "cancelled":
            raise AttemptAbandoned(f"{self.shard}: the scheduler no longer wants this attempt")


def pack_members(rows: Iterator[MemberRow]) -> bytes:
    data = [[m.ord, m.id, m.path, m.kind, m.popularity, m.size, m.mtime] for m in rows]
    return zstandard.ZstdCompressor(level=3).compress(orjson.dumps(data))


def unpack_members(blob: bytes) -> list[MemberRow]:
    return [MemberRow(*row) for row in orjson.loads(zstandard.ZstdDecompressor().decompress(blob))]


# ---- the coordinator side ---------------------------------------------------------------------------------


class SchedulerLost(Exception):
    pass


class NoWorkers(Exception):
    pass


class OtherCode(Exception):
    """A worker that joined after the start check runs other code: every shard it takes would be refused,
    and Dask, seeing it free, would hand it the next one."""


class _ClusterBuild:
    """Submits shards in plan order within a window, turns worker events into build events, and settles
    each finished shard through the local build's coordinator."""

    def __init__(self, distributed, client, coordinator: Coordinator, address: str, jobs: int):
        self.distributed, self.client, self.coordinator = distributed, client, coordinator
        self.address, self.jobs = address, jobs
        self.settings = coordinator.ws.config.build
        self.token = secrets.token_hex(6)
        self.topic = f"packager-build-{self.token}"
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.current: dict[str, str] = {}  # running shard -> the attempt whose events count
        self.in_flight: dict[str, ShardJob] = {}  # submitted and not settled, by name
        self.fingerprint = build_fingerprint()
        self._threads = (0.0, 1)
        self._no_workers_since: float | None = None

    def run(self, todo: list[tuple[ShardJob, str]]) -> None:
        self.client.subscribe_topic(self.topic, self.inbox.put)
        waiting = deque(todo)
        pending: dict[Any, tuple[ShardJob, str]] = {}
        try:
            while waiting or pending:
                window = self.jobs * self._thread_count()
                while waiting and len(pending) < window:
                    job, fmt = waiting.popleft()
                    pending[self._submit(job)] = (job, fmt)
                done = self._wait(list(pending))
                self._pump()
                other_code = []
                for future in done:
                    job, fmt = pending.pop(future)
                    try:
                        self._settle(future, job, fmt)
                    except OtherCode as e:
                        other_code.append(str(e))
                        waiting.appendleft((job, fmt))  # not built, not failed: planned as it was
                if other_code:
                    raise OtherCode(other_code[0])
        except SchedulerLost as e:
            raise EnvironmentProblem(
                f"lost the Dask scheduler at {self.address} ({e}); {self._counts(pending, waiting)}",
                hint="restart the scheduler (or check the network), then run build again: it continues "
                "from the committed shards",
            ) from None
        except NoWorkers as e:
            raise EnvironmentProblem(
                f"the Dask scheduler at {self.address} lost its workers ({e}); "
                f"{self._counts(pending, waiting)}",
                hint=f"start workers (dask worker {self.address} --nworkers N --nthreads 1), then run build "
                "again: it continues from the committed shards",
            ) from None
        except OtherCode as e:
            raise EnvironmentProblem(
                f"{e}, so its shards would differ; the build stopped: {self._counts(pending, waiting)}",
                hint=f"{_SAME_CODE}, or stop that worker; then run build again: it continues from the "
                "committed shards",
            ) from None
        finally:
            for future in pending:
                with contextlib.suppress(Exception):
                    future.cancel()
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.topic)

    def _counts(self, pending: dict, waiting: deque) -> str:
        built = len(self.coordinator.report.built)
        return f"{built} shards built in this run are committed, {len(pending) + len(waiting)} not built"

    def _submit(self, job: ShardJob):
        members = pack_members(self.coordinator.ws.state.iter_members(job.shard_id))
        self.in_flight[job.name] = job
        return self.client.submit(
            attempt_shard,
            job,
            members,
            self.topic,
            self.fingerprint,
            key=f"packager-shard-{job.name}-{self.token}",
            retries=self.settings.retries,
            pure=False,
        )

    def _thread_count(self) -> int:
        """The cluster's worker threads (at least 1, for the window); NoWorkers once it has had none for
        connect_timeout seconds: Dask keeps tasks without a worker waiting forever (a Slurm allocation
        that ended, every machine lost), and the build would wait with them, silently."""
        asked, count = self._threads
        now = time.monotonic()
        if now - asked > _THREADS_TTL:
            try:
                threads = sum(self.client.nthreads().values())
            except Exception:  # noqa: BLE001 - the scheduler's loss is _wait's to report
                threads = count
            if threads:
                self._no_workers_since = None
            elif self._no_workers_since is None:
                self._no_workers_since = now
            count = max(1, threads)
            self._threads = (now, count)
        since = self._no_workers_since
        if since is not None and now - since > self.settings.connect_timeout:
            raise NoWorkers(f"none for {now - since:.0f} s")
        return count

    def _wait(self, futures: list) -> list:
        """The finished futures, after at most _POLL seconds; SchedulerLost once the client gave up."""
        from distributed.utils import CancelledError  # what wait() raises for futures the client lost

        try:
            with self.client.as_current():  # wait() takes its client from the context
                done, _ = self.distributed.wait(futures, timeout=_POLL, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = []
        except (CancelledError, OSError) as e:
            raise SchedulerLost(_why_lost(e)) from None
        if self.client.status in ("closing", "closed"):
            raise SchedulerLost(f"the client is {self.client.status}")
        return [f for f in futures if f in done]

    def _pump(self) -> None:
        on_event = self.coordinator.on_event
        while True:
            try:
                _, (shard, attempt, kind, n) = self.inbox.get_nowait()
            except queue.Empty:
                return
            if shard not in self.in_flight:
                continue  # settled already, or another build's
            if kind == "start":
                self.current[shard] = attempt  # a retry replaces an earlier attempt; the bar starts again
                on_event(ShardStarted(shard, n))
            elif kind == "bytes" and self.current.get(shard) == attempt:
                on_event(BytesDone(shard, n))

    def _settle(self, future, job: ShardJob, fmt: str) -> None:
        status = future.status
        if status in ("cancelled", "lost"):
            raise SchedulerLost(f"shard {job.name} was {status}")
        result, error = None, None
        try:  # both fetch from the cluster: a failure here is the scheduler's, not the shard's
            raised = future.exception() if status == "error" else None
            outcome: AttemptOutcome = future.result() if raised is None else None
        except OSError as e:  # distributed's CommClosedError is one
            raise SchedulerLost(f"{type(e).__name__}: {e}") from None
        if raised is not None:
            error = self._attempt_error(job, raised)
        else:
            if outcome.other_code:
                reason = outcome.refused
                if "tcp://" not in reason:  # an older worker's message names its host only
                    with contextlib.suppress(Exception):
                        reason += f" (worker {', '.join(self.client.who_has([future])[future.key])})"
                self.in_flight.pop(job.name, None)
                future.release()
                raise OtherCode(reason)
            if outcome.refused is not None:
                error = ShardBuildError(job.name, outcome.refused, outcome.path)
            else:
                error = self._adopt(job, outcome)
                result = outcome.result if error is None else None
        self.in_flight.pop(job.name, None)
        self.current.pop(job.name, None)
        try:
            self.coordinator.settle(job, fmt, result, error)
        finally:
            _discard_attempts(job)
            future.release()

    def _attempt_error(self, job: ShardJob, error: BaseException) -> BaseException:
        if isinstance(error, self.distributed.KilledWorker):
            tries = getattr(error, "allowed_failures", 0) + 1
            last = getattr(getattr(error, "last_worker", None), "address", "?")
            return ShardBuildError(
                job.name, f"the worker running it died on each of {tries} tries (the last one at {last})"
            )
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error  # the coordinator stops the build: the output side is full or read-only
        where = "; ".join(getattr(error, "__notes__", ()))
        reason = f"{type(error).__name__}: {error}" + (f" ({where})" if where else "")
        return ShardBuildError(job.name, reason)

    def _adopt(self, job: ShardJob, outcome: AttemptOutcome) -> BaseException | None:
        """Rename the winning attempt's file to the shard's .part, after checking it is the file the worker
        wrote; the coordinator then settles the shard exactly as a local build does."""
        written = replace(job, attempt=outcome.attempt).part_path
        length = outcome.result.hashes.length
        try:
            size = written.stat().st_size
            if size != length:
                reason = f"worker host {outcome.host} wrote {length} bytes, {size} are here"
                return ShardBuildError(job.name, reason, str(written))
            os.replace(written, job.part_path)
        except FileNotFoundError:
            return ShardBuildError(
                job.name,
                f"worker host {outcome.host} wrote a file that this machine does not see: the workspace "
                "must be on a filesystem every machine shares, at the same path",
                str(written),
            )
        except OSError as e:
            return e
        return None


def _why_lost(error: BaseException) -> str:
    """distributed says "4 Futures cancelled:" and the reasons on later lines; the reasons are the news."""
    groups = getattr(error, "error_groups", None)
    if groups:
        reasons = sorted({str(getattr(g, "reason", "")) for g in groups} - {""})
        return f"its tasks were cancelled: {', '.join(reasons) or 'no reason given'}"
    reason = getattr(error, "reason", None)
    if reason:
        return f"its tasks were cancelled: {reason}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _discard_attempts(job: ShardJob) -> None:
    """Remove the files of the shard's other attempts (a worker that died mid-shard left its own)."""
    final = job.final_path
    with contextlib.suppress(OSError):
        for path in final.parent.glob(layout.attempt_part_glob(glob.escape(final.name))):
            if layout.attempt_part_of(path.name) == final.name:
                path.unlink(missing_ok=True)
