"""The shape of the package: no import circle, and a lazy import only for what is heavy, with its reason.

Imports are read with ast, so an import inside a function counts as much as one at the top of a module. A
package that loads its own submodules by name (`importlib.import_module(f"{__name__}.{name}")`, as
container/ and cli/ do for start-up time) imports, lazily, every submodule its module-level tables name; and
`from packager.container import ShardReader` imports what its `__getattr__` table maps the name to
(container.reader), at the importer's own time: the lazy attribute runs as the name is imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from packager import layout

PACKAGE = Path(__file__).resolve().parent.parent / "packager"
# Slow to import or native, and needed by few commands: the only things a module may import lazily.
HEAVY = {"libtorrent", "minisign", "distributed", "pyarrow", "qbittorrentapi", "transmission_rpc"}
# As slow to import as those, for commands that seldom need them (python -X importtime, byte-compiled):
# rich.progress 14 ms, which only a terminal's progress bar needs (not --json, not a pipe); our publish.py
# 35 ms (the member index, the pages, trust, the swarm model), which of the shard commands only `torrent`
# needs; asyncio 50 ms, which only the cluster path needs (and distributed imports it anyway); our
# member_index/ 10 ms, which verify needs only for a shard whose own manifest is lost; rich's console, text
# and table (35 ms of a command's 0.17 s start), which a --json or quiet run never prints through; and what
# `verify --pieces` of a good release never needs (VERIFY_PIECES_NEVER below): the member level (the
# container's scan, verify's frames and localize: 15 ms), trust/ (5 ms) for a release without a statement;
# ctypes (2 ms), which only a build's resumable SHA-256 needs.
SLOW = {
    "rich.progress",
    "packager.publish",
    "asyncio",
    "packager.member_index",
    "rich.console",
    "rich.text",
    "rich.table",
    "packager.container.scan",
    "packager.container.format",
    "packager.verify.frames",
    "packager.verify.localize",
    "packager.trust",
    "ctypes",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # an absolute module name
    line: int
    lazy: bool  # inside a function (or a class body), so it runs only when called, not at import
    reason: bool  # a comment on its line or the line above
    by_name: bool = False  # a package's own submodule, loaded by name on first use (for start-up time)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                lines.add(getattr(child, "lineno", 0))
    return lines


@dataclass(frozen=True)
class ByName:
    """What a module loads by name: the submodules its tables name, where, and the attributes its
    `__getattr__` serves from them (attribute -> submodule)."""

    submodules: tuple[str, ...] = ()
    line: int = 0
    reason: bool = False
    attributes: dict[str, str] | None = None


def _loads_by_name(tree: ast.Module) -> bool:
    """Whether the module calls importlib.import_module on a name built from its own __name__."""
    return any(
        isinstance(node, ast.Call)
        and ast.unparse(node.func) in ("importlib.import_module", "import_module")
        and bool(node.args)
        and "__name__" in ast.unparse(node.args[0])
        for node in ast.walk(tree)
    )


def by_name(path: Path, modules: set[str], package: Path = PACKAGE) -> ByName:
    """The submodules `path` loads by name, from the string constants of its module-level assignments."""
    name = module_name(path, package)
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    if not _loads_by_name(tree):
        return ByName()
    found: dict[str, int] = {}
    attributes: dict[str, str] = {}
    serves = any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        for const in ast.walk(node.value):
            if isinstance(const, ast.Constant) and f"{name}.{const.value}" in modules:
                found.setdefault(f"{name}.{const.value}", node.lineno)
        if serves and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                target = f"{name}.{getattr(value, 'value', '')}"
                if isinstance(key, ast.Constant) and str(key.value).isidentifier() and target in modules:
                    attributes[key.value] = target
    if not found:
        return ByName()
    line = min(found.values())
    return ByName(tuple(sorted(found)), line, _has_reason(source.splitlines(), line), attributes)


def imports_of(
    path: Path, modules: set[str], tables: dict[str, ByName] | None = None, package: Path = PACKAGE
) -> list[Import]:
    tables = tables or {}
    name = module_name(path, package)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    source = path.read_text(encoding="utf-8")
    text = source.splitlines()
    tree = ast.parse(source)
    deferred = _inside_definitions(tree)
    skipped = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            # `from . import layout` imports a submodule (its package is already being imported); a name
            # that is no submodule is a value of `origin` itself, so `origin` must have run first.
            submodules = [f"{origin}.{a.name}" for a in node.names if f"{origin}.{a.name}" in modules]
            values = len(submodules) < len(node.names)
            served = (tables.get(origin) or ByName()).attributes or {}
            submodules += [served[a.name] for a in node.names if a.name in served]
            targets = submodules + ([origin] if values or not submodules else [])
        comment = _has_reason(text, node.lineno)
        for target in targets:
            found.append(Import(name, target, node.lineno, id(node) in deferred, comment))
    table = tables.get(name) or ByName()
    found += [Import(name, sub, table.line, True, table.reason, by_name=True) for sub in table.submodules]
    return found


def _inside_definitions(tree: ast.Module) -> set[int]:
    """The ids of the nodes inside a function or a class: they run later, or not at all. An import under a
    module-level `try:` or `if` runs at import time like any other top-level one."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    return inside


def _has_reason(text: list[str], line: int) -> bool:
    """A comment on the import's line, or above the run of import lines it belongs to."""
    if "#" in text[line - 1]:
        return True
    above = line - 2
    while above >= 0 and text[above].strip().startswith(("import ", "from ")):
        above -= 1
    return above >= 0 and text[above].strip().startswith("#")


def package_imports(package: Path = PACKAGE) -> dict[str, list[Import]]:
    files = sorted(package.rglob("*.py"))
    modules = {module_name(f, package) for f in files}
    tables = {module_name(f, package): by_name(f, modules, package) for f in files}
    return {module_name(f, package): imports_of(f, modules, tables, package) for f in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_the_package():
    found = package_imports()
    graph = {m: {i.target for i in imps if i.target in found and i.target != m} for m, imps in found.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _heavy_modules(found: dict[str, list[Import]]) -> set[str]:
    """Package modules whose import runs a heavy import: through their top-level imports, transitively, and
    the package __init__ that importing a submodule runs first."""
    heavy: set[str] = set()
    changed = True
    while changed:
        changed = False
        for module, imps in found.items():
            if module in heavy:
                continue
            parents = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)} - {"packager"}
            needs = {i.target for i in imps if not i.lazy} | parents
            if any(t.split(".")[0] in HEAVY or t in heavy for t in needs):
                heavy.add(module)
                changed = True
    return heavy


def test_lazy_imports_are_for_heavy_modules_and_say_why():
    found = package_imports()
    heavy = _heavy_modules(found)
    wrong = []
    for imps in found.values():
        for i in imps:
            if not i.lazy:
                continue
            if not i.by_name and i.target.split(".")[0] not in HEAVY and i.target not in heavy | SLOW:
                wrong.append(f"{i.module}:{i.line}: {i.target} is not heavy: import it at the top")
            elif not i.reason:
                wrong.append(f"{i.module}:{i.line}: lazy import of {i.target} without a comment saying why")
    assert wrong == []


def test_the_graph_sees_what_a_package_loads_by_name():
    """container/ loads its reader and writer on first use, through importlib: an import circle or a heavy
    import through them was invisible to the graph."""
    found = package_imports()
    loaded = {i.target for i in found["packager.container"] if i.by_name}
    assert {"packager.container.reader", "packager.container.writer"} <= loaded
    assert {"packager.cli.verify", "packager.cli.shards"} <= {
        i.target for i in found["packager.cli"] if i.by_name
    }
    # `from ..container import write_shard` runs container.writer then and there.
    assert any(i.target == "packager.container.writer" and not i.lazy for i in found["packager.build.shard"])


_TOY = {
    "__init__.py": 'import importlib\n\n# loaded on first use\n_LAZY = {"Thing": "thing"}\n\n\n'
    "def __getattr__(name):\n"
    '    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)\n',
    "thing.py": "from .user import helper\n{heavy}\n\nclass Thing:\n    pass\n",
    "user.py": "from toy import Thing\n\n\ndef helper():\n    return Thing\n",
}


@pytest.mark.parametrize("heavy", ["", "import libtorrent"])
def test_a_circle_and_a_heavy_import_through_a_lazy_attribute_are_seen(tmp_path, heavy):
    package = tmp_path / "toy"
    package.mkdir()
    for name, text in _TOY.items():
        (package / name).write_text(text.replace("{heavy}", heavy))
    found = package_imports(package)
    graph = {m: {i.target for i in imps if i.target in found and i.target != m} for m, imps in found.items()}
    assert _cycles(graph) == [["toy", "toy.thing", "toy.user"]]
    assert ("toy.user" in _heavy_modules(found)) == bool(heavy)


# What `verify --pieces` of a good release, the command a mirror runs over terabytes, must never load: its
# start-up is part of the wait, which bench.py verify compares with libtorrent's recheck (libtorrent alone
# was 0.3 s cold; the member level 15 ms; rich 35 ms; the cyclic collector over start-up's objects 15 ms;
# config, for three constants, 10 ms with tomllib; concurrent.futures 4 ms, most of it logging; ctypes 2 ms).
VERIFY_PIECES_NEVER = (
    "libtorrent",
    "rich",
    "sqlite3",
    "zstandard",
    "packager.config",
    "tomllib",
    "concurrent.futures",
    "logging",
    "ctypes",
    "packager.container.scan",
    "packager.container.format",
    "packager.verify.frames",
    "packager.verify.localize",
    "packager.member_index",
    "packager.signing",
    "packager.cli.shards",
)

_LOADED = """
import gc, sys
starting = []  # collections before verify's command module is loaded: over start-up's own objects
gc.callbacks.append(lambda phase, info: phase == "start" and not hasattr(
    sys.modules.get("packager.cli.verify"), "_VerifyProgress") and starting.append(info))
from packager.cli import main
sys.argv = ["packager", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
print(code, len(starting), " ".join(sorted(sys.modules)), file=sys.stderr)
"""


def _verify_loads(*args: str) -> tuple[int, int, set[str]]:
    """(exit code, collections during start-up, every module loaded) of `packager verify ARGS`."""
    done = subprocess.run([sys.executable, "-c", _LOADED, "verify", *args], capture_output=True, text=True)
    code, collections, modules = done.stderr.splitlines()[-1].split(" ", 2)
    return int(code), int(collections), set(modules.split())


def test_verify_pieces_of_a_good_release_loads_only_the_piece_path(published):
    code, collections, loaded = _verify_loads(str(published), "--pieces", "--json")
    assert code == 0
    assert sorted(m for m in loaded if m.startswith(VERIFY_PIECES_NEVER)) == []
    assert collections <= 2  # 33 before the collector was paused while modules load (once, maybe, before)
    # trust/ is for a signed release: one published before the statement existed does without it.
    for name in (layout.STATEMENT, layout.signature_name(layout.STATEMENT)):
        (published / layout.PUBLISHED / name).unlink(missing_ok=True)
    code, _, loaded = _verify_loads(str(published), "--pieces", "--json")
    assert code == 0 and sorted(m for m in loaded if m.startswith(("packager.trust", *SLOW))) == []


def test_an_ingest_of_a_small_catalog_does_not_load_pyarrow(workspace, archive):
    """Arrow reads the blocks of big --trust-sizes JSON Lines catalogs (catalog/arrow_jsonl.py) and a
    refresh matches fingerprints with it; a small catalog's ingest (one block under 1 MiB) and every other
    command start without it (~50 ms of start-up)."""
    rows = [
        {"id": f"a{i}", "path": f"audio/a{i}.ogg", "kind": "audio", "popularity": i, "size": 9}
        for i in range(3)
    ]
    catalog = archive.jsonl(rows)
    for args in (["ingest", str(workspace), str(catalog), "--trust-sizes"], ["status", str(workspace)]):
        done = subprocess.run([sys.executable, "-c", _LOADED, *args], capture_output=True, text=True)
        code, _, modules = done.stderr.splitlines()[-1].split(" ", 2)
        assert int(code) == 0, done.stderr
        assert "pyarrow" not in modules.split(), args
