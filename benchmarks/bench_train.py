"""Training and evaluation speed on a MicroLens-100K-shaped log (100k users, 19,738 items, ~719k rows).

Runs the exact per-worker code of the Ray Train loop (``train.steps.train_epoch`` / ``rank_cases``)
in this process, on the largest training set of the rolling protocol (days <= D-1) and on every
test case of the 7 evaluation days, and prints seconds per epoch, training targets/s, peak RSS and
full-ranking evaluation users/s for SASRec and Two-Tower, with the targets beside them.

    python benchmarks/bench_train.py                 # full size (about 2 minutes on 2 cores)
    python benchmarks/bench_train.py --quick         # 10% of the users, for a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import numpy as np
import torch

from evaluate import splits as S
from train.config import ModelConfig, TrainConfig
from train.registry import build_item_encoder, build_model
from train.sequences import left_pad, sequence_windows
from train.steps import rank_cases, train_epoch
from train.synth import SynthConfig, generate_log

TARGETS = {"sasrec_epoch_s": 60.0, "eval_s": 20.0, "peak_rss_gib": 3.0}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tenth of the log")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--history-len", type=int, default=10)
    ap.add_argument(
        "--ray", action="store_true", help="also time SASRec through Ray Train (2 workers, gloo) end to end"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = SynthConfig.microlens_100k()
    if args.quick:
        cfg = dataclasses.replace(cfg, n_users=10_000, n_interactions=71_940)
    t0 = time.perf_counter()
    log, _ = generate_log(cfg)
    log = S.preprocess(log)
    splits = S.rolling_daily_splits(log, 7, args.history_len)
    item_ids = np.unique(log["item_id"].to_numpy())
    n_items = len(item_ids)

    def idx(a: np.ndarray) -> np.ndarray:
        out = np.zeros(a.shape, dtype=np.int64)
        out[a >= 0] = np.searchsorted(item_ids, a[a >= 0]) + 1
        return out

    refit = splits[-1].refit
    windows = sequence_windows(
        refit["user_id"].to_numpy(), idx(refit["item_id"].to_numpy()), args.history_len
    )
    test_hist = np.concatenate([left_pad(idx(sp.test.history), 0) for sp in splits])
    test_tgt = np.concatenate([idx(sp.test.item_id) for sp in splits])
    n_users_eval = sum(len(np.unique(sp.test.user_id)) for sp in splits)
    print(
        f"log: {len(log):,} interactions, {log.user_id.nunique():,} users, {n_items:,} items; "
        f"largest training set {len(refit):,} interactions -> {len(windows):,} windows; "
        f"{len(test_tgt):,} test cases ({n_users_eval:,} user-days) over 7 days; prepared in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    mcfg = ModelConfig(dim=args.dim)
    tcfg = TrainConfig(batch_size=args.batch_size)
    rows = []
    for name in ("sasrec", "two-tower"):
        torch.manual_seed(0)
        model = build_model(name, build_item_encoder("id", n_items, mcfg.dim, None), mcfg, args.history_len)
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
        gen = torch.Generator().manual_seed(0)
        data = torch.from_numpy(windows)
        perm = torch.randperm(len(data), generator=gen)
        t = time.perf_counter()
        _, n_targets = train_epoch(model, data[perm].split(tcfg.batch_size), opt, tcfg, n_items, gen)
        epoch_s = time.perf_counter() - t
        t = time.perf_counter()
        ranks = rank_cases(model, test_hist, test_tgt, tcfg.eval_batch_size)
        eval_s = time.perf_counter() - t
        assert len(ranks) == len(test_tgt)
        rows.append((name, epoch_s, n_targets / epoch_s, eval_s, len(test_tgt) / eval_s, peak_rss_gib()))

    print(
        f"\n| model | s / epoch | targets / s | eval s (all {len(test_tgt):,} test cases) | cases / s | peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|")
    for name, es, tps, ev, cps, rss in rows:
        print(f"| {name} | {es:.1f} | {tps:,.0f} | {ev:.1f} | {cps:,.0f} | {rss:.2f} |")
    if args.ray:
        ray_row = through_ray_train(windows, test_hist, test_tgt, n_items, mcfg, tcfg, args.history_len)
        print(
            f"\nSASRec through Ray Train (2 workers x 1 CPU, gloo; one fit epoch with validation on 2,000 cases, "
            f"one refit epoch, full ranking of all test cases): {ray_row:.1f}s wall including start-up"
        )
    sas = rows[0]
    print(
        f"\ntargets (full size, 2 cores): SASRec epoch <= {TARGETS['sasrec_epoch_s']:.0f}s -> {sas[1]:.1f}s "
        f"({sas[1] / TARGETS['sasrec_epoch_s']:.2f}x of budget); evaluation <= {TARGETS['eval_s']:.0f}s -> "
        f"{sas[3]:.1f}s; peak RSS <= {TARGETS['peak_rss_gib']:.0f} GiB -> {max(r[5] for r in rows):.2f} GiB"
        + ("  [--quick: 10% of the log, not comparable to the targets]" if args.quick else "")
    )


def through_ray_train(windows, test_hist, test_tgt, n_items, mcfg, tcfg, history_len) -> float:
    """Wall time of one fold with one fit and one refit epoch on Ray Train, start-up included."""
    import os
    import tempfile

    import ray

    from train.trainer import Arm, Fold, fit_and_rank_arms

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    fold = Fold("bench", windows, windows, test_hist[:2000], test_tgt[:2000], test_hist, test_tgt)
    cfg = tcfg.model_copy(update={"epochs_max": 1, "num_workers": 2})
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit_and_rank_arms(
            arms=[Arm("bench", "sasrec")],
            n_items=n_items,
            history_len=history_len,
            folds=[fold],
            model_cfg=mcfg,
            train_cfg=cfg,
            storage_path=tmp,
            run_name="bench",
        )
    wall = time.perf_counter() - t
    ray.shutdown()
    return wall


if __name__ == "__main__":
    main()
