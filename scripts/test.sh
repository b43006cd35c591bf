#!/usr/bin/env bash
# The one test command: creates the environment, installs what is missing (PostgreSQL server
# included), then runs lint, type checks and the test suite. Works as root (PostgreSQL test servers
# then run as the `postgres` OS user) and as an ordinary user. Extra arguments go to pytest.
#   ./scripts/test.sh                 # everything CI runs
#   ./scripts/test.sh -m slow         # the long soak / chaos runs
#   ./scripts/test.sh tests/consensus -x
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_system_packages
ensure_venv

echo "== ruff"
.venv/bin/ruff check ram tests bench migrations
echo "== mypy --strict ram/"
.venv/bin/mypy ram
echo "== pytest"
exec .venv/bin/pytest "$@"
