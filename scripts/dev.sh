#!/usr/bin/env bash
# One entry point for a fresh machine: installs what packager and its tests need, then runs one thing.
#   scripts/dev.sh demo [DIR]   set up, then run `packager demo` on a generated archive
#   scripts/dev.sh test [ARGS]  set up, then run the whole test suite (what CI runs)
#   scripts/dev.sh setup        set up only
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive as independent peers: GNU tar + zstd read our shards, mktorrent is the
# benchmark's peer, aria2c / transmission / opentracker / libtorrent exchange our torrents, minisign checks
# our signatures, chromium renders the published index, nginx serves shards as a web seed.
DEB_TOOLS=(zstd:zstd aria2c:aria2 transmission-show:transmission-cli opentracker:opentracker
           minisign:minisign mktorrent:mktorrent chromium:chromium qbittorrent-nox:qbittorrent-nox
           transmission-daemon:transmission-daemon nginx:nginx)

install_debian_tools() {
    local missing=()
    for pair in "${DEB_TOOLS[@]}"; do
        # nginx lives in /usr/sbin, outside a normal user's PATH.
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

install_python() {
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv
    fi
    if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
        .venv/bin/python -m pip install -q --upgrade pip >&2
        .venv/bin/python -m pip install -q -e '.[test,cluster]' >&2
        touch .venv/.installed
    fi
}

setup() {
    install_debian_tools
    install_python
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    setup) setup ;;
    demo) setup; exec .venv/bin/packager demo "$@" ;;
    test) setup; exec .venv/bin/python -m pytest "$@" ;;
    *) echo "usage: scripts/dev.sh {setup|demo [DIR]|test [PYTEST ARGS]}" >&2; exit 2 ;;
esac
