"""Reading interaction files: the accepted formats (MicroLens pairs and sequences, CSV, Parquet), their
columns and values, each problem a ``DataError`` naming the file, the line as an editor shows it
(header = line 1) and the column. ``train.interactions`` turns what this reads into the canonical frame.

Files are read as text (``dtype=str``) so nothing is silently coerced; validation and conversion are
vectorised (MicroLens-100K, 719k rows, loads in about a second).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LISTED = 10  # how many line numbers / examples a report keeps


class DataError(ValueError):
    """Bad input data, located: ``path``, ``row`` (1-based line, header = 1; or None), ``column``."""

    def __init__(
        self,
        path: str | Path,
        message: str,
        row: int | None = None,
        column: str | None = None,
        row_label: str = "line",
    ) -> None:
        self.path = str(path)
        self.row = row
        self.column = column
        self.message = message
        # Parquet has rows, not lines: the label keeps the message honest about what the number counts.
        self.row_label = row_label
        super().__init__(self._render())

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # Ray ships task errors by pickling; the default would call __init__ with the rendered text only.
        return (type(self), (self.path, self.message, self.row, self.column, self.row_label))

    def _render(self) -> str:
        where = Path(self.path).name
        if self.row is not None:
            where += f" {self.row_label} {self.row}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"


class InteractionsConfig(BaseModel):
    """Where an interaction log is and how to read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        description="Interaction file: MicroLens pairs CSV, MicroLens sequence TSV, CSV or Parquet."
    )
    format: Literal["auto", "microlens_pairs", "microlens_seq", "csv", "parquet"] = Field(
        "auto",
        description="File format; 'auto' decides by extension (.parquet/.pq, .tsv, other = CSV) and header.",
    )
    user_col: str = Field("user", description="Column holding integer user ids (pairs, CSV, Parquet).")
    item_col: str = Field("item", description="Column holding integer item ids (pairs, CSV, Parquet).")
    time_col: str = Field("timestamp", description="Column holding epoch timestamps (pairs, CSV, Parquet).")
    time_unit: Literal["ms", "s"] = Field(
        "ms", description="Unit of the time column: epoch milliseconds or seconds (converted to ms)."
    )
    sep: str | None = Field(
        None, description="CSV field separator; None = ',' (or TAB for a .tsv that is not the sequence form)."
    )
    duplicates: Literal["drop", "error"] = Field(
        "drop", description="Repeated (user, item, timestamp) rows: report and drop them, or raise."
    )
    unknown_items: Literal["drop", "keep", "error"] = Field(
        "drop", description="Interactions whose item is not in the catalog (when one is given)."
    )
    min_year: int = Field(
        2000, description="Earliest plausible year of a timestamp (UTC); older ones are errors."
    )
    max_year: int = Field(2100, description="Latest plausible year of a timestamp (UTC), inclusive.")

    @model_validator(mode="after")
    def _check_years(self) -> InteractionsConfig:
        if not 1970 <= self.min_year <= self.max_year:
            raise ValueError(f"need 1970 <= min_year <= max_year, got {self.min_year}..{self.max_year}")
        return self


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (for run manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(cfg: InteractionsConfig, path: Path) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    first = _first_line(path)
    if suffix == ".tsv" and re.fullmatch(r"\s*\d+\t[\d \t]*", first):
        return "microlens_seq"
    sep = cfg.sep or ("\t" if suffix == ".tsv" else ",")
    header = [h.strip() for h in first.split(sep)]
    return "microlens_pairs" if header == ["user", "item", "timestamp"] else "csv"


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.rstrip("\r\n")
    return ""


def read_columns(
    cfg: InteractionsConfig, path: Path, fmt: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Pairs / CSV / Parquet: (users, items, times_ms, line-or-row numbers, sha256)."""
    cols = [cfg.user_col, cfg.item_col, cfg.time_col]
    if fmt == "parquet":
        table, sha, label = _read_parquet(path, cols), file_sha256(path), "row"
        lines = np.arange(1, len(table) + 1, dtype=np.int64)
    else:
        data = path.read_bytes()
        sha, label = hashlib.sha256(data).hexdigest(), "line"
        sep = (
            "," if fmt == "microlens_pairs" else (cfg.sep or ("\t" if path.suffix.lower() == ".tsv" else ","))
        )
        table = _read_csv_text(path, data, sep, cols)
        lines = _record_lines(data, len(table), sep)
        blank = (table == "").all(axis=1).to_numpy()  # blank lines are not records
        if blank.any():
            table, lines = table[~blank].reset_index(drop=True), lines[~blank]
    users = _as_ids(table[cfg.user_col], lines, path, cfg.user_col, label)
    items = _as_ids(table[cfg.item_col], lines, path, cfg.item_col, label)
    times = _as_times_ms(table[cfg.time_col], lines, path, cfg, label)
    return users, items, times, lines, sha


def _missing_columns(path: Path, found: list[str], expected: list[str], row: int | None) -> DataError:
    missing = [c for c in expected if c not in found]
    header_hint = ", and check that the first line is a header" if row is not None else ""
    return DataError(
        path,
        f"missing column(s) {missing}; found {found}; expected {expected} "
        f"(set user_col / item_col / time_col{header_hint})",
        row=row,
        column=missing[0],
    )


def _read_csv_text(path: Path, data: bytes, sep: str, cols: list[str]) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():
            # index_col=False stops pandas from turning a first column into the index when a row is
            # longer than the header; it then only warns and truncates, which must not pass silently.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # dtype=str + keep_default_na=False: every cell arrives exactly as written ("NA" stays "NA").
            table = pd.read_csv(
                io.BytesIO(data), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                index_col=False, encoding="utf-8-sig",
            )  # fmt: skip
    except pd.errors.EmptyDataError as e:
        raise DataError(path, f"empty file: expected a header line with columns {cols}") from e
    except pd.errors.ParserWarning as e:
        line, n_fields, n_header = _first_long_record(data, sep)
        raise DataError(path, f"expected {n_header} fields as in the header, saw {n_fields}", row=line) from e
    except pd.errors.ParserError as e:
        fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if fields:
            n_header, line, n_fields = (int(x) for x in fields.groups())
            raise DataError(
                path, f"expected {n_header} fields as in the header, saw {n_fields}", row=line
            ) from e
        raise DataError(path, f"malformed CSV: {e}".strip()) from e
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text: {e}") from e
    table.columns = [str(c).strip() for c in table.columns]
    if any(c not in table.columns for c in cols):
        raise _missing_columns(path, list(table.columns), cols, row=1)
    return table[cols]


def _first_long_record(data: bytes, sep: str) -> tuple[int | None, int, int]:
    """(start line, field count, header field count) of the first record longer than the header."""
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=sep)
    n_header, previous_end = len(next(reader, [])), reader.line_num
    for record in reader:
        if len(record) > n_header:
            return previous_end + 1, len(record), n_header
        previous_end = reader.line_num
    return None, n_header + 1, n_header


def _record_lines(data: bytes, n_records: int, sep: str) -> np.ndarray:
    """The editor line where each data record starts (header = line 1)."""
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    if n_lines == n_records + 1:  # one record per line: the usual case, no scan needed
        return np.arange(2, n_records + 2, dtype=np.int64)
    # Quoted fields span lines: walk the records once to find where each starts.
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=sep)
    starts, previous_end = [], 0
    for _ in reader:
        starts.append(previous_end + 1)
        previous_end = reader.line_num
    return np.asarray(starts[1 : n_records + 1], dtype=np.int64)


def _read_parquet(path: Path, cols: list[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(path, f"not a readable Parquet file: {e}") from e
    if any(c not in names for c in cols):
        raise _missing_columns(path, names, cols, row=None)
    return pd.read_parquet(path, columns=cols)


def _shown(value: object) -> str:
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return "<missing>"
    return repr(value) if isinstance(value, str) else str(value)


def _first_bad(
    bad: np.ndarray, values: pd.Series, lines: np.ndarray, path: Path, column: str, label: str, expected: str
) -> DataError:
    first = int(np.flatnonzero(bad)[0])
    n_bad = int(bad.sum())
    more = f" ({n_bad:,} bad values in this column)" if n_bad > 1 else ""
    return DataError(
        path, f"{expected}, got {_shown(values.iloc[first])}{more}", int(lines[first]), column, label
    )


def _arrow_text(values: pd.Series) -> pa.Array:
    return pa.array(values.astype("str"), type=pa.large_string(), from_pandas=True)


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    """Full-match mask, vectorised in Arrow (pandas' str.fullmatch loops in Python here); null = False."""
    return pc.match_substring_regex(text, f"^(?:{pattern})$").fill_null(False).to_numpy(zero_copy_only=False)


def _parse(text: pa.Array, to: pa.DataType) -> np.ndarray:
    return pc.cast(pc.utf8_trim_whitespace(text), to).to_numpy(zero_copy_only=False)


def _as_ids(values: pd.Series, lines: np.ndarray, path: Path, column: str, label: str) -> np.ndarray:
    """Non-negative integer ids from text (or from typed Parquet columns), else DataError."""
    expected = "expected a non-negative integer id"
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        raise DataError(path, f"{expected}, got a column of type {values.dtype}", column=column)
    if pd.api.types.is_numeric_dtype(values):
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(arr) | (arr < 0) | (arr != np.floor(arr)) | (arr >= 2.0**62)
        if bad.any():
            raise _first_bad(bad, values, lines, path, column, label, expected)
        return values.to_numpy(dtype=np.int64)
    text = _arrow_text(values)
    # At most 18 digits so every accepted id fits int64: "12a", "3.5", "-1" and "" all fail here.
    bad = ~_matches(text, r"\s*\d{1,18}\s*")
    if bad.any():
        raise _first_bad(bad, values, lines, path, column, label, expected)
    return _parse(text, pa.int64())


def _as_times_ms(
    values: pd.Series, lines: np.ndarray, path: Path, cfg: InteractionsConfig, label: str
) -> np.ndarray:
    """Epoch ms from text or typed columns, checked for sign, plausibility and a seconds/ms mix-up."""
    column, unit = cfg.time_col, cfg.time_unit
    word = "milliseconds" if unit == "ms" else "seconds"
    expected = f"expected epoch {word}"
    if pd.api.types.is_datetime64_any_dtype(values):  # typed Parquet timestamps carry their own unit
        stamps = values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
        if stamps.isna().any():
            raise _first_bad(stamps.isna().to_numpy(), values, lines, path, column, label, expected)
        ms = raw = stamps.dt.as_unit("ms").to_numpy().astype(np.int64)
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(arr) | ((arr != np.floor(arr)) if unit == "ms" else np.zeros(len(arr), bool))
        if bad.any():
            raise _first_bad(bad, values, lines, path, column, label, expected)
        raw = values.to_numpy(dtype=np.int64) if unit == "ms" else arr
        ms = raw if unit == "ms" else np.round(arr * 1000).astype(np.int64)
    else:
        text = _arrow_text(values)
        pattern = r"\s*-?\d{1,18}\s*" if unit == "ms" else r"\s*-?\d{1,15}(?:\.\d*)?\s*"
        bad = ~_matches(text, pattern)
        if bad.any():
            raise _first_bad(bad, values, lines, path, column, label, expected)
        if unit == "ms":
            ms = raw = _parse(text, pa.int64())
        else:
            raw = _parse(text, pa.float64())
            ms = np.round(raw * 1000).astype(np.int64)

    negative = ms < 0
    if negative.any():
        raise _first_bad(negative, values, lines, path, column, label, f"expected epoch {word} >= 0")
    lo = int(pd.Timestamp(year=cfg.min_year, month=1, day=1).value // 10**6)
    hi = int(pd.Timestamp(year=cfg.max_year + 1, month=1, day=1).value // 10**6)
    outside = (ms < lo) | (ms >= hi)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        value, as_ms = values.iloc[first], int(ms[first])
        when = str(np.datetime64(as_ms, "ms"))[:10]
        hint = ""
        if unit == "ms" and lo <= as_ms * 1000 < hi:
            hint = "; it looks like epoch seconds: set time_unit: s"
        elif unit == "s" and lo <= as_ms // 1000 < hi:
            hint = "; it looks like epoch milliseconds: set time_unit: ms"
        elif unit == "ms" and lo <= as_ms // 1000 < hi:
            hint = "; it looks like epoch microseconds: convert the column to milliseconds"
        n_out = int(outside.sum())
        raise DataError(
            path,
            f"{expected} between {cfg.min_year} and {cfg.max_year}, got {value} ({when} as epoch {word})"
            f"{hint} ({n_out:,} of {len(ms):,} values out of range)",
            int(lines[first]),
            column,
            label,
        )
    return ms


def read_seq(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MicroLens sequence form: one ``user<TAB>item item …`` line per user, items in time order."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text: {e}") from e
    user_tokens: list[str] = []
    user_lines: list[int] = []
    item_tokens: list[str] = []
    counts: list[int] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        user, tab, rest = line.partition("\t")
        if not tab:
            raise DataError(path, f"expected 'user<TAB>item item …', got {line[:60]!r}", number, "user")
        tokens = rest.split()
        user_tokens.append(user)
        user_lines.append(number)
        item_tokens.extend(tokens)
        counts.append(len(tokens))
    user_lines_arr = np.asarray(user_lines, dtype=np.int64)
    users = _as_ids(pd.Series(user_tokens, dtype="str"), user_lines_arr, path, "user", "line")
    _, first_at = np.unique(users, return_index=True)
    if len(first_at) < len(users):
        repeat = int(np.setdiff1d(np.arange(len(users)), first_at)[0])
        earlier = int(user_lines_arr[np.flatnonzero(users == users[repeat])[0]])
        raise DataError(
            path,
            f"user {users[repeat]} already has a sequence on line {earlier}; the sequence form has one line per user",
            int(user_lines_arr[repeat]),
            "user",
        )
    count_arr = np.asarray(counts, dtype=np.int64)
    item_lines = np.repeat(user_lines_arr, count_arr)
    # An item's column is "item"; its line is its user's line (the message shows the bad token itself).
    items = _as_ids(pd.Series(item_tokens, dtype="str"), item_lines, path, "item", "line")
    starts = np.cumsum(count_arr) - count_arr
    positions = np.arange(len(items), dtype=np.int64) - np.repeat(starts, count_arr)
    return np.repeat(users, count_arr), items, positions, item_lines
