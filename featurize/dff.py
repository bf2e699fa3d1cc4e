"""The DFF stage: intermediate decoder hidden states of the frozen VLM, pooled per layer, one vector per clip.

After *Frozen LVLMs for Micro-Video Recommendation* (DFF): instead of asking the VLM for a caption, run
one prefill over the clip's frames and the video prompt (no generation), capture the outputs of the
chosen decoder layers with forward hooks, mean-pool each layer over the video tokens (``pool: visual``)
or over every token of the prompt (``pool: all``), and concatenate the per-layer vectors. The feature set
is ``dff.<model short name>.L<i>-<j>-…`` (``.all`` appended for ``pool: all``); its manifest records
``layers`` and ``layer_dim`` so the trainer can split the vector back into layers
(``train.encoders``: ``dff`` and ``dff-fusion``).

Layer ``i`` is the output of decoder block ``i`` (1-based, so ``i`` matches ``hidden_states[i]`` of
transformers' ``output_hidden_states``; the final norm is not applied). The forward pass stops after the
deepest requested layer. Inputs are built exactly as for the captioner (``TransformersVLM.prepare``).

Only the transformers backend exists: vLLM (0.32) returns no intermediate hidden states from
``LLM.generate``, and its pooling runner gives only the last layer's, so ``backend: vllm`` is refused.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from featurize.captioners import (
    TransformersVLM,
    VLMCaptionerConfig,
    batches,
    check_clip,
    model_path,
    short_error,
)
from featurize.prompts import load_prompt
from featurize.refs import fingerprint, parse_ref
from featurize.stage import Batch, upstream_error

VLLM_REFUSAL = (
    "dff: backend 'vllm' is not supported: vLLM 0.32 returns no intermediate decoder hidden states "
    "(LLM.generate gives text; the pooling runner only the last layer's states). Use backend: transformers "
    "(CPU or GPU)."
)


class DFFConfig(BaseModel):
    """Which VLM, which decoder layers, and how their token states become one vector per layer."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str = "hf:Qwen/Qwen2.5-VL-3B-Instruct"
    """Qwen2-VL / Qwen2.5-VL reference (``tiny:qwen2.5-vl`` in tests; it has 2 decoder layers)."""
    layers: tuple[int, ...] = (8, 16, 24)
    """Decoder layers to read, 1-based (layer i = output of block i); checked against the model's count."""
    pool: Literal["visual", "all"] = "visual"
    """Mean over the video tokens only, or over all tokens of the prompt (system turn, video, text)."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """Only ``transformers``: vLLM exposes no intermediate hidden states (``vllm`` is refused with why)."""
    prompt_version: str = "v1"
    """The video prompt (``featurize/prompts/video_<version>.txt``) that follows the frames."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; ``auto`` is bfloat16 on CUDA and float32 on CPU. Vectors are written as float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` takes CUDA when present."""
    batch_size: int = Field(4, gt=0)
    """Clips per forward pass (left-padded)."""
    name: str | None = None
    """Feature-set name override; default ``dff.<model short name>.L<layers>`` (``.all`` for pool all)."""

    @field_validator("backend")
    @classmethod
    def _no_vllm(cls, v: str) -> str:
        if v == "vllm":
            raise ValueError(VLLM_REFUSAL)
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(i < 1 for i in v) or list(v) != sorted(set(v)):
            raise ValueError(f"layers: expected distinct increasing 1-based layer numbers, got {list(v)}")
        return v

    def captioner_config(self) -> VLMCaptionerConfig:
        """The captioner settings whose input building and model loading this stage shares."""
        return VLMCaptionerConfig(
            model=self.model, prompt_version=self.prompt_version, dtype=self.dtype, device=self.device
        )


def feature_set_name(cfg: DFFConfig) -> str:
    """``dff.<model short name>.L8-16-24`` (``.all`` appended when pooling over all tokens)."""
    if cfg.name:
        return cfg.name
    layers = "-".join(str(i) for i in cfg.layers)
    return f"dff.{parse_ref(cfg.model).short_name}.L{layers}" + (
        "" if cfg.pool == "visual" else f".{cfg.pool}"
    )


def check_layers(layers: tuple[int, ...], n_layers: int, model: str) -> None:
    """Raise when a requested layer does not exist in a model of ``n_layers`` decoder layers."""
    bad = [i for i in layers if i > n_layers]
    if bad:
        raise ValueError(
            f"dff: model {model} has {n_layers} decoder layers (valid layers 1..{n_layers}); "
            f"layers {bad} do not exist"
        )


def text_dims(cfg: DFFConfig) -> tuple[int, int]:
    """(decoder layers, hidden size) of the configured model, read from its config; layers checked."""
    import transformers

    try:
        mcfg = transformers.AutoConfig.from_pretrained(model_path(cfg.model))
    except Exception as e:
        raise RuntimeError(f"dff: cannot read the config of model {cfg.model}: {e}") from e
    text = getattr(mcfg, "text_config", mcfg)
    n, width = int(text.num_hidden_layers), int(text.hidden_size)
    check_layers(cfg.layers, n, cfg.model)
    return n, width


def dff_identity(cfg: DFFConfig, layer_dim: int, frame_sampling: dict[str, Any]) -> dict[str, Any]:
    """What determines a DFF feature set (hashed, and written to its manifest with layers/layer_dim)."""
    ref = parse_ref(cfg.model)
    fp = fingerprint(ref)
    if ref.is_stand_in:
        from featurize.tiny_models import build_hash

        fp = f"{ref}@{build_hash(ref.value)}"
    return {
        "stage": "dff",
        "models": [{"ref": str(ref), "fingerprint": fp}],
        "stand_in": ref.is_stand_in,
        "layers": list(cfg.layers),
        "layer_dim": layer_dim,
        "pool": cfg.pool,
        "dtype": cfg.dtype,
        "prompt": load_prompt("video", cfg.prompt_version).manifest(),
        "frame_sampling": frame_sampling,
    }


class _Stop(Exception):
    """Raised by the hook of the deepest requested layer: the rest of the forward pass is not needed."""


class HiddenStates:
    """Forward hooks on the chosen decoder layers of a loaded ``TransformersVLM``; one prefill per batch."""

    def __init__(self, engine: TransformersVLM, layers: tuple[int, ...], pool: str, model: str) -> None:
        self.engine, self.layers, self.pool = engine, layers, pool
        blocks = engine.model.get_decoder().layers
        check_layers(layers, len(blocks), model)
        self.blocks = [blocks[i - 1] for i in layers]
        self.layer_dim = int(engine.model.config.get_text_config().hidden_size)

    def __call__(self, items: list[dict[str, Any]]) -> list[np.ndarray]:
        """One ``[len(layers) * layer_dim]`` float32 vector per prepared clip."""
        import torch

        inputs, mask = self.engine.model_inputs(items)
        keep = mask.bool() if self.pool == "all" else inputs["input_ids"].cpu() == self.engine.video_token_id
        weights = keep.to(torch.float32).to(self.engine.device).unsqueeze(-1)
        pooled: list[Any] = []

        def hook(_module: Any, _args: Any, out: Any) -> None:
            h = (out[0] if isinstance(out, tuple) else out).float()
            pooled.append((h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
            if len(pooled) == len(self.blocks):
                raise _Stop

        handles = [b.register_forward_hook(hook) for b in self.blocks]
        try:
            with torch.inference_mode():
                self.engine.model.model(**inputs, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(pooled) != len(self.blocks):
            raise RuntimeError(f"dff: captured {len(pooled)} of {len(self.blocks)} layers")
        return list(torch.cat(pooled, dim=-1).cpu().numpy().astype(np.float32))


class DFFEmbed:
    """Stage ``dff``: ``frames`` + ``video_meta`` -> ``vec_dff`` (float32 vector) and ``dff_error``."""

    name: ClassVar[str] = "dff"
    inputs: ClassVar[tuple[str, ...]] = ("frames", "video_meta")
    outputs: ClassVar[tuple[str, ...]] = ("vec_dff", "dff_error")
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)

    def __init__(self, config: DFFConfig | dict[str, Any]) -> None:
        self.cfg = config if isinstance(config, DFFConfig) else DFFConfig(**config)
        self.prompt = load_prompt("video", self.cfg.prompt_version)
        self.feature_set = feature_set_name(self.cfg)
        vlm = self.cfg.captioner_config()
        try:
            engine = TransformersVLM(vlm, model_path(vlm.model))
        except Exception as e:
            raise RuntimeError(f"DFF: cannot load model {self.cfg.model} (transformers): {e}") from e
        self.states = HiddenStates(engine, self.cfg.layers, self.cfg.pool, self.cfg.model)

    @property
    def layer_dim(self) -> int:
        return self.states.layer_dim

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["frames"])
        errors = upstream_error(batch, self.upstream, n)
        vecs = np.full(n, None, dtype=object)
        todo: list[tuple[int, dict[str, Any]]] = []
        for i in range(n):
            if errors[i]:
                continue
            try:
                # The captioner's own row checks (frames shape and dtype, metadata keys); it uses no state.
                frames, meta = check_clip(batch["frames"][i], batch["video_meta"][i])
                todo.append((i, self.states.engine.prepare(frames, meta, self.prompt.text)))
            except Exception as e:  # one bad item never stops the job
                errors[i] = short_error(e)
        for chunk in batches(todo, self.cfg.batch_size):
            try:
                outs = self.states([it for _, it in chunk])
            except Exception as e:
                if len(chunk) == 1:
                    errors[chunk[0][0]] = short_error(e)
                    continue
                outs = [None] * len(chunk)
                for k, (i, it) in enumerate(chunk):  # retry alone, so only the bad clip fails
                    try:
                        outs[k] = self.states([it])[0]
                    except Exception as e1:
                        errors[i] = short_error(e1)
            for (i, _), v in zip(chunk, outs, strict=True):
                vecs[i] = v
        return batch | {"vec_dff": vecs, "dff_error": errors}
