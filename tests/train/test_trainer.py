"""The Ray Train loop on local Ray: every fold gets ranks; a killed worker resumes; a rerun resumes."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from train.config import ModelConfig, TrainConfig
from train.loop import STATE_FILE
from train.trainer import Arm, Fold, fit_and_rank, fit_and_rank_arms

pytestmark = pytest.mark.integration
N, L = 40, 5


def _folds(rng) -> list[Fold]:
    def chains(n):  # successor structure: item i -> i % N + 1
        s = rng.integers(1, N + 1, n)
        return ((s[:, None] + np.arange(L + 1)[None] - 1) % N + 1).astype(np.int64)

    out = []
    for i in range(2):
        fit, refit, valid, test = chains(300), chains(330), chains(40), chains(41 + i)
        out.append(Fold(f"day{i}", fit, refit, valid[:, :-1], valid[:, -1], test[:, :-1], test[:, -1]))
    return out


CFG = dict(model_cfg=ModelConfig(dim=16, n_layers=1, dropout=0.0), history_len=L, n_items=N)
TCFG = TrainConfig(epochs_max=6, patience=2, batch_size=64, lr=1e-2, n_negatives=16, num_workers=2)


def test_fit_and_rank_kill_and_resume(ray_local, tmp_path):
    folds = _folds(np.random.default_rng(0))
    marker = tmp_path / "failed-once"
    run = functools.partial(
        fit_and_rank,
        model="sasrec",
        item_encoder="id",
        folds=folds,
        train_cfg=TCFG,
        storage_path=str(tmp_path),
        run_name="r",
        **CFG,
    )
    ranks = run(fail_once_marker=str(marker))
    assert marker.exists()  # the worker did die after fold 0 and the run still finished
    latest = max(
        (p for p in (tmp_path / "r").glob("checkpoint_*") if p.is_dir()), key=lambda p: p.stat().st_mtime
    )
    progress = torch.load(latest / STATE_FILE, weights_only=True)["progress"]
    assert progress["resumes"] == 1 and progress["arm"] == 1  # continued from the checkpoint to the end
    assert set(ranks) == {"day0", "day1"}
    for f in folds:
        r = ranks[f.label]
        assert len(r) == len(f.test_target) and r.min() >= 1 and r.max() <= N
        assert (r <= 10).mean() > 0.5  # the successor structure is learned
    # A rerun under the same name reads the finished run back without training.
    again = run()
    for label in ranks:
        np.testing.assert_array_equal(again[label], ranks[label])


def test_relative_storage_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="absolute"):
        fit_and_rank(
            model="sasrec",
            item_encoder="id",
            folds=[],
            train_cfg=TCFG,
            storage_path="rel",
            run_name="x",
            **CFG,
        )


def test_arms_share_one_trainer(ray_local, tmp_path):
    """Two models and two representations in one TorchTrainer: every arm ranks every fold."""
    folds = _folds(np.random.default_rng(1))
    feats = np.random.default_rng(2).normal(size=(N + 1, 8)).astype(np.float32)
    arms = [
        Arm("sasrec__id", "sasrec"),
        Arm("two-tower__f", "two-tower", "feature", "f"),
        Arm("sasrec__id+f", "sasrec", "fusion", "f"),
    ]
    tcfg = TCFG.model_copy(update={"num_workers": 1, "epochs_max": 2, "progress": "fold"})
    out = fit_and_rank_arms(
        arms=arms,
        folds=folds,
        train_cfg=tcfg,
        storage_path=str(tmp_path),
        run_name="a",
        features={"f": feats},
        **CFG,
    )
    assert set(out) == {a.name for a in arms}
    for ranks in out.values():
        assert set(ranks) == {"day0", "day1"}
        assert all(len(ranks[f.label]) == len(f.test_target) for f in folds)
    assert (out["sasrec__id"]["day0"] <= 10).mean() > 0.5


def test_arm_without_its_features_is_refused(tmp_path):
    with pytest.raises(ValueError, match="feature set 'f'"):
        fit_and_rank_arms(
            arms=[Arm("x", "sasrec", "feature", "f")],
            folds=[],
            train_cfg=TCFG,
            storage_path=str(tmp_path),
            run_name="x",
            **CFG,
        )
