"""Driver side of training: builds the Ray Datasets and one TorchTrainer for a list of arms.

An arm is one (model, item representation) pair. Every arm of a run shares the same fold datasets,
so one trainer (one Ray Train start-up, one set of Ray Data split coordinators) serves them all.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.config import ModelConfig, TrainConfig
from train.loop import STATE_FILE, result_key, train_loop_per_worker


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


@dataclass(frozen=True)
class Arm:
    """One (model, representation) to train and rank on every fold.

    ``item_encoder`` is a ``train.encoders.build_item_encoder`` kind; ``feature_set`` names the
    matrix in the ``features`` mapping given to ``fit_and_rank_arms`` (None for ID-only encoders);
    ``encoder_kwargs`` are passed on to the encoder builder.
    """

    name: str
    model: str
    item_encoder: str = "id"
    feature_set: str | None = None
    encoder_kwargs: dict | None = None


def fit_and_rank_arms(
    *,
    arms: list[Arm],
    n_items: int,
    history_len: int,
    folds: list[Fold],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    storage_path: str,
    run_name: str,
    features: dict[str, np.ndarray] | None = None,
    max_failures: int = 1,
    fingerprint: str = "",
    on_report: Callable[[dict], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Run the protocol for every arm in one TorchTrainer; returns test ranks per arm, per fold label.

    Rerunning with the same ``storage_path``, ``run_name`` and arms resumes from the latest
    checkpoint (Ray Train restores it into the new run); a finished run is read back without
    training. Every checkpoint carries ``fingerprint`` (the caller's hash of what shapes the run): a
    checkpoint with another one is refused, never resumed. A worker that dies is restarted up to
    ``max_failures`` times and continues from the latest checkpoint. ``on_report(metrics)`` is called
    on the first worker after every reported epoch and test (metrics carry arm, fold, phase, epoch),
    inside the worker process: the place for per-epoch hooks (tracking, fault injection in tests).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not Path(storage_path).is_absolute():
        raise ValueError(f"storage_path must be absolute, got {storage_path!r}")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    features = features or {}
    for a in arms:
        if a.feature_set is not None and a.feature_set not in features:
            raise ValueError(f"arm {a.name!r} needs feature set {a.feature_set!r}, which was not given")
    # Datasets made inside: their split coordinators take the quiet settings with them.
    with _quiet_ray_data():
        # from_numpy's column is "data"; renaming would add a task-based operator that cannot be
        # scheduled while the training workers hold every CPU of a small cluster.
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
        used = {a.feature_set for a in arms if a.feature_set is not None}
        config = {
            "arms": [
                {
                    "name": a.name,
                    "model": a.model,
                    "item_encoder": a.item_encoder,
                    "feature_set": a.feature_set,
                    "encoder_kwargs": a.encoder_kwargs or {},
                }
                for a in arms
            ],
            "model_cfg": model_cfg.model_dump(),
            "train_cfg": train_cfg.model_dump(),
            "n_items": n_items,
            "history_len": history_len,
            "folds": fold_cfg,
            "features": {
                k: ray.put(np.ascontiguousarray(features[k], dtype=np.float32)) for k in sorted(used)
            },
            "tag": run_name,
            "fingerprint": fingerprint,
            "on_report": on_report,
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
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} ended without a checkpoint: {result.error}")
    return read_results(result.checkpoint, names, [f.label for f in folds], run_name)


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[bool, bool] = (True, True)


@contextlib.contextmanager
def _quiet_ray_data():
    """No Ray Data progress bars or plan printouts while trainers run (several may run in threads).

    Each epoch re-reads small in-memory datasets: their progress bars are noise next to the loop's own
    lines. The driver's settings come back when the last trainer finishes.
    """
    import ray

    global _quiet_depth, _quiet_saved
    ctx = ray.data.DataContext.get_current()
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
            ctx.enable_progress_bars = ctx.print_on_execution_start = False
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                ctx.enable_progress_bars, ctx.print_on_execution_start = _quiet_saved


def read_results(
    checkpoint, arms: list[str], labels: list[str], run_name: str
) -> dict[str, dict[str, np.ndarray]]:
    """Test ranks per arm and fold from a finished run's last checkpoint; every one must be present."""
    import torch

    with checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / STATE_FILE, weights_only=True)
    results = {k: v.numpy() for k, v in saved["results"].items()}
    missing = [result_key(a, lb) for a in arms for lb in labels if result_key(a, lb) not in results]
    if missing:
        raise RuntimeError(f"training run {run_name!r} finished without test ranks for {missing}")
    return {a: {lb: results[result_key(a, lb)] for lb in labels} for a in arms}
