"""Typed configuration of models and training: the single source of defaults, CLI help and YAML keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """Shape of the recommender: one set of values shared by every model of a run."""

    dim: int = Field(64, gt=0, description="Width of item and user embeddings.")
    n_layers: int = Field(2, ge=1, description="Transformer / sequence-encoder layers (SASRec and friends).")
    n_heads: int = Field(2, ge=1, description="Attention heads (SASRec); dim must be divisible by it.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout inside the user encoder.")
    feature_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on frozen content features.")

    @field_validator("n_heads")
    @classmethod
    def _heads_divide_dim(cls, v: int, info) -> int:
        dim = info.data.get("dim", 64)
        if dim % v:
            raise ValueError(f"n_heads={v} must divide dim={dim}")
        return v


class TrainConfig(_Frozen):
    """How a model is fitted: optimiser, loss, early stopping and Ray Train scaling."""

    epochs_max: int = Field(30, ge=1, description="Upper bound on epochs in the fit phase (early stopping).")
    patience: int = Field(
        5, ge=1, description="Epochs without validation improvement before stopping (paper: 5)."
    )
    min_epochs: int = Field(
        0,
        ge=0,
        description="No early stop before this many epochs: a plateau at the start is not convergence.",
    )
    valid_metric: str = Field("ndcg@10", description="Validation metric for early stopping: hr@K or ndcg@K.")
    batch_size: int = Field(256, ge=1, description="Training sequences per step, per worker.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    loss: Literal["ce", "gbce", "inbatch+sampled", "sampled"] = Field(
        "inbatch+sampled",
        description="ce: softmax over the whole catalogue; gbce: gSASRec's calibrated BCE over sampled "
        "negatives; inbatch+sampled: softmax over the batch's targets plus sampled negatives; sampled: "
        "softmax over sampled negatives only (train/loss.py).",
    )
    n_negatives: int = Field(
        256, ge=0, description="Uniformly sampled negative items per batch (gbce, inbatch+sampled, sampled)."
    )
    ce_chunk: int = Field(
        8192,
        ge=1,
        description="Items scored at once by the ce loss: its largest temporary is [targets in a batch, "
        "ce_chunk] floats, whatever the catalogue size.",
    )
    gbce_t: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="gbce calibration t (gSASRec): 0 is plain BCE, 1 fully corrects the sampling's overconfidence.",
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature on dot-product logits.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (gloo on CPU, NCCL on GPUs).")
    use_gpu: bool = Field(False, description="One GPU per worker when true.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved by each training worker.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per worker (default: CPUs)."
    )
    eval_batch_size: int = Field(1024, ge=1, description="Users scored at once under full ranking.")
    seed: int = Field(0, description="Seed for initialisation, sampling and shuffling.")
    parallel_runs: int = Field(
        1,
        ge=1,
        description="TorchTrainers run at once by `seewhy run`, each on its share of the (model, representation) "
        "arms; each needs num_workers x cpus_per_worker CPUs (2 runs of 1 worker beat 1 run of 2 on 2 cores).",
    )
    cache_data: bool = Field(
        True,
        description="Read each fold's training windows from Ray Data once per worker and keep them in memory, "
        "shuffled in full every epoch (every arm reuses them); false streams them from Ray Data every epoch "
        "with a local shuffle buffer (logs larger than a worker's memory).",
    )
    checkpoint_every: Literal["epoch", "fold"] = Field(
        "epoch",
        description="Checkpoint after every epoch, or only after each fold's test (cheaper on many small arms; "
        "a resumed run restarts the fold it stopped in).",
    )
    progress: Literal["epoch", "fold"] = Field(
        "epoch", description="Print a line per epoch, or only one per fold test (many arms, many folds)."
    )

    @field_validator("valid_metric")
    @classmethod
    def _metric_known(cls, v: str) -> str:
        name, _, k = v.partition("@")
        if name not in ("hr", "ndcg") or not k.isdigit():
            raise ValueError(f"valid_metric {v!r}: expected 'hr@K' or 'ndcg@K', e.g. 'ndcg@10'")
        return v
