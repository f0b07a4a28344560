#!/usr/bin/env bash
# Run the whole suite against the newest releases that pyproject.toml allows
# (not the pinned requirements/constraints.txt), in .venv-newest*. Not used by
# .ci/run: it tells whether a refresh of the constraints would stay green.
set -euo pipefail
cd "$(dirname "$0")/.."
PACHINKO_NEWEST=1 exec bash scripts/test.sh "$@"
