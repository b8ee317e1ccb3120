#!/usr/bin/env bash
# Entry point of the runner image: report the accelerator, then hand over to the
# actions runner. ARC passes a just-in-time config (ACTIONS_RUNNER_INPUT_JITCONFIG), so
# the runner registers for exactly one job and exits: the pod is ephemeral.
set -euo pipefail

cd "${RUNNER_HOME:-/home/runner}"

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "runner-entrypoint: no GPU visible (CPU runner)"
fi

for dir in "$HOME/.cache/mlcicd" "$HOME/.cache/huggingface" "$HOME/.cache/pip"; do
    mkdir -p "$dir"
done

if [[ -z "${ACTIONS_RUNNER_INPUT_JITCONFIG:-}" ]]; then
    echo "runner-entrypoint: ACTIONS_RUNNER_INPUT_JITCONFIG is not set (start me from ARC)" >&2
    exit 2
fi

exec ./run.sh "$@"
