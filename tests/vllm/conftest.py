"""vLLM test fixtures: tiny checkpoints built at test time, in-process vLLM stages, the engine env.

These tests need ``.venv-vllm`` (``bash scripts/setup_vllm.sh``; run them with ``bash
scripts/test_vllm.sh``). Where vllm is not installed (the main ``.venv``) every test here is skipped,
and importing this file needs nothing beyond the main environment.

The engine's environment comes only from the stage configs (``engine_env``): the variables are removed
from this process before Ray starts, so neither the shell nor the driver can supply them to the actors.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.featurize.captioner_contract import build_checkpoints

ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
"""What a CPU engine needs: 1 GiB of KV cache (start-up fails without it) and the engine core in the
actor's own process (start-up ~4 s instead of ~30 s on 2 cores)."""
VLLM_OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_new_tokens": 8, "engine_env": ENGINE_ENV}
"""Stage options of every vLLM stage here; enforce_eager skips compilation (start ~15 s instead of ~45 s)."""
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
HERE = Path(__file__).parent

for _key in ENGINE_ENV:
    os.environ.pop(_key, None)


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    skip = pytest.mark.skip(
        reason="vllm is not installed: run bash scripts/setup_vllm.sh, then scripts/test_vllm.sh"
    )
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Qwen2.5-VL and Qwen2-Audio checkpoints, built once per session."""
    return build_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"))


def vllm_stage_config(checkpoints: dict[str, Path], name: str, **overrides) -> dict:
    return {"model": f"path:{checkpoints[name]}", "backend": "vllm", **VLLM_OPTIONS, **overrides}


@pytest.fixture(scope="session")
def vllm_vlm(ray_local, checkpoints):
    """The VLM captioner on vLLM in this process (Ray is started first: the engine env this sets in
    the driver must not reach the actors of the graph tests)."""
    from featurize.captioners import VLMCaptioner

    return VLMCaptioner(vllm_stage_config(checkpoints, "qwen2.5-vl"))


@pytest.fixture(scope="session")
def vllm_audio(ray_local, checkpoints):
    """The audio LM on vLLM in this process (see ``vllm_vlm`` on why Ray starts first)."""
    from featurize.audio_lm import AudioLM

    return AudioLM(vllm_stage_config(checkpoints, "qwen2-audio"))
