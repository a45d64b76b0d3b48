"""The checks of one catalog row: id, path, kind, popularity, size, mtime, and its file unless sizes are
trusted; a good row becomes the tuple the loader stages, a bad one a reason in a user's words."""

from __future__ import annotations

import math
import operator
import os
import re
import stat
from collections.abc import Callable
from pathlib import PurePosixPath

import orjson
import xxhash

from ..config import USTAR_MTIME_LIMIT, ReleaseConfig
from ..state_schema import ID_MARK, dumps_extra, extra_names_key, fingerprint_seed, row_fingerprint
from .rows import KNOWN_SET, RawRow

# container.RESERVED_MANIFEST_NAME lives in this folder, so no catalog path may.
RESERVED_PREFIX = ".packager"
_path_hash = xxhash.xxh3_64_intdigest
_HALF = 2**63  # fingerprints and keys are signed 64-bit, as SQLite stores them

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_NOT_NORMAL = re.compile(r"(^|/)\.?(/|$)")


# One search that every acceptable path fails, so the common case costs one regex call.
_SUSPECT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]|^/|^.:|(?:^|/)\.{0,2}(?:/|$)|^\.packager(?:/|$)")


def check_path(path: object) -> str | None:
    """Why a catalog path is unacceptable, or None. Lexical checks only; the file system comes later."""
    if not isinstance(path, str) or not path:
        return "path is missing or empty"
    if (
        (  # string methods in C first: most real paths pass these and never reach a regex
            path.isprintable()
            and path[0] not in "/."
            and path[1:2] != ":"
            and path[-1] not in "/."
            and "//" not in path
            and "/." not in path
        )
        or not _SUSPECT.search(path)
    ):
        return None
    if _CONTROL.search(path):
        return f"path {path!r} contains control characters"
    if _SURROGATE.search(path):
        return f"path {path!r} is not valid UTF-8"
    if path[0] == "/" or path[1:2] == ":":
        return f"path {path!r} is absolute; paths are relative to the archive root"
    if ".." in path and ".." in path.split("/"):
        return f"path {path!r} escapes the archive root ('..')"
    if _NOT_NORMAL.search(path):
        return f"path {path!r} is not normalized (empty or '.' component); write {str(PurePosixPath(path))!r}"
    if path.startswith(RESERVED_PREFIX) and path.split("/", 1)[0] == RESERVED_PREFIX:
        return f"path {path!r} uses the reserved folder {RESERVED_PREFIX!r}"
    return None


def _number(value: object) -> float | str:
    """A finite popularity, or why the value is not one."""
    if isinstance(value, bool):
        return f"popularity {value!r} is not a number"
    f: float | None = None
    if isinstance(value, int | float):
        try:
            f = float(value)
        except OverflowError:  # an integer beyond 1.8e308
            return f"popularity {value!r} is beyond floating point (about 1.8e308)"
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return f"popularity {value!r} is not a number"
    if f is None:
        return f"popularity {value!r} is not a number"
    if math.isnan(f):
        return f"popularity {value!r} is not a number (NaN cannot be ordered)"
    if math.isinf(f):
        return f"popularity {value!r} is not a finite number (at most about 1.8e308)"
    return f


# No one file of an archive is near 1 TiB: a size beyond it is a mistake in the catalog (or a sparse file),
# and it bounds the totals of a kind (state.add_totals refuses a total beyond SQLite's integers).
MAX_FILE_SIZE = 2**40


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        # ASCII digits only: str.isdigit() takes any Unicode digit ('²', '①'), which int() refuses or reads
        # as another number ('١٢٣' is 123); and int() reads at most 4300 digits.
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 4300:
            return int(text)
    return None


def wrong_id_type(item_id: object) -> str:
    """Why an id that is not text (nor an integer, which check() takes as its decimal text) is refused."""
    if item_id is None:
        return "id is missing or empty"
    if isinstance(item_id, bool):
        shown = "true" if item_id else "false"
    elif isinstance(item_id, float):
        shown = f"the number {item_id!r}"
    elif isinstance(item_id, dict):
        shown = "an object"
    elif isinstance(item_id, list | tuple):
        shown = "a list"
    else:
        shown = f"a value of type {type(item_id).__name__}"
    return f"id must be text or a whole number, not {shown}"


def check_id(item_id: object) -> str | None:
    """Why an id is unacceptable, or None. Ids are printed in reports and terminals, so no control
    characters (they printed raw escape sequences) and no lone surrogates."""
    if not isinstance(item_id, str):
        return wrong_id_type(item_id)
    if not item_id.strip():
        return "id is missing or empty"
    if item_id.isprintable() or not _SUSPECT_ID.search(item_id):
        return None
    if _CONTROL.search(item_id):
        return f"id {item_id!r} contains control characters"
    return f"id {item_id!r} is not valid UTF-8"


_SUSPECT_ID = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


class Checker:
    """Validates rows and stats their files, caching resolved directories."""

    def __init__(self, config: ReleaseConfig, trust_sizes: bool):
        self.root = config.root
        self.root_real = os.path.realpath(config.root)
        self.kinds = set(config.kinds)
        self.kind_list = ", ".join(config.kinds)
        self.trust_sizes = trust_sizes
        self.seed = fingerprint_seed(config.kinds, trust_sizes)
        self.dir_ok: dict[str, bool] = {}
        # The keys of a row, in its order -> (names key, a getter of the extra values in sorted-name order),
        # or None when the row has no extra field: a few entries serve a whole catalog.
        self.extra_plans: dict[tuple, tuple[int, Callable] | None] = {}
        self.new_names: dict[int, str] = {}  # names keys not yet handed to the loader -> names (JSON)
        self.known_keys: set[int] = set()  # names keys of the Arrow path (arrow_jsonl), handed on

    def _extra_plan(self, keys: tuple) -> tuple[int, Callable] | None:
        names = tuple(sorted(k for k in keys if k not in KNOWN_SET))
        if not names:
            plan = None
        else:
            h, text = extra_names_key(names)
            self.new_names[h] = text
            getter = operator.itemgetter(*names) if len(names) > 1 else lambda f, k=names[0]: (f[k],)
            plan = (h, getter)
        if len(self.extra_plans) > 10_000:  # a catalog whose rows each have other fields: bounded
            self.extra_plans.clear()
        self.extra_plans[keys] = plan
        return plan

    def extra_key(self, names: tuple[str, ...]) -> int:
        """The key of a set of extra field names (sorted), handed on to the loader the first time."""
        h, text = extra_names_key(names)
        if h not in self.known_keys:
            self.known_keys.add(h)
            self.new_names[h] = text
        return h

    def _inside_root(self, rel: str) -> bool:
        parent = os.path.dirname(rel)
        ok = self.dir_ok.get(parent)
        if ok is None:
            real = os.path.realpath(os.path.join(self.root, parent))
            ok = real == self.root_real or real.startswith(self.root_real + os.sep)
            if len(self.dir_ok) > 100_000:
                self.dir_ok.clear()
            self.dir_ok[parent] = ok
        return ok

    def _stat(self, rel: str, size: int | None) -> tuple[int | None, str | None]:
        if not self._inside_root(rel):
            return None, f"path {rel!r} leaves the archive root through a symlinked folder"
        full = os.path.join(self.root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None, f"file {rel!r} is missing under {self.root}"
        except OSError as e:
            return None, f"file {rel!r} cannot be read: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return None, f"file {rel!r} is a symlink; only regular files are packaged"
        if not stat.S_ISREG(st.st_mode):
            return None, f"{rel!r} is not a regular file"
        if not os.access(full, os.R_OK):
            return None, f"file {rel!r} is not readable"
        if size is not None and st.st_size != size:
            return None, f"size mismatch for {rel!r}: catalog says {size} bytes, the file has {st.st_size}"
        if st.st_size > MAX_FILE_SIZE:
            return None, f"file {rel!r} has {st.st_size} bytes, too many for one file (at most 2^40, 1 TiB)"
        return st.st_size, None

    def check(self, row: RawRow) -> tuple[tuple | None, str | None]:
        """(stage tuple, None) for a good row, (None, reason) for a bad one. The stage tuple is (id, path,
        kind, popularity, size, extra, line, fp, xk), then (mtime, path key) unless both are None (the
        common row: each value bound costs the insert ~0.2 us; ingest.STAGE_COLUMNS). The path is
        state_schema.stored_path()."""
        if row.fields is None:
            return None, row.error
        f = row.fields
        item_id = f.get("id")
        if type(item_id) is not str:
            if isinstance(item_id, bool) or not isinstance(item_id, int):
                return None, wrong_id_type(item_id)
            item_id = str(item_id)
        elif not item_id.isprintable() or not item_id.strip():
            reason = check_id(item_id)
            if reason:
                return None, reason
        path = f.get("path")
        reason = check_path(path)
        if reason:
            return None, reason
        kind = f.get("kind")
        if kind not in self.kinds:
            return None, f"unknown kind {kind!r}; release.toml names: {self.kind_list}"
        popularity = f.get("popularity")
        if type(popularity) is not float or not math.isfinite(popularity):  # the common case costs nothing
            if popularity is None or popularity == "":
                return None, "popularity is empty"
            popularity = _number(popularity)
            if type(popularity) is str:
                return None, popularity
        size = f.get("size")
        if type(size) is not int or size < 0 or size > MAX_FILE_SIZE:
            if size is None or size == "":
                size = None
            else:
                size = _integer(size)
                if size is None or size < 0:
                    return None, f"size {f.get('size')!r} is not a whole number of bytes"
                if size > MAX_FILE_SIZE:
                    return None, f"size {size} is too large for one file (at most 2^40 bytes, 1 TiB)"
        mtime = f.get("mtime")
        if mtime is not None and (type(mtime) is not int or not 0 <= mtime < USTAR_MTIME_LIMIT):
            if mtime == "":
                mtime = None
            else:
                mtime = _integer(mtime)
                if mtime is None or not 0 <= mtime < USTAR_MTIME_LIMIT:
                    return None, f"mtime {f.get('mtime')!r} is not Unix seconds between 0 and the year 2242"
        if self.trust_sizes:
            if size is None:
                return None, "size is required with --trust-sizes"
        else:
            size, reason = self._stat(path, size)
            if reason:
                return None, reason
        extra = xk = None
        if len(f) > 4:
            keys = tuple(f)
            plan = self.extra_plans[keys] if keys in self.extra_plans else self._extra_plan(keys)
            if plan is not None:
                xk = plan[0]
                try:  # dumps_extra(), inline: a call costs a tenth of a row's check
                    extra = orjson.dumps(plan[1](f), option=orjson.OPT_SORT_KEYS).decode()
                except TypeError:
                    try:
                        extra = dumps_extra(plan[1](f))
                    except RecursionError:  # deeper than orjson (255) and json (~990) write
                        return None, "extra fields are nested too deeply to store (under 900 levels)"
        # A line's own fingerprint stands for its row only when the line is all of it: with --trust-sizes.
        # Otherwise the size is the file's, which may change while the line stays the same.
        fp = row.fp if self.trust_sizes else None
        if fp is None:
            fp = row_fingerprint(item_id, path, kind, popularity, size, mtime, extra, xk, self.seed)
        # A path named by its id needs no key and is stored with ID_MARK for its id
        # (state_schema.stored_path, inline); others are stored whole, with state_schema.path_key(path).
        start = path.rfind("/") + 1
        dot = path.rfind(".")
        end = dot if dot > start else len(path)
        if path[start:end] == item_id:
            stored = f"{path[:start]}{ID_MARK}{path[end:]}"
            if mtime is None:
                return (item_id, stored, kind, popularity, size, extra, row.line, fp, xk), None
            return (item_id, stored, kind, popularity, size, extra, row.line, fp, xk, mtime, None), None
        ph = _path_hash(path.encode()) - _HALF
        return (item_id, path, kind, popularity, size, extra, row.line, fp, xk, mtime, ph), None
