"""Tiny model builders: shapes vLLM can serve, deterministic builds, cache reuse, templates, key layout."""

from __future__ import annotations

import hashlib
import json

import pytest

from featurize.audio_lm import audio_chat_prompt
from featurize.captioners import video_chat_prompt
from featurize.refs import ModelRefError
from featurize.tiny_models import TINY_MODELS, fix_qwen2_audio_keys, tiny_model_dir


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_models_are_small_and_servable(name, cache):
    path = tiny_model_dir(name, cache)
    cfg = json.loads((path / "config.json").read_text())
    text = cfg["text_config"]
    assert text["num_hidden_layers"] == 2 and 64 <= text["hidden_size"] <= 128
    assert (
        text["hidden_size"] // text["num_attention_heads"] >= 32
    )  # vLLM CPU attention: head_dim 32, 64, 80...
    vision = cfg.get("vision_config") or cfg["audio_config"]
    depth = vision.get("depth", vision.get("encoder_layers"))
    width = vision.get("embed_dim") or vision.get("hidden_size") or vision["d_model"]
    heads = vision.get("num_heads") or vision["encoder_attention_heads"]
    assert 1 <= depth <= 2 and width // heads >= 32
    for f in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (path / f).is_file()
    if name != "qwen2-audio":
        assert (path / "preprocessor_config.json").is_file() and (
            path / "video_preprocessor_config.json"
        ).is_file()


def test_builds_are_deterministic_and_cached(cache, tmp_path):
    first = tiny_model_dir("qwen2.5-vl", cache)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir("qwen2.5-vl", cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    other = tiny_model_dir("qwen2.5-vl", tmp_path)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(first / f) == digest(other / f)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_unknown_tiny_name_lists_the_valid_ones(cache):
    with pytest.raises(ModelRefError, match=r"tiny:qwen3-vl.*qwen2-audio.*qwen2.5-vl"):
        tiny_model_dir("qwen3-vl", cache)


def test_chat_templates_match_the_prompt_builders(cache):
    from transformers import AutoProcessor, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2.5-vl", cache))
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == video_chat_prompt(
        "Describe."
    )
    for special in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    proc = AutoProcessor.from_pretrained(tiny_model_dir("qwen2-audio", cache))
    msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Listen."}]}]
    assert proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == audio_chat_prompt(
        "Listen."
    )


def test_qwen2_audio_weights_use_the_names_vllm_loads(cache, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tiny_model_dir("qwen2-audio", cache)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    # The transformers 5.19 layout is repaired in place.
    save_file(
        {"language_model.model.model.norm.weight": torch.ones(2), "audio_tower.x": torch.zeros(1)},
        tmp_path / "model.safetensors",
    )
    assert fix_qwen2_audio_keys(tmp_path) == 1
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["audio_tower.x", "language_model.model.norm.weight"]
    assert fix_qwen2_audio_keys(tmp_path) == 0
