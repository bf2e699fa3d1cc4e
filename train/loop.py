"""The Ray Train loop: the whole rolling protocol for one (model, representation) in one trainer.

One ``TorchTrainer.fit()`` runs every fold (evaluation day) in turn, so Ray Train's start-up is paid
once per model and representation, not once per day. For each fold: fit on ``fit_<i>`` with early
stopping on the fold's validation cases (patience from config) to choose the epoch count E; refit
from a fresh initialisation on ``refit_<i>`` for E epochs; rank the fold's test cases under full
ranking. A checkpoint is reported after every epoch and after every test, holding the model, the
optimiser, the protocol position and the ranks of finished folds, so rerunning the trainer with the
same run name resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluate.metrics import metrics_from_ranks
from train.config import ModelConfig, TrainConfig
from train.encoders import build_item_encoder
from train.models import build_model
from train.steps import rank_cases, train_epoch

STATE_FILE = "state.pt"


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _allgather_ranks(local: np.ndarray, n: int, rank: int, world: int) -> np.ndarray:
    """Reassemble ranks computed on the strided slices ``rank::world`` into case order."""
    if world == 1:
        return local
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, local)
    out = np.empty(n, dtype=np.int64)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def _ranks(model, hist: np.ndarray, tgt: np.ndarray, batch: int) -> np.ndarray:
    rank, world = _dist()
    local = rank_cases(model, hist[rank::world], tgt[rank::world], batch)
    return _allgather_ranks(local, len(tgt), rank, world)


class _Fold:
    """Protocol position and early-stopping state; plain types so it checkpoints with weights_only."""

    def __init__(self, d: dict | None = None) -> None:
        d = d or {}
        self.fold: int = d.get("fold", 0)
        self.phase: str = d.get("phase", "fit")
        self.epoch: int = d.get("epoch", 0)  # epochs completed in this phase
        self.best: float = d.get("best", -1.0)
        self.best_epoch: int = d.get("best_epoch", 0)
        self.bad: int = d.get("bad", 0)
        self.chosen: list[int] = d.get("chosen", [])
        self.resumes: int = d.get("resumes", 0)  # restarts from a checkpoint so far

    def as_dict(self) -> dict:
        return dict(vars(self))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` is built by ``train.trainer.fit_and_rank``."""
    import ray.train
    import ray.train.torch

    # Ray Train logs every report at INFO; the loop's own per-epoch lines are the progress display.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("ray.train")] + ["ray.train"]:
        logging.getLogger(name).setLevel(logging.WARNING)
    mcfg = ModelConfig(**config["model_cfg"])
    tcfg = TrainConfig(**config["train_cfg"])
    torch.set_num_threads(tcfg.torch_threads or max(1, int(tcfg.cpus_per_worker)))
    rank, _ = _dist()
    n_items: int = config["n_items"]
    folds: list[dict] = config["folds"]
    feats = config.get("features")
    if feats is not None and not isinstance(feats, np.ndarray):
        import ray

        feats = ray.get(feats)
    features = torch.from_numpy(feats) if feats is not None else None
    valid_key = tcfg.valid_metric
    tag = config.get("tag", "")

    def fresh():
        torch.manual_seed(tcfg.seed)
        enc = build_item_encoder(config["item_encoder"], n_items, mcfg.dim, features, mcfg.feature_dropout)
        model = ray.train.torch.prepare_model(build_model(config["model"], enc, mcfg, config["history_len"]))
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        return model, opt

    model, opt = fresh()
    st = _Fold()
    results: dict[str, torch.Tensor] = {}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, weights_only=True)
        st = _Fold(saved["progress"])
        st.resumes += 1
        results = saved["results"]
        getattr(model, "module", model).load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        if rank == 0:
            print(f"[{tag}] resumed at fold {st.fold} {st.phase} epoch {st.epoch}", flush=True)

    gen = torch.Generator().manual_seed(tcfg.seed * 1000 + rank)

    def report(metrics: dict) -> None:
        metrics = {"fold": folds[min(st.fold, len(folds) - 1)]["label"], **metrics}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = {
                    "progress": st.as_dict(),
                    "results": results,
                    "model": getattr(model, "module", model).state_dict(),
                    "optim": opt.state_dict(),
                }
                torch.save(state, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        marker = config.get("fail_once_marker")  # fault injection for the resume test
        if marker and rank == 0 and metrics.get("phase") == "test" and not os.path.exists(marker):
            Path(marker).touch()
            print(f"[{tag}] injected failure after {metrics['fold']}", flush=True)
            os._exit(1)

    def epoch_on(name: str, epoch: int) -> tuple[float, int, float]:
        shard = ray.train.get_dataset_shard(name)
        t0 = time.perf_counter()
        batches = (
            b["data"]
            for b in shard.iter_torch_batches(
                batch_size=tcfg.batch_size,
                dtypes=torch.long,
                device=ray.train.torch.get_device(),
                local_shuffle_buffer_size=4 * tcfg.batch_size,
                local_shuffle_seed=tcfg.seed + epoch,
            )
        )
        loss, n = train_epoch(model, batches, opt, tcfg, n_items, gen)
        return loss, n, time.perf_counter() - t0

    while st.fold < len(folds):
        f = folds[st.fold]
        label = f["label"]
        if st.phase == "fit":
            has_valid = len(f["valid_target"]) > 0
            while st.epoch < tcfg.epochs_max and (st.bad < tcfg.patience or st.epoch < tcfg.min_epochs):
                loss, n, secs = epoch_on(f"fit_{st.fold}", st.epoch)
                st.epoch += 1
                metric = -1.0
                if has_valid:
                    r = _ranks(model, f["valid_hist"], f["valid_target"], tcfg.eval_batch_size)
                    metric = metrics_from_ranks(r)[valid_key]
                    if metric > st.best:
                        st.best, st.best_epoch, st.bad = metric, st.epoch, 0
                    else:
                        st.bad += 1
                else:
                    st.best_epoch = st.epoch
                if rank == 0:
                    print(
                        f"[{tag}] {label} fit epoch {st.epoch}: loss {loss:.4f} ({n / secs:,.0f} targets/s) "
                        f"valid {valid_key} {metric:.4f} (best {st.best:.4f} @ {st.best_epoch})",
                        flush=True,
                    )
                report({"phase": "fit", "epoch": st.epoch, "loss": loss, f"valid_{valid_key}": metric})
            if not has_valid and st.chosen:
                st.best_epoch = st.chosen[-1]  # no validation day: reuse the previous fold's choice
            st.chosen.append(max(st.best_epoch, 1))
            st.phase, st.epoch = "refit", 0
            model, opt = fresh()
        if st.phase == "refit":
            target_epochs = st.chosen[-1]
            while st.epoch < target_epochs:
                loss, n, secs = epoch_on(f"refit_{st.fold}", st.epoch)
                st.epoch += 1
                if rank == 0:
                    print(
                        f"[{tag}] {label} refit epoch {st.epoch}/{target_epochs}: loss {loss:.4f}", flush=True
                    )
                if st.epoch < target_epochs:
                    report({"phase": "refit", "epoch": st.epoch, "loss": loss})
            ranks = _ranks(model, f["test_hist"], f["test_target"], tcfg.eval_batch_size)
            results[label] = torch.from_numpy(ranks)
            m = metrics_from_ranks(ranks) if len(ranks) else {}
            if rank == 0:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k.endswith(("@10", "@30")))
                print(f"[{tag}] {label} test ({len(ranks)} cases, E={target_epochs}): {shown}", flush=True)
            st.fold, st.phase, st.epoch = st.fold + 1, "fit", 0
            st.best, st.best_epoch, st.bad = -1.0, 0, 0
            model, opt = fresh()
            report(
                {
                    "fold": label,
                    "phase": "test",
                    "epoch": target_epochs,
                    **{f"test_{k}": v for k, v in m.items()},
                }
            )
