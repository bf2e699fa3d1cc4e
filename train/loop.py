"""The Ray Train loop: the whole rolling protocol for a list of arms in one trainer.

An arm is one (model, item representation) pair. One ``TorchTrainer.fit()`` runs every arm and,
inside each, every fold (evaluation day) in turn, so Ray Train's start-up is paid once per run, not
once per model, representation or day. For each fold: fit on ``fit_<i>`` with early stopping on the
fold's validation cases (patience from config) to choose the epoch count E; refit from a fresh
initialisation on ``refit_<i>`` for E epochs; rank the fold's test cases under full ranking. A
checkpoint is reported after every epoch and after every test (only after every test with
``checkpoint_every: fold``), holding the model, the optimiser, the protocol position (arm, fold,
phase, epoch) and the ranks of finished folds, so rerunning the trainer with the same run name
resumes where it stopped.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluate.metrics import metrics_from_ranks
from train.config import ModelConfig, TrainConfig
from train.registry import build_item_encoder, build_model
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
        self.arm: int = d.get("arm", 0)
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

    def next_fold(self) -> None:
        self.fold, self.phase, self.epoch = self.fold + 1, "fit", 0
        self.best, self.best_epoch, self.bad = -1.0, 0, 0

    def next_arm(self) -> None:
        self.arm, self.fold, self.chosen = self.arm + 1, 0, []


def result_key(arm: str, label: str) -> str:
    """Key of one arm's test ranks on one fold in the checkpointed results."""
    return f"{arm}/{label}"


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` is built by ``train.trainer.fit_and_rank_arms``."""
    import ray
    import ray.train
    import ray.train.torch

    # Ray Train logs every report at INFO; the loop's own per-epoch lines are the progress display.
    # Some of Ray Train V2's modules name their logger by file path (getLogger(__file__)).
    names = [n for n in logging.root.manager.loggerDict if n.startswith("ray.train") or "/ray/train/" in n]
    for name in [*names, "ray.train"]:
        logging.getLogger(name).setLevel(logging.WARNING)
    mcfg = ModelConfig(**config["model_cfg"])
    tcfg = TrainConfig(**config["train_cfg"])
    torch.set_num_threads(tcfg.torch_threads or max(1, int(tcfg.cpus_per_worker)))
    rank, _ = _dist()
    n_items: int = config["n_items"]
    folds: list[dict] = config["folds"]
    arms: list[dict] = config["arms"]
    valid_key = tcfg.valid_metric
    tag = config.get("tag", "")
    features: dict[str, torch.Tensor] = {}  # feature set -> matrix, fetched once per worker
    on_report = config.get("on_report")  # per-epoch hook (fit_and_rank_arms's on_report)

    def arm_features(arm: dict) -> torch.Tensor | None:
        name = arm.get("feature_set")
        if name is None:
            return None
        if name not in features:
            ref = config["features"][name]
            features[name] = torch.from_numpy(ref if isinstance(ref, np.ndarray) else ray.get(ref))
        return features[name]

    def fresh(arm: dict):
        torch.manual_seed(tcfg.seed)
        enc = build_item_encoder(
            arm["item_encoder"],
            n_items,
            mcfg.dim,
            arm_features(arm),
            mcfg.feature_dropout,
            **arm.get("encoder_kwargs", {}),
        )
        model = ray.train.torch.prepare_model(build_model(arm["model"], enc, mcfg, config["history_len"]))
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        return model, opt

    st = _Fold()
    results: dict[str, torch.Tensor] = {}
    saved = None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, weights_only=True)
        if saved.get("arms") != [a["name"] for a in arms]:
            raise RuntimeError(
                f"[{tag}] the checkpoint was written for arms {saved.get('arms')}, "
                f"not {[a['name'] for a in arms]}: use a new run name"
            )
        if saved.get("fingerprint", "") != config.get("fingerprint", ""):
            raise RuntimeError(
                f"[{tag}] the checkpoint was written under fingerprint {saved.get('fingerprint')!r}, "
                f"not {config.get('fingerprint')!r} (another configuration): use a new run name"
            )
        st = _Fold(saved["progress"])
        st.resumes += 1
        results = saved["results"]
    if st.arm >= len(arms):
        return  # a finished run read back
    model, opt = fresh(arms[st.arm])
    if saved is not None:
        getattr(model, "module", model).load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        if rank == 0:
            print(
                f"[{tag}] resumed at {arms[st.arm]['name']} fold {st.fold} {st.phase} epoch {st.epoch}",
                flush=True,
            )

    gen = torch.Generator().manual_seed(tcfg.seed * 1000 + rank)

    def report(metrics: dict) -> None:
        if tcfg.checkpoint_every == "fold" and metrics.get("phase") != "test":
            return
        arm = arms[min(st.arm, len(arms) - 1)]["name"]
        metrics = {"arm": arm, "fold": folds[min(st.fold, len(folds) - 1)]["label"], **metrics}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = {
                    "arms": [a["name"] for a in arms],
                    "fingerprint": config.get("fingerprint", ""),
                    "progress": st.as_dict(),
                    "results": results,
                    "model": getattr(model, "module", model).state_dict(),
                    "optim": opt.state_dict(),
                }
                torch.save(state, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if on_report is not None and rank == 0:
            on_report(metrics)

    cache: dict[str, torch.Tensor] = {}  # dataset name -> this worker's windows (train.cache_data)
    device = ray.train.torch.get_device()

    def cached(name: str) -> torch.Tensor:
        if name not in cache:
            shard = ray.train.get_dataset_shard(name)
            parts = [b["data"] for b in shard.iter_torch_batches(batch_size=65536, dtypes=torch.long)]
            width = config["history_len"] + 1
            cache[name] = torch.cat(parts) if parts else torch.empty((0, width), dtype=torch.long)
        return cache[name]

    def epoch_on(name: str, epoch: int) -> tuple[float, int, float]:
        t0 = time.perf_counter()
        if tcfg.cache_data:
            data = cached(name)
            order = torch.randperm(
                len(data), generator=torch.Generator().manual_seed(tcfg.seed * 7919 + epoch)
            )
            bs = tcfg.batch_size
            batches = (data[order[i : i + bs]].to(device) for i in range(0, len(data), bs))
        else:
            batches = (
                b["data"]
                for b in ray.train.get_dataset_shard(name).iter_torch_batches(
                    batch_size=tcfg.batch_size,
                    dtypes=torch.long,
                    device=device,
                    local_shuffle_buffer_size=4 * tcfg.batch_size,
                    local_shuffle_seed=tcfg.seed + epoch,
                )
            )
        loss, n = train_epoch(model, batches, opt, tcfg, n_items, gen)
        return loss, n, time.perf_counter() - t0

    while st.arm < len(arms):
        arm = arms[st.arm]
        name = arm["name"]
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
                if rank == 0 and tcfg.progress == "epoch":
                    print(
                        f"[{tag}] {name} {label} fit epoch {st.epoch}: loss {loss:.4f} "
                        f"({n / secs:,.0f} targets/s) valid {valid_key} {metric:.4f} "
                        f"(best {st.best:.4f} @ {st.best_epoch})",
                        flush=True,
                    )
                report({"phase": "fit", "epoch": st.epoch, "loss": loss, f"valid_{valid_key}": metric})
            if not has_valid and st.chosen:
                st.best_epoch = st.chosen[-1]  # no validation day: reuse the previous fold's choice
            st.chosen.append(max(st.best_epoch, 1))
            st.phase, st.epoch = "refit", 0
            model, opt = fresh(arm)
        if st.phase == "refit":
            target_epochs = st.chosen[-1]
            while st.epoch < target_epochs:
                loss, n, secs = epoch_on(f"refit_{st.fold}", st.epoch)
                st.epoch += 1
                if rank == 0 and tcfg.progress == "epoch":
                    print(
                        f"[{tag}] {name} {label} refit epoch {st.epoch}/{target_epochs}: loss {loss:.4f}",
                        flush=True,
                    )
                if st.epoch < target_epochs:
                    report({"phase": "refit", "epoch": st.epoch, "loss": loss})
            ranks = _ranks(model, f["test_hist"], f["test_target"], tcfg.eval_batch_size)
            results[result_key(name, label)] = torch.from_numpy(ranks)
            m = metrics_from_ranks(ranks) if len(ranks) else {}
            if rank == 0:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k.endswith(("@10", "@30")))
                print(
                    f"[{tag}] {name} {label} test ({len(ranks)} cases, E={target_epochs}): {shown}",
                    flush=True,
                )
            st.next_fold()
            if st.fold == len(folds):
                st.next_arm()
            if st.arm < len(arms):
                model, opt = fresh(arms[st.arm])
            report(
                {
                    "arm": name,
                    "fold": label,
                    "phase": "test",
                    "epoch": target_epochs,
                    **{f"test_{k}": v for k, v in m.items()},
                }
            )
