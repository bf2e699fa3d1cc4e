"""The vLLM backend of the generative stages: one ``vllm.LLM`` per actor, configured by ``LMStageConfig``,
and the video metadata in the form vLLM's Qwen-VL processor needs (``vllm_video_metadata``).

The VLM captioner and the audio LM build a ``VLLMEngine`` when their config says ``backend: vllm``. The
engine is built once in the stage's ``__init__`` (so once per Ray actor) and takes a whole batch of
prepared requests (``{"prompt", "multi_modal_data"}``) per ``generate`` call; a batch that vLLM rejects
is retried row by row, so only the bad rows become errors.

The engine's environment (``VLLM_CPU_KVCACHE_SPACE``, ``VLLM_ENABLE_V1_MULTIPROCESSING``, ...) comes
from the stage config's ``engine_env`` and is set in the actor process before vllm is imported, so a run
does not depend on the shell that started it. vllm itself is imported only here, inside ``__init__``.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurize.captioners import LMStageConfig

META_KEYS = ("fps", "duration", "total_num_frames", "frames_indices")


def vllm_video_metadata(meta: dict[str, Any], num_frames: int) -> dict[str, Any]:
    """The metadata of the decoded window, in the form vLLM's Qwen-VL processor wants.

    The decoder samples ``num_frames`` frames from the first ``window`` seconds of a clip. Qwen2.5-VL times
    its video positions by ``sampled_fps = len(frames_indices) / total_num_frames * fps``, so the metadata
    must describe that window, not the whole clip: ``total_num_frames`` becomes the window's frame count
    and ``duration`` its length. The window comes from ``video_meta["window"]`` when the decoder wrote it,
    else it is taken to end one sampling step after the last frame. A clip shorter than the window keeps
    its own frame count.
    """
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"column 'video_meta': missing key(s) {missing}; expected {list(META_KEYS)}")
    fps, total, idx = (
        float(meta["fps"]),
        int(meta["total_num_frames"]),
        [int(i) for i in meta["frames_indices"]],
    )
    if not (fps > 0 and total > 0 and math.isfinite(fps)):
        raise ValueError(f"column 'video_meta': fps and total_num_frames must be > 0, got {fps}, {total}")
    if len(idx) != num_frames or not idx:
        raise ValueError(f"column 'video_meta': {len(idx)} frames_indices for {num_frames} frames")
    if meta.get("window") is not None and math.isfinite(float(meta["window"])):
        span = round(float(meta["window"]) * fps)
    elif len(idx) >= 2:
        span = round(idx[-1] + (idx[-1] - idx[0]) / (len(idx) - 1))
    else:
        span = total
    window = min(total, max(idx[-1] + 1, span))
    duration = float(meta["duration"]) if meta["duration"] is not None else math.nan
    return {
        "fps": fps,
        "duration": min(duration, window / fps) if math.isfinite(duration) else window / fps,
        "total_num_frames": window,
        "frames_indices": idx,
        "video_backend": str(meta.get("video_backend", "pyav")),
        "do_sample_frames": False,  # frames are already sampled by the decode stage
    }


def engine_kwargs(cfg: LMStageConfig, path: str, default_limit: dict[str, int]) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments of a stage config (``path`` is the resolved model)."""
    kwargs: dict[str, Any] = {
        "model": path,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "limit_mm_per_prompt": cfg.limit_mm_per_prompt or default_limit,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "enforce_eager": cfg.enforce_eager,
    }
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    return kwargs


class VLLMEngine:
    """A ``vllm.LLM`` built from an LMStageConfig; ``generate`` returns ``(text, error)`` per request."""

    def __init__(self, cfg: LMStageConfig, path: str, default_limit: dict[str, int]):
        # vLLM reads these at import and engine start, so they must be set in this (actor) process first.
        os.environ.update(cfg.engine_env)
        import vllm

        self.llm = vllm.LLM(**engine_kwargs(cfg, path, default_limit))
        self.params = vllm.SamplingParams(
            temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=cfg.seed
        )

    def _texts(self, requests: list[dict]) -> list[str]:
        outs = self.llm.generate(requests, self.params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def generate(self, requests: list[dict]) -> list[tuple[str, str]]:
        from featurize.captioners import generate_rows  # captioners imports this module

        return generate_rows(self._texts, requests)
