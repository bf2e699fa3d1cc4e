"""The paper's content baselines: VideoMAE clip embeddings (16 frames) and CLAP audio embeddings.

Real models are Hugging Face checkpoints for GPU machines (``hf:MCG-NJU/videomae-large``,
``hf:laion/clap-htsat-unfused``); ``tiny:videomae`` and ``tiny:clap`` are 2-layer random stand-ins built
from config with fixed seeds, so tests and the demo run offline. Preprocessing is done here in torch
(no torchvision, which transformers' video processors need): VideoMAE frames are resized (shorter side)
and centre-cropped to the model's image size and normalised; CLAP audio is resampled 16 -> 48 kHz and
cut into the feature extractor's 10 s windows, whose embeddings are averaged. The title baseline is
the text encoder over titles (``featurize.text_encoders``).
"""

from __future__ import annotations

from collections.abc import Mapping
from math import gcd
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from featurize.asr import SAMPLE_RATE, check_waveform, is_missing, require_columns
from featurize.refs import parse_ref, resolve_local
from featurize.stage import Batch, upstream_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _BaselineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
    tiny_name: ClassVar[str]

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` uses CUDA when torch sees a GPU."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype; vectors are always written as float32."""
    batch_size: int = 4
    """Clips per forward pass (a CLAP clip is one to three 10 s windows)."""

    @field_validator("model", check_fields=False)
    @classmethod
    def _check_ref(cls, v: str) -> str:
        if parse_ref(v).is_stand_in and v != f"tiny:{cls.tiny_name}":
            raise ValueError(f"{v!r}: unknown tiny model; valid: 'tiny:{cls.tiny_name}'")
        return v


class VideoMAEConfig(_BaselineConfig):
    """VideoMAE clip embedding: mean of the last hidden state over all tubelet tokens."""

    tiny_name: ClassVar[str] = "videomae"

    model: str = "hf:MCG-NJU/videomae-large"
    """``hf:MCG-NJU/videomae-large`` (the paper's), ``path:<checkpoint folder>`` or ``tiny:videomae``."""
    image_mean: tuple[float, float, float] | None = None
    """Per-channel mean; None takes the checkpoint's preprocessor_config.json (ImageNet's for tiny)."""
    image_std: tuple[float, float, float] | None = None
    """Per-channel std; None as for ``image_mean``."""
    normalize: bool = True
    """L2-normalise the pooled vector (its raw norm grows with the model width, unlike the text features)."""


class CLAPConfig(_BaselineConfig):
    """CLAP audio embedding: the projected, L2-normalised audio feature averaged over 10 s windows."""

    tiny_name: ClassVar[str] = "clap"

    model: str = "hf:laion/clap-htsat-unfused"
    """``hf:laion/clap-htsat-unfused`` (the paper's), ``path:<checkpoint folder>`` or ``tiny:clap``."""


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _seeded(build: Any) -> Any:
    """Run ``build()`` under a fixed torch seed without disturbing the caller's RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def build_tiny_videomae() -> Any:
    """A 2-layer, width-32 random VideoMAE over 16 frames of 224x224 (1568 tubelet tokens)."""
    from transformers import VideoMAEConfig as HFConfig
    from transformers import VideoMAEModel

    cfg = HFConfig(
        image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=1, intermediate_size=64,
    )  # fmt: skip
    return _seeded(lambda: VideoMAEModel(cfg))


def build_tiny_clap() -> tuple[Any, Any]:
    """A tiny random unfused CLAP (HTSAT audio tower of 2 stages, width 64) and its default feature extractor."""
    from transformers import ClapConfig as HFConfig
    from transformers import ClapFeatureExtractor, ClapModel

    cfg = HFConfig(
        text_config={"vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 1,
                     "intermediate_size": 64, "max_position_embeddings": 64},
        audio_config={"hidden_size": 64, "depths": [1, 1], "num_attention_heads": [1, 2],
                      "patch_embeds_hidden_size": 32, "enable_fusion": False},
        projection_dim=32,
    )  # fmt: skip
    return _seeded(lambda: ClapModel(cfg)), ClapFeatureExtractor()


def resize_crop(frames: Any, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """uint8 ``[T, H, W, 3]`` -> normalised float ``[T, 3, size, size]`` (shorter side to size, centre crop)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size] / 255.0
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


class _EmbedStage:
    """Shared row loop: validate each input, forward the valid ones in micro-batches, errors as data."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]]
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)
    batch_size: int

    def prepare(self, value: Any) -> Any:
        """One cell -> model input; ValueError for a bad cell."""
        raise NotImplementedError

    def embed(self, prepared: list[Any]) -> list[np.ndarray]:
        """Model inputs -> one float32 vector each."""
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        require_columns(batch, self.name, self.inputs)
        col = self.inputs[0]
        n = len(batch[col])
        errors = upstream_error(batch, self.upstream, n)
        vecs = np.full(n, None, dtype=object)
        ready: list[tuple[int, Any]] = []
        for i, value in enumerate(batch[col]):
            if errors[i]:
                continue
            try:
                ready.append((i, self.prepare(value)))
            except Exception as e:  # one bad item never stops the job
                errors[i] = f"{type(e).__name__}: {e}"
        for k in range(0, len(ready), self.batch_size):
            chunk = ready[k : k + self.batch_size]
            try:
                outs = self.embed([p for _, p in chunk])
            except Exception as e:
                for i, _ in chunk:
                    errors[i] = f"{type(e).__name__}: {e}"
                continue
            for (i, _), v in zip(chunk, outs):
                vecs[i] = v
        out = dict(batch)
        out[self.outputs[0]], out[self.outputs[1]] = vecs, errors
        return out


class VideoMAEEmbed(_EmbedStage):
    """Ray Data UDF: ``frames16`` (uint8 [16, H, W, 3]) -> ``vec_videomae``, ``videomae_error``."""

    name: ClassVar[str] = "videomae"
    inputs: ClassVar[tuple[str, ...]] = ("frames16",)
    outputs: ClassVar[tuple[str, ...]] = ("vec_videomae", "videomae_error")

    def __init__(self, cfg: VideoMAEConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, VideoMAEConfig) else VideoMAEConfig.model_validate(cfg or {})
        import torch

        ref = parse_ref(self.cfg.model)
        self.device, self.batch_size = _device(self.cfg.device), self.cfg.batch_size
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        try:
            if ref.is_stand_in:
                model = build_tiny_videomae()
            else:
                from transformers import VideoMAEModel
                from transformers.image_processing_base import ImageProcessingMixin

                source = resolve_local(ref)
                model = VideoMAEModel.from_pretrained(source, local_files_only=ref.scheme != "hf")
                pre, _ = ImageProcessingMixin.get_image_processor_dict(
                    source, local_files_only=ref.scheme != "hf"
                )
                mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        except Exception as e:  # systemic: stop the job, naming the reference
            raise RuntimeError(f"VideoMAE model {ref} failed to load: {e}") from e
        self.dtype = getattr(torch, self.cfg.dtype)
        self.model = model.to(self.device, self.dtype).eval()
        self.mean, self.std = self.cfg.image_mean or mean, self.cfg.image_std or std
        self.num_frames, self.size = int(model.config.num_frames), int(model.config.image_size)

    def prepare(self, frames: Any) -> Any:
        if is_missing(frames):
            raise ValueError("column 'frames16' is None: the item has no decoded video")
        a = np.asarray(frames)
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[0] != self.num_frames or a.shape[-1] != 3:
            raise ValueError(
                f"column 'frames16': expected uint8 [{self.num_frames}, H, W, 3], got {a.dtype} {a.shape}"
            )
        return resize_crop(a, self.size, self.mean, self.std)

    def embed(self, prepared: list[Any]) -> list[np.ndarray]:
        import torch

        x = torch.stack(prepared).to(self.device, self.dtype)  # [B, T, 3, S, S]
        with torch.inference_mode():
            pooled = self.model(pixel_values=x).last_hidden_state.float().mean(dim=1)
            if self.cfg.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return list(pooled.cpu().numpy().astype(np.float32))


class CLAPEmbed(_EmbedStage):
    """Ray Data UDF: ``audio`` (16 kHz) -> ``vec_clap``, ``clap_error``."""

    name: ClassVar[str] = "clap"
    inputs: ClassVar[tuple[str, ...]] = ("audio",)
    outputs: ClassVar[tuple[str, ...]] = ("vec_clap", "clap_error")

    def __init__(self, cfg: CLAPConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, CLAPConfig) else CLAPConfig.model_validate(cfg or {})
        import torch

        ref = parse_ref(self.cfg.model)
        self.device, self.batch_size = _device(self.cfg.device), self.cfg.batch_size
        try:
            if ref.is_stand_in:
                model, self.extractor = build_tiny_clap()
            else:
                from transformers import ClapFeatureExtractor, ClapModel

                source, local = resolve_local(ref), ref.scheme != "hf"
                model = ClapModel.from_pretrained(source, local_files_only=local)
                self.extractor = ClapFeatureExtractor.from_pretrained(source, local_files_only=local)
        except Exception as e:  # systemic: stop the job, naming the reference
            raise RuntimeError(f"CLAP model {ref} failed to load: {e}") from e
        self.dtype = getattr(torch, self.cfg.dtype)
        self.model = model.to(self.device, self.dtype).eval()
        self.rate = int(self.extractor.sampling_rate)
        self.window = int(self.extractor.nb_max_samples)
        # Windows never exceed the extractor's max length, so neither truncation mode crops at random;
        # the mode only selects the mel layout the model was trained with (4 stacked mels for fusion).
        self.truncation = "fusion" if model.config.audio_config.enable_fusion else "rand_trunc"

    def prepare(self, audio: Any) -> list[np.ndarray]:
        """16 kHz waveform -> 48 kHz windows of at most 10 s: consecutive, the last one aligned to the end."""
        from scipy.signal import resample_poly

        a = check_waveform(audio)
        if a is None:
            raise ValueError("column 'audio' is None or empty: the item has no audio track")
        g = gcd(self.rate, SAMPLE_RATE)
        x = resample_poly(a, self.rate // g, SAMPLE_RATE // g).astype(np.float32)
        if len(x) <= self.window:
            return [x]
        starts = list(range(0, len(x) - self.window + 1, self.window))
        if starts[-1] + self.window < len(x):
            starts.append(len(x) - self.window)
        return [x[s : s + self.window] for s in starts]

    def embed(self, prepared: list[list[np.ndarray]]) -> list[np.ndarray]:
        import torch

        windows = [w for clip in prepared for w in clip]
        feats = self.extractor(
            windows,
            sampling_rate=self.rate,
            truncation=self.truncation,
            padding="repeatpad",
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = self.model.get_audio_features(
                input_features=feats["input_features"].to(self.device, self.dtype),
                is_longer=feats["is_longer"].to(self.device),
            )
            emb = out.pooler_output.float().cpu().numpy()
        vecs, k = [], 0
        for clip in prepared:
            v = emb[k : k + len(clip)].mean(axis=0)
            k += len(clip)
            vecs.append((v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32))
        return vecs
