#!/usr/bin/env bash
# Faulty canaries beside a champion, N times each: every one must be rolled back,
# and for its own fault.
#
# Why: a canary analysis that rolls a fault back for the wrong reason (say, a latency
# fault caught only because too few requests arrived) would pass the same fault on a
# luckier day (docs/gates.md). The series first promotes one good release (the
# champion; the built-in weights), then releases the same weights under new content
# hashes with `--canary-fault latency` and `--canary-fault errors` in turn. Each run's
# canary steps (reports/canary-step-*/canary.json) must show a failed metric of the
# fault's kind: latency (p99 ceiling, latency or TTFT against the baseline) for the
# latency fault, errors (error rate, success rate) for the error fault.
#
# Usage: scripts/canary_faults.sh [N] [STATE_DIR]     (default 3, a fresh temp dir)
# Prints one line a run: exit code, wall time, load, outcome and the failed metrics.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
runs="${1:-3}"
state="${2:-$(mktemp -d /tmp/mlcicd-faults-XXXXXX)}"
mkdir -p "$state/models"
builtin="$(.venv/bin/python -c 'from inference.builtin_model import ensure_builtin_model; print(ensure_builtin_model())')"
echo "state: $state; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

# One release through `mlcicd run`; prints its line; returns 0 when it ended as expected.
release() {
  local name="$1" fault="$2" model="$state/models/$1" code=0 started seconds last
  rm -rf "$model"
  cp -r "$builtin" "$model"
  echo "$name" > "$model/RELEASE_NOTE.txt"
  started=$(date +%s)
  .venv/bin/mlcicd run --model "$model" --profile builtin --skip code-quality \
    --canary-fault "$fault" --state-dir "$state" > "$state/$name.log" 2>&1 || code=$?
  seconds=$(( $(date +%s) - started ))
  last="$(find "$state/runs" -mindepth 1 -maxdepth 1 -type d | sort | tail -1)"
  .venv/bin/python - "$last" "$fault" "$code" "$name" "$seconds" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
from pathlib import Path

run, fault, code, name, seconds, load = sys.argv[1:]
outcome = json.loads((Path(run) / "run.json").read_text())["outcome"]
failed = sorted({
    metric["name"]
    for verdict in sorted(Path(run).glob("reports/canary-step-*/canary.json"))
    for metric in json.loads(verdict.read_text())["metrics"]
    if metric["phase"] == "Failed"
})
kinds = {
    "latency": {"p99-latency", "ttft-p99", "latency-vs-stable", "ttft-vs-stable"},
    "errors": {"error-rate", "success-rate"},
}
if fault == "none":
    right = code == "0" and not failed
else:
    right = code != "0" and bool(kinds[fault] & set(failed))
print(f"{name}: fault {fault}, exit {code} in {seconds}s, load {load}: {outcome}; "
      f"failed metrics: {', '.join(failed) or '-'}; {'as expected' if right else 'WRONG'}")
sys.exit(0 if right else 1)
PY
}

wrong=0
release champion none || wrong=$((wrong + 1))
for i in $(seq 1 "$runs"); do
  for fault in latency errors; do
    release "$fault-$i" "$fault" || wrong=$((wrong + 1))
  done
done
echo "$wrong of $((2 * runs + 1)) runs did not end as expected"
[ "$wrong" -eq 0 ]
