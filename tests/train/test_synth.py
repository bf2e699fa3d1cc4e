"""The synthetic log: shape, determinism, learnable structure, and round trips through the loaders."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from featurize.catalog import CatalogConfig, load_catalog
from train.interactions import InteractionsConfig, load_interactions
from train.synth import TOPIC_WORDS, SynthConfig, generate_log, write_microlens, write_microlens_seq

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def small() -> tuple[SynthConfig, pd.DataFrame, pd.DataFrame]:
    cfg = SynthConfig.small()
    return (cfg, *generate_log(cfg))


def test_small_log_is_canonical_and_consistent(small):
    cfg, log, items = small
    assert list(log.columns) == ["user_id", "item_id", "timestamp"] and all(d == np.int64 for d in log.dtypes)
    assert log.equals(log.sort_values(["timestamp", "user_id", "item_id"], ignore_index=True))
    assert abs(len(log) - cfg.n_interactions) <= 0.05 * cfg.n_interactions
    assert log["user_id"].nunique() == cfg.n_users and len(items) == cfg.n_items
    assert not log.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert not log.duplicated(["user_id", "item_id"]).any()  # nobody repeats an item
    assert not log.duplicated(["user_id", "timestamp"]).any()  # each user's order is unambiguous
    assert list(items.columns) == ["item_id", "title", "topic", "release_day"]
    assert list(items["item_id"]) == list(range(1, cfg.n_items + 1))

    start_ms = int(pd.Timestamp(cfg.start, tz="UTC").value // 10**6)
    day = (log["timestamp"] - start_ms) // DAY_MS
    assert day.min() >= 0 and day.max() == cfg.n_days - 1
    released = items.set_index("item_id")["release_day"]
    assert (day.to_numpy() >= released.loc[log["item_id"]].to_numpy()).all()  # only released items
    recent = (day >= cfg.n_days - cfg.recent_days).mean()
    assert abs(recent - cfg.recent_fraction) < 0.05

    # Cold start: some items first appear on the last day, and were released late.
    first_day = day.groupby(log["item_id"]).min()
    fresh = first_day[first_day == cfg.n_days - 1].index
    assert len(fresh) > 0 and (released.loc[fresh] > 0).all()


def test_titles_come_from_topic_words(small):
    _, _, items = small
    vocab = list(TOPIC_WORDS.values())
    own = [
        sum(word in title for word in vocab[topic]) for title, topic in zip(items["title"], items["topic"])
    ]
    assert np.mean(own) > 2.0  # three words per title, one in ten from another topic
    assert items["title"].str.contains(",").any() and items["title"].str.contains('"').any()


def test_same_seed_same_log_and_other_seed_differs():
    a, items_a = generate_log(SynthConfig.small(seed=3))
    b, items_b = generate_log(SynthConfig.small(seed=3))
    c, _ = generate_log(SynthConfig.small(seed=4))
    assert a.equals(b) and items_a.equals(items_b)
    assert not a.equals(c)


def hit_rate_at_10(log: pd.DataFrame) -> tuple[float, float]:
    """HR@10 on each user's last item: most frequent transitions from the previous item vs popularity."""
    seqs = log.sort_values(["user_id", "timestamp"]).groupby("user_id")["item_id"].apply(list)
    transitions: dict[int, Counter] = defaultdict(Counter)
    popularity: Counter = Counter()
    for seq in seqs:
        for a, b in itertools.pairwise(seq[:-1]):
            transitions[a][b] += 1
        popularity.update(seq[:-1])
    ranked = [item for item, _ in popularity.most_common()]
    hits_seq = hits_pop = 0
    for seq in seqs:
        seen, target = set(seq[:-1]), seq[-1]
        hits_seq += target in [i for i, _ in transitions[seq[-2]].most_common() if i not in seen][:10]
        hits_pop += target in [i for i in ranked if i not in seen][:10]
    return hits_seq / len(seqs), hits_pop / len(seqs)


def test_sequential_structure_beats_popularity(small):
    _, log, _ = small
    seq_hr, pop_hr = hit_rate_at_10(log)
    assert seq_hr > 2 * pop_hr and seq_hr > 0.2
    # Without the sequential structure the transition predictor loses its edge.
    flat, _ = generate_log(dataclasses.replace(SynthConfig.small(), p_sequential=0.0))
    flat_seq_hr, _ = hit_rate_at_10(flat)
    assert flat_seq_hr < seq_hr / 2


def test_microlens_files_round_trip(small, tmp_path):
    _, log, items = small
    paths = write_microlens(log, items, tmp_path / "ml")
    assert [p.name for p in paths.values()] == ["MicroLens-100k_pairs.csv", "MicroLens-100k_title_en.csv"]
    assert paths["pairs"].read_text().startswith("user,item,timestamp\n")
    assert paths["titles"].read_text().startswith("item,title\n")
    catalog = load_catalog(CatalogConfig(titles=str(paths["titles"])))
    assert catalog["item_id"].tolist() == items["item_id"].tolist()
    assert catalog["title"].tolist() == items["title"].tolist()
    loaded, report = load_interactions(InteractionsConfig(path=str(paths["pairs"])), set(catalog["item_id"]))
    assert report.format == "microlens_pairs" and report.n_duplicates == report.n_unknown_items == 0
    pd.testing.assert_frame_equal(loaded, log)


def test_sequence_file_round_trip(small, tmp_path):
    _, log, _ = small
    path = write_microlens_seq(log, tmp_path / "MicroLens-100k_pairs.tsv")
    loaded, report = load_interactions(InteractionsConfig(path=str(path)))
    assert report.has_time is False
    ordered = log.sort_values(["user_id", "timestamp"])
    expected = ordered.assign(timestamp=ordered.groupby("user_id").cumcount().astype(np.int64))
    expected = expected.sort_values(["timestamp", "user_id", "item_id"], ignore_index=True)
    pd.testing.assert_frame_equal(loaded, expected)


def test_config_validation():
    assert SynthConfig(start="2023-03-01").start.isoformat() == "2023-03-01"
    assert SynthConfig.small().to_dict()["start"] == "2022-01-01"
    with pytest.raises(ValueError, match="1 <= recent_days < n_days"):
        SynthConfig(n_days=10, recent_days=10)
    with pytest.raises(ValueError, match="n_interactions >= n_users"):
        SynthConfig(n_users=100, n_interactions=150)
    with pytest.raises(ValueError, match=r"n_topics in 1\.\.24"):
        SynthConfig(n_topics=40)


def test_microlens_100k_preset_shape():
    cfg = SynthConfig.microlens_100k()
    log, items = generate_log(cfg)
    assert abs(len(log) - 719_405) <= 0.05 * 719_405
    assert abs(log["user_id"].nunique() - 100_000) <= 5_000
    assert len(items) == 19_738 and log["item_id"].nunique() >= 0.95 * 19_738
    span_days = (log["timestamp"].max() - log["timestamp"].min()) / DAY_MS
    assert 320 <= span_days <= 335  # ~11 months
    last_3_months = log["timestamp"] >= log["timestamp"].max() - 92 * DAY_MS
    assert last_3_months.mean() > 0.5
