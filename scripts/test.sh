#!/usr/bin/env bash
# The whole test suite, as CI runs it: install, lint, format check, types, tests.
# Test fixtures start the real services they need (mlflow server, prometheus,
# docker-registry, the inference server) on free loopback ports.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
echo "== ruff check";  ruff check .
echo "== ruff format"; ruff format --check .
echo "== mypy";        mypy
echo "== pytest";      pytest "$@"
