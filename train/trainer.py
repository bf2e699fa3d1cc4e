"""Driver side of training: builds the Ray Datasets and the TorchTrainer for one model and representation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.config import ModelConfig, TrainConfig
from train.loop import STATE_FILE, train_loop_per_worker


@dataclass(frozen=True)
class Fold:
    """One evaluation unit (a day of the rolling protocol, or the leave-one-out split), in index space.

    ``fit`` / ``refit`` are training windows (see ``train.sequences``); histories are 0-padded item
    indices [n, L], targets item indices 1..n_items.
    """

    label: str
    fit: np.ndarray
    refit: np.ndarray
    valid_hist: np.ndarray
    valid_target: np.ndarray
    test_hist: np.ndarray
    test_target: np.ndarray


def fit_and_rank(
    *,
    model: str,
    item_encoder: str,
    n_items: int,
    history_len: int,
    folds: list[Fold],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    storage_path: str,
    run_name: str,
    features: np.ndarray | None = None,
    max_failures: int = 1,
    fail_once_marker: str | None = None,
) -> dict[str, np.ndarray]:
    """Run the protocol for one model on Ray Train; returns test ranks per fold label.

    Rerunning with the same ``storage_path`` and ``run_name`` resumes from the latest checkpoint
    (Ray Train restores it into the new run); a finished run is read back without training. A worker
    that dies is restarted up to ``max_failures`` times and continues from the latest checkpoint
    (``fail_once_marker``: a path; the first worker to finish a fold's test exits once, for tests).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not Path(storage_path).is_absolute():
        raise ValueError(f"storage_path must be absolute, got {storage_path!r}")
    # from_numpy's column is "data"; renaming would add a task-based operator that cannot be
    # scheduled while the training workers hold every CPU of a small cluster.
    # Each epoch re-reads a small in-memory dataset: progress bars and plan printouts per epoch are noise
    # next to the loop's own per-epoch line.
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    datasets = {}
    for i, f in enumerate(folds):
        datasets[f"fit_{i}"] = ray.data.from_numpy(f.fit)
        datasets[f"refit_{i}"] = ray.data.from_numpy(f.refit)
    fold_cfg = [
        {
            "label": f.label,
            "valid_hist": f.valid_hist,
            "valid_target": f.valid_target,
            "test_hist": f.test_hist,
            "test_target": f.test_target,
        }
        for f in folds
    ]
    config = {
        "model": model,
        "item_encoder": item_encoder,
        "model_cfg": model_cfg.model_dump(),
        "train_cfg": train_cfg.model_dump(),
        "n_items": n_items,
        "history_len": history_len,
        "folds": fold_cfg,
        "features": ray.put(features.astype(np.float32)) if features is not None else None,
        "tag": run_name,
        "fail_once_marker": fail_once_marker,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=train_cfg.num_workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker={"CPU": train_cfg.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # Per-epoch progress comes from the loop's own lines; Ray Train's INFO lines drown them.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )
    try:
        result = trainer.fit()
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} ended without a checkpoint: {result.error}")
    return read_results(result.checkpoint, [f.label for f in folds], run_name)


def read_results(checkpoint, labels: list[str], run_name: str) -> dict[str, np.ndarray]:
    """Test ranks per fold from a finished run's last checkpoint; every fold must be present."""
    import torch

    with checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / STATE_FILE, weights_only=True)
    results = {k: v.numpy() for k, v in saved["results"].items()}
    missing = [label for label in labels if label not in results]
    if missing:
        raise RuntimeError(f"training run {run_name!r} finished without test ranks for {missing}")
    return results
