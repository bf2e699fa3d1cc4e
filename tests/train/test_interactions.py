"""Interaction loading: formats, the canonical frame, and located errors for every kind of bad input."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest

from train.interactions import DataError, InteractionsConfig, file_sha256, load_interactions

PAIRS = "MicroLens-100k_pairs.csv"
T0 = 1_650_000_000_000  # 2022-04-15 in epoch ms


def pairs_file(
    tmp_path: Path, rows: list[str], header: str = "user,item,timestamp", name: str = PAIRS
) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def good_rows(n: int = 20) -> list[str]:
    return [f"{1 + i % 4},{10 + i},{T0 + 1000 * i}" for i in range(n)]


def load(path: Path, catalog=None, **kw):
    return load_interactions(InteractionsConfig(path=str(path), **kw), catalog)


def test_pairs_give_canonical_frame(tmp_path):
    rows = ["3,30,1650000002000", "1,10,1650000001000", "2,20,1650000001000", "1,11,1650000001000"]
    frame, report = load(pairs_file(tmp_path, rows))
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert all(dtype == np.int64 for dtype in frame.dtypes)
    assert list(frame.itertuples(index=False, name=None)) == [
        (1, 10, 1650000001000),
        (1, 11, 1650000001000),
        (2, 20, 1650000001000),
        (3, 30, 1650000002000),
    ]
    assert list(frame.index) == [0, 1, 2, 3]
    assert report.format == "microlens_pairs" and report.has_time
    assert report.n_rows_read == report.n_rows_kept == 4
    assert (
        report.sha256
        == file_sha256(tmp_path / PAIRS)
        == hashlib.sha256((tmp_path / PAIRS).read_bytes()).hexdigest()
    )


def test_error_message_reads_like_the_contract(tmp_path):
    rows = good_rows(20)
    rows[15] = "1,2,1.6e9x"  # line 17: the header is line 1, rows start on line 2
    with pytest.raises(DataError) as err:
        load(pairs_file(tmp_path, rows))
    assert str(err.value) == (
        "MicroLens-100k_pairs.csv line 17, column 'timestamp': expected epoch milliseconds, got '1.6e9x'"
    )
    assert (err.value.row, err.value.column, Path(err.value.path).name) == (17, "timestamp", PAIRS)


@pytest.mark.parametrize(
    ("bad_row", "column", "needle"),
    [
        ("12a,5,1650000000000", "user", "expected a non-negative integer id, got '12a'"),
        ("1,3.5,1650000000000", "item", "got '3.5'"),
        ("1,,1650000000000", "item", "got ''"),
        ("-4,5,1650000000000", "user", "got '-4'"),
        ("1,5,", "timestamp", "expected epoch milliseconds, got ''"),
        ("1,5,abc", "timestamp", "expected epoch milliseconds, got 'abc'"),
        ("1,5,-1000", "timestamp", "expected epoch milliseconds >= 0, got '-1000'"),
        ("1,5,1650000000", "timestamp", "it looks like epoch seconds: set time_unit: s"),
        ("1,5,5000000000000", "timestamp", "between 2000 and 2100, got 5000000000000 (2128-06-11"),
        ("1,5,1650000000000000", "timestamp", "looks like epoch microseconds"),
    ],
)
def test_one_bad_row_is_located(tmp_path, bad_row, column, needle):
    rows = good_rows(20)
    rows[6] = bad_row  # line 8
    with pytest.raises(DataError) as err:
        load(pairs_file(tmp_path, rows))
    assert err.value.row == 8 and err.value.column == column
    assert str(err.value).startswith(f"{PAIRS} line 8, column '{column}': ")
    assert needle in str(err.value)


def test_whole_file_in_seconds_names_the_fix_and_then_loads(tmp_path):
    rows = [f"{1 + i % 3},{i},{T0 // 1000 + i}" for i in range(10)]
    path = pairs_file(tmp_path, rows)
    with pytest.raises(
        DataError, match=r"line 2, column 'timestamp'.*looks like epoch seconds: set time_unit: s.*10 of 10"
    ):
        load(path)
    frame, _ = load(path, time_unit="s")
    assert frame["timestamp"].min() == T0


def test_ms_values_read_as_seconds_are_caught(tmp_path):
    path = pairs_file(tmp_path, [f"1,{i},{T0 + i}" for i in range(3)])
    with pytest.raises(DataError, match="looks like epoch milliseconds: set time_unit: ms"):
        load(path, time_unit="s")


def test_missing_column_lists_found_and_expected(tmp_path):
    path = pairs_file(tmp_path, ["1,2,1650000000000"], header="user,item,time")
    with pytest.raises(DataError) as err:
        load(path)
    msg = str(err.value)
    assert err.value.row == 1 and err.value.column == "timestamp"
    assert "missing column(s) ['timestamp']" in msg and "found ['user', 'item', 'time']" in msg
    assert "expected ['user', 'item', 'timestamp']" in msg


def test_row_with_extra_field_is_located(tmp_path):
    for bad_at in (0, 5):  # the first data row is a special case in pandas (it becomes an index)
        rows = good_rows(8)
        rows[bad_at] = "1,2,1650000000000,9"
        with pytest.raises(DataError, match=rf"line {bad_at + 2}: expected 3 fields as in the header, saw 4"):
            load(pairs_file(tmp_path, rows))


def test_duplicates_are_reported_and_dropped(tmp_path):
    rows = good_rows(10)
    rows[7] = rows[2]  # line 9 repeats line 4
    rows.append(rows[3])  # line 12 repeats line 5
    frame, report = load(pairs_file(tmp_path, rows))
    assert report.n_duplicates == 2 and report.duplicate_lines == [9, 12]
    assert len(frame) == 9 and not frame.duplicated().any()
    assert "2 duplicate" in report.summary()


def test_duplicates_can_be_an_error(tmp_path):
    rows = good_rows(10)
    rows[7] = rows[2]
    with pytest.raises(DataError, match=r"line 9: duplicate interaction .* same as line 4"):
        load(pairs_file(tmp_path, rows), duplicates="error")


def test_unknown_items_drop_keep_error(tmp_path):
    rows = good_rows(6)  # items 10..15
    path = pairs_file(tmp_path, rows)
    catalog = {10, 11, 12, 14}
    frame, report = load(path, catalog)
    assert report.n_unknown_items == 2 and report.unknown_item_examples == [13, 15]
    assert set(frame["item_id"]) == catalog
    frame, report = load(path, np.array(sorted(catalog)), unknown_items="keep")
    assert len(frame) == 6 and report.n_unknown_items == 2
    with pytest.raises(DataError) as err:
        load(path, catalog, unknown_items="error")
    assert (err.value.row, err.value.column) == (5, "item")
    assert "item 13 is not in the catalog (2 interactions with 2 unknown items)" in str(err.value)


def test_blank_lines_and_quoted_newlines_keep_line_numbers(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        'note,uid,iid,t\n"a\nlong note",1,2,1650000000\n\n"b",1,3,1650000001\nc,x,4,1650000002\n',
        encoding="utf-8",
    )
    cfg = {"user_col": "uid", "item_col": "iid", "time_col": "t", "time_unit": "s"}
    with pytest.raises(DataError) as err:
        load(path, **cfg)
    assert (err.value.row, err.value.column) == (6, "uid")
    path.write_text(path.read_text().replace("c,x", "c,2"), encoding="utf-8")
    frame, report = load(path, **cfg)
    assert report.format == "csv" and list(frame["timestamp"]) == [T0, T0 + 1000, T0 + 2000]


def test_generic_csv_with_separator_and_decimal_seconds(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text("who;what;when\n7;70;1650000000.25\n8;80; 1650000001 \n", encoding="utf-8")
    frame, _ = load(path, user_col="who", item_col="what", time_col="when", time_unit="s", sep=";")
    assert list(frame["timestamp"]) == [T0 + 250, T0 + 1000]


def test_sequence_form_has_positions_and_no_time(tmp_path):
    path = tmp_path / "MicroLens-100k_pairs.tsv"
    path.write_text("1\t5 6 7\n2\t8\n\n3\t9 5\n", encoding="utf-8")
    frame, report = load(path)
    assert report.format == "microlens_seq" and report.has_time is False
    assert "no timestamps" in report.summary()
    got = frame.sort_values(["user_id", "timestamp"])[["user_id", "item_id", "timestamp"]].to_numpy().tolist()
    assert got == [[1, 5, 0], [1, 6, 1], [1, 7, 2], [2, 8, 0], [3, 9, 0], [3, 5, 1]]


@pytest.mark.parametrize(
    ("text", "line", "column", "needle"),
    [
        ("1\t5 6\n2\t8 x9 4\n", 2, "item", "got 'x9'"),
        ("1\t5 6\nu2\t8\n", 2, "user", "got 'u2'"),
        ("1\t5 6\n2\t8\n\n1\t4\n", 4, "user", "user 1 already has a sequence on line 1"),
        ("1\t5 6\n2 8\n", 2, "user", "expected 'user<TAB>item item …'"),
    ],
)
def test_sequence_form_errors_are_located(tmp_path, text, line, column, needle):
    path = tmp_path / "seq.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load(path, format="microlens_seq")
    assert (err.value.row, err.value.column) == (line, column) and needle in str(err.value)


def test_parquet_typed_and_text_columns(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "u": [2, 1],
            "i": ["7", "8"],
            "t": pd.to_datetime(["2022-04-15 05:20:01", "2022-04-15 05:20:00"], utc=True),
        }
    ).to_parquet(path)
    frame, report = load(path, user_col="u", item_col="i", time_col="t")
    assert report.format == "parquet" and frame.to_numpy().tolist() == [[1, 8, T0], [2, 7, T0 + 1000]]
    pd.DataFrame({"u": [1, 2], "i": [3.0, 4.5], "t": [T0, T0]}).to_parquet(path)
    with pytest.raises(
        DataError, match=r"log.parquet row 2, column 'i': expected a non-negative integer id, got 4.5"
    ):
        load(path, user_col="u", item_col="i", time_col="t")
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['user', 'item', 'timestamp'\]; found \['u', 'i', 't'\]"
    ):
        load(path)


def test_config_is_strict_and_errors_survive_pickling(tmp_path):
    with pytest.raises(pydantic.ValidationError):
        InteractionsConfig(path="x.csv", time_units="s")
    with pytest.raises(pydantic.ValidationError):
        InteractionsConfig(path="x.csv", min_year=2050, max_year=2000)
    cfg = InteractionsConfig(path="x.csv")
    with pytest.raises(pydantic.ValidationError):
        cfg.path = "y.csv"
    err = DataError("/data/MicroLens-100k_pairs.csv", "bad", row=3, column="item")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and (back.path, back.row, back.column) == (err.path, 3, "item")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.csv")
