#!/usr/bin/env bash
# The main job: install, answer one request from the built-in model, then run
# the whole pipeline on this machine against real local services.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
mlcicd hello
mlcicd run "$@"
