"""The featurize half of `seewhy plan`: stages, pools, GPU memory, visual tokens and time of a featurize config.

Reads ``featurize.pipeline.build_plan`` (plain data: stage classes, constructor configs, resources) and
never instantiates a stage, so no model is loaded and no heavy library imported. Numbers and their
sources live in ``ray_jobs/estimate/core.py``.
"""

from __future__ import annotations

import math
from typing import Any

from featurize.config import FeaturizeConfig
from featurize.stage import StageSpec
from ray_jobs.estimate.core import (
    DTYPE_BYTES,
    GIB,
    MICROLENS_ITEMS,
    MODEL_SIZES,
    RATES,
    Cluster,
    Estimate,
    Rate,
    fmt_time,
)

CHARS_PER_TOKEN = 4
"""English text in Qwen's BPE: ~4 characters per token (prompt size estimate only)."""
AUDIO_TOKENS_PER_S = 25
"""Qwen2-Audio: 100 mel frames/s, stride-2 encoder, then 2x pooling -> 25 tokens per second of audio."""
TRANSCRIPT_TOKENS = 300
"""Budget for transcript + sound events in the audio prompt (30 s of speech is ~75 words)."""
SOURCES = {  # source aspect ratios shown for the visual-token count (width, height)
    "426x224 box": (426, 224),
    "16:9 landscape": (1920, 1080),
    "9:16 portrait": (1080, 1920),
}


def fitted(width: int, height: int, max_w: int, max_h: int) -> tuple[int, int]:
    """The decode stage's output size: shrunk to fit max_w x max_h, aspect kept, even sides."""
    scale = min(1.0, max_w / width, max_h / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def visual_tokens(cfg: FeaturizeConfig) -> dict[str, tuple[int, int, int]]:
    """Qwen-VL tokens per clip for each source shape: ``{label: (tokens, resized_w, resized_h)}``.

    Frames are resized to multiples of 28 (14-px patches, 2x2 merge) within the video processor's
    pixel bounds (``smart_resize``); every 2 frames form one temporal patch, so
    tokens = ceil(frames / 2) x (H / 28) x (W / 28).
    """
    from featurize.captioners import VisionGrid, smart_resize

    grid = VisionGrid()
    d = cfg.decode
    frames = d.num_frames if d.num_frames is not None else max(1, round(d.fps * d.window_s))
    factor = grid.patch_size * grid.merge_size
    out = {}
    for label, (w, h) in SOURCES.items():
        fw, fh = fitted(w, h, d.max_width, d.max_height)
        rh, rw = smart_resize(fh, fw, factor, grid.min_pixels, grid.max_pixels)
        out[label] = (math.ceil(frames / grid.temporal_patch_size) * (rh // factor) * (rw // factor), rw, rh)
    return out


def _stage_config(spec: StageSpec) -> Any:
    kw = spec.fn_constructor_kwargs
    return kw.get("config") or kw.get("cfg") or kw.get("encoder")


def _memory(
    stage: str, sc: Any, spec: StageSpec, cluster: Cluster | None, tokens: int | None
) -> tuple[str, list[str]]:
    """GPU memory of one replica as text, and warnings when it cannot fit its share of a GPU."""
    model = getattr(sc, "model", None)
    if spec.num_gpus == 0 or model is None:
        return "-", []
    size = MODEL_SIZES.get(model)
    if size is None:
        return f"unknown ({model} is not in plan.MODEL_SIZES)", []
    if stage == "asr":
        dtype = sc.compute_type or "float16"
    else:
        dtype = getattr(sc, "dtype", "float32")
    weights = size.params_b * 1e9 * DTYPE_BYTES.get(dtype, 4)
    mem_gb = cluster.gpu_mem_gb() if cluster else None
    warnings: list[str] = []
    if getattr(sc, "backend", None) == "vllm":
        tp = sc.tensor_parallel_size
        if tp > spec.num_gpus:
            warnings.append(
                f"{stage}: tensor_parallel_size {tp} but the actor reserves {spec.num_gpus:g} GPU(s)"
            )
        if sc.max_model_len is None:
            return f"{weights / GIB:.1f} GiB weights + KV (set max_model_len to size it)", warnings
        kv = size.kv_bytes_per_token() * sc.max_model_len
        text = (
            f"{weights / GIB:.1f} GiB weights + {kv / GIB:.2f} GiB KV per {sc.max_model_len}-token sequence"
        )
        if tokens and tokens > sc.max_model_len:
            warnings.append(f"{stage}: ~{tokens} tokens per request exceed max_model_len {sc.max_model_len}")
        if mem_gb:
            budget = sc.gpu_memory_utilization * mem_gb * GIB * tp
            if weights + kv > budget:
                warnings.append(
                    f"{stage}: {model} needs {(weights + kv) / GIB:.1f} GiB (weights + one sequence) but vLLM may use "
                    f"{budget / GIB:.1f} GiB ({sc.gpu_memory_utilization:g} x {mem_gb:g} GiB x {tp})"
                )
            elif tokens:
                room = int((budget - weights) // (size.kv_bytes_per_token() * tokens))
                text += f"; KV room for <= {room} clips at once"
        return text, warnings
    share = spec.num_gpus * mem_gb if mem_gb else None
    if share and weights > share * GIB:
        warnings.append(
            f"{stage}: {model} weights alone are {weights / GIB:.1f} GiB, more than its {spec.num_gpus:g} GPU "
            f"share ({share:.1f} GiB); raise num_gpus"
        )
    return f"{weights / GIB:.1f} GiB weights ({dtype}) + activations", warnings


def _rate(stage: str, model: str | None, given: dict[str, float]) -> Rate | None:
    if stage in given:
        return Rate(given[stage], "--rate")
    return RATES.get(f"{stage}:{model}") or (RATES.get(stage) if stage not in ("vlm", "audio_lm") else None)


def _actors(specs: list[tuple[str, StageSpec]], cluster: Cluster | None) -> dict[str, int]:
    """Actors each pool reaches: its maximum, scaled down when the pools together exceed the cluster."""
    used = {name: s.max_actors for name, s in specs}
    if cluster is None:
        return used
    for res, total in (("num_gpus", cluster.total("gpus")), ("num_cpus", cluster.total("cpus"))):
        demand = sum(getattr(s, res) * used[n] for n, s in specs)
        if demand > total > 0:
            for n, s in specs:
                if getattr(s, res):
                    used[n] = max(s.min_actors, math.floor(used[n] * total / demand))
    return used


def _fit_checks(
    specs: list[tuple[str, StageSpec]], cluster: Cluster, autoscaling: bool, phase: str
) -> list[str]:
    out = []
    for name, s in specs:
        if s.num_gpus > cluster.largest("gpus"):
            out.append(
                f"{name}: an actor needs {s.num_gpus:g} GPU(s); the largest node has {cluster.largest('gpus'):g}"
            )
        if s.num_cpus > cluster.largest("cpus"):
            out.append(
                f"{name}: an actor needs {s.num_cpus:g} CPUs; the largest node has {cluster.largest('cpus'):g}"
            )
    for res, key in (("num_gpus", "gpus"), ("num_cpus", "cpus")):
        need = sum(getattr(s, res) * s.min_actors for _, s in specs)
        have = cluster.total(key)
        if need > have:
            what = "the cluster at its largest" if autoscaling else "the cluster"
            out.append(
                f"phase {phase}: the pools' minimum actors need {need:g} {key[:3].upper()}s together; {what} has {have:g}"
            )
    return out


def estimate_featurize(
    cfg: FeaturizeConfig, source: str, cluster: Cluster | None, n_items: int | None, rates: dict[str, float]
) -> Estimate:
    """Resolve a featurize config into its stages, resources, memory, tokens and time."""
    from featurize.pipeline import build_plan

    pp = build_plan(cfg)
    n, n_note = _catalog_size(cfg, n_items)
    plan = Estimate(f"seewhy featurize --config {source}")
    vt = visual_tokens(cfg) if cfg.vlm is not None else {}
    vlm_tokens = audio_tokens = None
    if cfg.vlm is not None:
        vlm_tokens = (
            max(t for t, _, _ in vt.values()) + _prompt_tokens("video", cfg.vlm) + cfg.vlm.max_new_tokens
        )
    if cfg.audio_lm is not None:
        audio_tokens = (
            round(cfg.decode.audio_window_s * AUDIO_TOKENS_PER_S)
            + _prompt_tokens("audio", cfg.audio_lm)
            + TRANSCRIPT_TOKENS
            + cfg.audio_lm.max_new_tokens
        )
    phases = [("A", [(s.fn.name, s) for s in pp.captions.stages])]
    phases += [(f"B: {t.encoder}", [(f"embed:{t.encoder}", t.embed)]) for t in pp.text]
    rows, total_s = [], 0.0
    for phase, specs in phases:
        used = _actors(specs, cluster)
        if cluster is not None:
            plan.warnings += _fit_checks(specs, cluster, cfg.resources.autoscaling, phase)
        phase_s: float | None = 0.0
        for name, spec in specs:
            stage = name.split(":")[0]
            sc = _stage_config(spec)
            model = getattr(sc, "model", None)
            tokens = {"vlm": vlm_tokens, "audio_lm": audio_tokens}.get(stage)
            mem, warns = _memory(stage, sc, spec, cluster, tokens)
            plan.warnings += warns
            if getattr(sc, "device", None) == "cuda" and spec.num_gpus == 0:
                plan.warnings.append(f"{name}: device cuda but num_gpus 0 (Ray gives the actor no GPU)")
            rate = _rate(stage, model, rates)
            stage_s = n / (rate.per_s * used[name]) if rate else None
            phase_s = max(phase_s, stage_s) if phase_s is not None and stage_s is not None else None
            rows.append(
                {
                    "phase": phase,
                    "stage": name,
                    "model": model or "-",
                    "actors min-max (planned)": f"{spec.min_actors}-{spec.max_actors} ({used[name]})",
                    "CPU/actor": f"{spec.num_cpus:g}",
                    "GPU/actor": f"{spec.num_gpus:g}",
                    "batch": spec.batch_size,
                    "GPU memory / replica": mem,
                    "tokens / request": tokens or "-",
                    "items/s/actor": f"{rate.per_s:g}" if rate else "unknown",
                    "stage time": fmt_time(stage_s),
                }
            )
            if rate:
                plan.notes.append(f"rate of {name}: {rate.per_s:g}/s per actor ({rate.source})")
            elif stage not in ("write",):
                plan.notes.append(f"rate of {name}: unknown for {model}; give --rate {stage}=ITEMS_PER_S")
        total_s = total_s + phase_s if phase_s is not None and total_s is not None else None
    plan.tables.append(("Stages (phase A streams all stages at once; phase B runs per text encoder)", rows))
    plan.tables.append(("Totals", _totals(phases, n, n_note, total_s, cluster)))
    if vt:
        shapes = ", ".join(f"{k}: {t} tokens at {w}x{h}" for k, (t, w, h) in vt.items())
        frames = cfg.decode.num_frames or f"{cfg.decode.fps:g} fps x {cfg.decode.window_s:g} s"
        plan.notes.insert(
            0,
            f"visual tokens per clip ({frames} frames over the first {cfg.decode.window_s:g} s, fitted in "
            f"{cfg.decode.max_width}x{cfg.decode.max_height}, resized to multiples of 28 within the Qwen2-VL "
            f"video processor's default pixel bounds; tokens = frames/2 x H/28 x W/28): {shapes}",
        )
    plan.notes.append(
        "stage time = items / (rate x planned actors); a streaming phase takes as long as its slowest stage, "
        "plus model loading (minutes per replica), not included"
    )
    return plan


def _prompt_tokens(kind: str, sc: Any) -> int:
    from featurize.prompts import load_prompt

    return len(load_prompt(kind, sc.prompt_version).text) // CHARS_PER_TOKEN + 30  # + chat template


def _catalog_size(cfg: FeaturizeConfig, n_items: int | None) -> tuple[int, str]:
    if n_items is not None:
        n, note = n_items, "given (--n-items)"
    else:
        try:
            from featurize.catalog import load_catalog

            n, note = len(load_catalog(cfg.catalog)), "counted in the catalogue"
        except (OSError, ValueError):
            n, note = MICROLENS_ITEMS, "MicroLens-100K (paper 5.1.1); the catalogue is not readable here"
    if cfg.limit is not None and cfg.limit < n:
        n, note = cfg.limit, f"limit: {cfg.limit}"
    return n, note


def _totals(phases: list, n: int, n_note: str, total_s: float | None, cluster: Cluster | None) -> list[dict]:
    rows = [{"what": "items", "value": f"{n:,} ({n_note})"}]
    for phase, specs in phases:
        for res in ("num_gpus", "num_cpus"):
            lo = sum(getattr(s, res) * s.min_actors for _, s in specs)
            hi = sum(getattr(s, res) * s.max_actors for _, s in specs)
            label = "GPUs" if res == "num_gpus" else "CPUs"
            rows.append({"what": f"phase {phase}: {label} (min-max pools)", "value": f"{lo:g}-{hi:g}"})
    rows.append(
        {"what": "cluster", "value": cluster.describe() if cluster else "not described (--cluster or --gpus)"}
    )
    rows.append({"what": "estimated wall time", "value": fmt_time(total_s)})
    return rows
