"""The omni captioner: a Qwen2.5-Omni thinker hears and sees the clip in one prompt, one paragraph out.

``OmniCaptioner`` (stage ``omni``) reads ``frames``, ``video_meta`` and ``audio`` from the decode stage and
writes ``caption_omni`` and ``omni_error``; its caption store is ``mllm-omni.<model short name>`` and each
text encoder turns it into the feature set ``mllm-omni.<model>.<encoder>``, comparable with the modular
``mllm-av.*`` (VLM captions + audio captions). A clip without an audio track is captioned from its frames.

Backends, as for the VLM captioner:
- ``transformers``: video patches by ``preprocess_video`` (no torchvision), audio by Whisper's feature
  extractor, and the placeholder layout of transformers' Qwen2.5-Omni processor. With
  ``use_audio_in_video`` (the model's own way to watch a video with its sound) the video and audio tokens
  are interleaved in 2-second chunks under one ``<|audio_bos|>…<|audio_eos|>`` span, matching the
  thinker's time-aligned positions (TMRoPE); without it, the audio span comes before the video span.
- ``vllm``: one request per clip, ``multi_modal_data={"video": (frames, metadata), "audio": (wave, 16000)}``
  and ``mm_processor_kwargs={"use_audio_in_video": …}``; vLLM's processor expands the placeholders.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from featurize.captioners import (
    LMStageConfig,
    VisionGrid,
    caption_store_name,
    check_clip,
    generate_into,
    lm_generate,
    model_path,
    preprocess_video,
    short_error,
    stage_manifest,
    torch_device_dtype,
)
from featurize.prompts import load_prompt
from featurize.stage import Batch, upstream_error
from featurize.vllm_engine import VLLMEngine, vllm_video_metadata

OMNI_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)  # the system turn Qwen2.5-Omni was trained with
SAMPLE_RATE = 16000
VIDEO, AUDIO = "<|VIDEO|>", "<|AUDIO|>"
VISION_BOS, VISION_EOS, AUDIO_BOS, AUDIO_EOS = (
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)


class OmniCaptionerConfig(LMStageConfig):
    """The omni captioner: a Qwen2.5-Omni thinker prompted with ``featurize/prompts/omni_<version>.txt``."""

    model: str = "hf:Qwen/Qwen2.5-Omni-3B"
    """Model reference (a full Qwen2.5-Omni checkpoint, of which only the thinker is loaded, or a thinker;
    ``tiny:qwen2.5-omni`` in tests)."""
    use_audio_in_video: bool = True
    """Interleave video and audio tokens in 2 s chunks (time-aligned); False puts the audio span first."""


def omni_chat_prompt(text: str, audio: bool, interleave: bool) -> str:
    """The Qwen2.5-Omni chat markup for one clip followed by ``text`` (placeholders not yet expanded)."""
    if not audio or interleave:
        media = f"{VISION_BOS}{VIDEO}{VISION_EOS}"  # with interleave, the audio comes from the video
    else:
        media = f"{AUDIO_BOS}{AUDIO}{AUDIO_EOS}{VISION_BOS}{VIDEO}{VISION_EOS}"
    return (
        f"<|im_start|>system\n{OMNI_SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"{media}{text}<|im_end|>\n<|im_start|>assistant\n"
    )


def audio_tokens(n_frames: int) -> int:
    """Audio tokens for ``n_frames`` mel frames (the thinker's conv + pooling lengths)."""
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def chunks(positions: np.ndarray, per_chunk: int) -> list[tuple[int, int]]:
    """``(start, end)`` slices of increasing ``positions`` falling in successive ranges of ``per_chunk``."""
    out, start, k = [], 0, 1
    for i, p in enumerate(positions):
        while p >= k * per_chunk:
            if i > start:
                out.append((start, i))
                start = i
            k += 1
    out.append((start, len(positions)))
    return out


def interleaved_media(
    thw: tuple[int, int, int], merge: int, spg: float, n_audio: int, per_s: float, chunk_s: float
) -> str:
    """``<|audio_bos|>`` + video and audio tokens alternating per time chunk + ``<|audio_eos|>``.

    Video token positions are ``t * seconds_per_grid * position_id_per_seconds`` (truncated, as the
    thinker's rope index does), audio tokens one position each (40 ms at 25 per second).
    """
    t, h, w = thw
    per_frame = (h // merge) * (w // merge)
    video_pos = np.repeat((np.arange(t) * spg * per_s).astype(np.int64), per_frame)
    per_chunk = int(per_s * chunk_s)
    v, a = chunks(video_pos, per_chunk), chunks(np.arange(n_audio), per_chunk)
    parts = [AUDIO_BOS]
    for j in range(max(len(v), len(a))):
        if j < len(v):
            parts.append(VIDEO * (v[j][1] - v[j][0]))
        if j < len(a):
            parts.append(AUDIO * (a[j][1] - a[j][0]))
    return "".join([*parts, AUDIO_EOS])


def build_vllm_omni_request(
    frames: np.ndarray, video_meta: dict | str, audio: np.ndarray | None, prompt: str, interleave: bool
) -> dict[str, Any]:
    """One vLLM request: the omni chat prompt, frames with their window metadata, the 16 kHz waveform."""
    meta = json.loads(video_meta) if isinstance(video_meta, str) else video_meta
    data: dict[str, Any] = {"video": (frames, vllm_video_metadata(meta, len(frames)))}
    if audio is not None:
        data["audio"] = (np.asarray(audio, dtype=np.float32), SAMPLE_RATE)
    return {
        "prompt": omni_chat_prompt(prompt, audio is not None, interleave),
        "multi_modal_data": data,
        "mm_processor_kwargs": {"use_audio_in_video": bool(interleave and audio is not None)},
    }


def omni_manifest(cfg: OmniCaptionerConfig) -> dict[str, Any]:
    """What a caption store manifest records about the omni captioner."""
    prompt = load_prompt("omni", cfg.prompt_version)
    return stage_manifest(cfg, prompt) | {"use_audio_in_video": cfg.use_audio_in_video}


class TransformersOmni:
    """The Qwen2.5-Omni thinker through transformers (a full omni checkpoint loads its thinker only)."""

    def __init__(self, cfg: OmniCaptionerConfig, path: str) -> None:
        import transformers

        self.cfg = cfg
        mcfg = transformers.AutoConfig.from_pretrained(path)
        self.device, self.dtype = torch_device_dtype(cfg)
        if mcfg.model_type == "qwen2_5_omni_thinker":
            model = transformers.Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                path, dtype=self.dtype
            )
        elif mcfg.model_type == "qwen2_5_omni":
            full = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=self.dtype)
            model, mcfg = full.thinker, mcfg.thinker_config
        else:
            raise ValueError(f"model type {mcfg.model_type!r} is not Qwen2.5-Omni (or its thinker)")
        self.model = model.to(self.device).eval()
        self.tok = transformers.AutoTokenizer.from_pretrained(path)
        self.ids = {t: self.tok.convert_tokens_to_ids(t) for t in (VIDEO, AUDIO)}
        if (self.ids[VIDEO], self.ids[AUDIO]) != (mcfg.video_token_index, mcfg.audio_token_index):
            raise ValueError(f"tokenizer's {VIDEO}/{AUDIO} ids {self.ids} differ from the model config's")
        self.grid = VisionGrid.from_pretrained(path)
        self.features = transformers.WhisperFeatureExtractor.from_pretrained(path)
        self.per_s, self.chunk_s = float(mcfg.position_id_per_seconds), float(mcfg.seconds_per_chunk)

    def prepare(
        self, frames: np.ndarray, meta: dict, audio: np.ndarray | None, prompt: str
    ) -> dict[str, Any]:
        """Per-clip inputs: token ids with the placeholders expanded, video patches, mel features."""
        pixels, thw = preprocess_video(frames, self.grid)
        merge = self.grid.merge_size
        n_video = int(np.prod(thw)) // merge**2
        window = vllm_video_metadata(meta, len(frames))
        spg = self.grid.temporal_patch_size / (len(frames) / window["total_num_frames"] * window["fps"])
        item: dict[str, Any] = {"pixels": pixels, "thw": thw, "spg": spg, "mel": None, "mel_mask": None}
        interleave = self.cfg.use_audio_in_video and audio is not None
        text = omni_chat_prompt(prompt, audio is not None, self.cfg.use_audio_in_video)
        n_audio = 0
        if audio is not None:
            f = self.features(
                np.asarray(audio, dtype=np.float32),
                sampling_rate=SAMPLE_RATE,
                padding="max_length",
                return_attention_mask=True,
                return_tensors="np",
            )
            item["mel"], item["mel_mask"] = f["input_features"][0], f["attention_mask"][0]
            n_audio = audio_tokens(int(item["mel_mask"].sum()))
        if interleave:
            media = interleaved_media(thw, merge, spg, n_audio, self.per_s, self.chunk_s)
            text = text.replace(VIDEO, media, 1)
        else:
            text = text.replace(VIDEO, VIDEO * n_video, 1).replace(AUDIO, AUDIO * n_audio, 1)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        counts = (sum(i == self.ids[VIDEO] for i in ids), sum(i == self.ids[AUDIO] for i in ids))
        if counts != (n_video, n_audio):
            raise ValueError(
                f"tokenizer split the placeholders: {counts} video/audio ids for {(n_video, n_audio)}"
            )
        return item | {"ids": ids, "interleave": interleave}

    def generate(self, items: list[dict[str, Any]]) -> list[str]:
        """Captions in input order; clips with and without interleaved audio go in separate calls (the
        thinker's position rule is one flag per call)."""
        out: list[str] = [""] * len(items)
        for flag in (True, False):
            idx = [i for i, it in enumerate(items) if it["interleave"] == flag]
            if idx:
                for i, text in zip(idx, self._generate([items[i] for i in idx], flag)):
                    out[i] = text
        return out

    def _generate(self, items: list[dict[str, Any]], interleave: bool) -> list[str]:
        import torch

        width = max(len(it["ids"]) for it in items)
        pad = self.tok.pad_token_id
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([[pad] * (width - len(it["ids"])) + it["ids"] for it in items]),
            "attention_mask": torch.tensor(
                [[0] * (width - len(it["ids"])) + [1] * len(it["ids"]) for it in items]
            ),
            "pixel_values_videos": torch.from_numpy(np.concatenate([it["pixels"] for it in items])).to(
                self.dtype
            ),
            "video_grid_thw": torch.tensor([it["thw"] for it in items], dtype=torch.long),
            "video_second_per_grid": torch.tensor([it["spg"] for it in items], dtype=torch.float32),
        }
        heard = [it for it in items if it["mel"] is not None]
        if heard:
            inputs["input_features"] = torch.from_numpy(np.stack([it["mel"] for it in heard])).to(self.dtype)
            inputs["feature_attention_mask"] = torch.from_numpy(np.stack([it["mel_mask"] for it in heard]))
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = lm_generate(self.model, inputs | {"use_audio_in_video": interleave}, self.cfg, pad)
        return self.tok.batch_decode(out[:, width:], skip_special_tokens=True)


class OmniCaptioner:
    """Stage ``omni``: ``frames`` + ``video_meta`` + ``audio`` -> ``caption_omni`` (str) and ``omni_error``."""

    name: ClassVar[str] = "omni"
    inputs: ClassVar[tuple[str, ...]] = ("frames", "video_meta", "audio")
    outputs: ClassVar[tuple[str, ...]] = ("caption_omni", "omni_error")
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)

    def __init__(self, config: OmniCaptionerConfig | dict[str, Any]) -> None:
        self.cfg = config if isinstance(config, OmniCaptionerConfig) else OmniCaptionerConfig(**config)
        self.prompt = load_prompt("omni", self.cfg.prompt_version)
        self.store_name = caption_store_name(self.cfg, "omni")
        try:
            path = model_path(self.cfg.model)
            if self.cfg.backend == "vllm":
                self.engine: Any = VLLMEngine(self.cfg, path, {"video": 1, "audio": 1})
            else:
                self.engine = TransformersOmni(self.cfg, path)
        except Exception as e:
            raise RuntimeError(
                f"omni captioner: cannot load model {self.cfg.model} ({self.cfg.backend}): {e}"
            ) from e

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["frames"])
        errors = upstream_error(batch, self.upstream, n)
        captions = np.full(n, "", dtype=object)
        todo: list[tuple[int, Any]] = []
        vllm = isinstance(self.engine, VLLMEngine)
        audio_col = batch.get("audio")
        for i in range(n):
            if errors[i]:
                continue
            try:
                # The captioner's own row checks (frames shape and dtype, metadata keys); it uses no state.
                frames, meta = check_clip(batch["frames"][i], batch["video_meta"][i])
                audio = _waveform(None if audio_col is None else audio_col[i])
                if vllm:
                    req = build_vllm_omni_request(
                        frames, meta, audio, self.prompt.text, self.cfg.use_audio_in_video
                    )
                else:
                    req = self.engine.prepare(frames, meta, audio, self.prompt.text)
                todo.append((i, req))
            except Exception as e:  # one bad item never stops the job
                errors[i] = short_error(e)
        generate_into(self.engine, todo, vllm, self.cfg.generate_batch_size, captions, errors)
        return batch | {"caption_omni": captions, "omni_error": errors}

    def manifest(self) -> dict[str, Any]:
        return omni_manifest(self.cfg)


def _waveform(value: Any) -> np.ndarray | None:
    """A 1-D float waveform, or None for a clip without audio (None or empty)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    a = np.asarray(value)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"column 'audio': expected a 1-D float waveform at 16 kHz, got {a.dtype} {a.shape}")
    return a if a.size else None
