"""The featurize entry point: config -> plan -> two streaming phases -> stores, with a summary.

Phase A (video -> captions and direct features): catalog rows still missing from any store of the
phase go through decode, the configured captioners (VLM; ASR, sound events, audio LM or the
transcript+events describer) and the VideoMAE/CLAP baselines, then the writer. Phase B (captions ->
text features): for each text encoder, one pass over items whose caption rows exist, embedding titles,
video captions, audio captions and both concatenated (``mllm-av``) as labelled sections.

``build_plan(cfg)`` turns the config into a ``PipelinePlan`` (plain data: stage specs and sinks);
``assemble`` builds one from explicit stages, which is how tests swap in cheap stand-in stages.
``run_featurize(cfg)`` opens every store first (refusing a changed configuration before any work),
runs both phases and recounts the manifests. Ray must already be initialised by the caller.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from featurize.config import FeaturizeConfig, encoder_name
from featurize.graph import Plan, PlanRun, Sink, StoreWriter, run_plan, todo_rows
from featurize.refs import fingerprint, parse_ref
from featurize.stage import StageSpec
from featurize.stores import WORK

logger = logging.getLogger(__name__)

FRAME_KEYS = ("num_frames", "fps", "window_s", "max_width", "max_height", "max_duration_s", "mode")
VIDEOMAE_KEYS = ("videomae_frames", "window_s", "max_width", "max_height", "max_duration_s", "mode")
AUDIO_KEYS = ("audio_window_s", "audio_rate", "max_duration_s")
SOURCE_COLUMNS = ("title", "caption_video", "caption_audio", "caption_omni")
"""Text columns of phase B rows, each with ``<column>_error``."""


@dataclass(frozen=True)
class TextPlan:
    """Phase B for one text encoder: its TextEmbed stage and the feature sets it writes."""

    embed: StageSpec
    sinks: tuple[Sink, ...]
    columns: tuple[tuple[str, ...], ...]
    """Per sink, the source columns its feature set reads (from ``SOURCE_COLUMNS``)."""
    encoder: str = ""
    """The encoder's short name (labels the phase in logs and results: ``text.<encoder>``)."""


@dataclass(frozen=True)
class PipelinePlan:
    """Both phases as data: ``captions`` (phase A) and one ``TextPlan`` per encoder (phase B)."""

    captions: Plan
    text: tuple[TextPlan, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    """Caption column -> the caption store (name) phase B reads it from."""

    def sinks(self) -> list[Sink]:
        return [*self.captions.sinks, *(s for t in self.text for s in t.sinks)]


def _models(*refs: str) -> list[dict[str, str]]:
    return [{"ref": r, "fingerprint": fingerprint(r) if parse_ref(r).scheme != "tiny" else r} for r in refs]


def _pick(model: Any, keys: Sequence[str]) -> dict[str, Any]:
    return {k: getattr(model, k) for k in keys}


def build_plan(cfg: FeaturizeConfig) -> PipelinePlan:
    """The plan the config asks for (stage classes are imported here; their models load in the actors)."""
    from featurize.asr import ASR
    from featurize.audio_lm import AudioLM, TranscriptEventsDescriber
    from featurize.baselines import CLAPEmbed, VideoMAEEmbed
    from featurize.captioners import VLMCaptioner, caption_store_name, stage_manifest
    from featurize.decode import Decode
    from featurize.dff import DFFEmbed, dff_identity, feature_set_name, text_dims
    from featurize.omni import OmniCaptioner, omni_manifest
    from featurize.prompts import load_prompt
    from featurize.sound_events import SoundEvents

    r = cfg.resources
    stages: list[StageSpec] = [r.decode.spec(Decode, config=cfg.decode)]
    sinks: list[Sink] = []
    video = audio = None
    frames, audio_sampling = _pick(cfg.decode, FRAME_KEYS), _pick(cfg.decode, AUDIO_KEYS)
    if cfg.vlm is not None:
        stages.append(r.vlm.spec(VLMCaptioner, config=cfg.vlm))
        man = stage_manifest(cfg.vlm, load_prompt("video", cfg.vlm.prompt_version))
        identity = {"stage": "vlm", **man, "models": _models(cfg.vlm.model), "frame_sampling": frames}
        video = caption_store_name(cfg.vlm, "video")
        sinks.append(
            Sink(
                "captions",
                video,
                "caption_video",
                ("decode_error", "vlm_error"),
                cfg.vlm.model,
                identity=identity,
            )
        )
    if cfg.asr is not None:
        stages.append(r.asr.spec(ASR, cfg=cfg.asr))
    if cfg.events is not None:
        stages.append(r.sound_events.spec(SoundEvents, cfg=cfg.events))
    if cfg.asr is not None:
        upstream = {
            "asr": cfg.asr.model_dump(exclude={"cpu_threads"}),
            "sound_events": cfg.events.model_dump() if cfg.events else None,
            "audio_sampling": audio_sampling,
        }
        refs = [cfg.asr.model, *([cfg.events.model] if cfg.events else [])]
        if cfg.audio_lm is not None:
            stages.append(r.audio_lm.spec(AudioLM, config=cfg.audio_lm))
            man = stage_manifest(cfg.audio_lm, load_prompt("audio", cfg.audio_lm.prompt_version))
            identity = {"stage": "audio_lm", **man, "models": _models(cfg.audio_lm.model, *refs), **upstream}
            audio, model = caption_store_name(cfg.audio_lm, "audio"), cfg.audio_lm.model
        else:
            stages.append(r.asr_events.spec(TranscriptEventsDescriber))
            identity = {
                "stage": "asr-events",
                **TranscriptEventsDescriber().manifest(),
                "models": _models(*refs),
                **upstream,
            }
            audio, model = "mllm-audio.asr-events", cfg.asr.model
        # events_error is listed here because the audio stages forward only the errors they know of.
        errors = ("decode_error", "asr_error", "events_error", "audio_lm_error")
        extra = (("transcript", "transcript"), ("language", "language"), ("events", "sound_events"))
        sinks.append(Sink("captions", audio, "caption_audio", errors, model, extra, identity))
    for name, base, sec, stage, sampling in (
        ("videomae", VideoMAEEmbed, cfg.videomae, r.videomae, _pick(cfg.decode, VIDEOMAE_KEYS)),
        ("clap", CLAPEmbed, cfg.clap, r.clap, audio_sampling),
    ):
        if sec is not None:
            stages.append(stage.spec(base, cfg=sec))
            identity = {
                "stage": name,
                "config": sec.model_dump(exclude={"device", "batch_size"}),
                "models": _models(sec.model),
                "sampling": sampling,
            }
            fs = f"{name}.{parse_ref(sec.model).short_name}"
            sinks.append(
                Sink("features", fs, f"vec_{name}", ("decode_error", f"{name}_error"), identity=identity)
            )
    omni = None
    if cfg.omni is not None:
        stages.append(r.omni.spec(OmniCaptioner, config=cfg.omni))
        identity = {"stage": "omni", **omni_manifest(cfg.omni), "models": _models(cfg.omni.model)}
        identity |= {"frame_sampling": frames, "audio_sampling": audio_sampling}
        omni = caption_store_name(cfg.omni, "omni")
        sinks.append(
            Sink(
                "captions",
                omni,
                "caption_omni",
                ("decode_error", "omni_error"),
                cfg.omni.model,
                identity=identity,
            )
        )
    if cfg.dff is not None:
        _, layer_dim = text_dims(cfg.dff)  # refuses layers the model does not have, before any work
        stages.append(r.dff.spec(DFFEmbed, config=cfg.dff))
        identity = dff_identity(cfg.dff, layer_dim, frames)
        sinks.append(
            Sink(
                "features",
                feature_set_name(cfg.dff),
                "vec_dff",
                ("decode_error", "dff_error"),
                identity=identity,
            )
        )
    return assemble(cfg, stages, sinks, video=video, audio=audio, omni=omni)


def assemble(
    cfg: FeaturizeConfig,
    stages: Sequence[StageSpec],
    sinks: Sequence[Sink],
    video: str | None = None,
    audio: str | None = None,
    omni: str | None = None,
) -> PipelinePlan:
    """A plan from phase A's stages and sinks; phase B follows from the encoders in ``cfg``.

    ``video``/``audio``/``omni`` name the caption stores (among ``sinks``) that hold ``caption_video``,
    ``caption_audio`` and ``caption_omni``. ``cfg.rename`` applies to caption stores first, so the feature sets derived
    from a renamed caption store carry its new name, then to feature sets; every key must be used.
    """
    from featurize.text_encoders import TextEmbed

    names = {s.name for s in sinks}
    for src in (video, audio, omni):
        if src is not None and src not in names:
            raise ValueError(f"caption store {src!r} is not among the plan's stores {sorted(names)}")
    used: set[str] = set()

    def rn(name: str) -> str:
        used.add(name)
        return cfg.rename.get(name, name)

    sinks = [replace(s, name=rn(s.name)) for s in sinks]
    video, audio, omni = (rn(n) if n else None for n in (video, audio, omni))
    by_name = {s.name: s for s in sinks}
    named = (("caption_video", video), ("caption_audio", audio), ("caption_omni", omni))
    sources = {c: n for c, n in named if n is not None}
    text: list[TextPlan] = []
    for enc in cfg.text_encoders:
        short = encoder_name(enc)
        sets: dict[str, tuple[str, ...]] = {}
        if cfg.title:
            sets[rn(f"title.{short}")] = ("title",)
        if video:
            sets[rn(f"{video}.{short}")] = ("caption_video",)
        if audio:
            sets[rn(f"{audio}.{short}")] = ("caption_audio",)
        if video and audio:
            v, a = video.removeprefix("mllm-video."), audio.removeprefix("mllm-audio.")
            sets[rn(f"mllm-av.{v}+{a}.{short}")] = ("caption_video", "caption_audio")
        if omni:
            sets[rn(f"{omni}.{short}")] = ("caption_omni",)
        if not sets:
            continue
        base = {"encoder": enc.model_dump(exclude={"batch_size", "device"}), "models": _models(enc.model)}
        text_sinks = []
        for name, cols in sets.items():
            src = {c: _source_identity(c, sources, by_name) for c in cols}
            identity = {"stage": "embed", **base, "sources": src}
            text_sinks.append(
                Sink("features", name, f"vec_{name}", ("embed_error",), identity=identity, error_key=name)
            )
        embed = cfg.resources.embed.spec(TextEmbed, encoder=enc, feature_sets=sets)
        text.append(TextPlan(embed, tuple(text_sinks), tuple(sets.values()), short))
    unknown = sorted(set(cfg.rename) - used)
    if unknown:
        raise ValueError(f"rename: no store named {unknown}; this run's stores are {sorted(used)}")
    writer = cfg.resources.write.spec(StoreWriter)
    return PipelinePlan(Plan(tuple(stages), tuple(sinks), writer, clips=cfg.clips), tuple(text), sources)


def _source_identity(col: str, sources: dict[str, str], by_name: dict[str, Sink]) -> Any:
    """What a feature set's identity records about one source column (a caption store and its hash)."""
    if col not in sources:
        return "catalog title"
    return {"store": sources[col], "config_hash": by_name[sources[col]].config_hash}


def text_rows(
    plan: TextPlan,
    sources: dict[str, str],
    catalog: pd.DataFrame,
    root: str,
    retry_errors: bool,
    staged: Collection[str] = (),
) -> pd.DataFrame:
    """Phase B input for one encoder: per item the source texts with their errors, and ``todo``.

    An item enters a feature set's todo only when every caption it needs has a row (ok or error) in
    its store; items still without captions wait for a later run instead of becoming error rows.
    Caption stores named in ``staged`` are read from their rebuild (an ``--overwrite`` run).
    """
    from featurize.stores import CaptionStore

    # Text columns stay object dtype: pandas' str dtype would turn None into NaN, which Ray then
    # cannot store as an Arrow string.
    ids = catalog["item_id"].to_numpy()
    titles = [t if isinstance(t, str) and t.strip() else None for t in catalog["title"].astype(object)]
    cols: dict[str, list] = {
        "title": titles,
        "title_error": ["" if t else "item has no title" for t in titles],
    }
    have: dict[str, set[int]] = {"title": set(ids.tolist())}
    for col in SOURCE_COLUMNS[1:]:
        cols[col], cols[f"{col}_error"] = [None] * len(ids), [""] * len(ids)
        if col not in sources:
            continue
        caps = CaptionStore(root, sources[col], sources[col] in staged).read().set_index("item_id")
        have[col] = set(caps.index.tolist())
        text = caps["text"].astype(object).reindex(ids)
        err = caps["error"].astype(object).reindex(ids)
        status = caps["status"].astype(object).reindex(ids)
        cols[col] = [t if s == "ok" else None for t, s in zip(text, status)]
        cols[f"{col}_error"] = [
            (f"{sources[col]}: {e}" if s == "error" else "") if isinstance(s, str) else "no caption row"
            for e, s in zip(err, status)
        ]
    rows = pd.DataFrame({"item_id": ids, **{k: pd.Series(v, dtype=object) for k, v in cols.items()}})
    eligible = {
        sink.key: set.intersection(*(have.get(c, set()) for c in need))
        for sink, need in zip(plan.sinks, plan.columns)
    }
    return todo_rows(Plan((plan.embed,), plan.sinks), rows, root, retry_errors, eligible)


@dataclass
class FeaturizeResult:
    """What a run did: rows written per store this run, totals in each store after it, and timings."""

    written: dict[str, dict[str, int]]
    totals: dict[str, dict[str, int]]
    errors: dict[str, list[tuple[str, int]]]
    """Per store, the most frequent error reasons written this run."""
    items: dict[str, int]
    """Items entering each phase (``captions``, and ``text.<encoder>``)."""
    phase_s: dict[str, float]
    wall_s: float
    stats: dict[str, str] = field(default_factory=dict, repr=False)
    """Ray Data's execution stats per phase (per-operator times)."""

    @property
    def processed(self) -> int:
        """Store rows written by this run (0 for a rerun with nothing left to do)."""
        return sum(sum(c.values()) for c in self.written.values())

    def table(self) -> str:
        """A plain-text summary table: per store, rows written now (ok/error) and totals."""
        head = f"{'store':<60} {'new ok':>7} {'new err':>7} {'ok':>7} {'error':>7}"
        lines = [head, "-" * len(head)]
        for key in sorted(self.totals):
            w, t = self.written.get(key, {}), self.totals[key]
            lines.append(f"{key:<60} {w.get('ok', 0):>7} {w.get('error', 0):>7} {t['ok']:>7} {t['error']:>7}")
        lines.append(
            f"wall time {self.wall_s:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.phase_s.items())
            + ")"
        )
        return "\n".join(lines)


def _staged(plan: PipelinePlan, names: Collection[str]) -> PipelinePlan:
    """``plan`` with the sinks of the stores in ``names`` writing into their staged rebuilds."""
    if not names:
        return plan

    def mark(sinks: tuple[Sink, ...]) -> tuple[Sink, ...]:
        return tuple(replace(s, staged=True) if s.name in names else s for s in sinks)

    text = tuple(replace(t, sinks=mark(t.sinks)) for t in plan.text)
    return replace(plan, captions=replace(plan.captions, sinks=mark(plan.captions.sinks)), text=text)


def _backfill_clips(plan: PipelinePlan, catalog: pd.DataFrame, root: str, check: bool) -> dict[str, PlanRun]:
    """Decode only the items that have no clip metadata yet (stores written before the clip store)."""
    from featurize.stores import ClipStore

    store = ClipStore(root)
    rows = catalog.loc[~catalog["item_id"].isin(list(store.done_ids())), ["item_id", "title", "video_path"]]
    runs = {}
    first = plan.captions.stages[0] if plan.captions.stages else None
    if not rows.empty and first is not None and getattr(first.fn, "name", "") == "decode":
        logger.info("featurize: %d items need clip metadata only (decode)", len(rows))
        decode = Plan((first,), (), plan.captions.writer, clips=True)
        todo = rows.assign(todo="[]").reset_index(drop=True)
        runs["clips"] = run_plan(
            decode, todo, root, "clips", check, guard=str(Path(root, WORK, "inflight", "clips"))
        )
    if store.parts():
        store.update_counts()
    return runs


def run_featurize(cfg: FeaturizeConfig, plan: PipelinePlan | None = None) -> FeaturizeResult:
    """Run both phases into ``cfg.store_root``; returns counts and timings (Ray must be initialised).

    Holds the write lock of every store it writes for the whole run: a second run on the same stores
    refuses (``StoreBusyError``) naming the holder's pid and start time.
    """

    from featurize.store_lock import StoreLock, locked
    from featurize.stores import ClipStore

    t0 = time.perf_counter()
    plan = plan or build_plan(cfg)
    root = cfg.store_root
    stores = [s.store(root) for s in plan.sinks()] + ([ClipStore(root)] if plan.captions.clips else [])
    with locked([StoreLock(s.lock_file, f"store {s.path}") for s in stores]):
        return _run_locked(cfg, plan, t0)


def _run_locked(cfg: FeaturizeConfig, plan: PipelinePlan, t0: float) -> FeaturizeResult:
    """``run_featurize`` once it holds the write lock of every store it writes."""
    from featurize.catalog import load_catalog

    root = cfg.store_root
    staged = set()
    for sink in plan.sinks():  # refuse a changed configuration before doing any work
        store = sink.store(root).open_for(sink.config_hash, sink.identity, overwrite=cfg.overwrite)
        store.update_counts()  # a resumed store's manifest counts what the killed run left
        if store.staged:  # --overwrite: the new store is built beside the old, swapped in at the end
            staged.add(sink.name)
    plan = _staged(plan, staged)
    inflight = Path(root, WORK, "inflight")
    if cfg.retry_errors:  # error rows are redone, poison pills included: their deaths count afresh
        shutil.rmtree(inflight, ignore_errors=True)

    def guards(label: str) -> str:
        return str(inflight / label)

    catalog = load_catalog(cfg.catalog)
    if cfg.limit is not None:
        catalog = catalog.head(cfg.limit)
    runs: dict[str, PlanRun] = {}
    check = not cfg.resources.autoscaling
    if plan.captions.sinks:
        rows = todo_rows(plan.captions, catalog[["item_id", "title", "video_path"]], root, cfg.retry_errors)
        logger.info("featurize: %d of %d items need captions or direct features", len(rows), len(catalog))
        runs["captions"] = run_plan(plan.captions, rows, root, "captions", check, guard=guards("captions"))
    if plan.captions.clips:
        runs |= _backfill_clips(plan, catalog, root, check)
    for tp in plan.text:
        rows = text_rows(tp, plan.sources, catalog, root, cfg.retry_errors, staged)
        label = f"text.{tp.encoder}"
        logger.info("featurize: %d items need %s features", len(rows), label)
        text_plan = Plan((tp.embed,), tp.sinks, plan.captions.writer)
        runs[label] = run_plan(text_plan, rows, root, label, check, guard=guards(label))
    # Every phase is complete: its error rows are in the stores, and its in-flight records are done with.
    shutil.rmtree(inflight, ignore_errors=True)
    totals = {s.key: s.store(root).update_counts() for s in plan.sinks()}
    for sink in plan.sinks():  # every phase is complete: the rebuilt stores replace the old ones
        sink.store(root).publish()
    written: dict[str, Counter] = {}
    errors: dict[str, Counter] = {}
    for run in runs.values():
        for k, c in run.written.items():
            written.setdefault(k, Counter()).update(c)
        for k, c in run.errors.items():
            errors.setdefault(k, Counter()).update(c)
    result = FeaturizeResult(
        written={k: dict(v) for k, v in written.items()},
        totals=totals,
        errors={k: v.most_common(5) for k, v in errors.items()},
        items={k: r.items for k, r in runs.items()},
        phase_s={k: r.wall_s for k, r in runs.items()},
        wall_s=time.perf_counter() - t0,
        stats={k: r.stats for k, r in runs.items()},
    )
    logger.info("featurize summary\n%s", result.table())
    return result
