"""Crash-safe writes leave the old or the whole new file; quarantine keeps the evidence."""

from __future__ import annotations

import pytest

from featurize.durable import QUARANTINE, quarantine, write_atomic, write_text_atomic


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    write_text_atomic(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_quarantine_moves_the_file_aside_with_a_warning(tmp_path):
    path = tmp_path / "part-1.parquet"
    path.write_bytes(b"")
    with pytest.warns(UserWarning, match="part-1.parquet: unreadable"):
        dest = quarantine(path, "empty file")
    assert not path.exists() and dest.parent == tmp_path / QUARANTINE and dest.read_bytes() == b""
