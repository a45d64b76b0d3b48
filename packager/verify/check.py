"""The whole check: the paths given grouped by release folder, the shards to check in each (listed,
found, or given), checked in parallel, and the files found swapped for one another."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import UsageError
from packager.layout import SHARD_SUFFIX, SHARDS

from . import findings
from .passes import map_on_threads
from .published import damaged_data_files
from .references import (
    References,
    ShardRef,
    find_release_root,
    is_release_root,
    load_references,
)
from .report import Event, FileResult, Finding, Level, PublicationSeen, Severity, VerifyOptions, VerifyReport
from .shard import ShardCheck, Target

if TYPE_CHECKING:
    from packager import trust


def _shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SHARD_SUFFIX}") if p.is_file())


def _targets_for(paths: Sequence[Path]) -> dict[Path | None, tuple[bool, list[Path], list[Path]]]:
    """Group the paths by release folder: root -> (whole release?, folders, files)."""
    groups: dict[Path | None, tuple[bool, list[Path], list[Path]]] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(
                f"{path}: no such file or folder", hint="give downloaded shards, or their folder"
            )
        whole = path.is_dir() and is_release_root(path)
        root = path.resolve() if whole else find_release_root(path if path.is_dir() else path.parent)
        entry = groups.setdefault(root, (False, [], []))
        if whole:
            groups[root] = (True, entry[1], entry[2])
        elif path.is_dir():
            entry[1].append(path.resolve())
        else:
            entry[2].append(path.resolve())
    return groups


def _plan(refs: References, whole: bool, folders: list[Path], files: list[Path]) -> list[Target]:
    """What to check: with a folder, every shard the release lists (found under its listed path, beside the
    manifests, or in the folder; else missing) plus unlisted shard files there; with files, just them."""
    targets: dict[Path, Target] = {}
    by_name = {Path(rel).name: ref for rel, ref in refs.shards.items()}

    def rel_of(path: Path) -> str:
        base = next((b for b in refs.bases if path.is_relative_to(b)), None)
        return str(path.relative_to(base)) if base else str(path)

    def add(path: Path, ref: ShardRef | None) -> None:
        if path not in targets:
            targets[path] = Target(ref.path if ref else rel_of(path), path, ref, refs, whole)

    if whole or folders:
        for ref in refs.shards.values():
            name = Path(ref.path).name
            places = (
                refs.places(ref.path) + [base / name for base in refs.bases] + [f / name for f in folders]
            )
            add(next((p for p in places if p.exists()), places[0]), ref)
    scanned = [d for base in refs.bases for d in (base, base / SHARDS)] if whole else []
    for path in (p for folder in scanned + folders for p in _shard_files(folder)):
        if not any(t.path == path for t in targets.values()):
            add(path, by_name.get(path.name) if whole or folders else None)
    for path in files:
        listed = refs.shards.get(rel_of(path))
        add(path, listed or by_name.get(path.name))
    return sorted(targets.values(), key=lambda t: t.rel)


def verify(
    paths: Sequence[Path | str],
    options: VerifyOptions = VerifyOptions(),
    on_event: Callable[[Event], None] | None = None,
) -> VerifyReport:
    """Check downloaded shards (files, folders of them, or a whole release folder); see the module docstring.

    Raises UsageError for a path that does not exist and UntrustedManifest when a manifest fails or lacks
    its signature (with a public key), does not parse, or contradicts another one; PublicationRefused for a
    publication older than the trust file's or expired, MixedPublication for files of several publications.
    Everything found in the files themselves is reported, never raised. With a public key and nothing
    wrong (missing files aside with `partial`), each release's statement is recorded in the trust file.
    """
    if options.jobs < 0:
        raise UsageError(f"--jobs {options.jobs}: must be 0 (one per core) or more")
    emit = on_event or (lambda event: None)
    lock = threading.Lock()

    def emit_locked(event: Event) -> None:
        with lock:
            emit(event)

    files: list[FileResult] = []
    notes: list[Finding] = []
    sources: list[str] = []
    authenticated = bool(options.pubkey)
    trust_file = _trust_file(options)
    statements: list[tuple[Path, trust.Statement]] = []
    jobs = options.jobs or os.cpu_count() or 1
    for root, (whole, folders, given) in _targets_for([Path(p) for p in paths]).items():
        refs = load_references(root, options.pubkey, trust_file, whole)
        if refs.statement is not None:
            statements.append((refs.root, refs.statement.statement))
        notes += _statement_findings(refs)
        sources += [f"{root}/{s}" if root else s for s in refs.sources]
        where = str(root) if root else "the shards given"
        if refs.shards and not options.pubkey:
            notes.append(
                Finding(
                    where,
                    Level.RELEASE,
                    Severity.NOTE,
                    "the manifests are unauthenticated: anyone who could "
                    "change these files could change them too; pass --pubkey with the publisher's key",
                )
            )
        targets = _plan(refs, whole, folders, given)
        if not targets:
            where = ", ".join(str(p) for p in folders) or str(root)
            raise UsageError(
                f"no shard found under {where}: nothing to verify",
                hint="give the folder the shards were downloaded to; a workspace has shards once built "
                "(`packager build DIR`)",
            )
        workers = max(1, min(jobs, len(targets)))
        threads = max(1, (os.cpu_count() or 1) // workers)  # piece checks of few big files use every core
        checks = [ShardCheck(t, options, emit_locked, threads) for t in targets]
        results = map_on_threads(ShardCheck.run, checks, workers)
        for group in results:
            files.extend(group)
        files.extend(damaged_data_files(refs, threads, emit_locked))
        _note_swaps([r for group in results for r in group], refs)
    report = VerifyReport(files, notes, sources, authenticated)
    report.publications = _update_trust(report, statements, trust_file, options)
    return report


def _trust_file(options: VerifyOptions) -> trust.TrustFile | None:
    """The trust file, which only a check given a key reads or writes (and only then is trust/ loaded)."""
    if not options.pubkey:
        return None
    from packager import trust  # see _trust_file's docstring

    return trust.TrustFile(options.trust_file)


def _statement_findings(refs: References) -> list[Finding]:
    out = []
    for rel in refs.not_downloaded:
        out.append(
            Finding(rel, Level.FILE, Severity.MISSING, f"not downloaded (listed in {_publication(refs)})")
        )
    for rel in refs.unlisted:
        out.append(Finding(rel, Level.FILE, Severity.NOTE, f"not part of {_publication(refs)}; ignored"))
    return out


def _publication(refs: References) -> str:
    return f"publication {refs.statement.statement.publication}" if refs.statement else "the release"


def _update_trust(
    report: VerifyReport,
    statements: list[tuple[Path, trust.Statement]],
    trust_file: trust.TrustFile | None,
    options: VerifyOptions,
) -> list[PublicationSeen]:
    """Record each authenticated statement in the trust file, only if the whole check succeeded (TUF's
    clients must not persist what a later step refused)."""
    good = report.exit_code(options.partial) == 0
    seen = []
    for root, s in statements:
        if s.key_id is None:
            what = "no key: nothing authenticated, the trust file is not used"
        elif not good:
            what = "not updated: the check found problems"
        else:
            what = "accepted" if trust_file.accept(s) else "already trusted"
        file = str(trust_file.path) if s.key_id else None
        seen.append(
            PublicationSeen(
                str(root), s.release, s.publication, s.published_at, s.valid_until, s.key_id, what, file
            )
        )
    return seen


def _note_swaps(results: list[FileResult], refs: References) -> None:
    """A file whose SHA-256 is another shard's: files swapped or misnamed, not damaged bytes."""
    owner = {ref.sha256: ref.path for ref in refs.shards.values() if ref.sha256}
    for r in results:
        other = owner.get(r.sha256) if r.sha256 and r.sha256 != r.expected_sha256 else None
        if other is not None and other != r.path:
            findings.swapped(r, other)
