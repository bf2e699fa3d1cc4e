"""Splits: daily cutoffs, histories, leave-one-out, checked by hand and against brute-force loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluate.splits import (
    MS_PER_DAY,
    Cases,
    cases_for_day,
    check_interactions,
    cold_start_mask,
    day_label,
    leave_one_out,
    preprocess,
    rolling_daily_splits,
    utc_day,
)

H = 3_600_000  # one hour in ms


def log(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(user, item, timestamp ms) rows -> canonical interactions frame."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype("int64")
    return df.sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True)


def random_log(seed: int, n: int = 400, n_users: int = 25, n_items: int = 30, days: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Coarse timestamps (hours) so that ties on (timestamp, user) happen and the tie order is tested.
    ts = 10_000 * MS_PER_DAY + rng.integers(0, days * 24, n) * H
    return log(list(zip(rng.integers(0, n_users, n), rng.integers(0, n_items, n), ts)))


def pad(items: list[int], length: int) -> list[int]:
    items = items[-length:]
    return [-1] * (length - len(items)) + items


def brute_cases(df: pd.DataFrame, day: int, length: int) -> list[tuple[int, int, int, list[int]]]:
    rows = list(df.itertuples(index=False))  # canonical order
    start = day * MS_PER_DAY
    out = []
    for r in rows:
        if start <= r.timestamp < start + MS_PER_DAY:
            prior = [x.item_id for x in rows if x.user_id == r.user_id and x.timestamp < start]
            if prior:
                out.append((r.user_id, r.item_id, day, pad(prior, length)))
    return out


def as_tuples(cases: Cases) -> list[tuple[int, int, int, list[int]]]:
    return [
        (int(u), int(i), int(d), h.tolist())
        for u, i, d, h in zip(cases.user_id, cases.item_id, cases.day, cases.history)
    ]


def test_utc_day_and_label() -> None:
    ts = np.array([0, MS_PER_DAY - 1, MS_PER_DAY, -1, 1_623_715_200_000 + 5 * H])
    assert utc_day(ts).tolist() == [0, 0, 1, -1, 18793]
    assert day_label(18793) == "2021-06-15"
    assert day_label(-1) == "1969-12-31"


def test_check_interactions_errors_and_sorting() -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) \['timestamp'\]"):
        check_interactions(pd.DataFrame({"user_id": [1], "item_id": [2]}))
    with pytest.raises(ValueError, match="column 'timestamp': expected int64, got dtype float64"):
        check_interactions(pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [1.5]}))
    nulls = pd.DataFrame(
        {"user_id": [1, 2], "item_id": pd.array([2, None], dtype="Int64"), "timestamp": [1, 2]}
    )
    with pytest.raises(ValueError, match="column 'item_id' row 1: expected an int64 value, got a null"):
        check_interactions(nulls)
    shuffled = pd.DataFrame(
        {"user_id": [2, 1, 1], "item_id": [5, 7, 6], "timestamp": [10, 10, 3]}, dtype="int32"
    )
    out = check_interactions(shuffled)
    assert out.dtypes.tolist() == [np.int64] * 3
    assert out[["user_id", "item_id", "timestamp"]].values.tolist() == [[1, 6, 3], [1, 7, 10], [2, 5, 10]]


def test_preprocess_drops_users_below_min() -> None:
    df = log([(1, 10, 0), (2, 11, 1), (1, 12, 2), (3, 13, 3), (3, 13, 4), (3, 14, 5)])
    assert sorted(preprocess(df)["user_id"].unique()) == [1, 3]
    assert preprocess(df, min_interactions=3)["user_id"].tolist() == [3, 3, 3]


def test_cases_for_day_cutoff_rules() -> None:
    d = 20_000
    day0, day1, day2 = ((d + i) * MS_PER_DAY for i in range(3))
    df = log(
        [
            (1, 10, day0 + H),
            (1, 11, day1 + H),
            (1, 12, day2 + H),  # case: history [10, 11]
            (1, 13, day2 + 2 * H),  # case: same-day 12 is NOT history
            (2, 20, day2 + H),  # first interactions on the test day: no case
            (2, 21, day2 + 3 * H),
            (3, 30, day0),
            (3, 30, day2 + 5 * H),  # re-watch of a history item: still a case
        ]
    )
    cases = cases_for_day(df, d + 2, history_len=3)
    assert as_tuples(cases) == [
        (1, 12, d + 2, [-1, 10, 11]),
        (1, 13, d + 2, [-1, 10, 11]),
        (3, 30, d + 2, [-1, -1, 30]),
    ]
    assert len(cases) == 3 and cases.history_len == 3
    # A history longer than L keeps the L most recent, oldest first.
    assert as_tuples(cases_for_day(df, d + 2, history_len=1))[0][3] == [11]
    assert len(cases_for_day(df, d + 5)) == 0


@pytest.mark.parametrize("seed", range(4))
def test_cases_for_day_matches_brute_force(seed: int) -> None:
    df = random_log(seed)
    for day in np.unique(utc_day(df["timestamp"]))[-4:]:
        for length in (1, 4):
            assert as_tuples(cases_for_day(df, int(day), length)) == brute_cases(df, int(day), length)


def test_rolling_daily_splits_boundaries() -> None:
    df = random_log(7, days=12)
    first, last = utc_day(df["timestamp"]).min(), utc_day(df["timestamp"]).max()
    assert last - first + 1 == 12
    splits = rolling_daily_splits(df, n_days=7, history_len=4)
    assert [s.day for s in splits] == list(range(last - 6, last + 1))
    for s in splits:
        assert utc_day(s.fit["timestamp"]).max() == s.day - 2
        assert len(s.fit) == (utc_day(df["timestamp"]) <= s.day - 2).sum()
        assert len(s.refit) == (utc_day(df["timestamp"]) <= s.day - 1).sum()
        assert as_tuples(s.valid) == brute_cases(df, s.day - 1, 4)
        assert as_tuples(s.test) == brute_cases(df, s.day, 4)
        assert s.label == day_label(s.day)
    # The log spans exactly n_days + 2 days for n_days=10: still valid; n_days=11 is one too many.
    assert len(rolling_daily_splits(df, n_days=10)) == 10
    with pytest.raises(ValueError, match=r"spans 12 calendar day\(s\).*need at least 13"):
        rolling_daily_splits(df, n_days=11)
    with pytest.raises(ValueError, match="empty"):
        rolling_daily_splits(df.iloc[:0])


def test_rolling_daily_splits_empty_calendar_day() -> None:
    d = 20_000
    rows = [(u, u, (d + day) * MS_PER_DAY + u * H) for day in range(6) for u in range(3)]
    df = log([r for r in rows if utc_day(r[2]) != d + 4])  # day d+4 has no interactions
    splits = rolling_daily_splits(df, n_days=3, history_len=2)
    assert [s.day for s in splits] == [d + 3, d + 4, d + 5]
    empty = splits[1]
    assert len(empty.test) == 0 and empty.test.history.shape == (0, 2)
    assert len(splits[2].valid) == 0 and len(splits[2].test) == 3
    assert len(splits[2].refit) == len(splits[2].fit) == 12  # day d+4 adds nothing


def brute_loo(df: pd.DataFrame, length: int):
    train, valid, test = [], [], []
    for _, g in df.groupby("user_id", sort=False):
        rows = list(g.itertuples(index=False))
        if len(rows) < 3:
            train += rows
            continue
        train += rows[:-2]
        items = [r.item_id for r in rows]
        valid.append((rows[-2], pad(items[:-2], length)))
        test.append((rows[-1], pad(items[:-1], length)))

    def canon(cases):
        cases.sort(key=lambda c: (c[0].timestamp, c[0].user_id, c[0].item_id))
        return [(r.user_id, r.item_id, r.timestamp // MS_PER_DAY, h) for r, h in cases]

    train.sort(key=lambda r: (r.timestamp, r.user_id, r.item_id))
    return [tuple(r) for r in train], canon(valid), canon(test)


@pytest.mark.parametrize("seed", range(3))
def test_leave_one_out_matches_brute_force(seed: int) -> None:
    df = random_log(seed, n=150, n_users=40)
    train, valid, test = leave_one_out(df, history_len=4)
    want_train, want_valid, want_test = brute_loo(df, 4)
    assert [
        tuple(r) for r in train[["user_id", "item_id", "timestamp"]].itertuples(index=False)
    ] == want_train
    assert as_tuples(valid) == want_valid
    assert as_tuples(test) == want_test
    assert len(train) + len(valid) + len(test) == len(df)


def test_leave_one_out_small_users_train_only() -> None:
    df = log([(1, 10, 0), (1, 11, 1), (2, 20, 2), (2, 21, 3), (2, 22, 4), (2, 23, 5)])
    train, valid, test = leave_one_out(df, history_len=2)
    assert train["item_id"].tolist() == [10, 11, 20, 21]
    assert as_tuples(valid) == [(2, 22, 0, [20, 21])]
    assert as_tuples(test) == [(2, 23, 0, [21, 22])]


def test_cold_start_mask() -> None:
    df = log([(1, 10, 0), (1, 11, MS_PER_DAY), (2, 10, 1), (2, 12, MS_PER_DAY + 1)])
    cases = cases_for_day(df, 1)
    assert cold_start_mask(cases, df.iloc[:3]).tolist() == [False, True]  # train items 10, 10, 11


def test_cases_validates_arrays() -> None:
    ok = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match=r"Cases.history: expected an int64 array of shape \[2, L\]"):
        Cases(ok, ok, ok, np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match=r"Cases\.day"):
        Cases(ok, ok, ok.astype(np.int32), np.zeros((2, 4), np.int64))


def test_microlens_scale_log_is_fast() -> None:
    """MicroLens-100K sized random log (700k rows): all 7 daily splits (speed is a benchmark matter)."""
    rng = np.random.default_rng(0)
    n = 700_000
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 100_000, n),
            "item_id": rng.integers(0, 20_000, n),
            "timestamp": 19_000 * MS_PER_DAY + rng.integers(0, 30 * MS_PER_DAY, n),
        }
    )
    splits = rolling_daily_splits(preprocess(df))
    leave_one_out(df)
    assert len(splits) == 7
