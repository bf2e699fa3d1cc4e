"""vLLM engine settings from the stage config (no vllm needed); the engine itself runs in tests/vllm."""

from __future__ import annotations

import pytest

from featurize.audio_lm import AudioLMConfig
from featurize.captioners import VLMCaptionerConfig, short_error
from featurize.vllm_engine import engine_kwargs


def test_engine_kwargs_follow_the_config():
    cfg = VLMCaptionerConfig(model="hf:x/y", backend="vllm", max_model_len=2048, enforce_eager=True)
    assert engine_kwargs(cfg, "/models/y", {"video": 1}) == {
        "model": "/models/y",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "limit_mm_per_prompt": {"video": 1},
        "seed": 0,
        "dtype": "auto",
        "enforce_eager": True,
        "max_model_len": 2048,
    }
    audio = AudioLMConfig(backend="vllm", limit_mm_per_prompt={"audio": 2})
    kwargs = engine_kwargs(audio, "/m", {"audio": 1})
    assert kwargs["limit_mm_per_prompt"] == {"audio": 2} and "max_model_len" not in kwargs
    assert not kwargs["enforce_eager"]


def test_engine_env_takes_yaml_scalars_as_strings():
    env = {"VLLM_CPU_KVCACHE_SPACE": 1, "VLLM_ENABLE_V1_MULTIPROCESSING": False, "X": "a"}
    cfg = VLMCaptionerConfig(engine_env=env)
    assert cfg.engine_env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "X": "a"}
    with pytest.raises(ValueError, match=r"engine_env: values must be strings or numbers; not for \['A'\]"):
        VLMCaptionerConfig(engine_env={"A": [1]})
    assert "engine_env" not in VLMCaptionerConfig().sampling()  # the env never changes a store's identity


def test_short_error_keeps_the_root_cause_of_a_wrapped_error():
    try:
        try:
            raise ValueError("absolute aspect ratio must be smaller than 200, got 213.0")
        except ValueError as inner:
            raise ValueError("Failed to apply Processor on data={'videos': [array(" + "1, " * 500) from inner
    except ValueError as e:
        text = short_error(e)
    assert text.startswith("ValueError: Failed to apply Processor") and len(text) <= 500
    assert text.endswith("(caused by ValueError: absolute aspect ratio must be smaller than 200, got 213.0)")
    try:
        raise ValueError("column 'video_meta': not a JSON object (bad)") from ValueError("bad")
    except ValueError as e:
        assert short_error(e) == "ValueError: column 'video_meta': not a JSON object (bad)"
