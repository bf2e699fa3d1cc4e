"""Catalog loading: titles (quoted, headerless MicroLens form), video folders, and located errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydantic
import pytest

from featurize.catalog import CatalogConfig, CatalogError, load_catalog, load_catalog_with_report

TITLES = "MicroLens-100k_title_en.csv"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("1.mp4", "3.mp4", "7.mp4", "cover.mp4", "2.jpg"):
        (folder / name).write_bytes(b"\x00")
    return folder


def test_titles_and_videos_merge(tmp_path, videos):
    titles = write(
        tmp_path / TITLES,
        'item,title\n3,"Cats, dogs and ""friends"""\n1,plain title\n\n2,"two\nlines"\n',
    )
    catalog, report = load_catalog_with_report(CatalogConfig(titles=str(titles), videos_dir=str(videos)))
    assert list(catalog.columns) == ["item_id", "title", "video_path"]
    assert catalog["item_id"].dtype == np.int64 and list(catalog["item_id"]) == [1, 2, 3, 7]
    assert list(catalog["title"]) == ["plain title", "two\nlines", 'Cats, dogs and "friends"', ""]
    paths = list(catalog["video_path"])
    assert paths[1] is None  # missing video: None, not NaN
    assert paths[0] == str(videos.absolute() / "1.mp4") and Path(paths[3]).is_absolute()
    assert (report.n_items, report.n_titled, report.n_videos) == (4, 3, 3)
    assert (report.n_missing_videos, report.missing_video_examples) == (1, [2])
    assert (report.n_untitled_videos, report.untitled_video_examples) == (1, [7])
    assert report.unrecognised_files == ["cover.mp4"]
    assert "without a video file" in report.summary()
    titles_only = load_catalog(CatalogConfig(titles=str(titles)))
    assert list(titles_only["item_id"]) == [1, 2, 3] and list(titles_only["video_path"]) == [None] * 3


def test_headerless_microlens_titles_with_unquoted_commas(tmp_path):
    titles = write(tmp_path / TITLES, '5,Hello, world, again\n6,"quoted, title"\n9,\n')
    catalog, report = load_catalog_with_report(CatalogConfig(titles=str(titles)))
    assert report.headerless_titles
    assert catalog.to_numpy().tolist() == [
        [5, "Hello, world, again", None],
        [6, "quoted, title", None],
        [9, "", None],
    ]


def test_videos_only(videos):
    catalog = load_catalog(CatalogConfig(videos_dir=str(videos)))
    assert list(catalog["item_id"]) == [1, 3, 7] and set(catalog["title"]) == {""}


@pytest.mark.parametrize(
    ("text", "line", "column", "needle"),
    [
        ("id,name\n1,a\n", 1, "item", "missing column(s) ['item', 'title']; found ['id', 'name']"),
        ("item,title\n1,a\n2,b\n3.5,c\n", 4, "item", "expected a non-negative integer item id, got '3.5'"),
        ("item,title\n1,a\n\n12a,b\n", 4, "item", "got '12a'"),
        ("item,title\n1,a\n2,b\n1,c\n", 4, "item", "duplicate item id 1, first listed on line 2"),
        ('item,title\n1,"a\nb"\n2,b\n1,c\n', 5, "item", "first listed on line 2"),
        ("title,item,extra\nx,1,e\ny,2,e,f\n", 3, None, "expected 3 fields as in the header, saw 4"),
    ],
)
def test_bad_titles_are_located(tmp_path, text, line, column, needle):
    with pytest.raises(CatalogError) as err:
        load_catalog(CatalogConfig(titles=str(write(tmp_path / TITLES, text))))
    assert (err.value.row, err.value.column) == (line, column)
    assert str(err.value).startswith(f"{TITLES} line {line}")
    assert needle in str(err.value)


def test_custom_columns(tmp_path):
    titles = write(tmp_path / "meta.csv", "name,vid,views\nfirst,10,5\nsecond,11,7\n")
    catalog = load_catalog(CatalogConfig(titles=str(titles), item_col="vid", title_col="name"))
    assert catalog[["item_id", "title"]].to_numpy().tolist() == [[10, "first"], [11, "second"]]


def test_two_files_for_one_item_is_an_error(videos):
    (videos / "07.mp4").write_bytes(b"\x00")
    with pytest.raises(CatalogError, match="are both videos of item 7"):
        load_catalog(CatalogConfig(videos_dir=str(videos)))


def test_config_and_missing_inputs(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="needs `titles`, `videos_dir` or both"):
        CatalogConfig()
    with pytest.raises(pydantic.ValidationError):
        CatalogConfig(titles="t.csv", video_extension="mp4")
    with pytest.raises(pydantic.ValidationError, match="without a dot"):
        CatalogConfig(videos_dir="v", video_ext=".mp4")
    with pytest.raises(FileNotFoundError):
        load_catalog(CatalogConfig(titles=str(tmp_path / "absent.csv")))
    with pytest.raises(CatalogError, match="videos_dir is not a folder"):
        load_catalog(CatalogConfig(videos_dir=str(tmp_path / "absent")))
    err = CatalogError("/x/t.csv", "bad", row=2, column="item")
    assert str(pickle.loads(pickle.dumps(err))) == str(err) == "t.csv line 2, column 'item': bad"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            'item,title\n1,a\n2,"an open quote\n3,c\n4,d\n',
            3,
            "unterminated quote: a quote opened in the record",
        ),
        ("item,title\n1,a\n2," + "x" * 140_000 + "\n3,c\n", 3, "a field is longer than 131,072 characters"),
        ('2,"headerless and open\n3,c\n', 1, "unterminated quote"),
    ],
)
def test_unterminated_quote_and_huge_field_name_the_line(tmp_path, text, line, needle):
    with pytest.raises(CatalogError) as err:
        load_catalog(CatalogConfig(titles=str(write(tmp_path / TITLES, text))))
    assert err.value.row == line and str(err.value).startswith(f"{TITLES} line {line}: {needle}")
    assert len(str(err.value)) < 400


def test_a_quote_inside_a_title_is_still_read_leniently(tmp_path):
    titles = write(tmp_path / TITLES, 'item,title\n1,"quoted" then more\n2,say "hi"\n')
    assert load_catalog(CatalogConfig(titles=str(titles)))["title"].tolist() == [
        "quoted then more",
        'say "hi"',
    ]


@pytest.mark.parametrize(
    "text",
    ["item,title\n" + "9" * 5000 + "x,a\n", "id," + "n" * 5000 + "\n1,a\n"],
)
def test_error_messages_truncate_the_offending_value(tmp_path, text):
    with pytest.raises(CatalogError) as err:
        load_catalog(CatalogConfig(titles=str(write(tmp_path / TITLES, text))))
    assert len(str(err.value)) < 600 and "chars)" in str(err.value)
