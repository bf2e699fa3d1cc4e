"""Caption and feature stores: schema, atomic idempotent parts, dedup, resume and config refusal."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from featurize.stores import (
    CaptionStore,
    FeatureStore,
    StoreConfigError,
    StoreError,
    config_hash,
)


def _captions(ids, status="ok"):
    return pd.DataFrame(
        {
            "item_id": ids,
            "text": [f"text {i}" if status == "ok" else None for i in ids],
            "status": status,
            "error": "" if status == "ok" else "decode: bad file",
            "model": "tiny:qwen2.5-vl",
        }
    )


def test_caption_store_schema_and_plain_pandas_read(tmp_path):
    store = CaptionStore(tmp_path, "tiny-vlm")
    store.open_for("h1", {"identity": {"model": "tiny:qwen2.5-vl"}})
    store.write_part(_captions([3, 1]))
    store.write_part(_captions([2], status="error"))
    # A half-written temp part from a killed writer is invisible to every reader.
    (store.path / ".part-deadbeef.parquet.123-abc.tmp").write_bytes(b"PAR1garbage")
    schema = pq.read_schema(store.parts()[0])
    assert [(f.name, str(f.type)) for f in schema] == [
        ("item_id", "int64"),
        ("text", "string"),
        ("status", "string"),
        ("error", "string"),
        ("model", "string"),
    ]
    plain = pd.read_parquet(store.path)
    assert sorted(plain["item_id"]) == [1, 2, 3]
    df = store.read()
    assert df["item_id"].tolist() == [1, 2, 3]
    assert df["status"].tolist() == ["ok", "error", "ok"]
    assert df.loc[1, "error"] == "decode: bad file" and pd.isna(df.loc[1, "text"])
    assert store.done_ids() == {1, 2, 3}
    assert store.done_ids(retry_errors=True) == {1, 3}
    assert store.update_counts() == {"ok": 2, "error": 1}
    assert store.manifest()["counts"] == {"ok": 2, "error": 1}


def test_part_names_are_idempotent_and_last_part_wins(tmp_path):
    store = CaptionStore(tmp_path, "c")
    first = store.write_part(_captions([5, 4], status="error"))
    again = store.write_part(_captions([4, 5], status="error"))
    assert first == again and len(store.parts()) == 1
    os.utime(first, ns=(1, 1))  # make the error part clearly older than the retry below
    store.write_part(_captions([4]))
    df = store.read()
    assert df.set_index("item_id")["status"].to_dict() == {4: "ok", 5: "error"}


def test_caption_store_rejects_bad_rows_naming_row_and_column(tmp_path):
    store = CaptionStore(tmp_path, "c")
    bad = _captions([1, 2])
    bad.loc[1, "status"] = "fine"
    with pytest.raises(StoreError, match=r"row 1 column 'status' is 'fine'"):
        store.write_part(bad)
    with pytest.raises(StoreError, match="appears twice"):
        store.write_part(_captions([7, 7]))
    with pytest.raises(StoreError, match="lack column 'model'"):
        store.write_part(_captions([1]).drop(columns="model"))
    with pytest.raises(StoreError, match="unexpected columns"):
        store.write_part(_captions([1]).assign(colour="red"))
    noerr = _captions([1], status="error").assign(error="")
    with pytest.raises(StoreError, match="status 'error' but no error"):
        store.write_part(noerr)
    assert store.parts() == []


def test_audio_caption_store_keeps_documented_extra_columns(tmp_path):
    store = CaptionStore(tmp_path, "asr-events")
    store.write_part(_captions([1]).assign(transcript="hello", language="en", events='[{"label": "music"}]'))
    row = store.read().iloc[0]
    assert (row["transcript"], row["language"]) == ("hello", "en")


def test_feature_store_null_vectors_and_matrix(tmp_path):
    store = FeatureStore(tmp_path, "title.minilm")
    store.open_for("h", {"identity": {}})
    rows = pd.DataFrame(
        {
            "item_id": [10, 11, 12],
            "vector": [np.ones(4, np.float32), None, np.arange(4, dtype=np.float32)],
            "status": ["ok", "error", "ok"],
            "error": ["", "caption: empty", ""],
        }
    )
    store.write_part(rows)
    schema = pq.read_schema(store.parts()[0])
    assert str(schema.field("vector").type) == "fixed_size_list<element: float>[4]"
    assert store.manifest()["dim"] == 4
    df = store.read()
    assert df.loc[1, "vector"] is None
    mat, mask = store.read_matrix([12, 99, 11, 10])
    assert mat.dtype == np.float32 and mat.shape == (4, 4)
    assert mask.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(mat[0], np.arange(4))
    np.testing.assert_array_equal(mat[1], 0)
    with pytest.raises(StoreError, match="width 3, the store holds width 4"):
        store.write_part(rows.assign(vector=[np.ones(3, np.float32), None, np.ones(3, np.float32)]))
    with pytest.raises(StoreError, match="non-finite"):
        store.write_part(
            pd.DataFrame({"item_id": [1], "vector": [np.full(4, np.nan)], "status": "ok", "error": ""})
        )


def test_open_for_refuses_a_different_config_unless_overwrite(tmp_path):
    m1 = {"identity": {"model": "tiny:a", "prompt": {"version": 1}}}
    m2 = {"identity": {"model": "tiny:a", "prompt": {"version": 2}}}
    h1, h2 = config_hash(m1["identity"]), config_hash(m2["identity"])
    store = CaptionStore(tmp_path, "c").open_for(h1, m1)
    store.write_part(_captions([1, 2]))
    store.open_for(h1, m1)  # same config: resume, rows kept
    assert store.done_ids() == {1, 2}
    with pytest.raises(StoreConfigError, match=r"captions/c .*identity\.prompt\.version"):
        store.open_for(h2, m2)
    assert store.done_ids() == {1, 2}  # nothing lost by the refusal
    staged = store.open_for(h2, m2, overwrite=True)
    assert staged.staged and staged.path != store.path and staged.done_ids() == set()
    assert store.done_ids() == {1, 2} and store.manifest()["config_hash"] == h1  # old kept meanwhile
    staged.write_part(_captions([3]))
    # A killed overwrite run resumes its rebuild; another configuration's rebuild would be cleared.
    again = store.open_for(h2, m2, overwrite=True)
    assert again.path == staged.path and again.done_ids() == {3}
    live = again.publish()
    assert live.path == store.path and not staged.path.exists()
    assert store.done_ids() == {3}
    assert json.loads((store.path / "_manifest.json").read_text())["config_hash"] == h2
    assert [p.name for p in staged.path.parent.iterdir()] == []  # the replaced store is gone


def test_swap_dirs_exchanges_two_folders(tmp_path):
    from featurize.durable import swap_dirs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("b")
    swap_dirs(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


def test_parts_without_manifest_are_refused(tmp_path):
    store = CaptionStore(tmp_path, "c")
    store.write_part(_captions([1]))
    with pytest.raises(StoreConfigError, match="parts but no manifest"):
        store.open_for("h", {})


def test_store_names_must_be_plain(tmp_path):
    with pytest.raises(StoreError):
        CaptionStore(tmp_path, "../x")
    with pytest.raises(StoreError):
        FeatureStore(tmp_path, "_hidden")


def test_error_rows_before_any_vector_get_the_width_later(tmp_path):
    store = FeatureStore(tmp_path, "mllm-video.x.enc")
    store.open_for("h", {})
    errors = pd.DataFrame(
        {"item_id": [1, 2], "vector": [None, None], "status": "error", "error": "vlm: no frames"}
    )
    first = store.write_part(errors)
    assert store.dim() is None
    assert str(pq.read_schema(first).field("vector").type) == "null"
    assert pd.read_parquet(store.path)["vector"].isna().all()  # an all-error store reads plainly too
    with pytest.raises(StoreError, match="only error rows"):
        store.read_matrix([1])
    store.write_part(
        pd.DataFrame({"item_id": [3], "vector": [np.ones(5, np.float32)], "status": "ok", "error": ""})
    )
    assert str(pq.read_schema(first).field("vector").type) == "fixed_size_list<element: float>[5]"
    plain = pd.read_parquet(store.path).sort_values("item_id")
    assert plain["item_id"].tolist() == [1, 2, 3] and plain["vector"].isna().tolist() == [True, True, False]
    mat, ok = store.read_matrix([1, 2, 3])
    assert mat.shape == (3, 5) and ok.tolist() == [False, False, True]
    # An unsized part landing after the width is known is sized at once by its writer.
    late = store.write_part(errors.assign(item_id=[4, 5]))
    assert str(pq.read_schema(late).field("vector").type).endswith("[5]")


def test_sizing_an_old_error_part_keeps_its_age(tmp_path):
    store = FeatureStore(tmp_path, "f")
    errors = pd.DataFrame({"item_id": [1, 2], "vector": [None, None], "status": "error", "error": "x"})
    old = store.write_part(errors)
    os.utime(old, ns=(10**18, 10**18))  # an old part (2001) ...
    store.write_part(pd.DataFrame({"item_id": [1], "vector": [np.ones(2)], "status": "ok", "error": ""}))
    assert str(pq.read_schema(old).field("vector").type).endswith("[2]")
    assert old.stat().st_mtime_ns == 10**18
    # ... stays older than the retry that fixed item 1
    assert store.read()["status"].tolist() == ["ok", "error"]


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_torn_part_is_quarantined_and_its_items_redone(tmp_path, damage):
    store = CaptionStore(tmp_path, "c")
    store.open_for("h", {})
    store.write_part(_captions([1, 2]))
    torn = store.write_part(_captions([3, 4]))
    data = torn.read_bytes()
    torn.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.warns(UserWarning, match=f"{torn.name}: unreadable"):
        assert store.done_ids() == {1, 2}  # never raises: items 3 and 4 are missing, so redone
    assert not torn.exists()
    assert [p.name.split(".parquet")[0] for p in (store.path / "_quarantine").iterdir()] == [
        torn.name.removesuffix(".parquet")
    ]
    assert store.read()["item_id"].tolist() == [1, 2] and store.counts() == {"ok": 2, "error": 0}
    store.write_part(_captions([3, 4]))  # the redone items are written again
    assert store.done_ids() == {1, 2, 3, 4}


def test_a_torn_part_of_a_feature_store_does_not_break_its_width(tmp_path):
    store = FeatureStore(tmp_path, "f")
    store.open_for("h", {})
    torn = store.write_part(
        pd.DataFrame({"item_id": [1], "vector": [np.ones(3)], "status": "ok", "error": ""})
    )
    torn.write_bytes(b"PAR1")
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.done_ids() == set()
    assert store.dim() == 3  # the manifest recorded it before the damage


def test_parts_and_manifests_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = CaptionStore(tmp_path, "c")
    store.open_for("h", {})
    part = store.write_part(_captions([1]))
    temps = [s for s in synced if os.path.basename(s).startswith(".")]
    assert any(".part-" in s for s in temps) and any("_manifest.json" in s for s in temps)
    assert str(store.path) in synced  # the folder entry of the rename is made durable too
    assert part.exists()
