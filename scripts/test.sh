#!/usr/bin/env bash
# The whole test suite, as CI runs it: install, lint, format check, types, tests.
# With arguments, runs `pytest ARGS` instead of the tiers below.
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
if (($#)); then
  echo "== pytest $*"; pytest "$@"; exit
fi
# Parallel tier (pytest-xdist, one worker per core; MLCICD_TEST_WORKERS=0 runs it serially):
# pure logic and offline renders, whose session fixtures each worker builds for itself.
# Tests marked `serial` join the serial tier.
echo "== pytest (parallel tier)"
pytest tests/unit tests/infra -m "not serial" -n "${MLCICD_TEST_WORKERS:-auto}" --dist loadgroup
# Serial tier: tests that start real services and models in session fixtures, or time
# things (latency gates, canary analysis), which workers sharing the cores would skew.
echo "== pytest (serial tier)"
pytest tests/unit tests/infra -m serial
pytest tests/inference tests/integration -m "not e2e"
# End-to-end tier: whole `mlcicd run`s (releases through every stage, minutes each),
# last, so that every faster signal comes first. Two workers: the runs mostly wait
# in canary pauses, and the longest test has a file, so a worker, of its own.
echo "== pytest (end-to-end tier)"
pytest tests/integration -m e2e -n "${MLCICD_TEST_WORKERS:-2}" --dist loadfile
