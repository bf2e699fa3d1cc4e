"""The captioner contract (tests/featurize/captioner_contract.py) on the transformers backend.

The same cases run on vLLM in ``tests/vllm/test_vllm_contract.py`` (``bash scripts/test_vllm.sh``).
"""

from __future__ import annotations

import pytest

from featurize.audio_lm import AudioLM
from featurize.captioners import VLMCaptioner
from tests.featurize.captioner_contract import CaptionerContract, build_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return build_checkpoints(tmp_path_factory.mktemp("tiny-checkpoints"))


@pytest.fixture(scope="module")
def vlm(checkpoints) -> VLMCaptioner:
    return VLMCaptioner({"model": f"path:{checkpoints['qwen2.5-vl']}", "max_new_tokens": 8})


@pytest.fixture(scope="module")
def audio_lm(checkpoints) -> AudioLM:
    return AudioLM({"model": f"path:{checkpoints['qwen2-audio']}", "max_new_tokens": 8})


class TestTransformersContract(CaptionerContract):
    backend = "transformers"
