"""The audio description stage: the sound track, its transcript and sound events in, one paragraph out.

This is the paper's "audio knowledge fusion": ASR (``transcript``) and sound events (``sound_events``)
come from earlier stages and go into the prompt of an audio LM (Qwen2-Audio), which also hears the
waveform and writes an intent-aware description of the sound track (``caption_audio``). Two stages share
the name ``audio_lm`` and its outputs, so the pipeline takes whichever the config names:
- ``AudioLM``: Qwen2-Audio on transformers (CPU tests with ``tiny:qwen2-audio``) or on vLLM (GPU);
- ``TranscriptEventsDescriber``: no audio LM; writes a plainly labelled "Transcript: ... Sound events: ..."
  text as the description.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from featurize.captioners import (
    SYSTEM,
    LMStageConfig,
    build_engine,
    caption_store_name,
    generate_into,
    lm_generate,
    short_error,
    stage_manifest,
    torch_device_dtype,
)
from featurize.prompts import load_prompt
from featurize.stage import Batch, upstream_error

SAMPLE_RATE = 16000
MAX_EVENTS = 20  # keeps the prompt bounded on clips with many short detections
NO_SPEECH = "(no speech detected)"
NO_EVENTS = "(no sound events detected)"
UPSTREAM = ("decode_error", "asr_error", "events_error")


class AudioLMConfig(LMStageConfig):
    """The audio LM: Qwen2-Audio prompted with ``featurize/prompts/audio_<version>.txt``."""

    model: str = "hf:Qwen/Qwen2-Audio-7B-Instruct"
    """Model reference (the paper's Qwen-Audio; ``tiny:qwen2-audio`` in tests)."""


def audio_chat_prompt(text: str) -> str:
    """Qwen2-Audio chat markup for one audio clip followed by ``text`` (its default template's output)."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{text}<|im_end|>\n<|im_start|>assistant\n"
    )


def build_vllm_audio_request(wave: np.ndarray, prompt: str) -> dict[str, Any]:
    """One vLLM request: the chat prompt with the audio placeholder and the 16 kHz waveform."""
    return {"prompt": audio_chat_prompt(prompt), "multi_modal_data": {"audio": (wave, SAMPLE_RATE)}}


def format_sound_events(value: Any) -> str:
    """Sound events as prompt text: a JSON list of ``{label, start, end, score}`` or a short text as is."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_EVENTS
    try:
        events = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return str(value).strip()  # the short-text form
    if not isinstance(events, list):
        return str(value).strip()
    parts = []
    for k, ev in enumerate(events):
        if not isinstance(ev, dict) or "label" not in ev:
            raise ValueError(f"column 'sound_events': event {k} is {ev!r}; expected an object with a 'label'")
        span = f" {float(ev['start']):.1f}-{float(ev['end']):.1f} s" if "start" in ev and "end" in ev else ""
        score = f" ({float(ev['score']):.2f})" if "score" in ev else ""
        parts.append(
            (-float(ev.get("score", 0.0)), float(ev.get("start", 0.0)), f"{ev['label']}{span}{score}")
        )
    # The most confident events are kept, then told in time order.
    kept = sorted(sorted(parts)[:MAX_EVENTS], key=lambda p: p[1])
    text = "; ".join(p for _, _, p in kept)
    more = len(parts) - MAX_EVENTS
    return (text + (f"; and {more} more" if more > 0 else "")) if parts else NO_EVENTS


def transcript_text(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return text or NO_SPEECH


def check_wave(wave: Any) -> np.ndarray:
    """The waveform of one row, or a ValueError that names the column and what was expected."""
    if wave is None:
        raise ValueError("no audio (column 'audio' is None: the item has no audio track)")
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or wave.size == 0:
        raise ValueError(
            f"column 'audio': expected a non-empty 1-D float32 array, got {getattr(wave, 'shape', wave)}"
        )
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"column 'audio': expected float samples at 16 kHz, got dtype {wave.dtype}")
    return wave.astype(np.float32, copy=False)


class TransformersAudioLM:
    """Qwen2-Audio through transformers: its processor (Whisper features, no torchvision) and generate."""

    def __init__(self, cfg: AudioLMConfig, path: str):
        import transformers

        self.cfg = cfg
        mcfg = transformers.AutoConfig.from_pretrained(path)
        if mcfg.model_type != "qwen2_audio":
            raise ValueError(f"model type {mcfg.model_type!r} is not qwen2_audio")
        self.device, dtype = torch_device_dtype(cfg)
        self.model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=dtype)
        self.model = self.model.to(self.device).eval()
        self.dtype = dtype
        self.proc = transformers.AutoProcessor.from_pretrained(path)
        self.proc.tokenizer.padding_side = "left"  # generation continues from the right edge

    def generate(self, items: list[tuple[np.ndarray, str]]) -> list[str]:

        # The Whisper feature extractor pads or cuts every clip to 30 s, the encoder's fixed input length.
        inputs = self.proc(
            text=[audio_chat_prompt(p) for _, p in items],
            audio=[w for w, _ in items],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding=True,
        )
        inputs["input_features"] = inputs["input_features"].to(self.dtype)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = lm_generate(self.model, inputs, self.cfg, self.proc.tokenizer.pad_token_id)
        return self.proc.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class AudioLM:
    """Stage ``audio_lm``: ``audio`` + ``transcript`` + ``sound_events`` -> ``caption_audio``, ``audio_lm_error``."""

    name: ClassVar[str] = "audio_lm"
    inputs: ClassVar[tuple[str, ...]] = ("audio", "transcript", "sound_events")
    outputs: ClassVar[tuple[str, ...]] = ("caption_audio", "audio_lm_error")
    upstream: ClassVar[tuple[str, ...]] = UPSTREAM

    def __init__(self, config: AudioLMConfig | dict[str, Any]):
        self.cfg = config if isinstance(config, AudioLMConfig) else AudioLMConfig(**config)
        self.prompt = load_prompt("audio", self.cfg.prompt_version)
        self.store_name = caption_store_name(self.cfg, "audio")
        self.engine: Any = build_engine(self.cfg, "audio", TransformersAudioLM, "audio LM")

    def render(self, transcript: Any, sound_events: Any) -> str:
        """The user prompt of one row: the versioned audio prompt with its transcript and events filled in."""
        return self.prompt.render(
            transcript=transcript_text(transcript), sound_events=format_sound_events(sound_events)
        )

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["audio"])
        errors = upstream_error(batch, self.upstream, n)
        texts = np.full(n, "", dtype=object)
        todo: list[tuple[int, Any]] = []
        vllm = self.cfg.backend == "vllm"
        for i in range(n):
            if errors[i]:
                continue
            try:
                wave = check_wave(batch["audio"][i])
                prompt = self.render(batch["transcript"][i], batch["sound_events"][i])
                todo.append((i, build_vllm_audio_request(wave, prompt) if vllm else (wave, prompt)))
            except Exception as e:
                errors[i] = short_error(e)
        generate_into(self.engine, todo, vllm, self.cfg.generate_batch_size, texts, errors)
        return batch | {"caption_audio": texts, "audio_lm_error": errors}

    def manifest(self) -> dict[str, Any]:
        return stage_manifest(self.cfg, self.prompt)


class TranscriptEventsDescriber:
    """Stage ``audio_lm`` without a model: the transcript and sound events as a labelled text.

    Used when no audio LM is configured (or affordable); the text goes to the same caption column, so
    the rest of the pipeline does not change. A clip without an audio track is an error row, as with
    ``AudioLM``, so both variants cover the same items.
    """

    name: ClassVar[str] = "audio_lm"
    inputs: ClassVar[tuple[str, ...]] = ("transcript", "sound_events")
    outputs: ClassVar[tuple[str, ...]] = ("caption_audio", "audio_lm_error")
    upstream: ClassVar[tuple[str, ...]] = UPSTREAM
    store_name: ClassVar[str] = "mllm-audio.asr-events"

    def describe(self, transcript: Any, sound_events: Any, language: Any = None) -> str:
        lang = f" ({language})" if isinstance(language, str) and language.strip() else ""
        return f"Transcript{lang}: {transcript_text(transcript)}\nSound events: {format_sound_events(sound_events)}"

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["transcript"])
        errors = upstream_error(batch, self.upstream, n)
        texts = np.full(n, "", dtype=object)
        languages = batch.get("language")
        for i in range(n):
            if errors[i]:
                continue
            if "audio" in batch and batch["audio"][i] is None:
                errors[i] = "no audio (column 'audio' is None: the item has no audio track)"
                continue
            try:
                lang = languages[i] if languages is not None else None
                texts[i] = self.describe(batch["transcript"][i], batch["sound_events"][i], lang)
            except Exception as e:
                errors[i] = short_error(e)
        return batch | {"caption_audio": texts, "audio_lm_error": errors}

    def manifest(self) -> dict[str, Any]:
        return {"model": None, "describer": "transcript+events", "max_events": MAX_EVENTS}
