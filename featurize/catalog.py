"""The item catalog: which items exist, their titles, and where their video files are.

``load_catalog`` returns ``item_id:int64, title:str, video_path:str|None`` sorted by item id. Items
come from the titles file plus any ``<item>.<ext>`` video in the folder that has no title (title "").
A missing video is not an error (the featurize graph turns it into a ``status=error`` row later);
it is counted in ``CatalogReport``.

Titles file: a CSV with header ``item,title`` (names configurable). The file MicroLens distributes
(``MicroLens-100k_title_en.csv``) has no header and leaves some titles with commas unquoted, so a
file whose first field is an integer is read as ``item,title`` with everything after the first
comma being the title; quoted titles (commas, quotes, line breaks) are read as normal CSV.

featurize must not import train, so ``CatalogError`` mirrors ``train.interactions.DataError``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from featurize.messages import show

log = logging.getLogger(__name__)
MAX_LISTED = 10  # examples kept in a report
_INT = re.compile(r"\s*\d{1,18}\s*")


class CatalogError(ValueError):
    """Bad catalog input, located: ``path``, ``row`` (1-based line, header = 1; or None), ``column``."""

    def __init__(
        self, path: str | Path, message: str, row: int | None = None, column: str | None = None
    ) -> None:
        self.path = str(path)
        self.row = row
        self.column = column
        self.message = message
        where = Path(self.path).name
        if row is not None:
            where += f" line {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # Ray ships task errors by pickling; the default would call __init__ with the rendered text only.
        return (type(self), (self.path, self.message, self.row, self.column))


class CatalogConfig(BaseModel):
    """Where the catalog's titles and videos are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    titles: str | None = Field(
        None, description="Titles CSV (`item,title`; MicroLens' headerless form is accepted too), or None."
    )
    videos_dir: str | None = Field(None, description="Folder of `<item>.<video_ext>` files, or None.")
    video_ext: str = Field("mp4", description="Video file extension, without the dot.")
    item_col: str = Field("item", description="Item id column of the titles file.")
    title_col: str = Field("title", description="Title column of the titles file.")

    @model_validator(mode="after")
    def _need_a_source(self) -> CatalogConfig:
        if self.titles is None and self.videos_dir is None:
            raise ValueError("a catalog needs `titles`, `videos_dir` or both")
        if not self.video_ext or self.video_ext.startswith("."):
            raise ValueError(f"video_ext is the extension without a dot, e.g. 'mp4'; got {self.video_ext!r}")
        return self


@dataclass
class CatalogReport:
    """Counts and examples of what the catalog is missing; nothing here stopped the load."""

    n_items: int = 0
    n_titled: int = 0  # items listed in the titles file
    n_videos: int = 0  # items with a video file
    n_missing_videos: int = 0  # titled items without a video file (only when videos_dir is set)
    missing_video_examples: list[int] = field(default_factory=list)
    n_untitled_videos: int = 0  # videos whose item is not in the titles file (title "")
    untitled_video_examples: list[int] = field(default_factory=list)
    unrecognised_files: list[str] = field(default_factory=list)  # `.ext` files whose name is not an id
    headerless_titles: bool = False

    def summary(self) -> str:
        """A few human-readable lines for logs and manifests."""
        lines = [f"catalog: {self.n_items:,} items, {self.n_titled:,} titled, {self.n_videos:,} with video"]
        if self.n_missing_videos:
            lines.append(
                f"  {self.n_missing_videos:,} without a video file, e.g. {self.missing_video_examples}"
            )
        if self.n_untitled_videos:
            lines.append(
                f"  {self.n_untitled_videos:,} videos without a title, e.g. {self.untitled_video_examples}"
            )
        if self.unrecognised_files:
            lines.append(f"  ignored files not named <item id>: {self.unrecognised_files}")
        return "\n".join(lines)


def load_catalog(cfg: CatalogConfig) -> pd.DataFrame:
    """The catalog frame (see module docstring); the report is logged. Raises ``CatalogError``."""
    catalog, report = load_catalog_with_report(cfg)
    log.info("%s", report.summary())
    return catalog


def load_catalog_with_report(cfg: CatalogConfig) -> tuple[pd.DataFrame, CatalogReport]:
    """``load_catalog`` plus the ``CatalogReport`` of missing videos, untitled videos and ignored files."""
    report = CatalogReport()
    titles: dict[int, str] = {}
    if cfg.titles is not None:
        titles, report.headerless_titles = _read_titles(cfg)
    videos: dict[int, str] = {}
    if cfg.videos_dir is not None:
        videos, report.unrecognised_files = _scan_videos(Path(cfg.videos_dir), cfg.video_ext)

    ids = np.union1d(np.fromiter(titles, np.int64, len(titles)), np.fromiter(videos, np.int64, len(videos)))
    catalog = pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "title": pd.Series([titles.get(int(i), "") for i in ids], dtype="str"),
            # object dtype keeps None as None (a str column would turn it into NaN).
            "video_path": pd.Series([videos.get(int(i)) for i in ids], dtype=object),
        }
    )
    report.n_items, report.n_titled, report.n_videos = len(catalog), len(titles), len(videos)
    if cfg.videos_dir is not None:
        missing = [i for i in titles if i not in videos]
        untitled = [i for i in videos if i not in titles] if cfg.titles is not None else []
        report.n_missing_videos, report.missing_video_examples = len(missing), sorted(missing)[:MAX_LISTED]
        report.n_untitled_videos, report.untitled_video_examples = (
            len(untitled),
            sorted(untitled)[:MAX_LISTED],
        )
    return catalog, report


def _read_titles(cfg: CatalogConfig) -> tuple[dict[int, str], bool]:
    """{item: title} and whether the file had no header (MicroLens' own form)."""
    path = Path(cfg.titles or "")
    if not path.is_file():
        raise FileNotFoundError(f"titles file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CatalogError(path, f"not UTF-8 text: {e}") from e
    records = _records(text, path)
    if not records:
        raise CatalogError(
            path, f"empty file: expected a header line with columns [{cfg.item_col!r}, {cfg.title_col!r}]"
        )
    first_line, header = records[0]
    names = [h.strip() for h in header]
    if cfg.item_col in names and cfg.title_col in names:
        item_at, title_at, body, headerless = (
            names.index(cfg.item_col),
            names.index(cfg.title_col),
            records[1:],
            False,
        )
    elif _INT.fullmatch(header[0]) and len(header) >= 2:
        item_at, title_at, body, headerless = 0, 1, records, True
    else:
        expected = [cfg.item_col, cfg.title_col]
        missing = [c for c in expected if c not in names]
        raise CatalogError(
            path,
            f"missing column(s) {show(missing)}; found {show(names)}; expected {show(expected)} "
            "(set item_col / title_col)",
            row=first_line,
            column=missing[0],
        )
    width = 2 if headerless else len(names)
    titles: dict[int, str] = {}
    where: dict[int, int] = {}
    for line, fields in body:
        if len(fields) > width and title_at == width - 1:
            # An unquoted title with commas splits into several fields: they are all the title.
            fields = [*fields[:title_at], ",".join(fields[title_at:])]
        elif len(fields) > width:
            raise CatalogError(path, f"expected {width} fields as in the header, saw {len(fields)}", row=line)
        raw = fields[item_at] if item_at < len(fields) else ""
        if not _INT.fullmatch(raw):
            raise CatalogError(
                path, f"expected a non-negative integer item id, got {show(raw)}", line, cfg.item_col
            )
        item = int(raw)
        if item in where:
            raise CatalogError(
                path, f"duplicate item id {item}, first listed on line {where[item]}", line, cfg.item_col
            )
        where[item] = line
        titles[item] = fields[title_at].strip() if title_at < len(fields) else ""
    return titles, headerless


def _records(text: str, path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank CSV records with the editor line each starts on (quoted fields may span lines).

    Raises CatalogError naming the line for a quote left open (the csv module would otherwise read the
    rest of the file into one title) and for a field over the csv module's 131,072-character limit.
    """
    _check_quotes(text, path)
    reader = csv.reader(io.StringIO(text, newline=""))
    out: list[tuple[int, list[str]]] = []
    previous_end = 0
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                out.append((previous_end + 1, fields))
            previous_end = reader.line_num
    except csv.Error as e:
        raise CatalogError(path, _csv_problem(e), row=previous_end + 1) from None
    return out


def _check_quotes(text: str, path: Path) -> None:
    """Raise CatalogError when a quoted field is still open at the end of the file.

    A strict pass finds it ("unexpected end of data"); its other complaints (text after a closing
    quote) are left to the lenient pass, which reads them as the titles MicroLens means.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise CatalogError(
                path,
                "unterminated quote: a quote opened in the record starting on this line is never closed, "
                f"so the record would run to the end of the file (line {reader.line_num}); close or "
                "remove the quote",
                row=start,
            ) from None
        if "field larger than field limit" in str(e):
            raise CatalogError(path, _csv_problem(e), row=start) from None


def _csv_problem(e: csv.Error) -> str:
    if "field larger than field limit" in str(e):
        return (
            f"a field is longer than {csv.field_size_limit():,} characters (the csv module's limit); "
            "is a quote left open, or is this not a titles file?"
        )
    return f"not valid CSV: {e}"


def _scan_videos(folder: Path, ext: str) -> tuple[dict[int, str], list[str]]:
    """{item: absolute path} for `<item>.<ext>` files, and the names of `.ext` files that are not ids."""
    if not folder.is_dir():
        raise CatalogError(folder, "videos_dir is not a folder")
    suffix = "." + ext.lower()
    base = folder.absolute()
    videos: dict[int, str] = {}
    unrecognised: list[str] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            stem, dot_ext = os.path.splitext(entry.name)
            if dot_ext.lower() != suffix or not entry.is_file():
                continue
            if not _INT.fullmatch(stem) or stem != stem.strip():
                unrecognised.append(entry.name)
                continue
            item = int(stem)
            if item in videos:
                raise CatalogError(
                    folder,
                    f"{show(entry.name)} and {show(Path(videos[item]).name)} are both videos of item {item}",
                )
            videos[item] = str(base / entry.name)
    return videos, unrecognised[:MAX_LISTED]
