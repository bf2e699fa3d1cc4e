"""Builders for ``tiny:`` model references: tiny random Qwen2.5-VL, Qwen2-VL, Qwen2-Audio and Qwen2.5-Omni
thinker checkpoints.

There is no hub access in tests or in the demo, so these stand-ins are built from a config at run time
(2 text layers, width 64, head_dim 32 so vLLM's CPU attention can serve them too, 1-2 vision layers,
fixed seed) and saved once to ``$SEEWHY_CACHE/tiny/<name>-<hash>`` (default ``~/.cache/seewhy/tiny``)
with an offline byte-level BPE tokenizer that knows the Qwen special tokens and the Qwen chat template.
The hash covers this file and the transformers version, so an edited builder never reuses a stale build.
Outputs are random text, deterministic for a given input; reports mark them as stand-ins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featurize.refs import ModelRefError, seewhy_cache

SEED = 0

# Qwen2-VL / Qwen2.5-VL chat template: a default system turn, then vision placeholders before text.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2-Audio's own default template (transformers' Qwen2AudioProcessor.default_chat_template).
AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5-Omni's template for the parts seewhy uses: a system turn, then audio/image/video placeholders.
OMNI_CHAT_TEMPLATE = (
    VL_CHAT_TEMPLATE.replace(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_bos|><|IMAGE|><|vision_eos|>"
    )
    .replace("<|vision_start|><|video_pad|><|vision_end|>", "<|vision_bos|><|VIDEO|><|vision_eos|>")
    .replace(
        "{% elif 'text' in content %}",
        "{% elif content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif 'text' in content %}",
    )
)
VL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
VL_SPECIAL += ["<|image_pad|>", "<|video_pad|>"]
AUDIO_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
# Qwen2.5-Omni's own spellings: <|vision_bos|>/<|vision_eos|> and <|VIDEO|>/<|IMAGE|> (not the VL ones).
OMNI_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_bos|>", "<|vision_eos|>"]
OMNI_SPECIAL += ["<|IMAGE|>", "<|VIDEO|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
# A fixed corpus, so the tokenizer (and thus every output) is the same on every machine.
_CORPUS = [
    "A person is walking a dog in the park on a sunny day.",
    "The video shows a red car driving on a mountain road while upbeat music plays.",
    "A young woman dances on a rooftop at sunset; the clip is a playful parody of a music video.",
    "A man speaks into a microphone in a calm voice about cooking noodles at home.",
    "Funny cat compilation with dramatic orchestral music and on-screen text in Chinese.",
    "Game footage of an anime fighting game with signature lines from the characters.",
    "Describe the video. Describe the sound track. What is happening in this clip?",
    "The mood is light, humorous and energetic; the tone is ironic.",
    "Two friends cook dinner in a small kitchen and laugh at a burnt pizza.",
    "A street food vendor in Shanghai fries dumplings while customers wait in line.",
    "Slow motion shots of waves on a beach, with calm piano music and birds singing.",
    "A makeup tutorial with close-ups, bright lighting and pop music in the background.",
    "A child plays with a puppy in the snow; the family cheers and claps.",
    "Highlights of a football match with a crowd chanting and an excited commentator.",
]
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXT |= {"num_key_value_heads": 1, "max_position_embeddings": 4096}
# A larger vision init than the default 0.02: otherwise the ~500 prompt tokens drown the few video tokens
# and every clip gets the same random caption, so tests could not see that frames reach the model.
VISION_INIT = 0.2
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}  # sums to head_dim / 2
# Small pixel bounds keep tiny-model video tokens few (vLLM's processor reads the same files).
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _tokenizer(special: list[str]) -> Any:
    """A BPE over printable ASCII trained on ``_CORPUS``: random outputs decode to readable word pieces.

    Characters outside the alphabet map to ``<unk>`` (the tiny models need no more than that).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[*special, "<unk>"],
        initial_alphabet=[*(chr(c) for c in range(32, 127)), "\n", "\u2581"],
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _set_generation(model: Any, tok: Any) -> None:
    stop = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.eos_token_id = stop
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False


def _save_vl(out: Path, model: Any, tok: Any, processor_class: str) -> None:
    _set_generation(model, tok)
    model.save_pretrained(out)
    tok.chat_template = VL_CHAT_TEMPLATE
    tok.save_pretrained(out)
    # Written by hand: the torch video processor class needs torchvision, which this environment lacks.
    common = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": CLIP_MEAN}
    common |= {"image_std": CLIP_STD, "do_resize": True, "do_rescale": True, "do_normalize": True}
    common |= {
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
        "processor_class": processor_class,
    }
    common |= {"size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}}
    common |= {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    _write_json(out / "preprocessor_config.json", common | {"image_processor_type": "Qwen2VLImageProcessor"})
    video = common | {"video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False}
    _write_json(out / "video_preprocessor_config.json", video | {"min_frames": 4, "max_frames": 768})


def _vl_ids(tok: Any) -> dict[str, int]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in VL_SPECIAL}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _text_config(tok: Any) -> dict:
    ids = {
        "bos_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    return TEXT | ids | {"vocab_size": len(tok)}


def build_qwen25_vl(out: Path) -> None:
    """Tiny Qwen2.5-VL: 2 text layers (width 64, head_dim 32), 2 vision blocks (one with full attention)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = _tokenizer(VL_SPECIAL)
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 64}
    cfg = Qwen2_5_VLConfig(
        text_config=_text_config(tok) | {"rope_parameters": dict(MROPE)},
        vision_config=vision | {"fullatt_block_indexes": [1], "initializer_range": VISION_INIT},
        **_vl_ids(tok),
    )
    _save_vl(out, Qwen2_5_VLForConditionalGeneration(cfg).eval(), tok, "Qwen2_5_VLProcessor")


def build_qwen2_vl(out: Path) -> None:
    """Tiny Qwen2-VL: 2 text layers (width 64, head_dim 32), 2 vision blocks (embed 64, head_dim 32)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = _tokenizer(VL_SPECIAL)
    vision = {"depth": 2, "embed_dim": 64, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
    vision |= {"initializer_range": VISION_INIT}
    cfg = Qwen2VLConfig(
        text_config=_text_config(tok) | {"rope_parameters": dict(MROPE)}, vision_config=vision, **_vl_ids(tok)
    )
    _save_vl(out, Qwen2VLForConditionalGeneration(cfg).eval(), tok, "Qwen2VLProcessor")


def build_qwen2_audio(out: Path) -> None:
    """Tiny Qwen2-Audio: a 2-layer Whisper-style encoder (80 mels, width 64) and a 2-layer Qwen2 decoder."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tok = _tokenizer(AUDIO_SPECIAL)
    audio = {"num_mel_bins": 80, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128}
    cfg = Qwen2AudioConfig(
        audio_config=audio | {"d_model": 64},
        text_config=_text_config(tok) | {"model_type": "qwen2"},
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    model = Qwen2AudioForConditionalGeneration(cfg).eval()
    _set_generation(model, tok)
    model.save_pretrained(out)
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)
    Qwen2AudioProcessor(
        feature_extractor=fe, tokenizer=tok, chat_template=AUDIO_CHAT_TEMPLATE
    ).save_pretrained(out)
    fix_qwen2_audio_keys(out)


def build_qwen25_omni_thinker(out: Path) -> None:
    """Tiny Qwen2.5-Omni thinker: 2 text layers (width 64), 2 vision blocks, a 2-layer audio encoder (128 mels).

    The preprocessor config holds both the video patching (read by ``VisionGrid``) and the Whisper
    feature extractor settings, as the real checkpoints' do.
    """
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    tok = _tokenizer(OMNI_SPECIAL)
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI_SPECIAL}
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 64}
    vision |= {"fullatt_block_indexes": [1], "initializer_range": VISION_INIT}
    audio = {"num_mel_bins": 128, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128}
    audio |= {"d_model": 64, "output_dim": 64, "n_window": 50, "initializer_range": VISION_INIT}
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=_text_config(tok) | {"rope_parameters": dict(MROPE)},
        vision_config=vision,
        audio_config=audio,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
    )
    model = Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()
    _set_generation(model, tok)
    model.save_pretrained(out)
    tok.chat_template = OMNI_CHAT_TEMPLATE
    tok.save_pretrained(out)
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000).to_dict()
    grid = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": CLIP_MEAN}
    grid |= {"image_std": CLIP_STD, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    _write_json(out / "preprocessor_config.json", {k: v for k, v in fe.items() if k != "mel_filters"} | grid)
    _write_json(out / "video_preprocessor_config.json", grid | {"do_sample_frames": False})


def fix_qwen2_audio_keys(path: Path) -> int:
    """Rename ``language_model.model.model.*`` weights to ``language_model.model.*`` (what vLLM loads).

    Some transformers 5.x versions save the Qwen2-Audio text weights one level too deep; transformers
    reads either, vLLM only the short form. Returns how many keys were renamed (0 when already right).
    """
    from safetensors.torch import load_file, save_file

    file = path / "model.safetensors"
    tensors = load_file(file)
    bad = "language_model.model.model."
    renamed = {
        (k.replace(bad, "language_model.model.", 1) if k.startswith(bad) else k): v
        for k, v in tensors.items()
    }
    n = sum(k.startswith(bad) for k in tensors)
    if n:
        save_file(renamed, file, metadata={"format": "pt"})
    return n


TINY_MODELS: dict[str, Callable[[Path], None]] = {
    "qwen2.5-vl": build_qwen25_vl,
    "qwen2-vl": build_qwen2_vl,
    "qwen2-audio": build_qwen2_audio,
    "qwen2.5-omni": build_qwen25_omni_thinker,
}


def cache_root() -> Path:
    """Where tiny models are kept: ``$SEEWHY_CACHE/tiny``, else ``~/.cache/seewhy/tiny``."""
    return seewhy_cache() / "tiny"


def build_hash(name: str) -> str:
    """A short hash of the builder source and the transformers version: a new one means a rebuild."""
    import transformers

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{name}|{transformers.__version__}".encode())
    return h.hexdigest()[:12]


def tiny_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The directory of tiny model ``name`` (e.g. ``qwen2.5-vl``), building it on first use.

    The build happens in a private temporary folder that is renamed into place, so concurrent actors
    never see a half-written model: the first rename wins and the others discard their copy.
    """
    if name not in TINY_MODELS:
        raise ModelRefError(
            f"model reference tiny:{name}: no tiny builder of that name; valid: {sorted(TINY_MODELS)}"
        )
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"{name}-{build_hash(name)}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            TINY_MODELS[name](tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
