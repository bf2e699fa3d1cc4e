"""Caption and feature stores: append-only, resumable Parquet folders (DESIGN.md "Stores").

- Caption store ``<root>/captions/<name>/part-*.parquet``:
  ``item_id:int64, text:string, status:string ("ok"|"error"), error:string, model:string``,
  plus, for audio captioners only, the optional string columns in ``CAPTION_EXTRA_COLUMNS``
  (``transcript``, ``language``, ``events``) so the "transcript + events" text can be rebuilt.
- Feature store ``<root>/features/<name>/part-*.parquet``:
  ``item_id:int64, vector:fixed_size_list<float32>[d], status:string, error:string``;
  an error row carries a null vector (Arrow allows nulls in a fixed-size list). Error rows written
  before any vector of the store exists (width unknown) get a null-typed column; the first part with
  vectors rewrites them to the width, and readers here size them on the fly in between.

A part (and the manifest) is written with ``featurize.durable.write_atomic``: a hidden temporary name
(``.part-…tmp``) in the same folder, fsync, rename, folder fsync, so neither a killed job nor a power
loss leaves a half-written part that a reader would accept; readers (this module,
``pd.read_parquet(folder)``, pyarrow datasets) ignore names starting with ``.`` or ``_``. A part that
still fails to open (damaged on disk, or written by an older version without fsync) is moved to
``_quarantine/`` with a warning and its items count as missing, so a rerun redoes them.
Part names are a hash of the sorted item ids, so a retried write of the same batch replaces its own
earlier copy instead of duplicating it. When an item appears in several parts (a rerun with
``retry_errors``) the most recently written part wins.

``_manifest.json`` records what produced the store (models, prompt, frame sampling, config hash,
package versions, counts ok/error). ``open_for`` refuses to mix a store with rows from a different
configuration unless told to overwrite it; overwriting builds the new store beside the old one (a
*staged* store under ``<root>/.featurize/staging/``) and ``publish`` swaps it in only once the run is
complete, so a failed or killed overwrite leaves the old store whole and readable. ``<root>/.featurize/``
also holds the stores' write locks (``featurize.store_lock``) and other run bookkeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from featurize.durable import fsync_dir, quarantine, swap_dirs, write_atomic, write_bytes_atomic
from featurize.messages import show

MANIFEST = "_manifest.json"
STATUSES = ("ok", "error")
CAPTION_EXTRA_COLUMNS = ("transcript", "language", "events")
"""Optional string columns of audio caption stores (ASR transcript, its language, JSON sound events)."""
WORK = ".featurize"
"""Folder under a store root for run bookkeeping (locks, staged stores); no reader looks inside it."""
_VOLATILE_KEYS = ("counts", "created_at", "updated_at", "packages")
_PACKAGES = ("seewhy", "ray", "torch", "transformers", "sentence-transformers", "av", "vllm")


class StoreError(ValueError):
    """Bad rows handed to a store, or a store folder that cannot be read."""


class StoreConfigError(StoreError):
    """A store written with a different configuration than the one now asking to append to it."""


def config_hash(identity: dict[str, Any]) -> str:
    """A stable hash of the settings that determine a store's content (canonical JSON, sha256)."""
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (default: the packages that shape the stores' content); absent ones omitted."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".") or "<root>"]


def read_part(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``, or None after moving an unreadable part to ``_quarantine/`` (its items are redone).

    Another reader may have quarantined the same part a moment earlier: that is None too.
    """
    try:
        return read(path)
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file: keep it as evidence, redo its items
        with contextlib.suppress(FileNotFoundError):
            quarantine(path, f"{type(e).__name__}: {str(e)[:200]}")
        return None


class _Store:
    """Shared machinery of caption and feature stores: parts, dedup, manifest."""

    kind: ClassVar[str]

    def __init__(self, root: str | os.PathLike[str], name: str, staged: bool = False) -> None:
        if not name or "/" in name or name.startswith((".", "_")):
            raise StoreError(
                f"store name {name!r} must be a non-empty file name not starting with '.' or '_'"
            )
        self.root = Path(root)
        self.name = name
        self.staged = staged
        """True for the copy being rebuilt by an overwrite, until ``publish`` swaps it in."""
        self.path = (
            self.root / WORK / "staging" / self.kind / name if staged else self.root / self.kind / name
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def lock_file(self) -> Path:
        """The store's write lock (``featurize.store_lock``): hidden, beside the folder, outliving it."""
        return self.root / WORK / "locks" / f"{self.kind}.{self.name}.lock"

    # -- parts -------------------------------------------------------------------------------------
    def parts(self) -> list[Path]:
        """Finished parts, oldest first (rename time, then name), so that later parts win in ``read``."""
        if not self.path.is_dir():
            return []
        files = [p for p in self.path.glob("part-*.parquet") if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def write_part(self, data: pa.Table | pd.DataFrame) -> Path | None:
        """Validate rows and write them as one part atomically; returns its path (None for no rows)."""
        table = self._to_table(data)
        if table.num_rows == 0:
            return None
        ids = table.column("item_id").to_numpy()
        if len(np.unique(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise StoreError(f"{self}: item_id {dup} appears twice in one part")
        digest = hashlib.sha1(np.sort(ids).astype("<i8").tobytes()).hexdigest()[:20]
        return write_atomic(self.path / f"part-{digest}.parquet", lambda tmp: pq.write_table(table, tmp))

    def _read_parts(self, columns: list[str] | None = None) -> pa.Table | None:
        tables = []
        normalise = self._normaliser()
        for p in self.parts():
            table = read_part(p, lambda f: pq.read_table(f, columns=columns))
            if table is not None:
                tables.append(normalise(table))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")

    def done_ids(self, retry_errors: bool = False) -> set[int]:
        """Ids already in the store (ok or error); with ``retry_errors`` only those whose last row is ok."""
        table = self._read_parts(["item_id", "status"])
        if table is None:
            return set()
        df = table.to_pandas().drop_duplicates("item_id", keep="last")
        if retry_errors:
            df = df[df["status"] == "ok"]
        return {int(i) for i in df["item_id"]}

    def read(self) -> pd.DataFrame:
        """All rows, one per item_id (the most recent part wins), sorted by item_id."""
        table = self._read_parts()
        if table is None:
            return self._empty_frame()
        df = table.to_pandas().drop_duplicates("item_id", keep="last")
        return df.sort_values("item_id", kind="stable").reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        """Number of items whose current row is ok / error."""
        table = self._read_parts(["item_id", "status"])
        if table is None:
            return {"ok": 0, "error": 0}
        df = table.to_pandas().drop_duplicates("item_id", keep="last")
        return {s: int((df["status"] == s).sum()) for s in STATUSES}

    # -- manifest ----------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        """The store's manifest, or None when it has none yet."""
        f = self.path / MANIFEST
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{f}: manifest is not valid JSON ({e})") from e

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())

    def open_for(self, config_hash: str, manifest: dict[str, Any], overwrite: bool = False) -> _Store:
        """The store to write rows produced under ``config_hash`` into: this one, or a staged rebuild.

        An empty store gets the manifest. A store written under the same hash is kept (a rerun appends
        only what is missing). A store written under another hash, or holding parts but no manifest,
        raises StoreConfigError naming the differing keys; with ``overwrite`` it is left as it is and
        the staged store of the same name is returned instead (resumed when a killed overwrite left one
        of this hash, else started empty): write there, then ``publish`` it once the run is complete.
        """
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        new = {
            **manifest,
            "store": self.name,
            "kind": self.kind,
            "config_hash": config_hash,
            "packages": package_versions(),
        }
        old = self.manifest()
        has_parts = bool(self.parts())
        if old is not None and old.get("config_hash") == config_hash:
            self._write_manifest({**old, **new, "created_at": old.get("created_at", now), "updated_at": now})
            return self
        if old is not None or has_parts:
            if self.staged:  # a rebuild of yet another configuration, never published: ours to clear
                shutil.rmtree(self.path)
            elif overwrite:
                return type(self)(self.root, self.name, staged=True).open_for(config_hash, manifest, True)
            else:
                raise StoreConfigError(self._refusal(old, new, config_hash))
        self._write_manifest({**new, "counts": {"ok": 0, "error": 0}, "created_at": now, "updated_at": now})
        return self

    def _refusal(self, old: dict[str, Any] | None, new: dict[str, Any], config_hash: str) -> str:
        if old is None:
            why = "it holds parts but no manifest"
        else:
            keys = [
                k
                for k in _diff_keys(old, new)
                if k.split(".")[0] not in _VOLATILE_KEYS and k != "config_hash"
            ]
            why = (
                f"it was written with config hash {old.get('config_hash')} and this run has "
                f"{config_hash}; differing keys: {', '.join(keys) or '(none besides the hash)'}"
            )
        return (
            f"store {self.path} refuses rows from a different configuration: {why}. "
            "Use overwrite=True (--overwrite) to rebuild it (the old store stays until the new one is "
            "complete), or give the new configuration a new store / feature-set name."
        )

    def publish(self) -> _Store:
        """Swap a complete staged store in for the live store of its name; returns the live store.

        The swap is one atomic ``renameat2(RENAME_EXCHANGE)`` where the system has it; the replaced
        store is deleted afterwards. A store that is not staged is returned as it is.
        """
        if not self.staged:
            return self
        live = type(self)(self.root, self.name)
        if live.path.exists():
            swap_dirs(self.path, live.path)
            shutil.rmtree(self.path)
        else:
            live.path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, live.path)
            fsync_dir(live.path.parent)
        return live

    def update_counts(self) -> dict[str, int]:
        """Recount ok/error rows into the manifest (end of a run, or on resume); returns the counts."""
        counts = self.counts()
        m = self.manifest() or {"store": self.name, "kind": self.kind}
        m["counts"] = counts
        m["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write_manifest(m)
        return counts

    # -- per-kind hooks ----------------------------------------------------------------------------
    def _normaliser(self) -> Callable[[pa.Table], pa.Table]:
        """What to apply to each part as read (identity; feature stores size null vectors)."""
        return lambda table: table

    def _to_table(self, data: pa.Table | pd.DataFrame) -> pa.Table:
        raise NotImplementedError

    def _empty_frame(self) -> pd.DataFrame:
        raise NotImplementedError


def _column(df: pd.DataFrame, store: _Store, col: str) -> pd.Series:
    if col not in df.columns:
        raise StoreError(f"{store}: rows lack column {col!r} (have {sorted(df.columns)})")
    return df[col]


def _check_status(df: pd.DataFrame, store: _Store) -> tuple[np.ndarray, list[str]]:
    status = _column(df, store, "status").to_numpy()
    bad = [i for i, s in enumerate(status) if s not in STATUSES]
    if bad:
        raise StoreError(
            f"{store}: row {bad[0]} column 'status' is {show(status[bad[0]])}, expected one of {STATUSES}"
        )
    errors = ["" if e is None or (isinstance(e, float) and np.isnan(e)) else str(e) for e in df["error"]]
    for i, (s, e) in enumerate(zip(status, errors)):
        if s == "error" and not e:
            raise StoreError(
                f"{store}: row {i} (item_id {df['item_id'].iloc[i]}) has status 'error' but no error"
            )
    return status, errors


def _as_frame(data: pa.Table | pd.DataFrame) -> pd.DataFrame:
    return data.to_pandas() if isinstance(data, pa.Table) else data.reset_index(drop=True)


class CaptionStore(_Store):
    """Texts per item from one captioner (video VLM, audio LM, or ASR + sound events)."""

    kind = "captions"

    def _to_table(self, data: pa.Table | pd.DataFrame) -> pa.Table:
        df = _as_frame(data)
        _column(df, self, "error")
        status, errors = _check_status(df, self)
        text = _column(df, self, "text").to_numpy(dtype=object)
        for i, (s, t) in enumerate(zip(status, text)):
            if s == "ok" and not isinstance(t, str):
                raise StoreError(
                    f"{self}: row {i} (item_id {df['item_id'].iloc[i]}) is ok but 'text' is {show(t)}"
                )
        cols: dict[str, pa.Array] = {
            "item_id": pa.array(_column(df, self, "item_id").to_numpy(dtype=np.int64), pa.int64()),
            "text": pa.array([t if isinstance(t, str) else None for t in text], pa.string()),
            "status": pa.array(status.tolist(), pa.string()),
            "error": pa.array(errors, pa.string()),
            "model": pa.array(_column(df, self, "model").astype(object).tolist(), pa.string()),
        }
        extra = [c for c in df.columns if c not in cols]
        unknown = [c for c in extra if c not in CAPTION_EXTRA_COLUMNS]
        if unknown:
            raise StoreError(
                f"{self}: unexpected columns {unknown}; optional ones are {CAPTION_EXTRA_COLUMNS}"
            )
        for c in CAPTION_EXTRA_COLUMNS:
            if c in df.columns:
                vals = [v if isinstance(v, str) else None for v in df[c].to_numpy(dtype=object)]
                cols[c] = pa.array(vals, pa.string())
        return pa.table(cols)

    def _empty_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "item_id": pd.Series(dtype="int64"),
                **{c: pd.Series(dtype=object) for c in ("text", "status", "error", "model")},
            }
        )


class FeatureStore(_Store):
    """One vector per item for one feature set (e.g. ``mllm-video.qwen2.5-vl-3b.bge-large``)."""

    kind = "features"

    def dim(self) -> int | None:
        """The vector width, from the manifest or the first sized part (None while no vector exists)."""
        m = self.manifest() or {}
        if m.get("dim"):
            return int(m["dim"])
        for p in self.parts():
            schema = read_part(p, pq.read_schema)
            t = schema.field("vector").type if schema is not None else pa.null()
            if pa.types.is_fixed_size_list(t):
                return int(t.list_size)
        return None

    def _to_table(self, data: pa.Table | pd.DataFrame) -> pa.Table:
        df = _as_frame(data)
        _column(df, self, "error")
        status, errors = _check_status(df, self)
        vectors = _column(df, self, "vector").to_numpy(dtype=object)
        ok = [i for i, s in enumerate(status) if s == "ok"]
        dims = {np.asarray(vectors[i]).shape for i in ok}
        known = self.dim()
        if len(dims) > 1 or any(len(d) != 1 for d in dims):
            raise StoreError(f"{self}: ok vectors must all be 1-D of one width, got shapes {sorted(dims)}")
        d = next(iter(dims))[0] if dims else known
        if known is not None and d != known:
            raise StoreError(f"{self}: vectors have width {d}, the store holds width {known}")
        if d is None:
            # Error rows before any vector exists: the width is unknown, so the column is Arrow's null
            # type until a later part brings the width (see _size_parts).
            vec: pa.Array = pa.nulls(len(df))
        else:
            flat = np.zeros((len(df), d), dtype=np.float32)
            for i in ok:
                v = np.asarray(vectors[i], dtype=np.float32)
                if not np.all(np.isfinite(v)):
                    raise StoreError(
                        f"{self}: row {i} (item_id {df['item_id'].iloc[i]}) has a non-finite vector"
                    )
                flat[i] = v
            mask = pa.array(status != "ok")
            vec = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), d, mask=mask)
        return pa.table(
            {
                "item_id": pa.array(_column(df, self, "item_id").to_numpy(dtype=np.int64), pa.int64()),
                "vector": vec,
                "status": pa.array(status.tolist(), pa.string()),
                "error": pa.array(errors, pa.string()),
            }
        )

    def write_part(self, data: pa.Table | pd.DataFrame) -> Path | None:
        path = super().write_part(data)
        if path is None:
            return None
        t = pq.read_schema(path).field("vector").type
        m = self.manifest()
        if pa.types.is_fixed_size_list(t) and not (m or {}).get("dim"):
            if m is not None:
                # Record the width first, so a writer that just wrote an unsized part sees it (below).
                self._write_manifest({**m, "dim": int(t.list_size)})
            self._size_parts()
        elif pa.types.is_null(t) and self.dim() is not None:
            self._size_parts()
        return path

    def _size_parts(self) -> None:
        """Rewrite parts written before the width was known (null-typed vectors) with the width."""
        d = self.dim()
        if d is None:
            return
        for p in self.parts():
            schema = read_part(p, pq.read_schema)
            if schema is None or not pa.types.is_null(schema.field("vector").type):
                continue
            table = read_part(p, pq.read_table)
            if table is not None:
                st = p.stat()
                sized = self._sized(table, d)

                def write(tmp: Path, sized: pa.Table = sized, st: os.stat_result = st) -> None:
                    pq.write_table(sized, tmp)
                    # Keep the part's age: "the most recent part wins" must not change by this rewrite.
                    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))

                write_atomic(p, write)  # same name, same rows: readers see the old or the new file

    @staticmethod
    def _sized(table: pa.Table, d: int) -> pa.Table:
        i = table.schema.get_field_index("vector")
        if i < 0 or not pa.types.is_null(table.schema.field(i).type):
            return table
        return table.set_column(i, "vector", pa.nulls(table.num_rows, pa.list_(pa.float32(), d)))

    def _normaliser(self) -> Callable[[pa.Table], pa.Table]:
        d = self.dim()
        return (lambda table: table) if d is None else (lambda table: self._sized(table, d))

    def update_counts(self) -> dict[str, int]:
        self._size_parts()
        return super().update_counts()

    def read_matrix(self, item_ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``item_ids`` in that order as float32 ``[n, d]``, and a bool mask of ok rows.

        Items that are missing or errored get zero vectors and ``mask=False``.
        """
        ids = np.asarray(item_ids, dtype=np.int64)
        table = self._read_parts(["item_id", "vector", "status"])
        d = self.dim()
        if table is None:
            raise StoreError(f"{self}: store is empty")
        if d is None:
            raise StoreError(f"{self}: store holds only error rows, so its vector width is unknown")
        df = table.to_pandas().drop_duplicates("item_id", keep="last")
        df = df[df["status"] == "ok"]
        pos = pd.Series(np.arange(len(df)), index=df["item_id"].to_numpy())
        stacked = (
            np.stack(df["vector"].to_list()).astype(np.float32) if len(df) else np.zeros((0, d), np.float32)
        )
        where = pos.reindex(ids).to_numpy()
        mask = ~np.isnan(where)
        out = np.zeros((len(ids), d), dtype=np.float32)
        out[mask] = stacked[where[mask].astype(np.int64)]
        return out, mask

    def _empty_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "item_id": pd.Series(dtype="int64"),
                **{c: pd.Series(dtype=object) for c in ("vector", "status", "error")},
            }
        )


CLIP_COLUMNS = ("item_id", "duration_s", "has_video", "has_audio", "status", "error")


class ClipStore(_Store):
    """Per-item clip metadata from the decode stage: ``<root>/clips/part-*.parquet``.

    Columns ``item_id:int64, duration_s:float64`` (the whole clip, NaN when unknown),
    ``has_video:bool, has_audio:bool, status, error`` (the decode error). It describes the files, not
    a configuration, so it has no config hash: the graph's writer adds a row for every item that passes
    through decoding, and ``run_featurize`` decodes the items still missing (stores made before it).
    """

    kind = "clips"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.name = "clips"
        self.staged = False
        self.path = self.root / self.kind

    def _to_table(self, data: pa.Table | pd.DataFrame) -> pa.Table:
        df = _as_frame(data)
        _column(df, self, "error")
        status, errors = _check_status(df, self)
        dur = pd.to_numeric(_column(df, self, "duration_s"), errors="coerce").to_numpy(dtype=np.float64)
        return pa.table(
            {
                "item_id": pa.array(_column(df, self, "item_id").to_numpy(dtype=np.int64), pa.int64()),
                "duration_s": pa.array(dur, pa.float64(), from_pandas=True),
                "has_video": pa.array(_column(df, self, "has_video").to_numpy(dtype=bool), pa.bool_()),
                "has_audio": pa.array(_column(df, self, "has_audio").to_numpy(dtype=bool), pa.bool_()),
                "status": pa.array(status.tolist(), pa.string()),
                "error": pa.array(errors, pa.string()),
            }
        )

    def _empty_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "item_id": pd.Series(dtype="int64"),
                "duration_s": pd.Series(dtype="float64"),
                "has_video": pd.Series(dtype=bool),
                "has_audio": pd.Series(dtype=bool),
                **{c: pd.Series(dtype=object) for c in ("status", "error")},
            }
        )


def read_clip_durations(root: str | os.PathLike[str], item_ids: Sequence[int] | None = None) -> pd.Series:
    """Clip length in seconds per item id (float64, NaN when unknown or not decoded), from ``<root>/clips``.

    With ``item_ids`` the series is in that order, NaN for items the store does not hold. Raises
    StoreError when the root has no clip store (run ``seewhy featurize`` first).
    """
    store = ClipStore(root)
    if not store.parts():
        raise StoreError(f"{store}: no clip metadata under {store.path}; run `seewhy featurize` first")
    s = store.read().set_index("item_id")["duration_s"].astype("float64")
    s.index = s.index.astype("int64")
    return (
        s if item_ids is None else s.reindex(pd.Index(np.asarray(item_ids, dtype=np.int64), name="item_id"))
    )
