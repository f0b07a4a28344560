#!/usr/bin/env bash
# Set up everything the test suite needs, then run it (lint, types, tests).
# Usage: bash scripts/test.sh [pytest args...]
# Under CI=true nothing may be skipped for lack of a tool: Redis, the other
# Pythons and the browser must be there (this script installs what it can).
#
# Python packages come from requirements/constraints.txt (pinned, refreshed
# with the command in its header), so a new upstream release cannot turn this
# red. PACHINKO_NEWEST=1 (scripts/test-newest.sh) installs the newest releases
# allowed by pyproject.toml instead, in separate virtualenvs.
set -euo pipefail
cd "$(dirname "$0")/.."

constraints=(-c requirements/constraints.txt)
venv=.venv
if [ "${PACHINKO_NEWEST:-}" = "1" ]; then
    constraints=(--upgrade --upgrade-strategy eager)
    venv=.venv-newest
fi

setup_venv() {  # setup_venv PYTHON DIR: a virtualenv at DIR with the project and its dev tools
    "$1" -m venv "$2"
    # NOTE: the build backend comes from the constraints too (no build isolation,
    # which would fetch the newest setuptools at every install).
    "$2/bin/python" -m pip install -q --disable-pip-version-check --upgrade "${constraints[@]}" pip setuptools
    "$2/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation "${constraints[@]}" -e '.[dev]'
}

find_python() {  # find_python 3.12 -> path of an interpreter of that version, or nothing
    local v=$1 candidate
    for candidate in "python$v" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin/"python$v"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
}

main_python=$(find_python 3.11 || true)
main_python=${PYTHON:-${main_python:-python3}}
echo "== setting up $venv with $("$main_python" --version)"
setup_venv "$main_python" "$venv"

# Interpreters for the checks that must behave the same on 3.11, 3.12 and 3.13.
pythons=()
for v in 3.11 3.12 3.13; do
    exe=$(find_python "$v" || true)
    if [ -z "$exe" ]; then
        if [ "${CI:-}" = "true" ]; then echo "Python $v is required under CI" >&2; exit 1; fi
        echo "== Python $v not found: cross-version checks will skip it"
        continue
    fi
    echo "== setting up $venv-$v"
    setup_venv "$exe" "$venv-$v"
    pythons+=("$PWD/$venv-$v/bin/python")
done
PACHINKO_PYTHONS=$(IFS=:; echo "${pythons[*]}")
export PACHINKO_PYTHONS

if ! command -v redis-server >/dev/null 2>&1 && [ -z "${REDIS_URL:-}" ]; then
    echo "== redis-server not found: installing it"
    (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
        echo "== could not install redis-server (Redis tests will skip, or fail under CI)"
fi

if [ -f scripts/install-browser-deps.sh ]; then
    echo "== browser test dependencies"
    bash scripts/install-browser-deps.sh || {
        if [ "${CI:-}" = "true" ]; then echo "browser dependencies are required under CI" >&2; exit 1; fi
        echo "== browser dependencies missing: the browser test will skip"
    }
fi

echo "== ruff"
"$venv/bin/ruff" check pachinko tests benchmarks examples
"$venv/bin/ruff" format --check pachinko tests benchmarks examples
echo "== mypy (strict)"
"$venv/bin/mypy"
# Functions a reader must be able to follow: grade C or better (radon) for the
# config compiler and the dispatch builder (the receive loop's shape is kept
# for its measured per-message cost, see its PERF notes).
echo "== radon (complexity C or better)"
complex=$("$venv/bin/radon" cc -n D -s pachinko/config pachinko/_dispatch_build.py)
if [ -n "$complex" ]; then echo "$complex"; echo "functions above grade C" >&2; exit 1; fi
echo "== pytest ($("$venv/bin/python" --version))"
"$venv/bin/python" -m pytest "$@"

# The library must behave the same on every supported Python: run the suite
# (all but the browser test, which does not depend on the interpreter) again.
for python in "${pythons[@]}"; do
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$python" -ef "$venv/bin/python" ] || [ "$version" = "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ]; then
        continue
    fi
    echo "== pytest (Python $version)"
    "$python" -m pytest -q -p no:cacheprovider -m "not browser" "$@"
done
