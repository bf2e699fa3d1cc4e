"""The protocol runner behind `seewhy run`: data -> splits -> (model x representation) on Ray Train -> report.

Reads the log (and catalogue), builds the rolling daily folds (or leave-one-out), trains every
model on every representation in one TorchTrainer (all arms and folds inside), adds the
most-popular baseline, and writes the run folder:

    manifest.json               config, package versions, input file hashes, resolved feature sets
    results/cases.parquet       model, feature_set, day, user_id, item_id, rank, cold_start, stand_in
                                (+ duration_s when the feature stores hold clip metadata)
    results/summary.csv         model, feature_set, day ('all' for the whole), k, hr, ndcg, n_cases
    report.md, plots/*.png      Table 1 with paired tests, per-day plots

Finished (model, representation) pairs are kept under results/ranks/ and skipped on a rerun;
an interrupted trainer resumes from its last epoch checkpoint under ray_train/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate import splits as S
from evaluate.metrics import rank_targets
from ray_jobs.config import RunConfig
from ray_jobs.manifest import write_manifest
from train.sequences import left_pad, sequence_windows
from train.trainer import Arm, Fold, fit_and_rank_arms

MOST_POPULAR = "most-popular"


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


def log(msg: str) -> None:
    print(f"[seewhy] {msg}", flush=True)


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
    from train.synth import generate_log, write_microlens

    out = cfg.run_dir / "data"
    pairs = out / "MicroLens-100k_pairs.csv"
    if not pairs.exists():
        interactions, items = generate_log(synth_config(**cfg.data.synthetic.model_dump()))
        write_microlens(interactions, items, out)
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


def representation(rep: str) -> tuple[str, str | None]:
    """'id'; 'x' -> ('feature', x); 'id+x' -> ('fusion', x); 'dff.*' -> 'dff'; 'id+dff.*' -> 'dff-fusion'."""
    if rep == "id":
        return "id", None
    fused = rep.startswith("id+")
    fs = rep[3:] if fused else rep
    if fs.startswith("dff."):
        return ("dff-fusion" if fused else "dff"), fs
    return ("fusion" if fused else "feature"), fs


def load_features(cfg: RunConfig, feature_set: str, item_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """Feature matrix [n_items + 1, d] (row 0 = padding, zeros where an item has no ok vector)."""
    from featurize.refs import parse_ref
    from featurize.stores import CaptionStore, FeatureStore

    if not cfg.data.features_root:
        raise ValueError(f"representation {feature_set!r} needs data.features_root (a featurize store root)")
    store = FeatureStore(cfg.data.features_root, feature_set)
    if not store.parts():
        raise ValueError(
            f"feature set {feature_set!r}: no parts under {store.path}; run `seewhy featurize` first"
        )
    matrix, ok = store.read_matrix(item_ids)
    manifest = store.manifest() or {}
    n_layers = len(manifest.get("layers") or [None])
    layer_dim = manifest.get("layer_dim")
    if feature_set.startswith("dff.") and layer_dim and layer_dim * n_layers != matrix.shape[1]:
        raise ValueError(
            f"feature set {feature_set!r}: {n_layers} layers x layer_dim {layer_dim} != width {matrix.shape[1]}"
        )
    models = manifest.get("models", [])
    refs = _model_refs(models)
    # A text feature set inherits the models of the caption stores its text came from (its manifest's
    # "sources"): MiniLM over captions of a tiny: VLM is a stand-in row too.
    for src in (manifest.get("sources") or {}).values():
        if isinstance(src, dict) and src.get("store"):
            caption = CaptionStore(cfg.data.features_root, src["store"]).manifest()
            if caption is None:
                raise ValueError(
                    f"feature set {feature_set!r} was made from caption store {src['store']!r}, "
                    f"which has no manifest under {cfg.data.features_root}"
                )
            refs += _model_refs(caption.get("models", []))
    for r in refs:
        parse_ref(r)  # a store whose manifest names no valid model reference is not trusted silently
    stand_in = any(parse_ref(r).is_stand_in for r in refs)
    info = {
        "path": str(store.path),
        "dim": int(matrix.shape[1]),
        "n_ok": int(ok.sum()),
        "n_missing": int((~ok).sum()),
        "n_layers": n_layers,
        "stand_in": stand_in,
        "models": sorted(set(refs)),
    }
    if (~ok).any():
        log(f"{feature_set}: {int((~ok).sum())} of {len(ok)} items have no vector; they get zeros")
    padded = np.zeros((len(item_ids) + 1, matrix.shape[1]), dtype=np.float32)
    padded[1:][ok] = matrix[ok]
    return padded, info


def run(cfg: RunConfig) -> Path:
    """Run the whole protocol; returns the run folder. Ray must already be initialised."""
    from evaluate.report import write_report

    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    (run_dir / "results" / "ranks").mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg)
    n_cases = sum(len(c) for c in prep.cases)
    log(f"{prep.load_summary}")
    log(
        f"{len(prep.interactions):,} interactions, {len(prep.item_ids):,} items, {len(prep.folds)} fold(s), "
        f"{n_cases:,} test cases"
    )
    features_info: dict[str, dict] = {}
    write_manifest(cfg, run_dir, prep.inputs, features_info, status="running")

    frames: list[pd.DataFrame] = []
    if cfg.experiment.most_popular:
        ranks = most_popular_ranks(prep, cfg.protocol.popularity_window_days)
        frames.append(
            _case_rows(prep, MOST_POPULAR, f"last {cfg.protocol.popularity_window_days}d", ranks, False)
        )
    pending: list[Arm] = []
    stand_ins: dict[str, bool] = {}
    feature_mats: dict[str, np.ndarray] = {}
    for rep in cfg.experiment.representations:
        kind, fs = representation(rep)
        if fs is not None and fs not in features_info:
            feature_mats[fs], features_info[fs] = load_features(cfg, fs, prep.item_ids)
        stand_ins[rep] = bool(fs and features_info[fs]["stand_in"])
        for model in cfg.experiment.models:
            done = _ranks_path(run_dir, model, rep)
            if done.exists():
                log(f"{model} / {rep}: already finished, reusing {done.name}")
                # The stand-in flag follows the stores as they are now, not as they were when trained.
                frames.append(pd.read_parquet(done).assign(stand_in=stand_ins[rep]))
            else:
                kw = {"n_layers": features_info[fs]["n_layers"]} if kind.startswith("dff") else None
                pending.append(Arm(f"{model}__{rep}", model, kind, fs, kw))
    if pending:
        frames += _train_arms(cfg, prep, pending, feature_mats, stand_ins)
    cases = attach_durations(cfg, pd.concat(frames, ignore_index=True))
    cases.to_parquet(run_dir / "results" / "cases.parquet", index=False)
    baselines = {m: cfg.experiment.baselines.get(m, "id") for m in cfg.experiment.models}
    baselines = {m: b for m, b in baselines.items() if b in cfg.experiment.representations}
    write_report(cases, run_dir, title=f"seewhy run: {cfg.name}", baselines=baselines or None)
    write_manifest(
        cfg, run_dir, prep.inputs, features_info, status="finished", wall_s=time.perf_counter() - t0
    )
    log(f"finished in {time.perf_counter() - t0:.0f}s; report: {run_dir / 'report.md'}")
    return run_dir


def _model_refs(models) -> list[str]:
    """Model references of a store manifest's ``models`` (a list or a dict of entries)."""
    entries = list(models.values()) if isinstance(models, dict) else list(models)
    return [str(m.get("ref") or m.get("reference") or "") if isinstance(m, dict) else str(m) for m in entries]


def attach_durations(cfg: RunConfig, cases: pd.DataFrame) -> pd.DataFrame:
    """Add duration_s (seconds of the target clip, NaN unknown) when the features root has clip metadata."""
    from featurize.stores import ClipStore, read_clip_durations

    root = cfg.data.features_root
    if not root or not ClipStore(root).parts():
        return cases
    return cases.assign(duration_s=read_clip_durations(root, cases["item_id"].to_numpy()).to_numpy())


def _ranks_path(run_dir: Path, model: str, rep: str) -> Path:
    return run_dir / "results" / "ranks" / f"{model}__{rep}.parquet"


def _train_arms(
    cfg: RunConfig,
    prep: Prepared,
    arms: list[Arm],
    features: dict[str, np.ndarray],
    stand_ins: dict[str, bool],
) -> list[pd.DataFrame]:
    """Train the pending arms in ``train.parallel_runs`` TorchTrainers at once; write and return their cases."""
    from concurrent.futures import ThreadPoolExecutor

    groups = split_arms(arms, cfg.train.parallel_runs)
    log(
        f"training {len(arms)} arm(s) x {len(prep.folds)} fold(s) in {len(groups)} Ray Train run(s) at once "
        f"({cfg.train.num_workers} worker(s) each): " + ", ".join(a.name for a in arms)
    )
    t1 = time.perf_counter()

    def train(group: list[Arm]) -> dict[str, dict[str, np.ndarray]]:
        # The run name depends on the arms, so a rerun of the same pending set resumes its checkpoint.
        digest = hashlib.sha256("\n".join(a.name for a in group).encode()).hexdigest()[:10]
        return fit_and_rank_arms(
            arms=group,
            n_items=len(prep.item_ids),
            history_len=cfg.protocol.history_len,
            folds=prep.folds,
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            storage_path=str(cfg.run_dir / "ray_train"),
            run_name=f"arms-{digest}",
            features={a.feature_set: features[a.feature_set] for a in group if a.feature_set},
        )

    by_arm: dict[str, dict[str, np.ndarray]] = {}
    with ThreadPoolExecutor(len(groups)) as pool:  # Ray Train runs fit() from threads (as Tune does)
        for part in pool.map(train, groups):
            by_arm.update(part)
    frames = []
    for a in arms:
        rep = a.name.split("__", 1)[1]
        ranks = [by_arm[a.name][f.label] for f in prep.folds]
        frame = _case_rows(prep, a.model, rep, ranks, stand_ins[rep])
        frame.to_parquet(_ranks_path(cfg.run_dir, a.model, rep), index=False)
        frames.append(frame)
    log(f"trained {len(arms)} arm(s) in {time.perf_counter() - t1:.0f}s")
    return frames


# Relative cost of an epoch per model (measured on the demo world: two-tower ~0.04 s, SASRec ~0.25 s),
# used only to balance arms across parallel runs.
ARM_COST = {"two-tower": 1.0}


def split_arms(arms: list[Arm], n: int) -> list[list[Arm]]:
    """At most ``n`` non-empty groups of arms with about equal cost (longest first, to the lightest group)."""
    groups: list[list[Arm]] = [[] for _ in range(min(n, len(arms)))]
    load = [0.0] * len(groups)
    for a in sorted(arms, key=lambda a: -ARM_COST.get(a.model, 6.0)):
        i = load.index(min(load))
        groups[i].append(a)
        load[i] += ARM_COST.get(a.model, 6.0)
    order = {a.name: k for k, a in enumerate(arms)}
    return [sorted(g, key=lambda a: order[a.name]) for g in groups]


def _case_rows(prep: Prepared, model: str, rep: str, ranks: list[np.ndarray], stand_in: bool) -> pd.DataFrame:
    parts = []
    for cases, r in zip(prep.cases, ranks):
        if len(cases) != len(r):
            raise RuntimeError(f"{model}/{rep}: {len(r)} ranks for {len(cases)} cases")
        parts.append(cases.assign(model=model, feature_set=rep, rank=r.astype(np.int64), stand_in=stand_in))
    out = pd.concat(parts, ignore_index=True)
    return out[["model", "feature_set", "day", "user_id", "item_id", "rank", "cold_start", "stand_in"]]
