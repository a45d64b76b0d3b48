from pathlib import Path

import pytest

from packager.config import default_config_text, parse_config, parse_size
from packager.errors import ConfigError


def test_default_config_describes_the_real_release(tmp_path: Path):
    config = parse_config(default_config_text("music", tmp_path), tmp_path / "release.toml")
    assert [p.name for p in config.phases] == ["metadata", "audio", "art"]
    audio = config.phase("audio")
    assert [t.name for t in audio.tiers] == ["t1", "t2", "t3", "t4"]
    assert audio.tiers[0].admits(60) and not audio.tiers[0].admits(59.9)
    assert audio.tiers[3].admits(0) and not audio.tiers[3].admits(10)
    assert audio.shard_size == 50 * 10**9
    assert config.root == tmp_path
    assert set(config.kinds) == {"metadata", "audio", "art"}


@pytest.mark.parametrize(
    "text, size", [("50GB", 50 * 10**9), ("16MiB", 16 * 2**20), (4096, 4096), ("1.5 kB", 1500), ("7", 7)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["fifty", "5 parsecs", -1, True, ""])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def _with(tmp_path: Path, old: str, new: str) -> str:
    text = default_config_text("music", tmp_path)
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "old, new, key, allowed",
    [
        ("level = 12", "level = 99", "phases[0].level", "-7 to 22"),
        ('format = "v1"', 'format = "v3"', "phases[0].format", "v1, hybrid, v2"),
        ('shard_size = "50GB"', 'shard_size = "lots"', "phases[0].shard_size", "50GB"),
        ('piece_size = "auto"', 'piece_size = "3MB"', "phases[0].piece_size", "power of two"),
        ('frame_size = "16MiB"', 'frame_size = "1KiB"', "phases[0].frame_size", "at least"),
        ('kinds = ["metadata"]', "kinds = []", "phases[0].kinds", "non-empty list"),
        ('name = "t2"', 'name = "t1"', "phases[1].tiers[1].name", "unique"),
        ("max_popularity = 60", "max_popularity = 20", "phases[1].tiers[1].max_popularity", None),
        ("private = false", 'private = "no"', "torrents.private", None),
        ("trackers = []", 'trackers = ["ftp://x"]', "torrents.trackers", "udp://"),
        ("web_seeds = []", 'web_seeds = ["https://w.example/s/?t=1"]', "torrents.web_seeds", "without ?"),
        # urlsplit refuses these (ValueError): build, torrent and health were tracebacks
        ("trackers = []", 'trackers = ["udp://[::1:80/announce"]', "torrents.trackers", "udp://"),
        ("trackers = []", 'trackers = ["http://t.example:99999/announce"]', "torrents.trackers", "udp://"),
        ("web_seeds = []", 'web_seeds = ["http://[::1/shards/"]', "torrents.web_seeds", "http://"),
        (
            "web_seeds = []",
            'web_seeds = ["file:///srv/shards/"]',
            "torrents.web_seeds",
            "http:// or https://",
        ),
        ("mtime = 1735689600", 'mtime = 1735689600\ncolour = "red"', "release.colour", "name, root"),
        ("[build]", '[build]\nscheduler = "http://x:8786"', "build.scheduler", "tcp://HOST:PORT"),
        ("[build]", '[build]\nscheduler = "tcp://x:0"', "build.scheduler", "tcp://HOST:PORT"),
        ("[build]", "[build]\nconnect_timeout = 0", "build.connect_timeout", "above 0"),
        ("[build]", "[build]\nretries = -1", "build.retries", "0 to 100"),
        ("[build]", "[build]\nworkers = 3", "build.workers", "connect_timeout, retries, scheduler"),
    ],
)
def test_invalid_config_names_the_key_and_allowed_values(tmp_path, old, new, key, allowed):
    with pytest.raises(ConfigError) as e:
        parse_config(_with(tmp_path, old, new), tmp_path / "release.toml")
    assert e.value.key == key
    text = e.value.message + (e.value.hint or "")
    assert key in text and "release.toml" in text
    if allowed:
        assert allowed in text


def test_build_table_names_a_scheduler(tmp_path):
    text = _with(tmp_path, "[build]", '[build]\nscheduler = "tcp://10.0.0.1:8786"\nconnect_timeout = 2.5')
    build = parse_config(text, tmp_path / "release.toml").build
    assert (build.scheduler, build.connect_timeout, build.retries) == ("tcp://10.0.0.1:8786", 2.5, 2)
    assert parse_config(default_config_text("m", tmp_path), tmp_path / "release.toml").build.scheduler is None


def test_syntax_error_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="release.toml"):
        parse_config("[release\nname=", tmp_path / "release.toml")


def test_duplicate_phase(tmp_path):
    text = (
        default_config_text("m", tmp_path)
        + '\n[[phases]]\nname = "art"\nkinds = ["art"]\nshard_size = "1GB"\n'
    )
    with pytest.raises(ConfigError, match="defined twice"):
        parse_config(text, tmp_path / "release.toml")


def test_seed_table_is_checked_at_load_time(tmp_path):
    text = default_config_text("m", tmp_path).replace(
        "[seed]\n", '[seed]\nseed_choking = "fastest_upload"\ndht = false\n'
    )
    parse_config(text, tmp_path / "release.toml")
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace("dht = false", "dht = false\ncolour = 1"), tmp_path / "release.toml")
    assert e.value.key == "seed.colour"


def test_example_release_toml_in_manifests_is_valid(tmp_path):
    from pathlib import Path

    example = Path(__file__).parent.parent / "manifests" / "release.example.toml"
    config = parse_config(example.read_text(), tmp_path / "release.toml")
    assert [p.name for p in config.phases][0] == "metadata"
