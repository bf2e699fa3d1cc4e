"""The log in evaluation form, shared by `seewhy run` and `seewhy tune`: interactions -> folds -> cases.

``prepare`` reads the interaction log (or generates a synthetic one into the run folder), the
catalogue, applies the protocol's preprocessing and builds the rolling daily folds (or the
leave-one-out split) in item-index space, with their test cases in id space. Also here: the
most-popular baseline's ranks (it needs the raw log, not a trained model), clip durations for the
per-duration table, and the fold selection of a sweep (``sweep.days``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate import splits as S
from evaluate.metrics import rank_targets
from ray_jobs.config import RunConfig
from ray_jobs.console import log
from train.sequences import left_pad, sequence_windows
from train.trainer import Fold


@dataclass(frozen=True)
class Prepared:
    """The log in canonical form, the item universe, and the evaluation folds in both id spaces."""

    interactions: pd.DataFrame
    item_ids: np.ndarray  # index i (1..n) <-> item_ids[i - 1]
    folds: list[Fold]
    cases: list[pd.DataFrame]  # per fold: day, user_id, item_id, cold_start
    refit_frames: list[pd.DataFrame]
    test_days: list[int | None]
    inputs: dict[str, str]  # input file -> sha256
    load_summary: str


def load_data(cfg: RunConfig) -> tuple[pd.DataFrame, np.ndarray | None, dict[str, str], str]:
    """Interactions (canonical), catalogue item ids (or None), input hashes, a load summary."""
    from train.interactions import InteractionsConfig, file_sha256, load_interactions

    icfg = cfg.data.interactions
    inputs: dict[str, str] = {}
    if cfg.data.synthetic is not None:
        icfg = InteractionsConfig(path=str(_write_synthetic(cfg)))
    catalog_ids = None
    if cfg.data.catalog is not None:
        from featurize.catalog import load_catalog

        catalog = load_catalog(cfg.data.catalog)
        catalog_ids = catalog["item_id"].to_numpy(np.int64)
        for p in (cfg.data.catalog.titles,):
            if p:
                inputs[str(Path(p).resolve())] = file_sha256(p)
    df, report = load_interactions(icfg, catalog_items=catalog_ids)
    inputs[str(Path(icfg.path).resolve())] = report.sha256
    if not report.has_time and cfg.protocol.split == "rolling":
        raise ValueError(
            f"{icfg.path}: this log has no timestamps (per-user sequence form), so the rolling daily "
            "protocol cannot run; set protocol.split: leave-one-out"
        )
    return df, catalog_ids, inputs, report.summary()


def synth_config(preset: str, seed: int, params: dict | None = None):
    """The named synthetic-log preset (small: tests; medium: 1k users, 60 days; microlens_100k), changed."""
    from train.synth import SynthConfig

    presets = {
        "small": SynthConfig.small,
        "medium": SynthConfig,
        "microlens_100k": SynthConfig.microlens_100k,
    }
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise ValueError(
            f"data.synthetic.params: unknown SynthConfig field(s) {unknown}; valid: {sorted(known)}"
        )
    return dataclasses.replace(presets[preset](), seed=seed, **(params or {}))


def _write_synthetic(cfg: RunConfig) -> Path:
    """The generated log of ``data.synthetic``; regenerated when the folder holds another config's log."""
    from featurize.durable import write_text_atomic
    from train.synth import generate_log, write_microlens

    out = cfg.run_dir / "data"
    pairs = out / "MicroLens-100k_pairs.csv"
    made_by = out / "synthetic.json"
    wanted = json.dumps(cfg.data.synthetic.model_dump(mode="json"), sort_keys=True)
    if not pairs.exists() or not made_by.exists() or made_by.read_text() != wanted:
        interactions, items = generate_log(synth_config(**cfg.data.synthetic.model_dump()))
        write_microlens(interactions, items, out)
        write_text_atomic(made_by, wanted)
        log(f"generated a synthetic MicroLens-format log in {out} ({len(interactions):,} interactions)")
    return pairs


def prepare(cfg: RunConfig) -> Prepared:
    df, catalog_ids, inputs, summary = load_data(cfg)
    df = S.preprocess(df, cfg.protocol.min_interactions)
    item_ids = np.unique(
        np.concatenate(
            [
                df["item_id"].to_numpy(np.int64),
                catalog_ids if catalog_ids is not None else np.zeros(0, np.int64),
            ]
        )
    )
    L = cfg.protocol.history_len

    def to_idx(ids: np.ndarray) -> np.ndarray:
        out = np.zeros(ids.shape, dtype=np.int64)
        real = ids >= 0
        out[real] = np.searchsorted(item_ids, ids[real]) + 1
        return out

    def windows(frame: pd.DataFrame) -> np.ndarray:
        return sequence_windows(frame["user_id"].to_numpy(), to_idx(frame["item_id"].to_numpy()), L)

    def case_frame(c: S.Cases, train_df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "day": [S.day_label(d) for d in c.day] if len(c) else pd.Series([], dtype=str),
                "user_id": c.user_id,
                "item_id": c.item_id,
                "cold_start": S.cold_start_mask(c, train_df),
            }
        )

    folds, cases, refits, days = [], [], [], []
    if cfg.protocol.split == "rolling":
        for sp in S.rolling_daily_splits(df, cfg.protocol.n_days, L):
            folds.append(_fold(sp.label, windows(sp.fit), windows(sp.refit), sp.valid, sp.test, to_idx))
            cases.append(case_frame(sp.test, sp.refit))
            refits.append(sp.refit)
            days.append(sp.day)
    else:
        train_df, valid, test = S.leave_one_out(df, L)
        refit_df = pd.concat([train_df, pd.DataFrame({"user_id": valid.user_id, "item_id": valid.item_id})])
        folds.append(_fold("loo", windows(train_df), windows(refit_df), valid, test, to_idx))
        cases.append(case_frame(test, refit_df).assign(day="loo"))
        refits.append(refit_df)
        days.append(None)
    return Prepared(df, item_ids, folds, cases, refits, days, inputs, summary)


def _fold(label: str, fit: np.ndarray, refit: np.ndarray, valid: S.Cases, test: S.Cases, to_idx) -> Fold:
    return Fold(
        label=label,
        fit=fit,
        refit=refit,
        valid_hist=left_pad(to_idx(valid.history), 0),
        valid_target=to_idx(valid.item_id),
        test_hist=left_pad(to_idx(test.history), 0),
        test_target=to_idx(test.item_id),
    )


def most_popular_ranks(prep: Prepared, window_days: int) -> list[np.ndarray]:
    """Rank test targets by interaction counts over the ``window_days`` days before each test day."""
    import torch

    out = []
    for fold, refit, day in zip(prep.folds, prep.refit_frames, prep.test_days):
        recent = refit
        if day is not None:
            lo = (day - window_days) * S.MS_PER_DAY
            recent = refit[refit["timestamp"] >= lo]
        idx = np.searchsorted(prep.item_ids, recent["item_id"].to_numpy()) + 1
        counts = np.bincount(idx, minlength=len(prep.item_ids) + 1)[1:].astype(np.float32)
        scores = torch.from_numpy(np.broadcast_to(counts, (1, len(counts))).copy())
        ranks = np.empty(len(fold.test_target), dtype=np.int64)
        for lo_i in range(0, len(ranks), 4096):
            t = torch.from_numpy(fold.test_target[lo_i : lo_i + 4096] - 1)
            h = torch.from_numpy(fold.test_hist[lo_i : lo_i + 4096] - 1)
            ranks[lo_i : lo_i + len(t)] = rank_targets(scores.expand(len(t), -1), t, h).numpy()
        out.append(ranks)
    return out


def attach_durations(cfg: RunConfig, cases: pd.DataFrame) -> pd.DataFrame:
    """Add duration_s (seconds of the target clip, NaN unknown) when the features root has clip metadata."""
    from featurize.stores import ClipStore, read_clip_durations

    root = cfg.data.features_root
    if not root or not ClipStore(root).parts():
        return cases
    return cases.assign(duration_s=read_clip_durations(root, cases["item_id"].to_numpy()).to_numpy())


def select_days(prep: Prepared, days: list[int | str] | None) -> Prepared:
    """The folds named by ``days`` (labels or indices), in protocol order; all when None."""
    if days is None:
        return prep
    labels = [f.label for f in prep.folds]
    keep = set()
    for d in days:
        if isinstance(d, int):
            if not -len(labels) <= d < len(labels):
                raise ValueError(f"sweep.days: index {d} is out of range; the folds are {labels}")
            keep.add(d % len(labels))
        elif d in labels:
            keep.add(labels.index(d))
        else:
            raise ValueError(f"sweep.days: no fold {d!r}; the folds are {labels}")

    def pick(xs: list) -> list:
        return [xs[i] for i in sorted(keep)]

    return dataclasses.replace(
        prep,
        folds=pick(prep.folds),
        cases=pick(prep.cases),
        refit_frames=pick(prep.refit_frames),
        test_days=pick(prep.test_days),
    )
