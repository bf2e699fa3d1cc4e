"""The experiment core of `seewhy run` and `seewhy tune`: features -> arms -> fingerprints -> train -> results.

Both recipes call these steps in the same order (``ray_jobs/protocol.py``, ``ray_jobs/tune.py``):

1. ``open_run_dir``: the run folder (``--fresh`` clears what a rerun would reuse);
2. ``load_feature_sets``: each feature set's matrix and what made it (stand-in models, layers);
3. ``make_arm`` and ``fingerprint``: one (model, representation[, seed]) and everything that shapes
   its ranks (model and train config, protocol, input sha256s, the folds, feature-set config hashes
   and contents, the seed, the seewhy version);
4. ``read_ranks``: a finished arm's rank file, reused only when its fingerprint is this run's
   (a mismatch refuses, naming the keys that differ; an unreadable file is quarantined and redone);
5. ``train_arms``: the pending arms on Ray Train, under run names derived from their fingerprints
   (so a changed config never resumes another config's checkpoint); ``finish_arm`` writes each
   arm's rank file, the one place where a finished arm is recorded;
6. ``write_results``: cases.parquet, summary.csv, report.md and plots, crash-safe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featurize import durable
from ray_jobs.config import RunConfig
from ray_jobs.console import log
from ray_jobs.estimate.core import EPOCH_S
from ray_jobs.prepare import Prepared, most_popular_ranks
from train.representation import Representation
from train.trainer import Arm, fit_and_rank_arms

MOST_POPULAR = "most-popular"
FINGERPRINT_KEY = b"seewhy.fingerprint"
"""Parquet schema metadata key of a rank file's fingerprint (JSON of ``fingerprint``)."""
NOT_SHAPING = frozenset(
    {"progress", "parallel_runs", "torch_threads", "checkpoint_every", "eval_batch_size", "cpus_per_worker"}
)
"""train.* keys that change how a run goes, not its ranks: a rerun may change them and still reuse."""
REUSABLE = ("results/ranks", "ray_train", "ray_tune")
"""What ``--fresh`` removes from a run folder (everything a rerun would otherwise reuse)."""


class FingerprintMismatch(ValueError):
    """A reusable artefact was made under another configuration; the message names the keys."""


def open_run_dir(cfg: RunConfig, fresh: bool = False) -> Path:
    """The run folder, created; with ``fresh`` the finished ranks and checkpoints of an earlier run are removed."""
    run_dir = cfg.run_dir
    if fresh:
        for rel in REUSABLE:
            if (run_dir / rel).exists():
                shutil.rmtree(run_dir / rel)
                log(f"--fresh: removed {run_dir / rel}")
    (run_dir / "results" / "ranks").mkdir(parents=True, exist_ok=True)
    return run_dir


# ---------------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureSets:
    """Feature matrices ``[n_items + 1, d]`` by feature set (arrays, or Ray object refs for Tune) and their info."""

    matrices: dict[str, Any]
    info: dict[str, dict]

    def stand_in(self, rep: str) -> bool:
        fs = Representation.parse(rep).feature_set
        return bool(fs and self.info[fs]["stand_in"])


def load_feature_sets(
    cfg: RunConfig, item_ids: np.ndarray, put: Callable[[np.ndarray], Any] | None = None
) -> FeatureSets:
    """Every feature set the representations name, read once (``put``: e.g. ``ray.put`` for trials)."""
    matrices, info = {}, {}
    for rep in cfg.experiment.representations:
        fs = Representation.parse(rep).feature_set
        if fs is not None and fs not in info:
            matrix, info[fs] = load_features(cfg, fs, item_ids)
            matrices[fs] = put(matrix) if put else matrix
    return FeatureSets(matrices, info)


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
    if (
        Representation.parse(feature_set).multi_layer
        and layer_dim
        and layer_dim * n_layers != matrix.shape[1]
    ):
        raise ValueError(
            f"feature set {feature_set!r}: {n_layers} layers x layer_dim {layer_dim} != width {matrix.shape[1]}"
        )
    refs = _model_refs(manifest.get("models", []))
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
    if (~ok).any():
        log(f"{feature_set}: {int((~ok).sum())} of {len(ok)} items have no vector; they get zeros")
    padded = np.zeros((len(item_ids) + 1, matrix.shape[1]), dtype=np.float32)
    padded[1:][ok] = matrix[ok]
    info = {
        "path": str(store.path),
        "dim": int(matrix.shape[1]),
        "n_ok": int(ok.sum()),
        "n_missing": int((~ok).sum()),
        "n_layers": n_layers,
        "stand_in": any(parse_ref(r).is_stand_in for r in refs),
        "models": sorted(set(refs)),
        "config_hash": str(manifest.get("config_hash", "")),
        "sha256": hashlib.sha256(padded.tobytes()).hexdigest(),
    }
    return padded, info


def _model_refs(models) -> list[str]:
    """Model references of a store manifest's ``models`` (a list or a dict of entries)."""
    entries = list(models.values()) if isinstance(models, dict) else list(models)
    return [str(m.get("ref") or m.get("reference") or "") if isinstance(m, dict) else str(m) for m in entries]


# ---------------------------------------------------------------------------------------- arms, fingerprints


def make_arm(model: str, rep: str, features: FeatureSets, name: str | None = None) -> Arm:
    """The arm of (model, representation); a DFF feature set's encoder gets its manifest's layer count."""
    r = Representation.parse(rep)
    kwargs = {"n_layers": features.info[r.feature_set]["n_layers"]} if r.multi_layer else None
    return Arm(name or f"{model}__{rep}", model, r.item_encoder, r.feature_set, kwargs)


def fingerprint(cfg: RunConfig, prep: Prepared, features: FeatureSets, arm: Arm, seed: int) -> dict[str, str]:
    """Everything that shapes ``arm``'s ranks, as flat ``key -> value`` (keys as in the config where there is one)."""
    from ray_jobs.manifest import package_versions

    train = cfg.train.model_dump(mode="json") | {"seed": seed}
    fp: dict[str, Any] = {
        "seewhy": package_versions().get("seewhy", "unknown"),
        "arm.model": arm.model,
        "arm.item_encoder": arm.item_encoder,
        "arm.encoder_kwargs": arm.encoder_kwargs or {},
        **_flat("model", cfg.model.model_dump(mode="json")),
        **_flat("train", {k: v for k, v in train.items() if k not in NOT_SHAPING}),
        **_flat("protocol", cfg.protocol.model_dump(mode="json")),
        "folds": [f.label for f in prep.folds],
        "folds.sha256": _folds_digest(prep),
    }
    for path, sha in sorted(prep.inputs.items()):
        fp[f"inputs.{Path(path).name}.sha256"] = sha
    if arm.feature_set is not None:
        info = features.info[arm.feature_set]
        fp[f"feature_set.{arm.feature_set}.config_hash"] = info["config_hash"]
        fp[f"feature_set.{arm.feature_set}.sha256"] = info["sha256"]
    return {k: json.dumps(v, sort_keys=True) for k, v in fp.items()}


def digest(fingerprints: list[dict[str, str]]) -> str:
    """A short hash of fingerprints (Ray Train run names, checkpoint tags)."""
    text = json.dumps(fingerprints, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _flat(prefix: str, tree: dict) -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out |= _flat(f"{prefix}.{k}", v)
        else:
            out[f"{prefix}.{k}"] = v
    return out


def _folds_digest(prep: Prepared) -> str:
    h = hashlib.sha256(np.ascontiguousarray(prep.item_ids).tobytes())
    for f in prep.folds:
        for a in (f.fit, f.refit, f.valid_hist, f.valid_target, f.test_hist, f.test_target):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def differing_keys(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """``key (was X, now Y)`` for every key whose value differs (values cut to 200 characters)."""

    def cut(v: str | None) -> str:
        return "(absent)" if v is None else (v if len(v) <= 200 else v[:197] + "...")

    keys = sorted(set(stored) | set(current))
    return [
        f"{k} (was {cut(stored.get(k))}, now {cut(current.get(k))})"
        for k in keys
        if stored.get(k) != current.get(k)
    ]


# -------------------------------------------------------------------------------------------- rank files


def ranks_path(run_dir: Path, arm_name: str) -> Path:
    return run_dir / "results" / "ranks" / f"{arm_name}.parquet"


def case_rows(prep: Prepared, model: str, rep: str, ranks: list[np.ndarray], stand_in: bool) -> pd.DataFrame:
    """The case table of one arm: the folds' cases with their ranks, in fold order."""
    parts = []
    for cases, r in zip(prep.cases, ranks):
        if len(cases) != len(r):
            raise RuntimeError(f"{model}/{rep}: {len(r)} ranks for {len(cases)} cases")
        parts.append(cases.assign(model=model, feature_set=rep, rank=r.astype(np.int64), stand_in=stand_in))
    out = pd.concat(parts, ignore_index=True)
    return out[["model", "feature_set", "day", "user_id", "item_id", "rank", "cold_start", "stand_in"]]


def most_popular_rows(cfg: RunConfig, prep: Prepared) -> pd.DataFrame:
    window = cfg.protocol.popularity_window_days
    return case_rows(prep, MOST_POPULAR, f"last {window}d", most_popular_ranks(prep, window), False)


def write_ranks(path: Path, frame: pd.DataFrame, fp: dict[str, str]) -> Path:
    """A rank file carrying its fingerprint in the Parquet schema metadata, written crash-safe."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: json.dumps(fp)})
    return durable.write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def read_ranks(path: Path, fp: dict[str, str]) -> pd.DataFrame | None:
    """A finished arm's ranks if ``path`` holds them under fingerprint ``fp``; None if there is nothing to reuse.

    A file that does not open is quarantined (its arm is trained again); a file written under another
    fingerprint raises FingerprintMismatch naming the differing keys.
    """
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except Exception as e:  # truncated or damaged: arrow raises several types
        durable.quarantine(path, f"{type(e).__name__}: {str(e)[:200]}")
        log(f"{path.name}: unreadable, moved to {durable.QUARANTINE}/; it is trained again")
        return None
    raw = (table.schema.metadata or {}).get(FINGERPRINT_KEY)
    stored = json.loads(raw) if raw else {}
    diff = differing_keys(stored, fp) if stored else ["(no fingerprint: written by an older seewhy)"]
    if diff:
        raise FingerprintMismatch(
            f"{path}: made under another configuration; differing keys: {'; '.join(diff)}"
        )
    return table.to_pandas()


def refuse_mismatches(errors: list[str], what: str) -> None:
    """One error for every reusable artefact that does not match, with how to proceed."""
    if errors:
        raise FingerprintMismatch(
            f"{len(errors)} finished {what}(s) in this folder were made under another configuration:\n  "
            + "\n  ".join(errors)
            + "\nrerun with --fresh to retrain into this folder, or choose a new name (--set name=...)"
        )


# -------------------------------------------------------------------------------------------------- train


def finish_arm(
    run_dir: Path,
    prep: Prepared,
    arm: Arm,
    rep: str,
    ranks: list[np.ndarray],
    stand_in: bool,
    fp: dict[str, str],
    **cols,
) -> pd.DataFrame:
    """Record a finished arm: its case table (plus constant ``cols``, e.g. seed) as a fingerprinted rank file."""
    frame = case_rows(prep, arm.model, rep, ranks, stand_in).assign(**cols)
    write_ranks(ranks_path(run_dir, arm.name), frame, fp)
    return frame


def train_arms(
    cfg: RunConfig,
    prep: Prepared,
    arms: list[Arm],
    features: dict[str, np.ndarray],
    fingerprints: dict[str, dict[str, str]],
    train_cfg=None,
    on_report: Callable[[dict], None] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Train ``arms`` in ``train.parallel_runs`` TorchTrainers at once; test ranks per arm, in fold order.

    Each trainer's run name is a hash of its arms' fingerprints: rerunning the same arms under the
    same config resumes their checkpoint, anything else starts a new run.
    """
    from concurrent.futures import ThreadPoolExecutor

    train_cfg = train_cfg or cfg.train
    groups = split_arms(arms, train_cfg.parallel_runs)
    log(
        f"training {len(arms)} arm(s) x {len(prep.folds)} fold(s) in {len(groups)} Ray Train run(s) at once "
        f"({train_cfg.num_workers} worker(s) each): " + ", ".join(a.name for a in arms)
    )

    def train(group: list[Arm]) -> dict[str, dict[str, np.ndarray]]:
        tag = digest([fingerprints[a.name] for a in group])
        return fit_and_rank_arms(
            arms=group,
            n_items=len(prep.item_ids),
            history_len=cfg.protocol.history_len,
            folds=prep.folds,
            model_cfg=cfg.model,
            train_cfg=train_cfg,
            storage_path=str(cfg.run_dir / "ray_train"),
            run_name=f"{group[0].name if len(group) == 1 else 'arms'}-{tag}".replace("+", "_plus_"),
            fingerprint=tag,
            features={a.feature_set: features[a.feature_set] for a in group if a.feature_set},
            on_report=on_report,
        )

    by_arm: dict[str, dict[str, np.ndarray]] = {}
    if len(groups) == 1:
        by_arm = train(groups[0])
    else:
        # Ray Train runs fit() from threads (as Tune does). No `with`: on Ctrl-C the main thread must not
        # wait for the trainers (ray_jobs/signals.py stops Ray, which ends them).
        pool = ThreadPoolExecutor(len(groups))
        try:
            for part in pool.map(train, groups):
                by_arm.update(part)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return {a.name: [by_arm[a.name][f.label] for f in prep.folds] for a in arms}


def epoch_cost(model: str) -> float:
    """Relative cost of one epoch of ``model`` (the planner's measured seconds; unknown: the dearest known)."""
    rate = EPOCH_S.get(model)
    return rate.per_s if rate else max(r.per_s for r in EPOCH_S.values())


def split_arms(arms: list[Arm], n: int) -> list[list[Arm]]:
    """At most ``n`` non-empty groups of arms with about equal cost (longest first, to the lightest group)."""
    groups: list[list[Arm]] = [[] for _ in range(min(n, len(arms)))]
    load = [0.0] * len(groups)
    for a in sorted(arms, key=lambda a: -epoch_cost(a.model)):
        i = load.index(min(load))
        groups[i].append(a)
        load[i] += epoch_cost(a.model)
    order = {a.name: k for k, a in enumerate(arms)}
    return [sorted(g, key=lambda a: order[a.name]) for g in groups]


# ------------------------------------------------------------------------------------------------ results


def write_results(
    cfg: RunConfig, cases: pd.DataFrame, title: str, baselines: dict[str, str] | None, extra_md: str = ""
) -> Path:
    """cases.parquet, summary.csv, report.md and plots of a run folder, each written crash-safe."""
    from evaluate.report import write_report

    run_dir = cfg.run_dir
    durable.write_atomic(
        run_dir / "results" / "cases.parquet", lambda tmp: cases.to_parquet(tmp, index=False)
    )
    write_report(
        cases, run_dir, title=title, baselines=baselines, extra_md=extra_md, writer=durable.write_atomic
    )
    return run_dir
