"""The CLI through typer's CliRunner: exit codes and what a user sees."""

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from packager import layout
from packager.cli import app
from tests.helpers import prepare, run_build

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_init_ingest_plan_status(tmp_path, archive):
    size = archive.add("audio/x.ogg", 1234)
    cat = archive.jsonl([{"id": "x", "path": "audio/x.ogg", "kind": "audio", "popularity": 70, "size": size}])
    ws = tmp_path / "ws"
    r = invoke("init", ws, "--root", archive.root, "--name", "music")
    assert r.exit_code == 0, r.output
    assert (ws / "release.toml").exists() and (ws / "state.sqlite").exists()
    r = invoke("ingest", ws, cat)
    assert r.exit_code == 0 and "1 added" in r.output
    r = invoke("plan", ws, "--dry-run")
    assert r.exit_code == 0 and "would add 1 shards" in r.output
    r = invoke("plan", ws)
    assert r.exit_code == 0 and "music-audio-t1-00001" in r.output
    r = invoke("status", ws)
    assert r.exit_code == 0 and "audio" in r.output and "1 planned" in r.output
    assert "[60, inf)" in r.output and "[-inf, inf)" in r.output  # the human table keeps the ranges
    data = json.loads(invoke("status", ws, "--json").output)
    assert data["shards"][0]["name"] == "music-audio-t1-00001"
    # The range as JSON numbers, null where unbounded: it was the string "[60, inf)" (and "[-inf, inf)").
    assert data["phases"][0]["tiers"][0]["popularity"] == {"min": None, "max": None}
    assert data["phases"][1]["tiers"][0] == {
        "name": "t1",
        "popularity": {"min": 60.0, "max": None},
        "popularity_ranges": [{"min": 60.0, "max": None}],
        "shards": 1,
        "items": 1,
        "bytes": 1234,
        "pop_min": 70.0,
        "pop_max": 70.0,
        "states": {"planned": 1},
    }


def test_bad_catalog_exits_2_with_file_and_line_and_no_traceback(workspace, archive):
    cat = archive.jsonl([{"id": "x", "path": "../x", "kind": "audio", "popularity": 1}])
    r = invoke("ingest", workspace, cat)
    assert r.exit_code == 2
    assert f"{cat}:1" in r.output and "escapes the archive root" in r.output
    assert "error:" in r.output and "hint:" in r.output and "Traceback" not in r.output


def test_ingest_json_report(workspace, archive):
    size = archive.add("audio/y.ogg", 10)
    cat = archive.jsonl(
        [
            {"id": "y", "path": "audio/y.ogg", "kind": "audio", "popularity": 1, "size": size},
            {"id": "z", "path": "audio/none.ogg", "kind": "audio", "popularity": 1},
        ]
    )
    r = invoke("ingest", workspace, cat, "--skip-invalid", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["added"] == 1 and data["rejected"] == 1 and data["problems"][0]["line"] == 2


def test_not_a_workspace(tmp_path):
    r = invoke("status", tmp_path)
    assert r.exit_code == 2 and "release.toml" in r.output and "packager init" in r.output


def test_init_refuses_a_missing_root_and_an_existing_workspace(tmp_path, workspace, archive):
    r = invoke("init", tmp_path / "new", "--root", tmp_path / "nowhere")
    assert r.exit_code == 2 and "not a folder" in r.output
    r = invoke("init", workspace, "--root", archive.root)
    assert r.exit_code == 2 and "already a release workspace" in r.output


def test_bad_config_names_the_key(workspace):
    cfg = workspace / "release.toml"
    cfg.write_text(cfg.read_text().replace("level = -1", "level = 40", 1))
    r = invoke("plan", workspace)
    assert r.exit_code == 2 and "phases[1].level" in r.output and "-7 to 22" in r.output


def test_usage_error_exits_2():
    assert invoke("status").exit_code == 2
    assert invoke("frobnicate").exit_code == 2


def test_every_command_is_in_the_readme_and_has_an_example():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert names
    for name in names:
        assert re.search(rf"packager {re.escape(name)}\b", readme), f"`packager {name}` is not in README.md"
        r = invoke(name, "--help")
        assert r.exit_code == 0 and "Example:" in r.output, name


def test_the_readmes_python_examples_compile_and_are_formatted_as_our_code(tmp_path):
    """A user copies them: each ```python block compiles, and ruff (our settings) leaves it as is."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, flags=re.M | re.S)
    assert blocks
    root = Path(__file__).parent.parent
    for i, block in enumerate(blocks):
        compile(block, f"README.md python block {i}", "exec")
        (tmp_path / f"block{i}.py").write_text(block)
    for tool in (["format", "--check"], ["check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *tool, "--config", str(root / "pyproject.toml"), str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_command_table_names_every_command_and_its_module_in_help_order():
    from packager.cli import COMMANDS

    registered = {(c.name or c.callback.__name__): c.callback.__module__ for c in app.registered_commands}
    assert list(COMMANDS) == list(registered)
    assert {name: f"packager.cli.{module}" for name, module in COMMANDS.items()} == registered


_IMPORTS = """
import sys
from packager.cli import main
sys.argv = ["packager", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
heavy = ("libtorrent", "minisign", "packager.build", "packager.catalog", "packager.container.writer",
         "packager.cli.workspace", "packager.cli.shards", "packager.cli.publish", "packager.cli.seed")
print(" ".join(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


def test_a_command_imports_only_what_it_needs(tmp_path):
    """Start-up is part of every command's wait: `verify` loads neither the other commands nor the
    writer, libtorrent (for --help), minisign (without --pubkey) or the catalog engine."""

    def heavy(*args: str) -> set[str]:
        done = subprocess.run([sys.executable, "-c", _IMPORTS, *args], capture_output=True, text=True)
        return set(done.stderr.splitlines()[-1].split())  # the last line: errors come before it

    assert heavy("verify", "--help") == set()
    assert heavy("verify", str(tmp_path)) == set()
    assert "packager.cli.workspace" in heavy("--help")


def test_demo_runs_every_stage_and_is_repeatable(tmp_path):
    r = invoke("demo", tmp_path / "demo", "--files", "40")
    assert r.exit_code == 0, r.output
    assert "magnet:?xt=urn:btih:" in r.output and "extract:" in r.output
    assert "9. fetch" in r.output and "through the swarm, without its shard" in r.output
    shards = sorted((tmp_path / "demo/release/shards").iterdir())
    assert shards and all(p.name.endswith(".tar.zst") for p in shards)
    before = {p.name: p.read_bytes() for p in shards}
    again = invoke("demo", tmp_path / "demo", "--files", "40")
    assert again.exit_code == 0 and "0 added" in again.output
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "demo/release/shards").iterdir())} == before


def test_status_prints_magnets_of_built_shards(tmp_path):
    assert invoke("demo", tmp_path / "demo", "--files", "20").exit_code == 0
    r = invoke("status", tmp_path / "demo/release", "--magnets")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 0 and lines and all("magnet:?xt=urn:btih:" in line for line in lines)


def test_ingest_and_plan_do_not_import_libtorrent(workspace, archive):
    """libtorrent (0.3 s to import, and a native library) is for the commands that hash or seed torrents."""
    archive.add("a.ogg", 10)
    catalog = archive.jsonl([{"id": "a", "path": "a.ogg", "kind": "audio", "popularity": 1}])
    config = workspace / layout.CONFIG
    seed_table = '\n[seed]\nlisten = "127.0.0.1:0"\n[seed.libtorrent]\nmax_rejects = 3\n'
    config.write_text(config.read_text() + seed_table)
    script = (
        "import sys\n"
        "from packager.cli import app\n"
        "for args in (['ingest', '--help'], ['ingest', sys.argv[1], sys.argv[2]], ['plan', sys.argv[1]]):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (args, e.code)\n"
        "assert 'libtorrent' not in sys.modules, 'libtorrent was imported'\n"
    )
    command = [sys.executable, "-c", script, str(workspace), str(catalog)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "1 rows: 1 added" in done.stdout


# Other people's text (paths, ids, reasons, a tracker's or a worker's reply) is printed as it is: rich read
# `[live]` as a markup tag and dropped it, and an unmatched `[/x]` raised MarkupError, a traceback.
HOSTILE = "[live] take [b]1[/b] [/x] [bold red]"


def test_brackets_in_member_paths_and_ids_are_printed_as_they_are(workspace, archive):
    path = f"audio/{HOSTILE}.ogg"
    rows = [{"id": "[id]", "path": path, "kind": "audio", "popularity": 5, "size": archive.add(path, 999)}]
    prepare(workspace, archive, rows)
    assert not run_build(workspace).failed
    (shard,) = (workspace / layout.SHARDS).iterdir()
    r = CliRunner().invoke(app, ["extract", str(shard), "--list"])
    assert r.exit_code == 0, r.output
    assert path in r.output and "[id]" in r.output


def test_brackets_in_seed_and_swarm_messages_are_printed_as_they_are(capsys):
    from packager.cli.seed import _SeedDisplay
    from packager.seed.events import Notice, TorrentFault

    display = _SeedDisplay(quiet=False)
    display.on_event(Notice(f"tracker said {HOSTILE}"))
    display.on_event(TorrentFault("rel-[x]-00001", "ab" * 20, f"file error: {HOSTILE}"))
    printed = capsys.readouterr().err
    assert f"note: tracker said {HOSTILE}" in printed
    assert f"error: rel-[x]-00001: file error: {HOSTILE} (paused" in printed


def test_demo_with_too_few_files_is_refused_not_a_traceback(tmp_path):
    """--files 0 was StopIteration, --files 1 an IndexError (the demo extracts one, damages another)."""
    for n in ("0", "1", "-5"):
        r = invoke("demo", tmp_path / f"demo{n}", "--files", n)
        assert r.exit_code == 2 and "--files" in r.output and "at least 2" in r.output, r.output
        assert not (tmp_path / f"demo{n}").exists()
