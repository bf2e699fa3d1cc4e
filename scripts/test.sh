#!/usr/bin/env bash
# The test suite: offline, CPU only (tests marked gpu skip without CUDA; vllm tests need .venv-vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest --durations=15 "$@"  # the marker filter is in pyproject.toml
