"""The run/tune half of `seewhy plan`: trainings, Ray Train workers and an upper bound on time.

`seewhy run` trains every (model, representation) pair in turn, each as one Ray Train run over all
folds; `seewhy tune` runs (model, representation, seed) trials side by side. Each fold fits up to
``epochs_max`` epochs (early stopping usually ends sooner) and refits for the chosen count, so
2 x epochs_max epochs per fold is the bound used here, at the measured CPU seconds per epoch.
"""

from __future__ import annotations

import math
from typing import Any

from ray_jobs.config import RunConfig
from ray_jobs.estimate.core import EPOCH_S, Cluster, Estimate, fmt_time
from train.representation import Representation


def estimate_run(cfg: RunConfig, source: str, cluster: Cluster | None) -> Estimate:
    """Resolve a run (or tune) config into its trainings, their resources and a time bound."""
    sweep = getattr(cfg, "sweep", None)
    seeds = (sweep.seeds or [cfg.train.seed]) if sweep is not None else [cfg.train.seed]
    folds = _folds(cfg, sweep)
    t = cfg.train
    plan = Estimate(f"seewhy {'tune' if sweep is not None else 'run'} --config {source}")
    rows, bounds = [], []
    for model in cfg.experiment.models:
        epoch = EPOCH_S.get(model)
        for rep in cfg.experiment.representations:
            one = epoch.per_s * 2 * t.epochs_max * folds if epoch else None  # one seed
            bounds += [one] * len(seeds)
            bound = one * len(seeds) if one is not None else None
            rows.append(
                {
                    "model": model,
                    "representation": rep,
                    "feature set": _feature_set(rep, cfg),
                    "folds": folds,
                    "seeds": len(seeds),
                    "workers x (CPU, GPU)": f"{t.num_workers} x ({t.cpus_per_worker:g}, {int(t.use_gpu)})",
                    "time bound (CPU)": fmt_time(bound),
                }
            )
    plan.tables.append(("Trainings", rows))
    per_cpu = t.num_workers * t.cpus_per_worker + (sweep.trial_cpus if sweep is not None else 0)
    per_gpu = t.num_workers if t.use_gpu else 0
    n_runs = len(rows) * len(seeds)
    parallel = 1
    if sweep is not None and cluster is not None:
        parallel = _concurrency(sweep.max_concurrent_trials, n_runs, per_cpu, per_gpu, cluster)
    totals = [
        {
            "what": "trainings",
            "value": f"{n_runs} ({len(rows)} model x representation, {len(seeds)} seed(s))",
        },
        {"what": "per training", "value": f"{per_cpu:g} CPUs, {per_gpu} GPUs"},
        {
            "what": "in parallel",
            "value": parallel if sweep is not None else "1 (seewhy run trains one at a time)",
        },
        {
            "what": "cluster",
            "value": cluster.describe() if cluster else "not described (--cluster or --gpus)",
        },
        {"what": "time bound", "value": fmt_time(_bound(bounds, parallel))},
    ]
    plan.tables.append(("Totals", totals))
    for model in cfg.experiment.models:
        e = EPOCH_S.get(model)
        plan.notes.append(
            f"{model}: {e.per_s:g} s per epoch ({e.source})" if e else f"{model}: seconds per epoch unknown"
        )
    plan.notes.append(
        f"bound = 2 x epochs_max ({t.epochs_max}) epochs x folds x seeds at the CPU figures; early stopping "
        f"(patience {t.patience}) usually stops sooner, and GPUs are faster (not measured here)"
    )
    if cluster is not None:
        plan.warnings += _fit_checks(t, per_cpu, per_gpu, cluster)
    return plan


def _bound(bounds: list[float | None], parallel: int) -> float | None:
    """Sequential: the sum; ``parallel`` at once: waves of the longest training."""
    if not bounds or any(b is None for b in bounds):
        return None
    return sum(bounds) if parallel == 1 else math.ceil(len(bounds) / parallel) * max(bounds)


def _folds(cfg: RunConfig, sweep: Any) -> int:
    if cfg.protocol.split == "leave-one-out":
        return 1
    if sweep is not None and sweep.days:
        return len(sweep.days)
    return cfg.protocol.n_days


def _feature_set(rep: str, cfg: RunConfig) -> str:
    fs = Representation.parse(rep).feature_set
    if fs is None:
        return "- (learned ID embedding)"
    root = cfg.data.features_root
    return f"{root}/features/{fs}" if root else f"{fs} (data.features_root is not set)"


def _concurrency(configured: int | None, n: int, cpus: float, gpus: int, cluster: Cluster) -> int:
    fits = math.floor(cluster.total("cpus") / cpus) if cpus else n
    if gpus:
        fits = min(fits, math.floor(cluster.total("gpus") / gpus))
    return max(1, min(n, configured or fits, fits))


def _fit_checks(t: Any, per_cpu: float, per_gpu: int, cluster: Cluster) -> list[str]:
    out = []
    if t.cpus_per_worker > cluster.largest("cpus"):
        out.append(
            f"train.cpus_per_worker {t.cpus_per_worker:g} exceeds the largest node's {cluster.largest('cpus'):g} CPUs"
        )
    if per_cpu > cluster.total("cpus"):
        out.append(f"one training needs {per_cpu:g} CPUs; the cluster has {cluster.total('cpus'):g}")
    if per_gpu and cluster.total("gpus") < per_gpu:
        out.append(
            f"train.use_gpu: one training needs {per_gpu} GPUs; the cluster has {cluster.total('gpus'):g}"
        )
    return out
