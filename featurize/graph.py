"""The Ray Data graph: stages applied in turn over catalog rows, ending in a writer that fills the stores.

A ``Plan`` is plain data: the stages (``StageSpec``) to run, each in its own actor pool, and the
``Sink``s, i.e. which batch columns become rows of which store. ``run_plan`` streams
``from_pandas(row chunks) → map_batches(stage)… → map_batches(StoreWriter)``; the writer writes
one part per batch per store atomically and returns only small summary rows (item_id, store, status,
error), so frames and waveforms never reach the driver and nothing is materialised. A plan with
``clips`` also has the writer record every decoded row's clip metadata (``ClipStore``: duration,
has video/audio, decode error), whatever stores the row was missing from. Each input row
carries ``todo``, the stores it is still missing from, so a rerun never writes an item twice into a
store that already holds it. This module knows nothing about particular stages: pipeline.py builds
the plans from the config.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from featurize.stage import Batch, StageSpec, upstream_error
from featurize.stores import CaptionStore, ClipStore, FeatureStore, config_hash

logger = logging.getLogger(__name__)

MAX_BLOCKS = 2000
"""Input blocks at most (each is a Ray object; the first stage still sees its own batch size)."""
TODO = "todo"
"""Input column: JSON list of the store keys (``kind/name``) this row is still missing from."""


@dataclass(frozen=True)
class Sink:
    """One store fed by a plan, and how its rows are taken from a batch."""

    kind: Literal["captions", "features"]
    name: str
    """Store name: the captioner name, or the feature-set name (e.g. ``mllm-video.qwen2.5-vl-3b.bge``)."""
    value: str
    """Batch column with the text (captions) or the float32 vector (features)."""
    error_columns: tuple[str, ...]
    """Error columns consulted in order; the first non-empty one makes the row ``status=error``."""
    model: str = ""
    """Model reference written to the caption store's ``model`` column."""
    extra: tuple[tuple[str, str], ...] = ()
    """(store column, batch column) pairs of optional caption columns (audio stores only)."""
    identity: dict[str, Any] = field(default_factory=dict)
    """Everything that determines the store's content (models, prompt, sampling): hashed into its
    config hash and written to its manifest. Resources and batch sizes never belong here."""
    error_key: str = ""
    """When set, the error columns hold "; "-joined "<key>: <reason>" entries of several sinks (as
    TextEmbed's ``embed_error``): only the entry of this key makes this sink's row an error."""
    staged: bool = False
    """Write into the store's staged rebuild (an ``--overwrite`` run; ``run_featurize`` publishes it)."""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def config_hash(self) -> str:
        return config_hash(self.identity)

    def store(self, root: str) -> CaptionStore | FeatureStore:
        return (CaptionStore if self.kind == "captions" else FeatureStore)(root, self.name, self.staged)


@dataclass(frozen=True)
class Plan:
    """Stages to apply in turn, then the stores their outputs go to."""

    stages: tuple[StageSpec, ...]
    sinks: tuple[Sink, ...]
    writer: StageSpec | None = None
    """Resources of the writer pool (its ``fn`` is ignored); ``batch_size`` is the rows per part."""
    clips: bool = False
    """Also write each row's clip metadata (needs the decode stage's columns) to the clip store."""


class StoreWriter:
    """The final UDF: one part per batch per store, returning summary rows only."""

    name = "write"

    def __init__(self, root: str, sinks: tuple[Sink, ...], clips: bool = False) -> None:
        self.sinks = sinks
        self.stores = {s.key: s.store(root) for s in sinks}
        self.keys = tuple(s.error_key for s in sinks if s.error_key)
        self.clips = ClipStore(root) if clips else None

    def __call__(self, batch: Batch) -> Batch:
        ids = np.asarray(batch["item_id"], dtype=np.int64)
        if self.clips is not None and len(ids):
            self.clips.write_part(clip_rows(batch))
        todo = [set(json.loads(t)) for t in batch[TODO]]
        out_id, out_store, out_status, out_error = [], [], [], []
        for sink in self.sinks:
            rows = [i for i in range(len(ids)) if sink.key in todo[i]]
            if not rows:
                continue
            frame = _sink_rows(sink, batch, rows, self.keys)
            self.stores[sink.key].write_part(frame)
            out_id += ids[rows].tolist()
            out_store += [sink.key] * len(rows)
            out_status += frame["status"].tolist()
            out_error += [e[:200] for e in frame["error"]]
        return {
            "item_id": np.asarray(out_id, dtype=np.int64),
            "store": np.asarray(out_store, dtype=object),
            "status": np.asarray(out_status, dtype=object),
            "error": np.asarray(out_error, dtype=object),
        }


def clip_rows(batch: Batch) -> pd.DataFrame:
    """The clip-store rows of a decoded batch: duration, has video/audio, and the decode error."""
    missing = [c for c in ("duration", "video_meta", "decode_error") if c not in batch]
    if missing:
        raise KeyError(f"clip store: batch has no column(s) {missing}; is the decode stage in the plan?")
    metas = [json.loads(m) if isinstance(m, str) and m else {} for m in batch["video_meta"]]
    errors = [str(e or "") for e in batch["decode_error"]]
    return pd.DataFrame(
        {
            "item_id": np.asarray(batch["item_id"], dtype=np.int64),
            "duration_s": np.asarray(batch["duration"], dtype=np.float64),
            "has_video": [bool(m.get("has_video", False)) for m in metas],
            "has_audio": [bool(m.get("has_audio", False)) for m in metas],
            "status": ["error" if e else "ok" for e in errors],
            "error": errors,
        }
    )


def own_error(text: str, key: str, keys: tuple[str, ...]) -> str:
    """The reason in the ``"<key>: reason"`` entry of a "; "-joined error text of several sinks."""
    if not text:
        return ""
    starts = sorted(
        (m.start(), k)
        for k in keys
        for m in re.finditer(re.escape(f"{k}: "), text)
        if m.start() == 0 or text[m.start() - 2 : m.start()] == "; "
    )
    for j, (pos, k) in enumerate(starts):
        if k == key:
            end = starts[j + 1][0] - 2 if j + 1 < len(starts) else len(text)
            return text[pos + len(k) + 2 : end]
    return ""


def _row_errors(sink: Sink, batch: Batch, n: int, keys: tuple[str, ...]) -> np.ndarray:
    if not sink.error_key:
        return upstream_error(batch, sink.error_columns, n)
    out = np.full(n, "", dtype=object)
    for col in sink.error_columns:
        for i in range(n):
            if not out[i] and col in batch:
                out[i] = own_error(str(batch[col][i] or ""), sink.error_key, keys)
    return out


def _sink_rows(sink: Sink, batch: Batch, rows: list[int], keys: tuple[str, ...] = ()) -> pd.DataFrame:
    """The store rows of ``sink`` for the batch rows ``rows``; a missing or bad value becomes an error."""
    n = len(batch["item_id"])
    errors = _row_errors(sink, batch, n, keys or (sink.error_key,))
    if sink.value not in batch:
        raise KeyError(
            f"sink {sink.key}: batch has no column {sink.value!r} (columns: {sorted(batch)}); "
            "is the stage that produces it in the plan?"
        )
    values = batch[sink.value]
    status, error, value = [], [], []
    for i in rows:
        v, err = values[i], str(errors[i])
        if not err:
            err = _value_problem(sink, v)
        status.append("error" if err else "ok")
        error.append(err)
        value.append(None if err else (v if sink.kind == "captions" else np.asarray(v, dtype=np.float32)))
    frame: dict[str, Any] = {"item_id": np.asarray(batch["item_id"])[rows].astype(np.int64)}
    if sink.kind == "captions":
        frame |= {"text": value, "status": status, "error": error, "model": sink.model}
        for store_col, batch_col in sink.extra:
            col = batch.get(batch_col)
            frame[store_col] = [None if col is None else _str_or_none(col[i]) for i in rows]
    else:
        frame |= {"vector": value, "status": status, "error": error}
    return pd.DataFrame(frame)


def _value_problem(sink: Sink, v: Any) -> str:
    if sink.kind == "captions":
        return "" if isinstance(v, str) else f"{sink.value}: stage produced no text ({type(v).__name__})"
    if v is None:
        return f"{sink.value}: stage produced no vector"
    a = np.asarray(v)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        return f"{sink.value}: expected a finite 1-D vector, got shape {a.shape}"
    return ""


def _str_or_none(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v if isinstance(v, str) else json.dumps(v, default=str)


ARRAY_COLUMNS = ("frames", "frames16", "audio")
"""Columns of ndarrays (or None), besides the ``vec_*`` vectors, that travel between stages as .npy bytes."""


def is_array_column(name: str) -> bool:
    return name in ARRAY_COLUMNS or name.startswith("vec_")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def pack_arrays(batch: Batch) -> Batch:
    """Array columns as .npy bytes (None stays None), so that every block has one Arrow type.

    Ray Data stores an object column of equal-shape arrays as a tensor column, and one holding a None
    or ragged arrays as pickled objects; blocks of the two kinds cannot be concatenated into one batch
    ("Found columns with both objects and tensors"), which happens as soon as a clip without audio
    meets clips with audio. Bytes are the same Arrow type whatever the content.
    """
    out = dict(batch)
    for col, values in batch.items():
        # A stage may also return a 2-D numeric array (one row per item): packed the same way.
        if is_array_column(col) and (values.dtype == object or values.ndim > 1):
            packed = np.empty(len(values), dtype=object)
            packed[:] = [v if v is None or isinstance(v, bytes) else _npy(v) for v in values]
            out[col] = packed
    return out


def unpack_arrays(batch: Batch) -> Batch:
    """The inverse of ``pack_arrays``: .npy bytes back to ndarrays (object columns of arrays or None)."""
    out = dict(batch)
    for col, values in batch.items():
        if is_array_column(col) and values.dtype == object:
            arrays = np.empty(len(values), dtype=object)
            arrays[:] = [
                np.load(io.BytesIO(v), allow_pickle=False) if isinstance(v, bytes) else v for v in values
            ]
            out[col] = arrays
        elif (
            is_array_column(col) and values.ndim == 1 and values.dtype.kind == "f" and np.isnan(values).all()
        ):
            # A block whose column was all None comes back from Arrow as a float NaN column.
            out[col] = np.full(len(values), None, dtype=object)
    return out


class Packed:
    """Runs a stage on unpacked arrays and packs its output (see ``pack_arrays``).

    With ``guard`` (``featurize.faults.ItemGuard`` kwargs) every call runs under the poison-pill and
    time-limit guard, so an item that kills or hangs the worker becomes an error row.
    """

    stage: ClassVar[type]

    def __init__(self, guard: dict[str, Any] | None = None, **kwargs: Any) -> None:
        from featurize.faults import ItemGuard

        self.impl = self.stage(**kwargs)
        self.guard = ItemGuard(**guard) if guard else None

    def __call__(self, batch: Batch) -> Batch:
        batch = unpack_arrays(batch)
        return pack_arrays(self.guard(self.impl, batch) if self.guard else self.impl(batch))


def packed(fn: type) -> type:
    """``fn`` wrapped in ``Packed``, keeping its name (Ray names operators and actors after it)."""
    return type(fn.__name__, (Packed,), {"stage": fn, "name": getattr(fn, "name", fn.__name__)})


def _map_stage(ds: Any, spec: StageSpec, guard: str | None = None, batch_format: str = "numpy") -> Any:
    import ray

    kwargs = spec.fn_constructor_kwargs
    if guard is not None:
        limits = {"item_time_limit_s": spec.item_time_limit_s, "batch_time_limit_s": spec.batch_time_limit_s}
        kwargs = {**kwargs, "guard": {"folder": guard, "stage": spec.fn.name, **limits}}
    # Restarts/retries as configured (Ray Data's default is unbounded). The guard bounds the deaths
    # per item, so an item that crashes its actor every time no longer uses the restarts up. Ray 2.60
    # only takes them as **ray_remote_args (deprecated spelling, no named replacement yet), hence the
    # silenced warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            packed(spec.fn),
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(min_size=spec.min_actors, max_size=spec.max_actors),
            batch_size=spec.batch_size,
            batch_format=batch_format,
            num_cpus=spec.num_cpus,
            num_gpus=spec.num_gpus or None,
            max_restarts=spec.max_restarts,
            max_task_retries=spec.max_restarts,
        )


@dataclass
class PlanRun:
    """What one ``run_plan`` did: rows written per store and status, errors seen, time, Ray's stats."""

    written: dict[str, Counter] = field(default_factory=dict)
    errors: dict[str, Counter] = field(default_factory=dict)
    items: int = 0
    wall_s: float = 0.0
    stats: str = ""


def todo_rows(
    plan: Plan,
    rows: pd.DataFrame,
    root: str,
    retry_errors: bool = False,
    eligible: dict[str, set[int]] | None = None,
) -> pd.DataFrame:
    """``rows`` restricted to those missing from at least one sink's store, with the ``todo`` column.

    ``eligible`` (per sink key) limits a sink to the items whose inputs are ready.
    """
    done = {s.key: s.store(root).done_ids(retry_errors) for s in plan.sinks}
    keys = [s.key for s in plan.sinks]
    ok = eligible or {}
    todo = [
        json.dumps([k for k in keys if int(i) not in done[k] and (k not in ok or int(i) in ok[k])])
        for i in rows["item_id"]
    ]
    out = rows.assign(**{TODO: todo})
    return out[out[TODO] != "[]"].reset_index(drop=True)


class RunStopped(RuntimeError):
    """A systemic failure stopped a run (a model that does not load, an actor crashing for good)."""


def root_cause(e: BaseException) -> str:
    """The last ``SomeError: message`` line of a (Ray-wrapped) exception, else its first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", ln)]
    return errors[-1] if errors else (lines[0] if lines else type(e).__name__)


def check_fits(specs: list[StageSpec], cluster: dict[str, float]) -> None:
    """Raise when the pools' minimum actors cannot all be placed at once (the run would stall, not fail)."""
    for res, attr in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = [(getattr(s.fn, "name", s.fn.__name__), s.min_actors, getattr(s, attr)) for s in specs]
        total = sum(n * r for _, n, r in need)
        have = float(cluster.get(res, 0.0))
        if total > have + 1e-9:
            parts = ", ".join(f"{name} {n}x{r:g}" for name, n, r in need if r)
            raise ValueError(
                f"the stages' actor pools need {total:g} {res}s at once ({parts}) but the Ray cluster has "
                f"{have:g}: lower resources.<stage>.{attr} or min_actors in the featurize config"
            )


def run_plan(
    plan: Plan,
    rows: pd.DataFrame,
    root: str,
    label: str = "featurize",
    check_resources: bool = True,
    log_every_s: float = 10.0,
    guard: str | None = None,
) -> PlanRun:
    """Stream ``rows`` (with their ``todo`` column) through the plan into the stores under ``root``.

    Blocks until done. Requires an initialised Ray (the caller's job). A stage that cannot start (a
    model that does not load) or an item that keeps crashing its actor past ``max_restarts`` stops
    the run with Ray's error; everything already written stays and a rerun continues from it.
    ``check_resources`` refuses pools whose minimum actors do not fit the current cluster (turn it
    off on an autoscaling cluster, which adds the nodes on demand). ``guard`` (a folder) runs every
    stage under ``featurize.faults.ItemGuard``: items that kill or hang a worker become error rows.
    """
    import ray

    result = PlanRun(items=len(rows))
    if rows.empty:
        return result
    t0 = time.perf_counter()
    # Small blocks (one first-stage batch, or enough to stay within MAX_BLOCKS) so work streams from
    # the start. They are cut here, not with repartition(), whose all-to-all task needs a free CPU
    # beside the pools and stalls when the pools have reserved the whole cluster.
    size = max(plan.stages[0].batch_size if plan.stages else 64, math.ceil(len(rows) / MAX_BLOCKS))
    chunks = [rows.iloc[i : i + size] for i in range(0, len(rows), size)]
    ds = ray.data.from_pandas(chunks)
    for spec in plan.stages:
        ds = _map_stage(ds, spec, guard)
    w = plan.writer or StageSpec(fn=StoreWriter, batch_size=64, num_cpus=0.1, max_actors=1)
    kwargs = {"root": root, "sinks": plan.sinks, "clips": plan.clips}
    w = replace(w, fn=StoreWriter, fn_constructor_kwargs=kwargs)
    if check_resources:
        check_fits([*plan.stages, w], ray.cluster_resources())
    ds = _map_stage(ds, w)
    last_log = t0
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            for store, status, err in zip(batch["store"], batch["status"], batch["error"]):
                result.written.setdefault(store, Counter())[status] += 1
                if err:
                    result.errors.setdefault(store, Counter())[err.split("\n")[0][:120]] += 1
            if time.perf_counter() - last_log >= log_every_s:
                last_log = time.perf_counter()
                done = sum(sum(c.values()) for c in result.written.values())
                logger.info("%s: %d store rows written in %.0f s", label, done, last_log - t0)
    except Exception as e:
        raise RunStopped(
            f"featurize {label}: the run stopped ({type(e).__name__}): {root_cause(e)}\n"
            "Everything written so far is kept; fix the cause and rerun to continue."
        ) from e
    result.wall_s = time.perf_counter() - t0
    result.stats = ds.stats()
    return result
