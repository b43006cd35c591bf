#!/usr/bin/env bash
# The one quick-start command: installs what is missing (PostgreSQL server included), creates .venv,
# then builds and starts a local 3-node cluster in ./ram-cluster (or restarts it). Extra arguments go
# to `ram cluster up`, e.g. ./scripts/cluster-up.sh --nodes 5 --dir /tmp/demo
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_system_packages
ensure_venv
exec .venv/bin/ram cluster up "$@"
