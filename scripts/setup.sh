#!/usr/bin/env bash
# Create .venv and install seewhy with its pinned dependencies (CPU here; the same pins give the
# CUDA build of torch on a normal Linux machine). Idempotent: rerunning only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), f"seewhy needs Python 3.11 or 3.12, found {sys.version}"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "seewhy installed in $(pwd)/.venv — activate with: . .venv/bin/activate"
