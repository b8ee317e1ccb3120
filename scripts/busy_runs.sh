#!/usr/bin/env bash
# N consecutive good releases through `mlcicd run`, with one core kept busy.
#
# Why: a gate that rejects healthy releases on a busy machine teaches people to
# rerun it until it passes (docs/gates.md). Each release is the built-in model's
# weights under a new content hash (a new model version), so from the second on,
# every run judges a real candidate against the champion: the latency gate paired
# with it, the canary beside it. Every run must end "promoted".
#
# Usage: scripts/busy_runs.sh [N] [STATE_DIR]     (default 5, a fresh temp dir)
# Prints one line a run: its outcome and wall time; logs under STATE_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
runs="${1:-5}"
state="${2:-$(mktemp -d /tmp/mlcicd-busy-XXXXXX)}"
mkdir -p "$state/models"
builtin="$(.venv/bin/python -c 'from inference.builtin_model import ensure_builtin_model; print(ensure_builtin_model())')"

# The hog: one busy loop, one core, for the whole series.
.venv/bin/python -c 'while True: pass' &
hog=$!
trap 'kill "$hog" 2>/dev/null || true' EXIT

echo "state: $state; hog pid $hog; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
failures=0
for i in $(seq 1 "$runs"); do
  model="$state/models/release-$i"
  rm -rf "$model"
  cp -r "$builtin" "$model"
  echo "release $i" > "$model/RELEASE_NOTE.txt"
  started=$(date +%s)
  code=0
  .venv/bin/mlcicd run --model "$model" --profile builtin --skip code-quality \
    --state-dir "$state" > "$state/run-$i.log" 2>&1 || code=$?
  seconds=$(( $(date +%s) - started ))
  last="$(find "$state/runs" -mindepth 1 -maxdepth 1 -type d | sort | tail -1)"
  outcome="$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["outcome"])' "$last/run.json")"
  echo "run $i: exit $code in ${seconds}s, load $(cut -d' ' -f1-3 /proc/loadavg): $outcome"
  [ "$code" -eq 0 ] || failures=$((failures + 1))
done
echo "$failures of $runs runs failed"
[ "$failures" -eq 0 ]
